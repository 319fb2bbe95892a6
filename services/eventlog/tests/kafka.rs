//! The Kafka backend's limits and states (issue 11): records as large as the body limit,
//! topics that keep everything, readiness that answers within the probe's time and says when
//! the producer can take no more appends. The backend-independent contract is in
//! `contract.rs`.

use terra_eventlog::{EventLog, LogUrl};

async fn mock_log() -> EventLog {
    let url = LogUrl::parse("kafka-mock://terra-events", std::path::Path::new(".")).unwrap();
    EventLog::open(&url, &[]).await.unwrap()
}

/// A readiness probe waits 3 s (`terra_runtime::ops::READY_TIMEOUT`); the Kafka check must
/// answer within it when the brokers are down, so its metadata request never outlives the
/// probe (with the old 5 s request the probe timed out and the request ran on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_readiness_answers_within_the_probe_timeout_when_the_broker_is_down() {
    let log = mock_log().await;
    let EventLog::Kafka(kafka) = &log else {
        unreachable!()
    };
    kafka.set_mock_broker_up(false).unwrap();
    // the mock cluster takes the broker down asynchronously: the first checks may pass
    let mut answer = None;
    for _ in 0..20 {
        let checked =
            tokio::time::timeout(terra_runtime::ops::READY_TIMEOUT, log.check_ready()).await;
        match checked {
            Ok(Ok(())) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            other => {
                answer = Some(other);
                break;
            }
        }
    }
    let answer = answer.expect("the broker never went down");
    assert!(
        matches!(answer, Ok(Err(terra_eventlog::LogError::Kafka { .. }))),
        "the check must answer, not be cut by the probe's timeout: {answer:?}"
    );
    kafka.set_mock_broker_up(true).unwrap();
    // end with the log healthy: nothing in flight while the client is destroyed
    for _ in 0..100 {
        if log.check_ready().await.is_ok() {
            return;
        }
    }
    panic!("the log did not become ready again");
}

fn unique_topic(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

fn broker_admin() -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    let bootstrap = std::env::var("TERRA_TEST_KAFKA_BOOTSTRAP")
        .expect("TERRA_TEST_KAFKA_BOOTSTRAP (tests/run-all.sh starts tansu and sets it)");
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap()
}

async fn topic_config(topic: &str, name: &str) -> Option<String> {
    use rdkafka::admin::{AdminOptions, ResourceSpecifier};
    let described = broker_admin()
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next()?.ok()?;
    resource.get(name).and_then(|e| e.value.clone())
}

/// Issue 11 §1: the topic terra-ingest creates holds the largest body the ingress accepts
/// (the broker's default is often 1 MB), and an existing topic that cannot is refused at
/// start with the setting named, instead of a 503 for ever on every large delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka-protocol broker: run tests/run-all.sh"]
async fn kafka_broker_topics_hold_the_largest_body_or_are_refused_at_start() {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let bootstrap = std::env::var("TERRA_TEST_KAFKA_BOOTSTRAP").unwrap();
    let created = unique_topic("sized");
    let mut url = LogUrl::parse(
        &format!("kafka://{bootstrap}/{created}?partitions=1"),
        std::path::Path::new("."),
    )
    .unwrap();
    let LogUrl::Kafka(kafka) = &mut url else {
        unreachable!()
    };
    kafka.max_body_bytes = 5 * 1024 * 1024;
    let needed = kafka.max_record_bytes();
    EventLog::open(&url, &[]).await.unwrap();
    assert_eq!(
        topic_config(&created, "max.message.bytes").await,
        Some(needed.to_string())
    );
    // issue 11 §3: the log is the source of truth, nothing in its topic expires
    assert_eq!(
        topic_config(&created, "retention.ms").await.as_deref(),
        Some("-1")
    );

    let small = unique_topic("small");
    let topic =
        NewTopic::new(&small, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "1000000");
    for result in broker_admin()
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let mut url = LogUrl::parse(
        &format!("kafka://{bootstrap}/{small}?partitions=1"),
        std::path::Path::new("."),
    )
    .unwrap();
    let LogUrl::Kafka(kafka) = &mut url else {
        unreachable!()
    };
    kafka.max_body_bytes = 5 * 1024 * 1024;
    let err = EventLog::open(&url, &[])
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("max.message.bytes") && err.contains(&small),
        "{err}"
    );
}

/// A client property set below what the body limit needs is refused by name.
#[tokio::test]
async fn kafka_a_producer_limit_below_the_body_limit_is_refused_by_name() {
    let url = LogUrl::parse("kafka-mock://t", std::path::Path::new(".")).unwrap();
    let props = [("message.max.bytes".to_owned(), "1000000".to_owned())];
    let err = EventLog::open(&url, &props)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("kafka.message.max.bytes"), "{err}");
}

/// Issue 11 §3: a producer in a fatal state (fenced, out of sequence) takes no appends until
/// the process restarts, so readiness says so, even though the brokers answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_producer_in_a_fatal_state_is_not_ready() {
    let log = mock_log().await;
    let EventLog::Kafka(kafka) = &log else {
        unreachable!()
    };
    log.check_ready().await.unwrap();
    kafka.inject_fatal_error();
    let err = log.check_ready().await.expect_err("not ready").to_string();
    assert!(err.contains("fatal state"), "{err}");
}
