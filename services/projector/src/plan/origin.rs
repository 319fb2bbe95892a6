//! Where a record came from, kept beside its plan for sinks that forward the event.

use terra_core::envelope::Envelope;
use terra_eventlog::Consumed;

/// Where a record came from and Terra's request headers, for sinks that forward the event
/// (the webhook destination).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The configured source name.
    pub source: String,
    /// The envelope's `EventGroup` number.
    pub event_group: i32,
    pub user_id: Option<String>,
    pub terra_reference: Option<String>,
    pub terra_trace_id: Option<String>,
    pub ordering_timestamp_ms: Option<i64>,
    /// The W3C `traceparent` of the ingress request (the record header).
    pub traceparent: Option<String>,
}

impl Origin {
    /// The envelope's origin (no `traceparent`: that is a record header).
    pub fn of_envelope(envelope: &Envelope) -> Self {
        Self {
            source: envelope.source.clone(),
            event_group: envelope.event_group,
            user_id: envelope.user_id.clone(),
            terra_reference: envelope.terra_reference.clone(),
            terra_trace_id: envelope.terra_trace_id.clone(),
            ordering_timestamp_ms: envelope.ordering_timestamp_ms,
            traceparent: None,
        }
    }

    /// The ingress request's `traceparent` record header.
    pub fn traceparent_of(consumed: &Consumed) -> Option<String> {
        consumed
            .record
            .header(terra_core::envelope::HEADER_TRACEPARENT)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    }
}
