//! Test harness: an ingress on port 0 over a real log, HTTP helpers, signing, fixtures and a
//! captured log stream (with the OpenTelemetry layer installed, as the binary does).

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use terra_core::{SigningSecret, Verifier};
use terra_eventlog::{Consumer, EventLog, LogUrl, Record};
use terra_ingress::{IngressConfig, Metrics, Source};
use terra_runtime::CancellationToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub const SECRET: &str = "whsec_test_0123456789abcdef";

pub use terra_testkit::{all_fixtures as fixtures, fixture};

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn sign(secret: &str, body: &[u8]) -> String {
    sign_at(secret, body, unix_now())
}

pub fn sign_at(secret: &str, body: &[u8], t: i64) -> String {
    SigningSecret::new(secret).unwrap().sign(t, body)
}

pub fn source(name: &str, secrets: &[&str]) -> Source {
    Source {
        name: name.to_owned(),
        verifier: Verifier::new(
            secrets
                .iter()
                .map(|s| SigningSecret::new(*s).unwrap())
                .collect(),
            300,
        ),
        allowlist: None,
        trusted_proxies: Vec::new(),
    }
}

pub fn config(sources: Vec<Source>) -> IngressConfig {
    IngressConfig::new(sources)
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        use opentelemetry::trace::TracerProvider;
        use tracing_subscriber::layer::SubscriberExt;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("ingress-test")))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(|| Capture),
            );
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

/// Everything logged so far in this test process.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

pub struct App {
    pub addr: SocketAddr,
    /// The operations port, when the app was spawned with one.
    pub ops_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    pub log: EventLog,
    reader: tokio::sync::Mutex<Consumer>,
    stop: CancellationToken,
    server: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
    _dir: Option<tempfile::TempDir>,
}

/// An ingress over an embedded log in a fresh folder.
pub async fn spawn(config: IngressConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let url = LogUrl::parse("embedded", &dir.path().join("log")).unwrap();
    let log = EventLog::open(&url, &[]).await.unwrap();
    start(config, log, Some(dir)).await
}

/// An ingress over librdkafka's in-process mock cluster.
pub async fn spawn_kafka_mock(config: IngressConfig) -> App {
    let url = LogUrl::parse(
        "kafka-mock://terra-events?partitions=2",
        std::path::Path::new("."),
    )
    .unwrap();
    let props = [("message.timeout.ms".to_owned(), "1500".to_owned())];
    let log = EventLog::open(&url, &props).await.unwrap();
    start(config, log, None).await
}

/// An ingress over a real Kafka-protocol broker (tansu, started by tests/run-all.sh), on a
/// fresh topic.
pub async fn spawn_kafka_broker(config: IngressConfig) -> App {
    let bootstrap = std::env::var("TERRA_TEST_KAFKA_BOOTSTRAP")
        .expect("TERRA_TEST_KAFKA_BOOTSTRAP must name a Kafka-protocol broker (tests/run-all.sh starts tansu and sets it)");
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut url = LogUrl::parse(
        &format!(
            "kafka://{bootstrap}/ingress-{}-{unique}?partitions=2",
            std::process::id()
        ),
        std::path::Path::new("."),
    )
    .unwrap();
    if let LogUrl::Kafka(kafka) = &mut url {
        kafka.max_body_bytes = config.body_limit;
    }
    let log = EventLog::open(&url, &[]).await.unwrap();
    start(config, log, None).await
}

/// An ingress over an embedded log whose `/readyz` and `/metrics` are on a second port.
pub async fn spawn_with_ops(config: IngressConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let url = LogUrl::parse("embedded", &dir.path().join("log")).unwrap();
    let log = EventLog::open(&url, &[]).await.unwrap();
    start_with(config, log, Some(dir), true).await
}

async fn start(config: IngressConfig, log: EventLog, dir: Option<tempfile::TempDir>) -> App {
    start_with(config, log, dir, false).await
}

async fn start_with(
    config: IngressConfig,
    log: EventLog,
    dir: Option<tempfile::TempDir>,
    ops: bool,
) -> App {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ops_listener = if ops {
        Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap())
    } else {
        None
    };
    let ops_addr = ops_listener.as_ref().map(|l| l.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(terra_ingress::run(
        config,
        log.clone(),
        Metrics::new(),
        listener,
        ops_listener,
        stop.clone(),
    ));
    let reader = log.consumer("test-reader").unwrap();
    App {
        addr,
        ops_addr,
        client: reqwest::Client::new(),
        log,
        reader: tokio::sync::Mutex::new(reader),
        stop,
        server: Mutex::new(Some(server)),
        _dir: dir,
    }
}

impl Drop for App {
    /// A test that ends stops its server, as SIGTERM would.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl App {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(
        &self,
        path: &str,
        body: &[u8],
        headers: &[(&str, String)],
    ) -> reqwest::Response {
        let mut request = self.client.post(self.url(path)).body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// Sends raw bytes and reads the whole answer (the request must ask to close).
    pub async fn raw(&self, request: &str) -> String {
        let mut stream = self.raw_start(request.as_bytes()).await;
        raw_finish(&mut stream, b"").await
    }

    pub async fn raw_start(&self, bytes: &[u8]) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream
    }

    /// Reads `n` records from the log (in log order per partition).
    pub async fn read_log(&self, n: usize) -> Vec<Record> {
        let mut reader = self.reader.lock().await;
        let mut out = Vec::new();
        let mut unavailable = 0;
        while out.len() < n {
            // as a projector does: a log that is not available yet (a Kafka group joining
            // again after an outage) is waited for, a few times
            let batch = match reader.poll(n - out.len(), Duration::from_secs(10)).await {
                Err(terra_eventlog::LogError::Unavailable(why)) if unavailable < 5 => {
                    unavailable += 1;
                    eprintln!("log not available yet ({why}); polling again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                other => other.unwrap(),
            };
            assert!(
                !batch.is_empty(),
                "only {} of {n} records in the log",
                out.len()
            );
            out.extend(batch);
        }
        out.into_iter().map(|c| c.record).collect()
    }

    /// Every record the log has left for this reader.
    pub async fn drain_log(&self) -> Vec<Record> {
        let mut reader = self.reader.lock().await;
        let mut out = Vec::new();
        loop {
            let batch = reader.poll(100, Duration::from_millis(500)).await.unwrap();
            if batch.is_empty() {
                return out;
            }
            out.extend(batch.into_iter().map(|c| c.record));
        }
    }

    pub async fn assert_log_empty(&self) {
        let batch = self
            .reader
            .lock()
            .await
            .poll(10, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(batch.is_empty(), "{} unexpected records", batch.len());
    }

    /// Starts a graceful shutdown; the handle resolves when the server has stopped.
    pub fn shutdown(&self) -> JoinHandle<std::io::Result<()>> {
        self.stop.cancel();
        self.server.lock().unwrap().take().unwrap()
    }

    /// Waits (at most 30 s) until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        for _ in 0..300 {
            if self.get("/readyz").await.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("/readyz did not turn 200 within 30 s");
    }

    pub fn kafka_broker_up(&self, up: bool) {
        match &self.log {
            EventLog::Kafka(kafka) => kafka.set_mock_broker_up(up).unwrap(),
            EventLog::Embedded(_) => panic!("not a kafka-mock log"),
        }
    }
}

/// The head of a signed `POST /webhook` with a declared body length.
pub fn head(body_len: usize, signature: &str) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\nterra-signature: {signature}\r\ncontent-length: {body_len}\r\n\r\n"
    )
}

pub async fn raw_finish(stream: &mut TcpStream, rest: &[u8]) -> String {
    stream.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // read until the server closes, or the headers and a JSON body have arrived
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
            break;
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}
