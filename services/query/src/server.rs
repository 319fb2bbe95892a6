//! Serving the query API: bearer-token auth in a tower layer (tonic interceptor), optional
//! TLS and mutual TLS, `grpc.health.v1` and server reflection (v1 and v1alpha), and the
//! secure default: with no token and no client CA the service binds only to loopback.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::proto::query_service_server::QueryServiceServer;
use crate::service::Query;

/// The encoded descriptor set of query.proto (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/query_descriptor.bin"));

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

/// How the query service authenticates and listens.
#[derive(Clone, Default)]
pub struct QueryServerConfig {
    /// Accepted bearer tokens (several during rotation). Empty: no token check.
    pub tokens: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Serve a non-loopback address without any authentication (explicit opt-in).
    pub insecure_allow_unauthenticated: bool,
}

impl std::fmt::Debug for QueryServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryServerConfig")
            .field("tokens", &self.tokens.len())
            .field("tls", &self.tls.is_some())
            .field(
                "mtls",
                &self.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            )
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve the gRPC query API on {0} without authentication: set a bearer token (--grpc-token), or mutual TLS (--grpc-tls-client-ca), or bind a loopback address (--grpc-addr 127.0.0.1:50051), or pass --insecure-allow-unauthenticated"
    )]
    Unauthenticated(SocketAddr),
    #[error("TLS settings are invalid: {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl QueryServerConfig {
    /// The secure default: no authentication means loopback only.
    pub fn check_bind(&self, addr: SocketAddr) -> Result<(), ServeError> {
        let authenticated =
            !self.tokens.is_empty() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if authenticated || self.insecure_allow_unauthenticated || addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(ServeError::Unauthenticated(addr))
        }
    }
}

/// Checks `authorization: Bearer <token>` against the configured tokens in constant time.
#[derive(Clone)]
pub struct BearerAuth {
    tokens: Arc<Vec<Vec<u8>>>,
}

impl BearerAuth {
    pub fn new(tokens: &[String]) -> Self {
        Self {
            tokens: Arc::new(tokens.iter().map(|t| t.as_bytes().to_vec()).collect()),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.tokens.is_empty() {
            return Ok(request);
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        let mut ok = subtle::Choice::from(0);
        for token in self.tokens.iter() {
            ok |= token.as_slice().ct_eq(presented.as_bytes());
        }
        if bool::from(ok) {
            Ok(request)
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

/// Serves the query API, health and reflection on `listener` until `shutdown` resolves.
pub async fn run(
    mut query: Query,
    config: QueryServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.check_bind(addr)?;
    // live tails end at shutdown, so in-flight streams finish and the server drains
    let (stop, stopping) = tokio::sync::watch::channel(false);
    query.stopping = stopping.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut drained = stopping.clone();
    let shutdown = async move {
        let _ = drained.wait_for(|s| *s).await;
    };
    // clients that keep idle connections open must not hold the process past its drain time
    let mut deadline = stopping;
    let drain_deadline = async move {
        let _ = deadline.wait_for(|s| *s).await;
        tokio::time::sleep(DRAIN).await;
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<QueryServiceServer<Query>>()
        .await;
    tokio::spawn(watch_database(
        query.sql.clone(),
        health_reporter,
        query.stopping.clone(),
    ));
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Tls(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Tls(format!("reflection: {e}")))?;
    let mut server = Server::builder();
    if let Some(tls) = &config.tls {
        // both ring (tonic) and aws-lc-rs (the AWS SDK) are linked: name the provider, once
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        server = server
            .tls_config(tls_config)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    tracing::info!(addr = %addr, tokens = config.tokens.len(), tls = config.tls.is_some(), "query service listening");
    // no Nagle: a streamed answer is several small writes, and delayed ACKs would add ~40 ms
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let serve = server
        .add_service(QueryServiceServer::with_interceptor(
            query,
            BearerAuth::new(&config.tokens),
        ))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, shutdown);
    tokio::select! {
        served = serve => served?,
        () = drain_deadline => {
            tracing::warn!(drain_ms = DRAIN.as_millis() as u64, "gRPC connections still open after the drain time; closing them");
        }
    }
    Ok(())
}

/// How often the health service re-checks the database.
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Keeps `grpc.health.v1` true: the query service (`terra.ingest.v1.QueryService`) is
/// SERVING while its database answers and NOT_SERVING while it does not (a readiness probe);
/// the server as a whole (`""`) stays SERVING as long as the process runs (a liveness probe).
async fn watch_database(
    sql: terra_projector::sql::SqlTarget,
    reporter: tonic_health::server::HealthReporter,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
        let up = matches!(
            tokio::time::timeout(HEALTH_INTERVAL * 2, sql.ping()).await,
            Ok(Ok(_))
        );
        if up != serving {
            serving = up;
            if up {
                tracing::info!("database reachable again: query service SERVING");
                reporter.set_serving::<QueryServiceServer<Query>>().await;
            } else {
                tracing::warn!("database unreachable: query service NOT_SERVING");
                reporter
                    .set_not_serving::<QueryServiceServer<Query>>()
                    .await;
            }
        }
    }
}

/// How long shutdown waits for gRPC connections to close after in-flight calls finished.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_auth_only_loopback_binds() {
        let open = QueryServerConfig::default();
        assert!(open.check_bind("127.0.0.1:50051".parse().unwrap()).is_ok());
        assert!(open.check_bind("[::1]:50051".parse().unwrap()).is_ok());
        let err = open
            .check_bind("0.0.0.0:50051".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("without authentication") && err.contains("--grpc-token"),
            "{err}"
        );
        let tokens = QueryServerConfig {
            tokens: vec!["t".into()],
            ..QueryServerConfig::default()
        };
        assert!(tokens.check_bind("0.0.0.0:50051".parse().unwrap()).is_ok());
        let opted_in = QueryServerConfig {
            insecure_allow_unauthenticated: true,
            ..QueryServerConfig::default()
        };
        assert!(
            opted_in
                .check_bind("0.0.0.0:50051".parse().unwrap())
                .is_ok()
        );
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let mut auth = BearerAuth::new(&["old".into(), "new".into()]);
        let with = |value: Option<&str>| {
            let mut request = Request::new(());
            if let Some(v) = value {
                request
                    .metadata_mut()
                    .insert("authorization", v.parse().unwrap());
            }
            request
        };
        assert!(auth.call(with(Some("Bearer new"))).is_ok());
        assert!(auth.call(with(Some("Bearer old"))).is_ok());
        assert_eq!(
            auth.call(with(Some("Bearer nope"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.call(with(None)).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.call(with(Some("Basic new"))).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(BearerAuth::new(&[]).call(with(None)).is_ok());
    }
}
