//! InfluxDB sink: the router hands every accepted PUBLISH to `Sink::submit`; the points end up
//! in InfluxDB, in order, none lost and none twice (as far as InfluxDB's own answers allow).
//!
//! Data flow: one direction, one file per stage, two threads.
//!
//! ```text
//! connection thread          sink-batcher                        sink-sender
//! -----------------          ------------                        -----------
//! Sink::submit               batcher.rs                          sender.rs
//!  handoff.rs: Chunk  --chunks-->  mapping.rs  --batches (2)-->  http.rs POST /write
//!  (one per socket     (bounded    rules.rs    |                 retry + backoff,
//!   read; blocks when  in records) payload.rs  |                 413 -> halves,
//!   the queue is full)             timestamp.rs|                 refusal -> line_scan.rs
//!  durable.rs: journal             field_types.rs                      ^
//!   put for acked QoS>0            line_protocol.rs                    |
//!                                              \--(sender busy or --> spool.rs --replayed--/
//!                                                  spool non-empty)    on disk
//! ```
//!
//! - Hand-off (`handoff.rs`): a connection thread copies its publishes into a chunk and hands
//!   the chunk over once per socket read (`start_batching` / `flush_batched` / `end_batching`,
//!   owned by the broker's per-read scope). The queue is bounded in records
//!   (`queue_capacity`); beyond it the publisher blocks (backpressure).
//! - Batcher (`batcher.rs`): maps records to line protocol (`mapping.rs` and the files it
//!   names) and ends a batch by size or time.
//! - Sender (`sender.rs`): writes the in-memory batches first (they are older than anything
//!   spooled), then the spool. A batch that cannot be written (InfluxDB down, 5xx, timeout)
//!   goes to the front of the spool and is retried with exponential backoff and jitter. A batch
//!   InfluxDB refuses in part is checked against its answer, line by line (`line_scan.rs` reads
//!   a batch as influxd does); what the answer does not account for is sent again in halves, as
//!   a point written twice is stored once.
//! - `writer.rs` wires the stages (start, shutdown); `shared.rs` is the state they share,
//!   `chunk.rs` the hand-off's unit, `record.rs` the input, `mapped.rs` what mapping gives;
//!   `config.rs` holds `[sink]`, `stats.rs` the counters. This file declares and re-exports,
//!   and holds the `Sink` handle; the files import each other directly, never through it.
//!
//! With sync persistence, a QoS 1/2 publish is also kept in the broker's journal from before it
//! is acknowledged until its batch has left memory, and written again after a crash
//! (`durable.rs`, `submit_acknowledged`).
//!
//! The sink knows nothing of connections: it never imports `crate::broker`. Its one call up
//! (write the caller's queued outboxes before blocking on a full queue) is the `fn()` the caller
//! passes to `start_batching`.

mod batcher;
mod chunk;
mod config;
pub mod durable;
mod field_types;
mod handoff;
pub mod http;
pub mod line_protocol;
pub mod line_scan;
mod mapped;
pub mod mapping;
mod payload;
mod record;
mod rules;
mod sender;
mod shared;
pub mod spool;
mod stats;
mod timestamp;
mod writer;

use std::path::Path;
use std::sync::Arc;

pub use config::{SinkConfig, SpoolFull};
pub(crate) use handoff::{end_batching, flush_batched, start_batching};
pub use line_protocol::Precision;
pub use mapping::{NonNumeric, RuleConfig, TimestampUnit};
pub use record::SinkRecord;
pub(crate) use stats::Counters;
pub use stats::{DropReason, LastPoint, SinkStats};

/// Handle to the writer threads. Cheap to share (`&Sink` from every connection thread).
pub struct Sink {
    writer: Option<Arc<writer::Writer>>,
    counters: Arc<Counters>,
}

impl Sink {
    /// Start the writer threads (or nothing, when disabled). Fails when the config is invalid or
    /// the spool directory cannot be opened. InfluxDB being unreachable is not an error: points
    /// are spooled until it answers.
    pub fn start(config: &SinkConfig) -> Result<Sink, String> {
        let counters = Arc::new(Counters::default());
        if !config.enabled {
            return Ok(Sink {
                writer: None,
                counters,
            });
        }
        let errors = config.validate(Path::new("<sink config>"));
        if !errors.is_empty() {
            return Err(errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        let writer = writer::Writer::start(config, counters.clone())?;
        Ok(Sink {
            writer: Some(Arc::new(writer)),
            counters,
        })
    }

    /// Hand one publish to the writer (a connection thread's are handed over together at its
    /// next flush, see `start_batching`). Blocks, applying backpressure to the publisher, rather
    /// than dropping when `queue_capacity` records are queued.
    pub fn submit(&self, record: SinkRecord) {
        if let Some(w) = &self.writer {
            w.submit(record, handoff::Journaled::No);
        }
    }

    /// Keep acknowledged records in `store` from now on when its mode is sync, and write again
    /// the records a previous run left there (`stored`: `Loaded::sink`). Call once, before any
    /// publish arrives.
    pub fn attach_store(
        &self,
        store: std::sync::Arc<crate::store::Store>,
        stored: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        match &self.writer {
            Some(w) => w.attach_store(store, stored),
            None if !stored.is_empty() => log::warn!(
                "sink: the store holds {} publishes not yet written to InfluxDB, but the sink \
                 is disabled; they are kept until it is enabled again",
                stored.len()
            ),
            None => {}
        }
    }

    /// `submit` for a QoS 1/2 publish about to be acknowledged: with sync persistence (and a
    /// topic the sink stores) it is put into the store with the other publishes of this
    /// thread's chunk when the chunk is handed over, which `flush_batched` does before the
    /// caller waits for `Store::wait_durable`; it is deleted once written (`durable.rs`).
    pub fn submit_acknowledged(&self, record: SinkRecord) {
        if let Some(w) = &self.writer {
            let journaled = if w.keeps_durably(record.topic) {
                handoff::Journaled::WithChunk
            } else {
                handoff::Journaled::No
            };
            w.submit(record, journaled);
        }
    }

    /// The store record that makes a QoS 1/2 publish durable for the sink, for a caller that
    /// must submit it inside an atomic record of its own (`Store::atomically`); then hand the
    /// publish over with `submit_durable`. None: no record needed (persistence not sync, sink
    /// off, or the topic is not stored).
    pub fn durable_put(&self, record: &SinkRecord) -> Option<(u64, crate::store::journal::Op)> {
        self.writer.as_ref()?.durable_put(record)
    }

    /// `submit` for a publish whose `durable_put` record (id `id`) was submitted to the store.
    pub fn submit_durable(&self, record: SinkRecord, id: u64) {
        if let Some(w) = &self.writer {
            w.submit(record, handoff::Journaled::Own(id));
        }
    }

    /// Write line protocol the broker made about itself (self metrics): not a publish, so no
    /// topic rule applies; lines without a timestamp get `at_ns`. Goes through the same queue,
    /// batches, retries and spool as publishes. Lines that do not parse are dropped and counted
    /// (`unparsed_payload`).
    pub fn submit_lines(&self, lines: &str, at_ns: i64) {
        if let Some(w) = &self.writer {
            w.submit_own_lines(lines, at_ns);
        }
    }

    /// Whether publishes are stored at all.
    pub fn is_enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Counter snapshot.
    pub fn stats(&self) -> SinkStats {
        self.counters.snapshot()
    }

    /// The last point InfluxDB accepted per measurement, most recent last (at most
    /// `stats::LAST_POINT_MEASUREMENTS`).
    pub fn last_points(&self) -> Vec<LastPoint> {
        self.counters.last_points()
    }

    /// Flush what is buffered and join the writer threads. Points InfluxDB does not take within
    /// `shutdown_timeout_secs` stay in the spool for the next start. Later `submit`s are counted
    /// as dropped (reason `stopped`). Idempotent; also done on drop.
    pub fn shutdown(&self) {
        if let Some(w) = &self.writer {
            w.shutdown();
        }
    }

    /// `shutdown`, then the final counters.
    pub fn shutdown_with_stats(&self) -> SinkStats {
        self.shutdown();
        self.counters.snapshot()
    }
}
