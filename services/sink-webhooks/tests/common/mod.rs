//! What the sender's tests share: a fixture body, endpoints, a sender allowed to reach
//! 127.0.0.0/8, and axum receivers on 127.0.0.1.
#![allow(dead_code)] // each test binary uses a part

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use bytes::Bytes;
use secrecy::SecretString;
use terra_sink_webhooks::address::AddressPolicy;
use terra_sink_webhooks::endpoint::{DEFAULT_ENDPOINT_IN_FLIGHT, DEFAULT_TIMEOUT};
use terra_sink_webhooks::send::{Outgoing, Sender};
use terra_sink_webhooks::{Endpoint, Filter, Ordering, Schedule, SignatureMode};

pub(crate) const NEW_SECRET: &str = "whsec_c2VuZGVyLXRlc3QtbmV3LXNlY3JldC0yMDI2";
pub(crate) const OLD_SECRET: &str = "old-plain-secret-2025";

pub(crate) fn fixture() -> Bytes {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/webhooks/activity.json");
    Bytes::from(std::fs::read(path).expect("the activity fixture"))
}

pub(crate) fn endpoint(url: &str, secrets: &[&str], signature: SignatureMode) -> Endpoint {
    Endpoint {
        name: "test".to_owned(),
        url: url.parse().expect("a URL"),
        secrets: secrets
            .iter()
            .map(|s| SecretString::from((*s).to_owned()))
            .collect(),
        signature,
        filter: Filter::default(),
        headers: Vec::new(),
        timeout: DEFAULT_TIMEOUT,
        schedule: Schedule::default(),
        ordering: Ordering::Unordered,
        max_in_flight: DEFAULT_ENDPOINT_IN_FLIGHT,
    }
}

pub(crate) fn loopback_sender() -> Sender {
    Sender::new(AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()])).expect("a sender")
}

pub(crate) fn outgoing(body: &Bytes) -> Outgoing<'_> {
    Outgoing {
        envelope_id: "01JD6ZC3W7Q0PZ7V9S5B8Y4K2M",
        body,
        terra_reference: Some("ref-7f3a"),
        terra_trace_id: Some("trace-9c1e:chunk:2"),
        ordering_timestamp_ms: Some(1_791_100_000_123),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    }
}

/// What a receiver got: every request's headers and body.
#[derive(Clone, Default)]
pub(crate) struct Seen(Arc<Mutex<Vec<(HeaderMap, Bytes)>>>);

impl Seen {
    pub(crate) fn push(&self, headers: HeaderMap, body: Bytes) {
        self.0.lock().unwrap().push((headers, body));
    }
    pub(crate) fn all(&self) -> Vec<(HeaderMap, Bytes)> {
        self.0.lock().unwrap().clone()
    }
}

pub(crate) async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A receiver that records each request and answers 200 "thanks".
pub(crate) async fn recording() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let record = seen.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| async move {
            record.push(headers, body);
            "thanks"
        }),
    );
    (serve(app).await, seen)
}

pub(crate) fn text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}
