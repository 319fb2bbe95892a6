//! Any body: classification returns, never panics, and every derived payload id stays one
//! bounded, three-segment key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use terra_core::keys::{MAX_PAYLOAD_ID_LEN, data_payload_id, event_payload_id};

fuzz_target!(|data: &[u8]| {
    let Ok(c) = terra_core::classify(data) else { return };
    let user = c.user_id.as_deref().unwrap_or("");
    for record in &c.records {
        let id = data_payload_id(c.version.as_deref(), &c.event_type, user, record);
        assert!(id.len() <= MAX_PAYLOAD_ID_LEN && id.split('/').count() == 3, "{id}");
    }
    let id = event_payload_id(c.version.as_deref(), &c.event_type, c.user_id.as_deref(), 0);
    assert!(id.len() <= MAX_PAYLOAD_ID_LEN && id.split('/').count() == 3, "{id}");
});
