//! `kafka-mock://TOPIC`: librdkafka's in-process mock cluster, for development, tests and
//! benchmarks. Not durable: the cluster lives and dies with the process.

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer};

use super::{KafkaConfig, config_error};
use crate::LogError;

/// Starts a producer that owns a one-broker mock cluster with the topic created, and returns
/// it with the cluster's bootstrap servers.
pub(super) fn start(
    producer_config: &ClientConfig,
    config: &KafkaConfig,
) -> Result<(FutureProducer, String), LogError> {
    let mut producer_config = producer_config.clone();
    producer_config.set("test.mock.num.brokers", "1");
    let producer: FutureProducer = producer_config.create().map_err(config_error)?;
    let servers = {
        let cluster = producer
            .client()
            .mock_cluster()
            .ok_or_else(|| LogError::Config("librdkafka did not start a mock cluster".into()))?;
        cluster
            .create_topic(&config.topic, config.partitions as i32, 1)
            .map_err(|e| LogError::Config(format!("mock cluster: failed to create topic: {e}")))?;
        cluster.bootstrap_servers()
    };
    disable_initial_rebalance_delay(&producer);
    Ok((producer, servers))
}

/// The mock cluster waits 3 s before the first rebalance of a new group (like a broker's
/// `group.initial.rebalance.delay.ms`); a consumer of the mock log should start at once.
#[allow(unsafe_code)]
fn disable_initial_rebalance_delay(producer: &FutureProducer) {
    // SAFETY: the handle is a live client that owns a mock cluster (checked by the caller
    // through `mock_cluster()`), and the cluster outlives this call.
    unsafe {
        let cluster = rdkafka_sys::rd_kafka_handle_mock_cluster(producer.client().native_ptr());
        if !cluster.is_null() {
            rdkafka_sys::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
    }
}

/// librdkafka's `rd_kafka_test_fatal_error`: the producer behaves as after a fatal error.
#[cfg(feature = "test-hooks")]
#[allow(unsafe_code)]
pub(super) fn inject_fatal_error(producer: &FutureProducer) {
    let reason = c"injected by a test";
    // SAFETY: the handle is a live client (the producer is borrowed for the call), and
    // `reason` is a NUL-terminated string that outlives it; librdkafka copies it.
    unsafe {
        rdkafka_sys::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka_sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FENCED,
            reason.as_ptr(),
        );
    }
}
