//! The event log: the one durable source of truth of terra-ingest.
//!
//! One interface ([`EventLog`], [`Consumer`]) over two backends:
//! - [`kafka`]: any Kafka-protocol broker through rdkafka (idempotent producer, `acks=all`);
//! - [`embedded`]: append-only files on local disk for a single node, fsynced before an
//!   append is acknowledged.
//!
//! `append` returns positions only once the records are durable. Consumers belong to a named
//! group, read per-partition positions, and commit explicitly; a new consumer of the same
//! group resumes after the last commit, so uncommitted records are delivered again.

pub mod embedded;
mod error;
pub mod kafka;
pub mod private_fs;
mod record;
mod url;

use std::collections::BTreeMap;
use std::time::Duration;

pub use error::LogError;
pub use record::{Consumed, Position, Record};
pub use url::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MIN_INSYNC_REPLICAS, DEFAULT_PARTITIONS,
    DEFAULT_REPLICATION_FACTOR, KafkaConfig, LogUrl, RECORD_OVERHEAD_BYTES, UnsafeTopic,
};

/// A handle to the log, cheap to clone.
#[derive(Clone)]
pub enum EventLog {
    Embedded(embedded::EmbeddedLog),
    Kafka(kafka::KafkaLog),
}

impl EventLog {
    /// Opens the log a [`LogUrl`] names, with extra librdkafka client properties for Kafka.
    pub async fn open(
        url: &LogUrl,
        kafka_properties: &[(String, String)],
    ) -> Result<Self, LogError> {
        Self::open_with(url, kafka_properties, &embedded::EmbeddedOptions::default()).await
    }

    /// [`EventLog::open`], with the embedded log's settings.
    pub async fn open_with(
        url: &LogUrl,
        kafka_properties: &[(String, String)],
        embedded_options: &embedded::EmbeddedOptions,
    ) -> Result<Self, LogError> {
        match url {
            LogUrl::Embedded { dir, partitions } => Ok(Self::Embedded(
                embedded::EmbeddedLog::open_with(dir, *partitions, embedded_options.clone())?,
            )),
            LogUrl::Kafka(config) => Ok(Self::Kafka(
                kafka::KafkaLog::connect(config.clone(), kafka_properties).await?,
            )),
        }
    }

    /// Appends a batch. Resolves once every record is durable, with one position per record
    /// in batch order; on error, none of the batch may be considered written.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        match self {
            Self::Embedded(log) => log.append(records).await,
            Self::Kafka(log) => log.append(records).await,
        }
    }

    /// Checks that the log can take appends now (for readiness probes).
    pub async fn check_ready(&self) -> Result<(), LogError> {
        match self {
            Self::Embedded(log) => log.check_ready(),
            Self::Kafka(log) => log.check_ready().await,
        }
    }

    /// A consumer in group `group`, starting after the group's committed positions (from the
    /// beginning when it has none).
    pub fn consumer(&self, group: &str) -> Result<Consumer, LogError> {
        match self {
            Self::Embedded(log) => Ok(Consumer::Embedded(log.consumer(group)?)),
            Self::Kafka(log) => Ok(Consumer::Kafka(log.consumer(group)?)),
        }
    }

    /// The next offset to be written in every partition (for progress and lag).
    pub async fn end_offsets(&self) -> Result<BTreeMap<u32, u64>, LogError> {
        match self {
            Self::Embedded(log) => Ok(log
                .end_offsets()
                .into_iter()
                .enumerate()
                .map(|(p, end)| (p as u32, end))
                .collect()),
            Self::Kafka(log) => log.end_offsets().await,
        }
    }

    /// Short name of the backend, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Kafka(_) => "kafka",
        }
    }
}

/// Reads the log as a member of a consumer group.
pub enum Consumer {
    Embedded(embedded::EmbeddedConsumer),
    Kafka(kafka::KafkaConsumer),
}

impl Consumer {
    /// Up to `max` records, waiting at most `wait` for the first one. Records of one
    /// partition come in log order. An empty batch means nothing arrived in time.
    pub async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<Consumed>, LogError> {
        match self {
            Self::Embedded(c) => c.poll(max, wait).await,
            Self::Kafka(c) => c.poll(max, wait).await,
        }
    }

    /// Moves this group to `next` (partition → next offset to read; unnamed partitions go to
    /// the log's start) and reads from there on. Projections whose sink stores its own
    /// positions (SQL) use this to resume exactly where their rows end. A position before
    /// the log's start or past its end is [`LogError::Gone`]: the records are gone, or the
    /// positions belong to another log (a recreated topic), and reading on would skip records.
    pub async fn seek(&mut self, next: &BTreeMap<u32, u64>) -> Result<(), LogError> {
        match self {
            Self::Embedded(c) => c.seek(next),
            Self::Kafka(c) => c.seek(next).await,
        }
    }

    /// Records not yet read, per partition (assigned partitions only, for Kafka).
    pub async fn lag(&self) -> Result<BTreeMap<u32, u64>, LogError> {
        match self {
            Self::Embedded(c) => Ok(c.lag()),
            Self::Kafka(c) => c.lag().await,
        }
    }

    /// Commits: every record at or before each given position (per partition) is done, and
    /// the group resumes after it.
    pub async fn commit(&mut self, done: &[Position]) -> Result<(), LogError> {
        match self {
            Self::Embedded(c) => c.commit(done),
            Self::Kafka(c) => c.commit(done).await,
        }
    }
}

/// How long a caller should wait before retrying after `err` (for `Retry-After`).
pub fn retry_after(err: &LogError) -> Duration {
    match err {
        LogError::Unavailable(_) | LogError::Kafka { .. } | LogError::Timeout => {
            Duration::from_secs(5)
        }
        _ => Duration::from_secs(30),
    }
}
