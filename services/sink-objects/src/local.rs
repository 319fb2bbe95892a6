//! A local folder's versions and claims, in one embedded index instead of a file per object
//! (issue 16): `.<folder>-versions/_index.sqlite3` (SQLite in WAL, 0600 like every file of
//! the folder), one row per key in `objects`: the stored object's version and the SHA-256 of
//! its bytes, and, when the key is a base payload id's, the identity holding that id (the
//! claim, `crate::claims`; the holder's object is at the base id's own key). So a new record
//! costs one lookup and one insert in one B-tree, where separate `versions` and `claims`
//! tables cost two of each (issue 16: the index was a quarter to a third of the object
//! projector's CPU, most of it inserts and lookups of keys all over the tree).
//!
//! A batch is one write transaction (`BEGIN IMMEDIATE`, so projectors of the same folder, in
//! this process or another, take turns as they did on the sidecar files' locks): the stored
//! rows of the batch's keys are read, claims are decided, the newer objects are written
//! (each staged and renamed into place, by a bounded set of threads), the filesystem is
//! synced once (`syncfs`: objects, folders and dead letters reach the disk), and only then
//! are the new versions and claims committed, the commit itself synced (`synchronous =
//! FULL`). So the index never holds a version whose bytes might not be on disk: a copy with
//! the same bytes is skipped on the strength of the index alone, so a version committed
//! before its object was durable would leave a power cut's (or a failed sync's) lost object
//! lost for good. A batch that fails commits no claim either; written again, it claims the
//! same way, since claims are decided in log order.
//!
//! Indexes of earlier versions are brought forward when opened (`crate::local_import`): the
//! `versions` and `claims` tables of 2026-12 into `objects`, and before that a sidecar file
//! per object under `.<folder>-versions/` and claim markers under its `_claims/` (the old
//! files are left where they are).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sha2::Digest;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use terra_eventlog::private_fs;
use terra_projector::SinkError;
use terra_projector::plan::Version;

use crate::local_rows::{IndexRow, Stored, insert, lookup, upsert};
use crate::sink::versions_dir;
#[cfg(test)]
use crate::write::write_private_object;
use crate::write::{blocking, write_all};

/// The index's file name inside the versions folder (no key can be this: keys end `.json`).
pub(crate) const INDEX_FILE: &str = "_index.sqlite3";
/// Locked (`flock`) while the index is opened, beside it.
pub(crate) const OPEN_LOCK_FILE: &str = "_index.open-lock";
/// WAL pages between automatic checkpoints of the index (`PRAGMA wal_autocheckpoint`).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// The index's page cache, KiB (`PRAGMA cache_size = -N`).
const CACHE_KIB: i64 = 65_536;
/// One object of a batch to write unless a newer version is stored.
pub(crate) struct LocalWrite {
    pub(crate) key: String,
    pub(crate) file: PathBuf,
    pub(crate) bytes: Bytes,
    pub(crate) version: Version,
    /// SHA-256 of `bytes`.
    pub(crate) digest: [u8; 32],
    /// The index has a version of `key`, so the file is there already: it is replaced
    /// (staged and renamed over) without first trying to link a new one at its name.
    pub(crate) stored: bool,
}

impl LocalWrite {
    /// `digest`: the hex SHA-256 of `bytes` when the caller knows it (an object that is the
    /// webhook body, hashed by the ingress), else (or when it is not 64 hex digits) it is
    /// computed here.
    pub(crate) fn new(
        key: String,
        file: PathBuf,
        bytes: Bytes,
        version: Version,
        digest: Option<&str>,
    ) -> Self {
        let mut known = [0u8; 32];
        let digest = match digest.map(|d| hex::decode_to_slice(d, &mut known)) {
            Some(Ok(())) => known,
            _ => sha2::Sha256::digest(&bytes).into(),
        };
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

/// The open transaction of a batch: the rows read so far, and the claims it made.
#[derive(Default)]
struct Batch {
    /// Every key looked up in this transaction (absent ones as [`Stored::default`]).
    rows: HashMap<String, Stored>,
    /// Keys claimed in this transaction, and by whom: committed with the versions.
    claimed: HashMap<String, String>,
}

pub(crate) struct LocalIndex {
    pub(crate) conn: SqliteConnection,
    /// The store's key prefix: a base id's key is `terra_core::keys::object_key` of it.
    prefix: String,
    /// The folder's filesystem, for `syncfs`.
    root: std::fs::File,
    /// Makes what was written to the folder durable: `syncfs` (a test fails it).
    pub(crate) sync: fn(&std::fs::File) -> std::io::Result<()>,
    /// The batch whose transaction is open.
    batch: Option<Batch>,
}

/// `syncfs` of the filesystem holding `file`.
fn syncfs(file: &std::fs::File) -> std::io::Result<()> {
    rustix::fs::syncfs(file).map_err(std::io::Error::from)
}

pub(crate) fn outage(what: &str, e: impl std::fmt::Display) -> SinkError {
    SinkError::Outage(format!("object store: {what}: {e}"))
}

impl LocalIndex {
    /// Opens (or creates, bringing an earlier version's index forward) the index of `root`,
    /// whose keys start with `prefix`.
    pub(crate) async fn open(root: &Path, prefix: &str) -> Result<Self, SinkError> {
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
            // digest: SHA-256 of the stored bytes, so a copy with the same bytes (Terra's
            // retries, re-deliveries) moves the version without rewriting the file; holder:
            // the claim of the base id whose key this is (32 bytes when the identity is a
            // SHA-256 in hex, as every identity the planner makes; else its text)
            "CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, version TEXT NULL, digest BLOB NULL, holder NULL) WITHOUT ROWID",
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
            prefix: prefix.to_owned(),
            root: root_file,
            sync: syncfs,
            batch: None,
        };
        crate::local_import::bring_forward(&mut index.conn, &dir, &index.prefix, fresh).await?;
        Ok(index)
    }

    /// The key of a base payload id (`terra_core::keys::object_key`).
    fn base_key(&self, base: &str) -> String {
        terra_core::keys::object_key(&self.prefix, base)
    }

    /// Starts the transaction of a batch, rolling back one a failed batch left open (its
    /// claims are made again, in log order, when it is written again).
    pub(crate) async fn begin(&mut self) -> Result<(), SinkError> {
        self.rollback().await?;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut self.conn)
            .await
            .map_err(|e| outage("versions index", e))?;
        self.batch = Some(Batch::default());
        Ok(())
    }

    /// Rolls back the open batch, if any (its claims and versions are not kept).
    pub(crate) async fn rollback(&mut self) -> Result<(), SinkError> {
        if self.batch.take().is_some() {
            sqlx::query("ROLLBACK")
                .execute(&mut self.conn)
                .await
                .map_err(|e| outage("versions index", e))?;
        }
        Ok(())
    }

    /// Looks up the keys of `keys` the open batch has not read yet.
    async fn read(&mut self, keys: &[&str]) -> Result<(), SinkError> {
        if self.batch.is_none() {
            self.begin().await?;
        }
        let batch = self.batch.as_mut().expect("begun");
        let mut missing: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !batch.rows.contains_key(*k))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        let found = lookup(&mut self.conn, &missing).await?;
        for key in missing {
            batch.rows.insert(key.to_owned(), Stored::default());
        }
        batch.rows.extend(found);
        Ok(())
    }

    /// The identity holding each base id: the stored claim, else the first identity asking
    /// for it here (`wanted` is in log order), claimed in the open batch's transaction
    /// (begun if none is) and committed with its versions by [`Self::write_batch`].
    pub(crate) async fn claim(
        &mut self,
        wanted: &[(String, String)],
    ) -> Result<HashMap<String, String>, SinkError> {
        let keys: Vec<String> = wanted.iter().map(|(b, _)| self.base_key(b)).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        if let Err(e) = self.read(&refs).await {
            self.rollback().await.ok();
            return Err(e);
        }
        let batch = self.batch.as_mut().expect("begun");
        let mut held = HashMap::new();
        for ((base, identity), key) in wanted.iter().zip(keys) {
            if held.contains_key(base) {
                continue;
            }
            let row = batch.rows.entry(key.clone()).or_default();
            let holder = row.holder.get_or_insert_with(|| {
                batch.claimed.insert(key, identity.clone());
                identity.clone()
            });
            held.insert(base.clone(), holder.clone());
        }
        Ok(held)
    }

    /// Writes each object unless a newer version is stored, syncs, stores the versions (and
    /// the batch's claims) and commits. `sync`: sync even when no object is written (the
    /// batch wrote dead letters).
    pub(crate) async fn write_batch(
        &mut self,
        writes: Vec<LocalWrite>,
        sync: bool,
    ) -> Result<Vec<(LocalWrite, LocalOutcome)>, SinkError> {
        match self.write_open(writes, sync).await {
            Ok(outcomes) => {
                let committed = sqlx::query("COMMIT").execute(&mut self.conn).await;
                if let Err(e) = committed {
                    // a failed COMMIT can leave the transaction open: the next batch must
                    // find the index free
                    self.rollback().await.ok();
                    return Err(outage("versions index", e));
                }
                self.batch = None;
                Ok(outcomes)
            }
            Err(e) => {
                self.rollback().await.ok();
                Err(e)
            }
        }
    }

    async fn write_open(
        &mut self,
        writes: Vec<LocalWrite>,
        sync: bool,
    ) -> Result<Vec<(LocalWrite, LocalOutcome)>, SinkError> {
        let keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
        self.read(&keys).await?;
        let batch = self.batch.as_mut().expect("begun");
        let (mut to_write, mut outcomes, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
        for write in writes {
            let stored = batch.rows.get(&write.key);
            let version = stored.and_then(|s| s.version);
            let digest = stored.and_then(|s| s.digest.as_deref());
            match version {
                Some(newer) if newer > write.version => outcomes.push((write, Err(newer))),
                // the same bytes are there already: only the version moves
                Some(_) if digest == Some(&write.digest[..]) => unchanged.push(write),
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
        let batch = self.batch.as_mut().expect("begun");
        let claimed = std::mem::take(&mut batch.claimed);
        // each key once: its version with its claim, or a claim alone (nothing written at it)
        let mut rows: Vec<IndexRow> = written
            .iter()
            .chain(&unchanged)
            .map(|w| IndexRow {
                key: &w.key,
                version: Some(w.version.to_string()),
                digest: Some(&w.digest[..]),
                holder: claimed.get(&w.key).map(String::as_str),
            })
            .collect();
        let versioned: std::collections::HashSet<&str> = rows.iter().map(|r| r.key).collect();
        let alone: Vec<IndexRow> = claimed
            .iter()
            .filter(|(key, _)| !versioned.contains(key.as_str()))
            .map(|(key, identity)| IndexRow {
                key,
                version: None,
                digest: None,
                holder: Some(identity),
            })
            .collect();
        rows.extend(alone);
        // a row the batch's lookup did not find is new: the lookup ran in this transaction,
        // which holds the index's write lock, so no other writer added it since
        let mut seen = std::collections::HashSet::with_capacity(rows.len());
        let (new, replacing): (Vec<IndexRow>, Vec<IndexRow>) = rows.into_iter().partition(|r| {
            seen.insert(r.key) && !batch.rows.get(r.key).is_some_and(|s| s.in_index)
        });
        insert(&mut self.conn, &new).await?;
        upsert(&mut self.conn, &replacing).await?;
        outcomes.extend(written.into_iter().chain(unchanged).map(|w| (w, Ok(()))));
        Ok(outcomes)
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
pub(crate) mod tests;
