//! Session state [MQTT-4.1]: subscriptions, outgoing QoS 1/2 messages in flight and queued,
//! incoming QoS 2 packet ids awaiting PUBREL, expiry, and the connection it is attached to.
//!
//! A session outlives its connection for its expiry interval (3.1.1 clean session = 0: forever).
//! Every method is called with the session's mutex held and never blocks.
//!
//! Size: about 725 lines of code, past the ~700 guideline, because `Session` is one state
//! machine whose delivery, ack and resume paths share its queue and inflight window. The seam
//! for a split is the outgoing-message state (`Inflight`, `Queued`, the window and packet ids)
//! into its own type; its unit tests in `session_tests.rs` would move with it.

use super::acl::ClientAcl;
use super::flow::{self, QueueRoom};
use super::message::{Message, Route};
pub use super::outbox::Outbound;
use super::outbox::Outbox;
use super::persist as records;
use super::security::SecurityFiles;
use super::stats::Stats;
use crate::protocol::{Ack, Packet, ProtocolVersion, QoS, SubscriptionOptions};
use crate::store::journal::Op;
use crate::store::Store;
use log::{debug, warn};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Session Expiry Interval meaning "never expires" [MQTT-3.1.2-11 (v5)].
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// The connection a session is currently attached to.
#[derive(Clone)]
pub struct Link {
    /// Unique per connection, so a connection that was taken over can tell it no longer owns
    /// the session.
    pub connection_id: u64,
    pub version: ProtocolVersion,
    pub outbox: Arc<Outbox>,
    /// v5 Maximum Packet Size of the client: larger PUBLISHes are not sent [MQTT-3.1.2-25].
    pub max_packet_size: Option<u32>,
    /// Authenticated username, for ACL checks on what the session may receive.
    pub username: Option<Arc<str>>,
    /// Cleared, under the session's lock, once the session is no longer this connection's
    /// (taken over or discarded): its reader checks this for every packet without the lock.
    pub owns_session: Arc<AtomicBool>,
}

impl Link {
    fn released(self) -> Link {
        self.owns_session.store(false, Ordering::Release);
        self
    }
}

/// Who may resume a session: the identity that created it. A client connecting with the same
/// client id under another identity gets a new session instead (`Broker::attach_session`), so
/// one user can never take over another's subscriptions and queued messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOwner {
    /// The authenticated username (the certificate CN with `use_identity_as_username`), or
    /// `None` for an anonymous client.
    Identity(Option<Arc<str>>),
    /// Restored from a store written before owners were recorded: adopted (and recorded) by
    /// the first client that resumes it, as that version would have let any client do.
    Unrecorded,
}

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// min(broker's max_inflight, the v5 client's Receive Maximum) [MQTT-3.3.4-7].
    pub max_inflight: usize,
    pub max_queued: usize,
    /// QoS 0 messages are dropped once this many packets wait for the writer.
    pub outbound_queue: usize,
    /// `limits.queue_full = "backpressure"`: a connected session's full queue holds its
    /// publishers back instead of dropping (see `flow.rs`).
    pub backpressure: bool,
}

pub struct SessionHandle {
    pub client_id: Arc<str>,
    pub state: Mutex<Session>,
    /// The session's queue as flow control sees it, without the lock (shared subscriptions
    /// pick a member with room).
    pub room: Arc<QueueRoom>,
}

pub type SessionRef = Arc<SessionHandle>;

impl SessionHandle {
    /// A new session owned by `owner` (see `SessionOwner`).
    pub fn new(
        client_id: Arc<str>,
        expiry_interval: u32,
        limits: SessionLimits,
        owner: Option<Arc<str>>,
    ) -> SessionRef {
        let mut state = Session::new(client_id.clone(), expiry_interval, limits);
        state.owner = SessionOwner::Identity(owner);
        SessionHandle::restored(client_id, state)
    }

    /// A session rebuilt from the store.
    pub fn restored(client_id: Arc<str>, state: Session) -> SessionRef {
        Arc::new(SessionHandle {
            client_id,
            room: state.room.clone(),
            state: Mutex::new(state),
        })
    }

    /// Lock the state; a poisoned lock (a panicked thread) still holds consistent data for us.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Identifies one outgoing message of a session in the store; unique across the process (and
/// across restarts: raised past every stored one at start-up), increasing in delivery order.
static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);

fn next_seq() -> u64 {
    NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// Set when this thread queued a message for a connected session whose inflight window was
    /// full (see `take_fed_backlog`).
    static FED_BACKLOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread, since the last call, queued a message behind a connected session's
/// full inflight window: that session's client is behind, and only its own connection thread
/// (handling the client's acks) can move the window on.
pub(super) fn take_fed_backlog() -> bool {
    FED_BACKLOG.with(|f| f.replace(false))
}

/// Packets held back for their connections.
type HeldSends = Vec<(Arc<Outbox>, Outbound)>;

thread_local! {
    /// Packets held back by `defer_sends` on this thread.
    static DEFERRED: std::cell::RefCell<Option<HeldSends>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` holding back what sessions send to their connections meanwhile, then send it: a
/// connection's writer must not see a delivery before the store has its record (it waits for
/// the store only after it received the packet).
pub(super) fn defer_sends<T>(f: impl FnOnce() -> T) -> T {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    let out = f();
    let sends = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    for (outbox, packet) in sends.unwrap_or_default() {
        let _ = outbox.send(packet);
    }
    out
}

/// Where a persistent session records its changes (see `crate::store`).
pub struct SessionJournal {
    store: Arc<Store>,
    /// The client's key prefix.
    client: Vec<u8>,
}

impl SessionJournal {
    pub fn new(store: Arc<Store>, client_id: &str) -> SessionJournal {
        SessionJournal {
            store,
            client: records::client_key(client_id),
        }
    }
}

struct Inflight {
    seq: u64,
    packet_id: u16,
    message: Arc<Message>,
    route: Route,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    released: bool,
    /// Carried over from an earlier connection and not resent yet: the new connection's
    /// Receive Maximum had no room for it. Resent (same packet id, DUP) as slots free up.
    awaiting_resend: bool,
}

struct Queued {
    seq: u64,
    message: Arc<Message>,
    route: Route,
}

pub struct Session {
    /// Seconds the session outlives its connection; 0 = ends with it, NEVER_EXPIRES = kept.
    pub expiry_interval: u32,
    /// Set when the session is discarded; late deliveries to it are ignored.
    pub ended: bool,
    pub subscriptions: HashMap<String, SubscriptionOptions>,
    /// v5 Subscription Identifier per filter, kept to persist the session.
    subscription_ids: HashMap<String, u32>,
    /// Set while the session is persistent and persistence is on.
    journal: Option<SessionJournal>,
    /// When the last connection ended (None while connected).
    pub disconnected_at: Option<Instant>,
    /// A will waiting for its v5 Will Delay Interval [MQTT-3.1.3-9].
    pub delayed_will: Option<(Instant, Arc<Message>)>,
    link: Option<Link>,
    limits: SessionLimits,
    next_packet_id: u16,
    inflight: VecDeque<Inflight>,
    queued: VecDeque<Queued>,
    /// Incoming QoS 2 packet ids whose PUBLISH was routed and whose PUBREL has not come yet.
    /// A PUBLISH resent with the same id is acknowledged but not routed again (exactly once).
    incoming_qos2: HashSet<u16>,
    dropped: u64,
    /// Username of the last connection (kept while offline, for ACL checks on queued messages).
    username: Option<Arc<str>>,
    /// The only identity that may resume this session.
    owner: SessionOwner,
    /// The ACL rules for this client, rebuilt when the files are reloaded (by generation).
    acl: Option<(u64, Option<ClientAcl>)>,
    room: Arc<QueueRoom>,
}

impl Session {
    fn new(client_id: Arc<str>, expiry_interval: u32, limits: SessionLimits) -> Session {
        Session {
            room: QueueRoom::new(client_id),
            expiry_interval,
            ended: false,
            subscriptions: HashMap::new(),
            subscription_ids: HashMap::new(),
            journal: None,
            disconnected_at: None,
            delayed_will: None,
            link: None,
            limits,
            next_packet_id: 1,
            inflight: VecDeque::new(),
            queued: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            dropped: 0,
            username: None,
            owner: SessionOwner::Unrecorded,
            acl: None,
        }
    }

    /// Rebuild a session read from the store. Its expiry interval and delayed will continue
    /// from when its client disconnected (wall clock), so time the broker was down counts; a
    /// session whose client was connected when the broker crashed is disconnected since now.
    pub fn restore(
        stored: records::StoredSession,
        limits: SessionLimits,
        journal: SessionJournal,
    ) -> Session {
        let client_id: Arc<str> = stored.client_id.as_str().into();
        let mut s = Session::new(client_id, stored.expiry_interval, limits);
        if let Some(owner) = stored.owner {
            let owner: Option<Arc<str>> = owner.map(Arc::from);
            // Queued messages were checked against the owner's read access.
            s.username = owner.clone();
            s.owner = SessionOwner::Identity(owner);
        }
        let recorded = stored.detached.is_some();
        match stored.detached {
            Some(d) => {
                s.disconnected_at = Some(d.at);
                s.delayed_will = d.will.map(|(due, will)| (due, Arc::new(will)));
            }
            None => s.disconnected_at = Some(Instant::now()),
        }
        for sub in stored.subscriptions {
            if let Some(id) = sub.identifier {
                s.subscription_ids.insert(sub.filter.clone(), id);
            }
            s.subscriptions.insert(sub.filter, sub.options);
        }
        for o in stored.outgoing {
            NEXT_SEQ.fetch_max(o.seq + 1, Ordering::Relaxed);
            if o.packet_id == 0 {
                s.queued.push_back(Queued {
                    seq: o.seq,
                    message: o.message,
                    route: o.route,
                });
            } else {
                s.next_packet_id = o.packet_id.checked_add(1).unwrap_or(1);
                s.inflight.push_back(Inflight {
                    seq: o.seq,
                    packet_id: o.packet_id,
                    message: o.message,
                    route: o.route,
                    released: o.released,
                    awaiting_resend: false,
                });
            }
        }
        s.incoming_qos2.extend(stored.incoming_qos2);
        s.journal = Some(journal);
        if !recorded {
            // Recorded now, so that repeated crashes do not restart its expiry each time.
            s.record_detached();
        }
        s
    }

    /// The subscriptions with their identifiers, as `Router::subscribe` takes them.
    pub fn subscription_list(&self) -> Vec<(String, SubscriptionOptions, Option<u32>)> {
        self.subscriptions
            .iter()
            .map(|(f, o)| (f.clone(), *o, self.subscription_ids.get(f).copied()))
            .collect()
    }

    /// Start recording this session (it became persistent): write all of its state.
    pub fn enable_journal(&mut self, journal: SessionJournal) {
        self.journal = Some(journal);
        self.record_owner();
        self.record_session();
        for q in &self.queued {
            self.record(|c| records::outgoing_put(c, q.seq, &q.message, &q.route, 0, false));
        }
        for i in &self.inflight {
            self.record(|c| {
                records::outgoing_put(c, i.seq, &i.message, &i.route, i.packet_id, i.released)
            });
        }
        for id in &self.incoming_qos2 {
            self.record(|c| records::incoming_put(c, *id));
        }
    }

    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// Stop recording. Returns the record that deletes everything stored for the session (it
    /// ended), for the caller to submit, with the session's will if it has one to publish.
    pub fn end_journal(&mut self) -> Option<Op> {
        let j = self.journal.take()?;
        Some(Op::Batch(records::session_end(&j.client)))
    }

    /// The client is back: its disconnection time (and delayed will) is deleted from the store.
    /// Returns whether a record was submitted, so the caller can wait for it before CONNACK:
    /// after a crash the store must not claim the client was still away, nor hold a will the
    /// reconnection cancelled [MQTT-3.1.3-9].
    pub fn note_reconnected(&mut self) -> bool {
        if self.disconnected_at.take().is_none() {
            return false;
        }
        self.record(records::session_attached);
        self.journal.is_some()
    }

    /// Record when the client disconnected and the delayed will (see `Session::restore`).
    pub fn record_detached(&self) {
        if let (Some(j), Some(op)) = (&self.journal, self.detached_record()) {
            j.store.submit(op);
        }
    }

    /// The record `record_detached` submits (None when the session is not stored or its
    /// client is connected).
    pub fn detached_record(&self) -> Option<Op> {
        let j = self.journal.as_ref()?;
        let at = self.disconnected_at?;
        let will = self.delayed_will.as_ref().map(|(due, w)| (*due, &**w));
        Some(records::session_detached(&j.client, at, will))
    }

    fn record_owner(&self) {
        if let SessionOwner::Identity(owner) = &self.owner {
            self.record(|c| records::session_owner(c, owner.as_deref()));
        }
    }

    /// May a client authenticated as `username` (None: anonymous) resume this session? Only
    /// its owner may; a session restored from a store without owners is adopted by the first.
    pub fn may_resume(&self, username: Option<&Arc<str>>) -> bool {
        match &self.owner {
            SessionOwner::Identity(owner) => owner.as_deref() == username.map(|u| &**u),
            SessionOwner::Unrecorded => true,
        }
    }

    /// The identity that may resume the session, for the log.
    pub fn owner(&self) -> &SessionOwner {
        &self.owner
    }

    /// Remove the queued and in-flight messages that `username` may not read, before a
    /// resumed session sends them (as mosquitto's `connection_check_acl`): a second line of
    /// defence behind `may_resume`, and what applies read access changed while the client was
    /// away. A QoS 2 message already PUBREC'd stays: only its PUBREL is left to send.
    pub fn discard_unreadable(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        security: &SecurityFiles,
    ) -> usize {
        let Some(acl) = security.current().client_acl(client_id, username) else {
            return 0;
        };
        let journal = self.journal.as_ref();
        let mut discarded = 0;
        self.queued.retain(|q| {
            let keep = acl.can_receive(&q.message.topic);
            if !keep {
                discarded += 1;
                if let Some(j) = journal {
                    j.store.submit(records::outgoing_delete(&j.client, q.seq));
                }
            }
            keep
        });
        self.inflight.retain(|i| {
            let keep = i.released || acl.can_receive(&i.message.topic);
            if !keep {
                discarded += 1;
                if let Some(j) = journal {
                    j.store.submit(records::outgoing_delete(&j.client, i.seq));
                }
            }
            keep
        });
        discarded
    }

    /// Record the expiry interval and subscriptions.
    pub fn record_session(&self) {
        self.record(|c| {
            records::session_put(
                c,
                self.expiry_interval,
                self.subscriptions
                    .iter()
                    .map(|(f, o)| (f.as_str(), *o, self.subscription_ids.get(f).copied())),
            )
        });
    }

    fn record(&self, op: impl FnOnce(&[u8]) -> Op) {
        if let Some(j) = &self.journal {
            j.store.submit(op(&j.client));
        }
    }

    /// Add or replace a subscription (the router is updated by the caller).
    pub fn subscribe(&mut self, filter: &str, options: SubscriptionOptions, id: Option<u32>) {
        self.subscriptions.insert(filter.to_string(), options);
        match id {
            Some(id) => self.subscription_ids.insert(filter.to_string(), id),
            None => self.subscription_ids.remove(filter),
        };
        self.record_session();
    }

    /// Remove a subscription (the router is updated by the caller).
    pub fn unsubscribe(&mut self, filter: &str) {
        self.subscription_ids.remove(filter);
        if self.subscriptions.remove(filter).is_some() {
            self.record_session();
        }
    }

    pub fn link(&self) -> Option<&Link> {
        self.link.as_ref()
    }

    pub fn is_attached_to(&self, connection_id: u64) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.connection_id == connection_id)
    }

    /// Has the session outlived its expiry interval while disconnected?
    pub fn is_expired(&self, now: Instant) -> bool {
        match self.disconnected_at {
            Some(at) if self.link.is_none() && self.expiry_interval != NEVER_EXPIRES => {
                now >= at + Duration::from_secs(self.expiry_interval as u64)
            }
            _ => false,
        }
    }

    /// Attach a new connection and send it `first` (the CONNACK), returning the connection it
    /// replaces (to be closed by the caller). Unacknowledged messages are resent with DUP set
    /// and the queue drained into the window [MQTT-4.4.0-1]. A delayed will is cancelled
    /// [MQTT-3.1.3-9].
    pub fn attach(&mut self, link: Link, limits: SessionLimits, first: Outbound) -> Option<Link> {
        if self.username != link.username {
            self.username = link.username.clone();
            self.acl = None;
        }
        if self.owner == SessionOwner::Unrecorded {
            // `Broker::attach_session` let the first client resume it: it owns it from now.
            self.owner = SessionOwner::Identity(link.username.clone());
            self.record_owner();
        }
        let old = self.link.replace(link).map(Link::released);
        self.limits = limits;
        // The caller has recorded the reconnection (`note_reconnected`) and waited for the
        // store before this sends CONNACK.
        debug_assert!(self.disconnected_at.is_none(), "note_reconnected first");
        self.delayed_will = None;
        self.send(first);
        // PUBRELs are always resent. PUBLISHes are resent with their original packet ids
        // [MQTT-4.4.0-1], but only as many as the new connection's Receive Maximum allows: a
        // PUBREC'd QoS 2 message still holds a slot until PUBCOMP [MQTT-3.3.4-9 (v5)]. A
        // message now too large for the client is dropped as if delivered [MQTT-3.1.2-25].
        let max_packet_size = self.link.as_ref().and_then(|l| l.max_packet_size);
        let journal = self.journal.as_ref();
        self.inflight.retain(|item| {
            let keep = item.released || !too_large(max_packet_size, &item.message, &item.route);
            if let (false, Some(j)) = (keep, journal) {
                j.store
                    .submit(records::outgoing_delete(&j.client, item.seq));
            }
            keep
        });
        for item in &mut self.inflight {
            item.awaiting_resend = !item.released;
        }
        for item in &self.inflight {
            if item.released {
                let rel = Packet::PubRel(Ack::new(item.packet_id));
                self.send(Outbound::Packet(Box::new(rel)));
            }
        }
        self.fill_window();
        old
    }

    /// Detach `connection_id` if it is still the session's connection.
    pub fn detach(&mut self, connection_id: u64) -> bool {
        if self.is_attached_to(connection_id) {
            // (take_link wakes publishers waiting on the queue.)
            self.take_link();
            self.disconnected_at = Some(Instant::now());
            true
        } else {
            false
        }
    }

    /// Take the current link away (session discarded or taken over).
    pub fn take_link(&mut self) -> Option<Link> {
        // Publishers waiting on this client's queue go on: offline, it drops at max_queued.
        self.room.make_room();
        self.link.take().map(Link::released)
    }

    /// May this client receive messages on `topic` (ACL read access)? The client's rules are
    /// cached and rebuilt only when the files were reloaded, so this is one atomic load when
    /// nothing changed.
    pub fn can_receive(&mut self, client_id: &str, topic: &str, security: &SecurityFiles) -> bool {
        let generation = security.generation();
        let acl = match &self.acl {
            Some((g, acl)) if *g == generation => acl,
            _ => {
                let acl = security
                    .current()
                    .client_acl(client_id, self.username.as_deref());
                &self.acl.insert((generation, acl)).1
            }
        };
        acl.as_ref().is_none_or(|acl| acl.can_receive(topic))
    }

    /// Deliver one message along `route` (QoS already min(published, granted)).
    pub fn deliver(
        &mut self,
        message: &Arc<Message>,
        route: Route,
        client_id: &str,
        stats: &Stats,
    ) {
        if self.ended || message.is_expired() {
            return;
        }
        if self.too_large_for_client(message, &route) {
            // [MQTT-3.1.2-25] discard it and behave as if it had been sent.
            debug!("client {client_id}: message on {} exceeds the client's maximum packet size; not sent", message.topic);
            return;
        }
        if route.qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions (as mosquitto), and dropped for a client
            // whose writer is this far behind rather than growing memory without bound.
            if let Some(link) = &self.link {
                if link.outbox.backlog() >= self.limits.outbound_queue {
                    Stats::add(&stats.dropped_slow_subscriber, 1);
                    let max = self.limits.outbound_queue;
                    self.count_drop(client_id, || {
                        format!("outbound queue full ({max} packets), dropping QoS 0 messages")
                    });
                    return;
                }
                self.send(Outbound::Publish {
                    message: message.clone(),
                    qos: route.qos,
                    packet_id: 0,
                    dup: false,
                    retain: route.retain,
                    subscription_ids: route.subscription_ids,
                });
            }
            return;
        }
        let max = self.limits.max_queued;
        // With backpressure a connected client's full queue takes the message anyway (its
        // publisher may hold a PUBACK for it) and holds the publishers back instead, within a
        // bound (see `flow.rs`); offline, or past the bound, it is dropped as in `drop` mode.
        let held_back = self.limits.backpressure && self.link.is_some();
        let limit = if held_back {
            max + flow::overflow_allowance(max)
        } else {
            max
        };
        if self.queued.len() >= limit {
            Stats::add(&stats.dropped_queue_full, 1);
            self.count_drop(client_id, || {
                format!(
                    "message queue full ({limit} messages), dropping message on {}",
                    message.topic
                )
            });
            return;
        }
        // A shared group's member picked while it had room (see `SharedGroup::pick`).
        let shared_with_room = route.shared_group.is_some() && self.queued.len() < max;
        let seq = next_seq();
        self.queued.push_back(Queued {
            seq,
            message: message.clone(),
            route,
        });
        self.fill_window();
        if let Some(link) = self.link.as_ref().filter(|_| !self.queued.is_empty()) {
            FED_BACKLOG.with(|f| f.set(true));
            if held_back && self.queued.len() >= max && shared_with_room {
                self.room.mark_full(link.connection_id);
            } else if held_back && self.queued.len() >= max {
                self.room.fill(link.connection_id);
            } else if held_back && self.room.is_full() {
                // Still draining to half: this publisher waits with the others (fairness).
                self.room.note_fed();
            }
        }
        // Still queued (offline or window full): record it as queued; otherwise fill_window
        // recorded it as inflight.
        if let Some(q) = self.queued.back().filter(|q| q.seq == seq) {
            self.record(|c| records::outgoing_put(c, seq, &q.message, &q.route, 0, false));
        }
    }

    /// Are this session's queues full, so that one more message would be dropped?
    pub fn backlog_full(&self) -> bool {
        self.queued.len() >= self.limits.max_queued
            || self
                .link
                .as_ref()
                .is_some_and(|l| l.outbox.backlog() >= self.limits.outbound_queue)
    }

    /// Messages that came through a shared subscription and that this session has not started
    /// to complete (queued, or QoS 1 in flight): taken out so the broker can give them to
    /// another member of the group when this one disconnects.
    pub fn take_shared_messages(&mut self) -> Vec<(Arc<Message>, Route)> {
        let mut taken = Vec::new();
        let queued = std::mem::take(&mut self.queued);
        for q in queued {
            if q.route.shared_group.is_some() {
                self.record(|c| records::outgoing_delete(c, q.seq));
                taken.push((q.message, q.route));
            } else {
                self.queued.push_back(q);
            }
        }
        // Sent QoS 2 messages stay: their exchange must finish with this client if it comes back
        // [MQTT-4.8.2-5 (v5)], and a second member would make a duplicate. QoS 1 may move.
        let inflight = std::mem::take(&mut self.inflight);
        for i in inflight {
            if i.route.shared_group.is_some() && i.route.qos == QoS::AtLeastOnce {
                self.record(|c| records::outgoing_delete(c, i.seq));
                taken.push((i.message, i.route));
            } else {
                self.inflight.push_back(i);
            }
        }
        taken
    }

    /// Log the first drop and every 1000th, with the running count: never silent, never a flood.
    fn count_drop(&mut self, client_id: &str, what: impl FnOnce() -> String) {
        self.dropped += 1;
        if self.dropped == 1 || self.dropped % 1000 == 0 {
            warn!(
                "client {client_id}: {} ({} dropped so far)",
                what(),
                self.dropped
            );
        }
    }

    fn too_large_for_client(&self, message: &Message, route: &Route) -> bool {
        too_large(
            self.link.as_ref().and_then(|l| l.max_packet_size),
            message,
            route,
        )
    }

    /// Move queued messages into the inflight window while it has room and a client is
    /// attached. Messages that expired while queued are dropped [MQTT-3.3.2-5].
    fn fill_window(&mut self) {
        if self.link.is_none() {
            return;
        }
        // First the messages of an earlier connection still waiting to be resent.
        let mut in_use = self.inflight.iter().filter(|i| !i.awaiting_resend).count();
        for i in 0..self.inflight.len() {
            if in_use >= self.limits.max_inflight {
                return;
            }
            let item = &self.inflight[i];
            if !item.awaiting_resend {
                continue;
            }
            let out = Outbound::Publish {
                message: item.message.clone(),
                qos: item.route.qos,
                packet_id: item.packet_id,
                dup: true,
                retain: item.route.retain,
                subscription_ids: item.route.subscription_ids.clone(),
            };
            self.send(out);
            self.inflight[i].awaiting_resend = false;
            in_use += 1;
        }
        while self.inflight.len() < self.limits.max_inflight {
            let Some(q) = self.queued.pop_front() else {
                break;
            };
            if q.message.is_expired() {
                self.record(|c| records::outgoing_delete(c, q.seq));
                continue;
            }
            if self.too_large_for_client(&q.message, &q.route) {
                // Queued while offline, before the client's Maximum Packet Size was known:
                // dropped as if delivered [MQTT-3.1.2-25].
                debug!(
                    "message on {} exceeds the client's maximum packet size; not sent",
                    q.message.topic
                );
                self.record(|c| records::outgoing_delete(c, q.seq));
                continue;
            }
            let packet_id = self.allocate_packet_id();
            // Recorded before it is handed to the writer, which waits for it to be durable
            // before sending a QoS 2 message (see `connection::write_loop`).
            self.record(|c| {
                records::outgoing_put(c, q.seq, &q.message, &q.route, packet_id, false)
            });
            self.send(Outbound::Publish {
                message: q.message.clone(),
                qos: q.route.qos,
                packet_id,
                dup: false,
                retain: q.route.retain,
                subscription_ids: q.route.subscription_ids.clone(),
            });
            self.inflight.push_back(Inflight {
                seq: q.seq,
                packet_id,
                message: q.message,
                route: q.route,
                released: false,
                awaiting_resend: false,
            });
        }
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    fn send(&self, out: Outbound) {
        if let Some(link) = &self.link {
            let out = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
                Some(sends) => {
                    sends.push((link.outbox.clone(), out));
                    None
                }
                None => Some(out),
            });
            let Some(out) = out else { return };
            // The outbox is unbounded (it allocates lazily, so an idle client costs nothing);
            // what bounds it is the inflight window, `outbound_queue` for QoS 0, and the
            // reader waiting in `Connection::send`. An error means the connection is gone: the
            // message stays inflight and is resent on reconnect.
            let _ = link.outbox.send(out);
        }
    }

    /// PUBACK for a QoS 1 message. Returns false for an unknown packet id.
    pub fn puback(&mut self, packet_id: u16) -> bool {
        self.complete(packet_id, QoS::AtLeastOnce)
    }

    /// PUBCOMP for a QoS 2 message (or a v5 PUBREC with an error code, which ends the exchange).
    /// Returns false for an unknown packet id.
    pub fn pubcomp(&mut self, packet_id: u16) -> bool {
        self.complete(packet_id, QoS::ExactlyOnce)
    }

    fn complete(&mut self, packet_id: u16, qos: QoS) -> bool {
        let Some(pos) = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.route.qos == qos)
        else {
            return false;
        };
        if let Some(done) = self.inflight.remove(pos) {
            self.record(|c| records::outgoing_delete(c, done.seq));
        }
        self.fill_window();
        self.room.note_taken();
        if self.queued.len() <= self.limits.max_queued / 2 {
            // Publishers held back by this queue go on once it is half empty: they then run
            // for a while instead of waking for every message.
            self.room.make_room();
        }
        true
    }

    /// PUBREC for a QoS 2 message: from now on only PUBREL is resent [MQTT-4.3.3-1].
    /// Returns false for an unknown packet id.
    pub fn pubrec(&mut self, packet_id: u16) -> bool {
        match self
            .inflight
            .iter_mut()
            .find(|i| i.packet_id == packet_id && i.route.qos == QoS::ExactlyOnce)
        {
            Some(item) => {
                item.released = true;
                if let Some(j) = &self.journal {
                    j.store.submit(records::outgoing_put(
                        &j.client,
                        item.seq,
                        &item.message,
                        &item.route,
                        item.packet_id,
                        true,
                    ));
                }
                true
            }
            None => false,
        }
    }

    /// Incoming QoS 2 PUBLISH: returns true if it is new (route it), false if it is a resend of
    /// one already routed and not yet released.
    pub fn receive_qos2(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.insert(packet_id)
    }

    /// The store record of an incoming QoS 2 packet id (None when the session is not stored):
    /// written by `Broker::publish_exactly_once` atomically with the message's deliveries.
    pub fn incoming_record(&self, packet_id: u16) -> Option<Op> {
        self.journal
            .as_ref()
            .map(|j| records::incoming_put(&j.client, packet_id))
    }

    /// Number of incoming QoS 2 messages awaiting PUBREL (counts against our Receive Maximum).
    pub fn incoming_qos2_len(&self) -> usize {
        self.incoming_qos2.len()
    }

    /// Incoming PUBREL: forget the packet id. Returns false if it was unknown.
    pub fn release_qos2(&mut self, packet_id: u16) -> bool {
        let known = self.incoming_qos2.remove(&packet_id);
        if known {
            self.record(|c| records::incoming_delete(c, packet_id));
        }
        known
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }
}

/// Would `message`, sent along `route`, exceed a client's Maximum Packet Size?
fn too_large(max_packet_size: Option<u32>, message: &Message, route: &Route) -> bool {
    let Some(max) = max_packet_size else {
        return false;
    };
    let mut properties = message.properties.clone();
    properties.subscription_identifiers = route.subscription_ids.clone();
    let mut buf = Vec::new();
    crate::protocol::encode::encode_publish(
        &mut buf,
        ProtocolVersion::V5,
        &message.topic,
        &message.payload,
        route.qos,
        route.retain,
        false,
        1,
        &properties,
    );
    buf.len() > max as usize
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
