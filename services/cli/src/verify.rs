//! `terra-ingest verify`: check a captured delivery offline.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use secrecy::ExposeSecret;
use terra_core::{SigningSecret, Verifier};

use crate::cli::VerifyArgs;

pub(crate) fn run(args: &VerifyArgs) -> ExitCode {
    let body = match std::fs::read(&args.file) {
        Ok(body) => body,
        Err(err) => {
            eprintln!(
                "error: failed to read --file {}: {err}",
                args.file.display()
            );
            return ExitCode::from(2);
        }
    };
    let mut secrets = Vec::new();
    for secret in &args.secret {
        match SigningSecret::new(secret.expose_secret()) {
            Ok(secret) => secrets.push(secret),
            Err(err) => {
                eprintln!("error: --secret: {err}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(path) = &args.secret_file {
        if !args.secret.is_empty() {
            eprintln!("error: give --secret or --secret-file, not both");
            return ExitCode::from(2);
        }
        match crate::settings::read_secret_file(path) {
            Ok(read) => secrets = read,
            Err(err) => {
                eprintln!("error: --secret-file {}: {err:#}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let now = args.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    match Verifier::new(secrets, args.tolerance_secs).verify(Some(&args.header), &body, now) {
        Ok(t) => {
            println!("valid: signed at t={t}, verified at {now}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("invalid: {} ({err})", err.code());
            ExitCode::FAILURE
        }
    }
}
