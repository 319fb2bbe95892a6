//! The webhook destination end to end over a real database (Postgres, MariaDB, SQLite), an
//! embedded log and real HTTP receivers on loopback: what is sent, the schedule, dead
//! letters, `Retry-After`, 410, disabling, probing and re-enabling, isolation, `per_user`
//! order, the address guard.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use support::receiver::{Answer, Receiver};
use support::*;
use terra_sink_webhooks::{Ordering, Schedule};

on_every_dialect!(
    every_event_reaches_every_matching_endpoint_signed_with_the_exact_body,
    a_failing_endpoint_is_retried_on_its_schedule_then_delivered,
    a_used_up_schedule_is_a_dead_letter_with_the_reason,
    retry_after_is_honoured,
    gone_disables_the_endpoint_and_a_probe_re_enables_it_and_the_backlog_drains_in_order,
    an_endpoint_failing_too_long_is_disabled,
    a_hanging_endpoint_does_not_delay_a_healthy_one,
    per_user_order_holds_across_retries,
    a_receiver_down_and_back_gets_everything,
    a_receiver_down_and_back_gets_everything_from_the_dispatcher_alone,
    a_refused_address_is_a_dead_letter_naming_it,
);

async fn every_event_reaches_every_matching_endpoint_signed_with_the_exact_body(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let all = Receiver::start(Receiver::ok()).await;
    let auth_only = Receiver::start(Receiver::ok()).await;
    let mut auth = endpoint("auth-only", &auth_only.url());
    auth.filter.events = vec!["authentication".to_owned()];
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("all", &all.url()), auth]),
    );
    let mut bodies = vec![fixture("activity")];
    bodies.extend((0..5).map(|n| body("auth", &format!("user-{n}"), n)));
    bodies.extend((5..10).map(|n| body("sleep", &format!("user-{n}"), n)));
    append(&log, &bodies).await;
    let rows = wait_for(&target, LIMIT, "every delivery ends", all_ended(11 + 5)).await;
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.attempts == 1),
        "{rows:#?}"
    );
    let seen = all.seen();
    assert_eq!(seen.len(), bodies.len());
    for b in &bodies {
        let got: Vec<_> = seen
            .iter()
            .filter(|s| s.body.as_ref() == b.as_slice())
            .collect();
        assert_eq!(got.len(), 1, "each body once, byte for byte");
        assert!(got[0].signed, "terra-signature verifies with Terra's rules");
        let h = &got[0].headers;
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-terra-trace-id"], "trace-1");
        assert_eq!(
            h["terra-signature"], h["x-terra-signature"],
            "both spellings of Terra's header"
        );
    }
    let auths: Vec<_> = auth_only.seen();
    assert_eq!(
        auths.len(),
        5,
        "the filtered endpoint gets the authentication group only"
    );
    assert!(
        auths
            .iter()
            .all(|s| s.body.starts_with(b"{\"type\": \"auth\""))
    );
    running.stop().await;
    db.drop_now().await;
}

async fn a_failing_endpoint_is_retried_on_its_schedule_then_delivered(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Receiver::failing_first(3, 500)).await;
    let mut e = endpoint("flaky", &receiver.url());
    let delays = [0, 100, 200, 300, 400].map(Duration::from_millis).to_vec();
    e.schedule = Schedule::new(delays.clone()).expect("schedule");
    let running = start(&log.log, &target, settings(vec![e]));
    append(&log, &[body("activity", "u", 1)]).await;
    let rows = wait_for(&target, LIMIT, "delivered", all_ended(1)).await;
    assert_eq!(rows[0].state, "delivered");
    assert_eq!(rows[0].attempts, 4);
    let tries = attempts(&target, rows[0].id).await;
    let statuses: Vec<_> = tries.iter().map(|t| t.0).collect();
    assert_eq!(statuses, vec![Some(500), Some(500), Some(500), Some(200)]);
    let seen = receiver.seen();
    for i in 1..seen.len() {
        let gap = seen[i].at - seen[i - 1].at;
        assert!(
            gap >= delays[i],
            "attempt {i} came {gap:?} after the one before, not after {:?}",
            delays[i]
        );
    }
    running.stop().await;
    db.drop_now().await;
}

async fn a_used_up_schedule_is_a_dead_letter_with_the_reason(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Arc::new(|_, _| Answer::Status(503))).await;
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("down", &receiver.url())]),
    );
    append(&log, &[body("activity", "u", 1), body("sleep", "u", 2)]).await;
    let rows = wait_for(&target, LIMIT, "dead-lettered", all_ended(2)).await;
    for row in &rows {
        assert_eq!(row.state, "dead");
        assert_eq!(row.attempts, 3);
        let reason = row.last_error.as_deref().unwrap_or_default();
        assert!(
            reason.contains("3 attempt(s)") && reason.contains("HTTP 503"),
            "{reason}"
        );
    }
    assert_eq!(receiver.seen().len(), 6, "three attempts each, no more");
    running.stop().await;
    db.drop_now().await;
}

async fn retry_after_is_honoured(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Arc::new(|_, before| {
        if before == 0 {
            Answer::RetryAfter(429, "1".to_owned())
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("busy", &receiver.url())]),
    );
    append(&log, &[body("activity", "u", 1)]).await;
    let rows = wait_for(&target, LIMIT, "delivered", all_ended(1)).await;
    assert_eq!(rows[0].state, "delivered");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    // the schedule is kept in wall-clock milliseconds and the receiver times on the monotonic
    // clock: on a VM whose wall clock was being slewed the retry came 996-999 ms after the
    // first attempt by the receiver's clock (5 runs of 36 one evening); ignoring Retry-After
    // would send it at once
    assert!(
        gap >= Duration::from_millis(950),
        "Retry-After: 1 honoured (the schedule said 0), came after {gap:?}"
    );
    running.stop().await;
    db.drop_now().await;
}

async fn gone_disables_the_endpoint_and_a_probe_re_enables_it_and_the_backlog_drains_in_order(
    dialect: Dialect,
) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Arc::new(|_, _| Answer::Status(410))).await;
    let mut e = endpoint("gone", &receiver.url());
    e.max_in_flight = 1;
    e.schedule = Schedule::new(vec![Duration::ZERO; 8]).expect("schedule");
    let mut s = settings(vec![e]);
    s.probe_interval = Duration::from_secs(1);
    let running = start(&log.log, &target, s);
    append(&log, &[body("activity", "u", 0)]).await;
    let started = std::time::Instant::now();
    loop {
        if endpoint_state(&target, "gone").await.0 == "disabled" {
            break;
        }
        assert!(started.elapsed() < LIMIT, "never disabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, reason) = endpoint_state(&target, "gone").await;
    assert!(reason.unwrap_or_default().contains("410"));
    // attempts already under way when the 410 came back still land
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before_probes = receiver.seen().len();
    // the backlog grows while it is disabled; the probes (one a second) keep failing
    // one user: one partition, so the log's order is the order the fan-out creates them in
    let backlog: Vec<_> = (1..6).map(|n| body("activity", "u", n)).collect();
    append(&log, &backlog).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let rows = deliveries(&target).await;
    assert!(
        rows.iter().all(|r| r.state == "pending"),
        "nothing dead while disabled: {rows:#?}"
    );
    let probes = receiver.seen().len() - before_probes;
    assert!(
        probes <= 3,
        "probed at its interval (1 s), not hammered: {probes} in 1.5 s"
    );
    receiver.set(Receiver::ok());
    let rows = wait_for(&target, LIMIT, "backlog drained", all_ended(6)).await;
    assert!(rows.iter().all(|r| r.state == "delivered"), "{rows:#?}");
    assert_eq!(endpoint_state(&target, "gone").await.0, "enabled");
    let delivered: Vec<_> = receiver
        .seen()
        .into_iter()
        .filter(|s| s.status == 200)
        .map(|s| s.body)
        .collect();
    let mut expected = vec![body("activity", "u", 0)];
    expected.extend(backlog);
    assert_eq!(
        delivered.iter().map(|b| b.to_vec()).collect::<Vec<_>>(),
        expected,
        "the probe delivers the oldest, then the backlog in arrival order"
    );
    let first = rows[0].id;
    assert!(
        attempts(&target, first).await.iter().any(|a| a.2),
        "probes are recorded as such"
    );
    running.stop().await;
    db.drop_now().await;
}

async fn an_endpoint_failing_too_long_is_disabled(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Arc::new(|_, _| Answer::Status(500))).await;
    let mut e = endpoint("failing", &receiver.url());
    e.schedule = Schedule::new(vec![Duration::from_millis(50); 100]).expect("schedule");
    let mut s = settings(vec![e]);
    s.disable_after = Duration::from_millis(500);
    s.probe_interval = Duration::from_secs(3600);
    let running = start(&log.log, &target, s);
    append(&log, &[body("activity", "u", 0)]).await;
    let started = std::time::Instant::now();
    while endpoint_state(&target, "failing").await.0 != "disabled" {
        assert!(started.elapsed() < LIMIT, "never disabled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, reason) = endpoint_state(&target, "failing").await;
    assert!(reason.unwrap_or_default().contains("no delivery succeeded"));
    let after = receiver.seen().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        receiver.seen().len() <= after + 1,
        "a disabled endpoint is not sent to"
    );
    assert_eq!(
        deliveries(&target).await[0].state,
        "pending",
        "its delivery waits"
    );
    running.stop().await;
    db.drop_now().await;
}

async fn a_hanging_endpoint_does_not_delay_a_healthy_one(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let hanging = Receiver::start(Arc::new(|_, _| Answer::Hang)).await;
    let healthy = Receiver::start(Receiver::ok()).await;
    let mut stuck = endpoint("hanging", &hanging.url());
    stuck.timeout = Duration::from_secs(20);
    let running = start(
        &log.log,
        &target,
        settings(vec![stuck, endpoint("healthy", &healthy.url())]),
    );
    let bodies: Vec<_> = (0..100)
        .map(|n| body("activity", &format!("u{n}"), n))
        .collect();
    append(&log, &bodies).await;
    wait_for(
        &target,
        LIMIT,
        "the healthy endpoint has everything",
        |rows| {
            rows.iter()
                .filter(|r| r.endpoint == "healthy" && r.state == "delivered")
                .count()
                == 100
        },
    )
    .await;
    let rows = deliveries(&target).await;
    let hung = rows.iter().filter(|r| r.endpoint == "hanging");
    assert!(
        hung.clone().all(|r| r.state == "pending"),
        "the hanging endpoint's attempts are all still waiting for their timeout"
    );
    // its first 8 attempts may still be on their way (the healthy one can be done first)
    let started = std::time::Instant::now();
    while hanging.seen().len() < 8 && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hanging.seen().len(), 8, "its own cap in flight, no more");
    running.shutdown.cancel();
    db.drop_now().await;
}

async fn per_user_order_holds_across_retries(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    // every delivery fails its first attempt
    let receiver = Receiver::start(Arc::new(|_, before| {
        if before == 0 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    }))
    .await;
    let mut e = endpoint("ordered", &receiver.url());
    e.ordering = Ordering::PerUser;
    e.schedule = Schedule::new(vec![
        Duration::ZERO,
        Duration::from_millis(30),
        Duration::from_millis(30),
    ])
    .expect("schedule");
    let running = start(&log.log, &target, settings(vec![e]));
    let mut bodies = Vec::new();
    for n in 0..30 {
        bodies.push(body("activity", &format!("user-{}", n % 3), n));
    }
    append(&log, &bodies).await;
    wait_for(&target, LIMIT, "all delivered", all_ended(30)).await;
    assert_sent_in_user_order(&receiver.seen(), &bodies);
    running.stop().await;
    db.drop_now().await;
}

/// A receiver that refuses connections is probed, not sent every event: its deliveries wait
/// without using their schedule (here 50 attempts 20 ms apart, used up in 1 s if each event
/// were sent), and once it listens again its backlog is delivered, each event once.
async fn a_receiver_down_and_back_gets_everything(dialect: Dialect) {
    down_and_back(dialect, true).await;
}

/// The same with no first attempts from the fan-out: the worker's own attempts trip it.
async fn a_receiver_down_and_back_gets_everything_from_the_dispatcher_alone(dialect: Dialect) {
    down_and_back(dialect, false).await;
}

async fn down_and_back(dialect: Dialect, first_from_fan_out: bool) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let (e, addr) = closed_endpoint("later").await;
    let mut s = settings(vec![e]);
    s.first_from_fan_out = first_from_fan_out;
    let running = start(&log.log, &target, s);
    let bodies: Vec<_> = (0..10)
        .map(|n| body("activity", &format!("u{n}"), n))
        .collect();
    append(&log, &bodies).await;
    wait_for(&target, LIMIT, "every delivery written", |rows| {
        rows.len() == 10
    })
    .await;
    // long enough for the schedule to be used up 1.5 times over
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let rows = deliveries(&target).await;
    assert!(
        rows.iter().all(|r| r.state == "pending"),
        "nothing dead-lettered while the endpoint refuses connections: {rows:#?}"
    );
    let mut tried = Vec::new();
    for row in &rows {
        tried.extend(attempts(&target, row.id).await);
    }
    assert!(tried.iter().all(|a| a.1 == "connect"), "{tried:?}");
    // the first attempts (at most 10) and a probe per wait (100, 200, 400, 400 ms...)
    assert!(
        tried.len() <= 10 + 8,
        "{} attempts: a probe per wait, not one per event and retry",
        tried.len()
    );
    let receiver = Receiver::start_on(addr, Receiver::ok()).await;
    let rows = wait_for(&target, LIMIT, "delivered once back", all_ended(10)).await;
    assert!(rows.iter().all(|r| r.state == "delivered"));
    assert_eq!(receiver.seen().len(), 10);
    running.stop().await;
    db.drop_now().await;
}

async fn a_refused_address_is_a_dead_letter_naming_it(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Receiver::ok()).await;
    let mut s = settings(vec![endpoint("internal", &receiver.url())]);
    s.allow_cidrs.clear();
    let running = start(&log.log, &target, s);
    append(&log, &[body("activity", "u", 1)]).await;
    let rows = wait_for(&target, LIMIT, "dead-lettered", all_ended(1)).await;
    assert_eq!(rows[0].state, "dead");
    let reason = rows[0].last_error.clone().unwrap_or_default();
    assert!(reason.contains("127.0.0.1"), "{reason}");
    assert!(
        receiver.seen().is_empty(),
        "nothing reached the refused address"
    );
    running.stop().await;
    db.drop_now().await;
}

mod replicas {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        two_replicas_never_deliver_a_pair_twice_concurrently(Dialect::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql() {
        two_replicas_never_deliver_a_pair_twice_concurrently(Dialect::MySql).await;
    }
}

/// Two dispatchers over one database (the second without a fan-out of its own, as a second
/// replica whose group partner has the log): every pair is sent by one of them, once.
async fn two_replicas_never_deliver_a_pair_twice_concurrently(dialect: Dialect) {
    let (db, target) = database(dialect).await;
    let log = TestLog::new();
    let receiver =
        Receiver::start(Arc::new(|_, _| Answer::SlowOk(Duration::from_millis(20)))).await;
    let make = || settings(vec![endpoint("shared", &receiver.url())]);
    let first = start(&log.log, &target, make());
    let second = start_with(&log.log, &target, make(), false);
    let bodies: Vec<_> = (0..200)
        .map(|n| body("activity", &format!("u{n}"), n))
        .collect();
    append(&log, &bodies).await;
    let rows = wait_for(&target, LIMIT, "all delivered", all_ended(200)).await;
    assert!(
        rows.iter()
            .all(|r| r.state == "delivered" && r.attempts == 1),
        "{rows:#?}"
    );
    assert_eq!(receiver.overlaps(), 0, "a pair was in flight twice at once");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 200, "each pair sent once");
    first.stop().await;
    second.stop().await;
    db.drop_now().await;
}
