//! Plans shared between projectors of one process that read the same log (`standalone`'s SQL
//! and object projectors): a record is decoded and planned by whichever projector reads it
//! first, and the others take that plan instead of planning it again. A plan is a pure
//! function of the record, so a shared plan is the plan each would have made.
//!
//! Bounded: at most `capacity` plans, holding at most `max_bytes` of bodies, wait for the
//! other readers. A plan is kept only for a reader that has not read past it yet (or has not
//! read its partition yet: it may still), and dropped once every reader has (a reader that
//! seeks back plans again what is no longer kept). When the readers are far apart and the
//! store is full, the leader keeps nothing more and the others plan for themselves: sharing
//! is an optimisation, never a wait.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use terra_eventlog::Consumed;

use crate::plan::{self, PlanDepth, Planned};

/// Plans of one log shared by the projectors reading it ([`SharedPlans::reader`] each).
#[derive(Clone)]
pub struct SharedPlans {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    capacity: usize,
    max_bytes: usize,
    /// The next offset each reader reads, per partition (absent: not read yet).
    readers: Vec<HashMap<u32, u64>>,
    /// Per partition: offset → (plan, readers still to take it).
    plans: HashMap<u32, BTreeMap<u64, (Planned, usize)>>,
    kept: usize,
    /// Body bytes of the kept plans.
    kept_bytes: usize,
    /// Plans taken from the store instead of planned again (for tests and metrics).
    taken: u64,
}

impl std::fmt::Debug for SharedPlans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().expect("shared plans lock");
        f.debug_struct("SharedPlans")
            .field("readers", &inner.readers.len())
            .field("kept", &inner.kept)
            .finish()
    }
}

/// Plans kept for the other readers unless set: about 4 full batches.
pub const DEFAULT_SHARED_PLANS: usize = 16_384;

/// Body bytes of the kept plans unless set. Each plan holds its record's body, a slice of
/// the log's read buffer (which it keeps alive), so this bounds the memory the sharing costs
/// whatever the bodies' sizes (~16k Terra bodies of 3-4 KB fit).
pub const DEFAULT_SHARED_PLAN_BYTES: usize = 64 << 20;

impl SharedPlans {
    /// A store of at most `capacity` plans holding at most `max_bytes` of bodies.
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                capacity,
                max_bytes,
                readers: Vec::new(),
                plans: HashMap::new(),
                kept: 0,
                kept_bytes: 0,
                taken: 0,
            })),
        }
    }

    /// A new reader of the log: one per projector, registered before any of them reads
    /// (a plan is kept only for the readers registered when it was made).
    pub fn reader(&self) -> PlanReader {
        let mut inner = self.inner.lock().expect("shared plans lock");
        inner.readers.push(HashMap::new());
        PlanReader {
            shared: self.clone(),
            id: inner.readers.len() - 1,
            taken: Counter::default(),
        }
    }

    /// Plans waiting for a reader now.
    pub fn kept(&self) -> usize {
        self.inner.lock().expect("shared plans lock").kept
    }

    /// Plans taken instead of planned again, so far.
    pub fn taken(&self) -> u64 {
        self.inner.lock().expect("shared plans lock").taken
    }
}

/// One projector's access to [`SharedPlans`].
#[derive(Clone)]
pub struct PlanReader {
    shared: SharedPlans,
    id: usize,
    /// Plans this reader took instead of planning.
    taken: Counter,
}

impl std::fmt::Debug for PlanReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanReader").field("id", &self.id).finish()
    }
}

impl PlanReader {
    /// Counts the plans this reader takes in `taken` (`ProjectorMetrics::plans_shared`).
    pub fn counted(mut self, taken: Counter) -> Self {
        self.taken = taken;
        self
    }

    /// The plans of `consumed` (read in log order per partition) at `depth`: taken where
    /// another reader planned them, planned here otherwise and kept for the readers that
    /// have not read them yet. Only full plans are shared.
    pub fn plan(&self, consumed: &[Consumed], depth: PlanDepth) -> Vec<Planned> {
        if depth != PlanDepth::Full || consumed.is_empty() {
            return consumed.iter().map(|c| plan::plan_to(c, depth)).collect();
        }
        let mut out: Vec<Option<Planned>> = {
            let mut inner = self.shared.inner.lock().expect("shared plans lock");
            consumed
                .iter()
                .map(|c| inner.take(c.position.partition, c.position.offset))
                .collect()
        };
        let fresh: Vec<bool> = out.iter().map(Option::is_none).collect();
        let taken = fresh.iter().filter(|f| !**f).count();
        if taken > 0 {
            self.taken.inc_by(taken as u64);
        }
        // planned outside the lock: this is the work the sharing saves the others
        for (slot, c) in out.iter_mut().zip(consumed) {
            if slot.is_none() {
                *slot = Some(plan::plan_to(c, depth));
            }
        }
        let mut inner = self.shared.inner.lock().expect("shared plans lock");
        for c in consumed {
            let next = inner.readers[self.id]
                .entry(c.position.partition)
                .or_insert(0);
            *next = (*next).max(c.position.offset + 1);
        }
        for (planned, fresh) in out.iter().zip(&fresh) {
            if *fresh {
                inner.keep(self.id, planned.as_ref().expect("planned above"));
            }
        }
        let partitions: Vec<u32> = inner.readers[self.id].keys().copied().collect();
        for partition in partitions {
            inner.drop_read(partition);
        }
        drop(inner);
        out.into_iter()
            .map(|p| p.expect("every slot filled"))
            .collect()
    }
}

impl Inner {
    fn take(&mut self, partition: u32, offset: u64) -> Option<Planned> {
        let plans = self.plans.get_mut(&partition)?;
        let (planned, left) = plans.get_mut(&offset)?;
        self.taken += 1;
        if *left > 1 {
            *left -= 1;
            return Some(planned.clone());
        }
        let (planned, _) = plans.remove(&offset)?;
        self.kept -= 1;
        self.kept_bytes -= planned.body.len();
        Some(planned)
    }

    /// Keeps a copy of `planned` for the readers other than `by` that have not read past it,
    /// if there is room.
    fn keep(&mut self, by: usize, planned: &Planned) {
        let (partition, offset) = (planned.position.partition, planned.position.offset);
        let waiting = self
            .readers
            .iter()
            .enumerate()
            .filter(|(id, next)| *id != by && next.get(&partition).is_none_or(|&n| n <= offset))
            .count();
        let bytes = planned.body.len();
        if waiting == 0 || self.kept >= self.capacity || self.kept_bytes + bytes > self.max_bytes {
            return;
        }
        let plans = self.plans.entry(partition).or_default();
        if plans.contains_key(&offset) {
            // kept already (two readers planned it at once)
            return;
        }
        plans.insert(offset, (planned.clone(), waiting));
        self.kept += 1;
        self.kept_bytes += bytes;
    }

    /// Drops the plans of `partition` that every reader has read past.
    fn drop_read(&mut self, partition: u32) {
        let Some(min) = self
            .readers
            .iter()
            .map(|next| next.get(&partition).copied())
            .min()
            .flatten()
        else {
            return;
        };
        let Some(plans) = self.plans.get_mut(&partition) else {
            return;
        };
        let keep = plans.split_off(&min);
        self.kept -= plans.len();
        self.kept_bytes -= plans.values().map(|(p, _)| p.body.len()).sum::<usize>();
        *plans = keep;
    }
}

#[cfg(test)]
#[path = "shared_plans_tests.rs"]
mod tests;
