//! The Terra wire format, shared by every terra-ingest service: `terra-signature`
//! verification ([`signature`]), the typed view of a body parsed once, with natural keys
//! ([`classify`]), payload ids and object keys ([`keys`]), ids as Terra's tables hold them
//! ([`ids`]), the log envelope generated from `proto/terra/ingest/v1/envelope.proto`, built
//! in one place ([`envelope`]), and Terra's sample webhook bodies, compiled in ([`fixtures`]).

pub mod classify;
pub mod envelope;
pub mod fixtures;
pub mod ids;
pub mod keys;
pub mod signature;

#[cfg(test)]
mod fuzz;

pub use classify::{
    Classification, DataRecord, EnvelopeFields, EventGroup, UserFields, classify, envelope_fields,
    is_report_scoped,
};
pub use ids::{IdError, PayloadId, UserId};
pub use signature::{SignatureError, SignatureHeader, SigningSecret, Verifier};

/// The part an authentication event without a user (`auth_cancelled`) plays in the lifecycle
/// history: its history row has this role under the user id `""`, the user-less history
/// that `ListUserEvents` returns for an empty user id.
pub const NO_USER_ROLE: &str = "none";
