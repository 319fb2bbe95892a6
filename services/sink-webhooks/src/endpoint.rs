//! The endpoints events are delivered to, and the settings of the destination as a whole.
//! Built by the binary's settings (config file `[[webhooks.endpoints]]`, or the one-endpoint
//! flags); every check here names the setting it refuses.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use terra_projector::plan::Origin;

/// Terra's retry schedule: the delay before each attempt, the first at once; 8 attempts over
/// just over a day (terra-wire-format §9).
pub const TERRA_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(4 * 60 * 60),
    Duration::from_secs(8 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
];

/// Terra's timeout per attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(8);
/// The shortest and longest timeout an endpoint may set.
pub const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));

/// How deliveries are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureMode {
    /// `terra-signature` and `X-Terra-Signature`, as Terra signs.
    #[default]
    Terra,
    /// The Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
    /// Both.
    Both,
}

impl SignatureMode {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "terra" => Ok(Self::Terra),
            "standard" => Ok(Self::Standard),
            "both" => Ok(Self::Both),
            other => Err(format!(
                "{other:?} is not a signature mode (terra, standard or both)"
            )),
        }
    }

    pub fn terra(self) -> bool {
        matches!(self, Self::Terra | Self::Both)
    }

    pub fn standard(self) -> bool {
        matches!(self, Self::Standard | Self::Both)
    }
}

/// The order an endpoint receives events in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// Any order (Terra's): deliveries go out as they are due.
    #[default]
    Unordered,
    /// A user's next event is not sent before the previous one is delivered or dead.
    PerUser,
}

impl Ordering {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "unordered" => Ok(Self::Unordered),
            "per_user" => Ok(Self::PerUser),
            other => Err(format!(
                "{other:?} is not an ordering (unordered or per_user)"
            )),
        }
    }
}

/// The delays before each attempt (the first usually zero): as many attempts as delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Vec<Duration>);

impl Default for Schedule {
    fn default() -> Self {
        Self(TERRA_SCHEDULE.to_vec())
    }
}

impl Schedule {
    pub fn new(delays: Vec<Duration>) -> Result<Self, String> {
        if delays.is_empty() {
            return Err("a retry schedule needs at least one attempt".to_owned());
        }
        if delays.len() > 100 {
            return Err(format!(
                "a retry schedule has at most 100 attempts, not {}",
                delays.len()
            ));
        }
        Ok(Self(delays))
    }

    /// `0s,5m,30m,1h`: numbers with `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let delays = text
            .split(',')
            .map(str::trim)
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(delays)
    }

    pub fn attempts(&self) -> u32 {
        self.0.len() as u32
    }

    /// The delay before attempt `n` (0-based), `None` past the last.
    pub fn delay_before(&self, attempt: u32) -> Option<Duration> {
        self.0.get(attempt as usize).copied()
    }

    pub fn delays(&self) -> &[Duration] {
        &self.0
    }
}

/// `250ms`, `5s`, `30m`, `1h`, `2d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h or d)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5m"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: the unit is ms, s, m, h or d")),
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Which events an endpoint receives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Event types (`activity`) or groups (`data`, `authentication`, `other`...); empty: all.
    pub events: Vec<String>,
    /// Source names; empty: all.
    pub sources: Vec<String>,
}

impl Filter {
    pub fn matches(&self, event_type: &str, origin: &Origin) -> bool {
        let source_ok = self.sources.is_empty() || self.sources.contains(&origin.source);
        let event_ok = self.events.is_empty()
            || self
                .events
                .iter()
                .any(|e| e == event_type || Some(e.as_str()) == group_name(origin.event_group));
        source_ok && event_ok
    }
}

/// The names an event group goes by in an endpoint's `events` (terra-wire-format §4), by the
/// envelope's `EventGroup` number.
pub const GROUP_NAMES: [&str; 6] = [
    "unspecified",
    "authentication",
    "data",
    "data_request",
    "misc",
    "other",
];

fn group_name(group: i32) -> Option<&'static str> {
    usize::try_from(group)
        .ok()
        .and_then(|g| GROUP_NAMES.get(g).copied())
}

/// One endpoint.
#[derive(Clone)]
pub struct Endpoint {
    /// Unique, stable: deliveries and state are kept under it (`[a-zA-Z0-9_.-]`, 1-200).
    pub name: String,
    pub url: url::Url,
    /// One secret, or two during a rotation (one signature each).
    pub secrets: Vec<SecretString>,
    pub signature: SignatureMode,
    pub filter: Filter,
    /// Extra headers sent with every delivery.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub timeout: Duration,
    pub schedule: Schedule,
    pub ordering: Ordering,
    /// Most attempts in flight to this endpoint at once.
    pub max_in_flight: usize,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("url", &redacted_url(&self.url))
            .field("secrets", &self.secrets.len())
            .field("signature", &self.signature)
            .field("filter", &self.filter)
            .field(
                "headers",
                &self.headers.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("schedule", &self.schedule)
            .field("ordering", &self.ordering)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// The URL without user info, query or fragment (they may carry credentials): for logs.
pub fn redacted_url(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// Headers an endpoint's extra `headers` may not set: the ones the sender sets itself (the
/// signatures, the body's type, Terra's headers, the idempotency key, the trace) and the
/// ones that frame the request.
pub const RESERVED_HEADERS: [&str; 20] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "host",
    "te",
    "upgrade",
    "user-agent",
    "terra-signature",
    "x-terra-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "terra-reference",
    "x-terra-trace-id",
    "x-terra-ordering-timestamp",
    "idempotency-key",
    "traceparent",
    "tracestate",
];

/// Default for [`Endpoint::max_in_flight`].
pub const DEFAULT_ENDPOINT_IN_FLIGHT: usize = 32;

impl Endpoint {
    /// Checks what the settings cannot express by type; errors name the endpoint and setting.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |what: &str, why: String| {
            Err(format!("webhook endpoint {:?}: {what}: {why}", self.name))
        };
        if self.name.is_empty()
            || self.name.len() > 200
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return bad("name", "1 to 200 of a-z, A-Z, 0-9, _ . -".to_owned());
        }
        if !matches!(self.url.scheme(), "http" | "https") || self.url.host().is_none() {
            return bad("url", "an http:// or https:// URL with a host".to_owned());
        }
        if self.secrets.is_empty() || self.secrets.len() > 2 {
            return bad(
                "secrets",
                format!(
                    "one secret, or two during a rotation, not {}",
                    self.secrets.len()
                ),
            );
        }
        if !(TIMEOUT_RANGE.0..=TIMEOUT_RANGE.1).contains(&self.timeout) {
            return bad("timeout", format!("{:?} is outside 1s..30s", self.timeout));
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight", "at least 1".to_owned());
        }
        for (name, _) in &self.headers {
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return bad(
                    "headers",
                    format!("{name} is set by the sender and cannot be overridden"),
                );
            }
        }
        for event in &self.filter.events {
            if event.is_empty() {
                return bad("events", "an empty event type".to_owned());
            }
        }
        Ok(())
    }
}

/// How long finished deliveries are kept (`[webhooks] retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The destination's settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub endpoints: Vec<Endpoint>,
    /// Ranges the address guard lets through (it refuses loopback, private, link-local, CGNAT,
    /// multicast and metadata addresses otherwise).
    pub allow_cidrs: Vec<IpNet>,
    /// Most attempts in flight across every endpoint.
    pub max_in_flight: usize,
    /// An endpoint failing without a success for this long is disabled.
    pub disable_after: Duration,
    /// How often a disabled endpoint is probed.
    pub probe_interval: Duration,
    /// The longest `Retry-After` honoured (429, 503).
    pub retry_after_max: Duration,
    /// How often a replica looks for due deliveries it was not told about.
    pub poll_interval: Duration,
    /// ± this fraction of each scheduled delay, at random.
    pub jitter: f64,
    /// Delivered and dead deliveries, with their attempts, are deleted this long after they
    /// finished (`None`: kept). Pending ones are never deleted.
    pub retention: Option<Duration>,
    /// How often the dispatcher prunes (see the `prune` module). Not a setting: tests
    /// shorten it.
    pub prune_interval: Duration,
    /// What a lease adds to two attempt timeouts (see the `worker` module: a leased delivery
    /// waits in its worker's queue for at most a timeout plus half of this). Not a setting:
    /// tests shorten it.
    pub lease_margin: Duration,
    /// First attempts sent by the fan-out itself (see the `first` module). Not a setting:
    /// tests of the dispatcher's leases turn it off.
    pub first_from_fan_out: bool,
    /// About how many (event, endpoint) pairs the fan-out sends and writes per chunk of a
    /// batch (see the `fanout` module). Not a setting: tests shorten it.
    pub chunk_pairs: usize,
    /// The first wait before an endpoint that refuses connections is probed, doubling while
    /// the probes fail, up to `unreachable_wait_max` (see the `reach` module). Not settings:
    /// tests shorten them.
    pub unreachable_wait: Duration,
    pub unreachable_wait_max: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            allow_cidrs: Vec::new(),
            max_in_flight: 256,
            disable_after: Duration::from_secs(5 * 86_400),
            probe_interval: Duration::from_secs(10 * 60),
            retry_after_max: Duration::from_secs(60 * 60),
            poll_interval: Duration::from_millis(250),
            jitter: 0.2,
            retention: Some(DEFAULT_RETENTION),
            prune_interval: Duration::from_secs(60 * 60),
            lease_margin: Duration::from_secs(10),
            first_from_fan_out: true,
            chunk_pairs: 1_024,
            unreachable_wait: Duration::from_secs(1),
            unreachable_wait_max: Duration::from_secs(60),
        }
    }
}

impl WebhookSettings {
    pub fn validate(&self) -> Result<(), String> {
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            endpoint.validate()?;
            if self.endpoints[..i].iter().any(|e| e.name == endpoint.name) {
                return Err(format!(
                    "webhook endpoint {:?}: name: two endpoints share it",
                    endpoint.name
                ));
            }
        }
        if self.max_in_flight == 0 {
            return Err("webhooks.max_in_flight: at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(format!("webhooks.jitter: {} is outside 0..1", self.jitter));
        }
        if self.probe_interval.is_zero()
            || self.poll_interval.is_zero()
            || self.prune_interval.is_zero()
        {
            return Err(
                "webhooks.probe_interval and webhooks.poll_interval: above zero".to_owned(),
            );
        }
        Ok(())
    }

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}
