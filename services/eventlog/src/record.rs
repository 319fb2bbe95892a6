//! Records as the log stores them, and their positions.

use bytes::Bytes;

/// One log record: an optional key (the partitioning key: a user id), headers, and the
/// value (an encoded envelope).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Bytes)>,
    pub value: Bytes,
}

impl Record {
    /// The record of an envelope as the ingress appends it: keyed by the user id, with the
    /// envelope's headers (content type, envelope id) and then `extra` (trace context).
    pub fn of_envelope(
        envelope: &terra_core::envelope::Envelope,
        extra: impl IntoIterator<Item = (String, Bytes)>,
    ) -> Self {
        use prost::Message;
        let mut headers = envelope.record_headers();
        headers.extend(extra);
        Self {
            key: envelope.record_key(),
            headers,
            value: Bytes::from(envelope.encode_to_vec()),
        }
    }

    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Where a record sits in the log: partition and offset within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A record read by a consumer, with its position and append time (unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub position: Position,
    pub timestamp_ms: i64,
    pub record: Record,
}
