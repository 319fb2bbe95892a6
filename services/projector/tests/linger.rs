//! A batch that starts in bulk stays open for its linger (`ProjectorConfig::batch_linger`):
//! records that arrive a little after join it instead of making batches of their own; a
//! batch started by a quiet log does not wait.

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

/// `first` records (eight: a log delivering in bulk), then nine more 100 ms later; the batch
/// sizes the sink saw.
async fn batches_with(linger: Duration, first: i64) -> Vec<usize> {
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
    let firsts = (0..first)
        .map(|i| record(&body, None, 1_780_000_000 + i, None))
        .collect();
    log.append(firsts).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let nine = (0..9)
        .map(|i| record(&body, None, 1_780_000_100 + i, None))
        .collect();
    log.append(nine).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sizes.lock().unwrap().iter().sum::<usize>() < first as usize + 9 {
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
async fn a_batch_started_in_bulk_gathers_what_arrives_during_its_linger() {
    assert_eq!(
        batches_with(Duration::from_millis(1_000), 8).await,
        vec![17]
    );
}

#[tokio::test]
async fn without_a_linger_each_poll_is_a_batch() {
    assert_eq!(batches_with(Duration::ZERO, 8).await, vec![8, 9]);
}

#[tokio::test]
async fn a_batch_started_by_a_quiet_log_does_not_linger() {
    // one record at a time: written at once, whatever the linger
    assert_eq!(
        batches_with(Duration::from_millis(1_000), 1).await,
        vec![1, 9]
    );
}
