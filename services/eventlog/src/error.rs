//! The log's error type. Messages name what failed, never record contents.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log cannot take appends or reads right now (broker unreachable, disk error);
    /// retrying later may succeed.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The operation did not complete in time; its outcome is unknown to the caller.
    #[error("event log operation timed out")]
    Timeout,
    /// The log was configured wrongly (bad URL, missing topic, ...).
    #[error("event log misconfigured: {0}")]
    Config(String),
    /// Stored data does not decode (corruption or a foreign writer).
    #[error("event log data is corrupt: {0}")]
    Corrupt(String),
    /// The Kafka client failed (brokers unreachable, a request refused); retrying later may
    /// succeed. The typed cause is kept (`source()`: a `rdkafka::error::KafkaError`, its
    /// code inspectable); the message says it too, since the services log errors by their
    /// message.
    #[error("event log unavailable: {context}: {source}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Records a consumer must read next are no longer in the log (retention, DeleteRecords)
    /// or its position is past the log's end (a recreated or truncated topic). Reading on
    /// would skip records without a trace, so the consumer stops; an operator decides (move
    /// the group past them, or rebuild from a copy).
    #[error("event log records are gone: partition {partition}: {detail}")]
    Gone {
        partition: u32,
        /// The position the consumer had to read from.
        offset: u64,
        /// The log's first and next offsets in that partition when it was found.
        start: u64,
        end: u64,
        detail: String,
    },
    #[error("event log I/O failed: {context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl LogError {
    /// `map_err` for a failed Kafka call: the cause kept as the source.
    pub(crate) fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| Self::Kafka { context, source }
    }

    /// `offset` (a `what` position: "committed", "wanted") is outside the partition's
    /// records `start..end`.
    pub(crate) fn gone(partition: u32, what: &str, offset: u64, start: u64, end: u64) -> Self {
        let detail = if offset < start {
            format!(
                "{what} offset {offset} but the log starts at {start}: records {offset}..{start} are gone (retention or DeleteRecords); the consumer stops rather than skip them"
            )
        } else {
            format!(
                "{what} offset {offset} but the log ends at {end}: the topic was recreated or truncated, so the position does not belong to these records; the consumer stops rather than skip them"
            )
        };
        Self::Gone {
            partition,
            offset,
            start,
            end,
            detail,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
