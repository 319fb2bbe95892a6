//! The HTTP/1.1 server loop: what `axum::serve` does, plus the limits it cannot set. A
//! connection's headers must arrive within the header-read timeout (which also closes idle
//! keep-alive connections); the number of open connections is capped, and a connection over
//! the cap is answered 503 with `Retry-After` and closed. Shutdown stops accepting and lets
//! every open connection finish its request.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use terra_runtime::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::Limits;
use crate::metrics::Metrics;

/// Most connections being refused at once (each lives ≤ 1 s); past it they are just closed.
const MAX_REFUSING: usize = 256;

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 88\r\n\r\n{\"error\":\"overloaded\",\"message\":\"too many open connections to the ingress; retry later\"}";

pub(crate) struct Server {
    http: hyper::server::conn::http1::Builder,
    connections: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    metrics: Metrics,
}

impl Server {
    pub(crate) fn new(limits: &Limits, metrics: Metrics) -> Self {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        Self {
            http,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            metrics,
        }
    }

    /// Serves `app` on `listener` until `stopping` is cancelled, then waits for the open
    /// connections to finish.
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        stopping: CancellationToken,
    ) -> std::io::Result<()> {
        let graceful = GracefulShutdown::new();
        let stop = stopping.cancelled();
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        accept_failed(&err).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() else {
                self.metrics.connections_refused.inc();
                self.refuse(stream);
                continue;
            };
            let service = app
                .clone()
                .map_request(move |mut request: http::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    request
                });
            let connection = self
                .http
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                // errors here are the client's (reset, header timeout, bad request line)
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        graceful.shutdown().await;
        Ok(())
    }

    /// Answers a connection over the cap with a 503 and closes it, reading what the client
    /// sent meanwhile so the close does not reset the answer away.
    fn refuse(&self, mut stream: TcpStream) {
        let Ok(permit) = Arc::clone(&self.refusing).try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(REFUSAL).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
            drop(permit);
        });
    }
}

/// Errors of `accept` for one connection are skipped; others (out of file descriptors)
/// pause the loop briefly instead of spinning.
async fn accept_failed(err: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %err, "accept failed; pausing 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_complete_answer() {
        let text = std::str::from_utf8(super::REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
