//! The Terra wire format, shared by every terra-ingest service: `terra-signature`
//! verification ([`signature`]), event classification and natural keys ([`classify`]),
//! payload ids and object keys ([`keys`]) and the log envelope generated from
//! `proto/terra/ingest/v1/envelope.proto` ([`envelope`]).

pub mod classify;
pub mod envelope;
pub mod keys;
pub mod signature;

#[cfg(test)]
mod fuzz;

pub use classify::{Classification, DataRecord, EventGroup, classify};
pub use signature::{SignatureError, SignatureHeader, SigningSecret, Verifier};
