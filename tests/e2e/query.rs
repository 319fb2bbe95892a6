//! The gRPC query service of `standalone`: every fixture sent over HTTP with `send` is found
//! through the API with byte-identical bodies, a watcher sees each new payload once, and an
//! off-the-shelf client (Python grpcio with server reflection, from moto's venv) lists the
//! services and calls a method.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use terra_query::proto::query_service_client::QueryServiceClient;
use terra_query::proto::{
    GetPayloadRequest, GetUserRequest, ListPayloadsRequest, WatchPayloadsRequest, get_payload_chunk,
};
use terra_testkit::FIXTURE_USER;

use super::{fixtures_dir, start, start_with_env, terminate, terra_ingest, text};

const ORDERING_MS: i64 = 1_780_000_000_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Payload ids a body produces, and whether its stored body is the webhook body itself.
pub(super) fn expected(body: &[u8]) -> (Vec<String>, bool) {
    let c = terra_core::classify(body).unwrap();
    if c.group == terra_core::EventGroup::Data && !terra_core::is_report_scoped(&c.event_type) {
        let ids = c
            .records
            .iter()
            .map(|r| {
                terra_core::keys::data_payload_id(
                    c.version.as_deref(),
                    &c.event_type,
                    c.user_id.as_deref().unwrap(),
                    r,
                )
            })
            .collect();
        (ids, c.records.len() == 1)
    } else {
        let base = terra_core::keys::event_payload_id(
            c.version.as_deref(),
            &c.event_type,
            c.user_id.as_deref(),
            ORDERING_MS,
        );
        if c.user_id.is_some() {
            return (vec![base], true);
        }
        // without a user: the suffix of the event's identity (lab reports: their event_id;
        // else, without a trace id, the body's hash)
        let key = match c
            .event_id
            .filter(|_| terra_core::is_report_scoped(&c.event_type))
        {
            Some(event_id) => event_id,
            None => format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body))
            ),
        };
        let identity = terra_projector::plan::identity(
            terra_projector::plan::PayloadKind::Misc,
            None,
            &c.event_type,
            &key,
        );
        (vec![terra_core::keys::with_suffix(&base, &identity)], true)
    }
}

#[tokio::test]
async fn every_sent_fixture_is_found_through_grpc_with_its_exact_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let grpc_addr = format!("127.0.0.1:{port}");
    let mut server = start(
        dir.path(),
        &[
            "standalone",
            "--grpc-addr",
            &grpc_addr,
            "--batch-wait-ms",
            "5",
        ],
    );
    let mut client = loop {
        match tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break QueryServiceClient::new(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut watch = client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap()
        .into_inner();

    let mut all_ids = BTreeSet::new();
    let mut checks = Vec::new();
    let webhook = format!("http://{}/webhook", server.addr);
    let mut names: Vec<String> = std::fs::read_dir(format!("{}/webhooks", fixtures_dir()))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    for name in &names {
        let body = std::fs::read(format!("{}/webhooks/{name}.json", fixtures_dir())).unwrap();
        let out = terra_ingest(
            dir.path(),
            &[
                "send",
                "--url",
                &webhook,
                "--fixture",
                name,
                "-H",
                &format!("X-Terra-Ordering-Timestamp: {ORDERING_MS}"),
            ],
        );
        assert!(
            text(&out.stdout).starts_with("200"),
            "{name}: {}",
            text(&out.stdout)
        );
        let (ids, exact) = expected(&body);
        for id in ids {
            all_ids.insert(id.clone());
            checks.push((name.clone(), id, exact.then(|| body.clone())));
        }
    }

    // the watcher sees each new payload once
    let mut watched = Vec::new();
    while watched.len() < all_ids.len() {
        let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        watched.push(event.payload.unwrap().payload_id);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(800), watch.next())
            .await
            .is_err(),
        "nothing more"
    );
    let unique: BTreeSet<String> = watched.iter().cloned().collect();
    assert_eq!(unique.len(), watched.len(), "no duplicate");
    assert_eq!(unique, all_ids, "every payload");

    // every body through GetPayload, byte for byte
    for (name, id, exact) in &checks {
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = loop {
            match client
                .get_payload(GetPayloadRequest {
                    payload_id: id.clone(),
                })
                .await
            {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    let mut body = Vec::new();
                    while let Some(chunk) = stream.next().await {
                        if let Some(get_payload_chunk::Chunk::Data(d)) = chunk.unwrap().chunk {
                            body.extend_from_slice(&d);
                        }
                    }
                    break body;
                }
                // the object projector may still be writing it
                Err(status)
                    if status.code() == tonic::Code::Unavailable && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => panic!("{name} {id}: {status:?}"),
            }
        };
        let stored =
            std::fs::read(dir.path().join("data/objects").join(format!("{id}.json"))).unwrap();
        assert_eq!(body, stored, "{name}: the body is the stored object");
        if let Some(sent) = exact {
            assert_eq!(
                &body, sent,
                "{name}: the stored object is the webhook as sent"
            );
        }
    }
    let listed = client
        .list_payloads(ListPayloadsRequest {
            user_id: "0d3c9a52-77f1-4b8e-9f0a-2b6c41e5d7a3".into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payloads;
    assert!(listed.len() >= 8);

    assert!(terminate(&mut server).success());
}

/// An off-the-shelf client, Python grpcio through server reflection only. The Python is
/// moto's venv's (`TERRA_TEST_PYTHON`): `moto` in the name, so tests/run-all.sh skips it
/// without moto.
#[tokio::test]
async fn grpcio_from_the_moto_venv_reads_the_query_service_through_reflection() {
    let python = std::env::var("TERRA_TEST_PYTHON").expect(
        "TERRA_TEST_PYTHON must name a python with grpcio (tests/run-all.sh installs it in moto's venv)",
    );
    let dir = tempfile::tempdir().unwrap();
    let grpc_addr = format!("127.0.0.1:{}", free_port());
    let mut server = start(
        dir.path(),
        &[
            "standalone",
            "--grpc-addr",
            &grpc_addr,
            "--batch-wait-ms",
            "5",
        ],
    );
    let webhook = format!("http://{}/webhook", server.addr);
    let out = terra_ingest(
        dir.path(),
        &["send", "--url", &webhook, "--fixture", "sleep"],
    );
    assert!(
        text(&out.stdout).starts_with("200"),
        "{}",
        text(&out.stdout)
    );
    // once the SQL projector has the user
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
        {
            let mut client = QueryServiceClient::new(channel);
            let user = client
                .get_user(GetUserRequest {
                    user_id: FIXTURE_USER.into(),
                })
                .await;
            if user.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the user never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = std::process::Command::new(python)
        .arg("-c")
        .arg(REFLECTION_CLIENT)
        .arg(&grpc_addr)
        .arg(FIXTURE_USER)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services: Vec<&str> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        services.contains(&"terra.ingest.v1.QueryService")
            && services.contains(&"terra.ingest.v1.WebhookDeliveries")
            && services.contains(&"grpc.health.v1.Health"),
        "{services:?}"
    );
    assert_eq!(report["provider"], "GARMIN");
    assert_eq!(report["health"], "SERVING");
    assert!(terminate(&mut server).success());
}

const REFLECTION_CLIENT: &str = r#"
import json, sys, grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf import message_factory
channel = grpc.insecure_channel(sys.argv[1])
db = ProtoReflectionDescriptorDatabase(channel)
services = list(db.get_services())
pool = DescriptorPool(db)
method = pool.FindServiceByName("terra.ingest.v1.QueryService").FindMethodByName("GetUser")
Request = message_factory.GetMessageClass(method.input_type)
Response = message_factory.GetMessageClass(method.output_type)
call = channel.unary_unary("/terra.ingest.v1.QueryService/GetUser", request_serializer=Request.SerializeToString, response_deserializer=Response.FromString)
user = call(Request(user_id=sys.argv[2]), timeout=10)
health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="terra.ingest.v1.QueryService"), timeout=10)
print(json.dumps({"services": services, "provider": user.provider, "health": health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}))
"#;

#[test]
fn the_query_service_refuses_a_public_address_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let out = terra_ingest(
        dir.path(),
        &[
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "0.0.0.0:0",
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("without authentication")
            && stderr.contains("--insecure-allow-unauthenticated"),
        "{stderr}"
    );
    // a short token is refused by name, and never echoed
    let out = terra_ingest(
        dir.path(),
        &[
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-token",
            "short-secret",
        ],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("setting query.tokens") && !stderr.contains("short-secret"),
        "{stderr}"
    );
}

#[test]
fn hostile_bearer_tokens_in_plaintext_on_a_public_address_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = "a-long-enough-token-for-e2e";
    // it must refuse at start: a process still running after 20 s has started serving
    let mut child = std::process::Command::new(super::BIN)
        .args([
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "0.0.0.0:0",
            "--grpc-token",
            token,
        ])
        .current_dir(dir.path())
        .env_remove("TERRA_INGEST_SIGNING_SECRET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("standalone served bearer tokens in plaintext on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("in plaintext")
            && stderr.contains("--grpc-tls-cert")
            && stderr.contains("--grpc-insecure-allow-plaintext-tokens")
            && !stderr.contains(token),
        "{stderr}"
    );
    // the explicit opt-in (here through its environment twin) starts
    let mut server = start_with_env(
        dir.path(),
        &[
            "standalone",
            // any free port (nothing connects to it): a port picked beforehand could be taken
            // by another process before the server binds it
            "--grpc-addr",
            "0.0.0.0:0",
            "--grpc-token",
            token,
        ],
        &[("TERRA_INGEST_GRPC_INSECURE_ALLOW_PLAINTEXT_TOKENS", "true")],
    );
    assert!(terminate(&mut server).success());
}

#[tokio::test]
async fn limits_standalone_applies_the_query_limit_settings() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_addr = format!("127.0.0.1:{}", free_port());
    let mut server = start_with_env(
        dir.path(),
        &[
            "standalone",
            "--grpc-addr",
            &grpc_addr,
            "--grpc-max-watchers",
            "1",
            "--query-pool-size",
            "2",
        ],
        &[("TERRA_INGEST_GRPC_TIMEOUT_SECS", "5")],
    );
    let mut client = loop {
        match tonic::transport::Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break QueryServiceClient::new(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let _watching = client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap();
    let err = client
        .watch_payloads(WatchPayloadsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("--grpc-max-watchers"), "{err:?}");
    // a bad value is refused by name before anything starts
    let out = terra_ingest(
        dir.path(),
        &[
            "standalone",
            "--http-addr",
            "127.0.0.1:0",
            "--query-pool-size",
            "0",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("setting query.pool_size (--query-pool-size"),
        "{}",
        text(&out.stderr)
    );
    assert!(terminate(&mut server).success());
}
