//! The webhook destination: every event of the log forwarded to the configured endpoints as
//! Terra sends it (the exact body, Terra's signature headers), with Terra's retry schedule
//! kept durably in SQL.
//!
//! - [`fanout`]: the projector [`Sink`](terra_projector::Sink) (group `webhooks`): each event
//!   becomes one delivery row per matching endpoint, written with the log positions in one
//!   transaction, so every (event, endpoint) pair is created exactly once.
//! - [`dispatch`]: one worker per endpoint (`worker`) leases its due deliveries ahead of sending (`FOR UPDATE SKIP
//!   LOCKED` on Postgres and MySQL; one writer on SQLite), sends them and records every
//!   attempt; per-endpoint and global concurrency caps; `per_user` ordering; endpoints
//!   disabled, probed and re-enabled; endpoints refusing connections probed instead of sent
//!   every event (`reach`).
//! - [`send`], [`sign`], [`address`]: one HTTP attempt: signing, the address guard (SSRF),
//!   the response classified.
//! - [`store`]: the SQL of the above; [`admin`]: what operators see and do (gRPC and CLI);
//!   [`prune`]: bodies nothing will send again, and finished deliveries past `retention`.

pub mod address;
pub mod admin;
mod body;
pub mod cache;
mod client;
pub mod dispatch;
pub mod endpoint;
pub mod endpoints_store;
pub mod fanout;
pub mod finish;
mod first;
pub mod metrics;
pub mod prune;
mod reach;
pub mod send;
pub mod sign;
pub mod store;
mod trace;
mod worker;
mod writer;

pub use dispatch::Shared;
pub use endpoint::{Endpoint, Filter, Ordering, Schedule, SignatureMode, WebhookSettings};
pub use fanout::{FanOutSink, WEBHOOKS_GROUP};
pub use metrics::WebhookMetrics;
