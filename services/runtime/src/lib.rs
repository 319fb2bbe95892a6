//! The service plumbing every terra-ingest service shares, so each concept has one place:
//!
//! - [`shutdown`]: one [`CancellationToken`] per process, cancelled on SIGTERM/Ctrl-C or by a
//!   part that failed; every service and projector stops when it is cancelled.
//! - [`retry`]: capped exponential [`Backoff`] and the [`Retry`] loop state (log, wait,
//!   give up on cancellation) behind every "wait out an outage" loop.
//! - [`ops`]: the operations router (`/healthz`, `/readyz`, `/metrics`) of every service.
//! - [`lag`]: [`LagBound`], how far `standalone`'s projections may fall behind its ingress.
//! - [`error`]: [`ErrorCode`], the one table from an error's kind to its HTTP status and
//!   gRPC code.

pub mod error;
pub mod lag;
pub mod ops;
pub mod retry;
pub mod shutdown;

pub use error::ErrorCode;
pub use lag::LagBound;
pub use ops::Readiness;
pub use retry::{Backoff, Retry};
pub use shutdown::CancellationToken;
