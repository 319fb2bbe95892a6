//! Terra's own verifiers, from the registries, accept what terra-ingest signs (issue 14 §5):
//! the Python SDK (PyPI `terra-python`, `tests/verify_terra_sdk.py`, in moto's venv:
//! `TERRA_TEST_PYTHON`) and the JavaScript SDK (npm `terra-api`, `tests/verify_terra_js.js`,
//! `NODE_PATH` = `TERRA_TEST_TERRA_API_JS`), both installed by tests/run-all.sh. Deliveries
//! come from `terra-ingest send` and from the webhook destination (`project webhooks` with
//! `--webhook-url` to a loopback receiver), for every fixture, this new ones
//! included; a tampered copy must be refused by both, so the check can fail.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BIN, start, terra_ingest, text};

const SECRET: &str = "e2e-terra-sdk-secret";
const FIXTURES: [&str; 9] = [
    "activity",
    "auth_cancelled",
    "hormone",
    "lab_report_completed",
    "lab_report_failed",
    "planned_workout_current",
    "route",
    "s3_upload",
    "sleep",
];

type Captured = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A loopback receiver keeping every request's `terra-signature` and exact body.
async fn capture() -> (String, Captured) {
    let captured: Captured = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = captured.clone();
    let app = axum::Router::new().fallback(
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let header = headers
                    .get("terra-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                state.lock().unwrap().push((header, body.to_vec()));
                axum::http::StatusCode::OK
            }
        },
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), captured)
}

/// What each SDK says of one delivery: `(python, javascript)`.
fn verdicts(dir: &Path, header: &str, body: &[u8]) -> (String, String) {
    let file = dir.join("body.json");
    std::fs::write(&file, body).unwrap();
    let file = file.to_str().unwrap();
    let python = std::env::var("TERRA_TEST_PYTHON").expect(
        "TERRA_TEST_PYTHON (moto's venv, with terra-python; tests/run-all.sh sets it; tests that need it have `moto` in their names)",
    );
    let node_path = std::env::var("TERRA_TEST_TERRA_API_JS")
        .expect("TERRA_TEST_TERRA_API_JS (node_modules with npm's terra-api; tests/run-all.sh installs it and sets it)");
    let tests = format!("{}/../../tests", env!("CARGO_MANIFEST_DIR"));
    let run = |command: &mut Command| {
        let out = command.stderr(Stdio::inherit()).output().unwrap();
        assert!(out.status.success(), "{command:?}");
        text(&out.stdout).trim().to_owned()
    };
    let py = run(Command::new(&python).args([
        &format!("{tests}/verify_terra_sdk.py"),
        "terra",
        SECRET,
        file,
        header,
    ]));
    let js = run(Command::new("node").env("NODE_PATH", &node_path).args([
        &format!("{tests}/verify_terra_js.js"),
        SECRET,
        file,
        header,
    ]));
    (py, js)
}

fn check_all(dir: &Path, deliveries: &[(String, Vec<u8>)], what: &str) {
    assert!(!deliveries.is_empty());
    for (header, body) in deliveries {
        let (py, js) = verdicts(dir, header, body);
        assert_eq!(
            (py.as_str(), js.as_str()),
            ("ok", "ok"),
            "{what}: {}",
            text(body)
        );
        // the same signature over other bytes: refused by both
        let mut tampered = body.clone();
        tampered.push(b' ');
        let (py, js) = verdicts(dir, header, &tampered);
        assert!(
            py.starts_with("refused") && js.starts_with("refused"),
            "{what}: {py} / {js}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn terras_python_and_js_sdks_verify_send_and_the_webhook_destination_on_moto_venv() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();

    // 1. `terra-ingest send`, straight to the receiver
    let (url, captured) = capture().await;
    for name in FIXTURES {
        let out = terra_ingest(
            cwd,
            &["send", "--url", &url, "--fixture", name, "--secret", SECRET],
        );
        assert!(out.status.success(), "send {name}: {}", text(&out.stderr));
    }
    let sent = captured.lock().unwrap().clone();
    assert_eq!(sent.len(), FIXTURES.len());
    for (name, (_, body)) in FIXTURES.iter().zip(&sent) {
        assert_eq!(
            Some(body.as_slice()),
            terra_core::fixtures::get(name),
            "exact bytes"
        );
    }
    check_all(cwd, &sent, "send");

    // 2. the webhook destination: the same fixtures through the ingress into the log, then
    // `project webhooks` to the receiver
    let server = start(
        cwd,
        &["ingress", "--signing-secret", SECRET, "--data-dir", "d"],
    );
    let ingress = format!("http://{}/webhook", server.addr);
    for name in FIXTURES {
        let out = terra_ingest(
            cwd,
            &[
                "send",
                "--url",
                &ingress,
                "--fixture",
                name,
                "--secret",
                SECRET,
            ],
        );
        assert!(out.status.success(), "send {name}: {}", text(&out.stderr));
    }
    drop(server);
    let (url, captured) = capture().await;
    std::fs::write(cwd.join("secret"), SECRET).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "project",
            "webhooks",
            "--log",
            "embedded:d/log",
            "--sql",
            &format!("sqlite://{}", cwd.join("webhooks.db").display()),
            "--webhook-url",
            &url,
            "--webhook-secret-file",
            "secret",
            "--webhook-allow-cidr",
            "127.0.0.0/8",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while captured.lock().unwrap().len() < FIXTURES.len() {
        assert!(
            Instant::now() < deadline,
            "the destination delivered every event"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let delivered = captured.lock().unwrap().clone();
    let mut bodies: Vec<&[u8]> = delivered.iter().map(|(_, b)| b.as_slice()).collect();
    let mut expected: Vec<&[u8]> = FIXTURES
        .iter()
        .map(|n| terra_core::fixtures::get(n).unwrap())
        .collect();
    bodies.sort();
    expected.sort();
    assert_eq!(bodies, expected, "every event forwarded byte for byte");
    check_all(cwd, &delivered, "webhook destination");
}
