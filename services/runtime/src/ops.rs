//! The operations router every service serves: `GET /healthz` (the process answers),
//! `GET /readyz` (its dependencies answer: the log, the database, the store) and
//! `GET /metrics` (Prometheus text of the service's registry). The ingress serves it on
//! `--ops-addr`, each projector on its `--http-addr`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderName, StatusCode, header};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// How long a readiness check may take before it counts as a failure.
pub const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// What `/readyz` checks. The error says why not ready; it is shown on the operations port
/// only, so it may name internals but never a secret or a value.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// Runs `readiness` within [`READY_TIMEOUT`].
pub async fn check_ready(readiness: &dyn Readiness) -> Result<(), String> {
    match tokio::time::timeout(READY_TIMEOUT, readiness.check()).await {
        Ok(result) => result,
        Err(_) => Err("check timed out".to_owned()),
    }
}

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    readiness: Arc<dyn Readiness>,
}

/// `/healthz`, `/readyz`, `/metrics` over `registry` and `readiness`.
pub fn router(registry: Arc<Registry>, readiness: Arc<dyn Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move { metrics(&ops.registry) }),
        )
        .with_state(Ops {
            registry,
            readiness,
        })
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Ops>) -> (StatusCode, String) {
    match check_ready(ops.readiness.as_ref()).await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// The Prometheus (OpenMetrics) text of `registry`.
pub fn metrics(registry: &Registry) -> ([(HeaderName, &'static str); 1], String) {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
}

/// Serves `router` on `listener` until `cancel` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flag(std::sync::atomic::AtomicU8);

    impl Readiness for Flag {
        fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async move {
                match self.0.load(std::sync::atomic::Ordering::Relaxed) {
                    0 => Ok(()),
                    1 => Err("database unavailable".to_owned()),
                    _ => std::future::pending().await,
                }
            })
        }
    }

    #[tokio::test]
    async fn health_readiness_and_metrics_are_served_until_cancelled() {
        let mut registry = Registry::with_prefix("terra_ingest");
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("things", "Things counted", counter.clone());
        counter.inc();
        let flag = Arc::new(Flag(0.into()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            router(Arc::new(registry), flag.clone()),
            cancel.clone(),
        ));
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("http://{addr}{path}")).send();

        let health = get("/healthz").await.unwrap();
        assert_eq!(health.status(), 200);
        let ready = get("/readyz").await.unwrap();
        assert_eq!(ready.status(), 200);
        let metrics = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(metrics.contains("terra_ingest_things_total 1"), "{metrics}");

        flag.0.store(1, std::sync::atomic::Ordering::Relaxed);
        let not_ready = get("/readyz").await.unwrap();
        assert_eq!(not_ready.status(), 503);
        assert_eq!(
            not_ready.text().await.unwrap(),
            "not ready: database unavailable\n"
        );

        cancel.cancel();
        server.await.unwrap().unwrap();
        assert!(get("/healthz").await.is_err(), "still serving after cancel");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_hangs_is_not_ready_after_the_timeout() {
        let flag = Flag(2.into());
        assert_eq!(check_ready(&flag).await, Err("check timed out".to_owned()));
    }
}
