//! The user-less history (issue 14 §1): events without a user (`auth_cancelled`, lab reports,
//! `s3_upload`) are kept, listed for an empty user id, and their bodies served, on every
//! dialect; payload ids are the SQL's and the objects' alike.

#[allow(unused_imports)]
mod support;

use futures::StreamExt;
use support::*;
use terra_query::QueryServerConfig;
use terra_query::proto::{
    GetPayloadRequest, ListPayloadsRequest, ListUserEventsRequest, get_payload_chunk,
};
use terra_schema::Dialect;

macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

on_every_dialect!(events_without_a_user_are_listed_and_served);

async fn events_without_a_user_are_listed_and_served(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .enumerate()
            .map(|(i, (_, b))| record(b, (T0 + i as i64) * 1000))
            .collect(),
    )
    .await;
    let history = e
        .client
        .list_user_events(ListUserEventsRequest {
            user_id: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0].event_type, "auth_cancelled");
    assert_eq!(history[0].role, terra_core::NO_USER_ROLE);
    assert_eq!(history[0].reference_id.as_deref(), Some("acct-2210"));
    assert_eq!(history[0].status.as_deref(), Some("error"));

    let payloads = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: String::new(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads;
    let mut types: Vec<_> = payloads.iter().map(|p| p.event_type.as_str()).collect();
    types.sort();
    assert_eq!(
        types,
        [
            "auth_cancelled",
            "healthcheck",
            "lab_report.completed",
            "lab_report.failed",
            "s3_payload",
            "s3_upload"
        ]
    );
    // the lab report's body, exactly as received, from the object at its payload id
    let lab = payloads
        .iter()
        .find(|p| p.event_type == "lab_report.completed")
        .unwrap();
    let mut stream = e
        .client
        .get_payload(GetPayloadRequest {
            payload_id: lab.payload_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        if let Some(get_payload_chunk::Chunk::Data(data)) = chunk.unwrap().chunk {
            body.extend(data);
        }
    }
    assert_eq!(body, terra_testkit::fixture("lab_report_completed"));
}
