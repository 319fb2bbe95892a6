//! A `webhook.delivery` span per attempt, linked to the ingress request's trace (the
//! `traceparent` the ingress put in the log record), and the `traceparent` sent onward: the
//! attempt span's own when tracing is exported, else the ingress request's as received.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::store::{EventRow, Leased};

pub(crate) fn attempt_span(endpoint: &str, delivery: &Leased, event: &EventRow) -> tracing::Span {
    let span = tracing::info_span!(
        "webhook.delivery",
        otel.kind = "producer",
        endpoint,
        delivery_id = tracing::field::Empty,
        attempt = delivery.attempts,
        envelope_id = %event.envelope_id,
    );
    if span.is_disabled() {
        return span;
    }
    // a first attempt sent by the fan-out has no id yet (its row is written after it)
    if delivery.id > 0 {
        span.record("delivery_id", delivery.id);
    }
    if let Some(traceparent) = &event.traceparent {
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let mut carrier = std::collections::HashMap::new();
        carrier.insert("traceparent".to_owned(), traceparent.clone());
        let context = propagator.extract(&carrier);
        let remote = context.span().span_context().clone();
        if remote.is_valid() {
            span.add_link(remote);
        }
    }
    span
}

pub(crate) fn outgoing_traceparent(span: &tracing::Span, event: &EventRow) -> Option<String> {
    let context = span.context();
    let own = context.span().span_context().clone();
    if own.is_valid() {
        return Some(format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        ));
    }
    event.traceparent.clone()
}
