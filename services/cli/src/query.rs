//! The gRPC query service: settings (tokens, TLS, the token-sealing key) and `terra-ingest
//! query`; `standalone` starts it through [`spawn`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use terra_objects::Store;
use terra_projector::sql::SqlTarget;
use terra_query::{Query, QueryServerConfig, TlsFiles, TokenKey};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cli::{LogFormat, QueryArgs, QueryCommandArgs};
use crate::{project, serve, settings, telemetry};

/// File in the data dir holding the key that seals page tokens and watch positions.
pub(crate) const TOKEN_KEY_FILE: &str = "query-token-key";

/// Resolves the server settings; errors name the setting.
pub(crate) fn server_config(args: &QueryArgs) -> anyhow::Result<QueryServerConfig> {
    let mut tokens: Vec<String> = args
        .grpc_tokens
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(path) = &args.grpc_token_file {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "setting grpc_token_file (--grpc-token-file): failed to read {}",
                path.display()
            )
        })?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
    }
    if tokens.iter().any(|t| t.len() < 16) {
        anyhow::bail!(
            "setting grpc_token (--grpc-token, TERRA_INGEST_GRPC_TOKENS): every token must be at least 16 characters"
        );
    }
    let read = |setting: &str, path: &Path| {
        std::fs::read(path)
            .with_context(|| format!("setting {setting}: failed to read {}", path.display()))
    };
    let tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: read("grpc_tls_cert (--grpc-tls-cert)", cert)?,
            key: read("grpc_tls_key (--grpc-tls-key)", key)?,
            client_ca: args
                .grpc_tls_client_ca
                .as_deref()
                .map(|ca| read("grpc_tls_client_ca (--grpc-tls-client-ca)", ca))
                .transpose()?,
        }),
        _ => None,
    };
    Ok(QueryServerConfig {
        tokens,
        tls,
        insecure_allow_unauthenticated: args.insecure_allow_unauthenticated,
    })
}

/// The token key: given, or generated once into the data dir and kept.
pub(crate) fn token_key(args: &QueryArgs, data_dir: &Path) -> anyhow::Result<TokenKey> {
    if let Some(secret) = &args.query_token_secret {
        return Ok(TokenKey::new(secret));
    }
    let path = data_dir.join(TOKEN_KEY_FILE);
    if !path.exists() {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create the data dir {}", data_dir.display()))?;
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("failed to generate a key: {e}"))?;
        settings::write_private(&path, &hex::encode(raw))
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    let key = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read {}", path.display()))?;
    Ok(TokenKey::new(key.trim()))
}

/// Binds and serves the query API until `stopped`.
pub(crate) async fn spawn(
    addr: std::net::SocketAddr,
    config: QueryServerConfig,
    query: Query,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    config.check_bind(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} (--grpc-addr)"))?;
    Ok(tokio::spawn(async move {
        terra_query::run(query, config, listener, async move {
            let _ = stopped.wait_for(|s| *s).await;
        })
        .await
        .context("query service failed")
    }))
}

/// `terra-ingest query`.
pub(crate) async fn run(
    config: Option<PathBuf>,
    log_format: Option<LogFormat>,
    args: QueryCommandArgs,
) -> anyhow::Result<ExitCode> {
    let file = settings::read_file(config.as_deref())?;
    let data_dir = args
        .project
        .data_dir
        .clone()
        .or_else(|| file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(settings::DEFAULT_DATA_DIR));
    let supabase = args.project.sql.supabase.or(file.supabase).unwrap_or(false);
    let objects = settings::resolve_objects(&file, args.objects, &data_dir, supabase)?;
    let grpc_addr: std::net::SocketAddr = args
        .grpc_addr
        .clone()
        .or_else(|| file.grpc_addr.clone())
        .unwrap_or_else(|| settings::DEFAULT_GRPC_ADDR.to_owned())
        .parse()
        .map_err(|_| anyhow::anyhow!("setting grpc_addr (--grpc-addr, TERRA_INGEST_GRPC_ADDR): not an address like 127.0.0.1:50051"))?;
    let server = server_config(&args.query)?;
    let key = token_key(&args.query, &data_dir)?;
    let settings = settings::resolve_projector(file, args.project, log_format)?;
    let _telemetry = telemetry::init(settings.log_format, settings.otlp_endpoint.as_deref())?;
    let (stop, stopped) = watch::channel(false);
    let sql = project::open_sql(&settings.sql, settings.migrate, stopped.clone()).await?;
    let store = Store::open(&objects.store)?;
    let handle = spawn(grpc_addr, server, Query::new(sql, store, key), stopped).await?;
    serve::shutdown_signal().await;
    let _ = stop.send(true);
    handle.await.context("query task panicked")??;
    Ok(ExitCode::SUCCESS)
}

/// The query service `standalone` runs beside the projectors.
pub(crate) fn for_standalone(sql: SqlTarget, store: Store, key: TokenKey) -> Query {
    Query::new(sql, store, key)
}
