//! The sink's two threads: `sink-batcher` (records -> line protocol batches, by size and time)
//! and `sink-sender` (batches -> InfluxDB, with retry, splitting and the spool).

use super::durable::{self, Durability};
use super::http::{error_text, InfluxClient, WriteResult};
use super::line_protocol::{self, FieldType};
use super::mapping::{FieldTypes, Mapping, Skip, TopicPlans};
use super::spool::{Batch, Spool, SpoolError};
use super::{Counters, DropReason, SinkConfig, SinkRecord, SpoolFull};
use crossbeam_channel::{
    bounded, unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError,
};
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch is also flushed at this many bytes (InfluxDB 1.x refuses bodies over 25 MB by default).
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Batches held in memory between batcher and sender; beyond them batches go to the spool.
const BATCHES_IN_MEMORY: usize = 2;
/// A full batch waits at least this long for a busy sender before it goes to the spool.
const SPOOL_AFTER: Duration = Duration::from_millis(500);
/// Dropped lines logged per refused batch.
const LOGGED_LINES: usize = 5;
/// When the batcher finds no publish queued it sleeps this long before it waits on the queue:
/// under load more arrive meanwhile and are taken in one go, instead of the publishing thread
/// paying for a wake-up of the batcher for each (or the batcher spinning, which on a small
/// machine takes CPU from InfluxDB). The added latency is negligible next to a write.
const IDLE_NAP: Duration = Duration::from_micros(200);
/// A thread in a batching scope hands its records over once their bytes reach this. Below
/// glibc's large-request size (1 KiB): a large request first consolidates the arena's free
/// small blocks, which cost 7% of the broker's CPU when chunks were larger.
const CHUNK_BYTES: usize = 768;

/// Records on their way to the batcher, copied into one buffer: for each, the receive time
/// (8 bytes), topic and payload lengths (4 bytes each), topic, payload (`durable::encode`).
/// - One channel operation for all the publishes a connection handled from one socket read,
///   instead of one per publish.
/// - The publish itself is freed by the connection thread that allocated it. Were it freed by
///   the batcher, as when records held the message's topic and payload, every allocation of the
///   connection thread would miss its thread cache (glibc) and take the arena's slow path:
///   measured, that was a fifth of the broker's CPU per point.
/// - With sync persistence, a chunk holding an acknowledged publish is also the unit kept in
///   the journal until written (`durable.rs`): one journal record per socket read.
#[derive(Default)]
struct Chunk {
    data: Vec<u8>,
    records: usize,
    /// Holds a publish that is acknowledged once durable: put into the journal when handed over.
    durable: bool,
    /// Its journal record (0: none).
    id: u64,
}

impl Chunk {
    /// A chunk of one record, no larger than it needs.
    fn one(record: &SinkRecord) -> Chunk {
        let mut chunk = Chunk::default();
        chunk.data.reserve_exact(durable::encoded_len(record));
        chunk.push(record);
        chunk
    }

    fn push(&mut self, record: &SinkRecord) {
        if self.data.capacity() == 0 {
            // Once per chunk, not grown record by record (with room for the record that takes
            // it past `CHUNK_BYTES`, if usual).
            self.data
                .reserve_exact(durable::encoded_len(record).max(CHUNK_BYTES + 128));
        }
        durable::encode(record, &mut self.data);
        self.records += 1;
    }

    /// The record at `*at`, moving `*at` past it; None at the end.
    fn read(&self, at: &mut usize) -> Option<SinkRecord<'_>> {
        // Written by `push` (or read back from the journal, checked by `Durability::new`).
        durable::decode(&self.data, at)
    }
}

/// How a publish handed to `Writer::submit` is kept in the journal until it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Journaled {
    /// Not at all (QoS 0, no sync persistence).
    No,
    /// With the chunk it goes in (put into the journal when the chunk is handed over, before
    /// the connection waits for the store).
    WithChunk,
    /// In its own journal record, already submitted, with this id.
    Own(u64),
}

struct SpoolState {
    spool: Spool,
    /// Sequence number of the spooled batch the sender is writing right now.
    in_flight: Option<u64>,
}

struct Shared {
    counters: Arc<Counters>,
    spool: Mutex<SpoolState>,
    /// Signalled whenever the spool shrinks (for `spool_full = "backpressure"`).
    spool_shrunk: Condvar,
    /// Signalled whenever the sender takes a batch from the channel.
    sender_took: Condvar,
    /// Field types learnt by the sender (from the database), applied by the batcher.
    facts: Mutex<Vec<(String, String, FieldType)>>,
    has_facts: AtomicBool,
    stopping: AtomicBool,
    stop_deadline: Mutex<Option<Instant>>,
    /// The sender has nothing to write (no batch in the channel, nothing spooled, no backoff).
    sender_idle: AtomicBool,
    /// Records handed to the batcher and not yet taken by it: the queue's bound
    /// (`queue_capacity`) counts records, not chunks. It is checked before a chunk is added,
    /// so threads flushing at once can pass it by up to a chunk each.
    in_queue: AtomicUsize,
    queue_capacity: usize,
    /// Publishers that found the record queue full wait here until half of it is free again
    /// (signalled by the batcher), rather than taking each slot as it frees, which would wake
    /// a publisher and the batcher once per record.
    room: Mutex<()>,
    room_freed: Condvar,
    room_waiters: AtomicUsize,
    /// The batcher has ended (its queue takes nothing any more).
    batcher_done: AtomicBool,
    /// The journal holding acknowledged records until their batch has left memory; set once,
    /// before any publish arrives, when persistence is on (`Sink::attach_store`).
    durable: OnceLock<Durability>,
}

impl Shared {
    fn lock_spool(&self) -> MutexGuard<'_, SpoolState> {
        // A panic elsewhere must not stop the sink: the spool state stays consistent per call.
        self.spool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauges(&self, st: &SpoolState) {
        self.counters
            .spool_points
            .store(st.spool.lines() as u64, Ordering::Relaxed);
        self.counters
            .spool_bytes
            .store(st.spool.bytes(), Ordering::Relaxed);
    }

    fn past_deadline(&self) -> bool {
        matches!(*self.stop_deadline.lock().unwrap_or_else(|e| e.into_inner()), Some(d) if Instant::now() >= d)
    }

    /// A batch's records have left memory (written, spooled or dropped): their journal
    /// records are no longer needed.
    fn release(&self, ids: &[(u64, usize)]) {
        if let Some(d) = self.durable.get() {
            d.release(ids);
        }
    }

    fn add_facts(&self, facts: Vec<(String, String, FieldType)>) {
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

pub(super) struct Writer {
    /// The batcher's mapping, to tell on a publishing thread whether a topic is stored at all.
    mapping: Mapping,
    /// None once shut down. Submitters hold the read lock while sending, so shutdown (write
    /// lock) waits for every record already handed over. (Records still collected by a
    /// connection thread are handed over when it ends: the broker joins those threads first.)
    records: RwLock<Option<Sender<Chunk>>>,
    /// Dropped at shutdown: wakes the sender from a backoff wait.
    stop: Mutex<Option<Sender<()>>>,
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    shutdown_timeout: Duration,
    stopped_logged: AtomicBool,
}

impl Writer {
    pub(super) fn start(config: &SinkConfig, counters: Arc<Counters>) -> Result<Writer, String> {
        let mapping = Mapping::new(
            &config.exclude,
            &config.rules,
            &config.default,
            config.precision,
        )
        .map_err(|e| {
            e.into_iter()
                .map(|(k, m)| format!("sink.{k}: {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes).map_err(|e| {
            format!(
                "sink.spool_dir {}: cannot open spool: {e}",
                config.spool_dir.display()
            )
        })?;
        if !spool.is_empty() {
            log::info!(
                "sink: {} points ({} bytes) in the spool from an earlier run will be written first",
                spool.lines(),
                spool.bytes()
            );
        }
        let shared = Arc::new(Shared {
            counters,
            spool: Mutex::new(SpoolState {
                spool,
                in_flight: None,
            }),
            spool_shrunk: Condvar::new(),
            sender_took: Condvar::new(),
            facts: Mutex::new(Vec::new()),
            has_facts: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            stop_deadline: Mutex::new(None),
            sender_idle: AtomicBool::new(false),
            in_queue: AtomicUsize::new(0),
            queue_capacity: config.queue_capacity,
            room: Mutex::new(()),
            room_freed: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            batcher_done: AtomicBool::new(false),
            durable: OnceLock::new(),
        });
        shared.update_gauges(&shared.lock_spool());
        // Unbounded as a channel: `Shared::in_queue` bounds it in records.
        let (record_tx, record_rx) = unbounded();
        let (batch_tx, batch_rx) = bounded(BATCHES_IN_MEMORY);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let (ready_tx, ready_rx) = bounded::<()>(1);
        let batcher = Batcher {
            mapping: mapping.clone(),
            types: FieldTypes::default(),
            plans: TopicPlans::default(),
            batch_size: config.batch_size,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            idle_flush: (config.idle_flush_ms > 0)
                .then(|| Duration::from_millis(config.idle_flush_ms)),
            spool_full: config.spool_full,
            batches: batch_tx,
            shared: shared.clone(),
            backpressure_logged: false,
            ready: Some((ready_rx, Duration::from_secs(config.timeout_secs + 1))),
        };
        let sender = SenderLoop {
            client: InfluxClient::new(config),
            create_database: config.create_database,
            prepared: false,
            backoff: Backoff::new(config.retry_initial_ms, config.retry_max_ms),
            batches: batch_rx,
            stop: stop_rx,
            shared: shared.clone(),
            ready: Some(ready_tx),
        };
        let t1 = std::thread::Builder::new()
            .name("sink-batcher".into())
            .spawn(move || batcher.run(record_rx))
            .map_err(|e| format!("cannot start sink-batcher thread: {e}"))?;
        let t2 = std::thread::Builder::new()
            .name("sink-sender".into())
            .spawn(move || sender.run())
            .map_err(|e| format!("cannot start sink-sender thread: {e}"))?;
        log::info!(
            "sink: writing to {} database {:?}",
            config.url,
            config.database
        );
        Ok(Writer {
            mapping,
            records: RwLock::new(Some(record_tx)),
            stop: Mutex::new(Some(stop_tx)),
            shared,
            threads: Mutex::new(vec![t1, t2]),
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_secs),
            stopped_logged: AtomicBool::new(false),
        })
    }

    /// Use `store` for acknowledged records from now on (sync persistence), and hand the
    /// records a previous run left in it to the batcher again. Once, before publishes arrive.
    pub(super) fn attach_store(
        self: &Arc<Self>,
        store: Arc<crate::store::Store>,
        stored: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let (durability, replay) = Durability::new(store, stored);
        if self.shared.durable.set(durability).is_err() {
            log::error!("sink: a store was attached twice; keeping the first");
            return;
        }
        if !replay.is_empty() {
            log::info!(
                "sink: {} acknowledged publishes ({} store records) from before the restart \
                 were not yet written; writing them again (with their receive times: InfluxDB \
                 keeps one point each)",
                replay.iter().map(|r| r.records).sum::<usize>(),
                replay.len()
            );
        }
        for stored in replay {
            self.send(Chunk {
                data: stored.data,
                records: stored.records,
                durable: false,
                id: stored.id,
            });
        }
    }

    /// The journal record that makes a publish on `topic` durable, and the id to `submit` it
    /// under; None when the sink keeps no such records (persistence not sync) or does not store
    /// the topic.
    pub(super) fn durable_put(
        &self,
        record: &SinkRecord,
    ) -> Option<(u64, crate::store::journal::Op)> {
        let d = self.shared.durable.get().filter(|d| d.active)?;
        if !self.mapping.stores_topic(record.topic) {
            return None;
        }
        Some(d.put(record))
    }

    /// Whether a publish on `topic` acknowledged now must be kept in the journal until it is
    /// written (sync persistence, and the topic is stored).
    pub(super) fn keeps_durably(&self, topic: &str) -> bool {
        self.shared.durable.get().is_some_and(|d| d.active) && self.mapping.stores_topic(topic)
    }

    /// Hand a record to the batcher: at once, or, on a thread in a batching scope, with the
    /// others it submits before the scope's next `flush_batched`.
    pub(super) fn submit(self: &Arc<Self>, record: SinkRecord, journaled: Journaled) {
        if let Journaled::Own(id) = journaled {
            // Its record is in the journal already: it travels alone.
            let mut chunk = Chunk::one(&record);
            chunk.id = id;
            return self.send(chunk);
        }
        let durable = journaled == Journaled::WithChunk;
        let full = THREAD_BATCH.with(|b| match &mut *b.borrow_mut() {
            None => None,
            Some(batch) => {
                match &batch.writer {
                    Some(w) if !Arc::ptr_eq(w, self) => return None,
                    Some(_) => {}
                    None => batch.writer = Some(self.clone()),
                }
                batch.chunk.push(&record);
                batch.chunk.durable |= durable;
                Some(batch.chunk.data.len() >= CHUNK_BYTES)
            }
        });
        match full {
            Some(false) => {}
            Some(true) => flush_batched(),
            // Not batching, or batching for another sink (tests run several brokers).
            None => {
                let mut chunk = Chunk::one(&record);
                chunk.durable = durable;
                self.send(chunk)
            }
        }
    }

    fn send(&self, mut chunk: Chunk) {
        let n = chunk.records;
        // Outside a batching scope there is nothing of this thread's to write first.
        let before_wait = THREAD_BATCH
            .with(|b| b.borrow().as_ref().map(|t| t.before_wait))
            .unwrap_or(|| {});
        if chunk.durable {
            // Into the journal before the batcher can write it (and so release it), and before
            // this thread waits for the store to acknowledge its publishes.
            if let Some(d) = self.shared.durable.get() {
                let (id, put) = d.chunk_put(chunk.data.clone());
                d.store.submit_now(put);
                chunk.id = id;
            }
            chunk.durable = false;
        }
        // Kept for its id when the chunk cannot be handed over.
        let mut chunk_back = None;
        let mut chunk = Some(chunk);
        let shared = &self.shared;
        Counters::add(&shared.counters.received, n);
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let sent = records.as_ref().is_some_and(|tx| {
            if shared.in_queue.load(Ordering::Relaxed) + n > shared.queue_capacity {
                // About to wait for the batcher (backpressure): first write what this
                // connection thread has queued for its clients, which must not wait too
                // (the batching scope's `before_wait`, passed down by its owner).
                before_wait();
                self.wait_for_room();
            }
            shared.in_queue.fetch_add(n, Ordering::SeqCst);
            let Some(c) = chunk.take() else { return false };
            match tx.send(c) {
                Ok(()) => true,
                Err(e) => {
                    chunk_back = Some(e.0);
                    false
                }
            }
        });
        let chunk_back = chunk_back.or(chunk);
        if !sent {
            self.shared.counters.drop_points(DropReason::Stopped, n);
            if let Some(c) = chunk_back.filter(|c| c.id != 0) {
                self.shared.release(&[(c.id, c.records)]);
            }
            if !self.stopped_logged.swap(true, Ordering::Relaxed) {
                log::error!("sink: writer is not running (shut down?); publishes are not stored");
            }
        }
    }

    /// The record queue is full: block (backpressure) until half of it is free again, or the
    /// batcher has ended.
    fn wait_for_room(&self) {
        let shared = &self.shared;
        let half = shared.queue_capacity / 2;
        shared.room_waiters.fetch_add(1, Ordering::SeqCst);
        let mut room = shared.room.lock().unwrap_or_else(|e| e.into_inner());
        while shared.in_queue.load(Ordering::SeqCst) > half
            && !shared.batcher_done.load(Ordering::SeqCst)
        {
            // The timeout only bounds the damage of a missed signal; the batcher signals.
            room = shared
                .room_freed
                .wait_timeout(room, Duration::from_millis(50))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        drop(room);
        shared.room_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Stop taking records, flush, and join the threads. Idempotent.
    pub(super) fn shutdown(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        if threads.is_empty() {
            return;
        }
        *self
            .shared
            .stop_deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + self.shutdown_timeout);
        self.shared.stopping.store(true, Ordering::Release);
        // Closing the record channel ends the batcher once it has mapped what is queued.
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = None;
        *self.stop.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.shared.spool_shrunk.notify_all();
        self.shared.sender_took.notify_all();
        for t in threads {
            let name = t.thread().name().unwrap_or("sink").to_string();
            if t.join().is_err() {
                log::error!("sink: thread {name} panicked");
            }
        }
        let st = self.shared.lock_spool();
        if !st.spool.is_empty() {
            log::warn!(
                "sink: {} points stay in the spool for the next start",
                st.spool.lines()
            );
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What a thread in a batching scope has submitted and not yet handed to the batcher.
struct ThreadBatch {
    /// The sink the records are for; held only while there are records.
    writer: Option<Arc<Writer>>,
    chunk: Chunk,
    /// What the scope's owner must do before this thread blocks on a full queue (the broker:
    /// write the outboxes it claimed, `outbox::flush_batched`). The sink sits below the broker
    /// and cannot call it by name.
    before_wait: fn(),
}

thread_local! {
    /// None: not in a batching scope (records go to the batcher one by one).
    static THREAD_BATCH: RefCell<Option<ThreadBatch>> = const { RefCell::new(None) };
}

/// Start collecting this thread's records until `end_batching`, handing them over at each
/// `flush_batched`. Used by connection reader threads (with the outbox's batching scope).
/// `before_wait` runs before this thread waits for room in the record queue.
pub(crate) fn start_batching(before_wait: fn()) {
    THREAD_BATCH.with(|b| {
        b.borrow_mut().get_or_insert(ThreadBatch {
            writer: None,
            chunk: Chunk::default(),
            before_wait,
        });
    });
}

/// Hand over what this thread collected and stop collecting.
pub(crate) fn end_batching() {
    flush_batched();
    THREAD_BATCH.with(|b| *b.borrow_mut() = None);
}

/// Hand this thread's collected records to the batcher. Called before anything that may block,
/// as the records must not wait for this thread's next read.
pub(crate) fn flush_batched() {
    let taken = THREAD_BATCH.with(|b| {
        let mut b = b.borrow_mut();
        let batch = b.as_mut()?;
        let writer = batch.writer.take()?;
        Some((writer, std::mem::take(&mut batch.chunk)))
    });
    // Not borrowed while sending: waiting for room flushes the outboxes, which flush this.
    if let Some((writer, mut chunk)) = taken {
        if chunk.records > 0 {
            // A read that brought one small publish (the usual IoT client) must not hold a
            // whole chunk's buffer while queued.
            if chunk.data.capacity() > 2 * chunk.data.len() {
                chunk.data.shrink_to_fit();
            }
            writer.send(chunk);
        }
    }
}

fn skip_reason(s: Skip) -> DropReason {
    match s {
        Skip::EmptyPayload => DropReason::EmptyPayload,
        Skip::NotUtf8 => DropReason::NotUtf8,
        Skip::UnparsedPayload => DropReason::UnparsedPayload,
        Skip::NoFields | Skip::Excluded => DropReason::NoFields,
        Skip::TypeConflict => DropReason::TypeConflict,
    }
}

struct Batcher {
    mapping: Mapping,
    types: FieldTypes,
    plans: TopicPlans,
    batch_size: usize,
    flush_interval: Duration,
    /// `idle_flush_ms`: a partial batch this old goes to an idle sender (None: off). InfluxDB
    /// does not wait while points are held back, and a trickle of publishes still makes at most
    /// one request per interval, not one per publish.
    idle_flush: Option<Duration>,
    spool_full: SpoolFull,
    batches: Sender<Batch>,
    shared: Arc<Shared>,
    backpressure_logged: bool,
    /// Signalled (or dropped) once the sender has asked the database for its field types.
    ready: Option<(Receiver<()>, Duration)>,
}

impl Batcher {
    fn run(mut self, records: Receiver<Chunk>) {
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
                    match self.mapping.map(
                        rec.topic,
                        rec.payload,
                        rec.received_at_ns,
                        &mut self.types,
                        &mut self.plans,
                        &mut buf,
                    ) {
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
struct BatcherDone(Arc<Shared>);

impl Drop for BatcherDone {
    fn drop(&mut self) {
        self.0.batcher_done.store(true, Ordering::SeqCst);
        let _room = self.0.room.lock().unwrap_or_else(|e| e.into_inner());
        self.0.room_freed.notify_all();
    }
}

/// Exponential backoff with jitter: the n-th wait is uniformly random in [d/2, d] where d
/// doubles from `initial` up to `max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            current: Duration::from_millis(initial_ms),
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next(&mut self) -> Duration {
        // xorshift64: jitter only, no need for a cryptographic source.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }
}

enum Job {
    Memory(Batch),
    Spooled(u64, Batch),
}

/// Outcome of writing one batch (possibly in parts).
struct Delivery {
    written: usize,
    /// What still has to be written, and why it failed.
    retry: Option<(Batch, String, bool)>,
}

struct SenderLoop {
    client: InfluxClient,
    create_database: bool,
    prepared: bool,
    backoff: Backoff,
    batches: Receiver<Batch>,
    stop: Receiver<()>,
    shared: Arc<Shared>,
    ready: Option<Sender<()>>,
}

fn split(batch: &Batch) -> (Batch, Batch) {
    let lines = line_protocol::lines(&batch.data);
    let mid = lines.len() / 2;
    let join = |ls: &[&[u8]]| {
        let mut data = Vec::with_capacity(ls.iter().map(|l| l.len() + 1).sum());
        for l in ls {
            data.extend_from_slice(l);
            data.push(b'\n');
        }
        Batch {
            data,
            lines: ls.len(),
            ids: Vec::new(),
        }
    };
    (join(&lines[..mid]), join(&lines[mid..]))
}

fn concat(mut a: Batch, b: Batch) -> Batch {
    a.data.extend_from_slice(&b.data);
    a.lines += b.lines;
    a.ids.extend(b.ids);
    a
}

/// `input field "F" on measurement "M" is type T, already exists as type U` ->
/// (measurement, field, input type, stored type).
fn parse_type_conflict(text: &str) -> Option<(String, String, FieldType, FieldType)> {
    let rest = &text[text.find("input field \"")? + 13..];
    let (field, rest) = rest.split_once("\" on measurement \"")?;
    let (measurement, rest) = rest.split_once("\" is type ")?;
    let (input, rest) = rest.split_once(", already exists as type ")?;
    let stored = rest.split(|c: char| !c.is_ascii_alphabetic()).next()?;
    Some((
        measurement.to_string(),
        field.to_string(),
        FieldType::from_influx_name(input)?,
        FieldType::from_influx_name(stored)?,
    ))
}

fn dropped_count(text: &str) -> Option<usize> {
    let i = text.rfind("dropped=")?;
    text[i + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl SenderLoop {
    fn run(mut self) {
        // The database is created at start-up when InfluxDB answers; otherwise before the
        // first write that gets through.
        // While InfluxDB has not answered yet, it is asked again (with backoff) even when
        // nothing is published, so that /health turns ok as soon as it is reachable.
        let mut next_prepare = Instant::now();
        if let Err(e) = self.prepare() {
            log::warn!(
                "sink: InfluxDB not ready at start-up ({e}); points are spooled until it is"
            );
            self.shared
                .counters
                .set_last_error(Some(format!("InfluxDB not reachable at start-up: {e}")));
            next_prepare += self.backoff.next();
        }
        self.ready = None;
        loop {
            if self.shared.past_deadline() {
                break;
            }
            let job = {
                let mut st = self.shared.lock_spool();
                match self.batches.try_recv() {
                    Ok(b) => {
                        self.shared.sender_took.notify_all();
                        Some(Job::Memory(b))
                    }
                    Err(_) => {
                        match st.spool.front() {
                            Some((seq, Ok(b))) => {
                                st.in_flight = Some(seq);
                                Some(Job::Spooled(seq, b))
                            }
                            Some((seq, Err(e))) => {
                                let n = st.spool.remove(seq);
                                log::error!("sink: cannot read spooled batch ({n} points), dropping it: {e}");
                                self.shared.counters.drop_points(DropReason::SpoolIo, n);
                                self.shared.update_gauges(&st);
                                continue;
                            }
                            None => None,
                        }
                    }
                }
            };
            let job = match job {
                Some(j) => j,
                None if !self.prepared
                    && Instant::now() >= next_prepare
                    && !self.shared.stopping.load(Ordering::Acquire) =>
                {
                    match self.prepare() {
                        Ok(()) => {
                            log::info!("sink: InfluxDB is reachable");
                            self.backoff.reset();
                            self.shared.counters.set_last_error(None);
                        }
                        Err(e) => {
                            self.shared
                                .counters
                                .set_last_error(Some(format!("InfluxDB not reachable: {e}")));
                            next_prepare = Instant::now() + self.backoff.next();
                        }
                    }
                    continue;
                }
                None => {
                    // Nothing to write: the batcher may hand over a partial batch at once.
                    self.shared.sender_idle.store(true, Ordering::Release);
                    let next = self.batches.recv_timeout(Duration::from_millis(200));
                    self.shared.sender_idle.store(false, Ordering::Release);
                    match next {
                        Ok(b) => {
                            self.shared.sender_took.notify_all();
                            Job::Memory(b)
                        }
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => {
                            if self.shared.lock_spool().spool.is_empty() {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            if !self.prepared {
                if let Err(reason) = self.prepare() {
                    self.failed(job, None, &reason, false);
                    if self.wait_backoff(&reason) {
                        continue;
                    }
                    break;
                }
            }
            let (mut job_batch, seq) = match job {
                Job::Memory(b) => (b, None),
                Job::Spooled(seq, b) => (b, Some(seq)),
            };
            // Settled below whatever happens: written, dropped, or spooled by `failed`.
            let ids = std::mem::take(&mut job_batch.ids);
            let delivery = self.deliver(job_batch);
            let counters = &self.shared.counters;
            Counters::add(&counters.written, delivery.written);
            if seq.is_some() {
                Counters::add(&counters.replayed, delivery.written);
            }
            match delivery.retry {
                None => {
                    self.backoff.reset();
                    counters.set_last_error(None);
                    if let Some(seq) = seq {
                        let mut st = self.shared.lock_spool();
                        st.spool.remove(seq);
                        st.in_flight = None;
                        self.shared.update_gauges(&st);
                        drop(st);
                        self.shared.spool_shrunk.notify_all();
                    }
                    self.shared.release(&ids);
                }
                Some((rest, reason, loud)) => {
                    let job = match seq {
                        Some(seq) => Job::Spooled(seq, rest),
                        None => Job::Memory(rest),
                    };
                    self.failed(job, Some(delivery.written), &reason, loud);
                    self.shared.release(&ids);
                    if !self.wait_backoff(&reason) {
                        break;
                    }
                }
            }
        }
        self.spool_leftovers();
    }

    /// Create the database and learn its field types, once, before the first write.
    fn prepare(&mut self) -> Result<(), String> {
        if self.create_database {
            match self.client.create_database() {
                Ok(()) => log::info!("sink: database {:?} ready", self.client.database()),
                Err((true, e)) => return Err(format!("cannot create database: {e}")),
                Err((false, e)) => {
                    log::error!(
                        "sink: CREATE DATABASE {:?} failed: {e}; writing anyway",
                        self.client.database()
                    )
                }
            }
        }
        match self.client.field_types() {
            Ok(facts) => {
                log::debug!("sink: {} field types known in the database", facts.len());
                self.shared.add_facts(facts);
            }
            // Not reachable (also when the database is not ours to create): not ready yet.
            Err((true, e)) => return Err(e),
            Err((false, e)) => {
                log::debug!("sink: SHOW FIELD KEYS failed ({e}); relying on write errors")
            }
        }
        self.prepared = true;
        self.shared.counters.set_prepared();
        Ok(())
    }

    /// A write failed and will be retried: put what is left into the spool, in order.
    fn failed(&mut self, job: Job, written: Option<usize>, reason: &str, loud: bool) {
        let counters = self.shared.counters.clone();
        counters.set_last_error(Some(format!("last write failed: {reason}")));
        let mut st = self.shared.lock_spool();
        match job {
            Job::Spooled(seq, rest) => {
                Counters::add(&counters.retried, rest.lines);
                if written.unwrap_or(0) > 0 {
                    if let Err(e) = st.spool.replace(seq, &rest) {
                        log::error!("sink: cannot rewrite spooled batch: {e}");
                    }
                }
                st.in_flight = None;
            }
            Job::Memory(rest) => {
                Counters::add(&counters.retried, rest.lines);
                // Older than anything spooled, and so are the batches still in the channel:
                // they all go in front, oldest first.
                let mut pending = vec![rest];
                while let Ok(b) = self.batches.try_recv() {
                    pending.push(b);
                }
                for b in pending.into_iter().rev() {
                    match st.spool.push_front(&b) {
                        Ok(()) => Counters::add(&counters.spooled, b.lines),
                        Err(e) => {
                            log::error!(
                                "sink: cannot spool {} points: {e}; they are lost",
                                b.lines
                            );
                            counters.drop_points(DropReason::SpoolIo, b.lines);
                        }
                    }
                    self.shared.release(&b.ids);
                }
            }
        }
        self.shared.update_gauges(&st);
        let held = st.spool.lines();
        drop(st);
        if loud {
            log::error!("sink: InfluxDB write failed: {reason}; {held} points held in the spool");
        } else {
            log::warn!("sink: InfluxDB write failed: {reason}; {held} points held in the spool");
        }
    }

    /// Wait before the next attempt. False when the sink is stopping (stop trying).
    fn wait_backoff(&mut self, reason: &str) -> bool {
        if self.shared.stopping.load(Ordering::Acquire) {
            log::warn!("sink: stopping while InfluxDB is failing ({reason})");
            return false;
        }
        let d = self.backoff.next();
        log::debug!("sink: retrying in {d:?}");
        matches!(self.stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// At exit (only during shutdown): batches still in the channel, and any the batcher flushes
    /// until it ends, go in front of the spool (the channel only holds batches older than it).
    fn spool_leftovers(&mut self) {
        {
            let mut st = self.shared.lock_spool();
            st.in_flight = None;
        }
        self.shared.spool_shrunk.notify_all();
        // The batcher ends soon: its input is closed and it spools by force while stopping.
        let mut pending = Vec::new();
        for b in self.batches.iter() {
            pending.push(b);
            self.shared.sender_took.notify_all();
        }
        if pending.is_empty() {
            return;
        }
        let counters = self.shared.counters.clone();
        let mut st = self.shared.lock_spool();
        for b in pending.into_iter().rev() {
            match st.spool.push_front(&b) {
                Ok(()) => Counters::add(&counters.spooled, b.lines),
                Err(e) => {
                    log::error!(
                        "sink: cannot spool {} points at shutdown: {e}; they are lost",
                        b.lines
                    );
                    counters.drop_points(DropReason::SpoolIo, b.lines);
                }
            }
            self.shared.release(&b.ids);
        }
        self.shared.update_gauges(&st);
    }

    /// Write a batch; 413 is split in halves, refusals are handled by `refused` (which may
    /// send points InfluxDB already stored again: it stores them once).
    fn deliver(&mut self, mut batch: Batch) -> Delivery {
        // A loop rather than recursion for `Refusal::Resend`: a batch may hold many conflicts.
        loop {
            if batch.lines == 0 || batch.data.is_empty() {
                return Delivery {
                    written: 0,
                    retry: None,
                };
            }
            Counters::add(&self.shared.counters.write_requests, 1);
            break match self.client.write(&batch.data) {
                WriteResult::Written => Delivery {
                    written: batch.lines,
                    retry: None,
                },
                WriteResult::TooLarge if batch.lines > 1 => {
                    log::warn!(
                        "sink: InfluxDB refused a {}-byte batch as too large (413); splitting it",
                        batch.data.len()
                    );
                    self.deliver_halves(&batch)
                }
                WriteResult::TooLarge => {
                    log::error!(
                        "sink: InfluxDB refused a single {}-byte point as too large (413); dropped: {}",
                        batch.data.len(),
                        String::from_utf8_lossy(&batch.data[..batch.data.len().min(300)])
                    );
                    self.shared.counters.drop_points(DropReason::TooLarge, 1);
                    Delivery {
                        written: 0,
                        retry: None,
                    }
                }
                WriteResult::Rejected { status, body } => {
                    let text = error_text(&body);
                    if let Some((m, f, _, stored)) = parse_type_conflict(&text) {
                        self.shared.add_facts(vec![(m, f, stored)]);
                    }
                    match self.refused(batch, status, &text) {
                        Refusal::Done(delivery) => delivery,
                        Refusal::Resend(rest) => {
                            batch = rest;
                            continue;
                        }
                    }
                }
                WriteResult::Retry { reason, loud } => Delivery {
                    written: 0,
                    retry: Some((batch, reason, loud)),
                },
            };
        }
    }

    fn deliver_halves(&mut self, batch: &Batch) -> Delivery {
        let (a, b) = split(batch);
        let first = self.deliver(a);
        if let Some((rest, reason, loud)) = first.retry {
            return Delivery {
                written: first.written,
                retry: Some((concat(rest, b), reason, loud)),
            };
        }
        let second = self.deliver(b);
        Delivery {
            written: first.written + second.written,
            retry: second.retry,
        }
    }

    /// A batch InfluxDB refused (4xx other than 413). What it stored is taken from its answer
    /// only when the answer accounts for every point not stored (`account`); otherwise the
    /// batch is sent again in halves down to single points: a point written twice is stored
    /// once (same series, time and fields), so no good point is lost to a bad one, and every
    /// point that is not stored is counted (`rejected`) and logged with its line.
    fn refused(&mut self, batch: Batch, status: u16, text: &str) -> Refusal {
        let lines = line_protocol::lines(&batch.data);
        let account = account(&lines, text);
        // influxd quotes every line it could not parse: keep the log line short.
        let text = clip(text, 500);
        let (refused, resend) = match account {
            Accounting::Named(refused) => (refused, false),
            Accounting::Conflicting(refused) => (refused, true),
            Accounting::Unknown if lines.len() > 1 => {
                log::warn!(
                    "sink: InfluxDB refused part of a batch of {} points without naming every \
                     point it did not store ({text}); sending it again in halves",
                    lines.len()
                );
                return Refusal::Done(self.deliver_halves(&batch));
            }
            Accounting::Unknown => ((0..lines.len()).collect(), false),
        };
        self.shared
            .counters
            .drop_points(DropReason::Rejected, refused.len());
        log::error!(
            "sink: InfluxDB refused {} of {} points (HTTP {status}): {text}{}",
            refused.len(),
            lines.len(),
            refused
                .iter()
                .take(LOGGED_LINES)
                .map(|&i| format!(
                    "\n  dropped: {}",
                    clip(&String::from_utf8_lossy(lines[i]), 300)
                ))
                .collect::<String>()
        );
        if resend {
            // A type conflict: influxd names one conflicting field and the number dropped, but
            // an unparsable line would not be mentioned. The lines that conflict are known;
            // the rest is sent again, and its answer handled the same way.
            log::warn!(
                "sink: sending the other {} points of the batch again",
                lines.len() - refused.len()
            );
            let mut keep = vec![true; lines.len()];
            for &i in &refused {
                keep[i] = false;
            }
            let mut data = Vec::with_capacity(batch.data.len());
            for (l, _) in lines.iter().zip(&keep).filter(|(_, k)| **k) {
                data.extend_from_slice(l);
                data.push(b'\n');
            }
            // `ids` were taken out by the caller, which settles them after the last attempt.
            return Refusal::Resend(Batch {
                data,
                lines: lines.len() - refused.len(),
                ids: Vec::new(),
            });
        }
        Refusal::Done(Delivery {
            written: lines.len() - refused.len(),
            retry: None,
        })
    }
}

/// What became of a refused batch.
enum Refusal {
    Done(Delivery),
    /// Send these lines (the batch less those refused) again.
    Resend(Batch),
}

/// `s` cut to at most `max` characters, marked when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// What a refusal says about which points of a batch were not stored.
#[derive(Debug, PartialEq)]
enum Accounting {
    /// Exactly these lines (indices) were not stored, and every other one was.
    Named(Vec<usize>),
    /// These lines conflict with a stored field type and were not stored; about the others the
    /// answer may not tell all.
    Conflicting(Vec<usize>),
    /// The answer does not say which points were stored.
    Unknown,
}

/// Read influxd's answer to a refused write of `lines`. influxd 1.x answers a batch with lines
/// it cannot parse with `unable to parse '<line>': <reason>` for each, joined by newlines, in
/// batch order (`partial write: ... dropped=0` when it stored the other lines); a write the
/// storage refused in part (type conflict, retention, a `time` field) with `partial write:
/// <first reason> dropped=<n>`, which does not name the lines. Anything the answer does not
/// account for line by line is `Unknown`: then no point is assumed stored.
fn account(lines: &[&[u8]], text: &str) -> Accounting {
    let dropped = dropped_count(text);
    let (list, partial) = match text.strip_prefix("partial write: ") {
        Some(rest) => (rest.rfind(" dropped=").map_or(rest, |i| &rest[..i]), true),
        None => (text, false),
    };
    if list.starts_with("unable to parse '") {
        let Some(named) = named_lines(lines, list) else {
            return Accounting::Unknown;
        };
        // All lines refused (no `partial write`), or the others stored and none dropped.
        let complete = if partial {
            dropped == Some(0)
        } else {
            named.len() == lines.len()
        };
        return if complete {
            Accounting::Named(named)
        } else {
            Accounting::Unknown
        };
    }
    if dropped == Some(lines.len()) {
        return Accounting::Named((0..lines.len()).collect());
    }
    if let Some((m, f, input, _)) = parse_type_conflict(text) {
        let conflicting: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                line_protocol::parse_line(l).is_ok_and(|p| {
                    p.measurement == m && p.fields.iter().any(|(k, t)| *k == f && *t == input)
                })
            })
            .map(|(i, _)| i)
            .collect();
        if !conflicting.is_empty() {
            return Accounting::Conflicting(conflicting);
        }
    }
    Accounting::Unknown
}

/// The lines an `unable to parse '<line>': <reason>` list names, each matched whole against
/// the batch's lines in order (so text inside a line cannot pass for an entry). None when an
/// entry is not exactly one of them (influxd split the batch elsewhere).
fn named_lines(lines: &[&[u8]], list: &str) -> Option<Vec<usize>> {
    const ENTRY: &str = "unable to parse '";
    let mut named = Vec::new();
    let mut next = 0;
    let mut rest = list;
    while !rest.is_empty() {
        rest = rest.strip_prefix(ENTRY)?;
        let i = (next..lines.len()).find(|&i| {
            let b = rest.as_bytes();
            b.starts_with(lines[i]) && b[lines[i].len()..].starts_with(b"': ")
        })?;
        rest = &rest[lines[i].len() + 3..];
        // The reason is influxd's own text, up to the next entry.
        rest = rest
            .find(&format!("\n{ENTRY}"))
            .map_or("", |j| &rest[j + 1..]);
        named.push(i);
        next = i + 1;
    }
    Some(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_gives_back_every_record_as_pushed() {
        let big = vec![7u8; 5000];
        let records = [
            SinkRecord {
                topic: "sensors/kitchen/temp",
                payload: b"21.5",
                received_at_ns: 1_700_000_000_000_000_000,
            },
            SinkRecord {
                topic: "häuser/zähler",
                payload: b"",
                received_at_ns: -1,
            },
            SinkRecord {
                topic: "big",
                payload: &big,
                received_at_ns: 0,
            },
        ];
        let mut chunk = Chunk::default();
        for r in &records {
            chunk.push(r);
        }
        assert_eq!(chunk.records, 3);
        let mut at = 0;
        for want in &records {
            let got = chunk.read(&mut at).expect("record");
            assert_eq!(
                (got.topic, got.payload, got.received_at_ns),
                (want.topic, want.payload, want.received_at_ns)
            );
        }
        assert!(chunk.read(&mut at).is_none());
    }

    #[test]
    fn type_conflict_message_is_understood() {
        let t = "partial write: field type conflict: input field \"value\" on measurement \"m x\" is type string, already exists as type float dropped=2";
        assert_eq!(
            parse_type_conflict(t),
            Some((
                "m x".into(),
                "value".into(),
                FieldType::Str,
                FieldType::Float
            ))
        );
        assert_eq!(dropped_count(t), Some(2));
    }

    #[test]
    fn refusals_are_accounted_line_by_line_or_not_at_all() {
        let lines: Vec<&[u8]> = vec![b"a v=1 1", b"b v=x 2", b"c s=\"': q\" 3", b"d v=1 4"];
        let named = "partial write: unable to parse 'b v=x 2': invalid boolean\nunable to parse \
                     'c s=\"': q\" 3': x dropped=0";
        assert_eq!(account(&lines, named), Accounting::Named(vec![1, 2]));
        // A block that is not one of the lines (influxd split elsewhere): unknown.
        let merged = "partial write: unable to parse 'b v=x 2\nc s=\"': q\" 3': x dropped=0";
        assert_eq!(account(&lines, merged), Accounting::Unknown);
        // Every line refused, but fewer named than sent: unknown.
        let all = "unable to parse 'b v=x 2': invalid boolean";
        assert_eq!(account(&lines, all), Accounting::Unknown);
        let one: Vec<&[u8]> = vec![b"b v=x 2"];
        assert_eq!(account(&one, all), Accounting::Named(vec![0]));
        // A storage refusal that names no line.
        let time = "partial write: invalid field name: input field \"time\" on measurement \
                    \"m\" is invalid dropped=1";
        assert_eq!(account(&lines, time), Accounting::Unknown);
        let conflict = "partial write: field type conflict: input field \"v\" on measurement \
                        \"d\" is type float, already exists as type string dropped=1";
        assert_eq!(account(&lines, conflict), Accounting::Conflicting(vec![3]));
        let everything = "partial write: points beyond retention policy dropped=4";
        assert_eq!(
            account(&lines, everything),
            Accounting::Named(vec![0, 1, 2, 3])
        );
    }

    #[test]
    fn split_keeps_every_line_once() {
        let b = Batch {
            data: b"a v=1 1\nb s=\"x\ny\" 2\nc v=3 3\n".to_vec(),
            lines: 3,
            ids: Vec::new(),
        };
        let (x, y) = split(&b);
        assert_eq!((x.lines, y.lines), (1, 2));
        assert_eq!(concat(x, y).data, b.data);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_max() {
        let mut b = Backoff::new(100, 400);
        let waits: Vec<_> = (0..5).map(|_| b.next().as_millis()).collect();
        for (w, d) in waits.iter().zip([100u128, 200, 400, 400, 400]) {
            assert!(*w >= d / 2 && *w <= d, "{waits:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
