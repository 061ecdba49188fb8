//! The broker's persistence schema: what the broker keeps in the store, as keys and values of
//! the journal's map. It lives beside what it persists (as mosquitto keeps `persist_*.c` beside
//! `database.c`); the store below it only sees bytes.
//!
//! Keys (a client id is written as `[len u16 BE][bytes]` so one client's keys share a prefix):
//! - `r` topic: a retained message
//! - `s` client: a persistent session (expiry interval, subscriptions)
//! - `d` client: when that session's client disconnected (wall clock) and its delayed will, if
//!   any; absent while connected
//! - `o` client seq(u64 BE): an outgoing QoS 1/2 message, queued (packet id 0) or inflight
//! - `i` client packet-id(u16 BE): an incoming QoS 2 message routed and awaiting PUBREL
//! - `n` client: the session's owner, the identity (username, or none: anonymous) that alone may
//!   resume it. A store written before owners were recorded has none: such a session is
//!   adopted by the first client that resumes it (see `Session::may_resume`)
//! - `k` ...: owned by the InfluxDB sink (`crate::sink::durable::SINK`: acknowledged publishes
//!   not yet written to InfluxDB or its spool); handed back undecoded in `Loaded::sink`
//!
//! A message is stored as a v5 PUBLISH encoded by the broker's own codec (so its properties
//! round-trip), plus what the wire format does not carry: publisher, receive time and the
//! absolute expiry deadline.

use crate::broker::message::Message;
use crate::broker::message::Route;
use crate::protocol::{self, Packet, ProtocolVersion, QoS, SubscriptionOptions};
use crate::sink::durable::SINK;
use crate::store::journal::{JournalError, Map, Op};
use crate::store::{PersistenceMode, Store};
use log::{info, warn};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RETAINED: u8 = b'r';
const SESSION: u8 = b's';
const OUTGOING: u8 = b'o';
const INCOMING: u8 = b'i';
const DETACHED: u8 = b'd';
/// Sorts before `SESSION`, so `load` has it when it reaches the session record.
const OWNER: u8 = b'n';

/// Open the store in `dir` (`Store::open`: replay the journal, start the store thread) and
/// decode what it holds.
pub fn open(
    dir: &Path,
    mode: PersistenceMode,
    interval: Duration,
    recover: bool,
) -> Result<(Arc<Store>, Loaded), JournalError> {
    let (store, loaded) = Store::open(dir, mode, interval, recover, load)?;
    info!(
        "store {}: loaded {} retained messages, {} sessions, {} queued/inflight messages, \
         {} sink records (publishes not yet written to InfluxDB) (mode {mode:?})",
        store.path().display(),
        loaded.retained.len(),
        loaded.sessions.len(),
        loaded
            .sessions
            .iter()
            .map(|s| s.outgoing.len())
            .sum::<usize>(),
        loaded.sink.len()
    );
    Ok((store, loaded))
}

/// The `[len][client id]` part of a session's keys.
pub fn client_key(client_id: &str) -> Vec<u8> {
    let id = &client_id.as_bytes()[..client_id.len().min(u16::MAX as usize)];
    let mut k = Vec::with_capacity(2 + id.len());
    k.extend_from_slice(&(id.len() as u16).to_be_bytes());
    k.extend_from_slice(id);
    k
}

fn key(kind: u8, client: &[u8], suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + client.len() + suffix.len());
    k.push(kind);
    k.extend_from_slice(client);
    k.extend_from_slice(suffix);
    k
}

pub fn retained_put(message: &Message) -> Op {
    let mut v = Vec::new();
    put_message(&mut v, message);
    Op::Put(key(RETAINED, message.topic.as_bytes(), &[]), v)
}

pub fn retained_clear(topic: &str) -> Op {
    Op::Delete(key(RETAINED, topic.as_bytes(), &[]))
}

/// One subscription of a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    pub options: SubscriptionOptions,
    pub identifier: Option<u32>,
}

pub fn session_put<'a>(
    client: &[u8],
    expiry_interval: u32,
    subscriptions: impl Iterator<Item = (&'a str, SubscriptionOptions, Option<u32>)>,
) -> Op {
    let mut v = Vec::new();
    v.extend_from_slice(&expiry_interval.to_be_bytes());
    for (filter, o, id) in subscriptions {
        put_bytes(&mut v, filter.as_bytes());
        let flags = o.qos as u8
            | (o.no_local as u8) << 2
            | (o.retain_as_published as u8) << 3
            | (o.retain_handling & 3) << 4;
        v.push(flags);
        put_opt_u32(&mut v, id);
    }
    Op::Put(key(SESSION, client, &[]), v)
}

/// The identity that owns the session: `Some(username)`, or `None` for an anonymous client.
pub fn session_owner(client: &[u8], owner: Option<&str>) -> Op {
    let mut v = Vec::new();
    match owner {
        Some(user) => {
            v.push(1);
            put_bytes(&mut v, user.as_bytes());
        }
        None => v.push(0),
    }
    Op::Put(key(OWNER, client, &[]), v)
}

/// The session's client disconnected at `at`; `will` is its delayed will and when it is due.
/// Kept so that a restart continues the session's expiry and the will's delay where they were.
pub fn session_detached(client: &[u8], at: Instant, will: Option<(Instant, &Message)>) -> Op {
    let mut v = Vec::new();
    v.extend_from_slice(&unix_ms(at).to_be_bytes());
    match will {
        Some((due, message)) => {
            v.push(1);
            v.extend_from_slice(&unix_ms(due).to_be_bytes());
            put_message(&mut v, message);
        }
        None => v.push(0),
    }
    Op::Put(key(DETACHED, client, &[]), v)
}

/// The session's client is connected again.
pub fn session_attached(client: &[u8]) -> Op {
    Op::Delete(key(DETACHED, client, &[]))
}

/// Everything of one client: its session, messages and incoming QoS 2 ids.
pub fn session_end(client: &[u8]) -> Vec<Op> {
    [SESSION, DETACHED, OWNER, OUTGOING, INCOMING]
        .into_iter()
        .map(|kind| {
            let mut k = key(kind, client, &[]);
            if kind == SESSION || kind == DETACHED || kind == OWNER {
                // The session key is exactly the prefix; a longer key would be another client's
                // only if its length bytes differed, so an exact delete is what is meant.
                return Op::Delete(std::mem::take(&mut k));
            }
            Op::DeletePrefix(k)
        })
        .collect()
}

pub fn outgoing_put(
    client: &[u8],
    seq: u64,
    message: &Message,
    route: &Route,
    packet_id: u16,
    released: bool,
) -> Op {
    let mut v = Vec::new();
    v.extend_from_slice(&packet_id.to_be_bytes());
    v.push(released as u8);
    v.push(route.qos as u8);
    v.push(route.retain as u8);
    v.extend_from_slice(&(route.subscription_ids.len() as u32).to_be_bytes());
    for id in &route.subscription_ids {
        v.extend_from_slice(&id.to_be_bytes());
    }
    match &route.shared_group {
        Some(g) => {
            v.push(1);
            put_bytes(&mut v, g.as_bytes());
        }
        None => v.push(0),
    }
    put_message(&mut v, message);
    Op::Put(key(OUTGOING, client, &seq.to_be_bytes()), v)
}

pub fn outgoing_delete(client: &[u8], seq: u64) -> Op {
    Op::Delete(key(OUTGOING, client, &seq.to_be_bytes()))
}

pub fn incoming_put(client: &[u8], packet_id: u16) -> Op {
    Op::Put(key(INCOMING, client, &packet_id.to_be_bytes()), Vec::new())
}

pub fn incoming_delete(client: &[u8], packet_id: u16) -> Op {
    Op::Delete(key(INCOMING, client, &packet_id.to_be_bytes()))
}

/// An outgoing message as it was when the broker stopped.
pub struct StoredOutgoing {
    pub seq: u64,
    pub message: Arc<Message>,
    pub route: Route,
    /// 0 = still queued, otherwise sent with this packet id.
    pub packet_id: u16,
    /// PUBREC received: only PUBREL is resent.
    pub released: bool,
}

/// A persistent session whose client was disconnected when the broker stopped.
pub struct StoredDetach {
    /// When the client disconnected.
    pub at: Instant,
    /// The delayed will and when it is due.
    pub will: Option<(Instant, Message)>,
}

pub struct StoredSession {
    pub client_id: String,
    pub expiry_interval: u32,
    /// None: the client was still connected when the broker crashed (a graceful stop records
    /// every disconnection), or the store predates this record; its session counts as
    /// disconnected at start-up.
    pub detached: Option<StoredDetach>,
    pub subscriptions: Vec<StoredSubscription>,
    /// Who may resume it: `Some(None)` anonymous, `Some(Some(user))`; `None` when the store
    /// predates owner records.
    pub owner: Option<Option<String>>,
    /// In sequence (delivery) order.
    pub outgoing: Vec<StoredOutgoing>,
    pub incoming_qos2: Vec<u16>,
}

/// Everything read from the store at start-up.
#[derive(Default)]
pub struct Loaded {
    pub retained: Vec<Arc<Message>>,
    pub sessions: Vec<StoredSession>,
    /// The sink's records (key without the `k`, value), for `Sink::attach_store`.
    pub sink: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Decode the map. A record that does not decode (it passed its checksum, so only a bug or a
/// format change can cause this) is skipped with a warning naming it.
pub fn load(map: &Map) -> Loaded {
    let mut loaded = Loaded::default();
    // Keys sort by kind, then client: sessions ('s') come after disconnections ('d'), outgoing
    // ('o') and incoming ('i'), so collect those per client first.
    let mut detached: std::collections::HashMap<Vec<u8>, StoredDetach> = Default::default();
    let mut outgoing: std::collections::HashMap<Vec<u8>, Vec<StoredOutgoing>> = Default::default();
    let mut incoming: std::collections::HashMap<Vec<u8>, Vec<u16>> = Default::default();
    let mut owners: std::collections::HashMap<Vec<u8>, Option<String>> = Default::default();
    for (k, v) in map {
        let Some((&kind, rest)) = k.split_first() else {
            continue;
        };
        let ok = match kind {
            RETAINED => Reader(v)
                .message()
                .filter(|m| !m.is_expired())
                .map(|m| loaded.retained.push(Arc::new(m))),
            OUTGOING => split_client(rest).and_then(|(client, suffix)| {
                let seq = u64::from_be_bytes(suffix.try_into().ok()?);
                let o = decode_outgoing(seq, v)?;
                outgoing.entry(client.to_vec()).or_default().push(o);
                Some(())
            }),
            DETACHED => split_client(rest).and_then(|(client, _)| {
                let mut r = Reader(v);
                let at_ms = r.i64()?;
                // A wall clock that is behind at start-up (no NTP yet) must not put the
                // disconnection in the future: clamped to now, the will keeps its delay.
                let at = instant_at(at_ms).min(Instant::now());
                let will = match r.u8()? {
                    0 => None,
                    _ => {
                        let due_ms = r.i64()?;
                        let delay =
                            Duration::from_millis(due_ms.saturating_sub(at_ms).max(0) as u64);
                        Some((at + delay, r.message()?))
                    }
                };
                detached.insert(client.to_vec(), StoredDetach { at, will });
                Some(())
            }),
            OWNER => split_client(rest).and_then(|(client, _)| {
                let mut r = Reader(v);
                let owner = match r.u8()? {
                    0 => None,
                    _ => Some(String::from_utf8(r.bytes()?.to_vec()).ok()?),
                };
                owners.insert(client.to_vec(), owner);
                Some(())
            }),
            INCOMING => split_client(rest).and_then(|(client, suffix)| {
                let id = u16::from_be_bytes(suffix.try_into().ok()?);
                incoming.entry(client.to_vec()).or_default().push(id);
                Some(())
            }),
            SESSION => split_client(rest).and_then(|(client, _)| {
                let mut s = decode_session(client, v)?;
                let ck = client_key(&s.client_id);
                s.detached = detached.remove(&ck);
                s.outgoing = outgoing.remove(&ck).unwrap_or_default();
                s.incoming_qos2 = incoming.remove(&ck).unwrap_or_default();
                s.owner = owners.remove(&ck);
                loaded.sessions.push(s);
                Some(())
            }),
            SINK => {
                loaded.sink.push((rest.to_vec(), v.clone()));
                Some(())
            }
            _ => None,
        };
        if ok.is_none() && kind != RETAINED {
            warn!(
                "store: skipping an undecodable record (key {:?})",
                String::from_utf8_lossy(k)
            );
        }
    }
    loaded
}

fn split_client(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let end = 2 + len;
    Some((rest.get(..end)?, rest.get(end..)?))
}

fn decode_session(client: &[u8], v: &[u8]) -> Option<StoredSession> {
    let client_id = String::from_utf8(client.get(2..)?.to_vec()).ok()?;
    let mut r = Reader(v);
    let expiry_interval = r.u32()?;
    let mut subscriptions = Vec::new();
    while !r.0.is_empty() {
        let filter = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let flags = r.u8()?;
        let options = SubscriptionOptions {
            qos: QoS::from_u8(flags & 3)?,
            no_local: flags & 4 != 0,
            retain_as_published: flags & 8 != 0,
            retain_handling: (flags >> 4) & 3,
        };
        let identifier = r.opt_u32()?;
        subscriptions.push(StoredSubscription {
            filter,
            options,
            identifier,
        });
    }
    Some(StoredSession {
        client_id,
        expiry_interval,
        detached: None,
        subscriptions,
        owner: None,
        outgoing: Vec::new(),
        incoming_qos2: Vec::new(),
    })
}

fn decode_outgoing(seq: u64, v: &[u8]) -> Option<StoredOutgoing> {
    let mut r = Reader(v);
    let packet_id = r.u16()?;
    let released = r.u8()? != 0;
    let qos = QoS::from_u8(r.u8()?)?;
    let retain = r.u8()? != 0;
    let n = r.u32()? as usize;
    let subscription_ids = (0..n).map(|_| r.u32()).collect::<Option<Vec<_>>>()?;
    let shared_group = match r.u8()? {
        0 => None,
        _ => Some(Arc::from(std::str::from_utf8(r.bytes()?).ok()?)),
    };
    let message = Arc::new(r.message()?);
    Some(StoredOutgoing {
        seq,
        message,
        route: Route {
            qos,
            retain,
            subscription_ids,
            shared_group,
        },
        packet_id,
        released,
    })
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(&(b.len() as u32).to_be_bytes());
    v.extend_from_slice(b);
}

fn put_opt_u32(v: &mut Vec<u8>, x: Option<u32>) {
    match x {
        Some(x) => {
            v.push(1);
            v.extend_from_slice(&x.to_be_bytes());
        }
        None => v.push(0),
    }
}

/// Wall-clock milliseconds of a monotonic instant (past or future), for the store.
fn unix_ms(at: Instant) -> i64 {
    let now = Instant::now();
    let ahead = at.saturating_duration_since(now).as_millis() as i64;
    let behind = now.saturating_duration_since(at).as_millis() as i64;
    now_unix_ms() + ahead - behind
}

/// The monotonic instant of stored wall-clock milliseconds (or now, when that is further back
/// than `Instant` can go: before the machine started).
fn instant_at(unix_ms: i64) -> Instant {
    let now = Instant::now();
    let diff = unix_ms - now_unix_ms();
    if diff >= 0 {
        now + Duration::from_millis(diff as u64)
    } else {
        let back = Duration::from_millis(diff.unsigned_abs());
        now.checked_sub(back).unwrap_or(now)
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

fn put_message(v: &mut Vec<u8>, m: &Message) {
    v.extend_from_slice(&m.received_at_ns.to_be_bytes());
    v.extend_from_slice(&m.expires_at.map(unix_ms).unwrap_or(-1).to_be_bytes());
    match &m.publisher {
        Some(p) => {
            v.push(1);
            put_bytes(v, p.as_bytes());
        }
        None => v.push(0),
    }
    let mut publish = Vec::new();
    let packet_id = if m.qos == QoS::AtMostOnce { 0 } else { 1 };
    protocol::encode::encode_publish(
        &mut publish,
        ProtocolVersion::V5,
        &m.topic,
        &m.payload,
        m.qos,
        m.retain,
        false,
        packet_id,
        &m.properties,
    );
    put_bytes(v, &publish);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn opt_u32(&mut self) -> Option<Option<u32>> {
        match self.u8()? {
            0 => Some(None),
            _ => Some(Some(self.u32()?)),
        }
    }

    fn message(&mut self) -> Option<Message> {
        let received_at_ns = self.i64()?;
        let expires_unix_ms = self.i64()?;
        let publisher = match self.u8()? {
            0 => None,
            _ => Some(Arc::from(std::str::from_utf8(self.bytes()?).ok()?)),
        };
        let mut wire = self.bytes()?;
        let frame = protocol::decode::read_frame(&mut wire, usize::MAX).ok()?;
        let Packet::Publish(p) = protocol::decode_packet(frame, ProtocolVersion::V5).ok()? else {
            return None;
        };
        let expires_at = (expires_unix_ms >= 0).then(|| instant_at(expires_unix_ms));
        Some(Message {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            publisher,
            received_at_ns,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::apply;
    use bytes::Bytes;

    fn message(topic: &str, qos: QoS) -> Message {
        let properties = protocol::Properties {
            content_type: Some("text/plain".into()),
            message_expiry_interval: Some(3600),
            ..Default::default()
        };
        Message::new(
            topic.into(),
            Bytes::from_static(b"payload"),
            qos,
            true,
            properties.into(),
            Some("pub".into()),
            crate::broker::message::now_ns(),
        )
    }

    #[test]
    fn session_with_messages_and_incoming_ids_round_trips() {
        let ck = client_key("c1");
        let m = message("a/b", QoS::ExactlyOnce);
        let route = Route {
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![7, 9],
            shared_group: Some("$share/g/a/#".into()),
        };
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: 2,
        };
        let mut map = Map::new();
        for op in [
            session_put(&ck, 300, [("a/#", options, Some(7))].into_iter()),
            outgoing_put(&ck, 5, &m, &route, 0, false),
            outgoing_put(&ck, 4, &m, &route, 12, true),
            incoming_put(&ck, 33),
            retained_put(&m),
            session_put(&client_key("other"), 1, std::iter::empty()),
        ] {
            apply(&mut map, op);
        }
        let loaded = load(&map);
        assert_eq!(loaded.retained.len(), 1);
        assert_eq!(loaded.sessions.len(), 2);
        let s = loaded
            .sessions
            .iter()
            .find(|s| s.client_id == "c1")
            .unwrap();
        assert_eq!(s.expiry_interval, 300);
        assert_eq!(
            s.subscriptions,
            vec![StoredSubscription {
                filter: "a/#".into(),
                options,
                identifier: Some(7)
            }]
        );
        assert_eq!(s.incoming_qos2, vec![33]);
        let seqs: Vec<_> = s
            .outgoing
            .iter()
            .map(|o| (o.seq, o.packet_id, o.released))
            .collect();
        assert_eq!(seqs, vec![(4, 12, true), (5, 0, false)]);
        let o = &s.outgoing[0];
        assert_eq!(o.route.subscription_ids, vec![7, 9]);
        assert_eq!(o.route.shared_group.as_deref(), Some("$share/g/a/#"));
        assert_eq!(&*o.message.topic, "a/b");
        assert_eq!(o.message.payload, Bytes::from_static(b"payload"));
        assert_eq!(
            o.message.properties.content_type.as_deref(),
            Some("text/plain")
        );
        assert_eq!(o.message.publisher.as_deref(), Some("pub"));
        assert_eq!(o.message.received_at_ns, m.received_at_ns);
        let left = o.message.remaining_expiry_secs().unwrap();
        assert!((3590..=3600).contains(&left), "{left}");

        for op in session_end(&ck) {
            apply(&mut map, op);
        }
        let loaded = load(&map);
        assert_eq!(loaded.sessions.len(), 1);
        assert_eq!(loaded.sessions[0].client_id, "other");
        assert!(loaded.sessions[0].outgoing.is_empty());
    }

    #[test]
    fn disconnection_time_and_delayed_will_round_trip_and_go_with_the_session() {
        let (a, b) = (client_key("a"), client_key("b"));
        let will = message("will/a", QoS::AtLeastOnce);
        let now = Instant::now();
        let (gone, due) = (now - Duration::from_secs(30), now + Duration::from_secs(90));
        let mut map = Map::new();
        for op in [
            session_put(&a, 300, std::iter::empty()),
            session_detached(&a, gone, Some((due, &will))),
            session_put(&b, 300, std::iter::empty()),
            session_detached(&b, gone, None),
        ] {
            apply(&mut map, op);
        }
        let loaded = load(&map);
        let find = |id: &str| loaded.sessions.iter().find(|s| s.client_id == id).unwrap();
        let close = |x: Instant, y: Instant| {
            let d = x.max(y) - x.min(y);
            assert!(d < Duration::from_millis(50), "{d:?}");
        };
        let da = find("a").detached.as_ref().expect("a was detached");
        close(da.at, gone);
        let (w_due, w) = da.will.as_ref().expect("a has a delayed will");
        close(*w_due, due);
        assert_eq!((&*w.topic, &w.payload[..]), ("will/a", &b"payload"[..]));
        let db = find("b").detached.as_ref().expect("b was detached");
        assert!(db.will.is_none());

        // Connected again: no disconnection; ended: nothing of it is left.
        apply(&mut map, session_attached(&b));
        apply(&mut map, session_detached(&a, gone, None));
        for op in session_end(&a) {
            apply(&mut map, op);
        }
        let loaded = load(&map);
        assert_eq!(loaded.sessions.len(), 1);
        assert!(loaded.sessions[0].detached.is_none());
        assert_eq!(map.len(), 1, "only b's session record is left");
    }

    #[test]
    fn session_owner_round_trips_and_a_store_without_owners_still_loads() {
        let (a, b, c) = (client_key("a"), client_key("b"), client_key("c"));
        let mut map = Map::new();
        for op in [
            session_put(&a, 300, std::iter::empty()),
            session_owner(&a, Some("alice")),
            session_put(&b, 300, std::iter::empty()),
            session_owner(&b, None),
            // As written before owners were recorded.
            session_put(&c, 300, std::iter::empty()),
        ] {
            apply(&mut map, op);
        }
        let loaded = load(&map);
        let owner = |id: &str| {
            loaded
                .sessions
                .iter()
                .find(|s| s.client_id == id)
                .unwrap()
                .owner
                .clone()
        };
        assert_eq!(owner("a"), Some(Some("alice".to_string())));
        assert_eq!(owner("b"), Some(None));
        assert_eq!(owner("c"), None);
        for op in session_end(&a) {
            apply(&mut map, op);
        }
        assert!(load(&map).sessions.iter().all(|s| s.client_id != "a"));
        assert_eq!(map.len(), 3, "a's owner record went with its session");
    }
}
