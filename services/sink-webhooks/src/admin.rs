//! (being written by a helper; this stub holds the one call the dispatcher needs)

use terra_schema::tables::{WEBHOOK_DELIVERIES, WEBHOOK_ENDPOINTS};
use terra_schema::{SqlError, SqlTarget, Stmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    Enabled,
    Disabled,
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
}

pub async fn set_state(
    target: &SqlTarget,
    endpoint: &str,
    state: EndpointState,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<(), SqlError> {
    let mut tx = target.pool().begin().await?;
    let mut stmt = Stmt::new(
        target.dialect(),
        format!("UPDATE {} SET state = ", target.table(WEBHOOK_ENDPOINTS)),
    );
    stmt.bind(state.as_str())
        .push(", reason = ")
        .bind(reason)
        .push(", changed_at_ms = ")
        .bind(now_ms)
        .push(", next_probe_at_ms = NULL");
    if state == EndpointState::Enabled {
        stmt.push(", failing_since_ms = NULL");
    }
    stmt.push(" WHERE name = ").bind(endpoint);
    sqlx::Executor::execute(&mut *tx, stmt.query()).await?;
    if state == EndpointState::Enabled {
        let mut reset = Stmt::new(
            target.dialect(),
            format!(
                "UPDATE {} SET next_attempt_at_ms = 0 WHERE state = 'pending' AND endpoint = ",
                target.table(WEBHOOK_DELIVERIES)
            ),
        );
        reset.bind(endpoint);
        sqlx::Executor::execute(&mut *tx, reset.query()).await?;
    }
    tx.commit().await?;
    Ok(())
}
