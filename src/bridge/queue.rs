//! A bridge's durable queue: the messages going `out`, in order, in memory and in a journal of
//! their own (`crate::store`, group commit) under `<queue_dir>/<connection>/`.
//!
//! A local publisher's connection thread appends (`push`: one journal op, a channel send) and,
//! before its PUBACK/PUBREC, waits for the group commit (`wait_touched`, through
//! `Broker::wait_durable`), so an acknowledged message is on disk here as well. The bridge's
//! thread takes the oldest unsent messages (`next_unsent`), keeps them in flight as a prefix of
//! the queue, and deletes each one on the remote's PUBACK/PUBCOMP (`complete`). For QoS 2 the
//! remote's PUBREC is recorded (`released`), so after a reconnection or a restart the bridge
//! resends PUBREL, not the PUBLISH: the remote sees the message once.
//!
//! Keys: `q` + seq (u64 BE) -> [qos][flags: 1 retain, 2 properties][received_at_ns i64 LE]
//! [topic len u32 LE][topic]([properties len u32 LE][properties])[payload] (the v5 properties
//! a message keeps on its way: `encode_properties`); `r` + seq -> "" (PUBREC received); `i` + packet id (u16 BE) -> "" (a QoS 2
//! message from the remote routed locally, its PUBREL not yet seen: `in` direction).

use crate::protocol::{Properties, PublishProperties, QoS};
use crate::store::journal::{JournalError, Map, Op};
use crate::store::{PersistenceMode, Store};
use bytes::Bytes;
use log::warn;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const ENTRY: u8 = b'q';
const RELEASED: u8 = b'r';
const INCOMING: u8 = b'i';
/// Bytes a queued message costs besides its topic and payload (its record and bookkeeping).
const OVERHEAD: u64 = 64;

/// One queued message, already mapped to its remote topic.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub qos: QoS,
    pub retain: bool,
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub received_at_ns: i64,
    /// The v5 properties forwarded with it (Message Expiry Interval as published).
    pub properties: PublishProperties,
    /// QoS 2: the remote's PUBREC is recorded; only PUBREL/PUBCOMP remain.
    pub released: bool,
}

impl Entry {
    fn cost(&self) -> u64 {
        self.topic.len() as u64 + self.payload.len() as u64 + OVERHEAD
    }

    /// The packet id this message has on the link; fixed by its sequence number so that a
    /// resend after a restart uses the same id without storing it.
    pub fn packet_id(&self) -> u16 {
        packet_id(self.seq)
    }
}

pub fn packet_id(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

fn key(kind: u8, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn encode(e: &Entry) -> Vec<u8> {
    let properties = encode_properties(&e.properties);
    let mut v = Vec::with_capacity(18 + e.topic.len() + properties.len() + e.payload.len());
    v.push(e.qos as u8);
    v.push(e.retain as u8 | if properties.is_empty() { 0 } else { 2 });
    v.extend_from_slice(&e.received_at_ns.to_le_bytes());
    v.extend_from_slice(&(e.topic.len() as u32).to_le_bytes());
    v.extend_from_slice(e.topic.as_bytes());
    if !properties.is_empty() {
        v.extend_from_slice(&(properties.len() as u32).to_le_bytes());
        v.extend_from_slice(&properties);
    }
    v.extend_from_slice(&e.payload);
    v
}

fn decode(seq: u64, v: &[u8]) -> Option<Entry> {
    let qos = QoS::from_u8(*v.first()?)?;
    let flags = *v.get(1)?;
    let received_at_ns = i64::from_le_bytes(v.get(2..10)?.try_into().ok()?);
    let len = u32::from_le_bytes(v.get(10..14)?.try_into().ok()?) as usize;
    let topic = std::str::from_utf8(v.get(14..14 + len)?).ok()?;
    let mut at = 14 + len;
    let mut properties = PublishProperties::default();
    if flags & 2 != 0 {
        let n = u32::from_le_bytes(v.get(at..at + 4)?.try_into().ok()?) as usize;
        properties = decode_properties(v.get(at + 4..at + 4 + n)?)?;
        at += 4 + n;
    }
    let payload = Bytes::copy_from_slice(v.get(at..)?);
    Some(Entry {
        seq,
        qos,
        retain: flags & 1 != 0,
        topic: topic.into(),
        payload,
        received_at_ns,
        properties,
        released: false,
    })
}

/// The v5 properties a forwarded message keeps (section 3.3.2.3: what a server passes on
/// unchanged), as `[id][value]...`: numbers LE, strings and binary data with a u32 LE length.
fn encode_properties(p: &Properties) -> Vec<u8> {
    let mut v = Vec::new();
    let bytes = |v: &mut Vec<u8>, id: u8, b: &[u8]| {
        v.push(id);
        v.extend_from_slice(&(b.len() as u32).to_le_bytes());
        v.extend_from_slice(b);
    };
    if let Some(f) = p.payload_format_indicator {
        v.extend_from_slice(&[0x01, f]);
    }
    if let Some(e) = p.message_expiry_interval {
        v.push(0x02);
        v.extend_from_slice(&e.to_le_bytes());
    }
    if let Some(t) = &p.content_type {
        bytes(&mut v, 0x03, t.as_bytes());
    }
    if let Some(t) = &p.response_topic {
        bytes(&mut v, 0x08, t.as_bytes());
    }
    if let Some(d) = &p.correlation_data {
        bytes(&mut v, 0x09, d);
    }
    for (k, val) in &p.user_properties {
        bytes(&mut v, 0x26, k.as_bytes());
        bytes(&mut v, 0x26, val.as_bytes());
    }
    v
}

fn decode_properties(mut b: &[u8]) -> Option<PublishProperties> {
    let mut p = Properties::default();
    let mut key: Option<String> = None;
    let take = |b: &mut &[u8]| -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let out = b.get(4..4 + n)?.to_vec();
        *b = &b[4 + n..];
        Some(out)
    };
    while let Some((&id, rest)) = b.split_first() {
        b = rest;
        match id {
            0x01 => {
                p.payload_format_indicator = Some(*b.first()?);
                b = &b[1..];
            }
            0x02 => {
                p.message_expiry_interval = Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?));
                b = &b[4..];
            }
            0x03 => p.content_type = Some(String::from_utf8(take(&mut b)?).ok()?),
            0x08 => p.response_topic = Some(String::from_utf8(take(&mut b)?).ok()?),
            0x09 => p.correlation_data = Some(Bytes::from(take(&mut b)?)),
            0x26 => {
                let s = String::from_utf8(take(&mut b)?).ok()?;
                match key.take() {
                    None => key = Some(s),
                    Some(k) => p.user_properties.push((k, s)),
                }
            }
            _ => return None,
        }
    }
    Some(p.into())
}

/// Why a message left the queue without reaching the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// `queue_max_bytes` reached: the oldest not in flight went.
    QueueFull,
    /// Larger than the remote (or `bridge_max_packet_size`) takes.
    TooLarge,
    /// The remote refused it (v5 reason code >= 0x80 in PUBACK/PUBREC).
    Refused,
    /// Its v5 Message Expiry Interval passed while it was queued [MQTT-3.3.2-5].
    Expired,
}

/// Drop counters by reason.
#[derive(Debug, Default)]
pub struct Drops {
    pub queue_full: AtomicU64,
    pub too_large: AtomicU64,
    pub refused: AtomicU64,
    pub expired: AtomicU64,
}

impl Drops {
    fn counter(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::QueueFull => &self.queue_full,
            DropReason::TooLarge => &self.too_large,
            DropReason::Refused => &self.refused,
            DropReason::Expired => &self.expired,
        }
    }
    fn count(&self, reason: DropReason, n: u64) {
        self.counter(reason).fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counter(reason).load(Ordering::Relaxed)
    }
}

struct State {
    entries: VecDeque<Entry>,
    /// The first `in_flight` entries are sent and wait for the remote's acknowledgement.
    in_flight: usize,
    bytes: u64,
    next_seq: u64,
    /// QoS 2 packet ids from the remote routed locally and not yet released (`in`).
    incoming: HashSet<u16>,
    /// Last time a drop was logged, to log at most one line a second.
    drop_logged: Option<Instant>,
    /// Drops since that line, by reason.
    dropped_since_log: Vec<(DropReason, u64)>,
}

pub struct Queue {
    name: String,
    store: Arc<Store>,
    state: Mutex<State>,
    max_bytes: u64,
    pub drops: Drops,
}

thread_local! {
    /// Queues this thread pushed to since its last `wait_touched`.
    static TOUCHED: RefCell<Vec<Arc<Queue>>> = const { RefCell::new(Vec::new()) };
}

impl Queue {
    /// Open (or create) the queue in `dir`, with what a previous run left there. `recover`
    /// (`mqflux --recover`): keep the readable part of a damaged journal.
    pub fn open(
        name: &str,
        dir: &Path,
        max_bytes: u64,
        recover: bool,
    ) -> Result<Arc<Queue>, JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
            file: dir.to_path_buf(),
            source,
        })?;
        let (store, state) = Store::open(
            dir,
            PersistenceMode::Sync,
            Duration::from_secs(1),
            recover,
            load,
        )?;
        Ok(Arc::new(Queue {
            name: name.to_string(),
            store,
            state: Mutex::new(state),
            max_bytes,
            drops: Drops::default(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append a message (its journal op is submitted under the lock, so the journal sees the
    /// queue's order) and remember that this thread must wait for it before acknowledging.
    pub fn push(
        self: &Arc<Queue>,
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        received_at_ns: i64,
        properties: PublishProperties,
    ) {
        let mut s = self.lock();
        let entry = Entry {
            seq: s.next_seq,
            qos,
            retain,
            topic,
            payload,
            received_at_ns,
            properties,
            released: false,
        };
        s.next_seq += 1;
        let cost = entry.cost();
        // Drop the oldest not in flight until the new one fits (it alone may exceed the limit:
        // then it is queued anyway, so the newest message is never the one lost).
        let mut dropped = Vec::new();
        while s.bytes + cost > self.max_bytes && s.entries.len() > s.in_flight {
            let at = s.in_flight;
            if let Some(old) = s.entries.remove(at) {
                s.bytes -= old.cost();
                dropped.push(key(ENTRY, old.seq));
            }
        }
        let ops = dropped.len();
        let mut batch: Vec<Op> = dropped.into_iter().map(Op::Delete).collect();
        batch.push(Op::Put(key(ENTRY, entry.seq), encode(&entry)));
        // Never collected by an enclosing `Store::atomically`: that is the broker's own store.
        self.store.submit_now(if batch.len() == 1 {
            batch.pop().expect("one op")
        } else {
            Op::Batch(batch)
        });
        s.bytes += cost;
        s.entries.push_back(entry);
        if ops > 0 {
            self.note_drops(&mut s, DropReason::QueueFull, ops as u64);
        }
        drop(s);
        if qos == QoS::AtMostOnce {
            // Nobody waits for a QoS 0 message to be durable.
            return;
        }
        TOUCHED.with(|t| {
            let mut t = t.borrow_mut();
            if !t.iter().any(|q| Arc::ptr_eq(q, self)) {
                t.push(self.clone());
            }
        });
    }

    fn note_drops(&self, s: &mut State, reason: DropReason, n: u64) {
        self.drops.count(reason, n);
        s.dropped_since_log.push((reason, n));
        self.log_drops(s, false);
    }

    /// Log the drops not logged yet: at most one line per reason a second, so a flood of drops
    /// cannot flood the log; `flush_drop_log` (the bridge's thread, every loop) logs the rest.
    fn log_drops(&self, s: &mut State, force: bool) {
        if s.dropped_since_log.is_empty() {
            return;
        }
        let now = Instant::now();
        let due = s
            .drop_logged
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if !(due || force) {
            return;
        }
        for reason in [
            DropReason::QueueFull,
            DropReason::TooLarge,
            DropReason::Refused,
        ] {
            let n: u64 = s
                .dropped_since_log
                .iter()
                .filter(|(r, _)| *r == reason)
                .map(|(_, n)| n)
                .sum();
            if n == 0 {
                continue;
            }
            let total = self.drops.get(reason);
            warn!(
                "bridge {}: dropped {n} message(s) ({reason:?}; {total} so far for this reason; \
                 queue now {} messages, {} bytes, queue_max_bytes {})",
                self.name,
                s.entries.len(),
                s.bytes,
                self.max_bytes
            );
        }
        s.drop_logged = Some(now);
        s.dropped_since_log.clear();
    }

    /// Log drops still unlogged if a second has passed since the last line.
    pub fn flush_drop_log(&self) {
        let mut s = self.lock();
        let due = s
            .drop_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            self.log_drops(&mut s, true);
        }
    }

    /// Wait until every message this thread pushed is durable in its queue. False: a queue
    /// could not write it (or timed out), so the acknowledgement must not go out.
    pub fn wait_touched() -> bool {
        let touched = TOUCHED.with(|t| std::mem::take(&mut *t.borrow_mut()));
        touched
            .iter()
            .all(|q| q.store.wait_durable(crate::store::DURABLE_TIMEOUT))
    }

    /// Wait until the bridge thread's own changes (PUBREC recorded, incoming ids) are durable.
    pub fn sync(&self) -> bool {
        self.store.wait_durable(crate::store::DURABLE_TIMEOUT)
    }

    /// The oldest message not yet sent, now counted in flight; QoS 0 leaves the queue at once.
    /// None when there is none, or when its packet id is still taken by `busy`.
    pub fn next_unsent(&self, busy: impl Fn(u16) -> bool) -> Option<Entry> {
        let mut s = self.lock();
        let at = s.in_flight;
        let entry = s.entries.get(at)?;
        if entry.qos == QoS::AtMostOnce {
            let entry = s.entries.remove(at)?;
            s.bytes -= entry.cost();
            self.store.submit_now(Op::Delete(key(ENTRY, entry.seq)));
            return Some(entry);
        }
        if busy(entry.packet_id()) {
            return None;
        }
        let entry = entry.clone();
        s.in_flight += 1;
        Some(entry)
    }

    /// The messages in flight, oldest first: resent (or their PUBREL) after a reconnection.
    pub fn in_flight(&self) -> Vec<Entry> {
        let s = self.lock();
        s.entries.iter().take(s.in_flight).cloned().collect()
    }

    /// The remote acknowledged (PUBACK, PUBCOMP) or refused the message `seq`: it leaves.
    pub fn complete(&self, seq: u64, refused: bool) -> bool {
        let mut s = self.lock();
        let Some(at) = s
            .entries
            .iter()
            .take(s.in_flight)
            .position(|e| e.seq == seq)
        else {
            return false;
        };
        let Some(entry) = s.entries.remove(at) else {
            return false;
        };
        s.in_flight -= 1;
        s.bytes -= entry.cost();
        let op = if entry.released {
            Op::Batch(vec![
                Op::Delete(key(ENTRY, seq)),
                Op::Delete(key(RELEASED, seq)),
            ])
        } else {
            Op::Delete(key(ENTRY, seq))
        };
        self.store.submit_now(op);
        if refused {
            self.note_drops(&mut s, DropReason::Refused, 1);
        }
        true
    }

    /// A message that must not be sent (too large for the remote, expired): it leaves,
    /// counted. A QoS 0 one already left (`next_unsent`); it is only counted.
    pub fn drop_unsendable(&self, e: &Entry, reason: DropReason) {
        if e.qos == QoS::AtMostOnce || self.complete(e.seq, false) {
            let mut s = self.lock();
            self.note_drops(&mut s, reason, 1);
        }
    }

    /// The remote's PUBREC for `seq`: recorded, so only PUBREL is ever sent again. The caller
    /// sends PUBREL after `sync`.
    pub fn released(&self, seq: u64) -> bool {
        let mut s = self.lock();
        let n = s.in_flight;
        let Some(entry) = s.entries.iter_mut().take(n).find(|e| e.seq == seq) else {
            return false;
        };
        if !entry.released {
            entry.released = true;
            self.store
                .submit_now(Op::Put(key(RELEASED, seq), Vec::new()));
        }
        true
    }

    /// `in`: a QoS 2 packet id from the remote was routed; true if it is new.
    pub fn incoming_put(&self, packet_id: u16) -> bool {
        let mut s = self.lock();
        let new = s.incoming.insert(packet_id);
        if new {
            self.store
                .submit_now(Op::Put(incoming_key(packet_id), Vec::new()));
        }
        new
    }

    /// `in`: the remote released a QoS 2 packet id (PUBREL).
    pub fn incoming_release(&self, packet_id: u16) {
        let mut s = self.lock();
        if s.incoming.remove(&packet_id) {
            self.store.submit_now(Op::Delete(incoming_key(packet_id)));
        }
    }

    /// (messages, bytes, receive time of the oldest in ns).
    pub fn depth(&self) -> (u64, u64, Option<i64>) {
        let s = self.lock();
        (
            s.entries.len() as u64,
            s.bytes,
            s.entries.front().map(|e| e.received_at_ns),
        )
    }

    /// Write what is pending and stop the queue's store thread.
    pub fn close(&self) {
        self.store.stop();
    }
}

fn incoming_key(packet_id: u16) -> Vec<u8> {
    let mut k = vec![INCOMING];
    k.extend_from_slice(&packet_id.to_be_bytes());
    k
}

/// Rebuild the queue from its journal: entries in sequence order (big-endian keys sort so).
fn load(map: &Map) -> State {
    let mut entries = VecDeque::new();
    let mut released = HashSet::new();
    let mut incoming = HashSet::new();
    let mut next_seq = 0;
    for (k, v) in map {
        match k.first() {
            Some(&ENTRY) | Some(&RELEASED) if k.len() == 9 => {
                let seq = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
                next_seq = next_seq.max(seq + 1);
                if k[0] == RELEASED {
                    released.insert(seq);
                } else if let Some(e) = decode(seq, v) {
                    entries.push_back(e);
                } else {
                    warn!("bridge queue: record {seq} cannot be read; skipped");
                }
            }
            Some(&INCOMING) if k.len() == 3 => {
                incoming.insert(u16::from_be_bytes([k[1], k[2]]));
            }
            _ => {}
        }
    }
    // Messages the remote had acknowledged with PUBREC go first: they were in flight, and they
    // are resent as PUBREL (the prefix of the queue in flight).
    let mut in_flight = 0;
    for e in entries.iter_mut() {
        if released.contains(&e.seq) {
            e.released = true;
        }
    }
    let (mut first, rest): (VecDeque<Entry>, VecDeque<Entry>) =
        entries.into_iter().partition(|e| e.released);
    in_flight += first.len();
    first.extend(rest);
    let bytes = first.iter().map(Entry::cost).sum();
    State {
        entries: first,
        in_flight,
        bytes,
        next_seq,
        incoming,
        drop_logged: None,
        dropped_since_log: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(q: &Arc<Queue>, n: usize, qos: QoS) {
        for i in 0..n {
            q.push(
                format!("t/{i:02}").into(),
                Bytes::from(vec![b'x'; 100]),
                qos,
                false,
                i as i64,
                Default::default(),
            );
        }
        assert!(Queue::wait_touched());
    }

    #[test]
    fn messages_survive_a_restart_in_order_with_pubrec_kept() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open("t", dir.path(), 1 << 20, false).unwrap();
        push(&q, 5, QoS::ExactlyOnce);
        let first = q.next_unsent(|_| false).unwrap();
        let second = q.next_unsent(|_| false).unwrap();
        assert!(q.released(second.seq));
        assert!(q.complete(first.seq, false));
        assert!(q.sync());
        q.close();
        let q = Queue::open("t", dir.path(), 1 << 20, false).unwrap();
        let in_flight = q.in_flight();
        assert_eq!(in_flight.len(), 1);
        assert_eq!(in_flight[0].seq, second.seq);
        assert!(in_flight[0].released);
        let rest: Vec<u64> = std::iter::from_fn(|| q.next_unsent(|_| false))
            .map(|e| e.seq)
            .collect();
        assert_eq!(rest, vec![2, 3, 4]);
        q.close();
    }

    #[test]
    fn a_full_queue_drops_exactly_the_oldest_not_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        // Room for 10 messages of 100 + 4 + 64 bytes.
        let q = Queue::open("t", dir.path(), 10 * 168, false).unwrap();
        push(&q, 1, QoS::AtLeastOnce);
        let sent = q.next_unsent(|_| false).unwrap();
        push(&q, 14, QoS::AtLeastOnce);
        assert_eq!(q.drops.queue_full.load(Ordering::Relaxed), 5);
        let (n, _, _) = q.depth();
        assert_eq!(n, 10);
        // The one in flight stays; the next oldest (seq 1..=5) went.
        let rest: Vec<u64> = std::iter::from_fn(|| q.next_unsent(|_| false))
            .map(|e| e.seq)
            .collect();
        assert_eq!(sent.seq, 0);
        assert_eq!(rest, (6..15).collect::<Vec<u64>>());
        q.close();
    }

    #[test]
    fn v5_properties_are_kept_through_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open("t", dir.path(), 1 << 20, false).unwrap();
        let properties = Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(300),
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            ..Default::default()
        };
        q.push(
            "t".into(),
            Bytes::from_static(b"payload"),
            QoS::AtLeastOnce,
            true,
            7,
            properties.clone().into(),
        );
        assert!(Queue::wait_touched());
        q.close();
        let q = Queue::open("t", dir.path(), 1 << 20, false).unwrap();
        let e = q.next_unsent(|_| false).unwrap();
        assert_eq!(Properties::from(e.properties), properties);
        assert_eq!(
            (&*e.payload, e.retain, e.received_at_ns),
            (&b"payload"[..], true, 7)
        );
        q.close();
    }

    #[test]
    fn packet_ids_stay_in_range() {
        assert_eq!(packet_id(0), 1);
        assert_eq!(packet_id(65_534), 65_535);
        assert_eq!(packet_id(65_535), 1);
    }
}
