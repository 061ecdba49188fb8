//! The per-read batching scope: the one place that states in which order a reader thread's
//! collected work goes out.
//!
//! A connection's reader handles everything one socket read returned, and only then writes.
//! While a `ReadScope` is open on a thread, ordinary calls collect instead of acting at once;
//! each thread-local stays beside its data, but only this module starts, flushes or ends them:
//!
//! | collects | where | goes out at |
//! | --- | --- | --- |
//! | sink records, in one chunk (`THREAD_BATCH`) | `sink/handoff.rs` | `flush`, step 1 |
//! | outboxes this thread became the flusher of (`DIRTY`) | `outbox.rs` | `flush`, step 2 |
//! | "fed a full window" (`FED_BACKLOG`) | `session/delivery.rs` | `before_read`, after `flush` |
//! | store ops of one atomic record (`CAPTURE`) | `store/mod.rs` | end of `atomically`, first |
//! | packets sent meanwhile (`DEFERRED`) | `session/delivery.rs` | end of `atomically`, second |
//!
//! Order, and why:
//! 1. The sink's chunk first: should the sink have to wait for room, it flushes the outboxes
//!    meanwhile (`flush`, passed down to `sink::start_batching`: the sink does not name the
//!    broker), so no client packet waits behind the sink.
//! 2. Then the dirty outboxes, until none is dirty.
//! 3. In `atomically`, the store record is submitted before any packet it covers can reach a
//!    writer, whose `wait_durable` then covers it.
//!
//! `flush` runs before anything that may block: a socket read (`before_read`), a wait for room
//! or a sleep, a wait for the store, `Outbox::close`. Threads without a scope (`sys`, `main`
//! during shutdown) write at once and hand the sink one record at a time.

use super::outbox;
use super::session;
use crate::store::Store;

/// An open scope on the current thread (a connection's reader, or a housekeeping round).
/// Dropping it flushes and ends the scope, also when the thread unwinds, so no outbox is left
/// owned by a thread that is gone.
pub struct ReadScope(());

impl ReadScope {
    pub fn start() -> ReadScope {
        outbox::start_collecting(flush);
        // Should the sink have to wait for room, it first runs `flush` (its own chunk is empty
        // by then: it is the one being handed over), so no client packet waits behind it.
        crate::sink::start_batching(flush);
        ReadScope(())
    }
}

impl Drop for ReadScope {
    fn drop(&mut self) {
        flush();
        outbox::end_collecting();
        crate::sink::end_batching();
    }
}

/// Write what this thread's scope holds, and hand its publishes to the sink: the sink's chunk,
/// then the outboxes (see the module doc for why in that order). Does nothing outside a scope.
pub fn flush() {
    crate::sink::flush_batched();
    outbox::flush_collected();
}

/// Before a reader waits for its socket: flush, then, when this thread queued messages behind a
/// subscriber's full inflight window, let the subscriber's thread (whose acks open the window)
/// run first. On a busy core that wait is what bounds a publisher outpacing its subscriber
/// (measured: fan-in QoS 1 +45% with the broker on one core); with nothing else runnable it
/// costs one syscall per read.
pub fn before_read() {
    flush();
    if session::take_fed_backlog() {
        std::thread::yield_now();
    }
}

/// Run `f` with its store submissions collected into one atomic record and its sends held back:
/// on return the record goes to the store first, then the packets to their outboxes.
pub fn atomically<T>(store: &Store, f: impl FnOnce() -> T) -> T {
    session::defer_sends(|| store.atomically(f))
}
