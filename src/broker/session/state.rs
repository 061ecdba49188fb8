//! The `Session` type and its lifecycle: creation and restore, subscriptions, attaching to and
//! detaching from a connection, ownership, expiry. What it sends and acknowledges is
//! `delivery.rs`; what it records in the store, `journal.rs`.

use crate::broker::acl::ClientAcl;
use crate::broker::flow::QueueRoom;
use crate::broker::message::{Message, Route};
use crate::broker::outbox::Outbound;
use crate::broker::outbox::Outbox;
use crate::broker::persist as records;
use crate::broker::security::SecurityFiles;
use crate::protocol::{Ack, Packet, ProtocolVersion, SubscriptionOptions};
use crate::store::Store;
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
    pub(super) fn released(self) -> Link {
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

pub(super) fn next_seq() -> u64 {
    NEXT_SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Where a persistent session records its changes (see `crate::store`).
pub struct SessionJournal {
    pub(super) store: Arc<Store>,
    /// The client's key prefix.
    pub(super) client: Vec<u8>,
}

impl SessionJournal {
    pub fn new(store: Arc<Store>, client_id: &str) -> SessionJournal {
        SessionJournal {
            store,
            client: records::client_key(client_id),
        }
    }
}

pub(super) struct Inflight {
    pub(super) seq: u64,
    pub(super) packet_id: u16,
    pub(super) message: Arc<Message>,
    pub(super) route: Route,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    pub(super) released: bool,
    /// Carried over from an earlier connection and not resent yet: the new connection's
    /// Receive Maximum had no room for it. Resent (same packet id, DUP) as slots free up.
    pub(super) awaiting_resend: bool,
}

pub(super) struct Queued {
    pub(super) seq: u64,
    pub(super) message: Arc<Message>,
    pub(super) route: Route,
}

pub struct Session {
    /// Seconds the session outlives its connection; 0 = ends with it, NEVER_EXPIRES = kept.
    pub expiry_interval: u32,
    /// Set when the session is discarded; late deliveries to it are ignored.
    pub ended: bool,
    pub subscriptions: HashMap<String, SubscriptionOptions>,
    /// v5 Subscription Identifier per filter, kept to persist the session.
    pub(super) subscription_ids: HashMap<String, u32>,
    /// Set while the session is persistent and persistence is on.
    pub(super) journal: Option<SessionJournal>,
    /// When the last connection ended (None while connected).
    pub disconnected_at: Option<Instant>,
    /// A will waiting for its v5 Will Delay Interval [MQTT-3.1.3-9].
    pub delayed_will: Option<(Instant, Arc<Message>)>,
    pub(super) link: Option<Link>,
    pub(super) limits: SessionLimits,
    pub(super) next_packet_id: u16,
    pub(super) inflight: VecDeque<Inflight>,
    pub(super) queued: VecDeque<Queued>,
    /// Incoming QoS 2 packet ids whose PUBLISH was routed and whose PUBREL has not come yet.
    /// A PUBLISH resent with the same id is acknowledged but not routed again (exactly once).
    pub(super) incoming_qos2: HashSet<u16>,
    pub(super) dropped: u64,
    /// Username of the last connection (kept while offline, for ACL checks on queued messages).
    pub(super) username: Option<Arc<str>>,
    /// The only identity that may resume this session.
    pub(super) owner: SessionOwner,
    /// The ACL rules for this client, rebuilt when the files are reloaded (by generation).
    pub(super) acl: Option<(u64, Option<ClientAcl>)>,
    pub(super) room: Arc<QueueRoom>,
}

impl Session {
    pub(super) fn new(client_id: Arc<str>, expiry_interval: u32, limits: SessionLimits) -> Session {
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
}

/// Would `message`, sent along `route`, exceed a client's Maximum Packet Size?
pub(super) fn too_large(max_packet_size: Option<u32>, message: &Message, route: &Route) -> bool {
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
