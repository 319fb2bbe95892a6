//! The query API through a real tonic client against the service on port 0, over the SQL
//! projection on the machine's Postgres and MariaDB (a fresh database per test) and SQLite,
//! with bodies from a local object store, all fed through a real embedded log: every method on
//! every dialect.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;
use terra_query::QueryServerConfig;
use terra_query::proto::{
    GetPayloadRequest, GetUserRequest, ListPayloadsRequest, ListUserEventsRequest,
    ListUsersRequest, Order, WatchPayloadsRequest, get_payload_chunk,
};
use terra_schema::Dialect;
use tonic::Code;

macro_rules! on_every_dialect {
    ($($name:ident),* $(,)?) => {
        mod postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Postgres).await } )* }
        mod mysql { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::MySql).await } )* }
        mod sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Dialect::Sqlite).await } )* }
    };
}

on_every_dialect!(
    users_and_their_lifecycle,
    payload_history_pages_and_bodies,
    bad_arguments_are_invalid_argument,
    the_live_tail_resumes_without_gap_or_duplicate
);

async fn users_and_their_lifecycle(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .enumerate()
            .map(|(i, (_, b))| record(b, (T0 + i as i64) * 1000))
            .collect(),
    )
    .await;
    let user = e
        .client
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(user.provider, "GARMIN");
    assert_eq!(user.state, "active");
    assert_eq!(user.reference_id.as_deref(), Some("acct-1007"));
    assert!(user.first_seen.is_some() && user.updated_at.is_some());
    let missing = e
        .client
        .get_user(GetUserRequest {
            user_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // pages of one, following the tokens, give every user once, in order
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = e
            .client
            .list_users(ListUsersRequest {
                page_size: 1,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.users.iter().map(|u| u.user_id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    // every user the fixtures name, each once, in order
    assert_eq!(seen, fixture_users(&fixtures()));
    let left = e
        .client
        .list_users(ListUsersRequest {
            state: Some("user_reauth".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        left.users
            .iter()
            .map(|u| u.user_id.as_str())
            .collect::<Vec<_>>(),
        ["e4d3c2b1-a098-4765-8321-0fedcba98765"]
    );

    let events = e
        .client
        .list_user_events(ListUserEventsRequest {
            user_id: USER.into(),
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(events.events.len(), 2);
    let rest = e
        .client
        .list_user_events(ListUserEventsRequest {
            user_id: USER.into(),
            page_size: 100,
            page_token: events.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    let all: Vec<_> = events
        .events
        .iter()
        .chain(&rest.events)
        .map(|ev| ev.event_type.clone())
        .collect();
    assert!(
        all.contains(&"auth".to_owned())
            && all.contains(&"permission_change".to_owned())
            && all.contains(&"user_reauth".to_owned()),
        "{all:?}"
    );
    let times: Vec<_> = events
        .events
        .iter()
        .chain(&rest.events)
        .map(|ev| ev.generated_at.unwrap().seconds)
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "in order: {times:?}"
    );
    e.done().await;
}

async fn payload_history_pages_and_bodies(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    let all = fixtures();
    e.feed(all.iter().map(|(_, b)| record(b, T0 * 1000)).collect())
        .await;
    let list = |order: Order, size: u32, token: String| ListPayloadsRequest {
        user_id: USER.into(),
        order: order as i32,
        page_size: size,
        page_token: token,
        ..Default::default()
    };
    let everything = e
        .client
        .list_payloads(list(Order::NewestFirst, 1000, String::new()))
        .await
        .unwrap()
        .into_inner()
        .payloads;
    assert!(everything.len() >= 8, "{}", everything.len());
    let starts: Vec<_> = everything
        .iter()
        .map(|p| p.start_utc.clone().unwrap())
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {starts:?}"
    );
    // pages of 3 oldest first cover the same set
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = e
            .client
            .list_payloads(list(Order::OldestFirst, 3, token.clone()))
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.payloads);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut a: Vec<_> = everything.iter().map(|p| p.payload_id.clone()).collect();
    let mut b: Vec<_> = paged.iter().map(|p| p.payload_id.clone()).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // types and a time range
    let sleep = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            types: vec!["sleep".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads;
    assert!(!sleep.is_empty() && sleep.iter().all(|p| p.event_type == "sleep"));
    let ranged = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            start_time_from: Some("2026-10-04T00:00:00Z".into()),
            start_time_to: Some("2026-10-05T00:00:00+00:00".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads;
    // exactly the payloads that start that day: some, not all (an empty answer must fail)
    let in_range = |start: &str| ("2026-10-04T00:00:00Z".."2026-10-05T00:00:00Z").contains(&start);
    let mut want: Vec<&str> = everything
        .iter()
        .filter(|p| in_range(p.start_utc.as_deref().unwrap()))
        .map(|p| p.payload_id.as_str())
        .collect();
    let mut got: Vec<&str> = ranged.iter().map(|p| p.payload_id.as_str()).collect();
    want.sort();
    got.sort();
    assert!(
        !want.is_empty() && want.len() < everything.len(),
        "the fixtures must have payloads in and out of the range: {want:?}"
    );
    assert_eq!(got, want);

    // every body, byte for byte as stored
    for p in &everything {
        let mut stream = e
            .client
            .get_payload(GetPayloadRequest {
                payload_id: p.payload_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let Some(get_payload_chunk::Chunk::Metadata(meta)) = first.chunk else {
            panic!("metadata first")
        };
        assert_eq!(meta.payload_id, p.payload_id);
        let mut body = Vec::new();
        while let Some(chunk) = stream.next().await {
            let Some(get_payload_chunk::Chunk::Data(data)) = chunk.unwrap().chunk else {
                panic!("data chunks")
            };
            body.extend_from_slice(&data);
        }
        let key = object_store::path::Path::parse(e.store.key(&p.payload_id)).unwrap();
        let stored = object_store::ObjectStore::get(e.store.object_store().as_ref(), &key)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(body, stored.as_ref(), "{}", p.payload_id);
        if p.kind == "misc" {
            let source = all
                .iter()
                .find(|(_, b)| terra_core::classify(b).unwrap().event_type == p.event_type)
                .unwrap();
            assert_eq!(
                body, source.1,
                "a misc payload is the webhook body as received"
            );
        }
    }
    let missing = e
        .client
        .get_payload(GetPayloadRequest {
            payload_id: "2022-03-16/sleep/nobody-x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    e.done().await;
}

async fn bad_arguments_are_invalid_argument(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .map(|(_, b)| record(b, T0 * 1000))
            .collect(),
    )
    .await;
    let page = e
        .client
        .list_payloads(ListPayloadsRequest {
            user_id: USER.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut tampered = page.next_page_token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let cases = [
        ListPayloadsRequest {
            user_id: USER.into(),
            page_token: tampered,
            page_size: 1,
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: USER.into(),
            page_size: 1001,
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: USER.into(),
            start_time_from: Some("2026-10-05T00:00:00Z".into()),
            start_time_to: Some("2026-10-04T00:00:00Z".into()),
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: USER.into(),
            start_time_from: Some("yesterday".into()),
            ..Default::default()
        },
        ListPayloadsRequest {
            user_id: "x".repeat(37),
            ..Default::default()
        },
        // a token for other filters
        ListPayloadsRequest {
            user_id: USER.into(),
            types: vec!["sleep".into()],
            page_token: page.next_page_token.clone(),
            ..Default::default()
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let err = e.client.list_payloads(case).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "case {i}: {err:?}");
        assert!(!err.message().is_empty());
    }
    let err = e
        .client
        .list_users(ListUsersRequest {
            page_token: "x.y".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = e
        .client
        .watch_payloads(WatchPayloadsRequest {
            resume_from: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    e.done().await;
}

async fn the_live_tail_resumes_without_gap_or_duplicate(dialect: Dialect) {
    let mut e = env(dialect, QueryServerConfig::default()).await;
    let all = fixtures();
    e.feed(vec![record(&all[0].1, T0 * 1000)]).await;
    // from now on: what is already there is not replayed
    let mut stream = e
        .client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let half = all.len() / 2;
    e.feed(
        all[1..half]
            .iter()
            .map(|(_, b)| record(b, T0 * 1000 + 5))
            .collect(),
    )
    .await;
    let mut expected_first: Vec<String> = all[1..half]
        .iter()
        .flat_map(|(_, b)| payload_ids(b, T0 * 1000 + 5))
        .collect();
    expected_first.sort();
    let mut got = Vec::new();
    let mut position = String::new();
    while got.len() < expected_first.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        position = event.position.clone();
        got.push(event.payload.unwrap().payload_id);
    }
    drop(stream);
    // more arrives while nobody watches; a resumed watch gets exactly that
    e.feed(
        all[half..]
            .iter()
            .map(|(_, b)| record(b, T0 * 1000 + 9))
            .collect(),
    )
    .await;
    let mut expected_rest: Vec<String> = all[half..]
        .iter()
        .flat_map(|(_, b)| payload_ids(b, T0 * 1000 + 9))
        .collect();
    expected_rest.sort();
    let mut resumed = e
        .client
        .watch_payloads(WatchPayloadsRequest {
            resume_from: position,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut rest = Vec::new();
    while rest.len() < expected_rest.len() {
        let event = tokio::time::timeout(Duration::from_secs(10), resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        rest.push(event.payload.unwrap().payload_id);
    }
    // and nothing more
    assert!(
        tokio::time::timeout(Duration::from_millis(700), resumed.next())
            .await
            .is_err(),
        "no duplicate after the last new payload"
    );
    // the first watch saw exactly the first half's payloads, the resumed one exactly the
    // rest: none missing, none twice, none from before the watch began
    got.sort();
    rest.sort();
    assert_eq!(got, expected_first, "the first watch");
    assert_eq!(rest, expected_rest, "the resumed watch");

    // one user and some types
    let mut only = e
        .client
        .watch_payloads(WatchPayloadsRequest {
            user_id: Some(USER.into()),
            types: vec!["sleep".into()],
            resume_from: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    e.feed(vec![
        record(&fixture_named(&all, "sleep"), T0 * 1000 + 99),
        record(&fixture_named(&all, "daily"), T0 * 1000 + 99),
    ])
    .await;
    let event = tokio::time::timeout(Duration::from_secs(10), only.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.payload.unwrap().event_type, "sleep");
    assert!(
        tokio::time::timeout(Duration::from_millis(700), only.next())
            .await
            .is_err()
    );
    e.done().await;
}
