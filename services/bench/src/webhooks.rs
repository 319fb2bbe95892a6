//! `terra-bench webhooks`: a benchmark, not a test (it prints numbers, asserts nothing).
//!
//! 1. Fills a fresh embedded log with the realistic mix of `terra-bench sql` (signed-looking
//!    data webhooks of several records each over many users, other events, re-deliveries).
//! 2. Starts a fast receiver in this process (answers 200 at once, counts).
//! 3. Per database (SQLite in a temporary file, Postgres in a fresh database per run): runs
//!    the webhook destination (fan-out and dispatcher) over the whole log to 1 and then 4
//!    endpoints: deliveries/s from the first request's arrival until every (event, endpoint)
//!    pair is `delivered` in SQL (the start-up before it printed apart); the
//!    receiver's ceiling (the same POSTs sent directly at the same concurrency by the
//!    destination's own `Sender`, without state, on open connections, for at least 2 s, right
//!    before and right after the destination's run: the mean of the two) and the ratio, in
//!    `--rounds` rounds (each direct measure between two runs serves both) and their median;
//!    then, on a fresh log and database, events appended at a steady rate below saturation:
//!    p50/p99 from append to arrival at the receiver.
//! 4. Two endpoints, both healthy, then one of them down (connection refused, a schedule of
//!    hours): the healthy endpoint's deliveries/s in each, and the ratio.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use prost::Message;
use terra_eventlog::EventLog;
use terra_schema::{SqlConfig, SqlTarget, TableSet};

use crate::load::{LoadShape, fill};
use crate::sql::{drop_database, fresh_database};
use crate::webhooks_phases::{external, latency, throughput, throughput_down};
use crate::webhooks_receiver::{Receiver, ceiling};
use crate::webhooks_run::{open_log, settings};

/// `Debug` shows the server URL without its password.
#[derive(clap::Args)]
pub struct WebhooksArgs {
    /// Postgres server (a fresh database is created and dropped per run); "" skips it.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres: String,
    /// Skip the SQLite runs.
    #[arg(long)]
    pub no_sqlite: bool,
    /// Data webhooks in the pre-filled log (plus re-deliveries and other events): 30,000 keep
    /// a run to one endpoint at about 2 s, long enough for a rate.
    #[arg(long, default_value_t = 30_000)]
    pub webhooks: usize,
    /// Data records per webhook (10: bodies of about 3 KB).
    #[arg(long, default_value_t = 10)]
    pub per_webhook: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 2_000)]
    pub users: usize,
    /// Each endpoint's `max_in_flight` (the direct client uses the same concurrency).
    #[arg(long, default_value_t = terra_sink_webhooks::endpoint::DEFAULT_ENDPOINT_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// The latency phase's rate, as a fraction of the measured deliveries/s.
    #[arg(long, default_value_t = 0.5)]
    pub load: f64,
    /// Seconds of the latency phase (0 skips it).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Deliver to this HTTP receiver instead of the in-process one (it must answer 2xx on
    /// `/e/0` … `/e/3`, e.g. nginx with `return 200`): deliveries/s and CPU per delivery to 1
    /// and 4 endpoints only, completion read from SQL; measure its ceiling with your own
    /// client (wrk).
    #[arg(long)]
    pub receiver: Option<String>,
    /// Only the phase with one endpoint down (both healthy, then one down): to profile it.
    #[arg(long)]
    pub down_only: bool,
    /// Rounds of the runs to 1 and 4 endpoints, each between two measures of the direct
    /// ceiling; the median ratio is the run's.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Alternated rounds of the phase with one endpoint down.
    #[arg(long, default_value_t = 3)]
    pub down_rounds: usize,
    /// Records per fan-out batch (the product's `projector.batch_size`).
    #[arg(long, default_value_t = terra_projector::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

impl std::fmt::Debug for WebhooksArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhooksArgs")
            .field("postgres", &terra_schema::redact(&self.postgres))
            .field("webhooks", &self.webhooks)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn run(args: WebhooksArgs) -> anyhow::Result<ExitCode> {
    if args.webhooks == 0
        || args.per_webhook == 0
        || args.users == 0
        || args.max_in_flight == 0
        || args.batch_size == 0
        || args.rounds == 0
    {
        bail!(
            "--webhooks, --per-webhook, --users, --max-in-flight, --batch-size and --rounds must be at least 1"
        );
    }
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().context("failed to create a temporary folder")?;
    let started = Instant::now();
    let log = open_log(&dir.path().join("log"))?;
    let filled = fill(
        &log,
        &LoadShape {
            records: args.webhooks * args.per_webhook,
            per_webhook: args.per_webhook,
            users: args.users,
        },
    )
    .await?;
    let bodies = Arc::new(bodies_of(&log).await?);
    println!(
        "terra-bench webhooks: log of {} events ({} data webhooks, {} other events, {} re-deliveries), {} users, bodies of {:.1} KB on average, filled in {:.1} s; {} in flight per endpoint",
        filled.log_records,
        filled.data_webhooks,
        filled.other_events,
        filled.redeliveries,
        args.users,
        filled.bytes as f64 / filled.data_webhooks as f64 / 1e3,
        started.elapsed().as_secs_f64(),
        args.max_in_flight,
    );
    let receiver = Receiver::start().await?;
    println!(
        "{:<9} {:<16} {:>8} {:>13} {:>11} {:>15} {:>6} {:>10} {:>8} {:>8} {:>15}   direct before / after",
        "state",
        "endpoints",
        "pairs",
        "deliveries/s",
        "s start/all",
        "direct POSTs/s",
        "ratio",
        "at rate/s",
        "p50 ms",
        "p99 ms",
        "CPU us: dest/direct"
    );
    let mut databases = Vec::new();
    if !args.no_sqlite {
        databases.push(Db::Sqlite);
    }
    if !args.postgres.is_empty() {
        databases.push(Db::Postgres(args.postgres.clone()));
    }
    let n = filled.log_records;
    if let Some(url) = &args.receiver {
        for db in &databases {
            for endpoints in [1, 4] {
                let (rate, seconds, cpu) =
                    on_fresh(db, |t| external(&log, t, url, endpoints, n, &args)).await?;
                println!(
                    "{:<9} {:<16} {:>8} {:>13.0} {:>8.2}   CPU us per delivery {cpu:.0} (receiver {url})",
                    db.name(),
                    endpoints,
                    n * endpoints,
                    rate,
                    seconds,
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    for db in &databases {
        let runs: &[usize] = if args.down_only { &[] } else { &[1, 4] };
        for &endpoints in runs {
            let all: Vec<usize> = (0..endpoints).collect();
            let concurrency = (endpoints * args.max_in_flight).min(settings(vec![]).max_in_flight);
            // the direct ceiling right before and right after the destination's run, each
            // for at least 2 s: this machine's ceiling moves between runs
            let direct_ceiling = || async {
                receiver.counts.reset();
                let direct = ceiling(
                    &receiver,
                    &bodies,
                    endpoints,
                    (n * endpoints, Duration::from_secs(2)),
                    concurrency,
                )
                .await;
                receiver.counts.reset();
                direct
            };
            // rounds of the destination's run, each between two measures of the direct
            // ceiling: the median ratio stands for the run (this machine's speed moves by up
            // to 2x between seconds, so one pair alone can be either side of the truth)
            let mut before = direct_ceiling().await?;
            let mut rounds = Vec::new();
            for round in 1..=args.rounds {
                let run =
                    on_fresh(db, |t| throughput(&log, t, &receiver, &all, &[], n, &args)).await?;
                let after = direct_ceiling().await?;
                let direct = (before.0 + after.0) / 2.0;
                let cpu_direct = (before.1 + after.1) / 2.0;
                let (rate, cpu) = (run.rate, run.cpu_us);
                // Postgres's part of the destination's CPU (none on SQLite)
                let postgres = match run.postgres_us {
                    us if us >= 0.5 => format!(" pg {us:.0}"),
                    _ => String::new(),
                };
                println!(
                    "{:<9} {:<16} {:>8} {:>13.0} {:>11} {:>15.0} {:>6.2} {:>10} {:>8} {:>8} {:>15}   {:.0} / {:.0}",
                    db.name(),
                    format!("{endpoints} (round {round})"),
                    n * endpoints,
                    rate,
                    format!("{:.2}/{:.2}", run.start_up, run.seconds),
                    direct,
                    rate / direct,
                    "",
                    "",
                    "",
                    format!("{cpu:.0}/{cpu_direct:.0} {:.2}{postgres}", cpu_direct / cpu),
                    before.0,
                    after.0
                );
                rounds.push((rate / direct, rate));
                before = after;
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (ratio, rate) = rounds[rounds.len() / 2];
            let at = (rate * args.load).max(1.0);
            let (p50, p99) = match args.seconds {
                0 => (f64::NAN, f64::NAN),
                _ => on_fresh(db, |t| latency(t, &receiver, &bodies, endpoints, at, &args)).await?,
            };
            println!(
                "{:<9} {:<16} {:>8} {:>13.0} {:>11} {:>15} {:>6.2} {:>10.0} {:>8.1} {:>8.1}   ratios {}",
                db.name(),
                format!("{endpoints} (median)"),
                n * endpoints,
                rate,
                "",
                "",
                ratio,
                at,
                p50,
                p99,
                rounds
                    .iter()
                    .map(|r| format!("{:.2}", r.0))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        // alternated rounds (both healthy, then one down): one pair alone is at the mercy of
        // this machine's noise
        let mut ratios = Vec::new();
        for round in 1..=args.down_rounds {
            let both =
                on_fresh(db, |t| throughput(&log, t, &receiver, &[0], &[1], n, &args)).await?;
            let down = on_fresh(db, |t| throughput_down(&log, t, &receiver, n, &args)).await?;
            let (both, cpu_both, one_down, cpu_down) =
                (both.rate, both.cpu_us, down.rate, down.cpu_us);
            ratios.push(one_down / both);
            println!(
                "{:<9} 2, 1 down (round {round}): the healthy one's deliveries/s {:.0} with the other healthy, {:.0} with it down (connection refused), ratio {:.2}; CPU us per healthy delivery {:.0} and {:.0}",
                db.name(),
                both,
                one_down,
                one_down / both,
                cpu_both,
                cpu_down
            );
        }
        if ratios.len() > 1 {
            ratios.sort_by(f64::total_cmp);
            println!(
                "{:<9} 2, 1 down: ratios {}, median {:.2}",
                db.name(),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                ratios[ratios.len() / 2]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

enum Db {
    Sqlite,
    Postgres(String),
}

impl Db {
    fn name(&self) -> &'static str {
        match self {
            Db::Sqlite => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

/// Runs `f` on a fresh database with the webhook tables, dropped after.
async fn on_fresh<T, F, Fut>(db: &Db, f: F) -> anyhow::Result<T>
where
    F: FnOnce(SqlTarget) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let dir = tempfile::tempdir()?;
    let (url, drop_name) = match db {
        Db::Sqlite => (
            format!("sqlite://{}", dir.path().join("webhooks.db").display()),
            None,
        ),
        Db::Postgres(server) => {
            let (url, name) = fresh_database(server).await?;
            (url, Some((server.clone(), name)))
        }
    };
    let result = async {
        let target = SqlTarget::connect(&SqlConfig::new(&url))?;
        terra_schema::migrate_set(&target, TableSet::Webhooks).await?;
        let out = f(target.clone()).await;
        target.close().await;
        out
    }
    .await;
    if let Some((server, name)) = drop_name {
        drop_database(&server, &name).await;
    }
    result
}

/// Every event of the log: (envelope id, body).
async fn bodies_of(log: &EventLog) -> anyhow::Result<Vec<(String, Bytes)>> {
    let mut consumer = log.consumer(&format!("bench-bodies-{}", uuid::Uuid::new_v4().simple()))?;
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(10_000, Duration::from_millis(50)).await?;
        if batch.is_empty() {
            return Ok(out);
        }
        for consumed in batch {
            let envelope = terra_core::envelope::Envelope::decode(consumed.record.value.as_ref())?;
            out.push((envelope.envelope_id, envelope.body));
        }
    }
}
