//! One delivery attempt: a POST of the exact body bytes, signed at send time, through the
//! address guard, within the endpoint's timeout, the answer classified.
//!
//! The timeout covers the whole attempt: connecting, the response head and reading at most
//! [`RESPONSE_LIMIT`] bytes of the body. Once the head is in, its status decides the outcome:
//! a body that is slow to come is cut where it stands (a receiver that answered 2xx has the
//! event; sending it again because its body dawdled would only duplicate it). Redirects are
//! not followed (a 3xx is a failed attempt), no proxy from the environment is used, HTTP/1.1
//! only, one connection pool per host ([`crate::client`]). Errors never hold a secret or the
//! URL (its user info and query may be credentials).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http_body_util::{BodyExt as _, Full};

use crate::address::{AddressPolicy, RefusedAddresses};
use crate::client::{Client, Targets};
use crate::endpoint::Endpoint;
use crate::sign;

pub use crate::client::USER_AGENT_VALUE;
/// The most response body bytes read and kept.
pub const RESPONSE_LIMIT: usize = 1024;

/// What one attempt sends besides the endpoint's settings.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The envelope id: `Idempotency-Key` and `webhook-id`, the same on every retry.
    pub envelope_id: &'a str,
    /// The exact bytes Terra sent.
    pub body: &'a bytes::Bytes,
    pub terra_reference: Option<&'a str>,
    pub terra_trace_id: Option<&'a str>,
    pub ordering_timestamp_ms: Option<i64>,
    /// W3C trace context of the delivery's span.
    pub traceparent: Option<&'a str>,
}

impl<'a> Outgoing<'a> {
    /// `event` as sent, with the attempt's `traceparent`.
    pub fn of(event: &'a crate::store::EventRow, traceparent: Option<&'a str>) -> Self {
        Self {
            envelope_id: &event.envelope_id,
            body: &event.body,
            terra_reference: event.terra_reference.as_deref(),
            terra_trace_id: event.terra_trace_id.as_deref(),
            ordering_timestamp_ms: event.ordering_timestamp_ms,
            traceparent,
        }
    }
}

/// Why an attempt did not deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Answered 2xx.
    None,
    /// Answered, but not 2xx (3xx included: redirects are not followed).
    Status,
    /// No answer within the endpoint's timeout.
    Timeout,
    /// The connection failed (refused, reset, DNS failure).
    Connect,
    /// The address guard refused every address of the host.
    RefusedAddress,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// Anything else (a header that cannot be sent, an empty secret...).
    Other,
}

impl ErrorClass {
    /// Stable names, as stored with each attempt and used in metrics.
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

/// The outcome of one attempt, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// Unix milliseconds when the attempt started.
    pub started_at_ms: i64,
    pub duration: Duration,
    /// The response status, when a response head arrived.
    pub status: Option<u16>,
    pub class: ErrorClass,
    /// What went wrong, for people; `None` when delivered.
    pub error: Option<String>,
    /// At most [`RESPONSE_LIMIT`] bytes of the response body (lossy UTF-8, cut on a
    /// character boundary); `None` when there was none.
    pub response: Option<String>,
    /// `Retry-After` (seconds or an HTTP date) of a 429 or 503.
    pub retry_after: Option<Duration>,
}

impl AttemptResult {
    /// The endpoint answered 2xx.
    pub fn delivered(&self) -> bool {
        self.class == ErrorClass::None && matches!(self.status, Some(200..=299))
    }

    /// The endpoint answered 410 Gone: it asks not to be sent anything more.
    pub fn gone(&self) -> bool {
        self.status == Some(410)
    }
}

/// Sends attempts; one HTTP client (and connection pools) for every endpoint.
#[derive(Debug, Clone)]
pub struct Sender {
    client: Client,
    targets: Targets,
    policy: Arc<AddressPolicy>,
}

/// What [`Sender::attempt`] found, before timing is added.
struct Outcome {
    status: Option<u16>,
    class: ErrorClass,
    error: Option<String>,
    response: Option<String>,
    retry_after: Option<Duration>,
}

impl Outcome {
    fn failed(class: ErrorClass, error: String) -> Self {
        Self {
            status: None,
            class,
            error: Some(error),
            response: None,
            retry_after: None,
        }
    }
}

impl Sender {
    pub fn new(policy: AddressPolicy) -> Result<Self, String> {
        let policy = Arc::new(policy);
        let client = crate::client::client(Arc::clone(&policy))?;
        Ok(Self {
            client,
            targets: Targets::default(),
            policy,
        })
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// One attempt of `out` to `endpoint`. Never fails: every failure is an [`ErrorClass`].
    pub async fn send(&self, endpoint: &Endpoint, out: &Outgoing<'_>) -> AttemptResult {
        let started_at_ms = unix_ms(SystemTime::now());
        let started = Instant::now();
        let outcome = self.attempt(endpoint, out, started_at_ms / 1000).await;
        AttemptResult {
            started_at_ms,
            duration: started.elapsed(),
            status: outcome.status,
            class: outcome.class,
            error: outcome.error,
            response: outcome.response,
            retry_after: outcome.retry_after,
        }
    }

    async fn attempt(&self, endpoint: &Endpoint, out: &Outgoing<'_>, now_secs: i64) -> Outcome {
        let deadline = tokio::time::Instant::now() + endpoint.timeout;
        let target = match self.targets.of(endpoint, &self.policy) {
            Ok(target) => target,
            Err(err) => return Outcome::failed(ErrorClass::Other, err),
        };
        // IP literals skip the resolver: refused here, with the policy's reason
        if let Some(reason) = &target.refused {
            return Outcome::failed(ErrorClass::RefusedAddress, reason.clone());
        }
        let mut request = http::Request::new(Full::new(out.body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = target.uri.clone();
        *request.headers_mut() = match headers(target.headers.clone(), endpoint, out, now_secs) {
            Ok(headers) => headers,
            Err(err) => return Outcome::failed(ErrorClass::Other, err),
        };
        let request = self.client.request(request);
        let response = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => {
                return Outcome::failed(
                    ErrorClass::Timeout,
                    format!("no response within {:?}", endpoint.timeout),
                );
            }
            Ok(Err(err)) => {
                let (class, error) = classify(err);
                return Outcome::failed(class, error);
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        let retry_after = match status.as_u16() {
            429 | 503 => response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
            _ => None,
        };
        let mut body = Vec::new();
        let mut incoming = response.into_body();
        // a body still coming at the deadline is cut where it stands: the status has decided
        let _ = tokio::time::timeout_at(deadline, read_limited(&mut incoming, &mut body)).await;
        let (class, error) = if status.is_success() {
            (ErrorClass::None, None)
        } else {
            let mut error = format!("the endpoint answered {}", status.as_u16());
            if let Some(reason) = status.canonical_reason() {
                error = format!("{error} {reason}");
            }
            if status.is_redirection() {
                error.push_str(" (redirects are not followed)");
            }
            (ErrorClass::Status, Some(error))
        };
        Outcome {
            status: Some(status.as_u16()),
            class,
            error,
            response: response_text(&body),
            retry_after,
        }
    }
}

/// Every header of the attempt: `map` holds the endpoint's constant ones (its extra headers,
/// then `Content-Type`, `User-Agent`...); the attempt's own go over them (validation refuses
/// extra headers with those names; this keeps it so regardless).
fn headers(
    mut map: HeaderMap,
    endpoint: &Endpoint,
    out: &Outgoing<'_>,
    now_secs: i64,
) -> Result<HeaderMap, String> {
    let value = |name: &str, text: &str| {
        HeaderValue::from_str(text).map_err(|_| format!("{name} is not a valid header value"))
    };
    let mut set = |name: &'static str, text: &str| -> Result<(), String> {
        map.insert(HeaderName::from_static(name), value(name, text)?);
        Ok(())
    };
    set("idempotency-key", out.envelope_id)?;
    if endpoint.signature.terra() {
        let signature = sign::terra_signature(&endpoint.secrets, now_secs, out.body)?;
        set("terra-signature", &signature)?;
        set("x-terra-signature", &signature)?;
    }
    if endpoint.signature.standard() {
        let signature =
            sign::standard_signature(&endpoint.secrets, out.envelope_id, now_secs, out.body)?;
        set("webhook-id", out.envelope_id)?;
        set("webhook-timestamp", &now_secs.to_string())?;
        set("webhook-signature", &signature)?;
    }
    if let Some(reference) = out.terra_reference {
        set("terra-reference", reference)?;
    }
    if let Some(trace_id) = out.terra_trace_id {
        set("x-terra-trace-id", trace_id)?;
    }
    if let Some(ms) = out.ordering_timestamp_ms {
        set("x-terra-ordering-timestamp", &ms.to_string())?;
    }
    if let Some(traceparent) = out.traceparent {
        set("traceparent", traceparent)?;
    }
    Ok(map)
}

/// Reads the body into `into` until it holds [`RESPONSE_LIMIT`] bytes or the body ends;
/// never keeps more. A read error ends it (the status has already decided).
async fn read_limited(body: &mut hyper::body::Incoming, into: &mut Vec<u8>) {
    while into.len() < RESPONSE_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data() {
                    let room = RESPONSE_LIMIT - into.len();
                    into.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
            }
            None | Some(Err(_)) => break,
        }
    }
}

/// At most [`RESPONSE_LIMIT`] bytes as text: lossy UTF-8, cut on a character boundary.
fn response_text(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let mut text = String::from_utf8_lossy(&body[..body.len().min(RESPONSE_LIMIT)]).into_owned();
    let mut end = text.len().min(RESPONSE_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    Some(text)
}

/// `Retry-After`: delay-seconds or an HTTP date (a date past is zero).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The class and a description of a failed request (the client's errors never hold the URL).
fn classify(err: hyper_util::client::legacy::Error) -> (ErrorClass, String) {
    let connect = err.is_connect();
    let mut class = None;
    let mut parts: Vec<String> = Vec::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    for _ in 0..16 {
        let Some(current) = cause else { break };
        if let Some(refused) = current.downcast_ref::<RefusedAddresses>() {
            return (ErrorClass::RefusedAddress, refused.to_string());
        }
        if current.downcast_ref::<rustls::Error>().is_some() {
            class = Some(ErrorClass::Tls);
        }
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        // an io::Error's source() skips the error it wraps: step into that one
        cause = match current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    let class = class.unwrap_or(if connect {
        ErrorClass::Connect
    } else {
        ErrorClass::Other
    });
    (class, parts.join(": "))
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_are_stable() {
        let all = [
            (ErrorClass::None, "none"),
            (ErrorClass::Status, "status"),
            (ErrorClass::Timeout, "timeout"),
            (ErrorClass::Connect, "connect"),
            (ErrorClass::RefusedAddress, "refused_address"),
            (ErrorClass::Tls, "tls"),
            (ErrorClass::Other, "other"),
        ];
        for (class, name) in all {
            assert_eq!(class.as_str(), name);
        }
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn response_text_is_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(response_text(b""), None);
        assert_eq!(response_text(b"ok").as_deref(), Some("ok"));
        // 1023 ASCII bytes then a 3-byte character across the limit
        let mut body = vec![b'a'; 1023];
        body.extend_from_slice("€".as_bytes());
        let text = response_text(&body).unwrap();
        assert!(text.len() <= RESPONSE_LIMIT, "{}", text.len());
        assert!(text.starts_with(&"a".repeat(1023)));
        // invalid bytes become U+FFFD (3 bytes each) and still fit
        let text = response_text(&[0xff; 2000]).unwrap();
        assert!(text.len() <= RESPONSE_LIMIT && text.chars().all(|c| c == '\u{fffd}'));
        assert_eq!(text.len(), 1023);
    }

    #[test]
    fn delivered_is_2xx_and_gone_is_410() {
        let result = |status: Option<u16>, class| AttemptResult {
            started_at_ms: 0,
            duration: Duration::ZERO,
            status,
            class,
            error: None,
            response: None,
            retry_after: None,
        };
        assert!(result(Some(200), ErrorClass::None).delivered());
        assert!(result(Some(204), ErrorClass::None).delivered());
        assert!(!result(Some(302), ErrorClass::Status).delivered());
        assert!(!result(None, ErrorClass::Timeout).delivered());
        assert!(result(Some(410), ErrorClass::Status).gone());
        assert!(!result(Some(404), ErrorClass::Status).gone());
    }
}
