//! The phases of `terra-bench webhooks` (see the `webhooks` module): the whole log to
//! healthy endpoints, to an external receiver, with one endpoint down, and the latency phase.

use std::time::{Duration, Instant};

use anyhow::bail;
use bytes::Bytes;
use terra_eventlog::EventLog;
use terra_schema::SqlTarget;
use terra_sink_webhooks::{Endpoint, Schedule};

use crate::load::envelope_record_with_id;
use crate::webhooks::WebhooksArgs;
use crate::webhooks_receiver::Receiver;
use crate::webhooks_run::{Running, endpoint, open_log, quick_schedule, settings, wait_delivered};

/// Endpoint `e{i}`: path `i` of the in-process receiver, on the quick schedule.
fn at_receiver(receiver: &Receiver, i: usize, args: &WebhooksArgs) -> Endpoint {
    endpoint(
        format!("e{i}"),
        &receiver.url(i),
        args.max_in_flight,
        quick_schedule(),
    )
}

/// How fast the destination went over the whole log (see [`measure`]).
pub(crate) struct Throughput {
    /// Deliveries/s from the first request's arrival at the receiver until SQL has every timed
    /// pair `delivered`: the rate once running, as the direct ceiling is measured once its
    /// connections are open.
    pub(crate) rate: f64,
    /// Seconds from the start (the dispatcher and fan-out starting) to the first arrival.
    pub(crate) start_up: f64,
    /// Seconds from the start until every timed pair is `delivered`.
    pub(crate) seconds: f64,
    /// CPU (this process with the receiver, and Postgres) from the start to the last arrival,
    /// in µs per timed delivery.
    pub(crate) cpu_us: f64,
    /// Of which Postgres's.
    pub(crate) postgres_us: f64,
}

/// The whole log to `healthy` endpoints (receiver paths) and `also` (more healthy ones whose
/// time is not counted): the `healthy` ones' deliveries.
pub(crate) async fn throughput(
    log: &EventLog,
    target: SqlTarget,
    receiver: &Receiver,
    healthy: &[usize],
    also: &[usize],
    n: usize,
    args: &WebhooksArgs,
) -> anyhow::Result<Throughput> {
    let endpoints = healthy
        .iter()
        .chain(also)
        .map(|&i| at_receiver(receiver, i, args))
        .collect();
    measure(
        log,
        target,
        receiver,
        endpoints,
        healthy,
        (n, args.batch_size),
    )
    .await
}

/// The whole log to `endpoints` paths of an external receiver: deliveries/s until SQL has
/// every pair `delivered`, the seconds, and the CPU per delivery (this process and Postgres:
/// the receiver's own CPU is not counted).
pub(crate) async fn external(
    log: &EventLog,
    target: SqlTarget,
    url: &str,
    endpoints: usize,
    n: usize,
    args: &WebhooksArgs,
) -> anyhow::Result<(f64, f64, f64)> {
    let list = (0..endpoints)
        .map(|i| {
            endpoint(
                format!("e{i}"),
                &format!("{}/e/{i}", url.trim_end_matches('/')),
                args.max_in_flight,
                quick_schedule(),
            )
        })
        .collect();
    let started = Instant::now();
    let cpu = crate::cpu::seconds();
    let running = Running::start(log, &target, settings(list), args.batch_size);
    // every 50 ms (not the 5 ms of `wait_delivered`): the count itself costs the database
    let delivered = async {
        loop {
            let states = crate::webhooks_run::states(&target).await?;
            let done: i64 = states
                .iter()
                .filter(|(_, state, _)| state == "delivered")
                .map(|r| r.2)
                .sum();
            if done as usize >= n * endpoints {
                return anyhow::Ok(started.elapsed().as_secs_f64());
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!(
                    "{done} of {} delivered after 300 s; {states:?}",
                    n * endpoints
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    .await;
    let cpu_us = (crate::cpu::seconds() - cpu) * 1e6 / (n * endpoints) as f64;
    running.stop().await?;
    let seconds = delivered?;
    Ok(((n * endpoints) as f64 / seconds, seconds, cpu_us))
}

/// Endpoint 0 healthy, a second one down (a closed port; its next attempt hours away).
pub(crate) async fn throughput_down(
    log: &EventLog,
    target: SqlTarget,
    receiver: &Receiver,
    n: usize,
    args: &WebhooksArgs,
) -> anyhow::Result<Throughput> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let hours = Schedule::new(vec![Duration::from_secs(3_600); 5]).expect("a schedule");
    let endpoints = vec![
        at_receiver(receiver, 0, args),
        endpoint(
            "down".into(),
            &format!("http://{closed}/e/1"),
            args.max_in_flight,
            hours,
        ),
    ];
    measure(log, target, receiver, endpoints, &[0], (n, args.batch_size)).await
}

/// Runs the destination over the whole log until the `timed` endpoints (receiver paths) have
/// received every event and SQL has them all `delivered`.
async fn measure(
    log: &EventLog,
    target: SqlTarget,
    receiver: &Receiver,
    endpoints: Vec<Endpoint>,
    timed: &[usize],
    (n, batch_size): (usize, usize),
) -> anyhow::Result<Throughput> {
    receiver.counts.reset();
    let names: Vec<String> = timed.iter().map(|i| format!("e{i}")).collect();
    let started = Instant::now();
    let cpu = crate::cpu::split();
    let running = Running::start(log, &target, settings(endpoints), batch_size);
    let arrived = receiver
        .wait(
            Duration::from_secs(300),
            "every event at the receiver",
            |c| timed.iter().all(|&i| c.of(i) >= n),
        )
        .await;
    let used = crate::cpu::split();
    let per = |s: f64| s * 1e6 / (n * timed.len()) as f64;
    let (cpu_us, postgres_us) = (per(used.0 + used.1 - cpu.0 - cpu.1), per(used.1 - cpu.1));
    let confirmed = async {
        arrived?;
        for name in &names {
            wait_delivered(&target, name, n).await?;
        }
        anyhow::Ok(Instant::now())
    }
    .await;
    running.stop().await?;
    let done = confirmed?;
    let first = receiver.counts.first().unwrap_or(started);
    Ok(Throughput {
        rate: (n * timed.len()) as f64 / done.duration_since(first).as_secs_f64(),
        start_up: first.duration_since(started).as_secs_f64(),
        seconds: done.duration_since(started).as_secs_f64(),
        cpu_us,
        postgres_us,
    })
}

/// On an empty log: events appended at `rate` deliveries/s (`rate / endpoints` events/s, in
/// appends every 10 ms) for `--seconds` while the destination runs; p50 and p99 in ms from
/// each append to the request's arrival at the receiver.
pub(crate) async fn latency(
    target: SqlTarget,
    receiver: &Receiver,
    bodies: &[(String, Bytes)],
    endpoints: usize,
    rate: f64,
    args: &WebhooksArgs,
) -> anyhow::Result<(f64, f64)> {
    receiver.counts.reset();
    let dir = tempfile::tempdir()?;
    let log = open_log(&dir.path().join("log"))?;
    let list = (0..endpoints)
        .map(|i| at_receiver(receiver, i, args))
        .collect();
    let running = Running::start(&log, &target, settings(list), args.batch_size);
    let per_second = rate / endpoints as f64;
    let total = (per_second * args.seconds as f64) as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    let mut sent = 0usize;
    let appended = async {
        while sent < total {
            ticker.tick().await;
            let due = ((started.elapsed().as_secs_f64() * per_second) as usize).min(total);
            let now_ms = terra_core::keys::now_ms();
            let records: Vec<_> = (sent..due)
                .map(|i| {
                    let id = uuid::Uuid::now_v7().to_string();
                    let body = bodies[i % bodies.len()].1.to_vec();
                    (id.clone(), envelope_record_with_id(body, now_ms, id))
                })
                .collect();
            let now = Instant::now();
            let records = {
                let mut map = receiver.counts.appended.lock().expect("poisoned");
                records
                    .into_iter()
                    .map(|(id, record)| {
                        map.insert(id, now);
                        record
                    })
                    .collect::<Vec<_>>()
            };
            sent = due;
            if !records.is_empty() {
                log.append(records).await?;
            }
        }
        receiver
            .wait(
                Duration::from_secs(60),
                "every latency event delivered",
                |c| c.latencies.lock().expect("poisoned").len() >= total * endpoints,
            )
            .await?;
        anyhow::Ok(())
    }
    .await;
    running.stop().await?;
    appended?;
    let mut latencies = receiver.counts.latencies.lock().expect("poisoned").clone();
    latencies.sort_unstable_by(f64::total_cmp);
    let at = |p: f64| latencies[((latencies.len().max(1) - 1) as f64 * p) as usize];
    if latencies.is_empty() {
        bail!("no event appended in the latency phase (rate {rate:.0}/s)");
    }
    Ok((at(0.5), at(0.99)))
}
