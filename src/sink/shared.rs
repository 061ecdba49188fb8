//! What the sink's stages share (`Writer::start` builds it): counters, the spool, the record
//! queue's bound and its waiters, field types learnt by the sender, the stop flags, the journal.

use super::durable::Durability;
use super::line_protocol::FieldType;
use super::spool::Spool;
use super::stats::Counters;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

pub(super) struct SpoolState {
    pub(super) spool: Spool,
    /// Sequence number of the spooled batch the sender is writing right now.
    pub(super) in_flight: Option<u64>,
}

pub(super) struct Shared {
    pub(super) counters: Arc<Counters>,
    pub(super) spool: Mutex<SpoolState>,
    /// Signalled whenever the spool shrinks (for `spool_full = "backpressure"`).
    pub(super) spool_shrunk: Condvar,
    /// Signalled whenever the sender takes a batch from the channel.
    pub(super) sender_took: Condvar,
    /// Field types learnt by the sender (from the database), applied by the batcher.
    pub(super) facts: Mutex<Vec<(String, String, FieldType)>>,
    pub(super) has_facts: AtomicBool,
    pub(super) stopping: AtomicBool,
    pub(super) stop_deadline: Mutex<Option<Instant>>,
    /// The sender has nothing to write (no batch in the channel, nothing spooled, no backoff).
    pub(super) sender_idle: AtomicBool,
    /// Records handed to the batcher and not yet taken by it: the queue's bound
    /// (`queue_capacity`) counts records, not chunks. It is checked before a chunk is added,
    /// so threads flushing at once can pass it by up to a chunk each.
    pub(super) in_queue: AtomicUsize,
    pub(super) queue_capacity: usize,
    /// Publishers that found the record queue full wait here until half of it is free again
    /// (signalled by the batcher), rather than taking each slot as it frees, which would wake
    /// a publisher and the batcher once per record.
    pub(super) room: Mutex<()>,
    pub(super) room_freed: Condvar,
    pub(super) room_waiters: AtomicUsize,
    /// The batcher has ended (its queue takes nothing any more).
    pub(super) batcher_done: AtomicBool,
    /// The journal holding acknowledged records until their batch has left memory; set once,
    /// before any publish arrives, when persistence is on (`Sink::attach_store`).
    pub(super) durable: OnceLock<Durability>,
}

impl Shared {
    pub(super) fn lock_spool(&self) -> MutexGuard<'_, SpoolState> {
        // A panic elsewhere must not stop the sink: the spool state stays consistent per call.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn update_gauges(&self, st: &SpoolState) {
        self.counters
            .spool_points
            .store(st.spool.lines() as u64, Ordering::Relaxed);
        self.counters
            .spool_bytes
            .store(st.spool.bytes(), Ordering::Relaxed);
    }

    pub(super) fn past_deadline(&self) -> bool {
        matches!(*self.stop_deadline.lock().unwrap_or_else(|e| e.into_inner()), Some(d) if Instant::now() >= d)
    }

    /// A batch's records have left memory (written, spooled or dropped): their journal
    /// records are no longer needed.
    pub(super) fn release(&self, ids: &[(u64, usize)]) {
        if let Some(d) = self.durable.get() {
            d.release(ids);
        }
    }

    pub(super) fn add_facts(&self, facts: Vec<(String, String, FieldType)>) {
        if facts.is_empty() {
            return;
        }
        self.facts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(facts);
        self.has_facts.store(true, Ordering::Release);
    }
}
