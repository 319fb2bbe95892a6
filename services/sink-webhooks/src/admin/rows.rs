//! The rows and states operators see (`super`'s functions return them), decoded from the
//! webhook tables' cells.

use std::fmt;

use terra_schema::SqlError;
use terra_schema::read::Value;

/// Most deliveries one page may hold.
pub const MAX_LIMIT: u32 = 1_000;

/// An endpoint's state (`webhook_endpoints.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Deliveries are sent.
    Enabled,
    /// Stopped by the dispatcher (failing for too long, or 410 Gone): probed with its oldest
    /// pending delivery, re-enabled by a 2xx.
    Disabled,
    /// Stopped by an operator: neither sent nor probed until enabled.
    Paused,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Paused => "paused",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "enabled" => Ok(Self::Enabled),
            "disabled" => Ok(Self::Disabled),
            "paused" => Ok(Self::Paused),
            other => Err(format!(
                "{other:?} is not an endpoint state (enabled, disabled or paused)"
            )),
        }
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delivery's state (`webhook_deliveries.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt, or in flight.
    Pending,
    Delivered,
    /// Dead-lettered (`last_error` says why); [`requeue_dead`] sends it again.
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "pending" => Ok(Self::Pending),
            "delivered" => Ok(Self::Delivered),
            "dead" => Ok(Self::Dead),
            other => Err(format!(
                "{other:?} is not a delivery state (pending, delivered or dead)"
            )),
        }
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What waits for an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Deliveries not yet delivered nor dead (in flight included).
    pub pending: u64,
    /// Pending deliveries whose next attempt is due.
    pub due: u64,
    /// Dead letters.
    pub dead: u64,
    /// `created_at_ms` of the oldest pending delivery.
    pub oldest_pending_created_at_ms: Option<i64>,
}

/// One endpoint as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    pub name: String,
    /// In the running configuration (else only known from the tables: removed, or renamed).
    pub configured: bool,
    pub state: EndpointState,
    /// Why it is disabled or paused.
    pub reason: Option<String>,
    /// When the state last changed (`None`: no row yet, enabled by default).
    pub changed_at_ms: Option<i64>,
    pub failing_since_ms: Option<i64>,
    pub last_success_ms: Option<i64>,
    /// When a disabled endpoint is probed next.
    pub next_probe_at_ms: Option<i64>,
    pub backlog: Backlog,
}

/// Which deliveries [`deliveries`] lists: every given filter applies; a page starts after
/// `after_id`, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub endpoint: Option<String>,
    pub user_id: Option<String>,
    /// The event (its envelope id).
    pub envelope_id: Option<String>,
    pub state: Option<DeliveryState>,
    /// Only ids above this one (0: from the start).
    pub after_id: i64,
    /// Page size, 1..=[`MAX_LIMIT`] (clamped into it).
    pub limit: u32,
}

impl Default for DeliveryFilter {
    fn default() -> Self {
        Self {
            endpoint: None,
            user_id: None,
            envelope_id: None,
            state: None,
            after_id: 0,
            limit: 100,
        }
    }
}

/// One (event, endpoint) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    pub endpoint: String,
    pub envelope_id: String,
    pub user_id: Option<String>,
    pub event_type: String,
    pub state: DeliveryState,
    /// Attempts started.
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    /// In flight while this is ahead of now.
    pub lease_until_ms: Option<i64>,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub last_status: Option<i64>,
    /// The last failure; for a dead letter, why it is dead.
    pub last_error: Option<String>,
}

/// One attempt of a delivery (or a probe of its disabled endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRow {
    pub id: i64,
    pub attempt: i64,
    /// Sent to see whether a disabled endpoint is back (not counted in the schedule).
    pub probe: bool,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub status_code: Option<i64>,
    pub error_class: String,
    pub error: Option<String>,
    /// At most 1 KiB of the response.
    pub response: Option<String>,
}

impl EndpointStatus {
    pub(super) fn new(name: &str, configured: bool) -> Self {
        Self {
            name: name.to_owned(),
            configured,
            state: EndpointState::Enabled,
            reason: None,
            changed_at_ms: None,
            failing_since_ms: None,
            last_success_ms: None,
            next_probe_at_ms: None,
            backlog: Backlog::default(),
        }
    }
}

pub(super) fn delivery_row(row: Vec<Value>) -> Result<DeliveryRow, SqlError> {
    let mut c = Cells::new(row);
    Ok(DeliveryRow {
        id: c.int("id")?,
        endpoint: c.text("endpoint")?,
        envelope_id: c.text("envelope_id")?,
        user_id: c.opt_text(),
        event_type: c.text("event_type")?,
        state: DeliveryState::parse(&c.text("state")?).map_err(SqlError::Schema)?,
        attempts: c.int("attempts")?,
        next_attempt_at_ms: c.int("next_attempt_at_ms")?,
        lease_until_ms: c.opt_int(),
        created_at_ms: c.int("created_at_ms")?,
        finished_at_ms: c.opt_int(),
        last_status: c.opt_int(),
        last_error: c.opt_text(),
    })
}

/// The first attempt kept in `delivery`'s row (`first_started_at_ms`, `first_duration_ms`,
/// `first_response`), if it has one: it delivered, so its status is the delivery's last.
pub(super) fn inline_attempt(row: Vec<Value>, delivery: &DeliveryRow) -> Option<AttemptRow> {
    let mut c = Cells::new(row);
    let started_at_ms = c.opt_int()?;
    Some(AttemptRow {
        id: 0,
        attempt: 1,
        probe: false,
        started_at_ms,
        duration_ms: c.opt_int().unwrap_or(0),
        status_code: delivery.last_status,
        error_class: crate::send::ErrorClass::None.as_str().to_owned(),
        error: None,
        response: c.opt_text(),
    })
}

pub(super) fn attempt_row(row: Vec<Value>) -> Result<AttemptRow, SqlError> {
    let mut c = Cells::new(row);
    Ok(AttemptRow {
        id: c.int("id")?,
        attempt: c.int("attempt")?,
        probe: c.int("probe")? != 0,
        started_at_ms: c.int("started_at_ms")?,
        duration_ms: c.int("duration_ms")?,
        status_code: c.opt_int(),
        error_class: c.text("error_class")?,
        error: c.opt_text(),
        response: c.opt_text(),
    })
}

/// The cells of one row in select-list order; a NULL where the schema has NOT NULL is an
/// error naming the column.
pub(super) struct Cells(std::vec::IntoIter<Value>);

impl Cells {
    pub(super) fn new(row: Vec<Value>) -> Self {
        Self(row.into_iter())
    }

    fn next(&mut self) -> Value {
        self.0.next().unwrap_or(Value::Null)
    }

    pub(super) fn opt_text(&mut self) -> Option<String> {
        self.next().into_text()
    }

    pub(super) fn opt_int(&mut self) -> Option<i64> {
        self.next().as_i64()
    }

    pub(super) fn text(&mut self, column: &str) -> Result<String, SqlError> {
        self.opt_text().ok_or_else(|| missing(column))
    }

    pub(super) fn int(&mut self, column: &str) -> Result<i64, SqlError> {
        self.opt_int().ok_or_else(|| missing(column))
    }
}

fn missing(column: &str) -> SqlError {
    SqlError::Schema(format!(
        "webhook table column {column} is NULL or not a number"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_unknown_ones_are_named() {
        for s in [
            EndpointState::Enabled,
            EndpointState::Disabled,
            EndpointState::Paused,
        ] {
            assert_eq!(EndpointState::parse(s.as_str()), Ok(s));
        }
        for s in [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ] {
            assert_eq!(DeliveryState::parse(s.as_str()), Ok(s));
        }
        let err = EndpointState::parse("off").unwrap_err();
        assert!(err.contains("\"off\"") && err.contains("paused"), "{err}");
        let err = DeliveryState::parse("Dead").unwrap_err();
        assert!(err.contains("\"Dead\"") && err.contains("pending"), "{err}");
    }
}
