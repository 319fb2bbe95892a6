//! The webhook handler: allowlist, size limit, signature, classification, durable append.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use sha2::{Digest, Sha256};
use terra_core::envelope::{Delivery, Envelope};
use terra_core::signature;
use terra_eventlog::Record;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::DEFAULT_SOURCE;
use crate::replay::{self, Answer, Lookup};
use crate::trace::{HeaderExtractor, trace_headers};
use crate::{AppState, IngressError, Source, body, client_addr};

/// Longest value kept from a Terra delivery header (they are ids and timestamps).
const MAX_HEADER_VALUE: usize = 512;

// The headers every request is asked for, named once: a lookup by `&str` parses the name
// (lower-case check and standard-header match) on every call.
const SIGNATURE_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static(signature::HEADER_NAMES[0]),
    HeaderName::from_static(signature::HEADER_NAMES[1]),
];
const TERRA_TRACE_ID: HeaderName = HeaderName::from_static("x-terra-trace-id");
const TERRA_REFERENCE: HeaderName = HeaderName::from_static("terra-reference");
const ORDERING_TIMESTAMP: HeaderName = HeaderName::from_static("x-terra-ordering-timestamp");

pub(crate) async fn default_source(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    traced(state, DEFAULT_SOURCE.to_owned(), peer, parts.headers, body).await
}

pub(crate) async fn named_source(
    State(state): State<AppState>,
    Path(source): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    traced(state, source, peer, parts.headers, body).await
}

/// The 200 answer: `{"envelope_id":…,"partition":…,"offset":…,"body_is_json":…}`, written
/// directly (every value is a number, a boolean or a hyphenated UUID: nothing to escape).
fn accepted_response(answer: &Answer) -> Response {
    use std::fmt::Write;
    let mut body = String::with_capacity(112);
    let _ = write!(
        body,
        "{{\"envelope_id\":\"{}\",\"partition\":{},\"offset\":{},\"body_is_json\":{}}}",
        answer.envelope_id.as_hyphenated(),
        answer.partition,
        answer.offset,
        answer.body_is_json
    );
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Runs the request in a span whose parent is the caller's W3C trace context, when it sent
/// one. The parent must be set before the span is first entered.
async fn traced(
    state: AppState,
    source: String,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let span = tracing::info_span!("webhook", otel.kind = "server", source = %source, envelope_id = tracing::field::Empty, event_type = tracing::field::Empty, outcome = tracing::field::Empty);
    let _ = span.set_parent(TraceContextPropagator::new().extract(&HeaderExtractor(&headers)));
    handle(state, source, peer, headers, body)
        .instrument(span)
        .await
}

async fn handle(
    state: AppState,
    source: String,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let inner = &state.inner;
    let result = match Arc::clone(&inner.in_flight).try_acquire_owned() {
        Ok(_permit) => {
            let deadline = inner.config.limits.request_timeout;
            tokio::time::timeout(deadline, accept(&state, &source, peer, &headers, body))
                .await
                .unwrap_or(Err(IngressError::RequestTimeout(deadline)))
        }
        Err(_) => Err(IngressError::Overloaded("requests in flight")),
    };
    let metrics = &inner.metrics;
    // arbitrary path segments must not become metric label values
    let label = if inner.config.sources.contains_key(&source) {
        source.as_str()
    } else {
        "unknown"
    };
    match result {
        Ok(accepted) => {
            let outcome = match (accepted.replayed, accepted.answer.body_is_json) {
                (true, _) => "replayed",
                (false, true) => "accepted",
                (false, false) => "accepted_not_json",
            };
            metrics.outcome(label, outcome);
            Span::current().record("outcome", outcome);
            if accepted.replayed {
                tracing::info!(
                    partition = accepted.answer.partition,
                    offset = accepted.answer.offset,
                    "webhook accepted before: answered again without appending"
                );
            } else {
                tracing::info!(
                    partition = accepted.answer.partition,
                    offset = accepted.answer.offset,
                    "webhook accepted"
                );
            }
            accepted_response(&accepted.answer)
        }
        Err(err) => {
            metrics.outcome(label, err.code());
            Span::current().record("outcome", err.code());
            // anyone can send refused requests: their log lines are rate limited
            if let Some(suppressed) = inner.rejection_logs.admit() {
                if err.status().is_server_error() {
                    tracing::warn!(error = %err, suppressed, "webhook not accepted");
                } else {
                    tracing::info!(error = %err, suppressed, "webhook rejected");
                }
            }
            err.into_response()
        }
    }
}

struct Accepted {
    answer: Answer,
    /// Accepted before: answered from the replay cache, not appended again.
    replayed: bool,
}

async fn accept(
    state: &AppState,
    source_name: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Body,
) -> Result<Accepted, IngressError> {
    let inner = &state.inner;
    let Some(source) = inner.config.sources.get(source_name) else {
        // after the allowlists, so a client outside them cannot tell which names exist
        if !inner
            .config
            .sources
            .values()
            .any(|s| admits(s, peer, headers))
        {
            return Err(IngressError::Forbidden(peer.ip().to_string()));
        }
        return Err(IngressError::UnknownSource(source_name.to_owned()));
    };

    let client = client_addr::resolve(peer, headers, &source.trusted_proxies);
    if let Some(allowlist) = &source.allowlist {
        let client = client.ok_or(IngressError::UnknownClient)?;
        if !allowlist.iter().any(|net| net.contains(&client)) {
            return Err(IngressError::Forbidden(client.to_string()));
        }
    }
    let remote_addr = client.unwrap_or_else(|| peer.ip());

    let limits = &inner.config.limits;
    let read = body::read_body(
        headers,
        body,
        inner.config.body_limit,
        &inner.in_flight_bytes,
    );
    // held until the answer: the bytes stay in memory until the log has them
    let (body, _bytes_permit) = tokio::time::timeout(limits.body_read_timeout, read)
        .await
        .map_err(|_| IngressError::BodyTimeout(limits.body_read_timeout))??;

    let signature_headers: Vec<String> = SIGNATURE_HEADERS
        .iter()
        .flat_map(|name| headers.get_all(name))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature_timestamp =
        source
            .verifier
            .verify_any(signature_headers.iter().map(String::as_str), &body, now)?;
    inner.metrics.body_bytes.observe(body.len() as f64);
    let body_sha256: [u8; 32] = Sha256::digest(&body).into();

    let claim = match &inner.replay {
        None => None,
        Some(cache) => {
            let trace_id = headers.get(TERRA_TRACE_ID).map(|v| v.as_bytes());
            let trace_id = trace_id.map(String::from_utf8_lossy);
            let delivery = replay::Delivery {
                source: source_name,
                signature_timestamp,
                trace_id: trace_id.as_deref(),
                body_sha256: &body_sha256,
                tolerance: Duration::from_secs(source.verifier.tolerance_secs()),
            };
            let (lookup, evicted) = cache.lookup(&delivery);
            inner.metrics.replay_cache_evictions.inc_by(evicted);
            match lookup {
                Lookup::Seen(answer) => {
                    return Ok(Accepted {
                        answer,
                        replayed: true,
                    });
                }
                Lookup::InFlight(keys) => {
                    let answer = cache
                        .wait(&keys)
                        .await
                        .ok_or(IngressError::ConcurrentCopyFailed)?;
                    return Ok(Accepted {
                        answer,
                        replayed: true,
                    });
                }
                Lookup::New(claim) => Some(claim),
            }
        }
    };

    if let Some(bound) = &inner.config.lag_bound {
        hold_for_projections(bound, &inner.metrics).await;
    }
    let ordering = ordering_timestamp(headers, signature_timestamp);
    if ordering.capped {
        inner.metrics.ordering_timestamps_capped.inc();
    }
    let (record, envelope_id, body_is_json) = build_record(
        source_name,
        headers,
        remote_addr,
        signature_timestamp,
        ordering.value,
        body_sha256,
        body,
    );
    let started = Instant::now();
    let appended =
        tokio::time::timeout(inner.config.append_timeout, inner.log.append(vec![record])).await;
    inner
        .metrics
        .append_seconds
        .observe(started.elapsed().as_secs_f64());
    let position = match appended {
        Ok(Ok(positions)) => positions[0],
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "event log append failed");
            return Err(IngressError::LogUnavailable {
                retry_after: terra_eventlog::retry_after(&err),
            });
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = inner.config.append_timeout.as_millis() as u64,
                "event log append timed out"
            );
            return Err(IngressError::LogUnavailable {
                retry_after: std::time::Duration::from_secs(5),
            });
        }
    };
    let answer = Answer {
        envelope_id,
        partition: position.partition,
        offset: position.offset,
        body_is_json,
    };
    if let Some(claim) = claim {
        claim.accepted(answer);
    }
    Ok(Accepted {
        answer,
        replayed: false,
    })
}

/// Holds a new webhook while a projection of this process is too far behind (see
/// [`terra_runtime::lag`]); it is accepted after the hold either way.
async fn hold_for_projections(bound: &terra_runtime::LagBound, metrics: &crate::Metrics) {
    use terra_runtime::lag::Admission;
    match bound.admit().await {
        Admission::Now => {}
        Admission::Held(waited) => metrics
            .projection_hold_seconds
            .observe(waited.as_secs_f64()),
        Admission::HeldOut => {
            metrics
                .projection_hold_seconds
                .observe(bound.hold().as_secs_f64());
            metrics.projection_holds_expired.inc();
        }
    }
}

/// Whether `source`'s allowlist admits this client.
fn admits(source: &Source, peer: SocketAddr, headers: &HeaderMap) -> bool {
    let Some(allowlist) = &source.allowlist else {
        return true;
    };
    client_addr::resolve(peer, headers, &source.trusted_proxies)
        .is_some_and(|client| allowlist.iter().any(|net| net.contains(&client)))
}

/// `X-Terra-Ordering-Timestamp` bounded by the signature: the header is not signed, so a
/// replayed delivery could otherwise carry a far-future value and win last-writer-wins for
/// ever. Terra emits a payload before it signs the delivery, so a genuine value is never
/// later than the signed second `t`: the value kept is at most `t·1000 + 999` ms.
struct Ordering {
    value: Option<i64>,
    capped: bool,
}

fn ordering_timestamp(headers: &HeaderMap, signature_timestamp: i64) -> Ordering {
    let sent = headers
        .get(ORDERING_TIMESTAMP)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let bound = signature_timestamp.saturating_mul(1000).saturating_add(999);
    match sent {
        Some(ms) if ms > bound => Ordering {
            value: Some(bound),
            capped: true,
        },
        value => Ordering {
            value,
            capped: false,
        },
    }
}

fn build_record(
    source: &str,
    headers: &HeaderMap,
    remote_addr: IpAddr,
    signature_timestamp: i64,
    ordering_timestamp_ms: Option<i64>,
    body_sha256: [u8; 32],
    body: Bytes,
) -> (Record, uuid::Uuid, bool) {
    let id = uuid::Uuid::now_v7();
    let header_text = |name: HeaderName| {
        headers.get(name).map(|v| {
            let text = String::from_utf8_lossy(v.as_bytes());
            let mut end = text.len().min(MAX_HEADER_VALUE);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_owned()
        })
    };
    let delivery = Delivery {
        envelope_id: id
            .hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .to_owned(),
        received_at_ms: None,
        source: source.to_owned(),
        remote_addr: remote_addr.to_string(),
        signature_timestamp,
        ordering_timestamp_ms,
        terra_reference: header_text(TERRA_REFERENCE),
        terra_trace_id: header_text(TERRA_TRACE_ID),
        content_type: header_text(header::CONTENT_TYPE),
        body_sha256: Some(body_sha256),
    };
    let envelope = Envelope::of_delivery(delivery, body);
    let span = Span::current();
    span.record("envelope_id", envelope.envelope_id.as_str());
    span.record("event_type", envelope.event_type.as_str());
    let mut trace = Vec::new();
    trace_headers(&span, headers, &mut trace);
    (
        Record::of_envelope(&envelope, trace),
        id,
        envelope.body_is_json,
    )
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn the_accepted_answer_is_json_with_every_field() {
        for (offset, body_is_json) in [(0, true), (u64::MAX, false)] {
            let answer = Answer {
                envelope_id: uuid::Uuid::now_v7(),
                partition: u32::MAX,
                offset,
                body_is_json,
            };
            let response = accepted_response(&answer);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                json,
                serde_json::json!({
                    "envelope_id": answer.envelope_id.to_string(),
                    "partition": u32::MAX,
                    "offset": offset,
                    "body_is_json": body_is_json,
                })
            );
        }
    }
}
