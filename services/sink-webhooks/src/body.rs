//! How a kept body is stored in `webhook_events`: as an LZ4 block when that is smaller (column
//! `body_encoding` = `lz4`), else as the bytes Terra sent (`NULL`). A body is kept only while
//! a delivery of it is still to send (an endpoint failing or down), and writing it was most of
//! what a down endpoint cost the healthy ones; Terra's JSON bodies shrink about threefold. What
//! is sent is always the bytes Terra sent: [`decode`] gives them back exactly.

/// `body_encoding` of an LZ4 block, its decoded length first (4 bytes, little-endian).
pub(crate) const LZ4: &str = "lz4";

/// The stored form of `body` and its `body_encoding`.
pub(crate) fn encode(body: &[u8]) -> (Vec<u8>, Option<&'static str>) {
    let packed = lz4_flex::block::compress_prepend_size(body);
    if packed.len() < body.len() {
        (packed, Some(LZ4))
    } else {
        (body.to_vec(), None)
    }
}

/// The bytes Terra sent, from a stored body and its `body_encoding`. The error names what is
/// wrong, never the body.
pub(crate) fn decode(stored: Vec<u8>, encoding: Option<&str>) -> Result<Vec<u8>, String> {
    match encoding {
        None => Ok(stored),
        Some(LZ4) => {
            let claimed = stored
                .first_chunk::<4>()
                .map(|n| u32::from_le_bytes(*n) as usize)
                .ok_or("a stored lz4 body is shorter than its length")?;
            // LZ4 expands at most about 255 times: a larger claim is a damaged row, not an
            // allocation to make
            if claimed > stored.len().saturating_mul(255) + 16 {
                return Err(format!(
                    "a stored lz4 body of {} bytes claims {claimed} bytes decoded",
                    stored.len()
                ));
            }
            lz4_flex::block::decompress_size_prepended(&stored)
                .map_err(|e| format!("a stored lz4 body does not decode: {e}"))
        }
        Some(other) => Err(format!(
            "unknown body_encoding {other:?} (this version reads lz4 and plain bodies)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_come_back_byte_for_byte_and_json_is_stored_smaller() {
        let json = br#"{"type":"activity","user":{"user_id":"u-1"},"data":[{"steps":1200,"calories":80.5},{"steps":1200,"calories":80.5},{"steps":1300,"calories":81.5}]}"#.repeat(20);
        let (stored, encoding) = encode(&json);
        assert_eq!(encoding, Some(LZ4));
        assert!(
            stored.len() * 3 < json.len(),
            "{} of {}",
            stored.len(),
            json.len()
        );
        assert_eq!(decode(stored, encoding).unwrap(), json);
        // what does not shrink is kept as it is, and so is a row from before the encoding
        for raw in [b"{}".to_vec(), (0..=255u8).collect::<Vec<u8>>(), Vec::new()] {
            let (stored, encoding) = encode(&raw);
            assert_eq!((stored.as_slice(), encoding), (raw.as_slice(), None));
            assert_eq!(decode(stored, None).unwrap(), raw);
        }
    }

    #[test]
    fn damaged_or_unknown_bodies_are_errors_that_name_the_problem() {
        assert!(
            decode(vec![1, 0], Some(LZ4))
                .unwrap_err()
                .contains("shorter")
        );
        let huge = [u32::MAX.to_le_bytes().to_vec(), vec![0; 8]].concat();
        assert!(decode(huge, Some(LZ4)).unwrap_err().contains("claims"));
        let (mut stored, _) = encode(&b"abcabcabcabcabcabcabcabcabcabcabcabc".repeat(10));
        stored.truncate(stored.len() - 3);
        assert!(
            decode(stored, Some(LZ4))
                .unwrap_err()
                .contains("does not decode")
        );
        let err = decode(b"{}".to_vec(), Some("zstd")).unwrap_err();
        assert!(
            err.contains("zstd") && err.contains("body_encoding"),
            "{err}"
        );
    }
}
