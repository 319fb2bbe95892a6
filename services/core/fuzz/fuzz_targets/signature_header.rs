//! Any header value and body: verification returns, never panics; a parsed header's
//! timestamp is what the header said.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terra_core::{SignatureHeader, SigningSecret, Verifier};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (header, body) = data.split_at(split);
    let header = String::from_utf8_lossy(header);
    if let Ok(parsed) = SignatureHeader::parse(&header) {
        assert!(parsed.timestamp() >= 0);
    }
    let verifier = Verifier::new(vec![SigningSecret::new("whsec_fuzz").unwrap()], 300);
    let _ = verifier.verify(Some(&header), body, 1_791_100_000);
});
