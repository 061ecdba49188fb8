//! End-to-end durability of acknowledged publishes (persistence `mode = "sync"` only).
//!
//! The sink's queue and in-memory batches are lost in a crash. So that a QoS 1/2 PUBLISH is
//! acknowledged only once it is safe, a copy of it (receive time, topic, payload) goes into the
//! broker's journal before the acknowledgement, in the group commit the connection already
//! waits for. The unit is the chunk a connection thread hands to the batcher (the publishes of
//! one socket read, `writer.rs`): a chunk holding an acknowledged publish is put into the
//! journal as one record under a new id (`chunk_put`) just before it is handed over, so a burst
//! of publishes costs one journal record, not one each. A QoS 2 publish whose packet id the
//! broker stores gets a record of its own (`put`), submitted in the same atomic record as that
//! id. The id travels chunk -> batcher -> batch -> sender; each batch knows how many publishes
//! of which journal record it holds. Once a batch has left memory (accepted by InfluxDB,
//! fsync'd into the spool, or dropped with a counted reason), those are settled (`release`),
//! and a journal record whose publishes are all settled is deleted (one `Op::Batch` per batch;
//! group commit, nobody waits for it). At start-up every record still in the journal is handed
//! to the sink again with its stored receive times (`Durability::new`): a point InfluxDB
//! already has lands on the same series and timestamp and is kept once.
//!
//! So the journal holds only publishes not yet written: a bounded number (about the queue plus
//! two batches), which compaction carries over like any live key.
//!
//! Keys: `k` (`SINK`) + id (u64 BE). Value: the publishes in `Chunk` layout (for each:
//! receive time, topic and payload lengths, topic, payload).

use super::record::SinkRecord;
use crate::store::journal::Op;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The journal, while the sink keeps records there.
pub(super) struct Durability {
    pub(super) store: Arc<Store>,
    /// New publishes get records (sync persistence); otherwise only stored ones are replayed.
    pub(super) active: bool,
    /// Next id; ids are never reused within a run, and start above any loaded one.
    next_id: AtomicU64,
    /// Journal records taken by the batcher -> their publishes not yet settled.
    unsettled: Mutex<HashMap<u64, usize>>,
}

/// A journal record found at start-up: its id, the publishes (`Chunk` layout) and their count.
pub(super) struct Stored {
    pub(super) id: u64,
    pub(super) data: Vec<u8>,
    pub(super) records: usize,
}

/// The first byte of every store key the sink owns; the broker's schema (`broker::persist`)
/// hands these records back undecoded in `Loaded::sink`.
pub const SINK: u8 = b'k';

fn key(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(SINK);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

const HEADER: usize = 16;

/// The value layout, shared with `Chunk` (`writer.rs`): receive time (i64 LE), topic and payload
/// lengths (u32 LE each), topic, payload.
pub(super) fn encode(record: &SinkRecord, out: &mut Vec<u8>) {
    let (topic, payload) = (record.topic.as_bytes(), record.payload);
    // The lengths fit: a topic is at most 65,535 bytes and an MQTT packet at most 256 MiB.
    out.extend_from_slice(&record.received_at_ns.to_le_bytes());
    out.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(topic);
    out.extend_from_slice(payload);
}

pub(super) fn encoded_len(record: &SinkRecord) -> usize {
    HEADER + record.topic.len() + record.payload.len()
}

/// The record at `*at` in `data`, moving `*at` past it; None at the end or when cut short.
pub(super) fn decode<'a>(data: &'a [u8], at: &mut usize) -> Option<SinkRecord<'a>> {
    let header = data.get(*at..at.checked_add(HEADER)?)?;
    let field = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
    let received_at_ns = i64::from_le_bytes(header[..8].try_into().unwrap_or_default());
    let (topic_len, payload_len) = (field(8) as usize, field(12) as usize);
    let topic_at = *at + HEADER;
    let payload_at = topic_at.checked_add(topic_len)?;
    let end = payload_at.checked_add(payload_len)?;
    let topic = std::str::from_utf8(data.get(topic_at..payload_at)?).ok()?;
    let payload = data.get(payload_at..end)?;
    *at = end;
    Some(SinkRecord {
        topic,
        payload,
        received_at_ns,
    })
}

impl Durability {
    /// `stored`: the sink's records loaded from the journal (key without its first byte, value).
    /// Returns the durability state and the stored records that decode, oldest first.
    pub(super) fn new(
        store: Arc<Store>,
        stored: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> (Durability, Vec<Stored>) {
        let mut replay = Vec::with_capacity(stored.len());
        for (k, v) in stored {
            let id = k.as_slice().try_into().ok().map(u64::from_be_bytes);
            let (mut at, mut records) = (0, 0);
            while at < v.len() && decode(&v, &mut at).is_some() {
                records += 1;
            }
            match id {
                Some(id) if at == v.len() && records > 0 => replay.push(Stored {
                    id,
                    data: v,
                    records,
                }),
                _ => {
                    // Passed its checksum, so only a bug or a format change can cause this.
                    log::warn!("sink: skipping an undecodable stored record (key {k:02x?})");
                    let mut full = vec![SINK];
                    full.extend_from_slice(&k);
                    store.submit(Op::Delete(full));
                }
            }
        }
        // Ids grow with arrival: oldest first.
        replay.sort_by_key(|s| s.id);
        let next = replay.last().map_or(1, |s| s.id + 1);
        let active = store.is_sync();
        let d = Durability {
            store,
            active,
            next_id: AtomicU64::new(next),
            unsettled: Mutex::new(HashMap::new()),
        };
        (d, replay)
    }

    /// A new id and the journal record that makes `record` durable under it.
    pub(super) fn put(&self, record: &SinkRecord) -> (u64, Op) {
        let mut v = Vec::with_capacity(encoded_len(record));
        encode(record, &mut v);
        self.chunk_put(v)
    }

    /// A new id and the journal record holding `data` (publishes in `Chunk` layout) under it.
    pub(super) fn chunk_put(&self, data: Vec<u8>) -> (u64, Op) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        (id, Op::Put(key(id), data))
    }

    /// The batcher took journal record `id` with `records` publishes: it is deleted once
    /// `release` has settled them all.
    pub(super) fn taken(&self, id: u64, records: usize) {
        self.lock().insert(id, records);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, usize>> {
        // The map stays consistent per call; a panic elsewhere must not stop the releases.
        self.unsettled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch has left memory (written, spooled or dropped): `ids` says how many publishes of
    /// which journal record it held. Records with nothing left unsettled are deleted, in one
    /// journal record. Nobody waits for it: until it is durable, a crash only makes the next
    /// start write these points again, which InfluxDB keeps once.
    pub(super) fn release(&self, ids: &[(u64, usize)]) {
        if ids.is_empty() {
            return;
        }
        let mut done = Vec::new();
        {
            let mut unsettled = self.lock();
            for &(id, n) in ids {
                match unsettled.get_mut(&id) {
                    Some(left) if *left > n => *left -= n,
                    // All settled, or never taken by the batcher (handed over after it ended).
                    Some(_) | None => {
                        unsettled.remove(&id);
                        done.push(Op::Delete(key(id)));
                    }
                }
            }
        }
        match done.len() {
            0 => {}
            1 => self.store.submit(done.remove(0)),
            _ => self.store.submit(Op::Batch(done)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_cut_short_is_refused() {
        let r = SinkRecord {
            topic: "a/b",
            payload: b"{\"seq\":1}",
            received_at_ns: 1_700_000_000_123_456_789,
        };
        let mut v = Vec::new();
        encode(&r, &mut v);
        assert_eq!(v.len(), encoded_len(&r));
        let mut at = 0;
        let got = decode(&v, &mut at).unwrap();
        assert_eq!(
            (got.topic, got.payload, got.received_at_ns, at),
            (r.topic, r.payload, r.received_at_ns, v.len())
        );
        for cut in 0..v.len() {
            assert!(decode(&v[..cut], &mut 0).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn key_sorts_by_id() {
        assert!(key(255) < key(256));
        assert_eq!(key(1)[0], SINK);
    }
}
