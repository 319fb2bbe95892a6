//! `terra-bench standalone`: the whole product on one machine. It starts `terra-ingest
//! standalone` on its defaults (embedded log, SQLite, a local folder, the query service) as a
//! child process and sends distinct signed webhooks (many users, every fixture's type, some
//! re-deliveries and older copies), once at saturation and once at a fixed rate, each on a
//! fresh data dir. Every second it reads the server's `/metrics`: deliveries appended to the
//! log, records each projection has written, so each projection's lag (appended minus
//! projected); after the load it keeps reading until both lags are zero (time to catch up).
//! In the same run, the bare server's ceiling with the same client. Prints a report and writes
//! it with the per-second samples (`lag.csv`) and a chart of the lags (`lag.svg`) to `--out`.
//! It asserts nothing.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::corpus::Corpus;
use crate::plot::{Panel, Series, svg};
use crate::process::{ChildGuard, TerraIngestArg, free_addr, peak_rss_kb, wait_until_up};
use crate::standalone_load::{Counters, Generator, Pace, drive, rss_kb, server_counts};

#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {
    /// Measured seconds of the saturation run (after a 1 s warm-up).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Webhooks/s of the fixed-rate run (0: no fixed-rate run).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds of the fixed-rate run.
    #[arg(long, default_value_t = 60)]
    pub rate_seconds: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Distinct users the deliveries are spread over.
    #[arg(long, default_value_t = 3_000)]
    pub users: u64,
    /// Percent of deliveries that re-send an earlier body with its ordering timestamp.
    #[arg(long, default_value_t = 3)]
    pub redeliveries: u64,
    /// Percent of deliveries that re-send an earlier body as an older copy (an hour before).
    #[arg(long, default_value_t = 2)]
    pub older: u64,
    /// Seconds of the bare server's run (0: none).
    #[arg(long, default_value_t = 10)]
    pub bare_seconds: u64,
    /// Longest wait for the projections to catch up after the load, seconds.
    #[arg(long, default_value_t = 120)]
    pub catch_up_limit: u64,
    /// Folder the report, `lag.csv` and `lag.svg` are written to.
    #[arg(long, default_value = "target/terra-bench/standalone")]
    pub out: PathBuf,
    /// Keep the data dirs (their paths are printed) instead of removing them at the end. On
    /// an ext4 without a journal (as on the development machines) the inodes of a removed tree
    /// are skipped by every file created in the next minutes, which slows the object
    /// projector of a run started soon after: keep them, and remove them when done measuring.
    #[arg(long)]
    pub keep_data: bool,
    /// Server log level (RUST_LOG of the child).
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// One more argument for `terra-ingest standalone` (repeatable), e.g. `--server-arg=--sql
    /// --server-arg=postgres://…`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    #[command(flatten)]
    pub terra_ingest: TerraIngestArg,
}

const SECRET: &str = "whsec_bench_standalone_0123";

/// One second (or, after the load, one tenth) of a run.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    acked: u64,
    appended: u64,
    lag_sql: u64,
    lag_objects: u64,
    rss_kb: u64,
}

struct RunResult {
    name: String,
    seconds: f64,
    acked: u64,
    failed: u64,
    latencies_us: Vec<u32>,
    samples: Vec<Sample>,
    /// Seconds from the load's end until both lags were zero.
    caught_up: Option<f64>,
    peak_rss_kb: Option<u64>,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.seconds
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let l = &self.latencies_us;
        if l.is_empty() {
            return f64::NAN;
        }
        f64::from(l[((l.len() - 1) as f64 * p).round() as usize]) / 1000.0
    }

    fn max_lag(&self) -> (u64, u64) {
        self.samples
            .iter()
            .fold((0, 0), |(s, o), x| (s.max(x.lag_sql), o.max(x.lag_objects)))
    }
}

pub(crate) async fn run(args: StandaloneArgs) -> anyhow::Result<ExitCode> {
    if args.concurrency == 0 || args.seconds == 0 {
        bail!("--concurrency and --seconds must be at least 1");
    }
    let terra_ingest = args.terra_ingest.binary()?;
    let own = std::env::current_exe().context("failed to find terra-bench's own path")?;
    let mut runs = Vec::new();
    let mut bare = None;
    if args.bare_seconds > 0 {
        let addr = free_addr()?;
        let server = ChildGuard(
            Command::new(&own)
                .args(["bare-server", "--http-addr", &addr.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_until_up(addr, "/").await?;
        let generator = Arc::new(generator(&args)?);
        let counters = Arc::new(Counters::default());
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(1);
        let end = measure_from + Duration::from_secs(args.bare_seconds);
        let latencies = drive(
            addr,
            generator,
            Arc::clone(&counters),
            args.concurrency,
            Pace::Saturation,
            measure_from,
            end,
        )
        .await?;
        let measured = latencies.len() as u64;
        bare = Some(RunResult {
            name: "bare server".into(),
            seconds: args.bare_seconds as f64,
            acked: measured,
            failed: 0,
            latencies_us: latencies,
            samples: Vec::new(),
            caught_up: None,
            peak_rss_kb: peak_rss_kb(server.0.id()),
        });
    }
    // the data dirs are removed at the end, not between the runs: on an ext4 without a
    // journal (as here) the inodes of a removed tree are skipped by every file created
    // for the next minutes, which would slow the object projector of the run after it
    let mut dirs = Vec::new();
    runs.push(
        one_run(
            &args,
            &terra_ingest,
            Pace::Saturation,
            args.seconds,
            &mut dirs,
        )
        .await?,
    );
    if args.rate > 0 {
        let pace = Pace::Rate(args.rate);
        runs.push(one_run(&args, &terra_ingest, pace, args.rate_seconds, &mut dirs).await?);
    }
    report(&args, bare.as_ref(), &runs)?;
    if args.keep_data {
        for dir in dirs {
            println!("kept: {}", dir.keep().display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn generator(args: &StandaloneArgs) -> anyhow::Result<Generator> {
    Generator::new(
        Corpus::new(args.users)?,
        SECRET,
        args.redeliveries,
        args.older,
    )
}

/// One fresh `standalone` under one kind of load, sampled each second until caught up.
async fn one_run(
    args: &StandaloneArgs,
    terra_ingest: &std::path::Path,
    pace: Pace,
    seconds: u64,
    dirs: &mut Vec<tempfile::TempDir>,
) -> anyhow::Result<RunResult> {
    let dir = tempfile::tempdir().context("failed to create a temporary data dir")?;
    let data_dir = dir.path().to_owned();
    dirs.push(dir);
    let (addr, grpc) = (free_addr()?, free_addr()?);
    let server = ChildGuard(
        Command::new(terra_ingest)
            .args(["standalone", "--http-addr", &addr.to_string()])
            .args(["--grpc-addr", &grpc.to_string(), "--signing-secret", SECRET])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&args.server_args)
            .env("RUST_LOG", &args.server_log)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let pid = server.0.id();
    wait_until_up(addr, "/readyz").await?;
    let generator = Arc::new(generator(args)?);
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    // the saturation run warms up for a second; a fixed rate is measured from its start
    let measure_from = match pace {
        Pace::Saturation => start + Duration::from_secs(1),
        Pace::Rate(_) => start,
    };
    let end = measure_from + Duration::from_secs(seconds);
    let load = tokio::spawn(drive(
        addr,
        generator,
        Arc::clone(&counters),
        args.concurrency,
        pace,
        measure_from,
        end,
    ));
    let (samples, caught_up) = sample(addr, pid, &counters, start, end, args.catch_up_limit).await;
    let latencies = load.await.context("load task panicked")??;
    let name = match pace {
        Pace::Saturation => format!("saturation, {} connections", args.concurrency),
        Pace::Rate(rate) => format!("fixed rate {rate}/s, {} connections", args.concurrency),
    };
    let measured = latencies.len() as u64;
    Ok(RunResult {
        name,
        seconds: seconds as f64,
        acked: measured.min(counters.acked.load(Ordering::Relaxed)),
        failed: counters.failed.load(Ordering::Relaxed),
        latencies_us: latencies,
        samples,
        caught_up,
        peak_rss_kb: peak_rss_kb(pid),
    })
}

/// Samples every second during the load, then every 100 ms until both lags are zero.
async fn sample(
    addr: SocketAddr,
    pid: u32,
    counters: &Counters,
    start: Instant,
    end: Instant,
    limit: u64,
) -> (Vec<Sample>, Option<f64>) {
    let mut samples = Vec::new();
    let mut tick = start;
    let give_up = end + Duration::from_secs(limit);
    loop {
        let after_load = tick >= end;
        tick += if after_load {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        tokio::time::sleep_until(tick.into()).await;
        let Ok(counts) = server_counts(addr).await else {
            continue;
        };
        let now = Instant::now();
        let s = Sample {
            t: now.duration_since(start).as_secs_f64(),
            acked: counters.acked.load(Ordering::Relaxed),
            appended: counts.appended,
            lag_sql: counts.lag_sql(),
            lag_objects: counts.lag_objects(),
            rss_kb: rss_kb(pid),
        };
        let done = now >= end && s.lag_sql == 0 && s.lag_objects == 0;
        // after the load every tenth sample is kept, and the last
        let keep = !after_load || done || samples.last().is_none_or(|l: &Sample| s.t - l.t >= 0.95);
        if keep {
            samples.push(s);
        }
        if done {
            return (samples, Some(now.duration_since(end).as_secs_f64()));
        }
        if now >= give_up {
            return (samples, None);
        }
    }
}

fn report(
    args: &StandaloneArgs,
    bare: Option<&RunResult>,
    runs: &[RunResult],
) -> anyhow::Result<()> {
    let mut text = String::new();
    let templates = Corpus::new(args.users)?.len();
    writeln!(
        text,
        "terra-bench standalone: {} users, {templates} templates (every fixture; each data type {}x), {} % re-deliveries, {} % older copies; \
         standalone on its defaults (embedded log, SQLite, local folder){}",
        args.users,
        crate::corpus::DATA_WEIGHT,
        args.redeliveries,
        args.older,
        if args.server_args.is_empty() {
            String::new()
        } else {
            format!(" with {}", args.server_args.join(" "))
        }
    )?;
    writeln!(
        text,
        "{:<36} {:>9} {:>7} {:>8} {:>8} {:>12} {:>12} {:>11} {:>9}",
        "run",
        "acked/s",
        "failed",
        "p50 ms",
        "p99 ms",
        "max lag sql",
        "max lag obj",
        "caught up s",
        "peak MB"
    )?;
    for r in bare.into_iter().chain(runs) {
        let (lag_sql, lag_objects) = r.max_lag();
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        writeln!(
            text,
            "{:<36} {:>9.0} {:>7} {:>8.2} {:>8.2} {:>12} {:>12} {:>11} {:>9}",
            r.name,
            r.rate(),
            r.failed,
            r.percentile_ms(0.5),
            r.percentile_ms(0.99),
            if r.samples.is_empty() {
                "-".into()
            } else {
                lag_sql.to_string()
            },
            if r.samples.is_empty() {
                "-".into()
            } else {
                lag_objects.to_string()
            },
            if r.samples.is_empty() {
                "-".into()
            } else {
                dash(r.caught_up.map(|s| format!("{s:.1}")))
            },
            dash(r.peak_rss_kb.map(|kb| format!("{:.0}", kb as f64 / 1024.0))),
        )?;
    }
    if let (Some(bare), Some(saturated)) = (bare, runs.first()) {
        writeln!(
            text,
            "ratio standalone/bare at saturation: {:.2}",
            saturated.rate() / bare.rate().max(1.0)
        )?;
    }
    for r in runs {
        writeln!(
            text,
            "\n{}: per second (t s, acked, appended, lag sql, lag objects, RSS MB)",
            r.name
        )?;
        for s in &r.samples {
            writeln!(
                text,
                "  {:>6.1} {:>9} {:>9} {:>8} {:>8} {:>7.0}",
                s.t,
                s.acked,
                s.appended,
                s.lag_sql,
                s.lag_objects,
                s.rss_kb as f64 / 1024.0
            )?;
        }
    }
    print!("{text}");
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("failed to create {}", args.out.display()))?;
    std::fs::write(args.out.join("report.txt"), &text)?;
    let mut csv = String::from("run,t_s,acked,appended,lag_sql,lag_objects,rss_kb\n");
    for r in runs {
        for s in &r.samples {
            writeln!(
                csv,
                "\"{}\",{:.2},{},{},{},{},{}",
                r.name, s.t, s.acked, s.appended, s.lag_sql, s.lag_objects, s.rss_kb
            )?;
        }
    }
    std::fs::write(args.out.join("lag.csv"), csv)?;
    let panels: Vec<Panel> = runs
        .iter()
        .map(|r| Panel {
            title: format!("{}: {:.0} acked/s, projection lag", r.name, r.rate()),
            y_label: "records behind the log".into(),
            series: vec![
                Series {
                    name: "SQL (SQLite)".into(),
                    colour: "#1f77b4",
                    points: r.samples.iter().map(|s| (s.t, s.lag_sql as f64)).collect(),
                },
                Series {
                    name: "objects (folder)".into(),
                    colour: "#d62728",
                    points: r
                        .samples
                        .iter()
                        .map(|s| (s.t, s.lag_objects as f64))
                        .collect(),
                },
            ],
            load_end: Some(
                r.seconds
                    + if r.name.starts_with("saturation") {
                        1.0
                    } else {
                        0.0
                    },
            ),
        })
        .collect();
    std::fs::write(args.out.join("lag.svg"), svg(&panels))?;
    println!(
        "\nwritten: {}/{{report.txt,lag.csv,lag.svg}}",
        args.out.display()
    );
    Ok(())
}
