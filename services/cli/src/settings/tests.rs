use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use terra_core::SigningSecret;
use terra_eventlog::LogUrl;

use super::*;

/// The configuration from a config file's text, a command line (without the binary's name)
/// and environment variables.
pub(crate) fn load_with(toml: &str, args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Config> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    load_from(Some(&path), &env, &Flags::parse(args)?)
}

pub(crate) fn config(toml: &str, args: &[&str]) -> Config {
    load_with(toml, args, &[]).unwrap_or_else(|e| panic!("{toml} {args:?}: {e:#}"))
}

const INGRESS: &[&str] = &["ingress", "--signing-secret", "whsec_flag"];

/// Every check the ingress makes at start: its own, the log's.
fn ingress_error(toml: &str) -> String {
    let result = load_with(toml, INGRESS, &[]).and_then(|c| {
        resolve_ingress(&c, false)?;
        resolve_log(&c)
    });
    format!("{:#}", result.unwrap_err())
}

#[test]
fn defaults() {
    let c = config("", INGRESS);
    assert_eq!(c.data_dir, PathBuf::from("data"));
    let s = resolve_ingress(&c, false).unwrap();
    assert_eq!(s.http_addr.to_string(), "0.0.0.0:8080");
    assert_eq!(c.query.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(
        resolve_log(&c).unwrap().url,
        LogUrl::Embedded {
            dir: PathBuf::from("data/log"),
            partitions: 4
        }
    );
    assert_eq!(s.ingress.body_limit, 16 * 1024 * 1024);
    assert!(s.ingress.sources["default"].allowlist.is_none());
    // one default for the projectors' batches, the runner's
    assert_eq!(
        resolve_batches(&c).unwrap().wait,
        terra_projector::ProjectorConfig::new("x").batch_wait
    );
    assert_eq!(
        resolve_batches(&c).unwrap().linger,
        terra_projector::ProjectorConfig::new("x").batch_linger
    );
    assert_eq!(
        resolve_batches(&c).unwrap().max_lag,
        terra_projector::DEFAULT_MAX_LAG
    );
}

#[test]
fn flags_win_over_the_file() {
    let c = config(
        "[ingress]\nhttp_addr = \"127.0.0.1:9000\"\nbody_limit = 10\n[log]\nurl = \"kafka://k:9092/t\"\n",
        &[INGRESS, &["--http-addr", "127.0.0.1:9001"]].concat(),
    );
    let s = resolve_ingress(&c, false).unwrap();
    assert_eq!(s.http_addr.to_string(), "127.0.0.1:9001");
    assert!(matches!(resolve_log(&c).unwrap().url, LogUrl::Kafka(_)));
    assert_eq!(s.ingress.body_limit, 10);
}

#[test]
fn sources_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "whsec_one\n\nwhsec_two\n").unwrap();
    let c = config(
        &format!(
            "[ingress.sources.prod-eu]\nsecret_files = [{:?}]\nallow = [\"terra\", \"10.0.0.0/8\"]\ntrusted_proxies = [\"192.168.0.0/16\"]\ntolerance_secs = 60\n",
            secret_file
        ),
        INGRESS,
    );
    let s = resolve_ingress(&c, false).unwrap();
    let prod = &s.ingress.sources["prod-eu"];
    assert_eq!(prod.allowlist.as_ref().unwrap().len(), 10);
    assert_eq!(prod.trusted_proxies.len(), 1);
    assert_eq!(prod.verifier.tolerance_secs(), 60);
    let body = b"{}";
    for secret in ["whsec_one", "whsec_two"] {
        let header = SigningSecret::new(secret).unwrap().sign(100, body);
        assert!(
            prod.verifier.verify(Some(&header), body, 100).is_ok(),
            "{secret}"
        );
    }
}

#[test]
fn errors_name_the_setting_and_never_the_secret() {
    let cases = [
        ("[ingress]\nhttp_addr = \"nope\"", "http_addr (--http-addr"),
        ("[log]\nurl = \"redis://x\"", "setting log.url (--log"),
        (
            "[ingress.sources.a]\nsecrets = [\"whsec_SHOULD_NOT_PRINT\"]\nallow = [\"999.1.1.1\"]",
            "sources.a allow",
        ),
        (
            "[ingress.sources.a]\nsecrets = [\"whsec_SHOULD_NOT_PRINT\"]\ntrusted_proxies = [\"terra\"]",
            "sources.a trusted_proxies",
        ),
        (
            "[ingress.sources.a]\nallow = [\"terra\"]",
            "sources.a: no signing secret",
        ),
        ("[ingress.sources.Bad]\nsecrets = [\"x\"]", "sources.Bad"),
        (
            "[ingress.sources.a]\nsecret_env = [\"TERRA_TEST_UNSET_VAR\"]",
            "TERRA_TEST_UNSET_VAR is not set",
        ),
        (
            "[log.kafka]\n\"sasl.password\" = \"env:TERRA_TEST_UNSET_VAR\"",
            "kafka.sasl.password",
        ),
        ("[ingress]\nbody_limit = 0", "body_limit"),
        // a secret of the wrong type is named, not shown
        (
            "[ingress.sources.a]\nsecrets = [{ SHOULD_NOT_PRINT = 1 }]",
            "ingress.sources.a.secrets",
        ),
    ];
    for (text, needle) in cases {
        let err = ingress_error(text);
        assert!(err.contains(needle), "{text}: {err}");
        assert!(!err.contains("SHOULD_NOT_PRINT"), "{err}");
    }
    // a file of the flat shape before sections: each key says where it went, the URL with
    // its password not shown
    for (text, moved) in [
        ("http_addr = \"0.0.0.0:1\"", "[ingress] http_addr"),
        ("grpc_timeout_secs = 5", "[query] timeout_secs"),
        ("sql = \"postgres://u:SHOULD_NOT_PRINT@h/db\"", "[sql] url"),
        ("objects = \"s3://b\"", "[objects] url"),
        (
            "[kafka]\n\"sasl.password\" = \"SHOULD_NOT_PRINT\"",
            "[log.kafka]",
        ),
    ] {
        let err = format!("{:#}", load_with(text, INGRESS, &[]).unwrap_err());
        assert!(err.contains(moved), "{text}: {err}");
        assert!(!err.contains("SHOULD_NOT_PRINT"), "{err}");
    }
    for (text, unknown) in [
        ("http_adr = \"x\"", "http_adr"),
        ("[ingress]\nhttp_adr = \"x\"", "ingress.http_adr"),
        (
            "[ingress.sources.a]\nsecret = \"x\"",
            "ingress.sources.a.secret",
        ),
        ("[query]\ngrpc_token = \"x\"", "query.grpc_token"),
    ] {
        let err = format!("{:#}", load_with(text, INGRESS, &[]).unwrap_err());
        assert!(
            err.contains(unknown) && err.contains("unknown key"),
            "{err}"
        );
    }
}

#[test]
fn ingress_without_any_secret_refuses_to_start() {
    let err = resolve_ingress(&config("", &["ingress"]), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--signing-secret"), "{err}");
}

#[test]
fn standalone_generates_a_secret_once_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(
        "",
        &["standalone", "--data-dir", dir.path().to_str().unwrap()],
    );
    let first = resolve_ingress(&c, true).unwrap();
    let path = first.generated_secret.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("whsec_") && text.len() > 40);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let second = resolve_ingress(&c, true).unwrap();
    let header = SigningSecret::new(text.trim()).unwrap().sign(5, b"x");
    assert!(
        second.ingress.sources["default"]
            .verifier
            .verify(Some(&header), b"x", 5)
            .is_ok()
    );
}

#[test]
fn kafka_properties_from_file_env_and_flags() {
    let file = "[log.kafka]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.username\" = \"file\"\n\"client.id\" = \"file\"\n";
    let env = [
        ("TERRA_INGEST_KAFKA_SASL_USERNAME", "env-user"),
        ("TERRA_INGEST_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
        ("TERRA_INGEST_KAFKA_CLIENT_ID", "env"),
        ("UNRELATED", "x"),
    ];
    let c = load_with(file, &["ingress", "--kafka", "client.id=flag"], &env).unwrap();
    let props = resolve_log(&c).unwrap().kafka_properties;
    assert_eq!(
        props.0,
        vec![
            ("client.id".to_owned(), "flag".to_owned()),
            ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
            ("sasl.username".to_owned(), "env-user".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ]
    );
}

#[test]
fn sql_settings_default_to_sqlite_in_the_data_dir_and_name_bad_values() {
    let c = config("", &["migrate", "--data-dir", "d"]);
    let s = resolve_sql(&c).unwrap();
    assert_eq!(s.config.url, "sqlite://d/terra.db");
    assert_eq!(s.config.schema, "terra");
    assert_eq!(resolve_batches(&c).unwrap().size, 4000);
    let c = config(
        "[sql]\nurl = \"postgres://h/db\"\nschema = \"ours\"\nsupabase = true\n[projector]\nbatch_size = 50\n",
        &["migrate"],
    );
    let s = resolve_sql(&c).unwrap();
    assert_eq!(s.config.schema, "ours");
    assert_eq!(s.config.variant, terra_schema::Variant::Supabase);
    assert_eq!(resolve_batches(&c).unwrap().size, 50);
    for (text, setting) in [
        ("[sql]\nurl = \"oracle://u:pw@h/db\"\n", "setting sql.url"),
        (
            "[sql]\nurl = \"mysql://h/db\"\nsupabase = true\n",
            "setting sql.supabase",
        ),
        (
            "[projector]\nbatch_size = 0\n",
            "setting projector.batch_size",
        ),
        (
            "[projector]\nbatch_wait_ms = 0\n",
            "setting projector.batch_wait_ms",
        ),
        (
            "[projector]\nbatch_linger_ms = 10001\n",
            "setting projector.batch_linger_ms",
        ),
        ("[sql]\nschema = \"a;b\"\n", "sql.schema"),
    ] {
        let c = config(text, &["project", "sql"]);
        let err = resolve_sql(&c)
            .and_then(|_| resolve_batches(&c))
            .unwrap_err()
            .to_string();
        assert!(err.contains(setting), "{text}: {err}");
        assert!(!err.contains("pw@"), "{err}");
    }
}

#[test]
fn object_settings_default_to_a_folder_and_supabase_presets_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let objects = |args: &[&str]| {
        let command = [&["project", "objects", "--data-dir", data][..], args].concat();
        resolve_objects(&config("", &command))
    };
    let s = objects(&[]).unwrap();
    assert_eq!(
        s.store.url,
        format!("file://{}", dir.path().join("objects").display())
    );
    assert!(s.sqs.is_none());
    assert_eq!(s.sink.expires_in, Duration::from_secs(600));
    let s = objects(&["--supabase"]).unwrap();
    assert_eq!(s.store.url, "s3://terra-payloads");
    assert!(
        s.store.s3_path_style,
        "Supabase Storage wants path-style requests"
    );
    let s = objects(&[
        "--objects",
        "s3://b",
        "--sqs-queue-url",
        "https://sqs.eu-west-1.amazonaws.com/1/q",
        "--presign-expiry-secs",
        "60",
    ])
    .unwrap();
    assert_eq!(
        s.sqs.unwrap().queue_url,
        "https://sqs.eu-west-1.amazonaws.com/1/q"
    );
    assert_eq!(s.sink.expires_in, Duration::from_secs(60));
    for (args, setting) in [
        (&["--objects", "ftp://x"][..], "setting objects.url"),
        (&["--s3-endpoint", "http://127.0.0.1:9000"], "s3_allow_http"),
        (&["--presign-expiry-secs", "0"], "presign_expiry_secs"),
    ] {
        let err = objects(args).unwrap_err().to_string();
        assert!(err.contains(setting), "{err}");
    }
}

#[test]
fn ingress_limits_from_file_and_flags_and_bad_ones_named() {
    let c = config(
        "[ingress]\nops_addr = \"127.0.0.1:9091\"\nheader_read_timeout_ms = 2500\nmax_connections = 10\nreplay_cache_entries = 0\nrejection_logs_per_sec = 3\n",
        &[
            INGRESS,
            &["--max-connections", "20", "--request-timeout-ms", "900"],
        ]
        .concat(),
    );
    let s = resolve_ingress(&c, false).unwrap();
    assert_eq!(s.ops_addr.unwrap().to_string(), "127.0.0.1:9091");
    let limits = &s.ingress.limits;
    assert_eq!(limits.header_read_timeout, Duration::from_millis(2500));
    assert_eq!(limits.request_timeout, Duration::from_millis(900));
    assert_eq!(limits.max_connections, 20, "the flag wins");
    assert_eq!(s.ingress.replay_cache_entries, 0);
    assert_eq!(s.ingress.rejection_logs_per_sec, 3);

    for (text, named) in [
        (
            "[ingress]\nmax_in_flight_bytes = 1000\n",
            "max_in_flight_bytes",
        ),
        ("[ingress]\nmax_connections = 0\n", "max_connections"),
        (
            "[ingress]\nbody_read_timeout_ms = 0\n",
            "body_read_timeout_ms",
        ),
        ("[ingress]\nops_addr = \"nope\"\n", "ops_addr"),
    ] {
        let err = ingress_error(text);
        assert!(err.contains(named), "{text}: {err}");
    }
    // the ingress's own checks come back with the section, the flag and the variable
    let err = ingress_error("[ingress]\nmax_connections = 0\n");
    assert!(
        err.contains("ingress.max_connections (--max-connections, TERRA_INGEST_MAX_CONNECTIONS)"),
        "{err}"
    );
}

#[test]
fn the_query_limits_default_come_from_the_file_and_flags_win() {
    let none = config("", &["query"]);
    assert_eq!(
        query::limits(&none.query).unwrap(),
        terra_query::Limits::default()
    );
    assert_eq!(query::pool_size(&none.query).unwrap(), 8);
    let file = "[query]\ntimeout_secs = 5\nmax_watchers = 7\nmax_connection_age_secs = 600\npool_size = 3\n";
    let from_file = query::limits(&config(file, &["query"]).query).unwrap();
    assert_eq!(from_file.timeout, Duration::from_secs(5));
    assert_eq!(from_file.max_watchers, 7);
    assert_eq!(from_file.max_connection_age, Some(Duration::from_secs(600)));
    assert_eq!(
        query::pool_size(&config(file, &["query"]).query).unwrap(),
        3
    );
    let flags = config(
        file,
        &[
            "query",
            "--grpc-timeout-secs",
            "9",
            "--grpc-max-in-flight",
            "11",
            "--grpc-max-concurrent-streams",
            "12",
            "--grpc-keepalive-secs",
            "13",
            "--grpc-keepalive-timeout-secs",
            "14",
            "--grpc-max-connection-age-secs",
            "0",
            "--query-pool-size",
            "16",
        ],
    );
    assert_eq!(
        query::limits(&flags.query).unwrap(),
        terra_query::Limits {
            timeout: Duration::from_secs(9),
            max_in_flight: 11,
            max_watchers: 7,
            max_concurrent_streams: 12,
            keepalive_interval: Duration::from_secs(13),
            keepalive_timeout: Duration::from_secs(14),
            max_connection_age: None,
        }
    );
    assert_eq!(query::pool_size(&flags.query).unwrap(), 16);
    for (flag, names) in [
        (
            "--grpc-timeout-secs",
            "query.timeout_secs (--grpc-timeout-secs, TERRA_INGEST_GRPC_TIMEOUT_SECS)",
        ),
        (
            "--grpc-max-watchers",
            "query.max_watchers (--grpc-max-watchers",
        ),
        (
            "--grpc-max-in-flight",
            "query.max_in_flight (--grpc-max-in-flight",
        ),
        (
            "--grpc-max-concurrent-streams",
            "--grpc-max-concurrent-streams",
        ),
        ("--grpc-keepalive-secs", "--grpc-keepalive-secs"),
    ] {
        let err = query::limits(&config("", &["query", flag, "0"]).query)
            .unwrap_err()
            .to_string();
        assert!(err.contains(names), "{err}");
    }
    let err = query::pool_size(&config("", &["query", "--query-pool-size", "0"]).query)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--query-pool-size"), "{err}");
    // and they reach the server's settings, with the plaintext-token opt-in
    let server = query::server_config(
        &config(file, &["query", "--grpc-insecure-allow-plaintext-tokens"]).query,
    )
    .unwrap();
    assert!(server.insecure_allow_plaintext_tokens);
    assert_eq!(server.limits, from_file);
}

#[test]
fn one_name_table_for_keys_flags_and_variables() {
    let names = names::all();
    // every setting flag has a variable, and no two settings share one except
    // --http-addr (the ingress's or a projector's, never both in one command)
    let mut by_env: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (key, n) in names {
        if key == "log.kafka" {
            assert!(n.env.is_none(), "TERRA_INGEST_KAFKA_* instead");
            continue;
        }
        let env = n
            .env
            .as_deref()
            .unwrap_or_else(|| panic!("{key} has no variable"));
        by_env.entry(env).or_default().push(key);
    }
    for (env, keys) in by_env {
        assert!(
            keys.len() == 1 || env == "TERRA_INGEST_HTTP_ADDR",
            "{env}: {keys:?}"
        );
    }
    // the example file documents every setting
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/terra-ingest.example.toml"
    ))
    .unwrap();
    for key in names.keys() {
        let documented = match key.rsplit_once('.') {
            None => example.contains(&format!("{key} =")),
            Some(("ingress.sources.default", field)) => {
                example.contains("[ingress.sources.default]") && example.contains(field)
            }
            Some((section, field)) => {
                example.contains(&format!("[{section}]"))
                    && (example.contains(&format!("{field} =")) || key == "log.kafka")
            }
        };
        assert!(documented, "{key} is not in terra-ingest.example.toml");
    }
}
