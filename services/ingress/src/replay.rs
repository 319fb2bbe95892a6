//! The replay cache: a delivery the ingress already accepted is answered with its first 200
//! again, without a second append, for as long as its signature could still verify.
//!
//! A delivery is remembered under two keys, both derived from the signed content so that no
//! unsigned header can make a replay look new:
//! - the signature: source, the signed `t` and the body's SHA-256 (what the HMAC covers; a
//!   replay with the signature header re-spaced or extra `v1` entries is the same key);
//! - Terra's retry: source, `X-Terra-Trace-Id` and the body's SHA-256, when the header is
//!   present (Terra keeps the trace id across retries and signs each retry anew). The body
//!   is part of the key because the trace id is not signed: a replayed capture carrying
//!   another delivery's trace id cannot stand in for that delivery.
//!
//! Two copies in flight at once: the second waits for the first's answer. Entries expire
//! after the source's tolerance window; the cache holds at most a fixed number of entries
//! and evicts the oldest beyond it (counted in a metric), so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// What the first acceptance of a delivery answered (small: the cache holds many).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) envelope_id: uuid::Uuid,
    pub(crate) partition: u32,
    pub(crate) offset: u64,
    pub(crate) body_is_json: bool,
}

/// The first 16 bytes of a SHA-256 over the delivery's signed facts (see `Delivery::keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key([u8; 16]);

/// A key is already a uniform hash, so eight of its bytes are its hash in the map, instead of
/// SipHash over all sixteen (byte 0 picks the shard; these are bytes 8-15). Flooding one
/// bucket would need many keys with chosen bytes: the signature key hashes only signed facts,
/// and although the trace key also hashes the unsigned `X-Terra-Trace-Id`, a trace key is
/// stored only with a new signature key, that is for a delivery whose signature verified and
/// is not already in the cache.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from_le_bytes(
            self.0[8..].try_into().expect("eight bytes"),
        ));
    }
}

/// Passes a [`Key`]'s eight bytes through.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write(&mut self, bytes: &[u8]) {
        // not used by `Key`; a fold, so that any other use still hashes every byte
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

const SHARDS: usize = 16;

/// One remembered delivery. `answer: None` while its first copy is being appended.
struct Entry {
    answer: Option<Answer>,
    /// Seconds since the cache was made.
    expires: u32,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>,
    /// Keys in insertion order, for expiry and eviction.
    order: VecDeque<Key>,
}

pub(crate) struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    start: Instant,
    /// Woken whenever a pending delivery is accepted or forgotten, for the copies waiting
    /// on it (no channel per delivery: most are never waited on).
    settled: Notify,
    /// Copies in [`ReplayCache::wait`]: `settled` is woken only when there are any (waking
    /// takes the `Notify`'s lock, on every accepted delivery otherwise).
    waiting: AtomicUsize,
}

/// Outcome of looking a delivery up.
pub(crate) enum Lookup {
    /// Accepted before: answer this again.
    Seen(Answer),
    /// The same delivery is being appended by another request: [`ReplayCache::wait`].
    InFlight(Vec<Key>),
    /// New: this request appends it and reports the answer through the claim.
    New(Claim),
}

/// The right to append a new delivery. Dropped without [`Claim::accepted`] (the append
/// failed or the request was cancelled), it forgets the delivery so a retry appends.
pub(crate) struct Claim {
    cache: Arc<ReplayCache>,
    keys: Vec<Key>,
    settled: bool,
}

/// The signed facts a delivery is recognised by.
pub(crate) struct Delivery<'a> {
    pub(crate) source: &'a str,
    pub(crate) signature_timestamp: i64,
    pub(crate) trace_id: Option<&'a str>,
    pub(crate) body_sha256: &'a [u8; 32],
    pub(crate) tolerance: Duration,
}

impl Delivery<'_> {
    fn keys(&self) -> Vec<Key> {
        let key = |kind: &[u8], value: &[u8]| -> Key {
            let mut hash = Sha256::new();
            for part in [kind, self.source.as_bytes(), value, self.body_sha256] {
                hash.update((part.len() as u32).to_le_bytes());
                hash.update(part);
            }
            let digest = hash.finalize();
            let mut key = [0u8; 16];
            key.copy_from_slice(&digest[..16]);
            Key(key)
        };
        let mut keys = vec![key(b"t", &self.signature_timestamp.to_le_bytes())];
        if let Some(trace) = self.trace_id.filter(|t| !t.is_empty()) {
            keys.push(key(b"trace", trace.as_bytes()));
        }
        keys
    }
}

/// What one key says.
enum Found {
    Answer(Answer),
    Pending,
    Nothing,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        Self {
            // sized once: no rehash of a large map on the request path (the memory is
            // touched only as entries arrive)
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::with_capacity_and_hasher(per_shard + 1, Default::default()),
                        order: VecDeque::with_capacity(per_shard + 1),
                    })
                })
                .collect(),
            per_shard,
            start: Instant::now(),
            settled: Notify::new(),
            waiting: AtomicUsize::new(0),
        }
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        &self.shards[key.0[0] as usize % SHARDS]
    }

    /// Wakes the copies waiting for a delivery that was just settled (its entries already
    /// changed under their shard locks). A waiter counts itself before it looks: either its
    /// look comes after the change, or its count is seen here.
    fn wake_waiters(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.settled.notify_waiters();
        }
    }

    fn now(&self) -> u32 {
        u32::try_from(self.start.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn find(&self, keys: &[Key], now: u32) -> Found {
        for key in keys {
            let shard = self.shard(key).lock().expect("replay cache lock");
            if let Some(entry) = shard.map.get(key).filter(|e| e.expires > now) {
                return match entry.answer {
                    Some(answer) => Found::Answer(answer),
                    None => Found::Pending,
                };
            }
        }
        Found::Nothing
    }

    /// Looks the delivery up under each of its keys; when it is new, claims them all.
    /// Returns the number of entries evicted to make room, for the metric.
    pub(crate) fn lookup(self: &Arc<Self>, delivery: &Delivery<'_>) -> (Lookup, u64) {
        let keys = delivery.keys();
        let now = self.now();
        match self.find(&keys, now) {
            Found::Answer(answer) => return (Lookup::Seen(answer), 0),
            Found::Pending => return (Lookup::InFlight(keys), 0),
            Found::Nothing => {}
        }
        // `now` is truncated to the second: one more keeps the whole window
        let tolerance = u32::try_from(delivery.tolerance.as_secs()).unwrap_or(u32::MAX);
        let expires = now
            .saturating_add(tolerance)
            .saturating_add(u32::from(tolerance > 0));
        let mut evicted = 0;
        for key in &keys {
            let mut shard = self.shard(key).lock().expect("replay cache lock");
            evicted += shard.make_room(self.per_shard, now);
            shard.map.insert(
                *key,
                Entry {
                    answer: None,
                    expires,
                },
            );
            shard.order.push_back(*key);
        }
        let claim = Claim {
            cache: Arc::clone(self),
            keys,
            settled: false,
        };
        (Lookup::New(claim), evicted)
    }

    /// Waits for the first copy of an in-flight delivery: its answer, or `None` when it
    /// was not accepted.
    pub(crate) async fn wait(&self, keys: &[Key]) -> Option<Answer> {
        struct Counted<'a>(&'a AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _counted = Counted(&self.waiting);
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            match self.find(keys, self.now()) {
                Found::Answer(answer) => return Some(answer),
                Found::Nothing => return None,
                Found::Pending => settled.await,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().map.len())
            .sum()
    }
}

impl Shard {
    /// Drops expired entries from the front, then the oldest while full.
    fn make_room(&mut self, capacity: usize, now: u32) -> u64 {
        let mut evicted = 0;
        while let Some(key) = self.order.front().copied() {
            let expired = self.map.get(&key).is_none_or(|e| e.expires <= now);
            if expired {
                self.map.remove(&key);
            } else if self.map.len() >= capacity {
                self.map.remove(&key);
                evicted += 1;
            } else {
                break;
            }
            self.order.pop_front();
        }
        // keys re-inserted after a failed claim leave stale duplicates in `order`
        if self.order.len() > 2 * capacity.max(self.map.len()) {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
        evicted
    }
}

impl Claim {
    /// The append succeeded: remember the answer and hand it to anyone waiting.
    pub(crate) fn accepted(mut self, answer: Answer) {
        for key in &self.keys {
            let mut shard = self.cache.shard(key).lock().expect("replay cache lock");
            if let Some(entry) = shard.map.get_mut(key) {
                entry.answer = Some(answer);
            }
        }
        self.settled = true;
        self.cache.wake_waiters();
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        for key in &self.keys {
            let mut shard = self.cache.shard(key).lock().expect("replay cache lock");
            if shard.map.get(key).is_some_and(|e| e.answer.is_none()) {
                shard.map.remove(key);
            }
        }
        // the waiters find nothing: the first copy was not accepted
        self.cache.wake_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery<'a>(t: i64, trace: Option<&'a str>, body: &'a [u8; 32]) -> Delivery<'a> {
        Delivery {
            source: "default",
            signature_timestamp: t,
            trace_id: trace,
            body_sha256: body,
            tolerance: Duration::from_secs(300),
        }
    }

    fn answer(offset: u64) -> Answer {
        Answer {
            envelope_id: uuid::Uuid::from_u128(u128::from(offset)),
            partition: 0,
            offset,
            body_is_json: true,
        }
    }

    fn claim(cache: &Arc<ReplayCache>, d: &Delivery<'_>) -> Claim {
        match cache.lookup(d).0 {
            Lookup::New(claim) => claim,
            _ => panic!("expected a new delivery"),
        }
    }

    #[test]
    fn a_replay_gets_the_first_answer_and_a_retry_with_the_same_trace_id_too() {
        let cache = Arc::new(ReplayCache::new(100));
        let body = [7u8; 32];
        claim(&cache, &delivery(100, Some("trace-1"), &body)).accepted(answer(5));
        for again in [
            delivery(100, None, &body),            // the same signature
            delivery(160, Some("trace-1"), &body), // Terra's retry, signed anew
        ] {
            match cache.lookup(&again).0 {
                Lookup::Seen(a) => assert_eq!(a, answer(5)),
                _ => panic!("not recognised"),
            }
        }
        // another body under a stolen trace id, or another t without one: new deliveries
        let other = [8u8; 32];
        claim(&cache, &delivery(100, Some("trace-1"), &other)).accepted(answer(6));
        claim(&cache, &delivery(101, None, &body)).accepted(answer(7));
    }

    #[tokio::test]
    async fn a_failed_append_is_forgotten_and_waiters_are_told() {
        let cache = Arc::new(ReplayCache::new(100));
        let body = [1u8; 32];
        let first = claim(&cache, &delivery(1, Some("x"), &body));
        let Lookup::InFlight(keys) = cache.lookup(&delivery(1, None, &body)).0 else {
            panic!("the second copy must wait for the first");
        };
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.wait(&keys).await })
        };
        tokio::task::yield_now().await;
        drop(first);
        assert_eq!(waiter.await.unwrap(), None, "the waiter sees the failure");
        claim(&cache, &delivery(1, Some("x"), &body)).accepted(answer(1));
        assert_eq!(cache.len(), 2);

        // and an accepted first copy hands its answer to the waiter
        let body = [3u8; 32];
        let first = claim(&cache, &delivery(1, None, &body));
        let Lookup::InFlight(keys) = cache.lookup(&delivery(1, None, &body)).0 else {
            panic!("in flight");
        };
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.wait(&keys).await })
        };
        tokio::task::yield_now().await;
        first.accepted(answer(9));
        assert_eq!(waiter.await.unwrap(), Some(answer(9)));
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let cache = Arc::new(ReplayCache::new(100));
        let body = [4u8; 32];
        let first = claim(&cache, &delivery(1, None, &body));
        let Lookup::InFlight(keys) = cache.lookup(&delivery(1, None, &body)).0 else {
            panic!("in flight");
        };
        let gave_up = tokio::time::timeout(Duration::from_millis(10), cache.wait(&keys)).await;
        assert!(gave_up.is_err(), "nothing settled it");
        assert_eq!(cache.waiting.load(Ordering::SeqCst), 0);
        // a waiter counted while it waits, and woken by the acceptance
        let waiter = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.wait(&keys).await })
        };
        while cache.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        first.accepted(answer(3));
        assert_eq!(waiter.await.unwrap(), Some(answer(3)));
        assert_eq!(cache.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = Arc::new(ReplayCache::new(SHARDS * 4));
        let mut evicted = 0;
        for i in 0..1000u32 {
            let mut body = [0u8; 32];
            body[..4].copy_from_slice(&i.to_le_bytes());
            let (lookup, n) = cache.lookup(&delivery(1, None, &body));
            evicted += n;
            if let Lookup::New(c) = lookup {
                c.accepted(answer(u64::from(i)));
            }
        }
        assert!(cache.len() <= SHARDS * 4, "{} entries", cache.len());
        assert!(evicted >= 1000 - (SHARDS as u64) * 4);

        let short = Arc::new(ReplayCache::new(100));
        let body = [2u8; 32];
        let mut d = delivery(1, None, &body);
        d.tolerance = Duration::ZERO;
        claim(&short, &d).accepted(answer(1));
        claim(&short, &d).accepted(answer(2)); // expired at once: new again
    }
}
