//! Bringing an earlier version's folder index forward into `objects` (`crate::local`), once,
//! when the index is opened:
//!
//! - the `versions` (key, version, hex digest) and `claims` (base id, identity) tables of
//!   2026-12: each claim lands on its base id's key (`<prefix>/<base id>.json`, the store's
//!   prefix), digests and identities as bytes; the old tables are dropped in the same
//!   transaction;
//! - before that, a sidecar file per object under `.<folder>-versions/` and claim markers
//!   under its `_claims/` (read once, marked `sidecars_imported` in `meta`; the files are left
//!   where they are).

use std::path::Path;

use sqlx::{Connection, SqliteConnection};
use terra_projector::SinkError;
use terra_projector::plan::Version;

use crate::local::{INDEX_FILE, OPEN_LOCK_FILE, outage};
use crate::local_rows::{IndexRow, UPSERT, upsert};
use crate::write::blocking;

/// Brings `dir`'s earlier index forward; `prefix`: the store's key prefix, `fresh` whether
/// the index file was just made.
pub(crate) async fn bring_forward(
    conn: &mut SqliteConnection,
    dir: &Path,
    prefix: &str,
    fresh: bool,
) -> Result<(), SinkError> {
    let old_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('versions', 'claims')",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| outage("cannot read the versions index", e))?;
    if old_tables > 0 {
        move_tables(conn, prefix).await?;
    }
    let imported: Option<String> =
        sqlx::query_scalar("SELECT value FROM meta WHERE name = 'sidecars_imported'")
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| outage("cannot read the versions index", e))?;
    if imported.is_none() {
        import_sidecars(conn, dir, prefix, fresh).await?;
    }
    Ok(())
}

/// `versions` and `claims` into `objects`, in one transaction that drops them.
async fn move_tables(conn: &mut SqliteConnection, prefix: &str) -> Result<(), SinkError> {
    // what `object_key` puts before a payload id (`<prefix>/`, or nothing), for the SQL
    let lead = terra_core::keys::object_key(prefix, "");
    let lead = lead.strip_suffix(".json").unwrap_or_default();
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| outage("versions index", e))?;
    for ddl in [
        // opened by a version that had only one of them: both exist from here on
        "CREATE TABLE IF NOT EXISTS versions (key TEXT PRIMARY KEY, version TEXT NOT NULL, digest TEXT NULL) WITHOUT ROWID",
        "CREATE TABLE IF NOT EXISTS claims (base TEXT PRIMARY KEY, identity TEXT NOT NULL) WITHOUT ROWID",
    ] {
        sqlx::query(ddl)
            .execute(&mut *tx)
            .await
            .map_err(|e| outage("versions index", e))?;
    }
    let (versions, claims): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM versions), (SELECT count(*) FROM claims)")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| outage("versions index", e))?;
    tracing::info!(
        versions,
        claims,
        "moving the object folder's versions and claims into one table of its index"
    );
    // a digest that is not hex becomes NULL: the next copy of that key is written again
    let moves = [
        format!(
            "INSERT INTO objects (key, version, digest) \
             SELECT key, version, unhex(digest) FROM versions WHERE true {UPSERT}"
        ),
        // an identity of 64 lower-case hex digits as its 32 bytes, as `crate::local` stores it
        format!(
            "INSERT INTO objects (key, holder) \
             SELECT ?1 || base || '.json', \
                    CASE WHEN length(identity) = 64 AND identity NOT GLOB '*[^0-9a-f]*' \
                         THEN unhex(identity) ELSE identity END \
             FROM claims WHERE true {UPSERT}"
        ),
        "DROP TABLE versions".to_owned(),
        "DROP TABLE claims".to_owned(),
    ];
    for (i, sql) in moves.iter().enumerate() {
        let query = sqlx::query(sql);
        // only the claims' statement names the prefix
        let query = if i == 1 { query.bind(lead) } else { query };
        query
            .execute(&mut *tx)
            .await
            .map_err(|e| outage("cannot bring the versions index forward", e))?;
    }
    tx.commit().await.map_err(|e| outage("versions index", e))
}

/// Reads the sidecar files and claim markers an earlier version wrote into the index.
async fn import_sidecars(
    conn: &mut SqliteConnection,
    dir: &Path,
    prefix: &str,
    fresh: bool,
) -> Result<(), SinkError> {
    let walked = dir.to_owned();
    let (versions, claims) = blocking(move || read_sidecars(&walked))
        .await
        .map_err(|e| outage("cannot read the earlier version files", e))?;
    if !versions.is_empty() || !claims.is_empty() || !fresh {
        tracing::info!(
            versions = versions.len(),
            claims = claims.len(),
            "importing the object folder's version files into its index"
        );
    }
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| outage("versions index", e))?;
    let claim_keys: Vec<String> = claims
        .iter()
        .map(|(base, _)| terra_core::keys::object_key(prefix, base))
        .collect();
    let rows: Vec<IndexRow> = versions
        .iter()
        .map(|(key, version)| IndexRow {
            key,
            version: Some(version.to_string()),
            digest: None,
            holder: None,
        })
        .chain(
            claims
                .iter()
                .zip(&claim_keys)
                .map(|((_, identity), key)| IndexRow {
                    key,
                    version: None,
                    digest: None,
                    holder: Some(identity),
                }),
        )
        .collect();
    upsert(&mut tx, &rows).await?;
    sqlx::query("INSERT INTO meta (name, value) VALUES ('sidecars_imported', ?) ON CONFLICT (name) DO NOTHING")
        .bind(versions.len().to_string())
        .execute(&mut *tx)
        .await
        .map_err(|e| outage("versions index", e))?;
    tx.commit().await.map_err(|e| outage("versions index", e))
}

/// What an earlier version kept as files: `(key, version)` and `(base id, identity)`.
type Sidecars = (Vec<(String, Version)>, Vec<(String, String)>);

/// The versions and claims an earlier version kept as files under `dir`.
fn read_sidecars(dir: &Path) -> std::io::Result<Sidecars> {
    let (mut versions, mut claims) = (Vec::new(), Vec::new());
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                pending.push(path);
                continue;
            }
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            let name = relative.to_string_lossy().into_owned();
            if name.starts_with(INDEX_FILE) || name == OPEN_LOCK_FILE || name.contains('#') {
                continue;
            }
            let text = std::fs::read_to_string(&path)?;
            match name.strip_prefix(&format!("{}/", crate::claims::CLAIMS_FOLDER)) {
                Some(base) => claims.push((base.to_owned(), text)),
                None => {
                    if let Ok(version) = text.trim_end().parse::<Version>() {
                        versions.push((name, version));
                    }
                }
            }
        }
    }
    Ok((versions, claims))
}

#[cfg(test)]
#[path = "local_import_tests.rs"]
mod tests;
