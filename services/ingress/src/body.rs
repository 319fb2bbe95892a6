//! A webhook's body, read whole within the body limit and the in-flight byte budget.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::IngressError;

/// Reads the whole body within the body limit and the in-flight byte budget: a declared
/// length is checked and reserved before anything is read, a chunked body reserves as it
/// arrives. Returns the body and its reservation.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, OwnedSemaphorePermit), IngressError> {
    const NO_ROOM: IngressError = IngressError::Overloaded("body bytes in flight");
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(IngressError::TooLarge { limit });
    }
    // the limit fits in u32 (validated), so does a declared length under it
    let reserved = declared.unwrap_or(0) as u32;
    let mut permit = Arc::clone(budget)
        .try_acquire_many_owned(reserved)
        .map_err(|_| NO_ROOM)?;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| IngressError::BodyRead)?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        len += chunk.len();
        if len > limit {
            return Err(IngressError::TooLarge { limit });
        }
        if len > permit.num_permits() {
            let more = (len - permit.num_permits()) as u32;
            permit.merge(
                Arc::clone(budget)
                    .try_acquire_many_owned(more)
                    .map_err(|_| NO_ROOM)?,
            );
        }
        chunks.push(chunk);
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    };
    Ok((body, permit))
}
