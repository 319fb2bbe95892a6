//! The object sink: one object per data record and per other event, at the key the core
//! library derives (so SQL `payload_id`s and keys agree), last writer wins by version
//! (ordering timestamp, then log position, then record index). The version of what is stored
//! is kept with it: user metadata `terra-ingest-version` on S3/GCS/Azure, a sidecar file
//! beside a local folder (`.<folder>-versions/`; a local folder's files are 0600 in 0700
//! folders, see `terra_eventlog::private_fs`). A bounded cache saves the lookup for keys
//! this process wrote. Writes are idempotent, so at-least-once consumption (the log's
//! committed positions) gives exactly-once state. Poison goes to `_dead-letters/`.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, GetOptions, ObjectStore, PutOptions, PutPayload};
use terra_eventlog::private_fs;
use terra_projector::plan::{PayloadKind, Plan, Planned, Version};
use terra_projector::{Sink, SinkError, WriteStats};
use tokio::task::JoinSet;

use crate::layout::split_records;
use crate::sqs::{Ping, Pinger};
use crate::store::Store;

const VERSION_ATTRIBUTE: &str = "terra-ingest-version";
/// Most versions remembered (about 100 bytes each); beyond that the cache starts over.
const VERSION_CACHE_LIMIT: usize = 100_000;
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
    versions: HashMap<String, Version>,
}

/// One object to write.
#[derive(Debug, Clone)]
struct Intent {
    key: String,
    payload_id: String,
    bytes: Bytes,
    version: Version,
    group: String,
    healthcheck: bool,
}

impl ObjectSink {
    pub fn new(store: Store, config: ObjectSinkConfig, pinger: Option<Pinger>) -> Self {
        Self {
            store,
            config,
            pinger,
            versions: HashMap::new(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn intents(&self, batch: &[Planned]) -> (Vec<Intent>, Vec<(String, Bytes)>, usize) {
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
                    dead.push((meta_key, Bytes::from(meta.to_string())));
                    dead.push((body_key, planned.body.clone()));
                }
                Plan::Event(event) => {
                    let split = if event.payloads.iter().any(|p| p.kind == PayloadKind::Data) {
                        split_records(&planned.body)
                    } else {
                        None
                    };
                    for row in &event.payloads {
                        let bytes = match (&split, row.kind) {
                            (Some(parts), PayloadKind::Data) => parts
                                .get(row.record_index as usize)
                                .map(|b| Bytes::from(b.clone()))
                                .unwrap_or_else(|| planned.body.clone()),
                            _ => planned.body.clone(),
                        };
                        let intent = Intent {
                            key: self.store.key(&row.payload_id),
                            payload_id: row.payload_id.clone(),
                            bytes,
                            version: row.version,
                            group: row
                                .user_id
                                .clone()
                                .unwrap_or_else(|| row.event_type.clone()),
                            healthcheck: row.event_type == "healthcheck",
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
        let (intents, dead, dead_count) = self.intents(batch);
        let mut stats = WriteStats {
            records: batch.len(),
            dead: dead_count,
            ..WriteStats::default()
        };
        for (key, bytes) in dead {
            put(&self.store, &key, bytes, None).await?;
        }
        // writes run concurrently; each key at most once per batch
        let mut tasks = JoinSet::new();
        let mut pending = intents.into_iter();
        let mut written = Vec::new();
        loop {
            while tasks.len() < CONCURRENCY {
                let Some(intent) = pending.next() else { break };
                let known = self.versions.get(&intent.key).copied();
                let store = self.store.clone();
                tasks.spawn(async move { write_one(&store, intent, known).await });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let (intent, outcome) =
                done.map_err(|e| SinkError::Outage(format!("write task failed: {e}")))??;
            match outcome {
                Outcome::Written => {
                    if self.versions.len() >= VERSION_CACHE_LIMIT {
                        self.versions.clear();
                    }
                    self.versions.insert(intent.key.clone(), intent.version);
                    stats.payloads += 1;
                    written.push(intent);
                }
                Outcome::Superseded(stored) => {
                    self.versions.insert(intent.key.clone(), stored);
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

enum Outcome {
    Written,
    Superseded(Version),
}

async fn write_one(
    store: &Store,
    intent: Intent,
    known: Option<Version>,
) -> Result<(Intent, Outcome), SinkError> {
    let stored = match known {
        Some(v) => Some(v),
        None => stored_version(store, &intent.key).await?,
    };
    if let Some(stored) = stored
        && stored > intent.version
    {
        return Ok((intent, Outcome::Superseded(stored)));
    }
    put(
        store,
        &intent.key,
        intent.bytes.clone(),
        Some(intent.version),
    )
    .await?;
    Ok((intent, Outcome::Written))
}

fn store_error(err: object_store::Error) -> SinkError {
    match err {
        object_store::Error::NotImplemented | object_store::Error::NotSupported { .. } => {
            SinkError::Fatal(format!("object store: {err}"))
        }
        other => SinkError::Outage(format!("object store: {other}")),
    }
}

async fn put(
    store: &Store,
    key: &str,
    bytes: Bytes,
    version: Option<Version>,
) -> Result<(), SinkError> {
    let path = object_path(key)?;
    // a local folder keeps no attributes (its versions live in the sidecar tree)
    let mut attributes = Attributes::new();
    if store.root.is_none() {
        attributes.insert(Attribute::ContentType, "application/json".into());
        if let Some(version) = version {
            attributes.insert(
                Attribute::Metadata(VERSION_ATTRIBUTE.into()),
                version.to_string().into(),
            );
        }
    }
    match &store.local {
        Some(local) => {
            let file = local.path_to_filesystem(&path).map_err(store_error)?;
            blocking(move || write_private_object(&file, &bytes))
                .await
                .map_err(|e| SinkError::Outage(format!("object store: cannot write {key}: {e}")))?;
        }
        None => {
            let options = PutOptions {
                attributes,
                ..PutOptions::default()
            };
            store
                .store
                .put_opts(&path, PutPayload::from_bytes(bytes), options)
                .await
                .map_err(store_error)?;
        }
    }
    if let (Some(version), Some(root)) = (version, &store.root) {
        let sidecar = sidecar_path(root, key);
        blocking(move || {
            if let Some(parent) = sidecar.parent() {
                private_fs::create_dir_all(parent)?;
            }
            private_fs::options()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&sidecar)?
                .write_all(version.to_string().as_bytes())
        })
        .await
        .map_err(|e| SinkError::Outage(format!("cannot write version file: {e}")))?;
    }
    Ok(())
}

async fn blocking(
    work: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Writes one object of a local folder as `LocalFileSystem` would (a staged `<file>#<n>`,
/// which listings skip, renamed into place, so readers never see half an object), but the
/// staged file is made 0600 and missing folders 0700.
fn write_private_object(file: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut attempt = 1u32;
    let (mut staged, staged_path) = loop {
        let mut name = file.as_os_str().to_owned();
        name.push(format!("#{attempt}"));
        let staged_path = PathBuf::from(name);
        match private_fs::options()
            .write(true)
            .create_new(true)
            .open(&staged_path)
        {
            Ok(staged) => break (staged, staged_path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => attempt += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = file.parent().ok_or(e)?;
                private_fs::create_dir_all(parent)?;
            }
            Err(e) => return Err(e),
        }
    };
    let written = staged
        .write_all(bytes)
        .and_then(|()| std::fs::rename(&staged_path, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&staged_path);
    }
    written
}

async fn stored_version(store: &Store, key: &str) -> Result<Option<Version>, SinkError> {
    if let Some(root) = &store.root {
        return match tokio::fs::read_to_string(sidecar_path(root, key)).await {
            Ok(text) => Ok(text.parse().ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SinkError::Outage(format!("cannot read version file: {e}"))),
        };
    }
    let options = GetOptions {
        head: true,
        ..GetOptions::default()
    };
    match store.store.get_opts(&object_path(key)?, options).await {
        Ok(result) => Ok(result
            .attributes
            .get(&Attribute::Metadata(VERSION_ATTRIBUTE.into()))
            .and_then(|v| v.as_ref().parse().ok())),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(err) => Err(store_error(err)),
    }
}

/// The key as an object path, verbatim: `Path::from` would percent-encode the `%` and `~`
/// of our already encoded keys, and the keys must equal the SQL `payload_id`s.
pub(crate) fn object_path(key: &str) -> Result<ObjectPath, SinkError> {
    ObjectPath::parse(key).map_err(|e| SinkError::Fatal(format!("invalid object key: {e}")))
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

fn sidecar_path(root: &std::path::Path, key: &str) -> PathBuf {
    versions_dir(root).join(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_refuse_garbage() {
        let v = Version {
            ts_ms: -5,
            partition: 3,
            offset: 77,
            index: 2,
        };
        assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        for bad in ["", "1:2:3", "1:2:3:4:5", "a:b:c:d"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn versions_live_beside_the_folder() {
        let p = sidecar_path(
            std::path::Path::new("/data/objects"),
            "2022-03-16/sleep/u-t.json",
        );
        assert_eq!(
            p,
            PathBuf::from("/data/.objects-versions/2022-03-16/sleep/u-t.json")
        );
    }
}
