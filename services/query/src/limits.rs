//! The query service's limits: how long a call may run, how many calls and live tails it
//! serves at once, how connections are kept alive and recycled. Beyond a cap a call fails at
//! once with RESOURCE_EXHAUSTED naming the setting, instead of queueing without bound.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use terra_runtime::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// Limits of one query server. The defaults suit one replica behind a load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest a call other than `WatchPayloads` may take (`GetPayload`: its body included);
    /// a client's shorter `grpc-timeout` wins. Then DEADLINE_EXCEEDED.
    pub timeout: Duration,
    /// Calls other than `WatchPayloads` served at once, over all connections.
    pub max_in_flight: usize,
    /// Live tails (`WatchPayloads`) served at once, over all connections.
    pub max_watchers: usize,
    /// HTTP/2 streams one connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
    /// a client opening more waits for one to end.
    pub max_concurrent_streams: u32,
    /// Idle time after which the server pings the client (HTTP/2 PING) and the kernel probes
    /// the socket (TCP keepalive), so dead peers are noticed.
    pub keepalive_interval: Duration,
    /// A PING not acknowledged within this time closes the connection.
    pub keepalive_timeout: Duration,
    /// Connections are told to go away (GOAWAY) at this age, so clients open new ones and
    /// spread over replicas; `None`: never. Calls still open (live tails too) finish on the old
    /// connection; a client may end a live tail and resume it on the new one.
    pub max_connection_age: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_in_flight: 256,
            max_watchers: 256,
            max_concurrent_streams: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: None,
        }
    }
}

/// The caps of [`Limits`], shared by every clone of the service.
#[derive(Clone)]
pub(crate) struct Gates {
    calls: Arc<Semaphore>,
    watchers: Arc<Semaphore>,
    max_in_flight: usize,
    max_watchers: usize,
    pub(crate) timeout: Duration,
}

impl Gates {
    pub(crate) fn new(limits: &Limits) -> Self {
        let permits = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            calls: Arc::new(Semaphore::new(permits(limits.max_in_flight))),
            watchers: Arc::new(Semaphore::new(permits(limits.max_watchers))),
            max_in_flight: limits.max_in_flight,
            max_watchers: limits.max_watchers,
            timeout: limits.timeout,
        }
    }

    /// A place among the calls in flight, or RESOURCE_EXHAUSTED at once.
    pub(crate) fn call_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.calls.clone().try_acquire_owned().map_err(|_| {
            ErrorCode::Overloaded.status(format!(
                "the query service is serving its limit of {} calls at once (--grpc-max-in-flight); retry with backoff",
                self.max_in_flight
            ))
        })
    }

    /// A place among the live tails, or RESOURCE_EXHAUSTED at once.
    pub(crate) fn watcher_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.watchers.clone().try_acquire_owned().map_err(|_| {
            ErrorCode::Overloaded.status(format!(
                "the query service is serving its limit of {} live tails (WatchPayloads) at once (--grpc-max-watchers); retry with backoff, resuming from the last position",
                self.max_watchers
            ))
        })
    }

    pub(crate) fn deadline_exceeded(&self) -> Status {
        ErrorCode::DeadlineExceeded.status(format!(
            "the call took longer than the server's limit of {} ms (--grpc-timeout-secs)",
            self.timeout.as_millis()
        ))
    }

    /// Runs one call under the in-flight cap and the server's deadline.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let _permit = self.call_permit()?;
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(self.deadline_exceeded()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_caps_fail_fast_and_free_on_drop() {
        let gates = Gates::new(&Limits {
            max_in_flight: 1,
            max_watchers: 1,
            ..Limits::default()
        });
        let held = gates.call_permit().unwrap();
        let err = gates.call_permit().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("--grpc-max-in-flight"), "{err:?}");
        drop(held);
        assert!(gates.call_permit().is_ok());
        let watching = gates.watcher_permit().unwrap();
        let err = gates.watcher_permit().unwrap_err();
        assert!(err.message().contains("--grpc-max-watchers"), "{err:?}");
        drop(watching);
        assert!(gates.watcher_permit().is_ok());
    }

    #[tokio::test]
    async fn limits_a_call_past_the_timeout_is_deadline_exceeded() {
        let gates = Gates::new(&Limits {
            timeout: Duration::from_millis(50),
            ..Limits::default()
        });
        let err = gates
            .call(async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert!(err.message().contains("--grpc-timeout-secs"), "{err:?}");
    }
}
