//! (stub until the helper's sender lands: same API)

use std::time::{Duration, Instant};

use crate::endpoint::Endpoint;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    None,
    Status,
    Timeout,
    Connect,
    RefusedAddress,
    Tls,
    Other,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::RefusedAddress => "refused_address",
            Self::Tls => "tls",
            Self::Other => "other",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub started_at_ms: i64,
    pub duration: Duration,
    pub status: Option<u16>,
    pub class: ErrorClass,
    pub error: Option<String>,
    pub response: Option<String>,
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    pub fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

pub struct Outgoing<'a> {
    pub envelope_id: &'a str,
    pub body: &'a bytes::Bytes,
    pub terra_reference: Option<&'a str>,
    pub terra_trace_id: Option<&'a str>,
    pub ordering_timestamp_ms: Option<i64>,
    pub traceparent: Option<&'a str>,
}

#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new(_policy: crate::address::AddressPolicy) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { client })
    }

    pub async fn send(&self, endpoint: &Endpoint, out: &Outgoing<'_>) -> AttemptResult {
        let started_at_ms = terra_core::keys::now_ms();
        let started = Instant::now();
        let t = started_at_ms / 1000;
        let secret = secrecy::ExposeSecret::expose_secret(&endpoint.secrets[0]).to_owned();
        let sig = terra_core::signature::SigningSecret::new(secret)
            .map(|s| s.sign(t, out.body))
            .unwrap_or_default();
        let result = self
            .client
            .post(endpoint.url.clone())
            .timeout(endpoint.timeout)
            .header("content-type", "application/json")
            .header("terra-signature", &sig)
            .body(out.body.clone())
            .send()
            .await;
        let (status, class, error) = match result {
            Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), ErrorClass::None, None),
            Ok(r) => (Some(r.status().as_u16()), ErrorClass::Status, None),
            Err(e) if e.is_timeout() => (None, ErrorClass::Timeout, Some(e.to_string())),
            Err(e) => (None, ErrorClass::Connect, Some(e.to_string())),
        };
        AttemptResult {
            started_at_ms,
            duration: started.elapsed(),
            status,
            class,
            error,
            response: None,
            retry_after: None,
        }
    }
}
