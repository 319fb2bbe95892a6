use std::time::Duration;

use clap::Parser;

use super::*;
use crate::settings::tests::load_with;
use crate::settings::{LogFormat, query, resolve_batches, resolve_ingress, resolve_sql};

/// One setting of each section, its file text, environment variable and flag, each layer
/// with its own value; `read` gets the value from the merged configuration.
struct Case {
    file: &'static str,
    env: (&'static str, &'static str),
    flag: [&'static str; 2],
    read: fn(&Config) -> String,
    default: &'static str,
    from_file: &'static str,
}

const CASES: &[Case] = &[
    Case {
        file: "[ingress]\nbody_limit = 1000\n",
        env: ("TERRA_INGEST_BODY_LIMIT", "2000"),
        flag: ["--body-limit", "3000"],
        read: |c| c.ingress.body_limit.to_string(),
        default: "16777216",
        from_file: "1000",
    },
    Case {
        file: "data_dir = \"file\"\n",
        env: ("TERRA_INGEST_DATA_DIR", "env"),
        flag: ["--data-dir", "flag"],
        read: |c| c.data_dir.display().to_string(),
        default: "data",
        from_file: "file",
    },
    Case {
        file: "[sql]\nschema = \"file\"\n",
        env: ("TERRA_INGEST_SQL_SCHEMA", "env"),
        flag: ["--sql-schema", "flag"],
        read: |c| c.sql.schema.clone(),
        default: "terra",
        from_file: "file",
    },
    Case {
        file: "[projector]\nbatch_wait_ms = 1000\n",
        env: ("TERRA_INGEST_BATCH_WAIT_MS", "2000"),
        flag: ["--batch-wait-ms", "3000"],
        read: |c| c.projector.batch_wait_ms.to_string(),
        default: "50",
        from_file: "1000",
    },
    Case {
        file: "[objects]\nprefix = \"file\"\n",
        env: ("TERRA_INGEST_OBJECTS_PREFIX", "env"),
        flag: ["--objects-prefix", "flag"],
        read: |c| c.objects.prefix.clone(),
        default: "",
        from_file: "file",
    },
    Case {
        file: "[query]\npool_size = 1000\n",
        env: ("TERRA_INGEST_QUERY_POOL_SIZE", "2000"),
        flag: ["--query-pool-size", "3000"],
        read: |c| c.query.pool_size.to_string(),
        default: "8",
        from_file: "1000",
    },
    Case {
        file: "[telemetry]\nlog_format = \"json\"\n",
        env: ("TERRA_INGEST_LOG_FORMAT", "text"),
        flag: ["--log-format", "json"],
        read: |c| format!("{:?}", c.telemetry.log_format),
        default: "Text",
        from_file: "Json",
    },
    Case {
        file: "[log]\nurl = \"file\"\n",
        env: ("TERRA_INGEST_LOG", "env"),
        flag: ["--log", "flag"],
        read: |c| c.log.url.clone(),
        default: "embedded",
        from_file: "file",
    },
];

#[test]
fn defaults_then_the_file_then_the_environment_then_the_flags() {
    for case in CASES {
        let read = |file: &str, env: &[(&str, &str)], flags: &[&str]| {
            let args = [&["standalone"][..], flags].concat();
            let config = load_with(file, &args, env).unwrap_or_else(|e| panic!("{e:#}"));
            (case.read)(&config)
        };
        let (var, env_value) = case.env;
        let flag_value = case.flag[1];
        assert_eq!(read("", &[], &[]), case.default, "{var}: the default");
        assert_eq!(read(case.file, &[], &[]), case.from_file, "{var}: the file");
        let from_env = read(case.file, &[case.env], &[]);
        assert_eq!(
            from_env.to_lowercase(),
            env_value,
            "{var}: env over the file"
        );
        let from_flag = read(case.file, &[case.env], &case.flag);
        assert_eq!(
            from_flag.to_lowercase(),
            flag_value,
            "{var}: the flag over env"
        );
        // the nested spelling of the same key sits between the file and the named variable
        let (section_key, _) = case.file.split_once(" = ").unwrap();
        let nested = match section_key.strip_prefix('[') {
            Some(rest) => {
                let (section, key) = rest.split_once("]\n").unwrap();
                format!("TERRA_INGEST_{}__{}", section, key).to_uppercase()
            }
            None => continue,
        };
        let nested_value = if env_value.parse::<u64>().is_ok() {
            "4000"
        } else if var == "TERRA_INGEST_LOG_FORMAT" {
            "text"
        } else {
            "nested"
        };
        let value = read(case.file, &[(&nested, nested_value)], &[]);
        assert_eq!(value.to_lowercase(), nested_value, "{nested} over the file");
        let value = read(case.file, &[(&nested, nested_value), case.env], &[]);
        assert_eq!(value.to_lowercase(), env_value, "{var} over {nested}");
    }
}

#[test]
fn a_variable_counts_only_for_a_command_that_has_its_flag() {
    // `query` has no --body-limit: its variable is not read there, bad value or not
    let env = [("TERRA_INGEST_BODY_LIMIT", "not a number")];
    let config = load_with("", &["query"], &env).unwrap();
    assert_eq!(config.ingress.body_limit, 16 * 1024 * 1024);
    // --http-addr is the ingress's in `ingress`, the projector's in `project sql`
    let env = [("TERRA_INGEST_HTTP_ADDR", "127.0.0.1:7000")];
    let ingress = load_with("", &["ingress"], &env).unwrap();
    assert_eq!(ingress.ingress.http_addr.to_string(), "127.0.0.1:7000");
    assert_eq!(ingress.projector.http_addr.to_string(), "0.0.0.0:9090");
    let projector = load_with("", &["project", "sql"], &env).unwrap();
    assert_eq!(projector.projector.http_addr.to_string(), "127.0.0.1:7000");
    assert_eq!(projector.ingress.http_addr.to_string(), "0.0.0.0:8080");
    // a list variable is split like its flag
    let env = [("TERRA_INGEST_ALLOW", "terra,10.0.0.0/8")];
    let config = load_with("", &["ingress"], &env).unwrap();
    assert_eq!(
        config.ingress.sources["default"].allow,
        ["terra", "10.0.0.0/8"]
    );
    // switches: a variable may turn off what the file turned on
    let file = "[query]\ninsecure_allow_unauthenticated = true\n";
    let env = [("TERRA_INGEST_INSECURE_ALLOW_UNAUTHENTICATED", "false")];
    assert!(
        !load_with(file, &["query"], &env)
            .unwrap()
            .query
            .insecure_allow_unauthenticated
    );
    assert!(
        load_with(file, &["query"], &[])
            .unwrap()
            .query
            .insecure_allow_unauthenticated
    );
}

#[test]
fn standard_variables_come_below_the_file() {
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4317"),
        ("AWS_DEFAULT_REGION", "eu-west-2"),
    ];
    let config = load_with("", &["project", "objects"], &env).unwrap();
    assert_eq!(
        config.telemetry.otlp_endpoint.as_deref(),
        Some("http://otel:4317")
    );
    assert_eq!(config.objects.s3_region, "eu-west-2");
    let both = [env[1], ("AWS_REGION", "eu-west-3")];
    let config = load_with("", &["project", "objects"], &both).unwrap();
    assert_eq!(config.objects.s3_region, "eu-west-3", "AWS_REGION wins");
    let file =
        "[telemetry]\notlp_endpoint = \"http://file:4317\"\n[objects]\ns3_region = \"file\"\n";
    let config = load_with(file, &["project", "objects"], &both).unwrap();
    assert_eq!(config.objects.s3_region, "file");
    assert_eq!(
        config.telemetry.otlp_endpoint.as_deref(),
        Some("http://file:4317")
    );
}

#[test]
fn a_higher_layer_giving_a_secret_replaces_its_file_twin_below() {
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("url");
    std::fs::write(&url_file, "postgres://file/db\n").unwrap();
    let file = format!("[sql]\nurl_file = {:?}\n", url_file.display().to_string());
    // the flag's value over the file's file, and the variable's file over the file's value
    let config = load_with(&file, &["migrate", "--sql", "postgres://flag/db"], &[]).unwrap();
    assert_eq!(
        resolve_sql(&config).unwrap().config.url,
        "postgres://flag/db"
    );
    let path = url_file.to_str().unwrap();
    let config = load_with(
        "[sql]\nurl = \"postgres://file/db\"\n",
        &["migrate"],
        &[("TERRA_INGEST_SQL_FILE", path)],
    )
    .unwrap();
    assert_eq!(
        resolve_sql(&config).unwrap().config.url,
        "postgres://file/db"
    );
    // the flag over its variable's twin (clap used to refuse the pair)
    let config = load_with(
        "",
        &["migrate", "--sql", "postgres://flag/db"],
        &[("TERRA_INGEST_SQL_FILE", path)],
    )
    .unwrap();
    assert_eq!(
        resolve_sql(&config).unwrap().config.url,
        "postgres://flag/db"
    );
    // a source's secrets: a flag replaces secret_env and secret_files from the file
    let file = "[ingress.sources.default]\nsecret_env = [\"TERRA_TEST_UNSET_VAR\"]\nsecret_files = [\"/nonexistent\"]\ntolerance_secs = 60\n";
    let config = load_with(file, &["ingress", "--signing-secret", "whsec_flag"], &[]).unwrap();
    let source = &resolve_ingress(&config, false).unwrap().ingress.sources["default"];
    assert_eq!(source.verifier.tolerance_secs(), 60, "the rest is kept");
    let header = terra_core::SigningSecret::new("whsec_flag")
        .unwrap()
        .sign(1, b"{}");
    assert!(source.verifier.verify(Some(&header), b"{}", 1).is_ok());
}

#[test]
fn the_query_service_settings_that_were_flags_only_come_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key, ca) = (
        write("cert.pem", "CERT"),
        write("key.pem", "KEY"),
        write("ca.pem", "CA"),
    );
    let key_file = write("token-key", "sealing-key\n");
    let file = format!(
        "[query]\ngrpc_addr = \"0.0.0.0:50052\"\ntokens = [\"a-token-of-16-chars\", \"another-token-of-16\"]\ntls_cert = {cert:?}\ntls_key = {key:?}\ntls_client_ca = {ca:?}\ninsecure_allow_unauthenticated = true\ninsecure_allow_plaintext_tokens = true\ntoken_secret_file = {key_file:?}\n"
    );
    let config = load_with(&file, &["query"], &[]).unwrap();
    assert_eq!(config.query.grpc_addr.to_string(), "0.0.0.0:50052");
    let server = query::server_config(&config.query).unwrap();
    assert_eq!(
        server.tokens,
        ["a-token-of-16-chars", "another-token-of-16"]
    );
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(
        (&tls.cert[..], &tls.key[..], tls.client_ca.as_deref()),
        (&b"CERT"[..], &b"KEY"[..], Some(&b"CA"[..]))
    );
    assert!(server.insecure_allow_unauthenticated && server.insecure_allow_plaintext_tokens);
    let from_file = query::token_key(&config.query, dir.path()).unwrap();
    let from_flag = query::token_key(
        &load_with("", &["query", "--query-token-secret", "sealing-key"], &[])
            .unwrap()
            .query,
        dir.path(),
    )
    .unwrap();
    assert_eq!(from_file.seal(&"x"), from_flag.seal(&"x"));
    // the nested environment reaches them too
    let env = [("TERRA_INGEST_QUERY__TOKEN_FILE", key_file.as_str())];
    let config = load_with("", &["query"], &env).unwrap();
    assert_eq!(
        config.query.token_file.as_deref(),
        Some(std::path::Path::new(&key_file))
    );
    // half a TLS pair is refused by name, wherever it comes from
    let half = format!("[query]\ntls_cert = {cert:?}\n");
    let err = query::server_config(&load_with(&half, &["query"], &[]).unwrap().query)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("query.tls_cert (--grpc-tls-cert") && err.contains("query.tls_key"),
        "{err}"
    );
}

#[test]
fn each_command_accepts_only_the_flags_it_uses() {
    let parse = |args: &[&str]| {
        crate::cli::Cli::try_parse_from(std::iter::once("terra-ingest").chain(args.iter().copied()))
    };
    for (command, foreign) in [
        (&["query"][..], "--body-limit"),
        (&["query"], "--signing-secret"),
        (&["query"], "--log"),
        (&["query"], "--batch-size"),
        (&["query"], "--http-addr"),
        (&["ingress"], "--grpc-addr"),
        (&["ingress"], "--sql"),
        (&["project", "objects"], "--sql"),
        (&["project", "sql"], "--objects"),
        (&["migrate"], "--log"),
        (&["migrate"], "--batch-size"),
        (&["rebuild", "sql"], "--batch-wait-ms"),
    ] {
        let args = [command, &[foreign, "1"]].concat();
        let err = parse(&args).unwrap_err();
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::UnknownArgument,
            "{args:?}"
        );
    }
    // and what they use they accept
    for args in [
        &[
            "query",
            "--grpc-addr",
            "127.0.0.1:1",
            "--sql",
            "sqlite://x",
            "--migrate",
        ][..],
        &["query", "--objects", "file://x", "--query-pool-size", "2"],
        &[
            "ingress",
            "--body-limit",
            "1",
            "--log",
            "embedded",
            "--kafka",
            "a=b",
        ],
        &[
            "project",
            "objects",
            "--supabase",
            "--http-addr",
            "127.0.0.1:1",
        ],
        &["rebuild", "sql", "--batch-size", "10", "--log", "embedded"],
        &["--log-format", "json", "migrate", "--sql", "sqlite://x"],
    ] {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
}

#[test]
fn the_example_config_file_loads() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/terra-ingest.example.toml"
    );
    let env = [
        ("TERRA_INGEST_SIGNING_SECRET", "whsec_from_env"),
        ("TERRA_PROD_EU_SECRET", "whsec_prod"),
    ];
    let flags = Flags::parse(&["standalone"]).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let config = load_from(Some(std::path::Path::new(example)), &env, &flags).unwrap();
    assert_eq!(config.telemetry.log_format, LogFormat::Text);
    assert_eq!(
        resolve_batches(&config).unwrap().wait,
        Duration::from_millis(50)
    );
}
