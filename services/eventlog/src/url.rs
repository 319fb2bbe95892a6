//! `--log` URLs:
//!
//! ```text
//! embedded                          embedded log in the default folder (<data dir>/log)
//! embedded:PATH                     embedded log in PATH
//! kafka://HOST:PORT[,HOST:PORT]/TOPIC[?partitions=N&replication=N&create=false]
//! kafka-mock://TOPIC[?partitions=N] librdkafka's in-process mock cluster (dev, benchmarks;
//!                                   not durable)
//! ```
//! An embedded URL may also carry `?partitions=N` (default 4).

use std::path::{Path, PathBuf};

use crate::LogError;

pub const DEFAULT_PARTITIONS: u32 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogUrl {
    Embedded { dir: PathBuf, partitions: u32 },
    Kafka(KafkaConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `None` for the in-process mock cluster.
    pub bootstrap_servers: Option<String>,
    pub topic: String,
    /// Partitions used when the topic has to be created.
    pub partitions: u32,
    /// Replicas every partition must have: the topic is created with it and an existing
    /// topic is checked against it. `None`: [`DEFAULT_REPLICATION_FACTOR`], lowered to the
    /// broker count of a smaller cluster (with a warning) so a one-broker setup works.
    pub replication: Option<u32>,
    /// The topic's `min.insync.replicas`: how many replicas an append must reach before it
    /// is acknowledged. `None`: [`DEFAULT_MIN_INSYNC_REPLICAS`], at most the replication
    /// factor minus one (at least 1), so one broker can be down without refusing appends.
    pub min_insync_replicas: Option<u32>,
    /// What to do at start when the topic exists with settings that can lose records.
    pub unsafe_topic: UnsafeTopic,
    /// Create the topic when it does not exist (default true).
    pub create_topic: bool,
    /// Largest webhook body the log must hold (the ingress's body limit). The producer's
    /// `message.max.bytes`, the consumers' fetch sizes and the topic's `max.message.bytes`
    /// are made to fit it plus [`RECORD_OVERHEAD_BYTES`]; a topic that cannot hold it is
    /// refused at start.
    pub max_body_bytes: usize,
}

/// Replicas per partition unless told otherwise (lowered on a cluster of fewer brokers).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// `min.insync.replicas` unless told otherwise (at most the replication factor minus one).
pub const DEFAULT_MIN_INSYNC_REPLICAS: u32 = 2;

/// What to do at start when an existing topic could lose records (finite retention,
/// compaction, fewer replicas or in-sync replicas than wanted, unclean leader election).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnsafeTopic {
    /// Log a warning naming every problem and run.
    #[default]
    Warn,
    /// Refuse to start, naming every problem (also when the broker does not describe the
    /// topic's configuration, so nothing could be verified).
    Refuse,
}

/// The body limit the log holds unless told otherwise (the ingress's default body limit).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Room for what a record carries besides the body: the envelope's other fields, the key and
/// the headers, and the Kafka record framing.
pub const RECORD_OVERHEAD_BYTES: usize = 64 * 1024;

impl KafkaConfig {
    /// The largest record the log must take: the body limit plus the envelope around it.
    pub fn max_record_bytes(&self) -> usize {
        self.max_body_bytes.saturating_add(RECORD_OVERHEAD_BYTES)
    }
}

impl LogUrl {
    /// Parses a `--log` value; `default_dir` is where a bare `embedded` lives.
    pub fn parse(text: &str, default_dir: &Path) -> Result<Self, LogError> {
        let bad = |why: &str| LogError::Config(format!("--log {text:?}: {why}"));
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut partitions = None;
        let mut replication = None;
        let mut create_topic = true;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| bad("query parameters look like name=value"))?;
            let number = || -> Result<u32, LogError> {
                value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(&format!("{name} must be a positive integer")))
            };
            match name {
                "partitions" => partitions = Some(number()?),
                "replication" => replication = Some(number()?),
                "create" => {
                    create_topic = value
                        .parse()
                        .map_err(|_| bad("create must be true or false"))?
                }
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        let partitions = partitions.unwrap_or(DEFAULT_PARTITIONS);
        if base == "embedded" || base == "embedded://" {
            return Ok(Self::Embedded {
                dir: default_dir.to_owned(),
                partitions,
            });
        }
        if let Some(path) = base.strip_prefix("embedded:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad("embedded: needs a folder path"));
            }
            return Ok(Self::Embedded {
                dir: PathBuf::from(path),
                partitions,
            });
        }
        let kafka = |bootstrap_servers: Option<String>, topic: &str| {
            if topic.is_empty()
                || topic.len() > 249
                || !topic
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad(
                    "the topic name must be 1-249 characters of a-z A-Z 0-9 . _ -",
                ));
            }
            Ok(Self::Kafka(KafkaConfig {
                bootstrap_servers,
                topic: topic.to_owned(),
                partitions,
                replication,
                min_insync_replicas: None,
                unsafe_topic: UnsafeTopic::Warn,
                create_topic,
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            }))
        };
        if let Some(topic) = base.strip_prefix("kafka-mock://") {
            return kafka(None, topic);
        }
        if let Some(rest) = base.strip_prefix("kafka://") {
            let (servers, topic) = rest
                .split_once('/')
                .ok_or_else(|| bad("kafka:// needs /TOPIC after the brokers"))?;
            if servers.is_empty() || servers.split(',').any(|s| !s.contains(':')) {
                return Err(bad("kafka:// brokers are HOST:PORT, comma separated"));
            }
            return kafka(Some(servers.to_owned()), topic);
        }
        Err(bad(
            "expected embedded, embedded:PATH, kafka://HOST:PORT/TOPIC or kafka-mock://TOPIC",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let d = Path::new("/d");
        assert_eq!(
            LogUrl::parse("embedded", d).unwrap(),
            LogUrl::Embedded {
                dir: "/d".into(),
                partitions: 4
            }
        );
        assert_eq!(
            LogUrl::parse("embedded:/x?partitions=2", d).unwrap(),
            LogUrl::Embedded {
                dir: "/x".into(),
                partitions: 2
            }
        );
        let LogUrl::Kafka(k) =
            LogUrl::parse("kafka://a:1,b:2/terra.events?partitions=6&replication=3", d).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                k.bootstrap_servers.as_deref(),
                k.topic.as_str(),
                k.partitions,
                k.replication
            ),
            (Some("a:1,b:2"), "terra.events", 6, Some(3))
        );
        let LogUrl::Kafka(k) = LogUrl::parse("kafka-mock://t", d).unwrap() else {
            panic!()
        };
        assert_eq!(k.bootstrap_servers, None);
    }

    #[test]
    fn errors_name_the_problem() {
        let d = Path::new("/d");
        for (url, needle) in [
            ("redis://x", "expected embedded"),
            ("kafka://host/topic", "HOST:PORT"),
            ("kafka://host:1", "/TOPIC"),
            ("kafka://host:1/bad topic", "topic name"),
            ("embedded?partitions=0", "positive integer"),
            ("embedded?color=red", "unknown parameter"),
        ] {
            let err = LogUrl::parse(url, d).unwrap_err().to_string();
            assert!(
                err.contains(needle) && err.contains("--log"),
                "{url}: {err}"
            );
        }
    }
}
