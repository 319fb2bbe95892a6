//! The operator tools and configuration of the binary: `verify` on captured deliveries,
//! configuration errors that name the bad setting, and the commented example config file.

use std::process::Command;

use super::{BIN, fixtures_dir, start_with_env, terminate, terra_ingest, text};

#[test]
fn verify_checks_captured_deliveries_offline() {
    let cwd = tempfile::tempdir().unwrap();
    let vectors: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{}/signature-vectors.json", fixtures_dir())).unwrap(),
    )
    .unwrap();
    for case in vectors["cases"].as_array().unwrap() {
        let body_file = cwd.path().join("body");
        std::fs::write(&body_file, case["body"].as_str().unwrap()).unwrap();
        let secrets: Vec<String> = match case.get("secrets") {
            Some(list) => list
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect(),
            None => vec![case["secret"].as_str().unwrap().to_owned()],
        };
        let mut args = vec![
            "verify".to_owned(),
            "--header".into(),
            case["header"].as_str().unwrap().into(),
            "--file".into(),
            body_file.display().to_string(),
            "--at".into(),
            case["now"].to_string(),
        ];
        for secret in secrets {
            args.extend(["--secret".to_owned(), secret]);
        }
        let out = Command::new(BIN).args(&args).output().unwrap();
        let expect = case["expect"].as_str().unwrap();
        if expect == "valid" {
            assert!(
                out.status.success(),
                "{}: {}",
                case["name"],
                text(&out.stdout)
            );
        } else {
            assert_eq!(out.status.code(), Some(1), "{}", case["name"]);
            assert!(
                text(&out.stdout).contains(expect),
                "{}: {}",
                case["name"],
                text(&out.stdout)
            );
        }
    }
    // a capture checked today, long after it was signed, is outside the window
    let body_file = cwd.path().join("body");
    std::fs::write(&body_file, "{}").unwrap();
    let header = terra_core::SigningSecret::new("s")
        .unwrap()
        .sign(1_000, b"{}");
    let out = Command::new(BIN)
        .args([
            "verify",
            "--secret",
            "s",
            "--header",
            &header,
            "--file",
            body_file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("timestamp_outside_tolerance"));
    let missing = Command::new(BIN)
        .args([
            "verify",
            "--secret",
            "s",
            "--header",
            &header,
            "--file",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn bad_configuration_names_the_setting() {
    let cwd = tempfile::tempdir().unwrap();
    let no_secret = terra_ingest(cwd.path(), &["ingress"]);
    assert!(!no_secret.status.success());
    assert!(
        text(&no_secret.stderr).contains("--signing-secret"),
        "{}",
        text(&no_secret.stderr)
    );
    let bad_addr = terra_ingest(
        cwd.path(),
        &[
            "ingress",
            "--signing-secret",
            "s",
            "--http-addr",
            "everywhere",
        ],
    );
    assert!(
        text(&bad_addr.stderr).contains("--http-addr"),
        "{}",
        text(&bad_addr.stderr)
    );
    let config = cwd.path().join("c.toml");
    std::fs::write(&config, "http_adr = \"0.0.0.0:1\"\n").unwrap();
    let typo = terra_ingest(
        cwd.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "ingress",
            "--signing-secret",
            "s",
        ],
    );
    assert!(
        text(&typo.stderr).contains("http_adr"),
        "{}",
        text(&typo.stderr)
    );
    let bad_log = terra_ingest(
        cwd.path(),
        &[
            "ingress",
            "--signing-secret",
            "s",
            "--log",
            "kafka://nohost/t",
        ],
    );
    assert!(
        text(&bad_log.stderr).contains("--log"),
        "{}",
        text(&bad_log.stderr)
    );
}

#[tokio::test]
async fn the_example_config_file_runs() {
    let example = format!(
        "{}/../../deploy/terra-ingest.example.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let cwd = tempfile::tempdir().unwrap();
    let env = [
        ("TERRA_INGEST_SIGNING_SECRET", "whsec_from_env"),
        ("TERRA_PROD_EU_SECRET", "whsec_prod"),
    ];
    let mut server = start_with_env(cwd.path(), &["--config", &example, "ingress"], &env);
    for (path, secret) in [
        ("/webhook", "whsec_from_env"),
        ("/webhooks/prod-eu", "whsec_prod"),
    ] {
        let url = format!("http://{}{path}", server.addr);
        let out = terra_ingest(
            cwd.path(),
            &[
                "send",
                "--url",
                &url,
                "--secret",
                secret,
                "--fixture",
                "auth",
            ],
        );
        assert!(
            out.status.success(),
            "{path}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    assert!(terminate(&mut server).success());
}
