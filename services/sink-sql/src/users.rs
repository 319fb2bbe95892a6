//! Users in one batch's transaction: every user an event mentions exists from then on, and
//! authentication events move the lifecycle (history always, state only when newer).

use std::collections::HashSet;

use sqlx::{Executor, Row};

use terra_projector::plan::{EventPlan, LifecycleChange, NO_USER_ROLE, Plan, Planned, Version};
use terra_schema::positions::Tx;
use terra_schema::tables::{
    INGEST_USER_EVENTS, INGEST_USER_EVENTS_COLUMNS, INGEST_USERS, INGEST_USERS_COLUMNS,
    TERRA_USERS, TERRA_USERS_COLUMNS, USER_STATE_VERSION_COLUMNS,
};
use terra_schema::{SqlError, SqlTarget, Stmt, Val, insert_rows};

use crate::write::timestamp_cast;

/// Users an event mentions exist from then on (data can arrive before the auth event, and the
/// Supabase tables' foreign keys need them); an existing row is never overwritten here.
pub(crate) async fn write_seen_users(
    target: &SqlTarget,
    tx: &mut Tx,
    events: &[(&Planned, &EventPlan)],
    now: i64,
) -> Result<(), SqlError> {
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    let mut ingest = Vec::new();
    for (planned, event) in events {
        for user in &event.seen_users {
            if seen.insert(user.user_id.as_str()) {
                users.push(vec![
                    Val::from(&user.user_id),
                    Val::from(user.reference_id.clone()),
                    Val::from(&user.created_at),
                    Val::from(user.scopes.clone()),
                    Val::from(&user.provider),
                    Val::from("active"),
                ]);
                ingest.push(vec![
                    Val::from(&user.user_id),
                    Val::from(planned.received_at_ms),
                    Val::from(now),
                ]);
            }
        }
    }
    let ts = timestamp_cast(target);
    let suffix = target.dialect().on_conflict_ignore(&["user_id"]);
    let casts = [None, None, ts, None, None, None];
    for stmt in insert_rows(
        target.dialect(),
        &target.table(TERRA_USERS),
        &TERRA_USERS_COLUMNS,
        &casts,
        users,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    for stmt in insert_rows(
        target.dialect(),
        &target.table(INGEST_USERS),
        &["user_id", "first_seen_ms", "updated_at_ms"],
        &[],
        ingest,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// One step of one user's lifecycle: always into the history; into `terra_users` only when
/// it is newer than the step that set the current state (an older event arriving late never
/// moves the state back).
pub(crate) async fn write_lifecycle(
    target: &SqlTarget,
    tx: &mut Tx,
    planned: &Planned,
    change: &LifecycleChange,
    payload_id: &str,
    now: i64,
) -> Result<(), SqlError> {
    let version = Version {
        ts_ms: event_version_ts(planned),
        partition: i64::from(planned.position.partition),
        offset: planned.position.offset as i64,
        index: 0,
    };
    let user = &change.user;
    let history = vec![vec![
        Val::from(&change.event_id),
        Val::from(&user.user_id),
        Val::from(&planned.event_type),
        Val::from(change.role),
        Val::from(change.status.clone()),
        Val::from(change.state),
        Val::from((change.role != NO_USER_ROLE).then(|| user.provider.clone())),
        Val::from(user.reference_id.clone()),
        Val::from(user.scopes.clone()),
        Val::from(payload_id),
        Val::from(&planned.envelope_id),
        Val::from(version.partition),
        Val::from(version.offset),
        Val::from(version.ts_ms),
        Val::from(planned.received_at_ms),
    ]];
    let suffix = target
        .dialect()
        .on_conflict_ignore(&INGEST_USER_EVENTS_COLUMNS[..1]);
    for stmt in insert_rows(
        target.dialect(),
        &target.table(INGEST_USER_EVENTS),
        &INGEST_USER_EVENTS_COLUMNS,
        &[],
        history,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    if change.role == NO_USER_ROLE {
        // the user-less history: no user to move
        return Ok(());
    }

    let mut select = Stmt::new(
        target.dialect(),
        format!(
            "SELECT {} FROM {} WHERE user_id = ",
            USER_STATE_VERSION_COLUMNS.join(", "),
            target.table(INGEST_USERS)
        ),
    );
    select
        .bind(&user.user_id)
        .push(target.dialect().for_update());
    let stored = tx.fetch_optional(select.query()).await?;
    if let Some(row) = stored {
        let ts: Option<i64> = row.try_get(0)?;
        let partition: Option<i64> = row.try_get(1)?;
        let offset: Option<i64> = row.try_get(2)?;
        if let (Some(ts_ms), Some(partition), Some(offset)) = (ts, partition, offset)
            && Version::from_parts([ts_ms, partition, offset, 0]) > version
        {
            // an older step arriving late: history only
            return Ok(());
        }
    }

    let ts = timestamp_cast(target);
    let mut update_columns = vec!["reference_id", "granted_scopes", "provider"];
    if change.state.is_some() {
        update_columns.push("state");
    }
    let suffix = target
        .dialect()
        .on_conflict_update(&["user_id"], &update_columns);
    let row = vec![vec![
        Val::from(&user.user_id),
        Val::from(user.reference_id.clone()),
        Val::from(&user.created_at),
        Val::from(user.scopes.clone()),
        Val::from(&user.provider),
        Val::from(change.state.unwrap_or("active")),
    ]];
    for stmt in insert_rows(
        target.dialect(),
        &target.table(TERRA_USERS),
        &TERRA_USERS_COLUMNS,
        &[None, None, ts, None, None, None],
        row,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    let row = vec![vec![
        Val::from(&user.user_id),
        Val::from(planned.received_at_ms),
        Val::from(now),
        Val::from(version.ts_ms),
        Val::from(version.partition),
        Val::from(version.offset),
    ]];
    let suffix = target
        .dialect()
        .on_conflict_update(&["user_id"], &INGEST_USERS_COLUMNS[2..]);
    for stmt in insert_rows(
        target.dialect(),
        &target.table(INGEST_USERS),
        &INGEST_USERS_COLUMNS,
        &[],
        row,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

fn event_version_ts(planned: &Planned) -> i64 {
    match &planned.plan {
        Plan::Event(event) => event
            .payloads
            .first()
            .map_or(planned.received_at_ms, |p| p.version.ts_ms),
        Plan::Dead(_) => planned.received_at_ms,
    }
}
