//! `[webhooks]`: endpoints from the config file and from the one-endpoint flags, and every
//! refusal naming the setting.

use std::time::Duration;

use secrecy::ExposeSecret;
use terra_sink_webhooks::{Ordering, SignatureMode};

use super::tests::load_with;
use super::*;

fn resolve(
    toml: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Option<terra_sink_webhooks::WebhookSettings>> {
    let mut full = vec!["project", "webhooks"];
    full.extend_from_slice(args);
    resolve_webhooks(&load_with(toml, &full, env)?)
}

fn error(toml: &str, args: &[&str]) -> String {
    format!("{:#}", resolve(toml, args, &[]).unwrap_err())
}

#[test]
fn no_endpoint_means_no_destination() {
    assert!(resolve("", &[], &[]).unwrap().is_none());
}

#[test]
fn endpoints_from_the_config_file_with_every_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "newest\nolder\n").unwrap();
    let toml = format!(
        r#"
[webhooks]
allow_cidrs = ["10.0.0.0/8", "127.0.0.1"]
disable_after = "2d"
probe_interval = "1m"
retention = "7d"

[[webhooks.endpoints]]
name = "backend"
url = "https://hooks.example.com/terra"
secret_files = ["{}"]
signature = "both"
events = ["activity", "authentication"]
sources = ["default"]
headers = {{ "X-Team" = "data" }}
timeout = "5s"
schedule = ["0s", "1m", "1h"]
ordering = "per_user"
max_in_flight = 4

[[webhooks.endpoints]]
name = "audit"
url = "http://audit.internal/hook"
secret_env = ["AUDIT_SECRET"]
"#,
        file.display()
    );
    // a variable that is not set is named
    let unset = resolve(&toml, &[], &[]);
    assert!(format!("{:#}", unset.unwrap_err()).contains("AUDIT_SECRET"));
    let s = {
        let toml = toml.replace("secret_env = [\"AUDIT_SECRET\"]", "secrets = [\"inline\"]");
        resolve(&toml, &[], &[]).unwrap().unwrap()
    };
    assert_eq!(s.endpoints.len(), 2);
    let e = &s.endpoints[0];
    assert_eq!(e.name, "backend");
    assert_eq!(
        e.secrets
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect::<Vec<_>>(),
        ["newest", "older"]
    );
    assert_eq!(e.signature, SignatureMode::Both);
    assert_eq!(e.filter.events, ["activity", "authentication"]);
    assert_eq!(e.headers[0].0.as_str(), "x-team");
    assert_eq!(e.timeout, Duration::from_secs(5));
    assert_eq!(e.schedule.delays(), [0, 60, 3600].map(Duration::from_secs));
    assert_eq!(e.ordering, Ordering::PerUser);
    assert_eq!(e.max_in_flight, 4);
    let defaults = &s.endpoints[1];
    assert_eq!(defaults.timeout, Duration::from_secs(8), "Terra's timeout");
    assert_eq!(defaults.schedule.attempts(), 8, "Terra's schedule");
    assert_eq!(s.allow_cidrs.len(), 2);
    assert_eq!(s.disable_after, Duration::from_secs(2 * 86_400));
    assert_eq!(s.probe_interval, Duration::from_secs(60));
    assert_eq!(s.retention, Some(Duration::from_secs(7 * 86_400)));
}

#[test]
fn retention_defaults_to_30_days_and_0s_keeps_everything() {
    let endpoint =
        "[[webhooks.endpoints]]\nname = \"a\"\nurl = \"https://a.example\"\nsecrets = [\"s\"]\n";
    let s = resolve(endpoint, &[], &[]).unwrap().unwrap();
    assert_eq!(s.retention, Some(Duration::from_secs(30 * 86_400)));
    let kept = format!("[webhooks]\nretention = \"0s\"\n{endpoint}");
    assert_eq!(resolve(&kept, &[], &[]).unwrap().unwrap().retention, None);
    let bad = format!("[webhooks]\nretention = \"30\"\n{endpoint}");
    let err = format!("{:#}", resolve(&bad, &[], &[]).unwrap_err());
    assert!(
        err.contains("webhooks.retention") && err.contains("no unit"),
        "{err}"
    );
}

#[test]
fn one_endpoint_from_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "s3cret\n").unwrap();
    let file = file.display().to_string();
    let s = resolve(
        "",
        &[
            "--webhook-url",
            "https://example.com/hook",
            "--webhook-secret-file",
            &file,
            "--webhook-retry-schedule",
            "0s,50ms,1s",
            "--webhook-allow-cidr",
            "127.0.0.0/8",
        ],
        &[],
    )
    .unwrap()
    .unwrap();
    assert_eq!(s.endpoints[0].name, "default");
    assert_eq!(s.endpoints[0].schedule.attempts(), 3);
    assert_eq!(s.allow_cidrs[0].to_string(), "127.0.0.0/8");
}

#[test]
fn bad_settings_are_refused_naming_them() {
    assert!(
        error("", &["--webhook-url", "https://example.com/h"]).contains("--webhook-secret-file")
    );
    assert!(error("", &["--webhook-retry-schedule", "0s"]).contains("--webhook-url"));
    let endpoint = |extra: &str| {
        format!(
            "[[webhooks.endpoints]]\nname = \"e\"\nurl = \"https://example.com/h\"\nsecrets = [\"s\"]\n{extra}"
        )
    };
    for (extra, wanted) in [
        ("signature = \"hmac\"", "signature"),
        ("ordering = \"fifo\"", "ordering"),
        ("timeout = \"60s\"", "timeout"),
        ("timeout = \"5 minutes\"", "timeout"),
        ("schedule = [\"0s\", \"5x\"]", "schedule"),
        (
            "headers = { \"terra-signature\" = \"forged\" }",
            "terra-signature",
        ),
        ("max_in_flight = 0", "max_in_flight"),
    ] {
        let e = error(&endpoint(extra), &[]);
        assert!(
            e.contains("webhooks.endpoints[0]") && e.contains(wanted),
            "{extra}: {e}"
        );
    }
    let e = error(
        "[[webhooks.endpoints]]\nname = \"e\"\nurl = \"ftp://example.com\"\nsecrets = [\"s\"]\n",
        &[],
    );
    assert!(e.contains("url"), "{e}");
    let e = error(
        &endpoint(
            "[[webhooks.endpoints]]\nname = \"e\"\nurl = \"https://x.example/h\"\nsecrets = [\"t\"]\n",
        ),
        &[],
    );
    assert!(e.contains("two endpoints share it"), "{e}");
    let e = error(
        &format!("[webhooks]\nallow_cidrs = [\"nope\"]\n{}", endpoint("")),
        &[],
    );
    assert!(e.contains("webhooks.allow_cidrs"), "{e}");
    let e = error(&endpoint("secret_files = [\"/nonexistent/secret\"]"), &[]);
    assert!(e.contains("/nonexistent/secret"), "{e}");
    // no secret ever appears in an error
    let e = error(
        &endpoint("signature = \"nope\"").replace("[\"s\"]", "[\"topsecretvalue\"]"),
        &[],
    );
    assert!(!e.contains("topsecretvalue"), "{e}");
}
