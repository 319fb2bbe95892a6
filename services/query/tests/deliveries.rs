//! The `WebhookDeliveries` service through a real tonic client over TCP, beside the query
//! service on the same server: every method, bad input named, the missing tables, bearer
//! tokens and health; on Postgres, MariaDB and SQLite.

mod support;

use sqlx::Executor;
use support::*;
use terra_query::proto::webhook_deliveries_client::WebhookDeliveriesClient;
use terra_query::proto::{
    GetDeliveryRequest, ListDeliveriesRequest, ListEndpointsRequest, RequeueDeadLettersRequest,
    SetEndpointStateRequest, WebhookEndpoint,
};
use terra_query::{Deliveries, QueryServerConfig};
use terra_schema::{Dialect, SqlTarget, TableSet};
use tonic::Code;
use tonic::transport::Channel;

const TOKEN: &str = "a-long-enough-token-1";

/// The service over the same database, with endpoints `a` and `b` configured.
async fn served(dialect: Dialect, config: QueryServerConfig) -> (Env, Client) {
    let e = env_with(dialect, config, |q| {
        let deliveries =
            Deliveries::new(q.sql().clone()).with_configured(vec!["a".into(), "b".into()]);
        q.with_deliveries(deliveries)
    })
    .await;
    let client = WebhookDeliveriesClient::new(e.channel.clone());
    (e, client)
}

type Client = WebhookDeliveriesClient<Channel>;

async fn exec(target: &SqlTarget, sql: &str) {
    target
        .pool()
        .execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Endpoint `a` disabled, with a pending delivery (1, user USER, two attempts), a dead one
/// created at 2_000 ms (2) and a delivered one (3, user u2).
async fn rows(t: &SqlTarget) {
    terra_schema::migrate_set(t, TableSet::Webhooks)
        .await
        .unwrap();
    exec(t, &format!("INSERT INTO {} (name, state, reason, changed_at_ms, failing_since_ms, last_success_ms, next_probe_at_ms) VALUES ('a', 'disabled', 'failing for 5 days', 1000, 500, NULL, 9000)", t.table("webhook_endpoints"))).await;
    exec(t, &format!("INSERT INTO {} (id, endpoint, envelope_id, user_id, event_type, state, attempts, next_attempt_at_ms, created_at_ms, finished_at_ms, last_status, last_error) VALUES \
        (1, 'a', 'env-1', '{USER}', 'activity', 'pending', 2, 4102444800000, 1000, NULL, 503, 'HTTP 503'), \
        (2, 'a', 'env-2', NULL, 'auth', 'dead', 8, 0, 2000, 3000, 500, 'gave up after 8 attempts'), \
        (3, 'a', 'env-3', 'u2', 'sleep', 'delivered', 1, 0, 3000, 3001, 200, NULL)", t.table("webhook_deliveries"))).await;
    exec(t, &format!("INSERT INTO {} (id, delivery_id, attempt, probe, started_at_ms, duration_ms, status_code, error_class, error, response) VALUES \
        (2, 1, 2, 0, 1500, 8000, NULL, 'timeout', 'no answer within 8s', NULL), \
        (1, 1, 1, 0, 1000, 12, 503, 'status', NULL, 'busy')", t.table("webhook_attempts"))).await;
}

fn find<'a>(list: &'a [WebhookEndpoint], name: &str) -> &'a WebhookEndpoint {
    list.iter().find(|e| e.name == name).unwrap()
}

fn ids(r: &terra_query::proto::ListDeliveriesResponse) -> Vec<i64> {
    r.deliveries.iter().map(|d| d.id).collect()
}

async fn every_method_over_the_webhook_tables(dialect: Dialect) {
    let (e, mut c) = served(dialect, QueryServerConfig::default()).await;
    // no webhook tables yet: a clear precondition
    let err = c.list_endpoints(ListEndpointsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("terra-ingest project webhooks"),
        "{err:?}"
    );
    let err = c
        .list_deliveries(ListDeliveriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    rows(&e.sql).await;

    let list = c
        .list_endpoints(ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(list.len(), 2, "{list:?}");
    let a = find(&list, "a");
    assert_eq!(
        (a.state.as_str(), a.reason.as_deref(), a.configured),
        ("disabled", Some("failing for 5 days"), true)
    );
    assert_eq!(a.next_probe_at.unwrap().seconds, 9);
    let backlog = a.backlog.unwrap();
    assert_eq!((backlog.pending, backlog.due, backlog.dead), (1, 0, 1));
    assert_eq!(backlog.oldest_pending_created_at.unwrap().seconds, 1);
    let b = find(&list, "b");
    assert_eq!((b.state.as_str(), b.changed_at), ("enabled", None));

    // filters and pages
    let list = |c: &mut Client, r: ListDeliveriesRequest| {
        let mut c = c.clone();
        async move { c.list_deliveries(r).await.unwrap().into_inner() }
    };
    let all = list(&mut c, ListDeliveriesRequest::default()).await;
    assert_eq!((ids(&all), all.next_after_id), (vec![1, 2, 3], 0));
    let page = list(
        &mut c,
        ListDeliveriesRequest {
            limit: Some(2),
            ..Default::default()
        },
    )
    .await;
    assert_eq!((ids(&page), page.next_after_id), (vec![1, 2], 2));
    let page = list(
        &mut c,
        ListDeliveriesRequest {
            limit: Some(2),
            after_id: page.next_after_id,
            ..Default::default()
        },
    )
    .await;
    assert_eq!((ids(&page), page.next_after_id), (vec![3], 0));
    for (request, expected) in [
        (
            ListDeliveriesRequest {
                state: Some("dead".into()),
                ..Default::default()
            },
            vec![2],
        ),
        (
            ListDeliveriesRequest {
                user_id: Some("u2".into()),
                ..Default::default()
            },
            vec![3],
        ),
        (
            ListDeliveriesRequest {
                envelope_id: Some("env-1".into()),
                endpoint: Some("a".into()),
                ..Default::default()
            },
            vec![1],
        ),
        (
            ListDeliveriesRequest {
                endpoint: Some("b".into()),
                ..Default::default()
            },
            vec![],
        ),
    ] {
        assert_eq!(
            ids(&list(&mut c, request.clone()).await),
            expected,
            "{request:?}"
        );
    }
    let dead = &list(
        &mut c,
        ListDeliveriesRequest {
            state: Some("dead".into()),
            ..Default::default()
        },
    )
    .await
    .deliveries[0];
    assert_eq!(
        (
            dead.state.as_str(),
            dead.attempts,
            dead.last_status,
            dead.last_error.as_deref(),
            dead.user_id.as_deref()
        ),
        ("dead", 8, Some(500), Some("gave up after 8 attempts"), None)
    );

    // one delivery with its attempts, in order
    let one = c
        .get_delivery(GetDeliveryRequest { id: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.delivery.unwrap().envelope_id, "env-1");
    let attempts: Vec<(i64, Option<i32>, &str)> = one
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status_code, a.error_class.as_str()))
        .collect();
    assert_eq!(attempts, [(1, Some(503), "status"), (2, None, "timeout")]);
    let err = c
        .get_delivery(GetDeliveryRequest { id: 42 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // dead letters re-queued by time range
    let range = |endpoint: &str, from_s: i64, to_s: i64| RequeueDeadLettersRequest {
        endpoint: endpoint.into(),
        created_from: Some(prost_types::Timestamp {
            seconds: from_s,
            nanos: 0,
        }),
        created_to: Some(prost_types::Timestamp {
            seconds: to_s,
            nanos: 0,
        }),
    };
    let none = c.requeue_dead_letters(range("a", 3, 10)).await.unwrap();
    assert_eq!(none.into_inner().requeued, 0, "outside the range");
    let requeued = c.requeue_dead_letters(range("a", 2, 2)).await.unwrap();
    assert_eq!(requeued.into_inner().requeued, 1);
    let again = list(
        &mut c,
        ListDeliveriesRequest {
            state: Some("dead".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(again.deliveries.is_empty());

    // pause, then enable: the backlog is due at once
    let paused = c
        .set_endpoint_state(SetEndpointStateRequest {
            endpoint: "b".into(),
            state: "paused".into(),
            reason: Some("receiver migration".into()),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!(
        (paused.state.as_str(), paused.reason.as_deref()),
        ("paused", Some("receiver migration"))
    );
    let enabled = c
        .set_endpoint_state(SetEndpointStateRequest {
            endpoint: "a".into(),
            state: "enabled".into(),
            reason: None,
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert_eq!((enabled.state.as_str(), enabled.reason), ("enabled", None));
    let backlog = enabled.backlog.unwrap();
    assert_eq!((backlog.pending, backlog.due), (2, 2), "{backlog:?}");
    e.done().await;
}

async fn bad_input_is_invalid_argument_naming_the_field(dialect: Dialect) {
    let (e, mut c) = served(dialect, QueryServerConfig::default()).await;
    rows(&e.sql).await;
    let invalid = |err: tonic::Status, field: &str| {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    };
    let err = c
        .list_deliveries(ListDeliveriesRequest {
            state: Some("lost".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    invalid(err, "state");
    for limit in [0, 1001] {
        let err = c
            .list_deliveries(ListDeliveriesRequest {
                limit: Some(limit),
                ..Default::default()
            })
            .await
            .unwrap_err();
        invalid(err, "limit");
    }
    let t = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let err = c
        .requeue_dead_letters(RequeueDeadLettersRequest {
            endpoint: "a".into(),
            created_from: t(5),
            created_to: t(4),
        })
        .await
        .unwrap_err();
    invalid(err, "created_from");
    let err = c
        .requeue_dead_letters(RequeueDeadLettersRequest {
            endpoint: "a".into(),
            created_from: t(5),
            created_to: None,
        })
        .await
        .unwrap_err();
    invalid(err, "created_to");
    let err = c
        .requeue_dead_letters(RequeueDeadLettersRequest {
            endpoint: String::new(),
            created_from: t(1),
            created_to: t(2),
        })
        .await
        .unwrap_err();
    invalid(err, "endpoint");
    let err = c
        .requeue_dead_letters(RequeueDeadLettersRequest {
            endpoint: "nobody".into(),
            created_from: t(1),
            created_to: t(2),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("\"nobody\""), "{err:?}");
    for (state, field) in [("off", "state"), ("disabled", "paused")] {
        let err = c
            .set_endpoint_state(SetEndpointStateRequest {
                endpoint: "a".into(),
                state: state.into(),
                reason: None,
            })
            .await
            .unwrap_err();
        invalid(err, field);
    }
    let err = c
        .set_endpoint_state(SetEndpointStateRequest {
            endpoint: "a".into(),
            state: "paused".into(),
            reason: Some("x".repeat(1001)),
        })
        .await
        .unwrap_err();
    invalid(err, "reason");
    let err = c
        .set_endpoint_state(SetEndpointStateRequest {
            endpoint: "nobody".into(),
            state: "paused".into(),
            reason: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // nothing was changed by the refused calls
    let a = c
        .list_endpoints(ListEndpointsRequest {})
        .await
        .unwrap()
        .into_inner()
        .endpoints;
    assert_eq!(find(&a, "a").state, "disabled");
    assert_eq!(a.len(), 2, "no row made for an unknown endpoint: {a:?}");
    e.done().await;
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_method_over_the_webhook_tables() {
        super::every_method_over_the_webhook_tables(super::Dialect::Postgres).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_is_invalid_argument_naming_the_field() {
        super::bad_input_is_invalid_argument_naming_the_field(super::Dialect::Postgres).await
    }
}

mod mysql {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_method_over_the_webhook_tables() {
        super::every_method_over_the_webhook_tables(super::Dialect::MySql).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_is_invalid_argument_naming_the_field() {
        super::bad_input_is_invalid_argument_naming_the_field(super::Dialect::MySql).await
    }
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_method_over_the_webhook_tables() {
        super::every_method_over_the_webhook_tables(super::Dialect::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_input_is_invalid_argument_naming_the_field() {
        super::bad_input_is_invalid_argument_naming_the_field(super::Dialect::Sqlite).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_health_and_reflection_name_the_service() {
    let config = QueryServerConfig {
        tokens: vec![TOKEN.into()],
        ..QueryServerConfig::default()
    };
    let (e, mut c) = served(Dialect::Sqlite, config).await;
    rows(&e.sql).await;
    let err = c.list_endpoints(ListEndpointsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut wrong = tonic::Request::new(SetEndpointStateRequest {
        endpoint: "a".into(),
        state: "enabled".into(),
        reason: None,
    });
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer wrong-token".parse().unwrap());
    let err = c.set_endpoint_state(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut request = tonic::Request::new(ListEndpointsRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let list = c.list_endpoints(request).await.unwrap().into_inner();
    assert_eq!(
        find(&list.endpoints, "a").state,
        "disabled",
        "the refused call changed nothing"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(e.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "terra.ingest.v1.WebhookDeliveries".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // reflection knows the service (grpcurl works without the .proto)
    let set: prost_types::FileDescriptorSet =
        prost::Message::decode(terra_query::server::FILE_DESCRIPTOR_SET).unwrap();
    assert!(set.file.iter().any(|f| {
        f.service
            .iter()
            .any(|s| s.name.as_deref() == Some("WebhookDeliveries"))
    }));
    e.done().await;
}
