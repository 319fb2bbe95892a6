//! The Kafka backend (rdkafka; any Kafka-protocol broker: Kafka, Redpanda, MSK, Confluent).
//!
//! The producer is idempotent with `acks=all`, so an acknowledged append is on every in-sync
//! replica and a retried send never duplicates within a partition. Records are partitioned by
//! key with `murmur2_random`, the Java client's partitioner, so keyed records land where any
//! other Kafka client would put them and records without a key spread randomly. Every
//! librdkafka property given in the configuration passes through to the producer, consumers
//! and admin client (TLS, SASL/SCRAM, SASL/PLAIN, OAUTHBEARER, ...).

mod consumer;
#[cfg(feature = "mock")]
mod mock;
mod topic;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

pub use crate::KafkaConfig;
pub use consumer::KafkaConsumer;

use crate::{LogError, Position, Record};

/// Properties terra-ingest sets itself, under every name librdkafka knows them by (an alias
/// given beside the name would win or lose at random: librdkafka applies properties in the
/// order of a hash map). A configured value for one of them is ignored with a warning,
/// because changing it would break "acknowledged means durable" (`enable.idempotence=true`,
/// `acks=all`) or "read means projected" (`enable.auto.commit=false`,
/// `enable.auto.offset.store=false`, `auto.offset.reset=error`: a consumer whose position
/// is gone stops instead of skipping to an end of the log).
const ENFORCED: [&str; 7] = [
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "enable.auto.commit",
    "auto.commit.enable",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// How long metadata requests (start-up checks, watermarks) may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the readiness check's metadata request may take: less than the 3 s a `/readyz`
/// handler waits (`terra_runtime::ops::READY_TIMEOUT`), so no request outlives the probe that
/// made it (blocking threads would pile up under a prober, and a request still in flight
/// when the client is destroyed once hung a test for an hour).
const READY_METADATA_TIMEOUT: Duration = Duration::from_millis(2_500);

#[derive(Clone)]
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    producer: FutureProducer,
    /// The largest record the log must carry (body limit + envelope).
    record_bytes: usize,
    /// Connection settings shared by consumers (bootstrap servers and passed-through
    /// properties).
    base: ClientConfig,
    topic: String,
}

impl KafkaLog {
    /// Connects, creates the topic when asked and missing, and checks the topic is there.
    pub async fn connect(
        config: KafkaConfig,
        properties: &[(String, String)],
    ) -> Result<Self, LogError> {
        let mut base = ClientConfig::new();
        for (name, value) in properties {
            if ENFORCED.contains(&name.as_str()) {
                tracing::warn!(property = %name, "ignoring a Kafka property terra-ingest must set itself");
                continue;
            }
            base.set(name, value);
        }
        let mut producer_config = base.clone();
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random");
        // every append waits for its acks: a short linger keeps that wait short, and batches
        // still form under load (idempotence allows 5 requests in flight per broker)
        set_default(&mut producer_config, "linger.ms", "0.5");
        // answer (503) before Terra's ~8 s delivery timeout rather than after it
        set_default(&mut producer_config, "message.timeout.ms", "5000");
        // every body the ingress accepts must be storable: a record over the producer's
        // limit would be refused on every retry (503 for ever, the delivery lost)
        let record_bytes = config.max_record_bytes();
        fit_size(&mut producer_config, "message.max.bytes", record_bytes)?;
        let producer: FutureProducer = match &config.bootstrap_servers {
            Some(servers) => {
                base.set("bootstrap.servers", servers);
                producer_config.set("bootstrap.servers", servers);
                producer_config.create().map_err(config_error)?
            }
            #[cfg(not(feature = "mock"))]
            None => {
                return Err(LogError::Config(
                    "kafka-mock:// is not in this build (the `kafka-mock` feature of terra-ingest)"
                        .into(),
                ));
            }
            #[cfg(feature = "mock")]
            None => {
                let (producer, servers) = mock::start(&producer_config, &config)?;
                base.set("bootstrap.servers", servers);
                // the mock's classic group coordinator rebalances only ~25-45 s after a member
                // leaves; its KIP-848 coordinator hands partitions over at once
                set_default(&mut base, "group.protocol", "consumer");
                producer
            }
        };
        if config.bootstrap_servers.is_some() {
            topic::prepare(&base, &config).await?;
        }
        let log = Self {
            inner: Arc::new(Inner {
                producer,
                record_bytes,
                base,
                topic: config.topic,
            }),
        };
        log.check_metadata(METADATA_TIMEOUT).await?;
        Ok(log)
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    pub(crate) async fn append(&self, records: Vec<Record>) -> Result<Vec<Position>, LogError> {
        let mut pending = Vec::with_capacity(records.len());
        for record in &records {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (name, value) in &record.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_ref()),
                });
            }
            let mut future = FutureRecord::<[u8], [u8]>::to(&self.inner.topic)
                .payload(&record.value)
                .headers(headers);
            if let Some(key) = &record.key {
                future = future.key(key.as_ref());
            }
            let delivery = self
                .inner
                .producer
                .send_result(future)
                .map_err(|(err, _)| produce_error(err))?;
            pending.push(delivery);
        }
        let mut positions = Vec::with_capacity(pending.len());
        for delivery in pending {
            let delivered = delivery
                .await
                .map_err(|_| LogError::Unavailable("Kafka producer shut down".into()))?
                .map_err(|(err, _)| produce_error(err))?;
            positions.push(Position {
                partition: delivered.partition as u32,
                offset: delivered.offset as u64,
            });
        }
        Ok(positions)
    }

    pub(crate) async fn check_ready(&self) -> Result<(), LogError> {
        // an idempotent producer that hit a fatal error (fenced, out of sequence) refuses
        // every append until the process restarts: not ready, whatever the brokers say
        if let Some((code, reason)) = self.inner.producer.client().fatal_error() {
            return Err(LogError::Unavailable(format!(
                "the Kafka producer is in a fatal state ({code:?}: {reason}); it takes no appends until the service restarts"
            )));
        }
        self.check_metadata(READY_METADATA_TIMEOUT).await
    }

    /// The brokers answer a metadata request for the topic within `timeout`, and it exists.
    async fn check_metadata(&self, timeout: Duration) -> Result<(), LogError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let metadata = inner
                .producer
                .client()
                .fetch_metadata(Some(&inner.topic), timeout)
                .map_err(LogError::kafka("cannot reach the Kafka brokers"))?;
            let topic = metadata.topics().iter().find(|t| t.name() == inner.topic);
            match topic {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(LogError::Config(format!(
                    "Kafka topic {:?} does not exist",
                    inner.topic
                ))),
            }
        })
        .await
        .map_err(|_| LogError::Unavailable("metadata check panicked".into()))?
    }

    /// The high watermark (next offset to be written) of every partition of the topic.
    pub(crate) async fn end_offsets(&self) -> Result<BTreeMap<u32, u64>, LogError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || watermarks(inner.producer.client(), &inner.topic))
            .await
            .map_err(|_| LogError::Unavailable("watermark query panicked".into()))?
    }

    pub(crate) fn consumer(&self, group: &str) -> Result<KafkaConsumer, LogError> {
        KafkaConsumer::new(
            &self.inner.base,
            &self.inner.topic,
            group,
            self.inner.record_bytes,
        )
    }

    /// Flushes queued messages (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.inner.producer.flush(timeout);
    }
}

/// Sets client property `name` to hold `needed` bytes; one configured lower is an error
/// naming it.
pub(super) fn fit_size(
    config: &mut ClientConfig,
    name: &str,
    needed: usize,
) -> Result<(), LogError> {
    match config.get(name).map(|v| v.parse::<usize>()) {
        Some(Ok(set)) if set < needed => Err(LogError::Config(format!(
            "kafka.{name} is {set}, below the {needed} bytes a body at the body limit needs: raise it or lower body_limit"
        ))),
        Some(Ok(_)) => Ok(()),
        _ => {
            config.set(name, needed.to_string());
            Ok(())
        }
    }
}

/// Every partition of `topic` with its high watermark (blocking: call off the runtime).
pub(crate) fn watermarks<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<BTreeMap<u32, u64>, LogError> {
    Ok(ranges(client, topic)?
        .into_iter()
        .map(|(partition, (_, end))| (partition, end))
        .collect())
}

/// Every partition of `topic` with the offsets it holds, `start..end` (low and high
/// watermarks; blocking: call off the runtime).
pub(crate) fn ranges<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> Result<BTreeMap<u32, (u64, u64)>, LogError> {
    let unreachable = |e: KafkaError| LogError::kafka("cannot reach the Kafka brokers")(e);
    let metadata = client
        .fetch_metadata(Some(topic), METADATA_TIMEOUT)
        .map_err(unreachable)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    if partitions.is_empty() {
        return Err(LogError::Config(format!(
            "Kafka topic {topic:?} does not exist"
        )));
    }
    let mut out = BTreeMap::new();
    for partition in partitions {
        let (low, high) = client
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(unreachable)?;
        out.insert(partition as u32, (low.max(0) as u64, high.max(0) as u64));
    }
    Ok(out)
}

/// Sets `name` unless the configuration already has a value for it.
fn set_default(config: &mut ClientConfig, name: &str, value: &str) {
    if config.get(name).is_none() {
        config.set(name, value);
    }
}

fn config_error(err: KafkaError) -> LogError {
    LogError::Config(format!("invalid Kafka client configuration: {err}"))
}

fn produce_error(err: KafkaError) -> LogError {
    match err {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut) => LogError::Timeout,
        other => LogError::kafka("Kafka produce failed")(other),
    }
}

#[cfg(feature = "test-hooks")]
impl KafkaLog {
    /// Takes the broker of a `kafka-mock://` log down or back up, to exercise outage paths
    /// (tests, chaos drills). Errors for a real cluster.
    pub fn set_mock_broker_up(&self, up: bool) -> Result<(), LogError> {
        let client = self.inner.producer.client();
        let cluster = client
            .mock_cluster()
            .ok_or_else(|| LogError::Config("not a kafka-mock:// log".into()))?;
        let result = if up {
            cluster.broker_up(1)
        } else {
            cluster.broker_down(1)
        };
        result.map_err(|e| LogError::Config(format!("mock cluster: {e}")))
    }

    /// The bootstrap servers of a `kafka-mock://` log's cluster, for a second client (a
    /// restart, while this one keeps hosting the cluster). `None` for a real cluster.
    pub fn mock_bootstrap_servers(&self) -> Option<String> {
        let client = self.inner.producer.client();
        client
            .mock_cluster()
            .map(|cluster| cluster.bootstrap_servers())
    }

    /// Puts the producer in a fatal state, as a fenced or out-of-sequence idempotent producer
    /// would be (librdkafka's test hook).
    pub fn inject_fatal_error(&self) {
        mock::inject_fatal_error(&self.inner.producer);
    }
}
