//! W3C trace context: the caller's, continued into the request span and written into the
//! log record's headers so a trace leads from Terra's request into each projector write.

use axum::http::{HeaderMap, HeaderName};
use bytes::Bytes;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use terra_core::envelope;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: HeaderName = HeaderName::from_static(envelope::HEADER_TRACEPARENT);
const TRACESTATE: HeaderName = HeaderName::from_static(envelope::HEADER_TRACESTATE);

/// Writes the W3C trace context of this request into the record headers: the span's, when
/// spans are exported (an OpenTelemetry layer is installed), else the caller's trace id with a
/// new span id, else a new trace.
pub(crate) fn trace_headers(span: &Span, request: &HeaderMap, out: &mut Vec<(String, Bytes)>) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut RecordHeaders(out));
        return;
    }
    let incoming = request
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let continued = incoming.is_some();
    // `00-<trace id>-<new span id>-<flags>`, written in place
    let mut traceparent = [b'-'; 55];
    traceparent[..2].copy_from_slice(b"00");
    match incoming {
        Some((trace_id, flags)) => {
            traceparent[3..35].copy_from_slice(trace_id.as_bytes());
            traceparent[53..].copy_from_slice(flags.as_bytes());
        }
        None => {
            hex::encode_to_slice(random_bytes::<16>(), &mut traceparent[3..35])
                .expect("32 hex digits");
            traceparent[53..].copy_from_slice(b"01");
        }
    }
    hex::encode_to_slice(random_bytes::<8>(), &mut traceparent[36..52]).expect("16 hex digits");
    out.push((
        envelope::HEADER_TRACEPARENT.to_owned(),
        Bytes::copy_from_slice(&traceparent),
    ));
    if let Some(state) = request.get(TRACESTATE).filter(|_| continued) {
        out.push((
            envelope::HEADER_TRACESTATE.to_owned(),
            Bytes::copy_from_slice(state.as_bytes()),
        ));
    }
}

/// Trace id and flags of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`; later
/// versions may append fields).
fn parse_traceparent(value: &str) -> Option<(&str, &str)> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some((trace_id, flags))
}

/// Random ids for trace context, from a userspace generator (no system call per request).
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    for chunk in bytes.chunks_mut(16) {
        let random = uuid::Uuid::new_v4().into_bytes();
        chunk.copy_from_slice(&random[..chunk.len()]);
    }
    bytes
}

pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct RecordHeaders<'a>(&'a mut Vec<(String, Bytes)>);

impl Injector for RecordHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), Bytes::from(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(valid),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "01"))
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future")
                .is_some()
        );
    }

    #[test]
    fn without_exported_spans_the_callers_trace_continues() {
        // no OpenTelemetry layer in this test: the fallback path
        let mut request = HeaderMap::new();
        request.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        request.insert("tracestate", "vendor=1".parse().unwrap());
        let mut out = Vec::new();
        trace_headers(&Span::none(), &request, &mut out);
        let traceparent = std::str::from_utf8(&out[0].1).unwrap().to_owned();
        let (trace_id, flags) = parse_traceparent(&traceparent).unwrap();
        assert_eq!(
            (trace_id, flags),
            ("4bf92f3577b34da6a3ce929d0e0e4736", "01")
        );
        assert!(!traceparent.contains("00f067aa0ba902b7"), "a new span id");
        assert_eq!(
            out[1],
            ("tracestate".to_owned(), Bytes::from_static(b"vendor=1"))
        );

        let mut fresh = Vec::new();
        trace_headers(&Span::none(), &HeaderMap::new(), &mut fresh);
        let mut other = Vec::new();
        trace_headers(&Span::none(), &HeaderMap::new(), &mut other);
        assert_eq!(fresh.len(), 1);
        let a = parse_traceparent(std::str::from_utf8(&fresh[0].1).unwrap()).unwrap();
        let b = parse_traceparent(std::str::from_utf8(&other[0].1).unwrap()).unwrap();
        assert_ne!(
            a.0, b.0,
            "each request without context starts its own trace"
        );
    }
}
