//! Ingress configuration, already validated: sources with their verifiers, allowlists and
//! trusted proxies. Built by the binary from its TOML/env/flags layers.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use terra_core::Verifier;

/// Terra's published webhook egress addresses (terra-wire-format §3), the `terra` preset.
pub const TERRA_EGRESS_IPS: [&str; 9] = [
    "18.133.218.210",
    "18.169.82.189",
    "18.132.162.19",
    "18.130.218.186",
    "13.43.183.154",
    "3.11.208.36",
    "35.214.201.105",
    "35.214.230.71",
    "35.214.252.53",
];

/// Name of the source `POST /webhook` uses.
pub const DEFAULT_SOURCE: &str = "default";

/// One entry of an allowlist setting: a CIDR, a bare address, or the `terra` preset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Net(IpNet),
    TerraPreset,
}

impl AllowEntry {
    /// Parses `terra`, `10.0.0.0/8`, `203.0.113.7` or `2001:db8::/32`.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("terra") {
            return Ok(Self::TerraPreset);
        }
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self::Net(net.trunc()));
        }
        text.parse::<std::net::IpAddr>()
            .map(|ip| Self::Net(IpNet::from(ip)))
            .map_err(|_| SourceError::BadNetwork(text.to_owned()))
    }

    /// The networks this entry stands for.
    pub fn networks(&self) -> Vec<IpNet> {
        match self {
            Self::Net(net) => vec![*net],
            Self::TerraPreset => TERRA_EGRESS_IPS
                .iter()
                .map(|ip| IpNet::from(ip.parse::<std::net::IpAddr>().expect("valid preset")))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0:?} is not an IP address, a CIDR or the preset \"terra\"")]
    BadNetwork(String),
    #[error("source name {0:?} must be 1-64 characters of a-z 0-9 - _")]
    BadName(String),
    #[error("source {0:?} has no signing secret")]
    NoSecret(String),
}

/// A webhook source: one Terra dev id / webhook endpoint.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub verifier: Verifier,
    /// `None`: every address is allowed (the default).
    pub allowlist: Option<Vec<IpNet>>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl Source {
    pub fn validate_name(name: &str) -> Result<(), SourceError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(())
        } else {
            Err(SourceError::BadName(name.to_owned()))
        }
    }
}

/// Everything the ingress needs.
#[derive(Debug, Clone)]
pub struct IngressConfig {
    pub sources: BTreeMap<String, Source>,
    /// Largest accepted body, bytes.
    pub body_limit: usize,
    /// Longest wait for the log to confirm an append before answering 503 (kept below
    /// Terra's ~8 s delivery timeout).
    pub append_timeout: Duration,
    /// Limits that keep hostile or broken clients from holding the ingress.
    pub limits: Limits,
    /// Most deliveries the replay cache remembers (0: no replay cache).
    pub replay_cache_entries: usize,
    /// Most rejected requests logged per second; the metrics count every one.
    pub rejection_logs_per_sec: u32,
    /// `standalone`: new webhooks are held (up to the bound's hold, then accepted) while a
    /// projection of the same process is too far behind; `None`: never held.
    pub lag_bound: Option<terra_runtime::LagBound>,
}

impl IngressConfig {
    pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;
    pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(6);
    /// About 140 bytes each (the table is sized at start): 70 MB once full.
    pub const DEFAULT_REPLAY_CACHE_ENTRIES: usize = 500_000;
    pub const DEFAULT_REJECTION_LOGS_PER_SEC: u32 = 10;

    pub fn new(sources: impl IntoIterator<Item = Source>) -> Self {
        Self {
            sources: sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
            body_limit: Self::DEFAULT_BODY_LIMIT,
            append_timeout: Self::DEFAULT_APPEND_TIMEOUT,
            limits: Limits::default(),
            replay_cache_entries: Self::DEFAULT_REPLAY_CACHE_ENTRIES,
            rejection_logs_per_sec: Self::DEFAULT_REJECTION_LOGS_PER_SEC,
            lag_bound: None,
        }
    }

    /// Checks the settings against each other; the error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let limits = &self.limits;
        for (name, value) in [
            ("header_read_timeout_ms", limits.header_read_timeout),
            ("body_read_timeout_ms", limits.body_read_timeout),
            ("request_timeout_ms", limits.request_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("setting {name}: must be at least 1 ms"));
            }
        }
        if limits.max_connections == 0 {
            return Err("setting max_connections: must be at least 1".to_owned());
        }
        if limits.max_in_flight_requests == 0 {
            return Err("setting max_in_flight_requests: must be at least 1".to_owned());
        }
        if limits.max_in_flight_bytes < self.body_limit {
            return Err(format!(
                "setting max_in_flight_bytes: {} is below body_limit ({}), so a body at the limit could never be accepted",
                limits.max_in_flight_bytes, self.body_limit
            ));
        }
        if u32::try_from(self.body_limit).is_err() {
            return Err("setting body_limit: must be below 4 GiB".to_owned());
        }
        Ok(())
    }
}

/// Timeouts and caps of the HTTP server. Beyond a cap the ingress answers 503 with
/// `Retry-After` at once, so Terra retries and memory stays bounded.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request's headers must arrive within this time (also how long an idle keep-alive
    /// connection is kept); past it the connection is closed.
    pub header_read_timeout: Duration,
    /// The whole body must arrive within this time after the headers (408 otherwise).
    pub body_read_timeout: Duration,
    /// A webhook is answered within this time after its headers, body and append included
    /// (503 with `Retry-After` otherwise).
    pub request_timeout: Duration,
    /// Open connections; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Webhook requests being handled at once; one more is answered 503.
    pub max_in_flight_requests: usize,
    /// Body bytes held at once by requests being read or appended; a body that does not
    /// fit is answered 503 (its declared length is reserved before it is read).
    pub max_in_flight_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_in_flight_requests: 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
        }
    }
}
