//! `GetPayload`'s body: the object store's streaming read forwarded as it arrives, in data
//! messages of at most [`CHUNK`] bytes, so a large object never sits whole in memory (at most
//! one message and one read of the store are held). The call's deadline and in-flight permit
//! last until the last byte is sent.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tonic::Status;

use crate::limits::Gates;
use crate::proto::{GetPayloadChunk, get_payload_chunk};
use crate::service::CHUNK;

struct Body {
    reads: BoxStream<'static, object_store::Result<Bytes>>,
    pending: BytesMut,
    deadline: Instant,
    gates: Gates,
    done: bool,
    /// The object is at most one message: its one read is the message.
    whole: bool,
    _permit: OwnedSemaphorePermit,
}

fn data(bytes: Bytes) -> Result<GetPayloadChunk, Status> {
    Ok(GetPayloadChunk {
        chunk: Some(get_payload_chunk::Chunk::Data(bytes)),
    })
}

/// The data messages of `object`, read as the client takes them.
pub(crate) fn chunks(
    object: object_store::GetResult,
    deadline: Instant,
    gates: Gates,
    permit: OwnedSemaphorePermit,
) -> Pin<Box<dyn Stream<Item = Result<GetPayloadChunk, Status>> + Send>> {
    // an object of at most one message is read in one go, as before streaming (a chunked
    // read costs a blocking-pool hop per read on a local folder)
    let whole = object.meta.size <= CHUNK as u64;
    let reads = if whole {
        futures::stream::once(object.bytes()).boxed()
    } else {
        object.into_stream()
    };
    let body = Body {
        reads,
        whole,
        pending: BytesMut::new(),
        deadline,
        gates,
        done: false,
        _permit: permit,
    };
    Box::pin(futures::stream::unfold(body, |mut body| async move {
        if body.done {
            return None;
        }
        loop {
            if body.pending.len() >= CHUNK {
                let message = body.pending.split_to(CHUNK).freeze();
                return Some((data(message), body));
            }
            match tokio::time::timeout_at(body.deadline, body.reads.next()).await {
                Ok(Some(Ok(read))) => {
                    if body.pending.is_empty() && (read.len() == CHUNK || body.whole) {
                        return Some((data(read), body)); // as it came, no copy
                    }
                    body.pending.extend_from_slice(&read);
                }
                Ok(None) => {
                    body.done = true;
                    if body.pending.is_empty() {
                        return None;
                    }
                    let message = body.pending.split().freeze();
                    return Some((data(message), body));
                }
                Ok(Some(Err(err))) => {
                    tracing::warn!(error = %err, "object store read failed in the middle of a body");
                    body.done = true;
                    return Some((
                        Err(Status::unavailable(
                            "object store unavailable while reading the body; retry",
                        )),
                        body,
                    ));
                }
                Err(_) => {
                    body.done = true;
                    let status = body.gates.deadline_exceeded();
                    return Some((Err(status), body));
                }
            }
        }
    }))
}
