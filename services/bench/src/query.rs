//! `terra-bench query`: a benchmark, not a test. Projects the `terra-bench sql` mix (1M data
//! records by default) into a fresh Postgres database and a local object folder, serves the
//! query API on loopback, and drives `ListPayloads` and `GetPayload` with a fixed number of
//! concurrent callers, printing requests/s and p50/p99/max latency.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use sqlx::Executor;
use terra_eventlog::EventLog;
use terra_projector::{ProjectorConfig, ProjectorMetrics};
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_query::proto::{GetPayloadRequest, ListPayloadsRequest};
use terra_query::{Query, QueryServerConfig, TokenKey};
use terra_schema::{SqlConfig, SqlTarget};
use terra_sink_objects::{ObjectSink, ObjectSinkConfig, Store, StoreConfig};
use terra_sink_sql::SqlSink;
use tonic::transport::Channel;

use crate::load::{LoadShape, database_url, fill};

/// `Debug` shows the server URL without its password.
#[derive(clap::Args)]
pub struct QueryArgs {
    /// Postgres server (a fresh database is created and dropped). Plain TCP by default: on
    /// loopback, TLS would only measure the encryption.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pub postgres: String,
    /// Data records (= payload rows) to load.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Distinct users.
    #[arg(long, default_value_t = 5_000)]
    pub users: usize,
    /// Concurrent callers.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured seconds per method.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// ListPayloads page size.
    #[arg(long, default_value_t = 50)]
    pub page_size: u32,
    /// Keep the loaded data for later runs: the database's name and the object folder go into
    /// this directory, and a later run with the same `--keep` measures again without loading
    /// (drop the database yourself when done: its name is in DIR/database).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for QueryArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryArgs")
            .field("postgres", &terra_schema::redact(&self.postgres))
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

pub(crate) async fn run(args: QueryArgs) -> anyhow::Result<ExitCode> {
    if args.records == 0 || args.users == 0 || args.concurrency == 0 {
        bail!("--records, --users and --concurrency must be at least 1");
    }
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(&args.postgres)
        .await
        .context("failed to connect to Postgres")?;
    let kept = match &args.keep {
        Some(dir) => std::fs::read_to_string(dir.join("database"))
            .ok()
            .map(|n| n.trim().to_owned()),
        None => None,
    };
    if let Some(name) = kept {
        let url = database_url(&args.postgres, &name);
        let objects = args.keep.as_ref().expect("kept").join("objects");
        return measure(&args, &url, &objects, false)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    let name = format!("bench_query_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await?;
    let url = database_url(&args.postgres, &name);
    let temp = tempfile::tempdir()?;
    let result = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("database"), &name)?;
            measure(&args, &url, &dir.join("objects"), true).await
        }
        None => measure(&args, &url, &temp.path().join("objects"), true).await,
    };
    if args.keep.is_none() {
        let _ = admin
            .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
            .await;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// Loads the SQL projection and the object folder from a generated log.
async fn load_data(args: &QueryArgs, sql: &SqlTarget, store: &Store) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = EventLog::Embedded(terra_eventlog::embedded::EmbeddedLog::open(
        &dir.path().join("log"),
        4,
    )?);
    let fill_args = LoadShape {
        records: args.records,
        per_webhook: 10,
        users: args.users,
    };
    fill(&log, &fill_args).await?;
    terra_schema::migrate(sql).await?;
    let stopped = terra_projector::CancellationToken::new();
    let mut config = ProjectorConfig::new("sql");
    config.batch_size = 500;
    config.stop_at_end = true;
    terra_projector::run(
        &config,
        &log,
        &mut SqlSink::new(sql.clone()),
        &ProjectorMetrics::unregistered(),
        stopped.clone(),
        |_| {},
    )
    .await?;
    let mut config = ProjectorConfig::new("objects");
    config.batch_size = 500;
    config.stop_at_end = true;
    let mut sink = ObjectSink::new(store.clone(), ObjectSinkConfig::default(), None);
    terra_projector::run(
        &config,
        &log,
        &mut sink,
        &ProjectorMetrics::unregistered(),
        stopped,
        |_| {},
    )
    .await?;
    sql.pool().execute("ANALYZE").await?;
    Ok(())
}

async fn measure(
    args: &QueryArgs,
    url: &str,
    objects: &std::path::Path,
    fresh: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut sql_config = SqlConfig::new(url);
    sql_config.max_connections = 16;
    let sql = SqlTarget::connect(&sql_config)?;
    let store = Store::open(&StoreConfig {
        url: objects.display().to_string(),
        ..StoreConfig::default()
    })?;
    if fresh {
        load_data(args, &sql, &store).await?;
    }
    let rows = terra_schema::rows(
        &sql,
        &format!("SELECT COUNT(*) FROM {}", sql.table("ingest_payloads")),
    )
    .await?;
    println!(
        "terra-bench query: {} payload rows in Postgres, {} users, loaded in {:.0} s; concurrency {}, {} s per method",
        rows[0][0].clone().unwrap_or_default(),
        args.users,
        started.elapsed().as_secs_f64(),
        args.concurrency,
        args.seconds
    );
    let ids: Vec<String> = terra_schema::rows(
        &sql,
        &format!(
            "SELECT payload_id FROM {} ORDER BY row_key LIMIT 5000",
            sql.table("ingest_payloads")
        ),
    )
    .await?
    .into_iter()
    .filter_map(|r| r[0].clone())
    .collect();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = terra_projector::CancellationToken::new();
    let query = Query::new(sql.clone(), store, TokenKey::new("bench"));
    let server = tokio::spawn(terra_query::run(
        query,
        QueryServerConfig::default(),
        listener,
        stop.clone(),
    ));
    let channels: Vec<Channel> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            out.push(loop {
                match Channel::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await
                {
                    Ok(c) => break c,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            });
        }
        out
    };
    println!(
        "{:<14} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "method", "requests/s", "errors", "p50 ms", "p99 ms", "max ms"
    );
    let users = args.users;
    let page_size = args.page_size;
    let list = load(&channels, args, move |mut client, i| async move {
        let user = format!("{:08x}-5e1f-4c2a-9b7d-6a3e2f1c0b9d", (i * 7919) % users);
        client
            .list_payloads(ListPayloadsRequest {
                user_id: user,
                page_size,
                ..Default::default()
            })
            .await
            .map(|r| !r.into_inner().payloads.is_empty())
    })
    .await;
    report("ListPayloads", &list, args.seconds);
    let ids = Arc::new(ids);
    let get = load(&channels, args, move |mut client, i| {
        let ids = Arc::clone(&ids);
        async move {
            let id = ids[i % ids.len()].clone();
            let mut stream = client
                .get_payload(GetPayloadRequest { payload_id: id })
                .await?
                .into_inner();
            let mut bytes = 0;
            while let Some(chunk) = stream.next().await {
                if let Some(terra_query::proto::get_payload_chunk::Chunk::Data(d)) = chunk?.chunk {
                    bytes += d.len();
                }
            }
            Ok(bytes > 0)
        }
    })
    .await;
    report("GetPayload", &get, args.seconds);
    stop.cancel();
    let _ = server.await;
    sql.close().await;
    Ok(())
}

struct Outcome {
    latencies_us: Vec<u64>,
    errors: usize,
}

async fn load<F, Fut>(channels: &[Channel], args: &QueryArgs, call: F) -> Outcome
where
    F: Fn(QueryServiceClient<Channel>, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<bool, tonic::Status>> + Send,
{
    let counter = Arc::new(AtomicUsize::new(0));
    let warm_end = Instant::now() + Duration::from_secs(1);
    let end = warm_end + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for worker in 0..args.concurrency {
        let client = QueryServiceClient::new(channels[worker % channels.len()].clone());
        let call = call.clone();
        let counter = Arc::clone(&counter);
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome {
                latencies_us: Vec::new(),
                errors: 0,
            };
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let ok = matches!(call(client.clone(), i).await, Ok(true));
                if now >= warm_end {
                    out.latencies_us.push(now.elapsed().as_micros() as u64);
                    if !ok {
                        out.errors += 1;
                    }
                }
            }
            out
        }));
    }
    let mut total = Outcome {
        latencies_us: Vec::new(),
        errors: 0,
    };
    for task in tasks {
        if let Ok(o) = task.await {
            total.latencies_us.extend(o.latencies_us);
            total.errors += o.errors;
        }
    }
    total.latencies_us.sort_unstable();
    total
}

fn report(method: &str, o: &Outcome, seconds: u64) {
    let at = |p: f64| {
        o.latencies_us
            .get(((o.latencies_us.len().max(1) - 1) as f64 * p) as usize)
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    println!(
        "{:<14} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2}",
        method,
        o.latencies_us.len() as f64 / seconds as f64,
        o.errors,
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
