//! The object sink: one object per data record and per other event, at the key the core
//! library derives (so SQL `payload_id`s and keys agree), last writer wins by version
//! (ordering timestamp, then log position, then record index). The version of what is stored
//! is kept with it: user metadata `terra-ingest-version` on S3/GCS/Azure (each write
//! conditional on what it read, so a concurrent writer cannot make an older copy win:
//! `crate::write`), an embedded index beside a local folder (`.<folder>-versions/`, one
//! transaction per batch: `crate::local`; a local folder's files are 0600 in 0700 folders,
//! see `terra_eventlog::private_fs`). A bounded cache
//! saves the lookup for keys this process wrote. Writes are idempotent, so at-least-once consumption (the log's
//! committed positions) gives exactly-once state. Poison goes to `_dead-letters/`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use terra_projector::plan::{PayloadKind, Plan, Planned, Version};
use terra_projector::{Sink, SinkError, WriteStats};
use tokio::task::JoinSet;

use crate::layout::split_records;
use crate::local::{LocalIndex, LocalWrite};
use crate::sqs::{Ping, Pinger};
use crate::store::Store;
use crate::write::{Known, Outcome, local_file, put_plain, write_versioned};

/// Most versions, and most claims, remembered (about 100 bytes each); beyond that a cache
/// starts over.
const CACHE_LIMIT: usize = 100_000;
/// Objects written at once.
const CONCURRENCY: usize = 16;

/// Settings of the object sink.
#[derive(Debug, Clone)]
pub struct ObjectSinkConfig {
    /// Lifetime of the pre-signed URLs in SQS pings.
    pub expires_in: Duration,
}

impl Default for ObjectSinkConfig {
    fn default() -> Self {
        Self {
            expires_in: Duration::from_secs(600),
        }
    }
}

pub struct ObjectSink {
    store: Store,
    config: ObjectSinkConfig,
    pinger: Option<Pinger>,
    versions: HashMap<String, Known>,
    /// Base payload ids and the identity that holds each (`crate::claims`).
    claims: HashMap<String, String>,
    /// A local folder's index of versions and claims, opened at the first write.
    local: Option<LocalIndex>,
    /// Most entries of each cache ([`CACHE_LIMIT`]; tests lower it).
    cache_limit: usize,
}

/// One object to write.
#[derive(Debug, Clone)]
struct Intent {
    key: String,
    payload_id: String,
    bytes: Bytes,
    version: Version,
    group: String,
    user_id: Option<String>,
    reference_id: Option<String>,
    healthcheck: bool,
    /// Hex SHA-256 of `bytes` when they are the webhook body (the ingress hashed it).
    digest: Option<String>,
}

/// A poison record's two objects: `_dead-letters/<partition>-<offset>.json` (what and why)
/// and `.body` (the exact bytes).
struct DeadLetter {
    meta_key: String,
    meta: serde_json::Value,
    body_key: String,
    body: Bytes,
}

impl ObjectSink {
    pub fn new(store: Store, config: ObjectSinkConfig, pinger: Option<Pinger>) -> Self {
        Self {
            store,
            config,
            pinger,
            versions: HashMap::new(),
            claims: HashMap::new(),
            local: None,
            cache_limit: CACHE_LIMIT,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The final payload id of every `(identity, base id)` of the batch ([`claim_key`]),
    /// claimed in log order (first appearance), as the SQL projection claims them: every
    /// copy of a record resolves alike, whatever the batch boundaries. Also the claims this
    /// process did not know, for its cache once the batch is written: a local folder's
    /// claims are committed with the batch's versions, so a batch that fails has claimed
    /// nothing, and a cache that kept them would skip claiming them when it is written again.
    async fn resolve_claims(
        &mut self,
        batch: &[Planned],
    ) -> Result<(HashMap<String, String>, HashMap<String, String>), SinkError> {
        // the claimed rows in log order, and the base ids this process does not know yet
        let rows: Vec<_> = batch
            .iter()
            .filter_map(|planned| match &planned.plan {
                Plan::Event(event) => Some(event.payloads.iter().filter(|r| r.claims)),
                Plan::Dead(_) => None,
            })
            .flatten()
            .collect();
        // the cache starts over *before* the lookup, so that every base of the batch is
        // either still cached or asked for (clearing it after the lookup dropped the bases
        // it still knew, and the batch failed as an outage and was written again: every
        // ~100,000 claims under load)
        if self.claims.len() + rows.len() > self.cache_limit {
            self.claims.clear();
        }
        let mut unknown: Vec<(String, String)> = Vec::new();
        let mut asked = std::collections::HashSet::new();
        for row in &rows {
            if !self.claims.contains_key(&row.payload_id) && asked.insert(&row.payload_id) {
                unknown.push((row.payload_id.clone(), row.identity.clone()));
            }
        }
        let mut held = HashMap::new();
        if !unknown.is_empty() {
            held = match self.local_index().await? {
                Some(index) => index.claim(&unknown).await?,
                None => {
                    let mut held = HashMap::new();
                    for (base, identity) in &unknown {
                        let holder = crate::claims::holder(&self.store, base, identity).await?;
                        held.insert(base.clone(), holder);
                    }
                    held
                }
            };
        }
        let mut out = HashMap::new();
        for row in rows {
            let Some(holder) = held
                .get(&row.payload_id)
                .or_else(|| self.claims.get(&row.payload_id))
            else {
                return Err(SinkError::Outage(format!(
                    "the claim of {} was not resolved",
                    row.payload_id
                )));
            };
            let id = if *holder == row.identity {
                row.payload_id.clone()
            } else {
                terra_core::keys::with_suffix(&row.payload_id, &row.identity)
            };
            out.insert(claim_key(&row.identity, &row.payload_id), id);
        }
        Ok((out, held))
    }

    /// The local folder's index, opened at first use; `None` for other stores.
    async fn local_index(&mut self) -> Result<Option<&mut LocalIndex>, SinkError> {
        let Some(root) = &self.store.root else {
            return Ok(None);
        };
        if self.local.is_none() {
            self.local = Some(LocalIndex::open(root, &self.store.prefix).await?);
        }
        Ok(self.local.as_mut())
    }

    fn intents(
        &self,
        batch: &[Planned],
        final_ids: &HashMap<String, String>,
    ) -> (Vec<Intent>, Vec<DeadLetter>, usize) {
        let mut newest: HashMap<String, Intent> = HashMap::new();
        let mut dead = Vec::new();
        let mut dead_count = 0;
        for planned in batch {
            match &planned.plan {
                Plan::Dead(letter) => {
                    dead_count += 1;
                    let stem = format!(
                        "_dead-letters/{}-{}",
                        planned.position.partition, planned.position.offset
                    );
                    let meta = serde_json::json!({
                        "reason": letter.reason,
                        "envelope_id": planned.envelope_id,
                        "event_type": planned.event_type,
                        "partition": planned.position.partition,
                        "offset": planned.position.offset,
                        "body_sha256": planned.body_sha256,
                    });
                    let meta_key = terra_core::keys::object_key(&self.store.prefix, &stem);
                    let body_key = format!("{}.body", meta_key.trim_end_matches(".json"));
                    dead.push(DeadLetter {
                        meta_key,
                        meta,
                        body_key,
                        body: planned.body.clone(),
                    });
                }
                Plan::Event(event) => {
                    // a body of one record is its object as received (`split_records` would
                    // copy it whole), so only bodies of several records are split
                    let records = event
                        .payloads
                        .iter()
                        .filter(|p| p.kind == PayloadKind::Data)
                        .count();
                    let split = if records > 1 {
                        split_records(&planned.body)
                    } else {
                        None
                    };
                    let body_digest = Some(planned.body_sha256.clone()).filter(|d| d.len() == 64);
                    for row in &event.payloads {
                        let (bytes, digest) = match (&split, row.kind) {
                            (Some(parts), PayloadKind::Data) => {
                                match parts.get(row.record_index as usize) {
                                    Some(part) => (Bytes::from(part.clone()), None),
                                    None => (planned.body.clone(), body_digest.clone()),
                                }
                            }
                            _ => (planned.body.clone(), body_digest.clone()),
                        };
                        let payload_id = final_ids
                            .get(&claim_key(&row.identity, &row.payload_id))
                            .unwrap_or(&row.payload_id)
                            .clone();
                        let intent = Intent {
                            key: self.store.key(&payload_id),
                            payload_id,
                            bytes,
                            version: row.version,
                            group: row
                                .user_id
                                .clone()
                                .unwrap_or_else(|| row.event_type.clone()),
                            user_id: row.user_id.clone(),
                            reference_id: row.reference_id.clone(),
                            healthcheck: row.event_type == "healthcheck",
                            digest,
                        };
                        match newest.get(&intent.key) {
                            Some(kept) if kept.version > intent.version => {}
                            _ => {
                                newest.insert(intent.key.clone(), intent);
                            }
                        }
                    }
                }
            }
        }
        let mut intents: Vec<Intent> = newest.into_values().collect();
        intents.sort_by_key(|i| i.version);
        (intents, dead, dead_count)
    }
}

impl Sink for ObjectSink {
    fn name(&self) -> &str {
        "objects"
    }

    async fn stored_positions(
        &mut self,
    ) -> Result<Option<std::collections::BTreeMap<u32, u64>>, SinkError> {
        Ok(None)
    }

    async fn write(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        let written = self.write_batch(batch).await;
        if written.is_err()
            && let Some(index) = self.local.as_mut()
        {
            // not held while the runner waits to write the batch again: other projectors
            // of the folder take their turns meanwhile
            index.rollback().await.ok();
        }
        written
    }
}

impl ObjectSink {
    async fn write_batch(&mut self, batch: &[Planned]) -> Result<WriteStats, SinkError> {
        // a local folder's batch is one transaction of its index, from its claims to its
        // versions (one a failed batch left open is rolled back)
        if let Some(index) = self.local_index().await? {
            index.begin().await?;
        }
        let (final_ids, claimed) = self.resolve_claims(batch).await?;
        let (intents, dead, dead_count) = self.intents(batch, &final_ids);
        let mut stats = WriteStats {
            records: batch.len(),
            dead: dead_count,
            ..WriteStats::default()
        };
        for letter in dead {
            let mut meta = letter.meta;
            match put_plain(&self.store, &letter.body_key, letter.body).await {
                Ok(()) => {}
                // the store refuses the body itself (too large for it): the log keeps the
                // body, the letter says why it is not beside it
                Err(SinkError::Rejected(why)) => meta["body_not_stored"] = why.into(),
                Err(err) => return Err(err),
            }
            put_plain(&self.store, &letter.meta_key, Bytes::from(meta.to_string())).await?;
        }
        let had_dead = dead_count > 0;
        let outcomes = if self.store.root.is_some() {
            self.write_local(intents, had_dead).await?
        } else {
            self.write_remote(intents).await?
        };
        self.claims.extend(claimed);
        let mut written = Vec::new();
        for (intent, outcome) in outcomes {
            match outcome {
                Outcome::Written(known) => {
                    if self.versions.len() >= self.cache_limit {
                        self.versions.clear();
                    }
                    self.versions.insert(intent.key.clone(), known);
                    stats.payloads += 1;
                    written.push(intent);
                }
                Outcome::Superseded(stored) => {
                    self.versions
                        .insert(intent.key.clone(), Known::version(stored));
                    stats.superseded += 1;
                }
            }
        }
        if let Some(pinger) = &self.pinger {
            let mut pings = Vec::with_capacity(written.len());
            for intent in &written {
                let version = intent.version.to_string();
                if intent.healthcheck {
                    pings.push(Ping::healthcheck(&intent.bytes, &version));
                } else {
                    let url = self.url(&intent.key).await?;
                    pings.push(Ping::s3_payload(
                        &url,
                        self.config.expires_in.as_secs(),
                        &intent.payload_id,
                        intent.user_id.as_deref(),
                        intent.reference_id.as_deref(),
                        &intent.group,
                        &version,
                    ));
                }
            }
            pinger.send(&pings).await.map_err(SinkError::Outage)?;
        }
        Ok(stats)
    }
}

impl ObjectSink {
    /// A remote store's writes: concurrent, each conditional on what it read.
    async fn write_remote(
        &mut self,
        intents: Vec<Intent>,
    ) -> Result<Vec<(Intent, Outcome)>, SinkError> {
        let mut tasks = JoinSet::new();
        let mut pending = intents.into_iter();
        let mut outcomes = Vec::new();
        loop {
            while tasks.len() < CONCURRENCY {
                let Some(intent) = pending.next() else { break };
                let known = self.versions.get(&intent.key).cloned();
                let store = self.store.clone();
                tasks.spawn(async move {
                    let bytes = intent.bytes.clone();
                    write_versioned(&store, &intent.key, bytes, intent.version, known)
                        .await
                        .map(|outcome| (intent, outcome))
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            outcomes.push(done.map_err(|e| SinkError::Outage(format!("write task failed: {e}")))??);
        }
        Ok(outcomes)
    }

    /// A local folder's writes: one transaction of its index for the whole batch
    /// (`crate::local`); `sync` when something else of the batch (dead letters) needs the
    /// batch's sync even if no object is written.
    async fn write_local(
        &mut self,
        intents: Vec<Intent>,
        sync: bool,
    ) -> Result<Vec<(Intent, Outcome)>, SinkError> {
        let mut outcomes = Vec::new();
        let mut writes = Vec::with_capacity(intents.len());
        let mut by_key = HashMap::with_capacity(intents.len());
        for intent in intents {
            if let Some(known) = self.versions.get(&intent.key)
                && known.version > intent.version
            {
                // stored versions only grow, so the folder holds at least this one
                outcomes.push((intent, Outcome::Superseded(known.version)));
                continue;
            }
            writes.push(LocalWrite::new(
                intent.key.clone(),
                local_file(&self.store, &intent.key)?,
                intent.bytes.clone(),
                intent.version,
                intent.digest.as_deref(),
            ));
            by_key.insert(intent.key.clone(), intent);
        }
        let Some(index) = self.local_index().await? else {
            return Err(SinkError::Fatal("a local store without its folder".into()));
        };
        for (write, outcome) in index.write_batch(writes, sync).await? {
            let Some(intent) = by_key.remove(&write.key) else {
                continue;
            };
            let outcome = match outcome {
                Ok(()) => Outcome::Written(Known::version(write.version)),
                Err(newer) => Outcome::Superseded(newer),
            };
            outcomes.push((intent, outcome));
        }
        Ok(outcomes)
    }

    /// A URL the ping's receiver can GET the object from: pre-signed for cloud stores, a
    /// `file://` URL for a local folder.
    async fn url(&self, key: &str) -> Result<String, SinkError> {
        match (&self.store.signer, &self.store.root) {
            (Some(signer), _) => signer
                .signed_url(
                    http::Method::GET,
                    &object_path(key)?,
                    self.config.expires_in,
                )
                .await
                .map(|u| u.to_string())
                .map_err(|e| SinkError::Outage(format!("failed to pre-sign a URL: {e}"))),
            (None, Some(root)) => Ok(format!("file://{}", root.join(key).display())),
            (None, None) => Err(SinkError::Fatal(
                "this store cannot give URLs for pings".into(),
            )),
        }
    }
}

/// The key as an object path, verbatim: `Path::from` would percent-encode the `%` and `~`
/// of our already encoded keys, and the keys must equal the SQL `payload_id`s. A key that
/// is not a path is this record's problem: it is dead-lettered.
pub(crate) fn object_path(key: &str) -> Result<ObjectPath, SinkError> {
    ObjectPath::parse(key).map_err(|e| SinkError::Rejected(format!("invalid object key: {e}")))
}

/// The key of a `(identity, base id)` pair in the resolved ids.
fn claim_key(identity: &str, base: &str) -> String {
    format!("{identity}\n{base}")
}

/// The versions folder beside a local objects folder (outside it, so the bucket layout is
/// only Terra's).
pub(crate) fn versions_dir(root: &std::path::Path) -> PathBuf {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    root.with_file_name(format!(".{name}-versions"))
}

/// Where an earlier version kept the version of `key` (imported into the index: `crate::local`).
#[cfg(test)]
pub(crate) fn sidecar_path(root: &std::path::Path, key: &str) -> PathBuf {
    versions_dir(root).join(key)
}

#[cfg(test)]
#[path = "sink_tests.rs"]
mod tests;
