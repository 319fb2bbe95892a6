//! The object-store projection of the terra-ingest log: Terra's bucket layout
//! (terra-wire-format §7) on S3 and S3-compatible servers, GCS, Azure, Supabase Storage or a
//! local folder, and SQS pings for every stored object (§8).
//!
//! - [`store`]: opening the store a URL names, with endpoint, region, path-style and the
//!   usual credential chains.
//! - [`layout`]: the bytes of each object (one Terra-shaped payload per data record).
//! - [`sink`]: the projector sink (last writer wins by version, idempotent writes, dead
//!   letters).
//! - [`sqs`]: the pings.
//! - `claims`: which identity holds a base payload id (the suffix rule).
//! - `write`: conditional writes, so the newest copy wins against concurrent writers.
//! - `local`: a local folder's versions and claims in one embedded index, a batch's objects
//!   written by a few threads and synced once.
//! - `errors`: which store failures pause the projector (outage, refusal) and which
//!   dead-letter one record.

mod claims;
mod errors;
pub mod layout;
mod local;
mod local_import;
mod local_rows;
pub mod sink;
pub mod sqs;
pub mod store;
mod write;

pub use sink::{ObjectSink, ObjectSinkConfig};
pub use sqs::{Pinger, SqsConfig};
pub use store::{
    AZURE_VERSION_METADATA, SUPABASE_BUCKET, Store, StoreConfig, StoreError, VERSION_METADATA,
};

/// The consumer group of the object projection.
pub const OBJECTS_GROUP: &str = "objects";
