//! The load of `terra-bench standalone`: keep-alive HTTP/1.1 connections sending distinct
//! signed deliveries ([`Corpus`]), at saturation or at a fixed rate (open loop: each request
//! has its time slot and its latency counts from the slot, so a stalled server shows in the
//! percentiles instead of slowing the client down), with some re-deliveries of an earlier
//! body (same ordering timestamp) and some older copies (an ordering timestamp an hour
//! earlier than the stored copy's). A sampler reads the server's `/metrics` and memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use terra_core::SigningSecret;

use crate::corpus::Corpus;

/// How far back a re-delivery or an older copy reaches (deliveries).
const REACH: u64 = 1_000;

/// Deliveries, numbered across every connection of a run.
pub(crate) struct Generator {
    corpus: Corpus,
    secret: SigningSecret,
    next: AtomicU64,
    redeliveries_pct: u64,
    older_pct: u64,
    /// Ordering timestamp of delivery 0, ms; delivery n's is this plus n.
    base_ms: i64,
}

impl Generator {
    pub(crate) fn new(
        corpus: Corpus,
        secret: &str,
        redeliveries_pct: u64,
        older_pct: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            redeliveries_pct + older_pct <= 100,
            "--redeliveries and --older add up to more than 100 %"
        );
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
        Ok(Self {
            corpus,
            secret: SigningSecret::new(secret).map_err(|e| anyhow::anyhow!("{e}"))?,
            next: AtomicU64::new(0),
            redeliveries_pct,
            older_pct,
            // a day back, so no timestamp is capped at its signature's second
            base_ms: now_ms - 86_400_000,
        })
    }

    /// The next delivery as a POST to `/webhook`, signed now.
    pub(crate) fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let roll = splitmix(n) % 100;
        let (seq, ordering) = if n < REACH || roll >= self.redeliveries_pct + self.older_pct {
            (n, self.base_ms + n as i64)
        } else if roll < self.redeliveries_pct {
            (n - REACH, self.base_ms + (n - REACH) as i64)
        } else {
            (n - REACH, self.base_ms + (n - REACH) as i64 - 3_600_000)
        };
        let (body, _) = self.corpus.body(seq);
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let signature = self.secret.sign(now, &body);
        Ok(Request::post("/webhook")
            .header("host", "bench")
            .header("content-type", "application/json")
            .header("terra-signature", signature)
            .header("x-terra-ordering-timestamp", ordering.to_string())
            .body(Full::new(Bytes::from(body)))?)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Counters every connection of a run adds to (read by the sampler each second).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) acked: AtomicU64,
    pub(crate) failed: AtomicU64,
}

/// How a run paces its requests.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// As fast as the server answers.
    Saturation,
    /// This many requests per second in all, open loop.
    Rate(u64),
}

/// Runs `concurrency` connections from `start` until `end`; latencies (µs) of requests
/// answered after `measure_from`.
pub(crate) async fn drive(
    addr: SocketAddr,
    generator: Arc<Generator>,
    counters: Arc<Counters>,
    concurrency: usize,
    pace: Pace,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Vec<u32>> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let (generator, counters) = (Arc::clone(&generator), Arc::clone(&counters));
        // a fixed rate: connection k sends in slots k, k + C, k + 2C, ... of 1/rate each
        let slots = match pace {
            Pace::Saturation => None,
            Pace::Rate(rate) => Some((
                Duration::from_secs_f64(worker as f64 / rate as f64),
                Duration::from_secs_f64(concurrency as f64 / rate as f64),
            )),
        };
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut slot = slots.map(|(first, _)| start + first);
            loop {
                let sent_at = match slot {
                    Some(at) => {
                        tokio::time::sleep_until(at.into()).await;
                        at
                    }
                    None => Instant::now(),
                };
                if sent_at >= end {
                    break;
                }
                let request = generator.request()?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                let counter = if ok {
                    &counters.acked
                } else {
                    &counters.failed
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if sent_at >= measure_from {
                    let us = sent_at.elapsed().as_micros().min(u128::from(u32::MAX));
                    latencies.push(us as u32);
                }
                if let (Some(at), Some((_, every))) = (&mut slot, slots) {
                    *at += every;
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_unstable();
    Ok(all)
}

/// What the server's `/metrics` says at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerCounts {
    /// Deliveries appended to the log (accepted, not answered from the replay cache).
    pub(crate) appended: u64,
    pub(crate) sql: u64,
    pub(crate) objects: u64,
}

impl ServerCounts {
    pub(crate) fn lag_sql(&self) -> u64 {
        self.appended.saturating_sub(self.sql)
    }

    pub(crate) fn lag_objects(&self) -> u64 {
        self.appended.saturating_sub(self.objects)
    }
}

/// Reads the counters from the server's `/metrics` (one connection per call).
pub(crate) async fn server_counts(addr: SocketAddr) -> anyhow::Result<ServerCounts> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::get("/metrics")
        .header("host", "bench")
        .body(Full::new(Bytes::new()))?;
    let body = sender.send_request(request).await?.into_body();
    let text = String::from_utf8(body.collect().await?.to_bytes().to_vec())?;
    Ok(parse_counts(&text))
}

fn parse_counts(text: &str) -> ServerCounts {
    let mut counts = ServerCounts::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        if name.contains("webhook_requests_total")
            && (name.contains("outcome=\"accepted\"")
                || name.contains("outcome=\"accepted_not_json\""))
        {
            counts.appended += value;
        } else if name.contains("projector_records_total") && name.contains("sink=\"sql\"") {
            counts.sql += value;
        } else if name.contains("projector_records_total") && name.contains("sink=\"objects\"") {
            counts.objects += value;
        }
    }
    counts
}

/// VmRSS of a process, kB.
pub(crate) fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_the_accepted_outcomes_and_each_sinks_records() {
        let text = "# HELP x\n\
            terra_ingest_webhook_requests_total{source=\"default\",outcome=\"accepted\"} 10\n\
            terra_ingest_webhook_requests_total{source=\"default\",outcome=\"accepted_not_json\"} 2\n\
            terra_ingest_webhook_requests_total{source=\"default\",outcome=\"replayed\"} 5\n\
            terra_ingest_projector_records_total{sink=\"sql\"} 9\n\
            terra_ingest_projector_records_total{sink=\"objects\"} 4\n";
        let c = parse_counts(text);
        assert_eq!((c.appended, c.sql, c.objects), (12, 9, 4));
        assert_eq!((c.lag_sql(), c.lag_objects()), (3, 8));
    }

    #[test]
    fn redeliveries_and_older_copies_repeat_an_earlier_body() {
        let generator = Generator::new(Corpus::new(10).unwrap(), "whsec_x", 50, 50).unwrap();
        for _ in 0..REACH {
            generator.request().unwrap();
        }
        // past REACH every delivery repeats one REACH back, with its timestamp or an hour before
        let request = generator.request().unwrap();
        let ts: i64 = request.headers()["x-terra-ordering-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let original = generator.base_ms;
        assert!(
            ts == original || ts == original - 3_600_000,
            "{ts} vs {original}"
        );
    }
}
