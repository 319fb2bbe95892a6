//! The gRPC query service of terra-ingest (`proto/terra/ingest/v1/query.proto`): users, a
//! user's lifecycle history, payload history with filters and sealed page tokens, payload
//! bodies from the object store, and a resumable live tail. It reads the SQL projection
//! (Postgres, MySQL or SQLite) and the object store the object projector writes.
//!
//! - [`service`]: the methods; `body`: `GetPayload`'s body streamed from the store.
//! - [`deliveries`]: the `WebhookDeliveries` service (`deliveries.proto`) served beside it:
//!   webhook endpoints and deliveries for operators.
//! - [`server`]: TLS/mTLS, health, reflection, connection limits, the secure defaults.
//! - [`auth`]: bearer tokens, compared as digests in constant time.
//! - [`limits`]: deadlines and caps on calls, live tails and streams per connection.
//! - `tail`: the one shared live tail behind every `WatchPayloads`.
//! - [`token`]: tamper-evident page tokens and resume positions.

pub mod auth;
mod body;
mod db;
pub mod deliveries;
pub mod limits;
pub mod server;
pub mod service;
mod tail;
pub mod token;

/// Types and client/server stubs generated from `query.proto` and `deliveries.proto` by
/// `build.rs`.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("terra.ingest.v1");
}

pub use auth::BearerAuth;
pub use deliveries::Deliveries;
pub use limits::Limits;
pub use server::{QueryServerConfig, ServeError, TlsFiles, run};
pub use service::Query;
pub use tail::TailStats;
pub use token::TokenKey;
