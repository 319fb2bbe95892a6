//! A real HTTP receiver on 127.0.0.1: it checks every request's `terra-signature` with
//! terra-core's verifier (Terra's rules), records it, and answers as its behaviour says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use terra_core::signature::{SigningSecret, Verifier};

use super::SECRET;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub ended: Option<Instant>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `terra-signature` verified with the test secret.
    pub signed: bool,
    pub status: u16,
}

/// What to answer: called with the body and how many requests with this body came before.
pub type Behaviour = Arc<dyn Fn(&Bytes, usize) -> Answer + Send + Sync>;

#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// Status with a `Retry-After` header.
    RetryAfter(u16, String),
    /// Wait this long, then 200.
    SlowOk(Duration),
    /// Never answer (until the client gives up).
    Hang,
    /// Status with this body.
    Body(u16, &'static str),
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    in_flight: Arc<Mutex<Vec<Bytes>>>,
    overlaps: Arc<Mutex<usize>>,
    stop: tokio_util_shim::Stop,
}

mod tokio_util_shim {
    use std::sync::Arc;
    use tokio::sync::Notify;

    #[derive(Clone, Default)]
    pub struct Stop(pub Arc<Notify>);
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), behaviour).await
    }

    /// On a given address (a receiver coming back on the port it had).
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = Self {
            addr,
            seen: Arc::default(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            in_flight: Arc::default(),
            overlaps: Arc::default(),
            stop: tokio_util_shim::Stop::default(),
        };
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(receiver.clone());
        let stop = receiver.stop.0.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.notified().await })
                .await;
        });
        receiver
    }

    pub fn ok() -> Behaviour {
        Arc::new(|_, _| Answer::Status(200))
    }

    /// Answers each body `status` its first `times` times, then 200.
    pub fn failing_first(times: usize, status: u16) -> Behaviour {
        Arc::new(move |_, before| Answer::Status(if before < times { status } else { 200 }))
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Requests that arrived while another with the same body was being answered.
    pub fn overlaps(&self) -> usize {
        *self.overlaps.lock().expect("lock")
    }

    pub fn stop(&self) {
        self.stop.0.notify_waiters();
    }
}

async fn handle(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let signed = headers
        .get("terra-signature")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|h| {
            let verifier = Verifier::new(vec![SigningSecret::new(SECRET).expect("secret")], 300);
            verifier
                .verify(Some(h), &body, terra_core::keys::now_ms() / 1000)
                .is_ok()
        });
    let before = {
        let seen = r.seen.lock().expect("lock");
        seen.iter().filter(|s| s.body == body).count()
    };
    {
        let mut in_flight = r.in_flight.lock().expect("lock");
        if in_flight.contains(&body) {
            *r.overlaps.lock().expect("lock") += 1;
        }
        in_flight.push(body.clone());
    }
    let index = {
        let mut seen = r.seen.lock().expect("lock");
        seen.push(Seen {
            at,
            ended: None,
            headers: headers.clone(),
            body: body.clone(),
            signed,
            status: 0,
        });
        seen.len() - 1
    };
    let behaviour = r.behaviour.lock().expect("lock").clone();
    let answer = behaviour(&body, before);
    let response = match answer {
        Answer::Status(code) => {
            (StatusCode::from_u16(code).expect("status"), "answer").into_response()
        }
        Answer::RetryAfter(code, after) => (
            StatusCode::from_u16(code).expect("status"),
            [("retry-after", after)],
            "later",
        )
            .into_response(),
        Answer::Body(code, body) => {
            (StatusCode::from_u16(code).expect("status"), body).into_response()
        }
        Answer::SlowOk(wait) => {
            tokio::time::sleep(wait).await;
            (StatusCode::OK, "ok").into_response()
        }
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (StatusCode::OK, "late").into_response()
        }
    };
    {
        let mut in_flight = r.in_flight.lock().expect("lock");
        if let Some(i) = in_flight.iter().position(|b| *b == body) {
            in_flight.remove(i);
        }
    }
    let mut seen = r.seen.lock().expect("lock");
    seen[index].ended = Some(Instant::now());
    seen[index].status = response.status().as_u16();
    response
}
