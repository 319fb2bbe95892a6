//! Distinct signed deliveries made from the fixtures, for the benchmarks that load the ingress
//! over HTTP (`ingress`, and `sql`'s latency run).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use terra_core::{SigningSecret, fixtures};

/// The ingress answers a delivery it accepted before from its replay cache without appending
/// it again, so a benchmark that re-sent the same signed bodies would measure the cache: each
/// delivery here carries its own `"bench_seq"` field at the start of the JSON object and is
/// signed when it is sent, as Terra signs each delivery.
#[derive(Clone)]
pub(crate) struct Deliveries {
    secret: SigningSecret,
    templates: Arc<Vec<&'static [u8]>>,
}

impl Deliveries {
    pub(crate) fn new(secret: &str) -> Self {
        Self {
            secret: SigningSecret::new(secret).expect("non-empty"),
            templates: Arc::new(fixtures::ALL.iter().map(|(_, body)| *body).collect()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.templates.len()
    }

    /// Delivery number `seq` as a POST to `path`, signed now.
    pub(crate) fn request(&self, path: &str, seq: u64) -> anyhow::Result<Request<Full<Bytes>>> {
        let (body, signature) = self.get(seq);
        Ok(Request::post(path)
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("terra-signature", signature)
            .body(Full::new(body))?)
    }

    /// Delivery number `seq` (fixture `seq % len`) and its signature header, signed now.
    fn get(&self, seq: u64) -> (Bytes, String) {
        let template = self.templates[(seq % self.templates.len() as u64) as usize];
        let mut body = Vec::with_capacity(template.len() + 32);
        match template.strip_prefix(b"{") {
            Some(rest) => {
                body.extend_from_slice(format!("{{\"bench_seq\": {seq}, ").as_bytes());
                body.extend_from_slice(rest);
            }
            None => {
                body.extend_from_slice(template);
                body.extend_from_slice(format!(" {seq}").as_bytes());
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = self.secret.sign(now, &body);
        (Bytes::from(body), signature)
    }
}
