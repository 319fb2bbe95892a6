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

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
