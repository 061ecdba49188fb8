//! Wiring of the sink's stages: `Writer::start` opens the spool, builds the state the stages
//! share (`Shared`) and starts the two threads; `shutdown` closes the hand-off queue, lets the
//! batcher and sender drain until `shutdown_timeout_secs`, and joins them. The stages
//! themselves: `handoff.rs` (connection threads -> queue), `batcher.rs`, `sender.rs`.

use super::batcher::Batcher;
use super::chunk::Chunk;
use super::config::SinkConfig;
use super::durable::Durability;
use super::http::InfluxClient;
use super::mapping::{FieldTypes, Mapping, TopicPlans};
use super::sender::{Backoff, SenderLoop};
use super::shared::{Shared, SpoolState};
use super::spool::Spool;
use super::stats::Counters;
use crossbeam_channel::{bounded, unbounded, Sender};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Batches held in memory between batcher and sender; beyond them batches go to the spool.
const BATCHES_IN_MEMORY: usize = 2;

pub(super) struct Writer {
    /// The batcher's mapping, to tell on a publishing thread whether a topic is stored at all.
    pub(super) mapping: Mapping,
    /// None once shut down. Submitters hold the read lock while sending, so shutdown (write
    /// lock) waits for every record already handed over. (Records still collected by a
    /// connection thread are handed over when it ends: the broker joins those threads first.)
    pub(super) records: RwLock<Option<Sender<Chunk>>>,
    /// Dropped at shutdown: wakes the sender from a backoff wait.
    pub(super) stop: Mutex<Option<Sender<()>>>,
    pub(super) shared: Arc<Shared>,
    pub(super) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(super) shutdown_timeout: Duration,
    pub(super) stopped_logged: AtomicBool,
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
                own_lines: false,
            });
        }
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
