//! Hand-off: the first stage. Connection threads copy each accepted publish into a `Chunk`
//! and hand the chunk to the batcher's queue in one channel operation (per socket read, in a
//! batching scope: `start_batching` / `flush_batched` / `end_batching`). The queue is bounded
//! in records (`queue_capacity`): a thread that finds it full blocks until half of it is free
//! (backpressure), after calling the caller's `before_blocking` (see `start_batching`).
//!
//! With sync persistence, a chunk holding an acknowledged publish is put into the journal as
//! it is handed over (`durable.rs`).

use super::chunk::{Chunk, CHUNK_BYTES};
use super::record::SinkRecord;
use super::stats::{Counters, DropReason};
use super::writer::Writer;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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

impl Writer {
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

    /// Line protocol of the broker's own (self metrics): one record, no topic, not journaled.
    pub(super) fn submit_own_lines(&self, lines: &str, at_ns: i64) {
        let mut chunk = Chunk::one(&SinkRecord {
            topic: "",
            payload: lines.as_bytes(),
            received_at_ns: at_ns,
        });
        chunk.own_lines = true;
        self.send(chunk)
    }

    pub(super) fn send(&self, mut chunk: Chunk) {
        let n = chunk.records;
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
        if !chunk.as_ref().is_some_and(|c| c.own_lines) {
            // Publishes handed over; the broker's own self-metrics lines are not publishes.
            Counters::add(&shared.counters.received, n);
        }
        let records = self.records.read().unwrap_or_else(|e| e.into_inner());
        let sent = records.as_ref().is_some_and(|tx| {
            if shared.in_queue.load(Ordering::Relaxed) + n > shared.queue_capacity {
                // About to wait for the batcher (backpressure): first write what this
                // connection thread has queued for its clients, which must not wait too.
                before_blocking();
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
}

/// What a thread in a batching scope has submitted and not yet handed to the batcher.
struct ThreadBatch {
    /// The sink the records are for; held only while there are records.
    writer: Option<Arc<Writer>>,
    chunk: Chunk,
    /// The scope owner's work to do before this thread blocks (see `start_batching`).
    before_blocking: fn(),
}

thread_local! {
    /// None: not in a batching scope (records go to the batcher one by one).
    static THREAD_BATCH: RefCell<Option<ThreadBatch>> = const { RefCell::new(None) };
}

/// Start collecting this thread's records until `end_batching`, handing them over at each
/// `flush_batched`. Used by connection reader threads (with the outbox's batching scope).
///
/// `before_blocking` is the one call up out of the sink: a thread about to wait for room in a
/// full queue first runs it, so that what the caller's own scope holds (the broker: the
/// outboxes it queued for its clients) does not wait for the sink too. The caller owns it; the
/// sink knows nothing of connections.
pub(crate) fn start_batching(before_blocking: fn()) {
    THREAD_BATCH.with(|b| {
        b.borrow_mut().get_or_insert(ThreadBatch {
            writer: None,
            chunk: Chunk::default(),
            before_blocking,
        });
    });
}

/// This thread's scope's `before_blocking` (none outside a batching scope, where there is
/// nothing held to flush).
fn before_blocking() {
    let hook = THREAD_BATCH.with(|b| {
        b.try_borrow()
            .ok()
            .and_then(|b| b.as_ref().map(|t| t.before_blocking))
    });
    if let Some(hook) = hook {
        hook();
    }
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
}
