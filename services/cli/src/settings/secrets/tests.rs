use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use clap::Parser;

use super::*;
use crate::cli::{Cli, QueryArgs};
use crate::settings::tests::{config, load_with};
use crate::settings::{query, resolve_ingress, resolve_log, resolve_sql};

/// In every secret these tests give, so a leak is found whatever part of it leaked.
const MARK: &str = "S3CR3T0123456789abcdef";

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("terra-ingest").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn assert_hidden(what: &str, debug: String) {
    assert!(!debug.contains(MARK), "{what} prints a secret: {debug}");
}

#[test]
fn secret_settings_never_print_through_debug() {
    let url = format!("postgres://app:{MARK}@db:5432/terra?sslpassword={MARK}");
    let token = format!("{MARK}-token");
    let kafka_password = format!("sasl.password={MARK}");
    for args in [
        vec![
            "standalone",
            "--signing-secret",
            MARK,
            "--sql",
            &url,
            "--grpc-token",
            &token,
            "--query-token-secret",
            MARK,
        ],
        vec![
            "ingress",
            "--signing-secret",
            MARK,
            "--kafka",
            &kafka_password,
        ],
        vec!["project", "sql", "--sql", &url],
        vec!["migrate", "--sql", &url],
        vec!["query", "--sql", &url, "--grpc-token", &token],
        vec!["send", "--secret", MARK, "--fixture", "sleep"],
        vec![
            "verify",
            "--secret",
            MARK,
            "--header",
            "t=1,v1=00",
            "--file",
            "f",
        ],
    ] {
        assert_hidden(&args.join(" "), format!("{:?}", cli(&args)));
    }

    let file = format!(
        "[sql]\nurl = \"{url}\"\n[log.kafka]\n\"sasl.password\" = \"{MARK}\"\n[ingress.sources.a]\nsecrets = [\"{MARK}\"]\n[query]\ntokens = [\"{token}\"]\ntoken_secret = \"{MARK}\"\n"
    );
    let c = config(&file, &["ingress", "--signing-secret", MARK]);
    assert_hidden("Config", format!("{c:?}"));
    let settings = resolve_ingress(&c, false).unwrap();
    let log = resolve_log(&c).unwrap();
    assert!(
        log.kafka_properties
            .iter()
            .any(|(name, value)| name == "sasl.password" && value == MARK),
        "the value still reaches librdkafka"
    );
    assert_hidden("IngressSettings", format!("{settings:?}"));
    assert_hidden("LogSettings", format!("{log:?}"));
    let sql = resolve_sql(&c).unwrap();
    assert_eq!(sql.config.url, url, "the URL itself is kept");
    assert_hidden("SqlSettings", format!("{sql:?}"));

    let flags = config(
        "",
        &[
            "query",
            "--grpc-token",
            &token,
            "--query-token-secret",
            MARK,
        ],
    );
    let query = QueryArgs {
        grpc_tokens: vec![token.as_str().into()],
        query_token_secret: Some(MARK.into()),
        ..Default::default()
    };
    assert_hidden("QueryArgs", format!("{query:?}"));
    let server = query::server_config(&flags.query).unwrap();
    assert_hidden("QueryServerConfig", format!("{server:?}"));
    let dir = tempfile::tempdir().unwrap();
    let key = query::token_key(&flags.query, dir.path()).unwrap();
    assert_hidden("TokenKey", format!("{key:?}"));
    let from_file = query::server_config(&c.query).unwrap();
    assert_hidden("QueryServerConfig", format!("{from_file:?}"));
    let tls = terra_query::TlsFiles {
        cert: b"cert".to_vec(),
        key: MARK.as_bytes().to_vec(),
        client_ca: None,
    };
    assert_hidden("TlsFiles", format!("{tls:?}"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn secret_files_are_read_trimmed_and_refused_together_with_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let url = format!("postgres://app:{MARK}@db/terra");
    let url_file = write(dir.path(), "sql", &format!("{url}\n"));
    let url_path = url_file.to_str().unwrap();
    // every check of `command`'s settings, as an error message
    let error = |toml: &str, args: &[&str]| {
        let result = load_with(toml, args, &[]).and_then(|c| {
            resolve_sql(&c)?;
            Ok(c)
        });
        format!("{:#}", result.unwrap_err())
    };

    // --sql-file (and sql.url_file in the config file)
    let sql = resolve_sql(&config("", &["migrate", "--sql-file", url_path])).unwrap();
    assert_eq!(sql.config.url, url);
    let file = format!("[sql]\nurl_file = {url_path:?}\n");
    assert_eq!(
        resolve_sql(&config(&file, &["migrate"]))
            .unwrap()
            .config
            .url,
        url
    );
    let err = error("", &["migrate", "--sql", &url, "--sql-file", url_path]);
    assert!(
        err.contains("--sql") && err.contains("--sql-file") && err.contains("not both"),
        "{err}"
    );
    assert!(!err.contains(MARK), "{err}");
    // one file giving both is refused the same way
    let err = error(
        &format!("[sql]\nurl = {url:?}\nurl_file = {url_path:?}\n"),
        &["migrate"],
    );
    assert!(
        err.contains("sql.url_file") && err.contains("not both"),
        "{err}"
    );
    assert!(!err.contains(MARK), "{err}");
    let empty = write(dir.path(), "empty", "\n");
    let err = error("", &["migrate", "--sql-file", empty.to_str().unwrap()]);
    assert!(err.contains("url_file") && err.contains("empty"), "{err}");

    // --signing-secret-file
    let secret_file = write(dir.path(), "signing", &format!("whsec_{MARK}\n"));
    let secret_path = secret_file.to_str().unwrap();
    let c = config("", &["ingress", "--signing-secret-file", secret_path]);
    let settings = resolve_ingress(&c, false).unwrap();
    let header = terra_core::SigningSecret::new(format!("whsec_{MARK}"))
        .unwrap()
        .sign(7, b"{}");
    assert!(
        settings.ingress.sources["default"]
            .verifier
            .verify(Some(&header), b"{}", 7)
            .is_ok()
    );
    let err = format!(
        "{:#}",
        load_with(
            "",
            &[
                "ingress",
                "--signing-secret",
                MARK,
                "--signing-secret-file",
                secret_path
            ],
            &[]
        )
        .unwrap_err()
    );
    assert!(
        err.contains("--signing-secret")
            && err.contains("--signing-secret-file")
            && err.contains("not both"),
        "{err}"
    );
    assert!(!err.contains(MARK), "{err}");

    // --grpc-token-file (and query.token_file in the config file)
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("{MARK}-one\n\n  {MARK}-two  \n"),
    );
    let tokens_path = tokens.to_str().unwrap();
    for c in [
        config("", &["query", "--grpc-token-file", tokens_path]),
        config(
            &format!("[query]\ntoken_file = {tokens_path:?}\n"),
            &["query"],
        ),
    ] {
        let server = query::server_config(&c.query).unwrap();
        assert_eq!(
            server.tokens,
            [format!("{MARK}-one"), format!("{MARK}-two")]
        );
    }
    let three = format!("{MARK}-three");
    let err = format!(
        "{:#}",
        load_with(
            "",
            &[
                "query",
                "--grpc-token-file",
                tokens_path,
                "--grpc-token",
                &three
            ],
            &[]
        )
        .unwrap_err()
    );
    assert!(
        err.contains("--grpc-token")
            && err.contains("--grpc-token-file")
            && err.contains("not both"),
        "{err}"
    );

    // --query-token-secret-file: the same key as the value
    let key_file = write(dir.path(), "key", &format!("{MARK}\n"));
    let key_path = key_file.to_str().unwrap();
    let from_file = config("", &["query", "--query-token-secret-file", key_path]);
    let from_value = config("", &["query", "--query-token-secret", MARK]);
    let a = query::token_key(&from_file.query, dir.path()).unwrap();
    let b = query::token_key(&from_value.query, dir.path()).unwrap();
    assert_eq!(a.seal(&"x"), b.seal(&"x"));
    assert!(!dir.path().join(query::TOKEN_KEY_FILE).exists());
    let err = format!(
        "{:#}",
        load_with(
            "",
            &[
                "query",
                "--query-token-secret",
                MARK,
                "--query-token-secret-file",
                key_path
            ],
            &[]
        )
        .unwrap_err()
    );
    assert!(
        err.contains("--query-token-secret") && err.contains("--query-token-secret-file"),
        "{err}"
    );
    let both = config(
        &format!("[query]\ntoken_secret = \"{MARK}\"\ntoken_secret_file = {key_path:?}\n"),
        &["query", "--data-dir", d],
    );
    let err = format!(
        "{:#}",
        query::token_key(&both.query, dir.path()).unwrap_err()
    );
    assert!(
        err.contains("query.token_secret (--query-token-secret")
            && err.contains("query.token_secret_file (--query-token-secret-file"),
        "{err}"
    );

    // Kafka: `file:` values, trimmed
    let password = write(dir.path(), "kafka", &format!("{MARK}\n"));
    let file = format!(
        "[log.kafka]\n\"sasl.password\" = \"file:{}\"\n",
        password.display()
    );
    let props = resolve_log(&config(&file, &["ingress"]))
        .unwrap()
        .kafka_properties;
    assert_eq!(props.0, [("sasl.password".to_owned(), MARK.to_owned())]);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_data_dir_and_the_generated_secrets_are_private_under_umask_022() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("nested/data");
    let secret = crate::settings::generated_default_secret(&data).unwrap();
    query::token_key(&crate::settings::QuerySection::default(), &data).unwrap();
    assert_eq!(mode(&root.path().join("nested")), 0o700);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&data.join(query::TOKEN_KEY_FILE)), 0o600);
    // a data dir left readable by an earlier version is tightened at start
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    crate::settings::private_data_dir(&data, true).unwrap();
    assert_eq!(mode(&data), 0o700);
}
