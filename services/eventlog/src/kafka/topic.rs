//! The topic at start: created when missing (everything kept, replicated as wanted), then
//! checked: a topic that cannot hold the largest record is refused; one that could lose
//! records (finite retention, compaction, fewer replicas or in-sync replicas than wanted,
//! unclean leader election) is warned about or refused (`UnsafeTopic`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::{METADATA_TIMEOUT, config_error};
use crate::{DEFAULT_MIN_INSYNC_REPLICAS, DEFAULT_REPLICATION_FACTOR};
use crate::{KafkaConfig, LogError, UnsafeTopic};

/// The topic configurations the checks read.
const CHECKED: [&str; 6] = [
    "max.message.bytes",
    "retention.ms",
    "retention.bytes",
    "cleanup.policy",
    "min.insync.replicas",
    "unclean.leader.election.enable",
];

/// How the topic must be replicated, resolved against the cluster's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Durability {
    pub(super) replication: u32,
    pub(super) min_insync: u32,
}

impl Durability {
    /// The configured values, or the defaults fitted to a cluster of `brokers` brokers:
    /// a configured value is a requirement and is never lowered; a default is lowered to
    /// what the cluster can hold, with a warning, so a one-broker setup works out of the
    /// box. A default `min.insync.replicas` leaves one replica to spare (RF 3: 2, RF 2: 1),
    /// so one broker down does not stop appends.
    pub(super) fn resolve(config: &KafkaConfig, brokers: u32) -> Result<Self, LogError> {
        let replication = match config.replication {
            Some(wanted) => wanted,
            None if brokers < DEFAULT_REPLICATION_FACTOR => {
                let fitted = brokers.max(1);
                tracing::warn!(
                    brokers,
                    replication_factor = fitted,
                    default = DEFAULT_REPLICATION_FACTOR,
                    "small Kafka cluster: the topic's replication factor is lowered to the broker count; set log.replication_factor to require one"
                );
                fitted
            }
            None => DEFAULT_REPLICATION_FACTOR,
        };
        let min_insync = match config.min_insync_replicas {
            Some(wanted) if wanted > replication => {
                return Err(LogError::Config(format!(
                    "log.min_insync_replicas is {wanted}, above the replication factor {replication}: no append could ever be acknowledged"
                )));
            }
            Some(wanted) => wanted,
            None => DEFAULT_MIN_INSYNC_REPLICAS.min(replication.saturating_sub(1).max(1)),
        };
        Ok(Self {
            replication,
            min_insync,
        })
    }
}

/// Creates the topic when asked and missing, then checks it (real brokers only).
pub(super) async fn prepare(base: &ClientConfig, config: &KafkaConfig) -> Result<(), LogError> {
    let admin: Arc<AdminClient<DefaultClientContext>> =
        Arc::new(base.create().map_err(config_error)?);
    let (brokers, mut replicas) = cluster_facts(&admin, &config.topic).await?;
    let durability = Durability::resolve(config, brokers)?;
    if config.create_topic && replicas.is_none() {
        create(&admin, config, durability).await?;
        // a new topic reaches every broker's metadata a little after its creation
        for _ in 0..25 {
            replicas = cluster_facts(&admin, &config.topic).await?.1;
            if replicas.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if replicas.is_none() {
        // missing: the caller's metadata check says so
        return Ok(());
    }
    let configs = describe(&admin, &config.topic).await;
    check_size(configs.as_ref(), config)?;
    let facts = Facts {
        configs: configs.unwrap_or_default(),
        replication: replicas,
    };
    let risks = facts.risks(durability);
    if risks.is_empty() {
        return Ok(());
    }
    let list = risks.join("; ");
    match config.unsafe_topic {
        UnsafeTopic::Warn => {
            tracing::warn!(topic = %config.topic, risks = %list, "the Kafka topic can lose records (set log.unsafe_topic = \"refuse\" to refuse it)");
            Ok(())
        }
        UnsafeTopic::Refuse => Err(LogError::Config(format!(
            "Kafka topic {:?} can lose records: {list} (log.unsafe_topic is \"refuse\"; fix the topic, or set it to \"warn\")",
            config.topic
        ))),
    }
}

/// The cluster's broker count, and the fewest replicas of a partition of `topic` (`None`
/// when the topic does not exist).
async fn cluster_facts(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    topic: &str,
) -> Result<(u32, Option<u32>), LogError> {
    let (admin, name) = (Arc::clone(admin), topic.to_owned());
    let metadata = tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(Some(&name), METADATA_TIMEOUT)
    })
    .await
    .map_err(|_| LogError::Unavailable("metadata task panicked".into()))?
    .map_err(LogError::kafka("cannot reach the Kafka brokers"))?;
    let brokers = metadata.brokers().len() as u32;
    let replicas = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .and_then(|t| {
            t.partitions()
                .iter()
                .map(|p| p.replicas().len() as u32)
                .min()
        });
    Ok((brokers, replicas))
}

async fn create(
    admin: &AdminClient<DefaultClientContext>,
    config: &KafkaConfig,
    durability: Durability,
) -> Result<(), LogError> {
    let record_bytes = config.max_record_bytes().to_string();
    let min_insync = durability.min_insync.to_string();
    let topic = NewTopic::new(
        &config.topic,
        config.partitions as i32,
        TopicReplication::Fixed(durability.replication as i32),
    )
    // the largest body the ingress accepts, whatever the broker's default (often 1 MB)
    .set("max.message.bytes", &record_bytes)
    // the log is the source of truth: nothing expires (tiered storage keeps this and moves
    // old segments to object storage: see ARCHITECTURE.md)
    .set("retention.ms", "-1")
    .set("retention.bytes", "-1")
    .set("cleanup.policy", "delete")
    .set("min.insync.replicas", &min_insync)
    .set("unclean.leader.election.enable", "false");
    let results = admin
        .create_topics([&topic], &options())
        .await
        .map_err(LogError::kafka(format!(
            "cannot reach the Kafka brokers to create topic {:?}",
            config.topic
        )))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(LogError::Unavailable(format!(
                    "failed to create Kafka topic {name:?} with replication factor {} and min.insync.replicas {}: {code}",
                    durability.replication, durability.min_insync
                )));
            }
        }
    }
    Ok(())
}

/// The topic's configurations the checks read; `None` when the broker does not describe
/// them.
async fn describe(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
) -> Option<BTreeMap<String, String>> {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options())
        .await;
    match described.as_deref() {
        Ok([Ok(resource)]) if resource.specifier == OwnedResourceSpecifier::Topic(topic.into()) => {
            Some(
                CHECKED
                    .iter()
                    .filter_map(|name| {
                        let value = resource.get(name)?.value.clone()?;
                        Some(((*name).to_owned(), value))
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

/// Refuses a topic whose `max.message.bytes` is below the largest record the log must
/// carry: bodies the ingress accepts would be refused by the broker on every retry. A broker
/// that does not describe topic configurations is warned about, not refused.
fn check_size(
    configs: Option<&BTreeMap<String, String>>,
    config: &KafkaConfig,
) -> Result<(), LogError> {
    let value = configs
        .and_then(|c| c.get("max.message.bytes"))
        .and_then(|v| v.parse::<u64>().ok());
    let needed = config.max_record_bytes();
    match value {
        Some(max) if max < needed as u64 => Err(LogError::Config(format!(
            "Kafka topic {:?} holds records of at most {max} bytes (its max.message.bytes), but a body at the body limit ({} bytes) needs {needed}: raise the topic's max.message.bytes (kafka-configs --alter --add-config max.message.bytes={needed}) or lower body_limit",
            config.topic, config.max_body_bytes
        ))),
        Some(_) => Ok(()),
        None => {
            tracing::warn!(topic = %config.topic, needed, "could not read the topic's max.message.bytes; bodies near the body limit may be refused by the broker");
            Ok(())
        }
    }
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(METADATA_TIMEOUT))
        .request_timeout(Some(METADATA_TIMEOUT))
}

/// What the brokers say about an existing topic.
#[derive(Debug, Default)]
struct Facts {
    /// Its configurations by name (those the broker described).
    configs: BTreeMap<String, String>,
    /// The fewest replicas of any of its partitions.
    replication: Option<u32>,
}

impl Facts {
    /// Every way the topic can lose records or acknowledged appends, one phrase each.
    fn risks(&self, wanted: Durability) -> Vec<String> {
        let mut risks = Vec::new();
        let config = |name: &str| self.configs.get(name).map(String::as_str);
        match config("retention.ms") {
            Some("-1") => {}
            Some(ms) => risks.push(format!(
                "retention.ms={ms}: records older than that are deleted (want -1; with tiered storage too, which moves old segments instead)"
            )),
            None => risks.push("retention.ms could not be read".into()),
        }
        match config("retention.bytes") {
            Some("-1") | None => {}
            Some(bytes) => risks.push(format!(
                "retention.bytes={bytes}: the oldest records are deleted past that size (want -1)"
            )),
        }
        match config("cleanup.policy") {
            Some(policy) if policy.contains("compact") => risks.push(format!(
                "cleanup.policy={policy}: compaction keeps only the last record of each key (user), want delete"
            )),
            _ => {}
        }
        if config("unclean.leader.election.enable") == Some("true") {
            risks.push(
                "unclean.leader.election.enable=true: an out-of-sync replica may become leader and drop acknowledged records".into(),
            );
        }
        match config("min.insync.replicas").and_then(|v| v.parse::<u32>().ok()) {
            Some(n) if n < wanted.min_insync => risks.push(format!(
                "min.insync.replicas={n}: an append is acknowledged once on {n} replica(s), want {}",
                wanted.min_insync
            )),
            Some(_) => {}
            None => risks.push("min.insync.replicas could not be read".into()),
        }
        match self.replication {
            Some(n) if n < wanted.replication => risks.push(format!(
                "replication factor {n}: a partition lives on {n} broker(s), want {}",
                wanted.replication
            )),
            Some(_) => {}
            None => risks.push("the replication factor could not be read".into()),
        }
        risks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(replication: Option<u32>, min_insync: Option<u32>) -> KafkaConfig {
        let url = crate::LogUrl::parse("kafka://b:9092/t", std::path::Path::new(".")).unwrap();
        let crate::LogUrl::Kafka(mut config) = url else {
            unreachable!()
        };
        config.replication = replication;
        config.min_insync_replicas = min_insync;
        config
    }

    fn durability(replication: u32, min_insync: u32) -> Durability {
        Durability {
            replication,
            min_insync,
        }
    }

    #[test]
    fn durability_defaults_fit_small_clusters_but_configured_values_are_kept() {
        let resolve = |r, m, brokers| Durability::resolve(&kafka(r, m), brokers).unwrap();
        // defaults: RF 3 / min.insync 2 on a real cluster, lowered on a small one
        assert_eq!(resolve(None, None, 5), durability(3, 2));
        assert_eq!(resolve(None, None, 3), durability(3, 2));
        assert_eq!(resolve(None, None, 2), durability(2, 1));
        assert_eq!(resolve(None, None, 1), durability(1, 1));
        // a configured value is a requirement: never lowered (creation then fails loudly)
        assert_eq!(resolve(Some(3), None, 1), durability(3, 2));
        assert_eq!(resolve(Some(3), Some(3), 1), durability(3, 3));
        assert_eq!(resolve(None, Some(1), 5), durability(3, 1));
        let err = Durability::resolve(&kafka(Some(2), Some(3)), 5).unwrap_err();
        assert!(
            err.to_string().contains("log.min_insync_replicas is 3"),
            "{err}"
        );
    }

    fn facts(pairs: &[(&str, &str)], replication: u32) -> Facts {
        Facts {
            configs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            replication: Some(replication),
        }
    }

    const SAFE: [(&str, &str); 5] = [
        ("retention.ms", "-1"),
        ("retention.bytes", "-1"),
        ("cleanup.policy", "delete"),
        ("min.insync.replicas", "2"),
        ("unclean.leader.election.enable", "false"),
    ];

    #[test]
    fn a_topic_that_keeps_everything_has_no_risks() {
        assert_eq!(
            facts(&SAFE, 3).risks(durability(3, 2)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn every_way_a_topic_can_lose_records_is_named() {
        let cases: [(&str, &str, u32, &str); 7] = [
            ("retention.ms", "604800000", 3, "retention.ms=604800000"),
            (
                "retention.bytes",
                "1073741824",
                3,
                "retention.bytes=1073741824",
            ),
            ("cleanup.policy", "compact,delete", 3, "compaction"),
            (
                "unclean.leader.election.enable",
                "true",
                3,
                "unclean.leader",
            ),
            ("min.insync.replicas", "1", 3, "min.insync.replicas=1"),
            ("retention.ms", "-1", 2, "replication factor 2"),
            ("retention.ms", "-1", 1, "replication factor 1"),
        ];
        for (name, value, replication, needle) in cases {
            let mut pairs: Vec<(&str, &str)> =
                SAFE.iter().filter(|(k, _)| *k != name).copied().collect();
            pairs.push((name, value));
            let risks = facts(&pairs, replication).risks(durability(3, 2));
            assert_eq!(risks.len(), 1, "{name}={value}: {risks:?}");
            assert!(risks[0].contains(needle), "{name}={value}: {risks:?}");
        }
        // a broker that describes nothing: nothing verified, every unknown named
        let unknown = Facts::default().risks(durability(1, 1));
        assert_eq!(unknown.len(), 3, "{unknown:?}");
    }
}
