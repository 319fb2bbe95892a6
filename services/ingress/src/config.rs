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
}

impl IngressConfig {
    pub const DEFAULT_BODY_LIMIT: usize = 16 * 1024 * 1024;
    pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(6);

    pub fn new(sources: impl IntoIterator<Item = Source>) -> Self {
        Self {
            sources: sources.into_iter().map(|s| (s.name.clone(), s)).collect(),
            body_limit: Self::DEFAULT_BODY_LIMIT,
            append_timeout: Self::DEFAULT_APPEND_TIMEOUT,
        }
    }
}
