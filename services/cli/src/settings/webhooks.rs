//! `[webhooks]`: the webhook destination, checked. Endpoints from the config file's
//! `[[webhooks.endpoints]]` and, for one endpoint, from the flags (`--webhook-url`,
//! `--webhook-secret-file`, ...: the keys `webhooks.url`, `webhooks.secret_file`, ...).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use terra_sink_webhooks::endpoint::{DEFAULT_ENDPOINT_IN_FLIGHT, DEFAULT_TIMEOUT, parse_duration};
use terra_sink_webhooks::{Endpoint, Filter, Ordering, Schedule, SignatureMode, WebhookSettings};

use super::config::one_or_many;
use super::names;

/// `[webhooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    #[serde(deserialize_with = "one_or_many")]
    pub allow_cidrs: Vec<String>,
    pub max_in_flight: usize,
    pub disable_after: String,
    pub probe_interval: String,
    pub retry_after_max: String,
    pub poll_interval: String,
    pub jitter: f64,
    /// Finished deliveries kept this long (`0s`: kept).
    pub retention: String,
    pub endpoints: Vec<EndpointSection>,
    /// The one endpoint of the flags.
    pub url: Option<String>,
    pub name: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub retry_schedule: Option<String>,
    pub signature: Option<String>,
    pub ordering: Option<String>,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        let d = WebhookSettings::default();
        Self {
            allow_cidrs: Vec::new(),
            max_in_flight: d.max_in_flight,
            disable_after: "5d".to_owned(),
            probe_interval: "10m".to_owned(),
            retry_after_max: "1h".to_owned(),
            poll_interval: "250ms".to_owned(),
            jitter: d.jitter,
            retention: "30d".to_owned(),
            endpoints: Vec::new(),
            url: None,
            name: None,
            secret_file: None,
            retry_schedule: None,
            signature: None,
            ordering: None,
        }
    }
}

/// `[[webhooks.endpoints]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointSection {
    pub name: String,
    pub url: String,
    /// Inline secrets (prefer `secret_env` or `secret_files`).
    #[serde(deserialize_with = "one_or_many")]
    pub secrets: Vec<SecretString>,
    #[serde(deserialize_with = "one_or_many")]
    pub secret_env: Vec<String>,
    /// Files holding the secret (every non-blank line one; two during a rotation).
    #[serde(deserialize_with = "one_or_many")]
    pub secret_files: Vec<PathBuf>,
    pub signature: String,
    /// Event types or groups; empty: every event.
    #[serde(deserialize_with = "one_or_many")]
    pub events: Vec<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub sources: Vec<String>,
    pub headers: BTreeMap<String, String>,
    pub timeout: String,
    /// Delays before each attempt: a list or one comma-separated string.
    #[serde(deserialize_with = "one_or_many")]
    pub schedule: Vec<String>,
    pub ordering: String,
    pub max_in_flight: usize,
}

impl Default for EndpointSection {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            secrets: Vec::new(),
            secret_env: Vec::new(),
            secret_files: Vec::new(),
            signature: "terra".to_owned(),
            events: Vec::new(),
            sources: Vec::new(),
            headers: BTreeMap::new(),
            timeout: "8s".to_owned(),
            schedule: Vec::new(),
            ordering: "unordered".to_owned(),
            max_in_flight: DEFAULT_ENDPOINT_IN_FLIGHT,
        }
    }
}

/// The destination's settings, checked; `None` when no endpoint is configured.
pub fn resolve_webhooks(config: &super::Config) -> anyhow::Result<Option<WebhookSettings>> {
    let section = &config.webhooks;
    let mut sections = section.endpoints.clone();
    if let Some(url) = &section.url {
        let name = section.name.clone().unwrap_or_else(|| "default".to_owned());
        let Some(file) = &section.secret_file else {
            bail!(
                "setting {}: {} needs a signing secret: {}",
                names::setting("webhooks.url"),
                names::setting("webhooks.url"),
                names::setting("webhooks.secret_file")
            );
        };
        sections.push(EndpointSection {
            name,
            url: url.clone(),
            secret_files: vec![file.clone()],
            signature: section
                .signature
                .clone()
                .unwrap_or_else(|| "terra".to_owned()),
            schedule: section.retry_schedule.iter().cloned().collect(),
            ordering: section
                .ordering
                .clone()
                .unwrap_or_else(|| "unordered".to_owned()),
            ..EndpointSection::default()
        });
    } else {
        for (key, given) in [
            ("webhooks.secret_file", section.secret_file.is_some()),
            ("webhooks.retry_schedule", section.retry_schedule.is_some()),
            ("webhooks.name", section.name.is_some()),
            ("webhooks.signature", section.signature.is_some()),
            ("webhooks.ordering", section.ordering.is_some()),
        ] {
            if given {
                bail!(
                    "setting {}: only with {} (endpoints in the config file set it in [[webhooks.endpoints]])",
                    names::setting(key),
                    names::setting("webhooks.url")
                );
            }
        }
    }
    if sections.is_empty() {
        return Ok(None);
    }
    let duration = |key: &str, text: &str| {
        parse_duration(text).map_err(|e| anyhow::anyhow!("setting {}: {e}", names::setting(key)))
    };
    let mut settings = WebhookSettings {
        endpoints: Vec::new(),
        allow_cidrs: Vec::new(),
        max_in_flight: section.max_in_flight,
        disable_after: duration("webhooks.disable_after", &section.disable_after)?,
        probe_interval: duration("webhooks.probe_interval", &section.probe_interval)?,
        retry_after_max: duration("webhooks.retry_after_max", &section.retry_after_max)?,
        poll_interval: duration("webhooks.poll_interval", &section.poll_interval)?,
        jitter: section.jitter,
        retention: Some(duration("webhooks.retention", &section.retention)?)
            .filter(|d| !d.is_zero()),
        ..WebhookSettings::default()
    };
    for cidr in &section.allow_cidrs {
        let net = cidr
            .parse::<ipnet::IpNet>()
            .or_else(|_| cidr.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                anyhow::anyhow!(
                    "setting {}: {cidr:?} is not a CIDR (127.0.0.0/8) or an address",
                    names::setting("webhooks.allow_cidrs")
                )
            })?;
        settings.allow_cidrs.push(net);
    }
    for (i, s) in sections.iter().enumerate() {
        let endpoint = build_endpoint(s)
            .and_then(|e| e.validate().map(|()| e).map_err(anyhow::Error::msg))
            .with_context(|| format!("setting webhooks.endpoints[{i}] ({:?})", s.name))?;
        settings.endpoints.push(endpoint);
    }
    settings
        .validate()
        .map_err(|e| anyhow::anyhow!("setting {e}"))?;
    Ok(Some(settings))
}

fn build_endpoint(s: &EndpointSection) -> anyhow::Result<Endpoint> {
    let url = reqwest::Url::parse(&s.url).map_err(|e| anyhow::anyhow!("url: not a URL ({e})"))?;
    let mut secrets: Vec<SecretString> = s.secrets.clone();
    for var in &s.secret_env {
        let value = std::env::var(var)
            .map_err(|_| anyhow::anyhow!("secret_env: environment variable {var} is not set"))?;
        secrets.push(SecretString::from(value.trim().to_owned()));
    }
    for path in &s.secret_files {
        let lines = super::secrets::lines_of(path)
            .with_context(|| format!("secret_files: {}", path.display()))?;
        if lines.is_empty() {
            bail!("secret_files: {} holds no secret", path.display());
        }
        secrets.extend(lines.into_iter().map(SecretString::from));
    }
    if secrets.iter().any(|s| s.expose_secret().is_empty()) {
        bail!("secrets: an empty secret");
    }
    let mut headers = Vec::new();
    for (name, value) in &s.headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| anyhow::anyhow!("headers: {name:?} is not a header name"))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| anyhow::anyhow!("headers: the value of {name} is not a header value"))?;
        headers.push((name, value));
    }
    let schedule = if s.schedule.is_empty() {
        Schedule::default()
    } else {
        Schedule::parse(&s.schedule.join(",")).map_err(|e| anyhow::anyhow!("schedule: {e}"))?
    };
    let timeout = if s.timeout.is_empty() {
        DEFAULT_TIMEOUT
    } else {
        parse_duration(&s.timeout).map_err(|e| anyhow::anyhow!("timeout: {e}"))?
    };
    Ok(Endpoint {
        name: s.name.clone(),
        url,
        secrets,
        signature: SignatureMode::parse(&s.signature)
            .map_err(|e| anyhow::anyhow!("signature: {e}"))?,
        filter: Filter {
            events: s.events.clone(),
            sources: s.sources.clone(),
        },
        headers,
        timeout,
        schedule,
        ordering: Ordering::parse(&s.ordering).map_err(|e| anyhow::anyhow!("ordering: {e}"))?,
        max_in_flight: s.max_in_flight,
    })
}

/// The names of the configured endpoints, without reading their secrets (the query service
/// and `terra-ingest deliveries` list them; they need not hold the secrets).
pub fn configured_endpoint_names(config: &super::Config) -> Vec<String> {
    let section = &config.webhooks;
    let mut names: Vec<String> = section.endpoints.iter().map(|e| e.name.clone()).collect();
    if section.url.is_some() {
        names.push(section.name.clone().unwrap_or_else(|| "default".to_owned()));
    }
    names
}
