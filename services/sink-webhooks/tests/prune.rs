//! Pruning (`terra_sink_webhooks::prune`): an event's body is deleted once nothing will send
//! it again (delivered everywhere), kept while a delivery of it is pending or dead (a dead
//! letter can be re-queued); finished deliveries and their attempts go after the retention,
//! pending ones never; a re-queued dead letter keeps its history; the running dispatcher
//! sweeps by itself.

#[macro_use]
mod support;

use std::time::Duration;

use sqlx::Row;
use support::receiver::{Answer, Receiver};
use support::*;
use terra_sink_webhooks::Schedule;
use terra_sink_webhooks::prune::{Pruned, prune};

on_every_dialect!(
    bodies_go_when_delivered_everywhere_and_history_after_the_retention,
    the_running_dispatcher_prunes_by_itself,
    later_sweeps_read_only_recent_deliveries_and_every_page_of_them
);

async fn count(target: &terra_schema::SqlTarget, table: &str) -> i64 {
    let row = sqlx::query(&format!("SELECT COUNT(*) FROM {}", target.table(table)))
        .fetch_one(target.pool())
        .await
        .expect("count");
    row.try_get::<i64, _>(0)
        .or_else(|_| row.try_get::<i32, _>(0).map(i64::from))
        .expect("a count")
}

async fn bodies_go_when_delivered_everywhere_and_history_after_the_retention(dialect: Dialect) {
    let (_db, target) = database(dialect).await;
    let log = TestLog::new();
    // flaky: each body refused once, then taken (its retry goes through the dispatcher and
    // its result writer); dead: always 503, three attempts; waiting: refused, next attempt
    // an hour later (pending for the whole test)
    let flaky = Receiver::start(Receiver::failing_first(1, 503)).await;
    let dead = Receiver::start(std::sync::Arc::new(|_, _| Answer::Status(503))).await;
    let waiting = Receiver::start(std::sync::Arc::new(|_, _| Answer::Status(503))).await;
    let mut only_sleep = endpoint("dead", &dead.url());
    only_sleep.filter.events = vec!["sleep".to_owned()];
    let mut only_daily = endpoint("waiting", &waiting.url());
    only_daily.filter.events = vec!["daily".to_owned()];
    only_daily.schedule =
        Schedule::new(vec![Duration::ZERO, Duration::from_secs(3600)]).expect("a schedule");
    let mut settings = settings(vec![
        endpoint("flaky", &flaky.url()),
        only_sleep,
        only_daily,
    ]);
    settings.retention = None;
    let running = start(&log.log, &target, settings);
    // activity: flaky only; sleep: flaky and dead; daily: flaky and waiting
    append(
        &log,
        &[
            body("activity", "u", 1),
            body("sleep", "u", 2),
            body("daily", "u", 3),
        ],
    )
    .await;
    let rows = wait_for(&target, LIMIT, "flaky delivered, dead dead", |rows| {
        rows.len() == 5
            && rows
                .iter()
                .filter(|r| r.endpoint != "waiting")
                .all(|r| r.state != "pending")
    })
    .await;
    running.stop().await;
    assert!(
        rows.iter()
            .any(|r| r.endpoint == "waiting" && r.state == "pending")
    );
    let activity = &rows
        .iter()
        .find(|r| r.endpoint == "flaky")
        .unwrap()
        .envelope_id;
    let sleep = &rows
        .iter()
        .find(|r| r.endpoint == "dead")
        .unwrap()
        .envelope_id;
    let daily = &rows
        .iter()
        .find(|r| r.endpoint == "waiting")
        .unwrap()
        .envelope_id;
    // the activity went through a retry and was delivered everywhere: its body went with
    // its last delivery; the sleep's is kept for its dead letter, the daily's for its retry
    assert_eq!(
        event_ids(&target).await,
        sorted(vec![sleep.clone(), daily.clone()]),
        "bodies of {activity} (delivered everywhere) gone, the others kept"
    );
    // no retention: a sweep changes nothing
    let now = terra_core::keys::now_ms();
    assert_eq!(
        prune(&target, None, now, None).await.unwrap(),
        Pruned::default()
    );
    assert_eq!(count(&target, "webhook_deliveries").await, 5);

    // a dead letter re-queued just before the sweep keeps its history and its body
    let attempts_before = count(&target, "webhook_attempts").await;
    let requeued = terra_sink_webhooks::admin::requeue_dead(&target, "dead", 0, now, now)
        .await
        .unwrap();
    assert_eq!(requeued, 1);
    let later = now + 1_000;
    let pruned = prune(&target, Some(Duration::from_millis(1)), later, None)
        .await
        .unwrap();
    // flaky's three deliveries (two attempts each) went
    assert_eq!(
        pruned,
        Pruned {
            deliveries: 3,
            attempts: 6,
            events: 0
        }
    );
    let left = deliveries(&target).await;
    assert_eq!(
        left.iter()
            .map(|r| (r.endpoint.as_str(), r.state.as_str()))
            .collect::<Vec<_>>(),
        [("dead", "pending"), ("waiting", "pending")]
    );
    assert_eq!(
        count(&target, "webhook_attempts").await,
        attempts_before - 6,
        "the re-queued dead letter's three attempts and the waiting one's are kept"
    );
    assert_eq!(attempts(&target, left[0].id).await.len(), 3);
    assert_eq!(
        event_ids(&target).await,
        sorted(vec![sleep.clone(), daily.clone()])
    );

    // dead again: the next sweep inside the retention keeps it and its body; past it, the
    // dead letter, its attempts and its body go; the pending one stays, however old
    let mut dead_again = target.statement(format!(
        "UPDATE {} SET state = 'dead', finished_at_ms = ",
        target.table("webhook_deliveries")
    ));
    dead_again.bind(later).push(" WHERE endpoint = 'dead'");
    sqlx::Executor::execute(target.pool(), dead_again.query())
        .await
        .unwrap();
    let kept = prune(&target, Some(Duration::from_secs(60)), later + 1_000, None)
        .await
        .unwrap();
    assert_eq!(kept, Pruned::default());
    let pruned = prune(&target, Some(Duration::from_secs(60)), later + 61_000, None)
        .await
        .unwrap();
    assert_eq!(
        pruned,
        Pruned {
            deliveries: 1,
            attempts: 3,
            events: 1
        }
    );
    let left = deliveries(&target).await;
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].endpoint.as_str(), left[0].state.as_str()),
        ("waiting", "pending")
    );
    assert_eq!(attempts(&target, left[0].id).await.len(), 1);
    assert_eq!(event_ids(&target).await, vec![daily.clone()]);
    assert_eq!(count(&target, "webhook_attempts").await, 1);
}

async fn the_running_dispatcher_prunes_by_itself(dialect: Dialect) {
    let (_db, target) = database(dialect).await;
    let log = TestLog::new();
    let flaky = Receiver::start(Receiver::failing_first(1, 503)).await;
    let mut settings = settings(vec![endpoint("flaky", &flaky.url())]);
    settings.retention = Some(Duration::from_millis(200));
    settings.prune_interval = Duration::from_millis(50);
    let running = start(&log.log, &target, settings);
    let bodies: Vec<Vec<u8>> = (0..20).map(|n| body("activity", "u", n)).collect();
    append(&log, &bodies).await;
    // every body reached the receiver twice (refused, then taken), and then the history
    // went: no delivery, attempt or body is left
    let started = std::time::Instant::now();
    loop {
        let taken = flaky.seen().iter().filter(|s| s.status == 200).count();
        let left = (
            count(&target, "webhook_deliveries").await,
            count(&target, "webhook_attempts").await,
            count(&target, "webhook_events").await,
        );
        if taken == 20 && left == (0, 0, 0) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{taken} of 20 taken; left (deliveries, attempts, events): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
    assert_eq!(flaky.seen().len(), 40);
}

/// Bodies left behind (as two replicas racing, or an earlier version, would leave them): a
/// later sweep (`since`) releases those of deliveries delivered since then, every one of
/// 1,500 that share one finish time (pages of 1,000 on (finish time, id)), and not an older
/// one, which the full sweep (`None`, as at start-up) releases.
async fn later_sweeps_read_only_recent_deliveries_and_every_page_of_them(dialect: Dialect) {
    use terra_schema::{Val, insert_rows};
    let (_db, target) = database(dialect).await;
    let now = terra_core::keys::now_ms();
    terra_sink_webhooks::endpoints_store::register_endpoints(&target, &["bulk"], now)
        .await
        .unwrap();
    let old = now - 10 * 86_400_000;
    let (mut deliveries, mut events) = (Vec::new(), Vec::new());
    for n in 0..1_501i64 {
        let id = format!("01900000-0000-7000-8000-{n:012}");
        let finished = if n == 0 { old } else { now };
        deliveries.push(vec![
            Val::from("bulk"),
            Val::from(&id),
            Val::from("activity"),
            Val::from("delivered"),
            Val::from(1),
            Val::from(finished),
            Val::from(finished),
            Val::from(finished),
        ]);
        events.push(vec![
            Val::from(&id),
            Val::from(0),
            Val::from(n),
            Val::from("default"),
            Val::from("activity"),
            Val::from(finished),
            Val::Blob(b"{}".to_vec()),
        ]);
    }
    // an event a batch in progress has written, its deliveries not yet committed (its body
    // is committed first): past the positions, it stays whatever the sweep
    let in_progress = "01900000-0000-7000-8000-999999999999";
    events.push(vec![
        Val::from(in_progress),
        Val::from(0),
        Val::from(1_501),
        Val::from("default"),
        Val::from("activity"),
        Val::from(now),
        Val::Blob(b"{}".to_vec()),
    ]);
    let positions = vec![vec![Val::from(0), Val::from(1_501), Val::from(now)]];
    for (table, columns, rows) in [
        (
            "webhook_deliveries",
            &[
                "endpoint",
                "envelope_id",
                "event_type",
                "state",
                "attempts",
                "next_attempt_at_ms",
                "created_at_ms",
                "finished_at_ms",
            ][..],
            deliveries,
        ),
        (
            "webhook_events",
            &[
                "envelope_id",
                "log_partition",
                "log_offset",
                "source",
                "event_type",
                "received_at_ms",
                "body",
            ][..],
            events,
        ),
        (
            "webhook_positions",
            &["log_partition", "next_offset", "updated_at_ms"][..],
            positions,
        ),
    ] {
        for stmt in insert_rows(dialect, &target.table(table), columns, &[], rows, "") {
            sqlx::Executor::execute(target.pool(), stmt.query())
                .await
                .unwrap();
        }
    }
    let later = prune(&target, None, now, Some(now - 60_000)).await.unwrap();
    assert_eq!(later.events, 1_500, "every recent one, over two pages");
    assert_eq!(
        event_ids(&target).await,
        vec![
            "01900000-0000-7000-8000-000000000000".to_owned(),
            in_progress.to_owned()
        ],
        "the older one is not read"
    );
    let full = prune(&target, None, now, None).await.unwrap();
    assert_eq!(full.events, 1);
    assert_eq!(
        event_ids(&target).await,
        vec![in_progress.to_owned()],
        "the batch in progress keeps its event"
    );
    // the batch was given up (its deliveries never committed) and the positions moved past
    // it: its event is one like any other
    sqlx::Executor::execute(
        target.pool(),
        format!(
            "UPDATE {} SET next_offset = 1502",
            target.table("webhook_positions")
        )
        .as_str(),
    )
    .await
    .unwrap();
    let full = prune(&target, None, now, None).await.unwrap();
    assert_eq!(full.events, 1);
    assert_eq!(count(&target, "webhook_events").await, 0);
    assert_eq!(
        count(&target, "webhook_deliveries").await,
        1_501,
        "no retention"
    );
}

async fn event_ids(target: &terra_schema::SqlTarget) -> Vec<String> {
    let rows = sqlx::query(&format!(
        "SELECT envelope_id FROM {} ORDER BY envelope_id",
        target.table("webhook_events")
    ))
    .fetch_all(target.pool())
    .await
    .expect("events");
    rows.iter()
        .map(|r| {
            terra_sink_webhooks::store::text(r, 0)
                .expect("id")
                .unwrap_or_default()
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}
