//! Which identity holds a base payload id (`terra_core::keys`, suffix rule), kept in the
//! store itself so every object projector of the bucket (and a restart) sees the same claims:
//! a marker `_claims/<base id>` holding the identity, made create-only (`If-None-Match: *`
//! on S3, `x-goog-if-generation-match: 0` on GCS; a hard link, which cannot replace, in a
//! local folder's versions tree `.<folder>-versions/_claims/`). The first identity to make
//! the marker keeps the base id; any other gets the suffixed id. Claims never move, and they
//! are made in log order, so the SQL projection (which claims through its payload index in
//! the same order) gives every row the id of its object.

use std::io::{Read, Write};
use std::path::PathBuf;

use bytes::Bytes;
use object_store::{GetOptions, PutMode, PutOptions, PutPayload};
use terra_eventlog::private_fs;
use terra_projector::SinkError;

use crate::errors::sink_error;
use crate::sink::{object_path, versions_dir};
use crate::store::Store;

/// The folder of the markers, beside the dead letters.
pub(crate) const CLAIMS_FOLDER: &str = "_claims";

/// The identity that holds `base`: `identity` itself when it is the first to ask.
pub(crate) async fn holder(store: &Store, base: &str, identity: &str) -> Result<String, SinkError> {
    match &store.root {
        Some(root) => {
            let marker = versions_dir(root).join(CLAIMS_FOLDER).join(base);
            let (identity, base) = (identity.to_owned(), base.to_owned());
            tokio::task::spawn_blocking(move || claim_local(marker, &identity))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| SinkError::Outage(format!("object store: cannot claim {base}: {e}")))
        }
        None => claim_remote(store, base, identity).await,
    }
}

fn claim_local(marker: PathBuf, identity: &str) -> std::io::Result<String> {
    let parent = marker
        .parent()
        .ok_or_else(|| std::io::Error::other("no folder"))?;
    private_fs::create_dir_all(parent)?;
    // the marker appears whole or not at all: written aside, then linked into place (a link
    // never replaces an existing name)
    let mut staged_name = marker.as_os_str().to_owned();
    static STAGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = STAGED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    staged_name.push(format!("#{}-{n}", std::process::id()));
    let staged = PathBuf::from(staged_name);
    let mut file = private_fs::options()
        .write(true)
        .create_new(true)
        .open(&staged)?;
    file.write_all(identity.as_bytes())?;
    file.sync_all()?;
    let linked = std::fs::hard_link(&staged, &marker);
    std::fs::remove_file(&staged)?;
    match linked {
        Ok(()) => Ok(identity.to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut held = String::new();
            std::fs::File::open(&marker)?.read_to_string(&mut held)?;
            Ok(held)
        }
        Err(e) => Err(e),
    }
}

async fn claim_remote(store: &Store, base: &str, identity: &str) -> Result<String, SinkError> {
    let key = terra_core::keys::object_key(&store.prefix, &format!("{CLAIMS_FOLDER}/{base}"));
    let path = object_path(key.trim_end_matches(".json"))?;
    for _ in 0..3 {
        match store.store.get_opts(&path, GetOptions::default()).await {
            Ok(found) => {
                let bytes = found
                    .bytes()
                    .await
                    .map_err(|e| sink_error(&format!("GET {key}"), e))?;
                return Ok(String::from_utf8_lossy(&bytes).into_owned());
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(err) => return Err(sink_error(&format!("GET {key}"), err)),
        }
        let mode = if store.conditional {
            PutMode::Create
        } else {
            // a server that refuses conditional puts: check-then-put
            PutMode::Overwrite
        };
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        let payload = PutPayload::from_bytes(Bytes::from(identity.to_owned()));
        match store.store.put_opts(&path, payload, options).await {
            Ok(_) => return Ok(identity.to_owned()),
            // another projector made it first: read whose it is
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(err) => return Err(sink_error(&format!("PUT {key}"), err)),
        }
    }
    Err(SinkError::Outage(format!(
        "object store: the claim of {base} changed under 3 tries"
    )))
}
