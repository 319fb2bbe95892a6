//! The event log's settings (its URL and librdkafka's properties, with their `env:` and
//! `file:` indirections) and telemetry's, checked.

use anyhow::Context;
use terra_eventlog::LogUrl;
use terra_eventlog::embedded::EmbeddedOptions;

use super::config::{Config, LogFormat, UnsafeTopic};
use super::names;
use super::secrets::KafkaProperties;

/// The event log, checked.
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub url: LogUrl,
    pub kafka_properties: KafkaProperties,
    pub embedded: EmbeddedOptions,
}

impl LogSettings {
    /// Opens the log these settings name.
    pub async fn open(&self) -> Result<terra_eventlog::EventLog, terra_eventlog::LogError> {
        terra_eventlog::EventLog::open_with(&self.url, &self.kafka_properties, &self.embedded).await
    }
}

/// Checks the log's settings; a relative embedded log lives in the data dir.
pub fn resolve_log(config: &Config) -> anyhow::Result<LogSettings> {
    let mut url = LogUrl::parse(&config.log.url, &config.data_dir.join("log"))
        .map_err(|e| anyhow::anyhow!("setting {}: {e}", names::setting("log.url")))?;
    // every body the ingress accepts must fit in one log record, and every consumer (the
    // projectors too, which read the same setting) must be able to fetch it
    if let LogUrl::Kafka(kafka) = &mut url {
        kafka.max_body_bytes = config.ingress.body_limit;
        let log = &config.log;
        match (kafka.replication, log.replication_factor) {
            (Some(in_url), Some(set)) if in_url != set => anyhow::bail!(
                "setting {}: {set}, but the log URL says replication={in_url}: give one",
                names::setting("log.replication_factor")
            ),
            (_, Some(0)) => anyhow::bail!(
                "setting {}: must be at least 1",
                names::setting("log.replication_factor")
            ),
            (None, set) => kafka.replication = set,
            _ => {}
        }
        if log.min_insync_replicas == Some(0) {
            anyhow::bail!(
                "setting {}: must be at least 1",
                names::setting("log.min_insync_replicas")
            );
        }
        kafka.min_insync_replicas = log.min_insync_replicas;
        kafka.unsafe_topic = match log.unsafe_topic {
            UnsafeTopic::Warn => terra_eventlog::UnsafeTopic::Warn,
            UnsafeTopic::Refuse => terra_eventlog::UnsafeTopic::Refuse,
        };
    }
    if matches!(url, LogUrl::Embedded { .. })
        && config
            .ingress
            .body_limit
            .saturating_add(terra_eventlog::RECORD_OVERHEAD_BYTES)
            > terra_eventlog::embedded::MAX_RECORD_BYTES
    {
        anyhow::bail!(
            "setting ingress.body_limit: {} bytes is more than the embedded log can hold in one record ({} bytes with the envelope)",
            config.ingress.body_limit,
            terra_eventlog::embedded::MAX_RECORD_BYTES
        );
    }
    let embedded = &config.log.embedded;
    let max_segment = terra_eventlog::embedded::MAX_SEGMENT_BYTES;
    if !(1 << 20..=max_segment).contains(&embedded.segment_bytes) {
        anyhow::bail!(
            "setting log.embedded.segment_bytes: {} is out of range (1048576 to {max_segment})",
            embedded.segment_bytes
        );
    }
    if embedded.retention_ms == Some(0) || embedded.retention_bytes == Some(0) {
        anyhow::bail!(
            "settings log.embedded.retention_ms and retention_bytes: 0 would delete every \
             committed segment; leave them unset to keep everything"
        );
    }
    Ok(LogSettings {
        url,
        kafka_properties: kafka_properties(&config.log.kafka.0)?,
        embedded: EmbeddedOptions {
            segment_bytes: embedded.segment_bytes,
            retention: embedded.retention_ms.map(std::time::Duration::from_millis),
            retention_bytes: embedded.retention_bytes,
            max_queued_bytes: embedded.max_queued_bytes,
        },
    })
}

/// librdkafka properties as merged from the layers (`[log.kafka]`, `TERRA_INGEST_KAFKA_*`,
/// `--kafka`). A value `env:NAME` is read from that variable, `file:PATH` from that file.
pub(crate) fn kafka_properties(
    merged: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<KafkaProperties> {
    merged
        .iter()
        .map(|(name, value)| {
            let value = if let Some(var) = value.strip_prefix("env:") {
                std::env::var(var).map_err(|_| {
                    anyhow::anyhow!(
                        "setting log.kafka.{name}: environment variable {var} is not set"
                    )
                })?
            } else if let Some(path) = value.strip_prefix("file:") {
                std::fs::read_to_string(path)
                    .with_context(|| format!("setting log.kafka.{name}: failed to read {path}"))?
                    .trim()
                    .to_owned()
            } else {
                value.clone()
            };
            Ok((name.clone(), value))
        })
        .collect::<anyhow::Result<_>>()
        .map(KafkaProperties)
}

/// Logs and traces, checked.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub otlp_endpoint: Option<String>,
}

pub fn resolve_telemetry(config: &Config) -> TelemetrySettings {
    TelemetrySettings {
        log_format: config.telemetry.log_format,
        otlp_endpoint: config
            .telemetry
            .otlp_endpoint
            .clone()
            .filter(|e| !e.trim().is_empty()),
    }
}

#[cfg(test)]
mod tests {
    use terra_eventlog::{LogUrl, UnsafeTopic};

    use super::resolve_log;
    use crate::settings::tests::{config, load_with};

    /// What `resolve_log` says of the settings in `toml`, which must be refused.
    fn resolve_error(toml: &str) -> String {
        format!(
            "{:#}",
            resolve_log(&config(toml, &["ingress"])).unwrap_err()
        )
    }

    fn kafka(toml: &str, args: &[&str], env: &[(&str, &str)]) -> terra_eventlog::KafkaConfig {
        let c = load_with(toml, args, env).unwrap();
        match resolve_log(&c).unwrap().url {
            LogUrl::Kafka(kafka) => kafka,
            other => panic!("{other:?}"),
        }
    }

    /// Issue 11 §3: the topic's replication and what to do with a topic that can lose
    /// records come from the file, the environment and the flags, later layers winning.
    #[test]
    fn kafka_durability_settings_from_every_layer() {
        let file = "[log]\nurl = \"kafka://k:9092/t\"\nreplication_factor = 3\nmin_insync_replicas = 2\nunsafe_topic = \"refuse\"\n";
        let k = kafka(file, &["ingress"], &[]);
        assert_eq!(
            (k.replication, k.min_insync_replicas, k.unsafe_topic),
            (Some(3), Some(2), UnsafeTopic::Refuse)
        );
        // unset: the defaults are chosen against the cluster at start
        let k = kafka("[log]\nurl = \"kafka://k:9092/t\"\n", &["ingress"], &[]);
        assert_eq!(
            (k.replication, k.min_insync_replicas, k.unsafe_topic),
            (None, None, UnsafeTopic::Warn)
        );
        let env = [
            ("TERRA_INGEST_LOG_REPLICATION_FACTOR", "5"),
            ("TERRA_INGEST_LOG_UNSAFE_TOPIC", "warn"),
        ];
        let k = kafka(file, &["ingress"], &env);
        assert_eq!(
            (k.replication, k.unsafe_topic),
            (Some(5), UnsafeTopic::Warn)
        );
        let args = ["ingress", "--log-min-insync-replicas", "3"];
        let k = kafka(file, &args, &env);
        assert_eq!((k.replication, k.min_insync_replicas), (Some(5), Some(3)));
        // the URL's replication=N is the same setting
        let k = kafka(
            "[log]\nurl = \"kafka://k:9092/t?replication=2\"\n",
            &["ingress"],
            &[],
        );
        assert_eq!(k.replication, Some(2));
    }

    #[test]
    fn kafka_durability_settings_errors_name_the_setting() {
        for (toml, needle) in [
            (
                "[log]\nurl = \"kafka://k:9092/t?replication=2\"\nreplication_factor = 3\n",
                "--log-replication-factor",
            ),
            (
                "[log]\nurl = \"kafka://k:9092/t\"\nmin_insync_replicas = 0\n",
                "--log-min-insync-replicas",
            ),
        ] {
            let err = resolve_error(toml);
            assert!(err.contains(needle), "{toml}: {err}");
        }
        let err = format!(
            "{:#}",
            load_with("[log]\nunsafe_topic = \"maybe\"\n", &["ingress"], &[]).unwrap_err()
        );
        assert!(err.contains("unsafe_topic"), "{err}");
    }

    /// Issue 11 §2: the embedded log's segments, retention and queue from the file and the
    /// nested environment; values that would lose records or make no sense are named.
    #[test]
    fn embedded_log_settings_from_the_file_and_the_environment() {
        let file = "[log.embedded]\nsegment_bytes = 2097152\nretention_ms = 86400000\n";
        let c = load_with(
            file,
            &["ingress"],
            &[("TERRA_INGEST_LOG__EMBEDDED__MAX_QUEUED_BYTES", "1000000")],
        )
        .unwrap();
        let e = resolve_log(&c).unwrap().embedded;
        assert_eq!(e.segment_bytes, 2_097_152);
        assert_eq!(e.retention, Some(std::time::Duration::from_secs(86_400)));
        assert_eq!(e.retention_bytes, None);
        assert_eq!(e.max_queued_bytes, 1_000_000);
        // unset: keep everything
        let e = resolve_log(&config("", &["ingress"])).unwrap().embedded;
        assert_eq!((e.retention, e.retention_bytes), (None, None));
        for (toml, needle) in [
            (
                "[log.embedded]\nsegment_bytes = 4096\n",
                "log.embedded.segment_bytes",
            ),
            (
                "[log.embedded]\nsegment_bytes = 8589934592\n",
                "out of range",
            ),
            ("[log.embedded]\nretention_ms = 0\n", "retention_ms"),
            ("[ingress]\nbody_limit = 300000000\n", "ingress.body_limit"),
            ("[log.embedded]\nretention_bytes = 0\n", "retention_bytes"),
        ] {
            let err = resolve_error(toml);
            assert!(err.contains(needle), "{toml}: {err}");
        }
        let err = format!(
            "{:#}",
            load_with("[log.embedded]\nsegments = 3\n", &["ingress"], &[]).unwrap_err()
        );
        assert!(err.contains("segments"), "{err}");
    }
}
