//! A consumer-group member on the Kafka topic with explicit, synchronous commits.
//!
//! Nothing is skipped without a trace: librdkafka never moves a position on its own
//! (`auto.offset.reset=error`). A partition the group has never read from is assigned at the
//! log's start ([`StartFresh`]); a position (committed, or asked for by `seek`) whose records
//! are gone (retention, DeleteRecords) or that lies past the log's end (a recreated topic)
//! fails the poll or the seek with [`LogError::Gone`], naming the range lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{config_error, fit_size, set_default};

/// librdkafka's defaults of `fetch.max.bytes` and `receive.message.max.bytes`.
const DEFAULT_FETCH_MAX_BYTES: usize = 52_428_800;
const DEFAULT_RECEIVE_MAX_BYTES: usize = 100_000_000;
use crate::{Consumed, LogError, Position, Record};

pub struct KafkaConsumer {
    consumer: Closing,
    topic: String,
    /// Positions asked for by `seek` and not reached yet: partition → next offset to deliver.
    /// Records before it are dropped (already done); a record after it means the fetch
    /// position is ahead, and the partition is sought back.
    wanted: BTreeMap<u32, u64>,
    /// Partitions of `wanted` already sought on the broker connection.
    sought: BTreeSet<u32>,
}

/// How long dropping a consumer waits for librdkafka's close (leave the group, hand the
/// partitions back) before going on without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The consumer, closed off the dropping thread: librdkafka's close runs on a thread of its
/// own, and the drop waits for it at most [`CLOSE_TIMEOUT`]. A close can hang for ever in
/// librdkafka (seen on the mock cluster after its broker went down and up: the revoke's
/// unassign waits for a group thread that no longer answers), and a hung close must not hang
/// the service's shutdown. Positions are committed synchronously as records are done, so a
/// close cut short loses nothing; the group only rebalances after its session timeout.
struct Closing(Option<Arc<StreamConsumer<StartFresh>>>);

impl std::ops::Deref for Closing {
    type Target = Arc<StreamConsumer<StartFresh>>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let Some(consumer) = self.0.take() else {
            return;
        };
        let (done, closed) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || {
                drop(consumer);
                let _ = done.send(());
            });
        if spawned.is_ok()
            && closed.recv_timeout(CLOSE_TIMEOUT) == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        {
            tracing::warn!("the Kafka consumer did not close within 10 s; going on without it");
        }
    }
}

impl KafkaConsumer {
    pub(super) fn new(
        base: &ClientConfig,
        topic: &str,
        group: &str,
        record_bytes: usize,
    ) -> Result<Self, LogError> {
        let mut config = base.clone();
        // a fetch must be able to return the largest record: Kafka brokers return a record
        // larger than the fetch size anyway (KIP-74), but not every Kafka-protocol broker
        // does (tansu returns nothing, and the consumer would wait for ever)
        fit_size(&mut config, "fetch.message.max.bytes", record_bytes)?;
        if record_bytes > DEFAULT_FETCH_MAX_BYTES {
            fit_size(&mut config, "fetch.max.bytes", record_bytes)?;
        }
        if record_bytes + 512 > DEFAULT_RECEIVE_MAX_BYTES {
            fit_size(&mut config, "receive.message.max.bytes", record_bytes + 512)?;
        }
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // never jump: `earliest` would skip records that are gone without a word, and
            // a seek back to them would loop; the reset error is resolved in `poll`
            .set("auto.offset.reset", "error");
        set_default(&mut config, "enable.partition.eof", "false");
        Ok(Self {
            consumer: Closing(Some(Arc::new(subscribe(&config, topic)?))),
            topic: topic.to_owned(),
            wanted: BTreeMap::new(),
            sought: BTreeSet::new(),
        })
    }

    /// Reads every partition from `next` (0 where not named); a position before the log's
    /// start (its records are gone) or past its end (it belongs to another log: a recreated
    /// topic) is [`LogError::Gone`]. Partitions
    /// this member holds are sought at once; the others when they are assigned (a member that
    /// just joined holds none yet). Also commits the positions, best effort, so a member that
    /// replaces this one starts there.
    pub(crate) async fn seek(&mut self, next: &BTreeMap<u32, u64>) -> Result<(), LogError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let ranges = tokio::task::spawn_blocking(move || super::ranges(consumer.client(), &topic))
            .await
            .map_err(|_| LogError::Unavailable("seek task panicked".into()))??;
        let mut wanted = BTreeMap::new();
        for (&partition, &(start, end)) in &ranges {
            let offset = next.get(&partition).copied().unwrap_or(0);
            if offset < start || offset > end {
                return Err(LogError::gone(partition, "wanted", offset, start, end));
            }
            wanted.insert(partition, offset);
        }
        self.wanted = wanted;
        self.sought.clear();
        let mut list = TopicPartitionList::new();
        for (&partition, &offset) in &self.wanted {
            list.add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset as i64))
                .map_err(|e| LogError::Config(format!("bad seek position: {e}")))?;
        }
        let consumer = Arc::clone(&self.consumer);
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|_| LogError::Unavailable("seek task panicked".into()))?;
        if let Err(err) = committed {
            tracing::debug!(error = %err, "seek positions not committed yet (no assignment); applied on assignment");
        }
        self.seek_assigned();
        Ok(())
    }

    /// Seeks the wanted partitions this member holds now.
    fn seek_assigned(&mut self) {
        if self.wanted.len() == self.sought.len() {
            return;
        }
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        for element in assignment.elements_for_topic(&self.topic) {
            let partition = element.partition() as u32;
            let Some(&offset) = self.wanted.get(&partition) else {
                continue;
            };
            if self.sought.contains(&partition) {
                continue;
            }
            let sought = self.consumer.seek(
                &self.topic,
                partition as i32,
                Offset::Offset(offset as i64),
                Duration::from_secs(5),
            );
            if sought.is_ok() {
                self.sought.insert(partition);
            }
        }
    }

    /// Whether a received record is to be delivered, given the wanted positions.
    fn accept(&mut self, position: Position) -> bool {
        let Some(&wanted) = self.wanted.get(&position.partition) else {
            return true;
        };
        if position.offset == wanted {
            self.wanted.remove(&position.partition);
            self.sought.remove(&position.partition);
            return true;
        }
        if position.offset > wanted {
            // fetching from after the wanted position: go back
            self.sought.remove(&position.partition);
            let _ = self.consumer.seek(
                &self.topic,
                position.partition as i32,
                Offset::Offset(wanted as i64),
                Duration::from_secs(5),
            );
            self.sought.insert(position.partition);
        }
        false
    }

    /// librdkafka found a partition's position outside the log (`auto.offset.reset=error`;
    /// the error does not say which partition): the one whose records are gone is named. The
    /// partition has stopped fetching, so every outcome is an error: the consumer must not
    /// go on with a partition silently stalled.
    async fn resolve_reset(&mut self, cause: KafkaError) -> Result<(), LogError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        let wanted = self.wanted.clone();
        tokio::task::spawn_blocking(move || {
            let ranges = super::ranges(consumer.client(), &topic)?;
            let assignment = consumer
                .assignment()
                .map_err(LogError::kafka("Kafka assignment query failed"))?;
            let committed = consumer
                .committed_offsets(assignment, Duration::from_secs(5))
                .map_err(LogError::kafka("Kafka committed offsets query failed"))?;
            for element in committed.elements_for_topic(&topic) {
                let partition = element.partition() as u32;
                let Some(&(start, end)) = ranges.get(&partition) else {
                    continue;
                };
                let position = match (wanted.get(&partition), element.offset()) {
                    (Some(&offset), _) => ("wanted", offset),
                    (None, Offset::Offset(n)) if n >= 0 => ("committed", n as u64),
                    _ => {
                        // join the group again: the new assignment starts the partition at
                        // the log's start (nothing is lost: positions are committed as
                        // records are done), so the next poll after this error goes on
                        consumer.unsubscribe();
                        consumer
                            .subscribe(&[topic.as_str()])
                            .map_err(LogError::kafka(format!("failed to subscribe to {topic:?}")))?;
                        return Err(LogError::Unavailable(format!(
                            "partition {partition}: the group has no position in it and it was not started at the log's start (the group's positions could not be read at assignment); joining the group again"
                        )));
                    }
                };
                let (what, offset) = position;
                if offset < start || offset > end {
                    return Err(LogError::gone(partition, what, offset, start, end));
                }
            }
            Err(LogError::kafka(
                "a partition's position is outside the log, though every position checks out now",
            )(cause))
        })
        .await
        .map_err(|_| LogError::Unavailable("offset check panicked".into()))?
    }

    /// Records not yet read in each assigned partition.
    pub(crate) async fn lag(&self) -> Result<BTreeMap<u32, u64>, LogError> {
        let consumer = Arc::clone(&self.consumer);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let ends = super::watermarks(consumer.client(), &topic)?;
            let positions = consumer
                .position()
                .map_err(LogError::kafka("Kafka position query failed"))?;
            let mut lag = BTreeMap::new();
            for element in positions.elements_for_topic(&topic) {
                let partition = element.partition() as u32;
                let end = ends.get(&partition).copied().unwrap_or(0);
                let at = match element.offset() {
                    Offset::Offset(n) if n >= 0 => n as u64,
                    _ => continue,
                };
                lag.insert(partition, end.saturating_sub(at));
            }
            Ok(lag)
        })
        .await
        .map_err(|_| LogError::Unavailable("lag task panicked".into()))?
    }

    pub(crate) async fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Consumed>, LogError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while out.is_empty() {
            self.seek_assigned();
            let received = tokio::time::timeout_at(deadline, self.consumer.recv()).await;
            match received {
                Err(_) => return Ok(out),
                Ok(Ok(message)) => {
                    let consumed = convert(&message);
                    drop(message);
                    if self.accept(consumed.position) {
                        out.push(consumed);
                    }
                }
                Ok(Err(err)) if is_reset(&err) => self.resolve_reset(err).await?,
                // librdkafka reports broker trouble through the consumer but recovers by
                // itself (reconnect, rebalance); the caller sees an empty poll, not a failure
                Ok(Err(err)) => tracing::warn!(error = %err, "kafka consumer error; retrying"),
            }
        }
        while out.len() < max {
            // a zero timeout still polls once: take what is already fetched, never wait
            let received = tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await;
            match received {
                Ok(Ok(message)) => {
                    let consumed = convert(&message);
                    drop(message);
                    if self.accept(consumed.position) {
                        out.push(consumed);
                    }
                }
                Ok(Err(err)) if is_reset(&err) => self.resolve_reset(err).await?,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(out)
    }

    pub(crate) async fn commit(&mut self, done: &[Position]) -> Result<(), LogError> {
        let mut next: BTreeMap<u32, u64> = BTreeMap::new();
        for position in done {
            let entry = next.entry(position.partition).or_insert(0);
            *entry = (*entry).max(position.offset + 1);
        }
        if next.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for (partition, offset) in next {
            list.add_partition_offset(&self.topic, partition as i32, Offset::Offset(offset as i64))
                .map_err(|e| LogError::Config(format!("bad commit position: {e}")))?;
        }
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|_| LogError::Unavailable("commit task panicked".into()))?
            .map_err(LogError::kafka("Kafka commit failed"))
    }
}

/// The error librdkafka reports instead of moving a position (`auto.offset.reset=error`).
fn is_reset(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// The consumer's context: partitions the group has no position in are assigned at the
/// log's start. librdkafka's reset policy is `error` (a position whose records are gone must
/// not be skipped), so without this a new group could not start, and a partition in error
/// cannot be sought.
pub(super) struct StartFresh;

impl ClientContext for StartFresh {}

impl ConsumerContext for StartFresh {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let done = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                start_fresh(consumer, tpl);
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if cooperative => {
                consumer.incremental_unassign(tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => consumer.unassign(),
            other => {
                tracing::warn!(error = ?other, "kafka rebalance failed");
                Ok(())
            }
        };
        if let Err(err) = done {
            tracing::warn!(error = %err, "kafka assignment change failed");
        }
    }
}

/// Sets the partitions of `tpl` without a committed position to start at the log's start
/// (the others keep theirs: librdkafka reads it). If the positions cannot be read, none is
/// set, and a partition without one fails the poll instead.
fn start_fresh(consumer: &BaseConsumer<StartFresh>, tpl: &mut TopicPartitionList) {
    // a broker that just came back may not answer at once: three tries over ~15 s
    let mut tries = 0;
    let committed = loop {
        match consumer.committed_offsets(tpl.clone(), Duration::from_secs(5)) {
            Ok(committed) => break committed,
            Err(err) if tries < 2 => {
                tries += 1;
                std::thread::sleep(Duration::from_secs(1));
                tracing::debug!(error = %err, tries, "reading the group's positions at assignment");
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not read the group's positions at assignment");
                return;
            }
        }
    };
    for element in committed.elements() {
        if !matches!(element.offset(), Offset::Offset(n) if n >= 0) {
            let _ =
                tpl.set_partition_offset(element.topic(), element.partition(), Offset::Beginning);
        }
    }
}

fn subscribe(config: &ClientConfig, topic: &str) -> Result<StreamConsumer<StartFresh>, LogError> {
    let consumer: StreamConsumer<StartFresh> = config
        .create_with_context(StartFresh)
        .map_err(config_error)?;
    consumer
        .subscribe(&[topic])
        .map_err(LogError::kafka(format!("failed to subscribe to {topic:?}")))?;
    Ok(consumer)
}

fn convert(message: &BorrowedMessage<'_>) -> Consumed {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        Bytes::copy_from_slice(h.value.unwrap_or_default()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Consumed {
        position: Position {
            partition: message.partition() as u32,
            offset: message.offset() as u64,
        },
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        record: Record {
            key: message.key().map(Bytes::copy_from_slice),
            headers,
            value: message
                .payload()
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
        },
    }
}
