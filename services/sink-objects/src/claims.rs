//! Which identity holds a base payload id (`terra_core::keys`, suffix rule), kept in the
//! store itself so every object projector of the bucket (and a restart) sees the same claims:
//! a marker `_claims/<base id>` holding the identity, made create-only (`If-None-Match: *`
//! on S3, `x-goog-if-generation-match: 0` on GCS); a local folder keeps its claims in its
//! index (`crate::local`). The first identity to make
//! the marker keeps the base id; any other gets the suffixed id. Claims never move, and they
//! are made in log order, so the SQL projection (which claims through its payload index in
//! the same order) gives every row the id of its object.

use bytes::Bytes;
use object_store::{GetOptions, PutMode, PutOptions, PutPayload};
use terra_projector::SinkError;

use crate::errors::sink_error;
use crate::sink::object_path;
use crate::store::Store;

/// The folder of the markers, beside the dead letters.
pub(crate) const CLAIMS_FOLDER: &str = "_claims";

/// The identity that holds `base` in a remote store: `identity` itself when it is the first
/// to ask (a local folder claims through its index).
pub(crate) async fn holder(store: &Store, base: &str, identity: &str) -> Result<String, SinkError> {
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
