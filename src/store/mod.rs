//! The journal that persistent state is written to: keys and values (bytes) in one file, fed by
//! one `store` thread with group commit. It knows no MQTT: the broker's schema
//! (`broker/persist.rs`: retained messages, persistent sessions and their QoS 1/2 state) and the
//! sink's (`sink/durable.rs`) say what the records mean.
//!
//! Data flow: broker code that changes durable state (a retained message set or cleared, a
//! session's subscriptions, a QoS 1/2 message queued, sent, acknowledged, an incoming QoS 2
//! packet id stored or released) sends a `journal::Op` over a channel to the `store` thread.
//! That thread appends every op it finds waiting to the journal in one write and, in sync mode,
//! fsyncs once for the whole batch ("group commit"), then answers every `wait_durable` caller
//! whose ops were in it. A connection calls `wait_durable` before it acknowledges a QoS 1/2
//! PUBLISH (or a PUBREL/PUBREC), so an acknowledged message is on disk.
//!
//! Ops are sent while the session (or retained store) lock is held, so the journal sees each
//! session's changes in the order they were made. A session's end (or a will that leaves its
//! disconnection record) is sent with the session table locked instead, after the session is
//! no longer reachable, in one atomic record with the will's deliveries (`Broker::route_will`).
//!
//! The InfluxDB sink keeps its own records here too (keys `k...`, `crate::sink::durable`): with
//! sync persistence, the acknowledged publishes it has not yet written or spooled, put by the
//! connection thread before its wait for `wait_durable` and deleted by the sink (`submit`, no
//! wait) once written. The store does not know what any record means: `Store::open` hands the
//! map to the caller's schema (`broker::persist::load`), which gives the sink's back undecoded.

pub mod journal;

use crossbeam_channel::{Receiver, Sender};
use journal::{Journal, JournalError, Loss, Map, Op};
use log::{error, info, warn};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// When a QoS 1/2 message is durable relative to its acknowledgement (a setting of the store, embedded in `config::PersistenceConfig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PersistenceMode {
    /// PUBACK/PUBREC/PUBREL/PUBCOMP are sent only once the state they confirm is on disk
    /// (group commit: one fsync covers every client waiting at that moment).
    #[default]
    Sync,
    /// Changes are written at once but fsynced every `periodic_interval_secs`: a crash of the
    /// machine (not just the broker) can lose acknowledged messages from the last interval.
    Periodic,
    /// Nothing is stored; state lives in memory only.
    Off,
}

thread_local! {
    /// Ops being collected by `Store::atomically` on this thread.
    static CAPTURE: std::cell::RefCell<Option<Vec<Op>>> = const { std::cell::RefCell::new(None) };
}

/// How long a connection waits for its message to become durable before giving up on the
/// acknowledgement (and closing the connection, so the client resends).
pub const DURABLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Ops applied per write at most (bounds the latency of the first waiter in a batch).
const MAX_BATCH: usize = 8192;
/// Compact when the journal is this much larger than the live data (and at least 64 MiB).
const COMPACT_RATIO: u64 = 4;
const COMPACT_MIN: u64 = 64 * 1024 * 1024;

enum Msg {
    Op(Op),
    /// Answer once everything sent before is durable (true) or failed to be written (false).
    Sync(Sender<bool>),
    Stop,
}

pub struct Store {
    tx: Sender<Msg>,
    mode: PersistenceMode,
    failed: Arc<AtomicBool>,
    /// The journal file, for log lines.
    path: PathBuf,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// Open the store in `dir`, hand what it holds to `read` (the caller's schema decodes the
    /// records: the store itself only knows bytes) and start the store thread.
    pub fn open<T>(
        dir: &Path,
        mode: PersistenceMode,
        interval: Duration,
        recover: bool,
        read: impl FnOnce(&Map) -> T,
    ) -> Result<(Arc<Store>, T), JournalError> {
        let (journal, map, loss) = Journal::open(dir, recover)?;
        if let Some(Loss {
            offset,
            lost_bytes,
            detail,
        }) = &loss
        {
            warn!(
                "--recover: {}: kept the records before byte {offset}; discarded {lost_bytes} \
                 unreadable bytes from there on ({detail}): state changed by them (messages, \
                 acknowledgements, subscriptions) is lost",
                journal.path().display()
            );
        }
        let path = journal.path().to_path_buf();
        let loaded = read(&map);
        let (tx, rx) = crossbeam_channel::unbounded();
        let failed = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            journal,
            live: map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            map,
            mode,
            interval,
            failed: failed.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| JournalError::Io {
                file: dir.to_path_buf(),
                source,
            })?;
        let store = Arc::new(Store {
            tx,
            mode,
            failed,
            path,
            thread: Mutex::new(Some(thread)),
        });
        Ok((store, loaded))
    }

    pub fn submit(&self, op: Op) {
        let op = CAPTURE.with(|c| match c.borrow_mut().as_mut() {
            Some(ops) => {
                ops.push(op);
                None
            }
            None => Some(op),
        });
        if let Some(op) = op {
            // After `stop` the thread is gone; late changes (during shutdown) are not recorded.
            let _ = self.tx.send(Msg::Op(op));
        }
    }

    /// `submit`, but never collected by an enclosing `atomically`: for an op that must reach the
    /// store thread before the caller acts on it (the sink hands a chunk to its batcher, which
    /// may write it and delete the op's key, right after).
    pub fn submit_now(&self, op: Op) {
        // After `stop` the thread is gone; late changes (during shutdown) are not recorded.
        let _ = self.tx.send(Msg::Op(op));
    }

    /// Run `f`, collecting what this thread submits meanwhile into one atomic record: after a
    /// crash either all of it is in the store or none of it. The caller must keep other threads
    /// from acting on these changes until `f` returns (it holds the locks involved).
    pub fn atomically<T>(&self, f: impl FnOnce() -> T) -> T {
        let outer = CAPTURE.with(|c| c.borrow_mut().replace(Vec::new()));
        let out = f();
        let ops = CAPTURE.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
        match ops {
            Some(ops) if !ops.is_empty() => self.submit(Op::Batch(ops)),
            _ => {}
        }
        out
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether acknowledgements must wait for `wait_durable`.
    pub fn is_sync(&self) -> bool {
        self.mode == PersistenceMode::Sync
    }

    /// Block until every op submitted before this call by this thread is durable. False on a
    /// write error or after `timeout`.
    pub fn wait_durable(&self, timeout: Duration) -> bool {
        if self.failed.load(Ordering::Relaxed) {
            return false;
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Msg::Sync(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).unwrap_or(false)
    }

    /// Write and fsync what is pending, then stop and join the store thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// The store thread's state.
struct Writer {
    journal: Journal,
    /// The live data (kept to write compacted snapshots).
    map: Map,
    /// Bytes of live keys and values.
    live: u64,
    mode: PersistenceMode,
    interval: Duration,
    failed: Arc<AtomicBool>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::new();
        let mut waiters = Vec::new();
        let mut unsynced = false;
        let mut next_sync = Instant::now() + self.interval;
        loop {
            let first = if self.mode == PersistenceMode::Periodic && unsynced {
                match rx.recv_deadline(next_sync) {
                    Ok(m) => Some(m),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Some(Msg::Stop),
                }
            } else {
                Some(rx.recv().unwrap_or(Msg::Stop))
            };
            let mut stop = false;
            buf.clear();
            for msg in first.into_iter().chain(rx.try_iter().take(MAX_BATCH)) {
                match msg {
                    Msg::Op(op) => {
                        journal::encode(&op, &mut buf);
                        self.apply(op);
                    }
                    Msg::Sync(w) => waiters.push(w),
                    Msg::Stop => {
                        stop = true;
                        break;
                    }
                }
            }
            let mut ok = !self.failed.load(Ordering::Relaxed);
            if ok && !buf.is_empty() {
                ok = self.write(|j| j.append(&buf), "write");
                unsynced = true;
            }
            let sync_now = match self.mode {
                PersistenceMode::Periodic => Instant::now() >= next_sync || stop,
                _ => true,
            };
            if ok && unsynced && sync_now {
                ok = self.write(|j| j.sync(), "fsync");
                unsynced = false;
                next_sync = Instant::now() + self.interval;
            }
            for w in waiters.drain(..) {
                let _ = w.send(ok);
            }
            if ok && self.journal.size() > COMPACT_MIN.max(self.live * COMPACT_RATIO) {
                let started = Instant::now();
                let map = std::mem::take(&mut self.map);
                // A failure is logged and sets `failed`; later batches see it.
                self.write(|j| j.compact(&map), "compact");
                self.map = map;
                info!(
                    "store: compacted {} to {} bytes in {:?}",
                    self.journal.path().display(),
                    self.journal.size(),
                    started.elapsed()
                );
            }
            if stop {
                info!("store: {} closed", self.journal.path().display());
                return;
            }
        }
    }

    fn apply(&mut self, op: Op) {
        // One map lookup per op: the old value comes back from insert/remove.
        let size = |k: usize, v: &[u8]| (k + v.len()) as u64;
        match op {
            Op::Put(k, v) => {
                let (k_len, added) = (k.len(), size(k.len(), &v));
                let old = self.map.insert(k, v).map_or(0, |o| size(k_len, &o));
                self.live = (self.live + added).saturating_sub(old);
            }
            Op::Delete(k) => {
                let old = self.map.remove(&k).map_or(0, |o| size(k.len(), &o));
                self.live = self.live.saturating_sub(old);
            }
            Op::Batch(ops) => {
                for op in ops {
                    self.apply(op);
                }
            }
            Op::DeletePrefix(p) => {
                let gone: u64 = self
                    .map
                    .range(p.clone()..)
                    .take_while(|(k, _)| k.starts_with(&p))
                    .map(|(k, v)| size(k.len(), v))
                    .sum();
                self.live = self.live.saturating_sub(gone);
                journal::apply(&mut self.map, Op::DeletePrefix(p));
            }
        }
    }

    /// Run a journal operation; on error log it once and refuse every later acknowledgement:
    /// the journal may now end in a torn record, so nothing after it could be trusted.
    fn write(&mut self, f: impl FnOnce(&mut Journal) -> std::io::Result<()>, what: &str) -> bool {
        match f(&mut self.journal) {
            Ok(()) => true,
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    error!(
                        "store: {what} {} failed: {e}; QoS 1/2 messages are no longer \
                         acknowledged until the broker is restarted",
                        self.journal.path().display()
                    );
                }
                false
            }
        }
    }
}
