//! The event-log contract, run against every backend: the embedded log on a temporary folder
//! and Kafka through librdkafka's in-process mock cluster (a real Kafka-protocol broker
//! implementation inside librdkafka; no Kafka broker can be installed on the CI machine in
//! its time budget, see the README).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use terra_eventlog::{Consumed, EventLog, LogError, LogUrl, Position, Record};

const WAIT: Duration = Duration::from_secs(20);

struct Harness {
    log: EventLog,
    // keeps the embedded log's folder alive
    _dir: Option<tempfile::TempDir>,
    /// How to connect again after dropping `log` (`None`: the in-process mock cluster lives
    /// in `log`'s client and dies with it, so the restart is a second client connected to
    /// that cluster over TCP, while the first only hosts it).
    reopen: Option<LogUrl>,
    /// Consumer groups are named per test, so tests sharing one broker never share a group.
    group_prefix: String,
}

impl Harness {
    fn group(&self, name: &str) -> String {
        format!("{}{name}", self.group_prefix)
    }
}

async fn embedded() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = LogUrl::parse(
        &format!("embedded:{}?partitions=3", dir.path().display()),
        dir.path(),
    )
    .unwrap();
    let log = EventLog::open(&url, &[]).await.unwrap();
    Harness {
        log,
        _dir: Some(dir),
        reopen: Some(url),
        group_prefix: String::new(),
    }
}

async fn kafka_mock() -> Harness {
    let url = LogUrl::parse(
        "kafka-mock://terra-events?partitions=3",
        std::path::Path::new("."),
    )
    .unwrap();
    let log = EventLog::open(&url, &[]).await.unwrap();
    Harness {
        log,
        _dir: None,
        reopen: None,
        group_prefix: String::new(),
    }
}

/// A real Kafka-protocol broker (tansu, started by tests/run-all.sh), a fresh topic per test.
async fn kafka_broker() -> Harness {
    let bootstrap = std::env::var("TERRA_TEST_KAFKA_BOOTSTRAP")
        .expect("TERRA_TEST_KAFKA_BOOTSTRAP must name a Kafka-protocol broker (tests/run-all.sh starts tansu and sets it)");
    let unique = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let url = LogUrl::parse(
        &format!("kafka://{bootstrap}/contract-{unique}?partitions=3"),
        std::path::Path::new("."),
    )
    .unwrap();
    let log = EventLog::open(&url, &[]).await.unwrap();
    Harness {
        log,
        _dir: None,
        reopen: Some(url),
        group_prefix: format!("{unique}-"),
    }
}

fn record(key: Option<&str>, value: String) -> Record {
    Record {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        headers: vec![(
            "traceparent".into(),
            Bytes::from_static(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        )],
        value: Bytes::from(value),
    }
}

async fn drain(consumer: &mut terra_eventlog::Consumer, expected: usize) -> Vec<Consumed> {
    let mut out = Vec::new();
    while out.len() < expected {
        let batch = consumer
            .poll((expected - out.len()).min(500), WAIT)
            .await
            .unwrap();
        assert!(
            !batch.is_empty(),
            "timed out after {} of {expected} records",
            out.len()
        );
        out.extend(batch);
    }
    out
}

async fn order_per_key_and_positions(h: Harness) {
    let keys = ["user-a", "user-b", "user-c", "user-d", "user-e"];
    let mut appended = HashMap::new();
    // several concurrent batches, as concurrent webhook requests produce them
    let mut tasks = Vec::new();
    for batch in 0..10 {
        let log = h.log.clone();
        let records: Vec<_> = (0..20)
            .map(|i| {
                let key = keys[i % keys.len()];
                record(Some(key), format!("{key}:{batch}:{i}"))
            })
            .collect();
        tasks.push(tokio::spawn(async move {
            (records.clone(), log.append(records).await.unwrap())
        }));
    }
    for task in tasks {
        let (records, positions) = task.await.unwrap();
        assert_eq!(records.len(), positions.len());
        for (r, p) in records.into_iter().zip(positions) {
            appended.insert(r.value.clone(), (r, p));
        }
    }
    // unkeyed records are accepted too
    h.log
        .append(vec![record(None, "no-user".into())])
        .await
        .unwrap();

    let mut consumer = h.log.consumer(&h.group("order")).unwrap();
    let consumed = drain(&mut consumer, 201).await;
    let mut last_by_key: HashMap<Bytes, Position> = HashMap::new();
    for c in &consumed {
        if c.record.value.as_ref() == b"no-user" {
            assert_eq!(c.record.key, None);
            continue;
        }
        let (original, position) = &appended[&c.record.value];
        assert_eq!(
            &c.position, position,
            "append returned the position the record is read at"
        );
        assert_eq!(
            &c.record, original,
            "key, headers and value come back unchanged"
        );
        let key = c.record.key.clone().unwrap();
        if let Some(previous) = last_by_key.insert(key, c.position) {
            assert_eq!(
                previous.partition, c.position.partition,
                "one key, one partition"
            );
            assert!(previous.offset < c.position.offset);
        }
    }
    // within one batch, a key's records keep their order
    for (value, (_, position)) in &appended {
        let text = std::str::from_utf8(value).unwrap();
        let (key, rest) = text.split_once(':').unwrap();
        let (batch, i) = rest.split_once(':').unwrap();
        let i: usize = i.parse().unwrap();
        if i >= keys.len() {
            let earlier = format!("{key}:{batch}:{}", i - keys.len());
            assert!(appended[earlier.as_bytes()].1.offset < position.offset);
        }
    }
}

async fn commits_are_honoured_and_uncommitted_redelivered(h: Harness) {
    let values: Vec<_> = (0..30).map(|i| format!("v{i}")).collect();
    h.log
        .append(
            values
                .iter()
                .map(|v| record(Some("one-user"), v.clone()))
                .collect(),
        )
        .await
        .unwrap();
    let mut first = h.log.consumer(&h.group("projector")).unwrap();
    let got = drain(&mut first, 30).await;
    // done with the first 12 only
    first.commit(&[got[11].position]).await.unwrap();
    drop(first);
    let mut second = h.log.consumer(&h.group("projector")).unwrap();
    let again = drain(&mut second, 18).await;
    let again: Vec<_> = again
        .iter()
        .map(|c| String::from_utf8(c.record.value.to_vec()).unwrap())
        .collect();
    assert_eq!(
        again,
        values[12..].to_vec(),
        "resumes right after the commit, redelivering the rest"
    );
    // another group is independent and starts from the beginning
    let mut other = h.log.consumer(&h.group("other-group")).unwrap();
    assert_eq!(drain(&mut other, 30).await.len(), 30);
}

async fn empty_poll_waits_then_returns_nothing(h: Harness) {
    let mut consumer = h.log.consumer(&h.group("idle")).unwrap();
    let batch = consumer.poll(10, Duration::from_millis(300)).await.unwrap();
    assert!(batch.is_empty());
    h.log.check_ready().await.unwrap();
    // a record appended while a poll waits wakes it up
    let log = h.log.clone();
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.append(vec![record(Some("k"), "late".into())])
            .await
            .unwrap()
    });
    let got = drain(&mut consumer, 1).await;
    assert_eq!(got[0].record.value.as_ref(), b"late");
    writer.await.unwrap();
}

async fn no_loss_across_restart(h: Harness) {
    let positions = h
        .log
        .append(
            (0..50)
                .map(|i| record(Some(&format!("u{}", i % 7)), format!("r{i}")))
                .collect(),
        )
        .await
        .unwrap();
    let mut consumer = h.log.consumer(&h.group("restart")).unwrap();
    let got = drain(&mut consumer, 20).await;
    consumer
        .commit(&got.iter().map(|c| c.position).collect::<Vec<_>>())
        .await
        .unwrap();
    drop(consumer);
    let Harness {
        log: old,
        reopen,
        group_prefix,
        _dir,
    } = h;
    let group = |name: &str| format!("{group_prefix}{name}");
    let (log, _cluster) = match &reopen {
        Some(url) => {
            drop(old);
            (EventLog::open(url, &[]).await.unwrap(), None)
        }
        // the restarted service is a new client, sharing nothing with the old one but the
        // cluster, which the old one hosts
        None => {
            let EventLog::Kafka(kafka) = &old else {
                unreachable!("only the mock cluster cannot be reopened")
            };
            let servers = kafka.mock_bootstrap_servers().unwrap();
            let url = LogUrl::parse(
                &format!("kafka://{servers}/{}?create=false", kafka.topic()),
                std::path::Path::new("."),
            )
            .unwrap();
            // the mock's KIP-848 coordinator, as the kafka-mock:// client uses (its classic
            // one rebalances only ~30 s after a member leaves)
            let props = [("group.protocol".to_owned(), "consumer".to_owned())];
            (EventLog::open(&url, &props).await.unwrap(), Some(old))
        }
    };
    let mut all = log.consumer(&group("fresh")).unwrap();
    let everything = drain(&mut all, 50).await;
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for c in &everything {
        by_partition
            .entry(c.position.partition)
            .or_default()
            .push(c.position.offset);
    }
    let mut expected: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for p in &positions {
        expected.entry(p.partition).or_default().push(p.offset);
    }
    assert_eq!(by_partition, expected);
    let mut resumed = log.consumer(&group("restart")).unwrap();
    let rest = drain(&mut resumed, 30).await;
    // exactly the 30 not committed: none committed again, none lost
    let mut rest: Vec<Position> = rest.iter().map(|c| c.position).collect();
    let mut uncommitted: Vec<Position> = positions
        .iter()
        .filter(|p| !got.iter().any(|c| c.position == **p))
        .copied()
        .collect();
    rest.sort_by_key(|p| (p.partition, p.offset));
    uncommitted.sort_by_key(|p| (p.partition, p.offset));
    assert_eq!(rest, uncommitted);
}

async fn seek_end_offsets_and_lag(h: Harness) {
    let values: Vec<_> = (0..20).map(|i| format!("s{i}")).collect();
    let positions = h
        .log
        .append(
            values
                .iter()
                .map(|v| record(Some("seek-user"), v.clone()))
                .collect(),
        )
        .await
        .unwrap();
    let partition = positions[0].partition;
    let first = positions[0].offset;
    let ends = h.log.end_offsets().await.unwrap();
    assert_eq!(ends.len(), 3, "every partition is listed");
    assert_eq!(ends[&partition], positions[19].offset + 1);

    let mut consumer = h.log.consumer(&h.group("seeker")).unwrap();
    let got = drain(&mut consumer, 20).await;
    assert_eq!(got.len(), 20);
    consumer.commit(&[got[19].position]).await.unwrap();
    // a sink whose own positions say it has only 5 of them goes back there
    let mut to = BTreeMap::new();
    to.insert(partition, first + 5);
    for (&p, &end) in &ends {
        if p != partition {
            to.insert(p, end);
        }
    }
    consumer.seek(&to).await.unwrap();
    let again = drain(&mut consumer, 15).await;
    let again: Vec<_> = again
        .iter()
        .map(|c| String::from_utf8(c.record.value.to_vec()).unwrap())
        .collect();
    assert_eq!(
        again,
        values[5..].to_vec(),
        "reads again from the sought position"
    );
    let lag = consumer.lag().await.unwrap();
    assert_eq!(
        lag.get(&partition).copied().unwrap_or(0),
        0,
        "read to the end: no lag {lag:?}"
    );
    // the seek is the group's position: a new member starts there too, without seeking
    // (what was read again above was not committed)
    drop(consumer);
    let mut later = h.log.consumer(&h.group("seeker")).unwrap();
    let again = drain(&mut later, 15).await;
    let again: Vec<_> = again
        .iter()
        .map(|c| String::from_utf8(c.record.value.to_vec()).unwrap())
        .collect();
    assert_eq!(
        again,
        values[5..].to_vec(),
        "a new member starts at the seek"
    );
    let more = later.poll(10, Duration::from_millis(500)).await.unwrap();
    assert!(
        more.is_empty(),
        "nothing before the seek: {} more",
        more.len()
    );
}

/// A position past the log's end belongs to another log (a recreated topic, a restored
/// database): refused, never clamped (a sink would then skip the new records its positions
/// claim). The end itself (caught up) is fine.
async fn seek_past_the_end_is_refused(h: Harness) {
    let at = h.log.append(vec![record(Some("ahead"), "a".into())]);
    let p = at.await.unwrap()[0].partition;
    let end = h.log.end_offsets().await.unwrap()[&p];
    let mut consumer = h.log.consumer(&h.group("ahead")).unwrap();
    let err = consumer.seek(&BTreeMap::from([(p, end + 10)])).await;
    let err = err.unwrap_err();
    assert!(
        matches!(err, LogError::Gone { offset, .. } if offset == end + 10),
        "{err}"
    );
    consumer.seek(&BTreeMap::from([(p, end)])).await.unwrap();
}

macro_rules! contract {
    ($($backend:ident),*) => {$(
        mod $backend {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn order_per_key_and_positions() { super::order_per_key_and_positions(super::$backend().await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn commits_are_honoured_and_uncommitted_redelivered() { super::commits_are_honoured_and_uncommitted_redelivered(super::$backend().await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn empty_poll_waits_then_returns_nothing() { super::empty_poll_waits_then_returns_nothing(super::$backend().await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_loss_across_restart() { super::no_loss_across_restart(super::$backend().await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn seek_end_offsets_and_lag() { super::seek_end_offsets_and_lag(super::$backend().await).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn seek_past_the_end_is_refused() { super::seek_past_the_end_is_refused(super::$backend().await).await }
        }
    )*};
}

contract!(embedded, kafka_mock);

/// The same contract on a real Kafka-protocol broker. Ignored by a plain `cargo nextest run`
/// (no broker); `tests/run-all.sh` installs and starts tansu and runs these too.
mod kafka_broker {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
    async fn order_per_key_and_positions() {
        super::order_per_key_and_positions(super::kafka_broker().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
    async fn commits_are_honoured_and_uncommitted_redelivered() {
        super::commits_are_honoured_and_uncommitted_redelivered(super::kafka_broker().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
    async fn empty_poll_waits_then_returns_nothing() {
        super::empty_poll_waits_then_returns_nothing(super::kafka_broker().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
    async fn no_loss_across_restart() {
        super::no_loss_across_restart(super::kafka_broker().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
    async fn seek_end_offsets_and_lag() {
        super::seek_end_offsets_and_lag(super::kafka_broker().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
    async fn seek_past_the_end_is_refused() {
        super::seek_past_the_end_is_refused(super::kafka_broker().await).await
    }
}

#[tokio::test]
async fn kafka_unreachable_broker_is_a_clear_error() {
    let url = LogUrl::parse(
        "kafka://127.0.0.1:1/terra-events",
        std::path::Path::new("."),
    )
    .unwrap();
    let props = [(
        "socket.connection.setup.timeout.ms".to_owned(),
        "1000".to_owned(),
    )];
    let err = EventLog::open(&url, &props)
        .await
        .err()
        .expect("no broker listens on port 1");
    let text = err.to_string();
    assert!(text.contains("cannot reach the Kafka brokers"), "{text}");
    // the cause is kept as a typed source, not flattened into a string
    let source = std::error::Error::source(&err).expect("a source");
    assert!(
        source
            .downcast_ref::<rdkafka::error::KafkaError>()
            .is_some(),
        "{source:?}"
    );
}

#[tokio::test]
async fn kafka_refuses_invalid_client_properties_by_name() {
    let url = LogUrl::parse("kafka-mock://t", std::path::Path::new(".")).unwrap();
    let props = [("no.such.property".to_owned(), "1".to_owned())];
    let err = EventLog::open(&url, &props)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("no.such.property"), "{err}");
}
