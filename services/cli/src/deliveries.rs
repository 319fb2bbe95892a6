//! `terra-ingest deliveries …`: what operators see and do with webhook deliveries, for people
//! without a gRPC client: the `WebhookDeliveries` service's calls (through the same
//! `terra_sink_webhooks::admin`), straight on the database of `--sql` / `[sql]` (as
//! `project sql` and `project webhooks` use), printed as readable text.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use terra_core::keys::unix_ms_to_utc;
use terra_schema::{SqlTarget, TableSet};
use terra_sink_webhooks::admin::{
    self, DeliveryFilter, DeliveryRow, DeliveryState, EndpointState, EndpointStatus, MAX_LIMIT,
};

use crate::cli::{DataDirArgs, SqlArgs};
use crate::settings::{self, Config};

#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    /// Every endpoint with its state (enabled, disabled, paused) and backlog.
    Endpoints(DatabaseArgs),
    /// Deliveries, filtered, in id order, a page at a time.
    List(ListArgs),
    /// One delivery and every attempt made.
    Show(ShowArgs),
    /// Send an endpoint's dead letters created in a time range again, from their first attempt.
    Requeue(RequeueArgs),
    /// Pause an endpoint: nothing is sent to it and it is not probed until enabled.
    Disable(DisableArgs),
    /// Enable an endpoint: its pending deliveries are due at once, in arrival order.
    Enable(EnableArgs),
}

/// The database of the webhook tables (section `[sql]`).
#[derive(Debug, Clone, Default, Args)]
pub struct DatabaseArgs {
    #[command(flatten)]
    pub data_dir: DataDirArgs,
    #[command(flatten)]
    pub sql: SqlArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Only this endpoint's deliveries.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Only deliveries of this Terra user's events.
    #[arg(long)]
    pub user: Option<String>,
    /// Only deliveries of this event (its envelope id).
    #[arg(long, value_name = "ENVELOPE_ID")]
    pub event: Option<String>,
    /// Only deliveries in this state: pending, delivered or dead.
    #[arg(long, value_parser = DeliveryState::parse)]
    pub state: Option<DeliveryState>,
    /// Only deliveries with an id above this one (the next page).
    #[arg(long, value_name = "ID", default_value_t = 0)]
    pub after: i64,
    /// Most deliveries to show, 1-1000.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=MAX_LIMIT as i64))]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The delivery's id.
    pub id: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The endpoint whose dead letters to send again.
    #[arg(long)]
    pub endpoint: String,
    /// Dead letters created at or after this time: RFC 3339 (2026-12-03T10:00:00Z) or Unix
    /// milliseconds.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: i64,
    /// ... and at or before this time (same forms).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: i64,
}

#[derive(Debug, Clone, Args)]
pub struct DisableArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The endpoint's name.
    pub endpoint: String,
    /// Why (shown by `deliveries endpoints`).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct EnableArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The endpoint's name.
    pub endpoint: String,
}

/// `2026-12-03T10:00:00Z` (any offset; fractions of a second dropped) or Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let utc = terra_core::keys::iso_to_utc_seconds(text).ok_or_else(|| {
        format!("{text:?} is neither RFC 3339 (2026-12-03T10:00:00Z) nor Unix milliseconds")
    })?;
    // `YYYY-MM-DDTHH:MM:SSZ`, checked by iso_to_utc_seconds
    let n = |range: std::ops::Range<usize>| utc[range].parse::<i64>().unwrap_or(0);
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // days since 1970-01-01 (Howard Hinnant's days_from_civil)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Ok((days * 86_400 + n(11..13) * 3_600 + n(14..16) * 60 + n(17..19)) * 1_000)
}

/// Runs one `deliveries` command.
pub(crate) async fn run(config: Config, command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    let target = open(&config).await?;
    let configured = crate::settings::configured_endpoint_names(&config);
    let now = terra_core::keys::now_ms();
    let result = match command {
        DeliveriesCommand::Endpoints(_) => {
            print!(
                "{}",
                endpoints_text(&admin::endpoints(&target, &configured, now).await?)
            );
            Ok(())
        }
        DeliveriesCommand::List(args) => list(&target, args).await,
        DeliveriesCommand::Show(args) => show(&target, args.id).await,
        DeliveriesCommand::Requeue(args) => {
            if args.from > args.to {
                bail!("--from is after --to");
            }
            known(&target, &args.endpoint, now).await?;
            let n = admin::requeue_dead(&target, &args.endpoint, args.from, args.to, now).await?;
            println!(
                "re-queued {n} dead letter(s) of endpoint {} created from {} to {}",
                args.endpoint,
                unix_ms_to_utc(args.from),
                unix_ms_to_utc(args.to)
            );
            Ok(())
        }
        DeliveriesCommand::Disable(args) => {
            known(&target, &args.endpoint, now).await?;
            let reason = args.reason.as_deref();
            admin::set_state(&target, &args.endpoint, EndpointState::Paused, reason, now).await?;
            println!("endpoint {} paused", args.endpoint);
            Ok(())
        }
        DeliveriesCommand::Enable(args) => {
            known(&target, &args.endpoint, now).await?;
            admin::set_state(&target, &args.endpoint, EndpointState::Enabled, None, now).await?;
            let after = known(&target, &args.endpoint, now).await?;
            println!(
                "endpoint {} enabled: {} pending, {} due now",
                args.endpoint, after.backlog.pending, after.backlog.due
            );
            Ok(())
        }
    };
    target.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// The database of `[sql]`, with the webhook tables in it.
async fn open(config: &Config) -> anyhow::Result<SqlTarget> {
    let sql = settings::resolve_sql(config)?;
    let target = SqlTarget::connect(&sql.config).context("setting sql")?;
    let pending = terra_schema::pending_set(&target, TableSet::Webhooks)
        .await
        .context("failed to read the webhook tables")?;
    if !pending.is_empty() {
        bail!(
            "the webhook tables are not in this database (migrations not applied: {}): run `terra-ingest project webhooks` once (it creates them), or check --sql",
            pending.join(", ")
        );
    }
    Ok(target)
}

/// The endpoint named `name`, an error when the tables do not know it.
async fn known(target: &SqlTarget, name: &str, now: i64) -> anyhow::Result<EndpointStatus> {
    admin::endpoints(target, &[], now)
        .await?
        .into_iter()
        .find(|e| e.name == name)
        .with_context(|| {
            format!("no endpoint {name:?} in the webhook tables (see `terra-ingest deliveries endpoints`)")
        })
}

fn time(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".to_owned(), unix_ms_to_utc)
}

fn endpoints_text(list: &[EndpointStatus]) -> String {
    let mut out = format!(
        "{:<24} {:<9} {:>8} {:>8} {:>8}  {:<24}  {:<24}  REASON\n",
        "ENDPOINT", "STATE", "PENDING", "DUE", "DEAD", "OLDEST PENDING", "CHANGED"
    );
    for e in list {
        out.push_str(&format!(
            "{:<24} {:<9} {:>8} {:>8} {:>8}  {:<24}  {:<24}  {}\n",
            e.name,
            e.state.as_str(),
            e.backlog.pending,
            e.backlog.due,
            e.backlog.dead,
            time(e.backlog.oldest_pending_created_at_ms),
            time(e.changed_at_ms),
            e.reason.as_deref().unwrap_or("-")
        ));
    }
    if list.is_empty() {
        out.push_str("(no endpoints yet)\n");
    }
    out
}

async fn list(target: &SqlTarget, args: ListArgs) -> anyhow::Result<()> {
    let filter = DeliveryFilter {
        endpoint: args.endpoint,
        user_id: args.user,
        envelope_id: args.event,
        state: args.state,
        after_id: args.after,
        limit: args.limit,
    };
    let rows = admin::deliveries(target, &filter).await?;
    print!("{}", deliveries_text(&rows));
    if let Some(last) = rows.last()
        && rows.len() == filter.limit as usize
    {
        println!("more: --after {}", last.id);
    }
    Ok(())
}

fn deliveries_text(rows: &[DeliveryRow]) -> String {
    let mut out = format!(
        "{:>10} {:<24} {:<9} {:>8}  {:<24}  {:<36}  {:<16}  LAST ERROR\n",
        "ID", "ENDPOINT", "STATE", "ATTEMPTS", "CREATED", "EVENT", "TYPE"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>10} {:<24} {:<9} {:>8}  {:<24}  {:<36}  {:<16}  {}\n",
            r.id,
            r.endpoint,
            r.state.as_str(),
            r.attempts,
            unix_ms_to_utc(r.created_at_ms),
            r.envelope_id,
            r.event_type,
            r.last_error.as_deref().unwrap_or("-")
        ));
    }
    out
}

async fn show(target: &SqlTarget, id: i64) -> anyhow::Result<()> {
    let Some((d, attempts)) = admin::delivery(target, id).await? else {
        bail!("no delivery with id {id}");
    };
    let next = match d.state {
        DeliveryState::Pending => unix_ms_to_utc(d.next_attempt_at_ms),
        _ => "-".to_owned(),
    };
    println!("delivery      {}", d.id);
    println!("endpoint      {}", d.endpoint);
    println!("event         {} ({})", d.envelope_id, d.event_type);
    println!("user          {}", d.user_id.as_deref().unwrap_or("-"));
    println!("state         {}", d.state.as_str());
    println!("attempts      {}", d.attempts);
    println!("created       {}", unix_ms_to_utc(d.created_at_ms));
    println!("next attempt  {next}");
    println!("in flight to  {}", time(d.lease_until_ms));
    println!("finished      {}", time(d.finished_at_ms));
    println!(
        "last status   {}",
        d.last_status.map_or("-".to_owned(), |s| s.to_string())
    );
    println!("last error    {}", d.last_error.as_deref().unwrap_or("-"));
    println!();
    println!(
        "{:>7} {:<5} {:<24} {:>9} {:>6}  {:<16}  ERROR / RESPONSE",
        "ATTEMPT", "PROBE", "STARTED", "MS", "STATUS", "CLASS"
    );
    for a in &attempts {
        println!(
            "{:>7} {:<5} {:<24} {:>9} {:>6}  {:<16}  {}",
            a.attempt,
            if a.probe { "yes" } else { "no" },
            unix_ms_to_utc(a.started_at_ms),
            a.duration_ms,
            a.status_code.map_or("-".to_owned(), |s| s.to_string()),
            a.error_class,
            a.error.as_deref().or(a.response.as_deref()).unwrap_or("-")
        );
    }
    if attempts.is_empty() {
        println!("(no attempts yet)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_unix_ms() {
        assert_eq!(parse_time("1780000000123"), Ok(1_780_000_000_123));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2026-12-03T10:00:00Z"), Ok(1_796_292_000_000));
        assert_eq!(
            parse_time("2026-12-03T12:00:00.250+02:00"),
            Ok(1_796_292_000_000)
        );
        assert_eq!(
            parse_time(&unix_ms_to_utc(1_780_000_000_000)),
            Ok(1_780_000_000_000)
        );
        for bad in ["yesterday", "2026-12-03", "2026-13-03T10:00:00Z", ""] {
            let err = parse_time(bad).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }
}
