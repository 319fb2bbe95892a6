use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use clap::Parser;

use super::*;
use crate::cli::{Cli, QueryArgs, SqlArgs};
use crate::settings::{FileSettings, resolve, resolve_projector, resolve_sql};

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
        vec!["ingress", "--signing-secret", MARK],
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

    let file: FileSettings = toml::from_str(&format!(
        "sql = \"{url}\"\n[kafka]\n\"sasl.password\" = \"{MARK}\"\n[sources.a]\nsecrets = [\"{MARK}\"]\n"
    ))
    .unwrap();
    assert_hidden("FileSettings", format!("{file:?}"));
    let serve = crate::cli::ServeArgs {
        signing_secret: Some(MARK.into()),
        ..Default::default()
    };
    let settings = resolve(file, serve, None, false).unwrap();
    assert!(
        settings
            .kafka_properties
            .iter()
            .any(|(name, value)| name == "sasl.password" && value == MARK),
        "the value still reaches librdkafka"
    );
    assert_hidden("Settings", format!("{settings:?}"));

    let file: FileSettings = toml::from_str(&format!("sql = \"{url}\"\n")).unwrap();
    let projector = resolve_projector(file, Default::default(), None).unwrap();
    assert_eq!(projector.sql.config.url, url, "the URL itself is kept");
    assert_hidden("ProjectorSettings", format!("{projector:?}"));

    let query = QueryArgs {
        grpc_tokens: vec![token.as_str().into()],
        query_token_secret: Some(MARK.into()),
        ..Default::default()
    };
    assert_hidden("QueryArgs", format!("{query:?}"));
    let server = crate::query::server_config(&query, &FileSettings::default()).unwrap();
    assert_hidden("QueryServerConfig", format!("{server:?}"));
    let dir = tempfile::tempdir().unwrap();
    let key = crate::query::token_key(&query, dir.path()).unwrap();
    assert_hidden("TokenKey", format!("{key:?}"));
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
    let url = format!("postgres://app:{MARK}@db/terra");
    let url_file = write(dir.path(), "sql", &format!("{url}\n"));

    // --sql-file (and sql_file in the config file)
    let from_file = SqlArgs {
        sql_file: Some(url_file.clone()),
        ..SqlArgs::default()
    };
    let sql = resolve_sql(&FileSettings::default(), from_file.clone(), dir.path()).unwrap();
    assert_eq!(sql.config.url, url);
    let file: FileSettings = toml::from_str(&format!(
        "sql_file = {:?}\n",
        url_file.display().to_string()
    ))
    .unwrap();
    assert_eq!(
        resolve_sql(&file, SqlArgs::default(), dir.path())
            .unwrap()
            .config
            .url,
        url
    );
    let both = SqlArgs {
        sql: Some(url.as_str().into()),
        ..from_file
    };
    let err = format!(
        "{:#}",
        resolve_sql(&FileSettings::default(), both, dir.path()).unwrap_err()
    );
    assert!(
        err.contains("--sql") && err.contains("--sql-file") && err.contains("not both"),
        "{err}"
    );
    assert!(!err.contains(MARK), "{err}");
    let empty = write(dir.path(), "empty", "\n");
    let err = format!(
        "{:#}",
        resolve_sql(
            &FileSettings::default(),
            SqlArgs {
                sql_file: Some(empty),
                ..SqlArgs::default()
            },
            dir.path()
        )
        .unwrap_err()
    );
    assert!(err.contains("sql_file") && err.contains("empty"), "{err}");

    // --signing-secret-file
    let secret_file = write(dir.path(), "signing", &format!("whsec_{MARK}\n"));
    let serve = crate::cli::ServeArgs {
        signing_secret_file: Some(secret_file.clone()),
        ..Default::default()
    };
    let settings = resolve(FileSettings::default(), serve.clone(), None, false).unwrap();
    let header = terra_core::SigningSecret::new(format!("whsec_{MARK}"))
        .unwrap()
        .sign(7, b"{}");
    assert!(
        settings.ingress.sources["default"]
            .verifier
            .verify(Some(&header), b"{}", 7)
            .is_ok()
    );
    let both = crate::cli::ServeArgs {
        signing_secret: Some(MARK.into()),
        ..serve
    };
    let err = format!(
        "{:#}",
        resolve(FileSettings::default(), both, None, false).unwrap_err()
    );
    assert!(
        err.contains("--signing-secret")
            && err.contains("--signing-secret-file")
            && err.contains("not both"),
        "{err}"
    );
    assert!(!err.contains(MARK), "{err}");

    // --grpc-token-file
    let tokens = write(
        dir.path(),
        "tokens",
        &format!("{MARK}-one\n\n  {MARK}-two  \n"),
    );
    let query = QueryArgs {
        grpc_token_file: Some(tokens.clone()),
        ..Default::default()
    };
    let server = crate::query::server_config(&query, &FileSettings::default()).unwrap();
    assert_eq!(
        server.tokens,
        [format!("{MARK}-one"), format!("{MARK}-two")]
    );
    let both = QueryArgs {
        grpc_tokens: vec![format!("{MARK}-three").as_str().into()],
        ..query
    };
    let err = format!(
        "{:#}",
        crate::query::server_config(&both, &FileSettings::default()).unwrap_err()
    );
    assert!(
        err.contains("--grpc-token")
            && err.contains("--grpc-token-file")
            && err.contains("not both"),
        "{err}"
    );

    // --query-token-secret-file: the same key as the value
    let key_file = write(dir.path(), "key", &format!("{MARK}\n"));
    let from_file = QueryArgs {
        query_token_secret_file: Some(key_file),
        ..Default::default()
    };
    let from_value = QueryArgs {
        query_token_secret: Some(MARK.into()),
        ..Default::default()
    };
    let a = crate::query::token_key(&from_file, dir.path()).unwrap();
    let b = crate::query::token_key(&from_value, dir.path()).unwrap();
    assert_eq!(a.seal(&"x"), b.seal(&"x"));
    assert!(!dir.path().join(crate::query::TOKEN_KEY_FILE).exists());
    let both = QueryArgs {
        query_token_secret: Some(MARK.into()),
        ..from_file
    };
    let err = format!(
        "{:#}",
        crate::query::token_key(&both, dir.path()).unwrap_err()
    );
    assert!(
        err.contains("--query-token-secret") && err.contains("--query-token-secret-file"),
        "{err}"
    );

    // Kafka: `file:` values, trimmed
    let password = write(dir.path(), "kafka", &format!("{MARK}\n"));
    let mut table = BTreeMap::new();
    table.insert(
        "sasl.password".to_owned(),
        format!("file:{}", password.display()),
    );
    let props = crate::settings::kafka_properties(table, std::iter::empty()).unwrap();
    assert_eq!(props, [("sasl.password".to_owned(), MARK.to_owned())]);
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
    crate::query::token_key(&QueryArgs::default(), &data).unwrap();
    assert_eq!(mode(&root.path().join("nested")), 0o700);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&secret), 0o600);
    assert_eq!(mode(&data.join(crate::query::TOKEN_KEY_FILE)), 0o600);
    // a data dir left readable by an earlier version is tightened at start
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    crate::settings::private_data_dir(&data, true).unwrap();
    assert_eq!(mode(&data), 0o700);
}
