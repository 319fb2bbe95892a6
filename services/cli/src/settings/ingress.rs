//! The ingress's settings, checked: its sources with their secrets, allowlists and proxies,
//! its limits, and the secret `standalone` generates when none is configured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use terra_core::{SigningSecret, Verifier};
use terra_eventlog::private_fs;
use terra_ingress::{AllowEntry, DEFAULT_SOURCE, IngressConfig, Source};

use super::config::{Config, SourceSection};
use super::names;

/// File in the data dir holding the secret standalone generated.
pub const GENERATED_SECRET_FILE: &str = "signing-secret";

/// What the ingress needs, checked.
#[derive(Debug)]
pub struct IngressSettings {
    pub http_addr: SocketAddr,
    /// Where `/readyz` and `/metrics` are served when not on the webhook port.
    pub ops_addr: Option<SocketAddr>,
    pub ingress: IngressConfig,
    /// Where the default source's secret was generated, when standalone had to make one.
    pub generated_secret: Option<PathBuf>,
}

/// Checks the ingress's settings. `standalone` may generate the default source's secret.
pub fn resolve_ingress(config: &Config, standalone: bool) -> anyhow::Result<IngressSettings> {
    let section = &config.ingress;
    let mut sources = BTreeMap::new();
    let mut default = None;
    for (name, source) in &section.sources {
        if name == DEFAULT_SOURCE {
            default = Some(source.clone());
            continue;
        }
        let setting = format!("ingress.sources.{name}");
        Source::validate_name(name).map_err(|e| anyhow::anyhow!("setting {setting}: {e}"))?;
        let built = build_source(name, source, &setting)?.with_context(|| {
            format!(
                "setting {setting}: no signing secret (set secrets, secret_env or secret_files)"
            )
        })?;
        sources.insert(name.clone(), built);
    }
    let mut default = default.unwrap_or_default();
    let mut generated_secret = None;
    let has_secret = !(default.secrets.is_empty()
        && default.secret_env.is_empty()
        && default.secret_files.is_empty());
    if standalone && !has_secret {
        let path = generated_default_secret(&config.data_dir)?;
        default.secret_files = vec![path.clone()];
        generated_secret = Some(path);
    }
    let default_source = build_source(DEFAULT_SOURCE, &default, "ingress.sources.default")?;
    if default_source.is_none() && sources.is_empty() {
        bail!(
            "no signing secret: set --signing-secret / TERRA_INGEST_SIGNING_SECRET, --signing-secret-file / TERRA_INGEST_SIGNING_SECRET_FILE, or [ingress.sources.default] in the config file"
        );
    }
    if let Some(source) = default_source {
        sources.insert(DEFAULT_SOURCE.to_owned(), source);
    }

    let mut ingress = IngressConfig::new(sources.into_values());
    if section.body_limit == 0 {
        bail!(
            "setting {}: must be at least 1 byte",
            names::setting("ingress.body_limit")
        );
    }
    ingress.body_limit = section.body_limit;
    if section.append_timeout_ms == 0 {
        bail!(
            "setting {}: must be at least 1",
            names::setting("ingress.append_timeout_ms")
        );
    }
    ingress.append_timeout = Duration::from_millis(section.append_timeout_ms);
    let limits = &mut ingress.limits;
    limits.header_read_timeout = Duration::from_millis(section.header_read_timeout_ms);
    limits.body_read_timeout = Duration::from_millis(section.body_read_timeout_ms);
    limits.request_timeout = Duration::from_millis(section.request_timeout_ms);
    limits.max_connections = section.max_connections;
    limits.max_in_flight_requests = section.max_in_flight_requests;
    limits.max_in_flight_bytes = section.max_in_flight_bytes;
    ingress.replay_cache_entries = section.replay_cache_entries;
    ingress.rejection_logs_per_sec = section.rejection_logs_per_sec;
    // the ingress names its settings without their section: name them fully
    ingress.validate().map_err(|e| {
        match e
            .strip_prefix("setting ")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((name, why)) => anyhow::anyhow!(
                "setting {}:{why}",
                names::setting(&format!("ingress.{name}"))
            ),
            None => anyhow::anyhow!("{e}"),
        }
    })?;
    Ok(IngressSettings {
        http_addr: section.http_addr,
        ops_addr: section.ops_addr,
        ingress,
        generated_secret,
    })
}

/// Builds a source; `Ok(None)` when it has no secret at all.
fn build_source(
    name: &str,
    source: &SourceSection,
    setting: &str,
) -> anyhow::Result<Option<Source>> {
    let mut secrets = Vec::new();
    for (i, secret) in source.secrets.iter().enumerate() {
        secrets.push(
            SigningSecret::new(secret.expose_secret())
                .map_err(|e| anyhow::anyhow!("setting {setting} secrets[{i}]: {e}"))?,
        );
    }
    for var in &source.secret_env {
        let value = std::env::var(var).map_err(|_| {
            anyhow::anyhow!("setting {setting} secret_env: environment variable {var} is not set")
        })?;
        secrets.push(
            SigningSecret::new(value)
                .map_err(|e| anyhow::anyhow!("setting {setting} secret_env: {var}: {e}"))?,
        );
    }
    for path in &source.secret_files {
        secrets.extend(
            read_secret_file(path)
                .with_context(|| format!("setting {setting} secret file {}", path.display()))?,
        );
    }
    if secrets.is_empty() {
        return Ok(None);
    }
    let allowlist = if source.allow.is_empty() {
        None
    } else {
        let mut nets = Vec::new();
        for entry in &source.allow {
            nets.extend(
                AllowEntry::parse(entry)
                    .map_err(|e| anyhow::anyhow!("setting {setting} allow: {e}"))?
                    .networks(),
            );
        }
        Some(nets)
    };
    let mut trusted_proxies = Vec::new();
    for entry in &source.trusted_proxies {
        match AllowEntry::parse(entry)
            .map_err(|e| anyhow::anyhow!("setting {setting} trusted_proxies: {e}"))?
        {
            AllowEntry::Net(net) => trusted_proxies.push(net),
            AllowEntry::TerraPreset => bail!(
                "setting {setting} trusted_proxies: \"terra\" is an allowlist preset, not a proxy"
            ),
        }
    }
    Ok(Some(Source {
        name: name.to_owned(),
        verifier: Verifier::new(secrets, source.tolerance_secs),
        allowlist,
        trusted_proxies,
    }))
}

/// Every non-empty line of a secret file is one active secret.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<SigningSecret>> {
    let text = std::fs::read_to_string(path).context("failed to read it")?;
    let secrets: Vec<_> = text
        .lines()
        .filter_map(|line| SigningSecret::new(line).ok())
        .collect();
    if secrets.is_empty() {
        bail!("it holds no secret");
    }
    Ok(secrets)
}

/// Where standalone keeps the default source's generated secret; made now when missing.
pub fn generated_default_secret(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join(GENERATED_SECRET_FILE);
    if path.exists() {
        return Ok(path);
    }
    private_data_dir(data_dir, true)?;
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("failed to generate a secret: {e}"))?;
    write_private(&path, &format!("whsec_{}\n", hex::encode(raw)))
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(path)
}

/// Health data at rest: the data dir is 0700 (made so when `create`, tightened when it
/// exists looser; see `terra_eventlog::private_fs`).
pub(crate) fn private_data_dir(data_dir: &Path, create: bool) -> anyhow::Result<()> {
    if create {
        private_fs::create_dir_all(data_dir)
            .with_context(|| format!("failed to create the data dir {}", data_dir.display()))?;
    }
    private_fs::tighten_and_warn(data_dir);
    Ok(())
}

pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}
