//! The query service's flags (section `[query]`), each flag's id the key it sets.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

/// The gRPC query service: address, authentication, TLS, limits, read pool (section
/// `[query]`).
#[derive(Debug, Clone, Default, Args)]
pub struct QueryArgs {
    /// Address the gRPC query service listens on (default 127.0.0.1:50051).
    #[arg(
        id = "query.grpc_addr",
        long = "grpc-addr",
        env = "TERRA_INGEST_GRPC_ADDR",
        value_name = "ADDR"
    )]
    pub grpc_addr: Option<String>,
    /// Bearer token(s) gRPC clients must send (comma separated; several during rotation).
    #[arg(
        id = "query.tokens",
        long = "grpc-token",
        env = "TERRA_INGEST_GRPC_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub grpc_tokens: Vec<SecretString>,
    /// File with bearer tokens, one per line (a mounted Kubernetes secret).
    #[arg(
        id = "query.token_file",
        long = "grpc-token-file",
        env = "TERRA_INGEST_GRPC_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub grpc_token_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) of the gRPC service (with --grpc-tls-key).
    #[arg(
        id = "query.tls_cert",
        long = "grpc-tls-cert",
        env = "TERRA_INGEST_GRPC_TLS_CERT",
        value_name = "PATH"
    )]
    pub grpc_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the gRPC service (with --grpc-tls-cert).
    #[arg(
        id = "query.tls_key",
        long = "grpc-tls-key",
        env = "TERRA_INGEST_GRPC_TLS_KEY",
        value_name = "PATH"
    )]
    pub grpc_tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: mutual TLS (needs --grpc-tls-cert).
    #[arg(
        id = "query.tls_client_ca",
        long = "grpc-tls-client-ca",
        env = "TERRA_INGEST_GRPC_TLS_CLIENT_CA",
        value_name = "PATH"
    )]
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// Serve a non-loopback --grpc-addr with no token and no mutual TLS.
    #[arg(
        id = "query.insecure_allow_unauthenticated",
        long = "insecure-allow-unauthenticated",
        env = "TERRA_INGEST_INSECURE_ALLOW_UNAUTHENTICATED"
    )]
    pub insecure_allow_unauthenticated: bool,
    /// Accept bearer tokens in plaintext on a non-loopback --grpc-addr (only where the
    /// network encrypts by itself, such as a service mesh).
    #[arg(
        id = "query.insecure_allow_plaintext_tokens",
        long = "grpc-insecure-allow-plaintext-tokens",
        env = "TERRA_INGEST_GRPC_INSECURE_ALLOW_PLAINTEXT_TOKENS"
    )]
    pub grpc_insecure_allow_plaintext_tokens: bool,
    /// Key sealing page tokens and watch positions (default: generated into the data dir).
    #[arg(
        id = "query.token_secret",
        long = "query-token-secret",
        env = "TERRA_INGEST_QUERY_TOKEN_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub query_token_secret: Option<SecretString>,
    /// File holding the token-sealing key (a mounted secret).
    #[arg(
        id = "query.token_secret_file",
        long = "query-token-secret-file",
        env = "TERRA_INGEST_QUERY_TOKEN_SECRET_FILE",
        value_name = "PATH"
    )]
    pub query_token_secret_file: Option<PathBuf>,
    /// Longest a query call may take, seconds (default 30); a client's shorter deadline wins.
    #[arg(
        id = "query.timeout_secs",
        long = "grpc-timeout-secs",
        env = "TERRA_INGEST_GRPC_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub grpc_timeout_secs: Option<u64>,
    /// Query calls served at once (default 256); one more fails with RESOURCE_EXHAUSTED.
    #[arg(
        id = "query.max_in_flight",
        long = "grpc-max-in-flight",
        env = "TERRA_INGEST_GRPC_MAX_IN_FLIGHT",
        value_name = "N"
    )]
    pub grpc_max_in_flight: Option<usize>,
    /// Live tails (WatchPayloads) served at once (default 256); one more fails with
    /// RESOURCE_EXHAUSTED.
    #[arg(
        id = "query.max_watchers",
        long = "grpc-max-watchers",
        env = "TERRA_INGEST_GRPC_MAX_WATCHERS",
        value_name = "N"
    )]
    pub grpc_max_watchers: Option<usize>,
    /// HTTP/2 streams one connection may have open at once (default 100).
    #[arg(
        id = "query.max_concurrent_streams",
        long = "grpc-max-concurrent-streams",
        env = "TERRA_INGEST_GRPC_MAX_CONCURRENT_STREAMS",
        value_name = "N"
    )]
    pub grpc_max_concurrent_streams: Option<u32>,
    /// Idle seconds before the server pings a client (HTTP/2 PING and TCP keepalive;
    /// default 30).
    #[arg(
        id = "query.keepalive_secs",
        long = "grpc-keepalive-secs",
        env = "TERRA_INGEST_GRPC_KEEPALIVE_SECS",
        value_name = "SECS"
    )]
    pub grpc_keepalive_secs: Option<u64>,
    /// Seconds a ping may go unanswered before the connection is closed (default 10).
    #[arg(
        id = "query.keepalive_timeout_secs",
        long = "grpc-keepalive-timeout-secs",
        env = "TERRA_INGEST_GRPC_KEEPALIVE_TIMEOUT_SECS",
        value_name = "SECS"
    )]
    pub grpc_keepalive_timeout_secs: Option<u64>,
    /// Age in seconds at which a connection is asked to reconnect (GOAWAY), so clients
    /// spread over replicas; calls in progress finish (default 0: never).
    #[arg(
        id = "query.max_connection_age_secs",
        long = "grpc-max-connection-age-secs",
        env = "TERRA_INGEST_GRPC_MAX_CONNECTION_AGE_SECS",
        value_name = "SECS"
    )]
    pub grpc_max_connection_age_secs: Option<u64>,
    /// Connections of the query service's own read pool (default 8); in `standalone` it is
    /// apart from the projector's, so long queries cannot stall it.
    #[arg(
        id = "query.pool_size",
        long = "query-pool-size",
        env = "TERRA_INGEST_QUERY_POOL_SIZE",
        value_name = "N"
    )]
    pub query_pool_size: Option<u32>,
}
