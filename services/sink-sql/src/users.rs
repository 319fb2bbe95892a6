//! Users in one batch's transaction: every user an event mentions exists from then on, and
//! authentication events move the lifecycle (history always, state only when newer).

use std::collections::{HashMap, HashSet};

use sqlx::{Executor, Row};

use terra_projector::plan::{EventPlan, LifecycleChange, NO_USER_ROLE, Plan, Planned, Version};
use terra_schema::positions::Tx;
use terra_schema::tables::{
    INGEST_USER_EVENTS, INGEST_USER_EVENTS_COLUMNS, INGEST_USERS, INGEST_USERS_COLUMNS,
    TERRA_USERS, TERRA_USERS_COLUMNS, USER_STATE_VERSION_COLUMNS,
};
use terra_schema::{SqlError, SqlTarget, Stmt, Val, insert_rows};

use crate::payloads::LOOKUP_CHUNK;
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

/// One lifecycle step of a batch, with the payload id its history row points at.
pub(crate) struct Step<'a> {
    pub(crate) planned: &'a Planned,
    pub(crate) change: &'a LifecycleChange,
    pub(crate) payload_id: &'a str,
}

impl Step<'_> {
    fn version(&self) -> Version {
        Version {
            ts_ms: event_version_ts(self.planned),
            partition: i64::from(self.planned.position.partition),
            offset: self.planned.position.offset as i64,
            index: 0,
        }
    }
}

/// What a batch's steps do to one user: the state moves to each step at least as new as the
/// current one, in log order, so only the first and the last of those steps (and the last
/// that names a state) decide the row.
struct Moved<'s, 'a> {
    first: &'s Step<'a>,
    last: &'s Step<'a>,
    version: Version,
    state: Option<&'static str>,
}

/// The lifecycle steps of a batch, in log order, set-wise (a few statements per batch
/// whatever its size, as the payloads): every step into the history; a user's state into
/// `terra_users` only from steps newer than the step that set the current state (an older
/// event arriving late never moves the state back). The same rows as one step at a time.
pub(crate) async fn write_lifecycle(
    target: &SqlTarget,
    tx: &mut Tx,
    steps: &[Step<'_>],
    now: i64,
) -> Result<(), SqlError> {
    if steps.is_empty() {
        return Ok(());
    }
    let history = steps
        .iter()
        .map(|step| {
            let (change, user, version) = (step.change, &step.change.user, step.version());
            vec![
                Val::from(&change.event_id),
                Val::from(&user.user_id),
                Val::from(&step.planned.event_type),
                Val::from(change.role),
                Val::from(change.status.clone()),
                Val::from(change.state),
                Val::from((change.role != NO_USER_ROLE).then(|| user.provider.clone())),
                Val::from(user.reference_id.clone()),
                Val::from(user.scopes.clone()),
                Val::from(step.payload_id),
                Val::from(&step.planned.envelope_id),
                Val::from(version.partition),
                Val::from(version.offset),
                Val::from(version.ts_ms),
                Val::from(step.planned.received_at_ms),
            ]
        })
        .collect();
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

    // the user-less history (`NO_USER_ROLE`) has no user to move
    let moving: Vec<&Step> = steps
        .iter()
        .filter(|s| s.change.role != NO_USER_ROLE)
        .collect();
    let mut users: Vec<&str> = Vec::new();
    let mut seen = HashSet::new();
    for step in &moving {
        if seen.insert(step.change.user.user_id.as_str()) {
            users.push(&step.change.user.user_id);
        }
    }
    let stored = stored_versions(target, tx, &users).await?;
    let mut moved: HashMap<&str, Moved> = HashMap::new();
    for step in moving {
        let user = step.change.user.user_id.as_str();
        let version = step.version();
        let current = moved
            .get(user)
            .map(|m| m.version)
            .or(stored.get(user).copied());
        if current.is_some_and(|current| current > version) {
            // an older step arriving late: history only
            continue;
        }
        let entry = moved.entry(user).or_insert(Moved {
            first: step,
            last: step,
            version,
            state: None,
        });
        entry.last = step;
        entry.version = version;
        entry.state = step.change.state.or(entry.state);
    }

    // one row per user, in the users' first order (each statement names a user once, as
    // Postgres's ON CONFLICT DO UPDATE requires); a user whose steps name no state keeps it
    let (mut with_state, mut without_state, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    for user in users {
        let Some(m) = moved.get(user) else { continue };
        let last = &m.last.change.user;
        let row = vec![
            Val::from(user),
            Val::from(last.reference_id.clone()),
            Val::from(&m.first.change.user.created_at),
            Val::from(last.scopes.clone()),
            Val::from(&last.provider),
            Val::from(m.state.unwrap_or("active")),
        ];
        if m.state.is_some() {
            with_state.push(row);
        } else {
            without_state.push(row);
        }
        versions.push(vec![
            Val::from(user),
            Val::from(m.first.planned.received_at_ms),
            Val::from(now),
            Val::from(m.version.ts_ms),
            Val::from(m.version.partition),
            Val::from(m.version.offset),
        ]);
    }
    let ts = timestamp_cast(target);
    for (rows, state) in [(with_state, true), (without_state, false)] {
        let mut update_columns = vec!["reference_id", "granted_scopes", "provider"];
        if state {
            update_columns.push("state");
        }
        let suffix = target
            .dialect()
            .on_conflict_update(&["user_id"], &update_columns);
        for stmt in insert_rows(
            target.dialect(),
            &target.table(TERRA_USERS),
            &TERRA_USERS_COLUMNS,
            &[None, None, ts, None, None, None],
            rows,
            &suffix,
        ) {
            tx.execute(stmt.query()).await?;
        }
    }
    let suffix = target
        .dialect()
        .on_conflict_update(&["user_id"], &INGEST_USERS_COLUMNS[2..]);
    for stmt in insert_rows(
        target.dialect(),
        &target.table(INGEST_USERS),
        &INGEST_USERS_COLUMNS,
        &[],
        versions,
        &suffix,
    ) {
        tx.execute(stmt.query()).await?;
    }
    Ok(())
}

/// The version of the step that set each user's current state (users without one are left
/// out), the rows locked for the transaction where the dialect can.
async fn stored_versions(
    target: &SqlTarget,
    tx: &mut Tx,
    users: &[&str],
) -> Result<HashMap<String, Version>, SqlError> {
    let mut out = HashMap::new();
    for chunk in users.chunks(LOOKUP_CHUNK) {
        let mut select = Stmt::new(
            target.dialect(),
            format!(
                "SELECT user_id, {} FROM {} WHERE user_id IN ",
                USER_STATE_VERSION_COLUMNS.join(", "),
                target.table(INGEST_USERS)
            ),
        );
        select
            .bind_in_list(chunk.iter().copied())
            .push(target.dialect().for_update());
        for row in tx.fetch_all(select.query()).await? {
            let user: String = row.try_get(0)?;
            let ts: Option<i64> = row.try_get(1)?;
            let partition: Option<i64> = row.try_get(2)?;
            let offset: Option<i64> = row.try_get(3)?;
            if let (Some(ts_ms), Some(partition), Some(offset)) = (ts, partition, offset) {
                out.insert(user, Version::from_parts([ts_ms, partition, offset, 0]));
            }
        }
    }
    Ok(out)
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
