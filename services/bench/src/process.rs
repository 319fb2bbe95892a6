//! The product as a child process: where the `terra-ingest` binary is (`--terra-ingest`, else
//! next to `terra-bench`), a child killed when dropped, a free port, waiting for readiness,
//! and the resident memory the kernel reports for a process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// The `terra-ingest` binary a benchmark starts.
#[derive(Debug, Clone, clap::Args)]
pub struct TerraIngestArg {
    /// The terra-ingest binary to start (default: `terra-ingest` next to this binary, in the
    /// same target dir).
    #[arg(long = "terra-ingest", env = "TERRA_INGEST_BIN", value_name = "PATH")]
    pub terra_ingest: Option<PathBuf>,
}

impl TerraIngestArg {
    /// The binary's path; an error that says how to build it when it is not there.
    pub(crate) fn binary(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.terra_ingest {
            if !path.is_file() {
                bail!(
                    "--terra-ingest (TERRA_INGEST_BIN) {}: no such file",
                    path.display()
                );
            }
            return Ok(path.clone());
        }
        let own = std::env::current_exe().context("failed to find terra-bench's own path")?;
        let path = own.with_file_name(format!("terra-ingest{}", std::env::consts::EXE_SUFFIX));
        if !path.is_file() {
            bail!(
                "the terra-ingest binary is not at {} (next to terra-bench): build it with \
                 `cargo build --release -p terra-ingest` (or `cargo build --release --workspace`), \
                 or give its path with --terra-ingest PATH (TERRA_INGEST_BIN)",
                path.display()
            );
        }
        Ok(path)
    }
}

/// A child process, killed and reaped when dropped.
pub(crate) struct ChildGuard(pub(crate) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?)
}

pub(crate) async fn wait_until_up(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if probe(addr, path).await.unwrap_or(false) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("server on {addr} did not become ready within 30 s")
}

/// One GET; true when it answered 2xx.
async fn probe(addr: SocketAddr, path: &str) -> anyhow::Result<bool> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", "bench")
        .body(Full::new(Bytes::new()))?;
    Ok(sender.send_request(request).await?.status().is_success())
}

/// VmHWM (peak resident set) of a process, kB.
pub(crate) fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(&pid.to_string(), "VmHWM:")
}

/// VmRSS (resident set) of this process now, kB.
pub(crate) fn rss_kb() -> u64 {
    status_kb("self", "VmRSS:").unwrap_or(0)
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kb(pid: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
