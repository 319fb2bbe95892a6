//! The statements of the folder index's `objects` table (`crate::local`): its rows read by
//! key, and written as plain inserts where the batch's lookup found no row, as upserts
//! ([`UPSERT`]) only where one is replaced.
//!
//! Both come in a few fixed shapes, as the SQL projection's (`terra_schema::insert_rows`,
//! `Stmt::bind_in_list`): inserts of 256, 64, 16, 4 or 1 rows, lookups of 1, 4, 16, 64, 256
//! or 1,024 keys (the list padded with copies of its last key). The connection prepares each
//! once and keeps it in its statement cache; a `VALUES` or `IN` list of a new length is a new
//! statement to parse and compile, and with every batch's sizes new that was most batches.
//! And a plain insert is `INSERT OR FAIL` (`Dialect::insert_into`), which SQLite runs without
//! a statement journal; an upsert's `DO UPDATE` keeps one (issue 16).

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::{Row, SqliteConnection, TypeInfo, ValueRef};
use terra_projector::SinkError;
use terra_projector::plan::Version;
use terra_schema::{Dialect, Stmt, Val, insert_rows};

use crate::local::outage;

/// Keys per lookup, the most an `IN` list is padded to.
const LOOKUP_CHUNK: usize = 1_024;
/// The columns of `objects`, in the order a row's values are bound.
const COLUMNS: [&str; 4] = ["key", "version", "digest", "holder"];
/// Rows of `objects` written when a key's row changes: its version and digest move only when
/// given (a claim alone keeps them), and so does its holder (a claim never moves).
pub(crate) const UPSERT: &str = " ON CONFLICT (key) DO UPDATE SET \
     version = coalesce(excluded.version, version), \
     digest = coalesce(excluded.digest, digest), \
     holder = coalesce(holder, excluded.holder)";

/// One row of `objects` to write.
pub(crate) struct IndexRow<'a> {
    pub(crate) key: &'a str,
    pub(crate) version: Option<String>,
    pub(crate) digest: Option<&'a [u8]>,
    pub(crate) holder: Option<&'a str>,
}

impl IndexRow<'_> {
    fn values(&self) -> Vec<Val> {
        let holder = match self.holder.map(holder_bytes) {
            Some(Ok(bytes)) => Val::Blob(bytes.to_vec()),
            Some(Err(text)) => Val::from(text),
            None => Val::Text(None),
        };
        vec![
            Val::from(self.key),
            Val::Text(self.version.clone()),
            self.digest
                .map_or(Val::Text(None), |d| Val::Blob(d.to_vec())),
            holder,
        ]
    }
}

/// What the index holds for a key.
#[derive(Debug, Clone, Default)]
pub(crate) struct Stored {
    /// The key has a row (else this is what a lookup that found none stands for).
    pub(crate) in_index: bool,
    /// The version of the object in the folder; `None`: none written (the key is claimed).
    pub(crate) version: Option<Version>,
    /// SHA-256 of the stored object's bytes.
    pub(crate) digest: Option<Vec<u8>>,
    /// The identity holding the base id whose key this is.
    pub(crate) holder: Option<String>,
}

/// Inserts `rows` of `objects`, which have none of their keys: a row already there fails the
/// statement (and the caller drops its transaction).
pub(crate) async fn insert(
    conn: &mut SqliteConnection,
    rows: &[IndexRow<'_>],
) -> Result<(), SinkError> {
    write(conn, rows, "").await
}

/// Inserts or updates `rows` of `objects` ([`UPSERT`]).
pub(crate) async fn upsert(
    conn: &mut SqliteConnection,
    rows: &[IndexRow<'_>],
) -> Result<(), SinkError> {
    write(conn, rows, UPSERT).await
}

async fn write(
    conn: &mut SqliteConnection,
    rows: &[IndexRow<'_>],
    suffix: &str,
) -> Result<(), SinkError> {
    let values = rows.iter().map(IndexRow::values).collect();
    for stmt in insert_rows(Dialect::Sqlite, "objects", &COLUMNS, &[], values, suffix) {
        stmt.query_native()
            .execute(&mut *conn)
            .await
            .map_err(|e| outage("versions index", e))?;
    }
    Ok(())
}

/// A holder as stored: the 32 bytes of an identity that is a SHA-256 in lower-case hex (every
/// identity the planner makes), else (`Err`) its text.
fn holder_bytes(identity: &str) -> Result<[u8; 32], &str> {
    let mut bytes = [0u8; 32];
    let lower = identity
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match hex::decode_to_slice(identity, &mut bytes) {
        Ok(()) if lower => Ok(bytes),
        _ => Err(identity),
    }
}

/// The rows of `objects` whose key is in `keys`.
pub(crate) async fn lookup(
    conn: &mut SqliteConnection,
    keys: &[&str],
) -> Result<HashMap<String, Stored>, SinkError> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(LOOKUP_CHUNK) {
        let mut stmt = Stmt::new(
            Dialect::Sqlite,
            "SELECT key, version, digest, holder FROM objects WHERE key IN ",
        );
        stmt.bind_in_list(chunk.iter().copied());
        let rows = stmt
            .query_native()
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| outage("versions index", e))?;
        for row in rows {
            let read = |e| outage("versions index", e);
            let key: String = row.try_get(0).map_err(read)?;
            let version: Option<String> = row.try_get(1).map_err(read)?;
            let holder = match row.try_get_raw(3).map_err(read)? {
                raw if raw.is_null() => None,
                raw if raw.type_info().name() == "BLOB" => {
                    Some(hex::encode(row.try_get::<Vec<u8>, _>(3).map_err(read)?))
                }
                _ => Some(row.try_get::<String, _>(3).map_err(read)?),
            };
            let stored = Stored {
                in_index: true,
                version: version.and_then(|v| Version::from_str(&v).ok()),
                digest: row.try_get(2).map_err(read)?,
                holder,
            };
            out.insert(key, stored);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "local_rows_tests.rs"]
mod tests;
