//! Flow control towards connected subscribers (`limits.queue_full = "backpressure"`).
//!
//! A QoS 1/2 message is acknowledged to its publisher once it is routed, so dropping it later
//! because a subscriber's queue is full loses a message the publisher believes is safe. With
//! backpressure a delivery that finds a *connected* session's queue full (`max_queued`) is
//! queued anyway and the session's `QueueRoom` is noted on the delivering thread. A connection's
//! reader, before it handles its next packet, waits (`give_way`) until every room it filled is
//! half empty again: it reads nothing meanwhile, so TCP holds its client back and no new
//! PUBLISH is acknowledged. The subscriber's reader, handling the client's acks, makes the room
//! and wakes it.
//!
//! Bounds and escapes, so that one client can neither grow memory nor stall the broker:
//! - A queue exceeds `max_queued` only by what publishers deliver between filling it and
//!   waiting (one PUBLISH each), and never by more than `overflow_allowance`: beyond that the
//!   message is dropped and counted as in `drop` mode.
//! - No wait cycles: a reader never waits on its own session (it reads the acks that drain it),
//!   nor on one whose reader waits, directly or through others, on it (two clients subscribed
//!   to each other). Such a delivery overflows instead, within the bound above.
//! - A subscriber that completes nothing for `limits.stalled_subscriber_secs` while a reader
//!   waits on it (and is not itself waiting on another) is disconnected (`on_stalled`).
//! - Only connection readers wait (inside a `Scope`); other threads (wills, `$SYS`) deliver
//!   within the bound above. A leaving shared-subscription member's reader waits too, while it
//!   hands the messages it had not completed to another member (`Broker::redeliver_shared`).
//!
//! QoS 0 deliveries never wait: they are not acknowledged, and are dropped for a slow reader
//! as before (`limits.outbound_queue`). Offline sessions drop at `max_queued` as in `drop` mode.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How far past `max_queued` a connected session's queue may grow under backpressure.
pub fn overflow_allowance(max_queued: usize) -> usize {
    max_queued.max(64)
}

/// How often a waiting reader looks again without a wake-up (shutdown, stall clock).
const RECHECK: Duration = Duration::from_millis(100);

/// One session's queue as publishers waiting on it see it (shared, read without its lock).
pub struct QueueRoom {
    client_id: Arc<str>,
    /// The queue reached `max_queued` while connected; cleared once it is half empty, or the
    /// client disconnects.
    full: AtomicBool,
    /// The connection the queue was filled for (for the wait graph and a stall disconnect).
    connection_id: AtomicU64,
    /// Messages the client has completed (acked): a waiting reader watches it for a stall.
    taken: AtomicU64,
    /// When it last completed one (ns since the Unix epoch; 0: never), so a shared group whose
    /// members are all full picks one that is taking messages.
    taken_at_ns: AtomicU64,
    /// The connection last disconnected as stalled, so several waiting readers do it once.
    stalled: AtomicU64,
    waiters: AtomicUsize,
    generation: Mutex<u64>,
    changed: Condvar,
}

impl QueueRoom {
    pub fn new(client_id: Arc<str>) -> Arc<QueueRoom> {
        Arc::new(QueueRoom {
            client_id,
            full: AtomicBool::new(false),
            connection_id: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            taken_at_ns: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            waiters: AtomicUsize::new(0),
            generation: Mutex::new(0),
            changed: Condvar::new(),
        })
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Whether publishers are (to be) held back for this session.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// The queue of the session attached to `connection_id` is full: this thread's reader
    /// waits for room before its next packet. Called with the session locked.
    pub fn fill(self: &Arc<Self>, connection_id: u64) {
        self.mark_full(connection_id);
        self.note_fed();
    }

    /// The queue is full, but this thread need not wait for it: a shared subscription's
    /// delivery that found room (the group's next messages go to members with room).
    pub fn mark_full(&self, connection_id: u64) {
        self.connection_id.store(connection_id, Ordering::SeqCst);
        self.full.store(true, Ordering::SeqCst);
    }

    /// This thread delivered to the session while it is full: it waits too (fairness).
    pub fn note_fed(self: &Arc<Self>) {
        FILLED.with(|f| {
            if let Some(rooms) = f.borrow_mut().as_mut() {
                if !rooms.iter().any(|r| Arc::ptr_eq(r, self)) {
                    rooms.push(self.clone());
                }
            }
        });
    }

    /// The client completed a message (called with the session locked).
    pub fn note_taken(&self) {
        self.taken.fetch_add(1, Ordering::Relaxed);
        let now = super::message::now_ns().max(0) as u64;
        self.taken_at_ns.store(now, Ordering::Relaxed);
    }

    /// When the client last completed a message (0: never).
    pub fn taken_at_ns(&self) -> u64 {
        self.taken_at_ns.load(Ordering::Relaxed)
    }

    /// There is room again (or the client is gone): wake the readers waiting on it. Called
    /// with the session locked, which orders it against `fill`.
    pub fn make_room(&self) {
        if !self.full.load(Ordering::Relaxed) {
            return;
        }
        self.full.store(false, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            *self.lock_generation() += 1;
            self.changed.notify_all();
        }
    }

    fn lock_generation(&self) -> MutexGuard<'_, u64> {
        self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until the room is not full, `keep_waiting` says stop, or the subscriber looks
    /// stalled (`Some(connection)`: it completed nothing for `stall` while not waiting itself).
    fn wait(&self, stall: Duration, keep_waiting: &dyn Fn() -> bool) -> Option<u64> {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut seen = self.taken.load(Ordering::Relaxed);
        let mut since = Instant::now();
        let outcome = loop {
            // Read before `full`: a `make_room` after that check bumps it (no lost wake-up).
            let generation = *self.lock_generation();
            if !self.is_full() || !keep_waiting() {
                break None;
            }
            let connection = self.connection_id.load(Ordering::SeqCst);
            let taken = self.taken.load(Ordering::Relaxed);
            if taken != seen || is_waiting(connection) {
                // Progress, or held back by another subscriber: not this client's fault.
                (seen, since) = (taken, Instant::now());
            } else if since.elapsed() >= stall {
                break Some(connection);
            }
            let g = self.lock_generation();
            if *g == generation {
                let _ = self.changed.wait_timeout(g, RECHECK);
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

thread_local! {
    /// Rooms this thread filled since its last `give_way`; `None` outside a `Scope`.
    static FILLED: RefCell<Option<Vec<Arc<QueueRoom>>>> = const { RefCell::new(None) };
}

/// A connection reader's flow-control scope: only inside one does filling a queue make the
/// thread wait (see the module doc).
pub struct Scope(());

impl Scope {
    pub fn start() -> Scope {
        FILLED.with(|f| *f.borrow_mut() = Some(Vec::new()));
        Scope(())
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        FILLED.with(|f| *f.borrow_mut() = None);
    }
}

/// Whether this thread filled a queue it must wait on before its next packet.
pub fn must_give_way() -> bool {
    FILLED.with(|f| f.borrow().as_ref().is_some_and(|r| !r.is_empty()))
}

/// Which connections wait on which (by connection id): kept acyclic by `give_way`.
static WAITS: Mutex<Vec<(u64, Vec<u64>)>> = Mutex::new(Vec::new());

fn waits() -> MutexGuard<'static, Vec<(u64, Vec<u64>)>> {
    WAITS.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_waiting(connection: u64) -> bool {
    waits().iter().any(|(c, _)| *c == connection)
}

/// Does `from` wait, directly or through others, on `to`?
fn reaches(graph: &[(u64, Vec<u64>)], from: u64, to: u64) -> bool {
    let mut stack = vec![from];
    let mut seen = Vec::new();
    while let Some(c) = stack.pop() {
        if c == to {
            return true;
        }
        if seen.contains(&c) {
            continue;
        }
        seen.push(c);
        if let Some((_, targets)) = graph.iter().find(|(w, _)| *w == c) {
            stack.extend(targets.iter().copied());
        }
    }
    false
}

/// Before the reader of connection `own` handles its next packet: wait until every queue it
/// filled has room again. `keep_waiting` is polled (shutdown, session taken over);
/// `on_stalled(room, connection)` disconnects a subscriber that took nothing for `stall`.
pub fn give_way(
    own: u64,
    stall: Duration,
    keep_waiting: &dyn Fn() -> bool,
    on_stalled: &dyn Fn(&QueueRoom, u64),
) {
    let rooms = FILLED.with(|f| f.borrow_mut().as_mut().map(std::mem::take));
    let rooms = rooms.unwrap_or_default();
    let rooms: Vec<_> = {
        let mut graph = waits();
        let rooms: Vec<_> = rooms
            .into_iter()
            .filter(|r| {
                let c = r.connection_id.load(Ordering::SeqCst);
                // Never on itself, nor on a reader that waits on us: a cycle would never end.
                r.is_full() && c != 0 && c != own && !reaches(&graph, c, own)
            })
            .collect();
        if rooms.is_empty() {
            return;
        }
        let targets = rooms
            .iter()
            .map(|r| r.connection_id.load(Ordering::SeqCst))
            .collect();
        graph.push((own, targets));
        rooms
    };
    for room in rooms {
        if let Some(connection) = room.wait(stall, keep_waiting) {
            if room.stalled.swap(connection, Ordering::SeqCst) != connection {
                on_stalled(&room, connection);
            }
        }
    }
    waits().retain(|(c, _)| *c != own);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_graph_reachability_follows_chains() {
        let graph = vec![(1, vec![2]), (2, vec![3, 4]), (4, vec![1])];
        assert!(reaches(&graph, 2, 1), "2 -> 4 -> 1");
        assert!(reaches(&graph, 1, 3));
        assert!(!reaches(&graph, 3, 1), "3 waits on nobody");
        assert!(reaches(&graph, 5, 5), "a connection reaches itself");
    }

    #[test]
    fn make_room_wakes_a_waiting_reader() {
        let room = QueueRoom::new("s".into());
        let _scope = Scope::start();
        room.fill(7);
        assert!(must_give_way());
        let r = room.clone();
        let waker = std::thread::spawn(move || {
            while r.waiters.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            r.make_room();
        });
        let started = Instant::now();
        give_way(1, Duration::from_secs(30), &|| true, &|_, _| {
            panic!("not stalled")
        });
        waker.join().unwrap();
        assert!(!must_give_way());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_subscriber_taking_nothing_is_reported_stalled_once() {
        let room = QueueRoom::new("s".into());
        let _scope = Scope::start();
        room.fill(9);
        let reported = std::sync::atomic::AtomicU64::new(0);
        let stop = AtomicBool::new(false);
        give_way(
            11,
            Duration::from_millis(200),
            &|| !stop.load(Ordering::SeqCst),
            &|r, c| {
                assert_eq!((r.client_id(), c), ("s", 9));
                reported.fetch_add(1, Ordering::SeqCst);
                stop.store(true, Ordering::SeqCst);
            },
        );
        assert_eq!(reported.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_reader_does_not_wait_on_its_own_session() {
        let room = QueueRoom::new("me".into());
        let _scope = Scope::start();
        room.fill(3);
        let started = Instant::now();
        give_way(3, Duration::from_secs(30), &|| true, &|_, _| {});
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
