//! A local folder's versions and claims, in one embedded index instead of a file per object
//! (issue 16): `.<folder>-versions/_index.sqlite3` (SQLite in WAL, 0600 like every file of
//! the folder). A batch is one write transaction (`BEGIN IMMEDIATE`, so projectors of the
//! same folder, in this process or another, take turns as they did on the sidecar files'
//! locks): the stored versions of the batch's keys are read, the newer objects are written
//! (each staged and renamed into place, by a bounded set of threads), the filesystem is
//! synced once (`syncfs`: objects, folders and dead letters reach the disk), and only then
//! are the new versions committed, the commit itself synced (`synchronous = FULL`). So the
//! index never holds a version whose bytes might not be on disk: a copy with the same bytes
//! is skipped on the strength of the index alone, so a version committed before its object
//! was durable would leave a power cut's (or a failed sync's) lost object lost for good.
//!
//! Folders written by an earlier version (a sidecar file per object under
//! `.<folder>-versions/`, claim markers under its `_claims/`) are imported into the index
//! the first time it is opened; the old files are left where they are.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use sha2::Digest;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use terra_eventlog::private_fs;
use terra_projector::SinkError;
use terra_projector::plan::Version;

use crate::sink::versions_dir;
#[cfg(test)]
use crate::write::write_private_object;
use crate::write::{Folders, blocking};

/// The index's file name inside the versions folder (no key can be this: keys end `.json`).
const INDEX_FILE: &str = "_index.sqlite3";
/// Locked (`flock`) while the index is opened, beside it.
const OPEN_LOCK_FILE: &str = "_index.open-lock";
/// Threads writing one batch's objects.
const WRITERS: usize = 4;
/// WAL pages between automatic checkpoints of the index (`PRAGMA wal_autocheckpoint`).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// The index's page cache, KiB (`PRAGMA cache_size = -N`).
const CACHE_KIB: i64 = 65_536;
/// Keys per `IN (...)` lookup.
const CHUNK: usize = 500;

/// One object of a batch to write unless a newer version is stored.
pub(crate) struct LocalWrite {
    pub(crate) key: String,
    pub(crate) file: PathBuf,
    pub(crate) bytes: Bytes,
    pub(crate) version: Version,
    /// SHA-256 of `bytes`, hex.
    pub(crate) digest: String,
    /// The index has a version of `key`, so the file is there already: it is replaced
    /// (staged and renamed over) without first trying to link a new one at its name.
    stored: bool,
}

impl LocalWrite {
    /// `digest`: the hex SHA-256 of `bytes` when the caller knows it (an object that is the
    /// webhook body, hashed by the ingress), else it is computed here.
    pub(crate) fn new(
        key: String,
        file: PathBuf,
        bytes: Bytes,
        version: Version,
        digest: Option<String>,
    ) -> Self {
        let digest = digest.unwrap_or_else(|| hex::encode(sha2::Sha256::digest(&bytes)));
        Self {
            key,
            file,
            bytes,
            version,
            digest,
            stored: false,
        }
    }
}

/// What happened to a [`LocalWrite`]: written, or the newer version that was kept.
pub(crate) type LocalOutcome = Result<(), Version>;

pub(crate) struct LocalIndex {
    conn: SqliteConnection,
    /// The folder's filesystem, for `syncfs`.
    root: std::fs::File,
    /// Makes what was written to the folder durable: `syncfs` (a test fails it).
    sync: fn(&std::fs::File) -> std::io::Result<()>,
}

/// `syncfs` of the filesystem holding `file`.
fn syncfs(file: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(file).map_err(std::io::Error::from)
}

fn outage(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Outage(format!("object store: {what}: {e}"))
}

impl LocalIndex {
    /// Opens (or creates, importing an earlier version's sidecar files) the index of `root`.
    pub(crate) async fn open(root: &Path) -> Result<Self, SinkError> {
        let dir = versions_dir(root);
        let path = dir.join(INDEX_FILE);
        let made = path.clone();
        let lock = dir.join(OPEN_LOCK_FILE);
        // Held until the index is open, made and imported: sinks opening the same folder at
        // once (in this process or another) would otherwise each hold SQLite's shared lock
        // while asking for the exclusive one (switching a new file to WAL, the DDL), and
        // SQLite answers one of them "database is locked" at once rather than wait for a
        // deadlock (the busy timeout does not apply).
        let (_opening, fresh) = blocking(move || {
            private_fs::create_dir_all(made.parent().expect("in a folder"))?;
            let lock = private_fs::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(lock)?;
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
            let fresh = !made.exists();
            // made 0600 before SQLite opens it: its -wal and -shm take the same mode
            private_fs::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&made)?;
            Ok((lock, fresh))
        })
        .await
        .map_err(|e| outage("cannot create the versions index", e))?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .journal_mode(SqliteJournalMode::Wal)
            // each commit synced: a batch's versions are committed after its objects are
            // durable, and are durable themselves before its positions are committed
            .synchronous(SqliteSynchronous::Full)
            // a checkpoint every 16k pages instead of SQLite's 1k, as the SQL projection's
            // SQLite does: keys arrive in no order, so every batch dirties leaf pages all
            // over the index, and with 1k a checkpoint copied them back to the file after
            // nearly every batch (14 % of the index thread's time in issue 16's profile;
            // +4-8 % objects/s replaying wrk's log). The WAL grows to ~64 MB before it is
            // reset.
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string())
            // a 64 MiB page cache (SQLite's default is 2 MB), as the SQL projection's: with
            // the keys all over the index, `pread` of its pages was 17 % of its thread
            // (issue 16; replaying wrk's log on tmpfs, alternated: +15 % objects/s, -12 %
            // CPU per object). Filled only as pages are read.
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            .busy_timeout(Duration::from_secs(60));
        let mut conn = SqliteConnection::connect_with(&options)
            .await
            .map_err(|e| outage("cannot open the versions index", e))?;
        for ddl in [
            // digest: SHA-256 of the stored bytes, so a copy with the same bytes (Terra's retries,
            // re-deliveries) moves the version without rewriting the file
            "CREATE TABLE IF NOT EXISTS versions (key TEXT PRIMARY KEY, version TEXT NOT NULL, digest TEXT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS claims (base TEXT PRIMARY KEY, identity TEXT NOT NULL) WITHOUT ROWID",
            "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
        ] {
            sqlx::query(ddl)
                .execute(&mut conn)
                .await
                .map_err(|e| outage("cannot create the versions index", e))?;
        }
        let root_file =
            std::fs::File::open(root).map_err(|e| outage("cannot open the folder", e))?;
        let mut index = Self {
            conn,
            root: root_file,
            sync: syncfs,
        };
        let imported: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'sidecars_imported'")
                .fetch_optional(&mut index.conn)
                .await
                .map_err(|e| outage("cannot read the versions index", e))?;
        if imported.is_none() {
            index.import(&dir, fresh).await?;
        }
        Ok(index)
    }

    /// Reads the sidecar files and claim markers an earlier version wrote into the index.
    async fn import(&mut self, dir: &Path, fresh: bool) -> Result<(), SinkError> {
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
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| outage("versions index", e))?;
        let version_rows: Vec<[String; 2]> = versions
            .iter()
            .map(|(key, version)| [key.clone(), version.to_string()])
            .collect();
        let insert = "INSERT INTO versions (key, version) VALUES";
        insert_rows(
            &mut tx,
            insert,
            "ON CONFLICT (key) DO NOTHING",
            &version_rows,
        )
        .await?;
        let claim_rows: Vec<[&str; 2]> = claims
            .iter()
            .map(|(b, i)| [b.as_str(), i.as_str()])
            .collect();
        let insert = "INSERT INTO claims (base, identity) VALUES";
        insert_rows(
            &mut tx,
            insert,
            "ON CONFLICT (base) DO NOTHING",
            &claim_rows,
        )
        .await?;
        sqlx::query("INSERT INTO meta (name, value) VALUES ('sidecars_imported', ?) ON CONFLICT (name) DO NOTHING")
            .bind(versions.len().to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| outage("versions index", e))?;
        tx.commit().await.map_err(|e| outage("versions index", e))
    }

    /// The identity holding each base id: the stored claim, else the first identity asking
    /// for it here (`wanted` is in log order), which is stored.
    pub(crate) async fn claim(
        &mut self,
        wanted: &[(String, String)],
    ) -> Result<HashMap<String, String>, SinkError> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| outage("versions index", e))?;
        let bases: Vec<&str> = wanted.iter().map(|(b, _)| b.as_str()).collect();
        let mut held: HashMap<String, String> = lookup(
            &mut tx,
            "SELECT base, identity, NULL FROM claims WHERE base IN",
            &bases,
        )
        .await?
        .into_iter()
        .map(|(base, (identity, _))| (base, identity))
        .collect();
        let mut new_claims: Vec<[&str; 2]> = Vec::new();
        for (base, identity) in wanted {
            if held.contains_key(base) {
                continue;
            }
            held.insert(base.clone(), identity.clone());
            new_claims.push([base, identity]);
        }
        insert_rows(
            &mut tx,
            "INSERT INTO claims (base, identity) VALUES",
            "",
            &new_claims,
        )
        .await?;
        tx.commit().await.map_err(|e| outage("versions index", e))?;
        Ok(held)
    }

    /// Writes each object unless a newer version is stored, syncs, stores the versions.
    /// `sync`: sync even when no object is written (the batch wrote dead letters).
    pub(crate) async fn write_batch(
        &mut self,
        writes: Vec<LocalWrite>,
        sync: bool,
    ) -> Result<Vec<(LocalWrite, LocalOutcome)>, SinkError> {
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| outage("versions index", e))?;
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        let stored = lookup(
            &mut tx,
            "SELECT key, version, digest FROM versions WHERE key IN",
            &keys,
        )
        .await?;
        let (mut to_write, mut outcomes, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
        for write in writes {
            let (version, digest) = match stored.get(&write.key) {
                Some((version, digest)) => (Version::from_str(version).ok(), digest.as_deref()),
                None => (None, None),
            };
            match version {
                Some(newer) if newer > write.version => outcomes.push((write, Err(newer))),
                // the same bytes are there already: only the version moves
                Some(_) if digest == Some(write.digest.as_str()) => unchanged.push(write),
                _ => to_write.push(LocalWrite {
                    stored: version.is_some(),
                    ..write
                }),
            }
        }
        let sync = sync || !to_write.is_empty();
        let written = write_all(to_write).await?;
        // before the versions are committed: a failed sync rolls them back, so the batch,
        // written again, rewrites its objects rather than trust bytes that may be lost
        if sync {
            let root = self.root.try_clone().map_err(|e| outage("sync", e))?;
            let sync_fs = self.sync;
            blocking(move || sync_fs(&root))
                .await
                .map_err(|e| outage("cannot sync the folder", e))?;
        }
        let versions: Vec<[String; 3]> = written
            .iter()
            .chain(&unchanged)
            .map(|w| [w.key.clone(), w.version.to_string(), w.digest.clone()])
            .collect();
        insert_rows(
            &mut tx,
            "INSERT INTO versions (key, version, digest) VALUES",
            "ON CONFLICT (key) DO UPDATE SET version = excluded.version, digest = excluded.digest",
            &versions,
        )
        .await?;
        tx.commit().await.map_err(|e| outage("versions index", e))?;
        outcomes.extend(written.into_iter().chain(unchanged).map(|w| (w, Ok(()))));
        Ok(outcomes)
    }
}

/// Inserts `rows` with multi-row statements of up to [`CHUNK`] rows (`<insert> (?, ..), .. <suffix>`).
async fn insert_rows<const N: usize, T: AsRef<str>>(
    conn: &mut SqliteConnection,
    insert: &str,
    suffix: &str,
    rows: &[[T; N]],
) -> Result<(), SinkError> {
    let one = format!("({})", vec!["?"; N].join(", "));
    for chunk in rows.chunks(CHUNK) {
        let sql = format!(
            "{insert} {} {suffix}",
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let mut query = sqlx::query(&sql);
        for row in chunk {
            for value in row {
                query = query.bind(value.as_ref());
            }
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(|e| outage("versions index", e))?;
    }
    Ok(())
}

/// The rows whose first column is in `values`, by that column.
async fn lookup(
    conn: &mut SqliteConnection,
    select: &str,
    values: &[&str],
) -> Result<HashMap<String, (String, Option<String>)>, SinkError> {
    let mut out = HashMap::new();
    for chunk in values.chunks(CHUNK) {
        let sql = format!("{select} ({})", vec!["?"; chunk.len()].join(", "));
        let mut query = sqlx::query_as::<_, (String, String, Option<String>)>(&sql);
        for value in chunk {
            query = query.bind(*value);
        }
        for (k, v, digest) in query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| outage("versions index", e))?
        {
            out.insert(k, (v, digest));
        }
    }
    Ok(out)
}

/// Writes the objects from up to [`WRITERS`] of tokio's blocking threads (the batch then
/// syncs once).
async fn write_all(mut writes: Vec<LocalWrite>) -> Result<Vec<LocalWrite>, SinkError> {
    let per = writes.len().div_ceil(WRITERS).max(1);
    let mut tasks = Vec::with_capacity(WRITERS);
    while !writes.is_empty() {
        let chunk: Vec<LocalWrite> = writes.drain(..per.min(writes.len())).collect();
        tasks.push(tokio::task::spawn_blocking(move || {
            let mut folders = Folders::default();
            chunk
                .iter()
                .try_for_each(|w| folders.write(&w.file, &w.bytes, w.stored))
                .map(|()| chunk)
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        let chunk = task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| outage("cannot write an object", e))?;
        written.extend(chunk);
    }
    Ok(written)
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
#[path = "local_tests.rs"]
mod tests;
