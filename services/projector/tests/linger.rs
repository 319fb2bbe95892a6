//! A started batch stays open for its linger (`ProjectorConfig::batch_linger`): records that
//! arrive a little after the first one join its batch instead of making batches of their own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use terra_projector::plan::Planned;
use terra_projector::{
    CancellationToken, ProjectorConfig, ProjectorMetrics, Sink, SinkError, WriteStats,
};
use terra_testkit::{TestLog, fixture, record};

/// Records the size of every batch it is given.
struct Sizes(Arc<Mutex<Vec<usize>>>);

impl Sink for Sizes {
    fn name(&self) -> &str {
        "sizes"
    }

    async fn stored_positions(&mut self) -> Result<Option<BTreeMap<u32, u64>>, SinkError> {
        Ok(None)
    }

    async fn write(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        self.0.lock().unwrap().push(batch.len());
        Ok(WriteStats {
            records: batch.len(),
            ..WriteStats::default()
        })
    }
}

/// One record, then nine more 100 ms later; the batch sizes the sink saw.
async fn batches_with(linger: Duration) -> Vec<usize> {
    let log = TestLog::new();
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let mut config = ProjectorConfig::new("sizes");
    config.batch_wait = Duration::from_millis(20);
    config.batch_linger = linger;
    let shutdown = CancellationToken::new();
    let runner = {
        let (log, sizes, shutdown) = (log.log.clone(), Arc::clone(&sizes), shutdown.clone());
        tokio::spawn(async move {
            let metrics = ProjectorMetrics::unregistered();
            terra_projector::run(&config, &log, &mut Sizes(sizes), &metrics, shutdown, |_| {}).await
        })
    };
    let body = fixture("sleep");
    log.append(vec![record(&body, None, 1_780_000_000, None)])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let nine = (0..9)
        .map(|i| record(&body, None, 1_780_000_001 + i, None))
        .collect();
    log.append(nine).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sizes.lock().unwrap().iter().sum::<usize>() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            sizes.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    runner.await.unwrap().unwrap();
    sizes.lock().unwrap().clone()
}

#[tokio::test]
async fn a_started_batch_gathers_what_arrives_during_its_linger() {
    assert_eq!(batches_with(Duration::from_millis(1_000)).await, vec![10]);
}

#[tokio::test]
async fn without_a_linger_the_first_record_goes_alone() {
    assert_eq!(batches_with(Duration::ZERO).await, vec![1, 9]);
}
