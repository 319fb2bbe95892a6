use super::*;
use crate::cli::{ObjectArgs, SqlArgs};

fn file(text: &str) -> FileSettings {
    toml::from_str(text).unwrap()
}

fn args() -> ServeArgs {
    ServeArgs {
        signing_secret: Some("whsec_flag".into()),
        ..ServeArgs::default()
    }
}

#[test]
fn defaults() {
    let s = resolve(FileSettings::default(), args(), None, false).unwrap();
    assert_eq!(s.data_dir, PathBuf::from("data"));
    assert_eq!(s.http_addr.to_string(), "0.0.0.0:8080");
    assert_eq!(s.grpc_addr.to_string(), "127.0.0.1:50051");
    assert_eq!(
        s.log,
        LogUrl::Embedded {
            dir: PathBuf::from("data/log"),
            partitions: 4
        }
    );
    assert_eq!(s.ingress.body_limit, 16 * 1024 * 1024);
    assert!(s.ingress.sources["default"].allowlist.is_none());
}

#[test]
fn flags_win_over_the_file() {
    let f = file("http_addr = \"127.0.0.1:9000\"\nlog = \"kafka://k:9092/t\"\nbody_limit = 10\n");
    let mut a = args();
    a.http_addr = Some("127.0.0.1:9001".into());
    let s = resolve(f, a, None, false).unwrap();
    assert_eq!(s.http_addr.to_string(), "127.0.0.1:9001");
    assert!(matches!(s.log, LogUrl::Kafka(_)));
    assert_eq!(s.ingress.body_limit, 10);
}

#[test]
fn sources_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "whsec_one\n\nwhsec_two\n").unwrap();
    let f = file(&format!(
        "[sources.prod-eu]\nsecret_files = [{:?}]\nallow = [\"terra\", \"10.0.0.0/8\"]\ntrusted_proxies = [\"192.168.0.0/16\"]\ntolerance_secs = 60\n",
        secret_file
    ));
    let s = resolve(f, args(), None, false).unwrap();
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
        ("http_addr = \"nope\"", "http_addr (--http-addr"),
        ("log = \"redis://x\"", "setting log (--log"),
        (
            "[sources.a]\nsecrets = [\"whsec_SHOULD_NOT_PRINT\"]\nallow = [\"999.1.1.1\"]",
            "sources.a allow",
        ),
        (
            "[sources.a]\nsecrets = [\"whsec_SHOULD_NOT_PRINT\"]\ntrusted_proxies = [\"terra\"]",
            "sources.a trusted_proxies",
        ),
        (
            "[sources.a]\nallow = [\"terra\"]",
            "sources.a: no signing secret",
        ),
        ("[sources.Bad]\nsecrets = [\"x\"]", "sources.Bad"),
        (
            "[sources.a]\nsecret_env = [\"TERRA_TEST_UNSET_VAR\"]",
            "TERRA_TEST_UNSET_VAR is not set",
        ),
        (
            "[kafka]\n\"sasl.password\" = \"env:TERRA_TEST_UNSET_VAR\"",
            "kafka.sasl.password",
        ),
        ("body_limit = 0", "body_limit"),
    ];
    for (text, needle) in cases {
        let err = format!(
            "{:#}",
            resolve(file(text), args(), None, false).unwrap_err()
        );
        assert!(err.contains(needle), "{text}: {err}");
        assert!(!err.contains("SHOULD_NOT_PRINT"), "{err}");
    }
    let unknown = toml::from_str::<FileSettings>("http_adr = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("http_adr"), "{unknown}");
}

#[test]
fn ingress_without_any_secret_refuses_to_start() {
    let err = resolve(FileSettings::default(), ServeArgs::default(), None, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--signing-secret"), "{err}");
}

#[test]
fn standalone_generates_a_secret_once_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = ServeArgs {
        data_dir: Some(dir.path().to_owned()),
        ..ServeArgs::default()
    };
    let first = resolve(FileSettings::default(), a.clone(), None, true).unwrap();
    let path = first.generated_secret.clone().unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("whsec_") && text.len() > 40);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let second = resolve(FileSettings::default(), a, None, true).unwrap();
    let header = SigningSecret::new(text.trim()).unwrap().sign(5, b"x");
    assert!(
        second.ingress.sources["default"]
            .verifier
            .verify(Some(&header), b"x", 5)
            .is_ok()
    );
}

#[test]
fn kafka_properties_from_file_and_env() {
    let mut table = BTreeMap::new();
    table.insert("security.protocol".to_owned(), "SASL_SSL".to_owned());
    table.insert("sasl.username".to_owned(), "file".to_owned());
    let env = vec![
        (
            "TERRA_INGEST_KAFKA_SASL_USERNAME".to_owned(),
            "env-user".to_owned(),
        ),
        (
            "TERRA_INGEST_KAFKA_SASL_MECHANISM".to_owned(),
            "SCRAM-SHA-512".to_owned(),
        ),
        ("UNRELATED".to_owned(), "x".to_owned()),
    ];
    let props = kafka_properties(table, env.into_iter()).unwrap();
    assert_eq!(
        props,
        vec![
            ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
            ("sasl.username".to_owned(), "env-user".to_owned()),
            ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
        ]
    );
}

#[test]
fn sql_settings_default_to_sqlite_in_the_data_dir_and_name_bad_values() {
    let s = resolve_sql(&FileSettings::default(), SqlArgs::default(), Path::new("d")).unwrap();
    assert_eq!(s.config.url, "sqlite://d/terra.db");
    assert_eq!(s.config.schema, "terra");
    assert_eq!(s.batch_size, 1000);
    let f = file(
        "sql = \"postgres://h/db\"\nsql_schema = \"ours\"\nsupabase = true\nbatch_size = 50\n",
    );
    let s = resolve_sql(&f, SqlArgs::default(), Path::new("d")).unwrap();
    assert_eq!(s.config.schema, "ours");
    assert_eq!(s.config.variant, terra_schema::Variant::Supabase);
    assert_eq!(s.batch_size, 50);
    for (text, setting) in [
        ("sql = \"oracle://u:pw@h/db\"\n", "setting sql"),
        (
            "sql = \"mysql://h/db\"\nsupabase = true\n",
            "setting supabase",
        ),
        ("batch_size = 0\n", "setting batch_size"),
        ("batch_wait_ms = 0\n", "setting batch_wait_ms"),
        ("sql_schema = \"a;b\"\n", "sql_schema"),
    ] {
        let err = resolve_sql(&file(text), SqlArgs::default(), Path::new("d"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(setting), "{text}: {err}");
        assert!(!err.contains("pw@"), "{err}");
    }
}

#[test]
fn object_settings_default_to_a_folder_and_supabase_presets_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let s = resolve_objects(
        &FileSettings::default(),
        ObjectArgs::default(),
        dir.path(),
        false,
    )
    .unwrap();
    assert_eq!(
        s.store.url,
        format!("file://{}", dir.path().join("objects").display())
    );
    assert!(s.sqs.is_none());
    assert_eq!(s.sink.expires_in, Duration::from_secs(600));
    let s = resolve_objects(
        &FileSettings::default(),
        ObjectArgs::default(),
        dir.path(),
        true,
    )
    .unwrap();
    assert_eq!(s.store.url, "s3://terra-payloads");
    assert!(
        s.store.s3_path_style,
        "Supabase Storage wants path-style requests"
    );
    let args = ObjectArgs {
        objects: Some("s3://b".into()),
        sqs_queue_url: Some("https://sqs.eu-west-1.amazonaws.com/1/q".into()),
        presign_expiry_secs: Some(60),
        ..ObjectArgs::default()
    };
    let s = resolve_objects(&FileSettings::default(), args, dir.path(), false).unwrap();
    assert_eq!(
        s.sqs.unwrap().queue_url,
        "https://sqs.eu-west-1.amazonaws.com/1/q"
    );
    assert_eq!(s.sink.expires_in, Duration::from_secs(60));
    for (args, setting) in [
        (
            ObjectArgs {
                objects: Some("ftp://x".into()),
                ..ObjectArgs::default()
            },
            "setting objects",
        ),
        (
            ObjectArgs {
                s3_endpoint: Some("http://127.0.0.1:9000".into()),
                ..ObjectArgs::default()
            },
            "s3_allow_http",
        ),
        (
            ObjectArgs {
                presign_expiry_secs: Some(0),
                ..ObjectArgs::default()
            },
            "presign_expiry_secs",
        ),
    ] {
        let err = resolve_objects(&FileSettings::default(), args, dir.path(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains(setting), "{err}");
    }
}

#[test]
fn ingress_limits_from_file_and_flags_and_bad_ones_named() {
    let f = file(
        "ops_addr = \"127.0.0.1:9091\"\nheader_read_timeout_ms = 2500\nmax_connections = 10\nreplay_cache_entries = 0\nrejection_logs_per_sec = 3\n",
    );
    let mut a = args();
    a.max_connections = Some(20);
    a.request_timeout_ms = Some(900);
    let s = resolve(f, a, None, false).unwrap();
    assert_eq!(s.ops_addr.unwrap().to_string(), "127.0.0.1:9091");
    let limits = &s.ingress.limits;
    assert_eq!(limits.header_read_timeout, Duration::from_millis(2500));
    assert_eq!(limits.request_timeout, Duration::from_millis(900));
    assert_eq!(limits.max_connections, 20, "the flag wins");
    assert_eq!(s.ingress.replay_cache_entries, 0);
    assert_eq!(s.ingress.rejection_logs_per_sec, 3);

    for (text, named) in [
        ("max_in_flight_bytes = 1000\n", "max_in_flight_bytes"),
        ("max_connections = 0\n", "max_connections"),
        ("body_read_timeout_ms = 0\n", "body_read_timeout_ms"),
        ("ops_addr = \"nope\"\n", "ops_addr"),
    ] {
        let err = format!(
            "{:#}",
            resolve(file(text), args(), None, false).unwrap_err()
        );
        assert!(err.contains(named), "{text}: {err}");
    }
}
