//! How the query service is served: bearer tokens, health, database outages (a SQLite table
//! taken away, a real Postgres server stopped) and mutual TLS, through real tonic clients.

mod support;

use std::time::Duration;

use sqlx::Executor;
use support::*;
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_query::proto::{GetPayloadRequest, GetUserRequest, ListPayloadsRequest};
use terra_query::{Query, QueryServerConfig, TokenKey};
use terra_runtime::CancellationToken;
use terra_schema::{Dialect, SqlConfig, SqlTarget};
use terra_sink_objects::{Store, StoreConfig};
use tonic::Code;
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_when_configured_and_health_answers() {
    let config = QueryServerConfig {
        tokens: vec!["a-long-enough-token-1".into()],
        ..QueryServerConfig::default()
    };
    let mut e = env(Dialect::Sqlite, config).await;
    let err = e
        .client
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(GetUserRequest {
        user_id: USER.into(),
    });
    request.metadata_mut().insert(
        "authorization",
        "Bearer a-long-enough-token-1".parse().unwrap(),
    );
    assert_eq!(
        e.client.get_user(request).await.unwrap_err().code(),
        Code::NotFound,
        "authenticated; no such user yet"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(e.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "terra.ingest.v1.QueryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    e.done().await;
}

/// A table taken away under the service (SQLite cannot be stopped like a server): calls
/// answer UNAVAILABLE, and the same service answers again once it is back. Health is not
/// checked here: it pings the database (`SELECT 1`), which a missing table does not fail; a
/// database that is really down turns health NOT_SERVING in
/// `a_stopped_database_server_is_unavailable_then_served_again_without_restart`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_is_unavailable_then_served_again() {
    let mut e = env(Dialect::Sqlite, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .map(|(_, b)| record(b, T0 * 1000))
            .collect(),
    )
    .await;
    // the SQLite file's tables go away (as a database that is down or being restored)
    e.sql
        .pool()
        .execute(format!("ALTER TABLE {} RENAME TO away", e.sql.table("terra_users")).as_str())
        .await
        .unwrap();
    let err = e
        .client
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    e.sql
        .pool()
        .execute(format!("ALTER TABLE away RENAME TO {}", e.sql.table("terra_users")).as_str())
        .await
        .unwrap();
    assert_eq!(
        e.client
            .get_user(GetUserRequest {
                user_id: USER.into()
            })
            .await
            .unwrap()
            .into_inner()
            .user_id,
        USER
    );
    e.done().await;
}

/// A real database server stopped under the service (a private Postgres cluster, so no other
/// test is disturbed): calls answer UNAVAILABLE and health turns NOT_SERVING; once the server
/// is back, the same service (no restart) answers and reports SERVING again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_server_is_unavailable_then_served_again_without_restart() {
    let pg = terra_testkit::PrivatePostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let e = env_on(pg.url(), None, dir, QueryServerConfig::default()).await;
    e.feed(
        fixtures()
            .iter()
            .map(|(_, b)| record(b, T0 * 1000))
            .collect(),
    )
    .await;
    let mut client = e.client.clone();
    let get_user = || {
        let mut client = e.client.clone();
        async move {
            client
                .get_user(GetUserRequest {
                    user_id: USER.into(),
                })
                .await
        }
    };
    let list = || {
        let mut client = e.client.clone();
        async move {
            client
                .list_payloads(ListPayloadsRequest {
                    user_id: USER.into(),
                    ..Default::default()
                })
                .await
        }
    };
    let served = list().await.unwrap().into_inner().payloads.len();
    assert!(served > 0);
    let health = tonic_health::pb::health_client::HealthClient::new(e.channel.clone());
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(tonic_health::pb::HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    const SERVICE: &str = "terra.ingest.v1.QueryService";
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(status(SERVICE).await, ServingStatus::Serving as i32);

    pg.down();
    for call in [get_user().await.map(|_| ()), list().await.map(|_| ())] {
        let err = call.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(!err.message().contains("127.0.0.1"), "{err:?}");
    }
    let err = client
        .get_payload(GetPayloadRequest {
            payload_id: "x.json".into(),
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    wait_until("health NOT_SERVING", || async {
        status(SERVICE).await == ServingStatus::NotServing as i32
    })
    .await;
    // the process itself stays alive (a liveness probe must not restart it for an outage)
    assert_eq!(status("").await, ServingStatus::Serving as i32);

    pg.up();
    wait_until("calls served again", || async { get_user().await.is_ok() }).await;
    assert_eq!(list().await.unwrap().into_inner().payloads.len(), served);
    wait_until("health SERVING", || async {
        status(SERVICE).await == ServingStatus::Serving as i32
    })
    .await;
    drop(pg);
}

async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PEM files for a CA, a server certificate for 127.0.0.1 and a client certificate, made with
/// the openssl command (Debian's).
fn certificates(dir: &std::path::Path) -> [Vec<u8>; 5] {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    // any extension makes an X.509 v3 certificate (rustls refuses v1)
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=terra-test-ca",
    ]);
    for name in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    [
        read("ca.pem"),
        read("server.pem"),
        read("server.key"),
        read("client.pem"),
        read("client.key"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_with_a_certificate() {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let certs_dir = tempfile::tempdir().unwrap();
    let [ca, server_cert, server_key, client_cert, client_key] = certificates(certs_dir.path());
    let dir = tempfile::tempdir().unwrap();
    let sql = SqlTarget::connect(&SqlConfig::new(format!(
        "sqlite://{}",
        dir.path().join("t.db").display()
    )))
    .unwrap();
    terra_schema::migrate(&sql).await.unwrap();
    let store = Store::open(&StoreConfig {
        url: dir.path().join("objects").display().to_string(),
        ..StoreConfig::default()
    })
    .unwrap();
    let config = QueryServerConfig {
        tls: Some(terra_query::TlsFiles {
            cert: server_cert,
            key: server_key,
            client_ca: Some(ca.clone()),
        }),
        ..QueryServerConfig::default()
    };
    // mutual TLS counts as authentication: any address may be bound
    assert!(config.check_bind("0.0.0.0:1".parse().unwrap()).is_ok());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopped = CancellationToken::new();
    let _stop = stopped.clone().drop_guard();
    tokio::spawn(terra_query::run(
        Query::new(sql, store, TokenKey::new("k")),
        config,
        listener,
        stopped,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let endpoint = |tls: ClientTlsConfig| {
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    let with_cert = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost")
        .identity(Identity::from_pem(&client_cert, &client_key));
    let channel = endpoint(with_cert).connect().await.unwrap();
    let err = QueryServiceClient::new(channel)
        .get_user(GetUserRequest {
            user_id: USER.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "through mutual TLS: {err:?}");
    // without a client certificate the handshake (or the first call) fails
    let without = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca))
        .domain_name("localhost");
    let refused = match endpoint(without).connect().await {
        Err(_) => true,
        Ok(channel) => QueryServiceClient::new(channel)
            .get_user(GetUserRequest {
                user_id: USER.into(),
            })
            .await
            .is_err_and(|e| e.code() != Code::NotFound),
    };
    assert!(refused, "a client without a certificate is refused");
}
