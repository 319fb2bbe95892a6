//! The realistic mixed load the benchmarks pre-fill a log with: data webhooks of several
//! records each (activity, sleep, daily, body, nutrition, shaped like Terra's fixtures) over
//! many users, with newer re-deliveries and authentication and other events mixed in.

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;
use serde_json::{Value, json};
use terra_core::envelope::Envelope;
use terra_core::fixtures;
use terra_eventlog::{EventLog, Record};

const DATA_TYPES: [&str; 5] = ["activity", "sleep", "daily", "body", "nutrition"];

/// How much load and how it is spread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadShape {
    /// Data records in all.
    pub(crate) records: usize,
    /// Data records per webhook.
    pub(crate) per_webhook: usize,
    /// Distinct users.
    pub(crate) users: usize,
}

pub(crate) struct Filled {
    pub(crate) log_records: usize,
    pub(crate) data_webhooks: usize,
    pub(crate) data_records: usize,
    pub(crate) other_events: usize,
    pub(crate) redeliveries: usize,
    pub(crate) bytes: usize,
}

/// One record of each data type, from the fixtures, as templates.
fn templates() -> BTreeMap<&'static str, Value> {
    DATA_TYPES
        .iter()
        .map(|t| {
            let body: Value =
                serde_json::from_slice(fixtures::get(t).expect("fixture")).expect("fixture JSON");
            (*t, body["data"][0].clone())
        })
        .collect()
}

fn user_object(user: usize) -> Value {
    let provider = ["GARMIN", "FITBIT", "OURA", "WHOOP"][user % 4];
    json!({
        "user_id": format!("{user:08x}-5e1f-4c2a-9b7d-6a3e2f1c0b9d"),
        "provider": provider,
        "reference_id": format!("acct-{user}"),
        "scopes": "activity:read,sleep:read,daily:read",
        "last_webhook_update": "2026-10-04T09:00:12.118000+00:00",
        "created_at": "2026-09-01T10:11:12.000000+00:00",
        "active": true
    })
}

fn envelope_record(body: Vec<u8>, ordering_ms: i64) -> Record {
    envelope_record_with_id(body, ordering_ms, uuid::Uuid::now_v7().to_string())
}

/// The log record of a webhook `body` received at `ordering_ms`, as the ingress writes it
/// (its envelope built where the ingress builds it: classified, hashed).
pub(crate) fn envelope_record_with_id(
    body: Vec<u8>,
    ordering_ms: i64,
    envelope_id: String,
) -> Record {
    let delivery = terra_core::envelope::Delivery {
        envelope_id,
        received_at_ms: Some(ordering_ms),
        source: "default".into(),
        ordering_timestamp_ms: Some(ordering_ms),
        ..Default::default()
    };
    let envelope = Envelope::of_delivery(delivery, body.into());
    Record {
        key: envelope
            .user_id
            .clone()
            .map(|u| Bytes::from(u.into_bytes())),
        headers: vec![],
        value: envelope.encode_to_vec().into(),
    }
}

pub(crate) async fn fill(log: &EventLog, args: &LoadShape) -> anyhow::Result<Filled> {
    let templates = templates();
    let webhooks = args.records.div_ceil(args.per_webhook);
    let mut filled = Filled {
        log_records: 0,
        data_webhooks: 0,
        data_records: 0,
        other_events: 0,
        redeliveries: 0,
        bytes: 0,
    };
    let base_ms: i64 = 1_780_000_000_000;
    let day0 = 20_000; // days since 1970: 2024-10-04
    let mut pending = Vec::with_capacity(2_000);
    let mut per_user_type: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for w in 0..webhooks {
        let user = w % args.users;
        let kind = (w / args.users) % DATA_TYPES.len();
        let data_type = DATA_TYPES[kind];
        let n = args.per_webhook.min(args.records - filled.data_records);
        let seq = per_user_type.entry((user, kind)).or_insert(0);
        let mut data = Vec::with_capacity(n);
        for _ in 0..n {
            let mut record = templates[data_type].clone();
            let day = day0 + *seq as i64;
            let date = civil(day);
            let meta = &mut record["metadata"];
            meta["start_time"] = json!(format!("{date}T07:15:00.000000+02:00"));
            meta["end_time"] = json!(format!("{date}T08:05:00.000000+02:00"));
            if meta.get("summary_id").is_some() {
                meta["summary_id"] = json!(format!("{data_type}-{user}-{seq}"));
            }
            *seq += 1;
            data.push(record);
        }
        let body = serde_json::to_vec(&json!({
            "type": data_type, "user": user_object(user), "data": data, "version": "2022-03-16"
        }))?;
        let ts = base_ms + w as i64;
        filled.bytes += body.len();
        filled.data_records += n;
        filled.data_webhooks += 1;
        if w % 20 == 0 {
            // Terra re-sends a newer copy of the same records
            pending.push(envelope_record(body.clone(), ts + 1));
            filled.redeliveries += 1;
        }
        pending.push(envelope_record(body, ts));
        if w % 50 == 0 {
            let name = [
                "auth",
                "deauth",
                "permission_change",
                "connection_error",
                "large_request_sending",
            ][(w / 50) % 5];
            let mut event: Value = serde_json::from_slice(fixtures::get(name).expect("fixture"))?;
            event["user"] = user_object(user);
            pending.push(envelope_record(serde_json::to_vec(&event)?, ts));
            filled.other_events += 1;
        }
        if pending.len() >= 2_000 {
            filled.log_records += pending.len();
            log.append(std::mem::take(&mut pending)).await?;
        }
    }
    filled.log_records += pending.len();
    log.append(pending).await?;
    Ok(filled)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn civil(days: i64) -> String {
    terra_core::keys::unix_ms_to_utc_seconds(days * 86_400_000)[..10].to_owned()
}

/// `server` (a database URL) pointing at database `name` instead, options kept
/// (`postgres://h/postgres?sslmode=disable` → `postgres://h/NAME?sslmode=disable`).
pub(crate) fn database_url(server: &str, name: &str) -> String {
    let (path, options) = server
        .split_once('?')
        .map_or((server, None), |(p, o)| (p, Some(o)));
    let base = path.rsplit_once('/').map_or(path, |(b, _)| b);
    match options {
        Some(o) => format!("{base}/{name}?{o}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn database_urls_keep_their_options() {
        assert_eq!(
            database_url("postgres://u@h:5432/postgres?sslmode=disable", "b1"),
            "postgres://u@h:5432/b1?sslmode=disable"
        );
        assert_eq!(
            database_url("mysql://root@h/test", "b2"),
            "mysql://root@h/b2"
        );
    }
}
