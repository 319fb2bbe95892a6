//! The query service's settings, checked: bearer tokens, TLS, the token-sealing key, limits
//! and its own read pool.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use terra_query::{Limits, QueryServerConfig, TlsFiles, TokenKey};

use super::config::{Config, QuerySection};
use super::ingress::{private_data_dir, write_private};
use super::names;
use super::secrets::{lines_of, value_or_file};

/// File in the data dir holding the key that seals page tokens and watch positions.
pub const TOKEN_KEY_FILE: &str = "query-token-key";

/// What the query service needs, checked.
#[derive(Debug)]
pub struct QuerySettings {
    pub grpc_addr: SocketAddr,
    pub server: QueryServerConfig,
    /// Connections of its own read pool.
    pub pool_size: u32,
    pub token_key: TokenKey,
}

/// Checks the query service's settings; generates the token key into the data dir when
/// none is given.
pub fn resolve_query(config: &Config) -> anyhow::Result<QuerySettings> {
    Ok(QuerySettings {
        grpc_addr: config.query.grpc_addr,
        server: server_config(&config.query)?,
        pool_size: pool_size(&config.query)?,
        token_key: token_key(&config.query, &config.data_dir)?,
    })
}

/// Tokens, TLS and limits of the server.
pub(crate) fn server_config(query: &QuerySection) -> anyhow::Result<QueryServerConfig> {
    let mut tokens: Vec<String> = query
        .tokens
        .iter()
        .map(|t| t.expose_secret().trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(path) = &query.token_file {
        if !tokens.is_empty() {
            anyhow::bail!(
                "setting {} or {}: give one, not both",
                names::setting("query.tokens"),
                names::setting("query.token_file")
            );
        }
        tokens = lines_of(path)
            .with_context(|| format!("setting {}", names::setting("query.token_file")))?;
    }
    if tokens.iter().any(|t| t.len() < 16) {
        anyhow::bail!(
            "setting {}: every token must be at least 16 characters",
            names::setting("query.tokens")
        );
    }
    let read = |key: &str, path: &Path| {
        std::fs::read(path).with_context(|| {
            format!(
                "setting {}: failed to read {}",
                names::setting(key),
                path.display()
            )
        })
    };
    let tls = match (&query.tls_cert, &query.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: read("query.tls_cert", cert)?,
            key: read("query.tls_key", key)?,
            client_ca: query
                .tls_client_ca
                .as_deref()
                .map(|ca| read("query.tls_client_ca", ca))
                .transpose()?,
        }),
        (None, None) if query.tls_client_ca.is_some() => anyhow::bail!(
            "setting {}: mutual TLS needs {} and {}",
            names::setting("query.tls_client_ca"),
            names::setting("query.tls_cert"),
            names::setting("query.tls_key")
        ),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => anyhow::bail!(
            "setting {} and {}: give both or neither",
            names::setting("query.tls_cert"),
            names::setting("query.tls_key")
        ),
    };
    Ok(QueryServerConfig {
        tokens,
        tls,
        insecure_allow_unauthenticated: query.insecure_allow_unauthenticated,
        insecure_allow_plaintext_tokens: query.insecure_allow_plaintext_tokens,
        limits: limits(query)?,
    })
}

/// A setting in whole units within `range`; the error names it.
fn bounded<T: Copy + PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> anyhow::Result<T> {
    if !range.contains(&value) {
        anyhow::bail!(
            "setting {}: must be between {} and {}",
            names::setting(key),
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// The query service's timeouts, caps and keepalive.
pub(crate) fn limits(query: &QuerySection) -> anyhow::Result<Limits> {
    let secs = |key, value, range| bounded(key, value, range).map(Duration::from_secs);
    let max_connection_age = secs(
        "query.max_connection_age_secs",
        query.max_connection_age_secs,
        0..=30 * 24 * 3600,
    )?;
    Ok(Limits {
        timeout: secs("query.timeout_secs", query.timeout_secs, 1..=3600)?,
        max_in_flight: bounded("query.max_in_flight", query.max_in_flight, 1..=100_000)?,
        max_watchers: bounded("query.max_watchers", query.max_watchers, 1..=100_000)?,
        max_concurrent_streams: bounded(
            "query.max_concurrent_streams",
            query.max_concurrent_streams,
            1..=10_000,
        )?,
        keepalive_interval: secs("query.keepalive_secs", query.keepalive_secs, 1..=7200)?,
        keepalive_timeout: secs(
            "query.keepalive_timeout_secs",
            query.keepalive_timeout_secs,
            1..=600,
        )?,
        max_connection_age: (!max_connection_age.is_zero()).then_some(max_connection_age),
    })
}

/// Connections of the query service's own read pool.
pub(crate) fn pool_size(query: &QuerySection) -> anyhow::Result<u32> {
    bounded("query.pool_size", query.pool_size, 1..=1000)
}

/// The token key: given, or generated once into the data dir and kept.
pub(crate) fn token_key(query: &QuerySection, data_dir: &Path) -> anyhow::Result<TokenKey> {
    let given = value_or_file(
        query.token_secret.as_ref(),
        query.token_secret_file.as_deref(),
        "query.token_secret",
        "query.token_secret_file",
    )?;
    if let Some(secret) = given {
        return Ok(TokenKey::new(secret.expose_secret()));
    }
    let path = data_dir.join(TOKEN_KEY_FILE);
    if !path.exists() {
        private_data_dir(data_dir, true)?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("failed to generate a key: {e}"))?;
        write_private(&path, &hex::encode(raw))
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(TokenKey::new(key.trim()))
}
