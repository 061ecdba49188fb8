//! Batcher: the second stage, thread `sink-batcher`. Takes chunks off the hand-off queue,
//! maps each record to line protocol (`mapping.rs`), and ends a batch by size (`batch_size`,
//! `MAX_BATCH_BYTES`) or time (`flush_interval_ms`, `idle_flush_ms` when the sender is idle).
//! A finished batch goes to the sender through a channel of `BATCHES_IN_MEMORY`, or to the
//! spool when the sender is busy or the spool is not empty (to keep the order).

use super::chunk::Chunk;
use super::config::SpoolFull;
use super::mapped::Skip;
use super::mapping::{FieldTypes, Mapping, TopicPlans};
use super::shared::Shared;
use super::spool::{Batch, SpoolError};
use super::stats::{Counters, DropReason};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A batch is also flushed at this many bytes (InfluxDB 1.x refuses bodies over 25 MB by default).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// A full batch waits at least this long for a busy sender before it goes to the spool.
const SPOOL_AFTER: Duration = Duration::from_millis(500);
/// When the batcher finds no publish queued it sleeps this long before it waits on the queue:
/// under load more arrive meanwhile and are taken in one go, instead of the publishing thread
/// paying for a wake-up of the batcher for each (or the batcher spinning, which on a small
/// machine takes CPU from InfluxDB). The added latency is negligible next to a write.
const IDLE_NAP: Duration = Duration::from_micros(200);

fn skip_reason(s: Skip) -> DropReason {
    match s {
        Skip::EmptyPayload => DropReason::EmptyPayload,
        Skip::NotUtf8 => DropReason::NotUtf8,
        Skip::UnparsedPayload => DropReason::UnparsedPayload,
        Skip::NoFields | Skip::Excluded => DropReason::NoFields,
        Skip::TypeConflict => DropReason::TypeConflict,
    }
}

pub(super) struct Batcher {
    pub(super) mapping: Mapping,
    pub(super) types: FieldTypes,
    pub(super) plans: TopicPlans,
    pub(super) batch_size: usize,
    pub(super) flush_interval: Duration,
    /// `idle_flush_ms`: a partial batch this old goes to an idle sender (None: off). InfluxDB
    /// does not wait while points are held back, and a trickle of publishes still makes at most
    /// one request per interval, not one per publish.
    pub(super) idle_flush: Option<Duration>,
    pub(super) spool_full: SpoolFull,
    pub(super) batches: Sender<Batch>,
    pub(super) shared: Arc<Shared>,
    pub(super) backpressure_logged: bool,
    /// Signalled (or dropped) once the sender has asked the database for its field types.
    pub(super) ready: Option<(Receiver<()>, Duration)>,
}

impl Batcher {
    pub(super) fn run(mut self, records: Receiver<Chunk>) {
        let mut buf = String::with_capacity(1 << 20);
        let mut lines = 0usize;
        // Journal records whose publishes are in `buf` (also those mapped to no line: the batch
        // settles them all), and how many of each.
        let mut ids: Vec<(u64, usize)> = Vec::new();
        let mut first_at: Option<Instant> = None;
        let counters = self.shared.counters.clone();
        // However the batcher ends, publishers waiting for room must not wait for it.
        let _done = BatcherDone(self.shared.clone());
        let half = self.shared.queue_capacity / 2;
        // Points mapped but not yet added to `counters.queued`: added when the batch is handed
        // on or the queue is empty, not with an atomic add per publish.
        let mut queued = 0usize;
        let (mut chunk, mut at) = (Chunk::default(), 0);
        loop {
            let flush = match chunk.read(&mut at) {
                None => {
                    // This chunk is done (and freed now: the wait may be long): the next one.
                    chunk = Chunk::default();
                    let next = match records.try_recv() {
                        Ok(c) => Ok(c),
                        Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                        Err(TryRecvError::Empty) => {
                            Counters::add(&counters.queued, std::mem::take(&mut queued));
                            self.next_chunk(&records, first_at)
                        }
                    };
                    match next {
                        Ok(c) => {
                            let n = c.records;
                            let left = self.shared.in_queue.fetch_sub(n, Ordering::SeqCst) - n;
                            if left <= half && self.shared.room_waiters.load(Ordering::SeqCst) > 0 {
                                let _room =
                                    self.shared.room.lock().unwrap_or_else(|e| e.into_inner());
                                self.shared.room_freed.notify_all();
                            }
                            if c.id != 0 {
                                if let Some(d) = self.shared.durable.get() {
                                    d.taken(c.id, c.records);
                                }
                            }
                            (chunk, at) = (c, 0);
                            continue;
                        }
                        Err(RecvTimeoutError::Timeout) => true,
                        Err(RecvTimeoutError::Disconnected) => {
                            Counters::add(&counters.queued, queued);
                            self.flush(std::mem::take(&mut buf), lines, ids);
                            return;
                        }
                    }
                }
                Some(rec) => {
                    if chunk.id != 0 {
                        match ids.last_mut() {
                            Some((id, n)) if *id == chunk.id => *n += 1,
                            _ => ids.push((chunk.id, 1)),
                        }
                    }
                    if let Some((ready, timeout)) = self.ready.take() {
                        // Map the first publishes only once the stored field types are known
                        // (or InfluxDB did not answer in time), so they cannot conflict.
                        let _ = ready.recv_timeout(timeout);
                    }
                    self.apply_facts();
                    let mapped = if chunk.own_lines {
                        self.mapping.own_lines(
                            rec.payload,
                            rec.received_at_ns,
                            &mut self.types,
                            &mut buf,
                        )
                    } else {
                        self.mapping.map(
                            rec.topic,
                            rec.payload,
                            rec.received_at_ns,
                            &mut self.types,
                            &mut self.plans,
                            &mut buf,
                        )
                    };
                    match mapped {
                        Ok(m) => {
                            lines += m.lines;
                            queued += m.lines;
                            if m.conflicting_fields > 0 {
                                Counters::add(&counters.conflicting_fields, m.conflicting_fields);
                            }
                            if m.dropped_lines > 0 {
                                counters.drop_points(DropReason::TypeConflict, m.dropped_lines);
                            }
                            if first_at.is_none() && lines > 0 {
                                first_at = Some(Instant::now());
                            }
                        }
                        Err(Skip::Excluded) => Counters::add(&counters.excluded, 1),
                        Err(s) => {
                            log::debug!("sink: publish on {:?} not stored: {s:?}", rec.topic);
                            counters.drop_points(skip_reason(s), 1);
                        }
                    }
                    lines >= self.batch_size || buf.len() >= MAX_BATCH_BYTES
                }
            };
            if flush {
                Counters::add(&counters.queued, std::mem::take(&mut queued));
                self.flush(
                    std::mem::replace(&mut buf, String::with_capacity(1 << 20)),
                    lines,
                    std::mem::take(&mut ids),
                );
                lines = 0;
                first_at = None;
            }
        }
    }

    /// Wait for records when none are queued. `Timeout`: write the partial batch now (its
    /// `flush_interval` is over, or it is `idle_flush` old and the sender is idle).
    fn next_chunk(
        &self,
        records: &Receiver<Chunk>,
        first_at: Option<Instant>,
    ) -> Result<Chunk, RecvTimeoutError> {
        std::thread::sleep(IDLE_NAP);
        loop {
            match records.try_recv() {
                Ok(rec) => return Ok(rec),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            let Some(first) = first_at else {
                return records.recv().map_err(|_| RecvTimeoutError::Disconnected);
            };
            let now = Instant::now();
            let deadline = first + self.flush_interval;
            let wake = match self.idle_flush {
                None if now >= deadline => return Err(RecvTimeoutError::Timeout),
                None => deadline,
                Some(linger) => {
                    let idle_flush = (first + linger).min(deadline);
                    if now >= deadline
                        || (now >= idle_flush && self.shared.sender_idle.load(Ordering::Acquire))
                    {
                        return Err(RecvTimeoutError::Timeout);
                    }
                    // A record, the deadline, or time to look whether the sender is idle.
                    if now < idle_flush {
                        idle_flush
                    } else {
                        (now + linger).min(deadline)
                    }
                }
            };
            match records.recv_deadline(wake) {
                Ok(rec) => return Ok(rec),
                Err(RecvTimeoutError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn apply_facts(&mut self) {
        // A plain load first: this runs for every publish, the swap only when there are facts.
        if self.shared.has_facts.load(Ordering::Acquire)
            && self.shared.has_facts.swap(false, Ordering::AcqRel)
        {
            let facts =
                std::mem::take(&mut *self.shared.facts.lock().unwrap_or_else(|e| e.into_inner()));
            for (m, f, t) in facts {
                self.types.learn(&m, &f, t, true);
            }
        }
    }

    /// Hand a batch to the sender, or to the spool when the sender is busy or the spool is not
    /// empty (to keep the order).
    fn flush(&mut self, data: String, lines: usize, ids: Vec<(u64, usize)>) {
        if lines == 0 {
            // Nothing to write: every record in it was dropped (counted) or excluded.
            self.shared.release(&ids);
            return;
        }
        Counters::add(&self.shared.counters.queued_bytes, data.len());
        let mut batch = Batch {
            data: data.into_bytes(),
            lines,
            ids,
        };
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let mut st = shared.lock_spool();
        // While the sender keeps up (it takes a batch every few ms), wait for it rather than
        // paying an fsync'd spool round trip: the spool is for a sender that is stuck (InfluxDB
        // down or slow). The check and the hand-over happen under the spool lock, so batches in
        // the channel are always older than anything spooled.
        let give_up = Instant::now() + self.flush_interval.max(SPOOL_AFTER);
        while st.spool.is_empty() {
            match self.batches.try_send(batch) {
                Ok(()) => return,
                Err(TrySendError::Disconnected(b)) => {
                    batch = b;
                    break;
                }
                Err(TrySendError::Full(b)) => {
                    batch = b;
                    let now = Instant::now();
                    if now >= give_up || shared.stopping.load(Ordering::Acquire) {
                        break;
                    }
                    st = shared
                        .sender_took
                        .wait_timeout(st, give_up - now)
                        .map(|r| r.0)
                        .unwrap_or_else(|e| e.into_inner().0);
                }
            }
        }
        loop {
            let stopping = shared.stopping.load(Ordering::Acquire);
            // A batch larger than the whole spool is kept anyway (exceeding the limit once)
            // rather than lost or blocking forever.
            let nothing_to_free =
                st.in_flight.is_none() && st.spool.drop_oldest_candidate(None).is_none();
            match st.spool.push_back(&batch, stopping || nothing_to_free) {
                Ok(()) => {
                    Counters::add(&counters.spooled, batch.lines);
                    shared.update_gauges(&st);
                    self.backpressure_logged = false;
                    drop(st);
                    // Fsync'd in the spool: a later drop-oldest is counted there.
                    shared.release(&batch.ids);
                    return;
                }
                Err(SpoolError::Full) => match self.spool_full {
                    SpoolFull::DropOldest => {
                        let keep = st.in_flight;
                        if let Some(n) = st.spool.drop_oldest(keep) {
                            counters.drop_points(DropReason::SpoolFull, n);
                            log::warn!(
                                "sink: spool full ({} bytes): dropped the oldest {n} spooled points (spool_full = \"drop_oldest\")",
                                st.spool.bytes()
                            );
                            shared.update_gauges(&st);
                        } else {
                            // Only the batch in flight is left: wait for it.
                            st = shared
                                .spool_shrunk
                                .wait_timeout(st, Duration::from_millis(100))
                                .map(|r| r.0)
                                .unwrap_or_else(|e| e.into_inner().0);
                        }
                    }
                    SpoolFull::Backpressure => {
                        if !self.backpressure_logged {
                            log::warn!(
                                "sink: spool full ({} bytes): holding publishers until InfluxDB takes points again (spool_full = \"backpressure\")",
                                st.spool.bytes()
                            );
                            self.backpressure_logged = true;
                        }
                        st = shared
                            .spool_shrunk
                            .wait_timeout(st, Duration::from_millis(200))
                            .map(|r| r.0)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                },
                Err(SpoolError::Io(e)) => {
                    log::error!("sink: cannot write the spool: {e}; keeping the batch in memory");
                    drop(st);
                    if let Err(e) = self.batches.send(batch) {
                        counters.drop_points(DropReason::SpoolIo, e.0.lines);
                        shared.release(&e.0.ids);
                    }
                    return;
                }
            }
        }
    }
}

/// Marks the batcher as ended when dropped (also when it panics) and wakes waiting publishers.
pub(super) struct BatcherDone(Arc<Shared>);

impl Drop for BatcherDone {
    fn drop(&mut self) {
        self.0.batcher_done.store(true, Ordering::SeqCst);
        let _room = self.0.room.lock().unwrap_or_else(|e| e.into_inner());
        self.0.room_freed.notify_all();
    }
}
