//! The events the fan-out just wrote, kept in memory (up to a byte budget, oldest out first)
//! so the dispatcher in the same process sends them without reading their bodies back.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::store::EventRow;

#[derive(Clone)]
pub struct EventCache {
    inner: Arc<Mutex<Inner>>,
    budget: usize,
}

#[derive(Default)]
struct Inner {
    events: HashMap<String, EventRow>,
    order: VecDeque<String>,
    bytes: usize,
}

impl EventCache {
    pub fn new(budget: usize) -> Self {
        Self {
            inner: Arc::default(),
            budget,
        }
    }

    pub fn put(&self, mut event: EventRow) {
        let size = event.body.len() + 256;
        if size > self.budget {
            return;
        }
        // its own copy: the body read from the log may be a slice of a larger read (several
        // frames at once), which the budget would not count
        event.body = bytes::Bytes::copy_from_slice(&event.body);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        while inner.bytes + size > self.budget {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.events.remove(&oldest) {
                inner.bytes -= gone.body.len() + 256;
            }
        }
        let id = event.envelope_id.clone();
        if inner.events.insert(id.clone(), event).is_none() {
            inner.order.push_back(id);
            inner.bytes += size;
        }
    }

    pub fn get(&self, envelope_id: &str) -> Option<EventRow> {
        self.inner.lock().ok()?.events.get(envelope_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, size: usize) -> EventRow {
        EventRow {
            envelope_id: id.to_owned(),
            source: "default".to_owned(),
            event_type: "activity".to_owned(),
            user_id: None,
            terra_reference: None,
            terra_trace_id: None,
            ordering_timestamp_ms: None,
            traceparent: None,
            body: bytes::Bytes::from(vec![b'x'; size]),
        }
    }

    #[test]
    fn the_oldest_events_leave_first_within_the_budget() {
        let cache = EventCache::new(3 * (100 + 256));
        for id in ["a", "b", "c", "d"] {
            cache.put(event(id, 100));
        }
        assert!(cache.get("a").is_none());
        for id in ["b", "c", "d"] {
            assert_eq!(cache.get(id).map(|e| e.body.len()), Some(100));
        }
        cache.put(event("huge", 10_000));
        assert!(
            cache.get("huge").is_none(),
            "larger than the budget: not kept"
        );
        assert!(cache.get("d").is_some());
    }
}
