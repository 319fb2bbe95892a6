//! Pre-signed S3 URLs checked as S3 checks them, by `tests/presigned_url.py` (botocore's
//! SigV4 code in moto's venv, `TERRA_TEST_PYTHON`): moto's server serves any URL, signed or
//! not, so a download proves nothing about the signature or the expiry.

use std::path::PathBuf;
use std::process::Command;

/// The region the tests' buckets are in.
pub const REGION: &str = "us-east-1";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/presigned_url.py")
}

/// S3's verdict on each URL at `now` (Unix seconds): `"ok"` or `"refused: <why>"`, with the
/// credentials of the environment (tests/moto.sh exports them).
pub fn verdicts(now: i64, urls: &[String]) -> Vec<String> {
    let python = std::env::var("TERRA_TEST_PYTHON").expect(
        "TERRA_TEST_PYTHON must name moto's venv python, with botocore (tests/run-all.sh sets it; tests that need it have `moto` in their names)",
    );
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let out = Command::new(python)
        .arg(script())
        .args([
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
            REGION.to_owned(),
            now.to_string(),
        ])
        .args(urls)
        .output()
        .expect("run tests/presigned_url.py");
    assert!(
        out.status.success(),
        "tests/presigned_url.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts.len(), urls.len(), "one verdict per URL");
    verdicts
}

/// The query parameter `name` of `url`, as written.
pub fn param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let query = url.split_once('?')?.1;
    query
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// Forgeries of a pre-signed URL, each of which S3 must refuse: another object, a changed
/// signature, a longer lifetime, a changed date, and the signature taken off.
pub fn tampered(url: &str) -> Vec<(&'static str, String)> {
    let signature = param(url, "X-Amz-Signature").expect("a signature");
    let flipped: String = signature
        .chars()
        .enumerate()
        .map(|(i, c)| match (i, c) {
            (0, '0') => '1',
            (0, _) => '0',
            (_, c) => c,
        })
        .collect();
    let expires = param(url, "X-Amz-Expires").expect("an expiry");
    let date = param(url, "X-Amz-Date").expect("a date");
    let (path, query) = url.split_once('?').expect("a query");
    let unsigned: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("X-Amz-Signature="))
        .collect();
    vec![
        (
            "another object",
            format!("{}-other.json?{query}", path.trim_end_matches(".json")),
        ),
        (
            "a changed signature",
            url.replace(
                &format!("X-Amz-Signature={signature}"),
                &format!("X-Amz-Signature={flipped}"),
            ),
        ),
        (
            "a longer lifetime",
            url.replace(&format!("X-Amz-Expires={expires}"), "X-Amz-Expires=604800"),
        ),
        (
            "a later date",
            url.replace(
                &format!("X-Amz-Date={date}"),
                &format!("X-Amz-Date={}", later(date)),
            ),
        ),
        ("no signature", format!("{path}?{}", unsigned.join("&"))),
    ]
}

/// `date` (`YYYYMMDDTHHMMSSZ`) one hour later, or one hour earlier at 23h, so the day (and
/// the credential scope) stays the same and only the signature can tell.
fn later(date: &str) -> String {
    let hour: u32 = date[9..11].parse().expect("an X-Amz-Date");
    let moved = if hour == 23 { 22 } else { hour + 1 };
    format!("{}{moved:02}{}", &date[..9], &date[11..])
}
