//! The SQL schema of terra-ingest, shared by the SQL sink (which writes it) and the query
//! service (which reads it): Terra's tables (`terra_users`, `terra_data_payloads`,
//! `terra_misc_payloads`, the `terra_other_payloads` view) and terra-ingest's `ingest_*`
//! tables on Postgres, MySQL/MariaDB or SQLite, selected by the URL.
//!
//! - [`tables`]: every table and column name, once.
//! - [`migrate()`]: the SQL files under `migrations/<dialect>/`, applied in order.
//! - [`Dialect`], [`Stmt`]: the few dialect differences (placeholders, upserts, quoting).
//! - [`SqlTarget`]: where the tables are and the pools that reach them.
//! - [`positions`]: the log positions stored with the rows.
//! - [`read`]: typed rows for readers, decoded once.
//! - [`swap`]: a fresh set of tables swapped in for the live one (rebuilds).
//! - [`snapshot()`]: a deterministic dump, to compare two projections of one log.

mod checkpoint;
mod dialect;
mod error;
mod insert;
mod migrate;
pub mod positions;
pub mod read;
mod redact;
mod snapshot;
mod sqlite_file;
pub mod swap;
pub mod tables;
mod target;

pub use dialect::{Dialect, Stmt, Val};
pub use error::SqlError;
pub use insert::{insert_all, insert_rows, insert_unnest};
pub use migrate::{
    MigrationReport, TableSet, Variant, migrate, migrate_set, migrate_set_up_to, migrate_up_to,
    pending, pending_set,
};
pub use redact::{describe_db_error, describe_error, redact};
pub use snapshot::{Snapshot, rows, snapshot};
pub use target::{DEFAULT_SCHEMA, SqlConfig, SqlTarget};
