//! `terra-ingest send`: sign exact bytes with the current time, as Terra does, and POST them.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use secrecy::ExposeSecret;
use terra_core::{SigningSecret, fixtures};

use crate::cli::SendArgs;
use crate::settings;

pub(crate) async fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    let body: Vec<u8> = match (&args.file, &args.fixture) {
        (Some(path), _) => std::fs::read(path)
            .with_context(|| format!("failed to read --file {}", path.display()))?,
        (None, Some(name)) => fixtures::get(name)
            .with_context(|| {
                format!(
                    "--fixture {name:?} does not exist; the fixtures are: {}",
                    fixtures::names()
                )
            })?
            .to_vec(),
        (None, None) => bail!("give --file or --fixture"),
    };
    if args.secret.is_some() && args.secret_file.is_some() {
        bail!(
            "give --secret (TERRA_INGEST_SIGNING_SECRET) or --secret-file (TERRA_INGEST_SIGNING_SECRET_FILE), not both"
        );
    }
    let secret = match (args.secret, &args.secret_file) {
        (Some(secret), _) => SigningSecret::new(secret.expose_secret())
            .map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
        (None, Some(path)) => settings::read_secret_file(path)
            .with_context(|| format!("--secret-file {}", path.display()))?
            .into_iter()
            .next()
            .expect("read_secret_file returns at least one"),
        (None, None) => {
            let path = args.data_dir.join(settings::GENERATED_SECRET_FILE);
            let secrets = settings::read_secret_file(&path).with_context(|| {
                format!("no --secret given and no generated secret at {} (start `terra-ingest standalone` first, or pass --secret)", path.display())
            })?;
            secrets
                .into_iter()
                .next()
                .expect("read_secret_file returns at least one")
        }
    };
    let now = match args.at {
        Some(at) => at,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("system clock before 1970")?
            .as_secs() as i64,
    };
    let mut request = reqwest::Client::new()
        .post(&args.url)
        .header("terra-signature", secret.sign(now, &body))
        .header("content-type", "application/json")
        .body(body);
    for header in &args.headers {
        let (name, value) = header
            .split_once(':')
            .with_context(|| format!("--header {header:?} must look like `Name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("failed to POST to {}", args.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{}", status.as_u16());
    println!("{text}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
