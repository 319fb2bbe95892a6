//! The projector framework: what every projection of the terra-ingest event log shares. The
//! log is the source of truth; every projection can be rebuilt from it. The sinks live in
//! their own crates beside this one (`terra-sink-sql`, `terra-sink-objects`).
//!
//! - [`plan`]: what one log record means for the projections (users, lifecycle steps,
//!   payload rows with their last-writer-wins [`Version`]), or why it is poison.
//! - [`runner`]: the projector loop every sink shares: batches, dead letters, outage backoff,
//!   resume from the sink's own positions, metrics; the [`Sink`] trait.
//! - [`SharedPlans`]: each record planned once for the projectors of one process reading the
//!   same log (`standalone`).
//! - [`rebuild`]: a projection rebuilt from the log beside the live one and swapped in, for
//!   sinks that implement [`Rebuild`].

mod metrics;
pub mod plan;
mod read_ahead;
pub mod rebuild;
pub mod runner;
mod shared_plans;

pub use metrics::ProjectorMetrics;
pub use plan::Version;
pub use rebuild::{Rebuild, RebuildError, RebuildOptions, RebuildReport, rebuild};
pub use runner::{
    DEFAULT_BATCH_LINGER, DEFAULT_BATCH_SIZE, DEFAULT_BATCH_WAIT, DEFAULT_MAX_LAG,
    LINGER_FROM_RECORDS, ProjectorConfig, ProjectorError, Sink, SinkError, WriteStats, run,
};
pub use shared_plans::{DEFAULT_SHARED_PLAN_BYTES, DEFAULT_SHARED_PLANS, PlanReader, SharedPlans};
pub use terra_runtime::{Backoff, CancellationToken};
