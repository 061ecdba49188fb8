//! The unit of the hand-off: publishes copied into one buffer (`durable.rs` layout).

use super::durable;
use super::record::SinkRecord;

/// A thread in a batching scope hands its records over once their bytes reach this. Below
/// glibc's large-request size (1 KiB): a large request first consolidates the arena's free
/// small blocks, which cost 7% of the broker's CPU when chunks were larger.
pub(super) const CHUNK_BYTES: usize = 768;

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
pub(super) struct Chunk {
    pub(super) data: Vec<u8>,
    pub(super) records: usize,
    /// Holds a publish that is acknowledged once durable: put into the journal when handed over.
    pub(super) durable: bool,
    /// Its journal record (0: none).
    pub(super) id: u64,
    /// The payloads are line protocol the broker wrote about itself (`Sink::submit_lines`):
    /// written as they are, past the topic rules.
    pub(super) own_lines: bool,
}

impl Chunk {
    /// A chunk of one record, no larger than it needs.
    pub(super) fn one(record: &SinkRecord) -> Chunk {
        let mut chunk = Chunk::default();
        chunk.data.reserve_exact(durable::encoded_len(record));
        chunk.push(record);
        chunk
    }

    pub(super) fn push(&mut self, record: &SinkRecord) {
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
    #[inline]
    pub(super) fn read(&self, at: &mut usize) -> Option<SinkRecord<'_>> {
        // Written by `push` (or read back from the journal, checked by `Durability::new`).
        durable::decode(&self.data, at)
    }
}
