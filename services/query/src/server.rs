//! Serving the query API (and the webhook deliveries API beside it, when given): bearer-token auth (tonic interceptor, [`crate::auth`]), optional
//! TLS and mutual TLS, `grpc.health.v1` and server reflection (v1 and v1alpha), the
//! connection limits of [`Limits`] (keepalive, streams per connection, connection age), and
//! the secure defaults: with no token and no client CA the service binds only to loopback,
//! and bearer tokens cross a non-loopback address only inside TLS.

use std::net::SocketAddr;

use terra_runtime::CancellationToken;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::auth::BearerAuth;
use crate::deliveries::Deliveries;
use crate::limits::{Gates, Limits};
use crate::proto::query_service_server::QueryServiceServer;
use crate::proto::webhook_deliveries_server::WebhookDeliveriesServer;
use crate::service::Query;

/// The encoded descriptor set of query.proto and deliveries.proto (for reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/query_descriptor.bin"));

/// PEM files for TLS. `Debug` never shows the private key.
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_bytes", &self.cert.len())
            .field("key", &"[redacted]")
            .field("client_ca", &self.client_ca.is_some())
            .finish()
    }
}

/// How the query service authenticates and listens.
#[derive(Clone, Default)]
pub struct QueryServerConfig {
    /// Accepted bearer tokens (several during rotation). Empty: no token check.
    pub tokens: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// Serve a non-loopback address without any authentication (explicit opt-in).
    pub insecure_allow_unauthenticated: bool,
    /// Accept bearer tokens over plaintext on a non-loopback address (explicit opt-in, for a
    /// network that encrypts by itself, such as a service mesh).
    pub insecure_allow_plaintext_tokens: bool,
    /// Timeouts, caps and connection keepalive.
    pub limits: Limits,
}

impl std::fmt::Debug for QueryServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryServerConfig")
            .field("tokens", &self.tokens.len())
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
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
    #[error(
        "refusing to accept bearer tokens (--grpc-token, --grpc-token-file) in plaintext on {0}: anyone on the network path could read them; turn on TLS (--grpc-tls-cert and --grpc-tls-key), or bind a loopback address (--grpc-addr 127.0.0.1:50051), or pass --grpc-insecure-allow-plaintext-tokens when the network encrypts by itself (a service mesh)"
    )]
    PlaintextTokens(SocketAddr),
    #[error("TLS settings are invalid: {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl QueryServerConfig {
    /// The secure defaults: no authentication means loopback only, and bearer tokens leave
    /// the host only inside TLS.
    pub fn check_bind(&self, addr: SocketAddr) -> Result<(), ServeError> {
        if addr.ip().is_loopback() {
            return Ok(());
        }
        let authenticated =
            !self.tokens.is_empty() || self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !authenticated && !self.insecure_allow_unauthenticated {
            return Err(ServeError::Unauthenticated(addr));
        }
        if !self.tokens.is_empty() && self.tls.is_none() && !self.insecure_allow_plaintext_tokens {
            return Err(ServeError::PlaintextTokens(addr));
        }
        Ok(())
    }
}

/// Serves the query API, health and reflection on `listener` until `shutdown` is cancelled.
pub async fn run(
    mut query: Query,
    config: QueryServerConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    config.check_bind(addr)?;
    // live tails end at shutdown, so in-flight streams finish and the server drains
    query.stopping = shutdown.clone();
    query.gates = Gates::new(&config.limits);
    // one deadline and in-flight cap for both services
    let deliveries = query.deliveries.take().map(|mut deliveries| {
        deliveries.gates = query.gates.clone();
        deliveries
    });
    let drained = shutdown.clone();
    // clients that keep idle connections open must not hold the process past its drain time
    let drain_deadline = async move {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    let shutdown = async move { drained.cancelled().await };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<QueryServiceServer<Query>>()
        .await;
    tokio::spawn(watch_database(
        query.sql.clone(),
        health_reporter.clone(),
        query.stopping.clone(),
        false,
    ));
    if let Some(deliveries) = &deliveries {
        health_reporter
            .set_serving::<WebhookDeliveriesServer<Deliveries>>()
            .await;
        tokio::spawn(watch_database(
            deliveries.sql.clone(),
            health_reporter,
            query.stopping.clone(),
            true,
        ));
    }
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
    let limits = &config.limits;
    let mut server = Server::builder()
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout));
    if let Some(age) = limits.max_connection_age {
        // no `max_connection_age_grace`: with it tonic 0.14 closes the connection at age +
        // grace without any GOAWAY, cutting calls instead of letting them finish
        server = server.max_connection_age(age);
    }
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
    tracing::info!(
        addr = %addr,
        tokens = config.tokens.len(),
        tls = config.tls.is_some(),
        timeout_ms = limits.timeout.as_millis() as u64,
        max_in_flight = limits.max_in_flight,
        max_watchers = limits.max_watchers,
        max_concurrent_streams = limits.max_concurrent_streams,
        "query service listening"
    );
    // no Nagle: a streamed answer is several small writes, and delayed ACKs would add ~40 ms
    // TCP keepalive too: a peer gone without a FIN is noticed even by an idle connection
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits.keepalive_interval));
    let serve = server
        .add_service(QueryServiceServer::with_interceptor(
            query,
            BearerAuth::new(&config.tokens),
        ))
        .add_optional_service(deliveries.map(|deliveries| {
            WebhookDeliveriesServer::with_interceptor(deliveries, BearerAuth::new(&config.tokens))
        }))
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

/// Keeps `grpc.health.v1` true: the query service (`terra.ingest.v1.QueryService`), or with
/// `deliveries` the `terra.ingest.v1.WebhookDeliveries` service over its own connections, is
/// SERVING while its database answers and NOT_SERVING while it does not (a readiness probe);
/// the server as a whole (`""`) stays SERVING as long as the process runs (a liveness probe).
async fn watch_database(
    sql: terra_schema::SqlTarget,
    reporter: tonic_health::server::HealthReporter,
    stopping: CancellationToken,
    deliveries: bool,
) {
    let mut serving = true;
    loop {
        tokio::select! {
            () = stopping.cancelled() => return,
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
        let up = matches!(
            tokio::time::timeout(HEALTH_INTERVAL * 2, sql.ping()).await,
            Ok(Ok(_))
        );
        if up != serving {
            serving = up;
            match (up, deliveries) {
                (true, false) => {
                    tracing::info!("database reachable again: query service SERVING");
                    reporter.set_serving::<QueryServiceServer<Query>>().await;
                }
                (false, false) => {
                    tracing::warn!("database unreachable: query service NOT_SERVING");
                    reporter
                        .set_not_serving::<QueryServiceServer<Query>>()
                        .await;
                }
                (true, true) => {
                    tracing::info!("database reachable again: webhook deliveries service SERVING");
                    reporter
                        .set_serving::<WebhookDeliveriesServer<Deliveries>>()
                        .await;
                }
                (false, true) => {
                    tracing::warn!("database unreachable: webhook deliveries service NOT_SERVING");
                    reporter
                        .set_not_serving::<WebhookDeliveriesServer<Deliveries>>()
                        .await;
                }
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
        // tokens count as authentication (inside TLS: see the plaintext test below)
        let tokens = QueryServerConfig {
            tokens: vec!["t".into()],
            tls: Some(tls(None)),
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

    fn tls(client_ca: Option<Vec<u8>>) -> TlsFiles {
        TlsFiles {
            cert: b"cert".to_vec(),
            key: b"key".to_vec(),
            client_ca,
        }
    }

    #[test]
    fn hostile_bearer_tokens_in_plaintext_on_a_public_address_are_refused() {
        let plaintext = QueryServerConfig {
            tokens: vec!["a-long-enough-token-1".into()],
            ..QueryServerConfig::default()
        };
        for public in ["0.0.0.0:50051", "10.1.2.3:50051", "[::]:50051"] {
            let err = plaintext
                .check_bind(public.parse().unwrap())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("in plaintext")
                    && err.contains("--grpc-tls-cert")
                    && err.contains("--grpc-insecure-allow-plaintext-tokens"),
                "{err}"
            );
        }
        // loopback never leaves the host
        assert!(
            plaintext
                .check_bind("127.0.0.1:50051".parse().unwrap())
                .is_ok()
        );
        assert!(plaintext.check_bind("[::1]:50051".parse().unwrap()).is_ok());
        // TLS (with or without client certificates), or the explicit opt-in
        for config in [
            QueryServerConfig {
                tls: Some(tls(None)),
                ..plaintext.clone()
            },
            QueryServerConfig {
                tls: Some(tls(Some(b"ca".to_vec()))),
                ..plaintext.clone()
            },
            QueryServerConfig {
                insecure_allow_plaintext_tokens: true,
                ..plaintext.clone()
            },
        ] {
            assert!(config.check_bind("0.0.0.0:50051".parse().unwrap()).is_ok());
        }
        // the opt-in is about tokens only: it does not open an unauthenticated server
        let no_auth = QueryServerConfig {
            insecure_allow_plaintext_tokens: true,
            ..QueryServerConfig::default()
        };
        assert!(
            no_auth
                .check_bind("0.0.0.0:50051".parse().unwrap())
                .is_err()
        );
    }
}
