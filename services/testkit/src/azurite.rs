//! Azurite, Microsoft's Azure Storage emulator (npm `azurite`, installed and started by
//! tests/run-all.sh through tests/azurite.sh): the shared server's URL
//! (`TERRA_TEST_AZURITE_URL`), containers made for a test (Azurite, like Azure, needs one
//! before any blob is written; object_store cannot make them, so this signs the one request
//! with the emulator's published key), and a private server a test may stop and start
//! (`TERRA_TEST_AZURITE_BIN`). Tests that use any of it have `azurite` in their names.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The emulator's account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// The emulator's well-known account key (published by Microsoft; not a secret).
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

const CONVENTION: &str =
    "tests/run-all.sh starts Azurite and sets it; tests that need it have `azurite` in their names";

/// `http://127.0.0.1:PORT` of the shared Azurite.
pub fn url() -> String {
    std::env::var("TERRA_TEST_AZURITE_URL").unwrap_or_else(|_| {
        panic!("TERRA_TEST_AZURITE_URL must name Azurite's blob endpoint ({CONVENTION})")
    })
}

/// The object_store settings that reach Azurite at `url` without the process environment
/// (the account endpoint, as Azure's SDKs address the emulator), for `StoreConfig::options`.
pub fn store_options(url: &str) -> Vec<(String, String)> {
    vec![
        ("azure_storage_account_name".into(), ACCOUNT.into()),
        ("azure_storage_account_key".into(), ACCOUNT_KEY.into()),
        ("azure_storage_endpoint".into(), format!("{url}/{ACCOUNT}")),
    ]
}

/// Creates container `name` on the Azurite at `url` (`http://127.0.0.1:PORT`); returns the
/// HTTP status (201 made, 409 already there).
pub fn create_container(url: &str, name: &str) -> u16 {
    let authority = url
        .strip_prefix("http://")
        .expect("Azurite is reached over http://")
        .trim_end_matches('/');
    let date = httpdate::fmt_http_date(SystemTime::now());
    let version = "2021-08-06";
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(ACCOUNT_KEY)
        .expect("the emulator key is base64");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(string_to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let request = format!(
        "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: {authority}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {ACCOUNT}:{signature}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut stream = TcpStream::connect(authority).expect("Azurite listens");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer from Azurite: {answer:?}"));
    assert!(
        status == 201 || status == 409,
        "create container {name}: {answer}"
    );
    status
}

/// A fresh container name (Azure: 3-63 lowercase letters, digits and dashes).
pub fn fresh_container() -> String {
    format!("terra-{}", uuid::Uuid::new_v4().simple())
}

/// A private Azurite on `port` (in memory), killed on drop.
pub struct PrivateAzurite(Child);

impl PrivateAzurite {
    pub fn start(port: u16) -> Self {
        let exe = std::env::var("TERRA_TEST_AZURITE_BIN")
            .unwrap_or_else(|_| panic!("TERRA_TEST_AZURITE_BIN ({CONVENTION})"));
        let child = Command::new(exe)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "azurite did not start on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for PrivateAzurite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
