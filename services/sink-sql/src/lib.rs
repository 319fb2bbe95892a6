//! The SQL sink: Terra's tables (see `terra-schema`) written from the projector's plans, one
//! transaction per batch with the log positions it covers (exactly-once effect), last writer
//! wins by [`terra_projector::Version`], replays skipped, gaps refused.
//!
//! - [`SqlSink`] (`sink`): the projector's `Sink`, and its `Rebuild` (fresh tables under a
//!   prefix, swapped in).
//! - `write`: one batch, one transaction; `payloads` and `users`: its rows
//!   ([`payload_inserts`]: the payload rows' plain INSERTs, for the benchmarks' raw load).

mod claims;
mod payloads;
mod sink;
mod users;
mod write;

pub use payloads::payload_inserts;
pub use sink::{SQL_GROUP, SqlSink, sink_error};
