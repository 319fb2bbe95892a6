//! The gRPC query service of terra-ingest (`proto/terra/ingest/v1/query.proto`): users, a
//! user's lifecycle history, payload history with filters and sealed page tokens, payload
//! bodies from the object store, and a resumable live tail. It reads the SQL projection
//! (Postgres, MySQL or SQLite) and the object store the object projector writes.
//!
//! - [`service`]: the methods.
//! - [`server`]: auth (bearer tokens), TLS/mTLS, health, reflection, the secure default.
//! - `tail`: the live tail behind `WatchPayloads`.
//! - [`token`]: tamper-evident page tokens and resume positions.

mod db;
pub mod server;
pub mod service;
mod tail;
pub mod token;

/// Types and client/server stubs generated from `query.proto` by `build.rs`.
#[allow(unreachable_pub, clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("terra.ingest.v1");
}

pub use server::{BearerAuth, QueryServerConfig, ServeError, TlsFiles, run};
pub use service::Query;
pub use token::TokenKey;
