//! The broker: listener, connections, sessions and routing.
//!
//! Data flow: `listener` accepts a socket and starts a `connection` (a reader thread). The reader
//! decodes packets and calls into `Broker`: a PUBLISH is routed by the `router` to every matching
//! `session`, which queues it on its connection's `outbox` (written by the publishing thread, or
//! by a writer thread when the client's socket is full); then it is handed to the InfluxDB `sink`.

pub mod acl;
pub mod auth;
pub mod connection;
pub mod flow;
pub mod listener;
pub mod message;
pub mod outbox;
pub mod persist;
pub mod pump;
pub mod ratelimit;
pub mod router;
pub mod security;
pub mod session;
pub mod socket;
pub mod stats;
pub mod threads;
pub mod tls;
pub mod topic;

use crate::config::Config;
use crate::protocol::QoS;
use crate::sink::{Sink, SinkRecord};
use crate::store::Store;
use log::{debug, info, warn};
use message::Message;
use persist as records;
use persist::Loaded;
use router::Router;
use security::SecurityFiles;
use session::{Link, Outbound, Route, Session, SessionHandle, SessionJournal};
use session::{SessionLimits, SessionRef};
use socket::Socket;
use stats::Stats;
use std::collections::HashMap;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a retained replay waits for a subscriber that does not take its messages before
/// the rest is dropped (counted and logged by the session like any queue overflow).
const RETAINED_REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// A live network connection, kept so shutdown can close it and join its thread.
struct LiveConnection {
    stream: Arc<Socket>,
    thread: Option<threads::ConnectionThread>,
    /// Set for a client authenticated against the password file.
    credential: Option<Credential>,
}

/// What a connection authenticated with, kept so that a reload of the password file can close
/// it when that no longer holds (see `Broker::reload_security`).
pub struct Credential {
    pub client_id: Arc<str>,
    pub username: Arc<str>,
    /// The password file entry the client's password matched.
    pub entry: auth::PasswordHash,
    /// Set by the broker before it closes the connection's read side: the connection then
    /// ends with "not authorized" instead of as if its client had gone.
    pub revoked: Arc<AtomicBool>,
}

pub struct Broker {
    pub config: Config,
    /// Password and ACL files, replaced on SIGHUP.
    pub security: SecurityFiles,
    pub router: Router,
    pub stats: Stats,
    pub sink: Sink,
    /// Persistence, when configured (see `crate::store`).
    store: OnceLock<Arc<Store>>,
    sessions: Mutex<HashMap<Arc<str>, SessionRef>>,
    connections: Mutex<HashMap<u64, LiveConnection>>,
    next_connection_id: AtomicU64,
    shutting_down: AtomicBool,
    /// The thread `start_housekeeping` started; `shutdown` joins it before the store stops, so
    /// a will it publishes is never left half-recorded.
    housekeeping_thread: Mutex<Option<JoinHandle<()>>>,
    started: Instant,
}

/// A message routed to the retained store and the subscribers, not yet logged nor given to
/// the sink.
enum Routed {
    /// Nobody took a share of it.
    Unshared(Message),
    Shared(Arc<Message>),
}

/// Result of attaching a connection to a session at CONNECT.
pub struct Attached {
    pub session: SessionRef,
    pub session_present: bool,
}

impl Broker {
    pub fn new(config: Config, sink: Sink, security: SecurityFiles) -> Arc<Broker> {
        let retained_limits = router::RetainedLimits {
            max_messages: config.limits.max_retained_messages,
            max_bytes: config.limits.max_retained_bytes,
        };
        Arc::new(Broker {
            config,
            security,
            router: Router::new(retained_limits),
            stats: Stats::default(),
            sink,
            store: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            housekeeping_thread: Mutex::new(None),
            started: Instant::now(),
        })
    }

    /// Use `store` from now on, after rebuilding the retained messages and sessions it held.
    /// Called once, before the listener starts.
    pub fn attach_store(&self, store: Arc<Store>, loaded: Loaded) {
        // Acknowledged publishes the sink had not written before a crash go to it again first.
        self.sink.attach_store(store.clone(), loaded.sink);
        for message in loaded.retained {
            self.router.retain(&message, || {});
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for stored in loaded.sessions {
            let client_id: Arc<str> = stored.client_id.as_str().into();
            let journal = SessionJournal::new(store.clone(), &client_id);
            let state = Session::restore(stored, self.session_limits(None), journal);
            let session = SessionHandle::restored(client_id.clone(), state);
            let subscriptions = session.lock().subscription_list();
            for (filter, options, identifier) in subscriptions {
                self.router
                    .subscribe(&filter, &session, options, identifier);
            }
            sessions.insert(client_id, session);
        }
        drop(sessions);
        let _ = self.store.set(store);
        // Wills that fell due and sessions that expired while the broker was down are handled
        // before any client can connect (a reconnect would otherwise cancel an overdue will).
        self.housekeeping();
    }

    /// In sync persistence mode, wait until every change this thread made so far is durable:
    /// called before acknowledging a QoS 1/2 PUBLISH, a PUBREL or a PUBREC. False when the
    /// store failed or timed out: the acknowledgement must not be sent.
    pub fn wait_durable(&self) -> bool {
        match self.store.get() {
            Some(store) if store.is_sync() => store.wait_durable(crate::store::DURABLE_TIMEOUT),
            _ => true,
        }
    }

    /// Whether acknowledgements wait for the store (sync persistence).
    pub fn acks_wait_for_store(&self) -> bool {
        self.store.get().is_some_and(|s| s.is_sync())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Limits for a session whose client allows `receive_maximum` unacknowledged messages.
    pub fn session_limits(&self, receive_maximum: Option<u16>) -> SessionLimits {
        let l = &self.config.limits;
        SessionLimits {
            max_inflight: l.max_inflight.min(receive_maximum.unwrap_or(u16::MAX)) as usize,
            max_queued: l.max_queued,
            outbound_queue: l.outbound_queue,
            backpressure: l.queue_full == crate::config::QueueFullPolicy::Backpressure,
        }
    }

    /// Route an accepted application message: retained store, subscribers, then the sink.
    /// Returns the number of sessions it was delivered to.
    pub fn publish(&self, message: Message) -> usize {
        self.publish_exactly_once(message, None)
    }

    /// `publish` for a new incoming QoS 2 message: `incoming` is the store record of its packet
    /// id (None when the publisher's session is not stored). It is written in one atomic record
    /// with the deliveries, so that after a crash the broker has either routed the message and
    /// knows the id (a resend is acknowledged, not routed again) or neither (a resend is routed)
    /// [MQTT-4.3.3-2]. Every receiving session stays locked until the record is submitted, so no
    /// acknowledgement of a delivery can reach the store before the delivery itself.
    ///
    /// With sync persistence, the sink's copy of a QoS 1/2 message is made durable with its
    /// routing (for QoS 2 in the same atomic record as `incoming`: a crash cannot leave the id
    /// known, so that the resend is not routed again, but the sink's copy lost), so the caller's
    /// wait for the store before the acknowledgement covers InfluxDB too (`sink::durable`).
    pub fn publish_exactly_once(
        &self,
        message: Message,
        incoming: Option<crate::store::journal::Op>,
    ) -> usize {
        // A stored QoS 2 packet id needs the sink's copy in its atomic record; any other QoS 1/2
        // message goes into the store with its connection's chunk (`finish_with`).
        let put = match (&incoming, self.store.get()) {
            (Some(_), Some(_)) => self.sink.durable_put(&sink_record(&message)),
            _ => None,
        };
        let (sink_id, incoming) = match (put, incoming) {
            (Some((id, put)), Some(incoming)) => (
                id,
                Some(crate::store::journal::Op::Batch(vec![incoming, put])),
            ),
            (_, incoming) => (0, incoming),
        };
        let (routed, count) = self.route(message, incoming);
        self.finish_with(&routed, sink_id);
        count
    }

    /// The retained store and the subscribers' part of `publish_exactly_once`: the message is
    /// then still to be logged and given to the sink (`finish`).
    fn route(
        &self,
        message: Message,
        incoming: Option<crate::store::journal::Op>,
    ) -> (Routed, usize) {
        let (message, deliveries) = if message.retain {
            // Stored before the subscribers are looked up: a client subscribing meanwhile then
            // gets the message live or as retained, never neither.
            let message = Arc::new(message);
            self.store_retained(&message);
            let deliveries = self
                .router
                .matches(&message.topic, message.publisher.as_deref());
            (message, deliveries)
        } else {
            let deliveries = self
                .router
                .matches(&message.topic, message.publisher.as_deref());
            if deliveries.is_empty() && (incoming.is_none() || self.store.get().is_none()) {
                // The usual telemetry publish: nobody to share it with, so it goes to the sink
                // without being put behind an `Arc` first.
                return (Routed::Unshared(message), 0);
            }
            (Arc::new(message), deliveries)
        };
        let count = deliveries.len();
        if let (Some(op), Some(store)) = (incoming, self.store.get()) {
            self.deliver_atomically(store, op, &message, deliveries);
        } else {
            self.deliver_all(&message, deliveries);
        }
        (Routed::Shared(message), count)
    }

    /// What follows routing: the message log and the sink.
    fn finish(&self, routed: &Routed) {
        self.finish_with(routed, 0);
    }

    /// `finish` for a message whose sink record `sink_id` (0: none) was submitted to the store.
    fn finish_with(&self, routed: &Routed, sink_id: u64) {
        let message = match routed {
            Routed::Unshared(m) => m,
            Routed::Shared(m) => &**m,
        };
        self.log_message(message);
        let record = sink_record(message);
        match message.qos {
            _ if sink_id != 0 => self.sink.submit_durable(record, sink_id),
            QoS::AtMostOnce => self.sink.submit(record),
            // Acknowledged once durable (sync persistence): the sink's copy too.
            _ => self.sink.submit_acknowledged(record),
        }
    }

    /// Route the will of a session whose store records change with its publication (`record`:
    /// the session's end, or its disconnection record without the will) in one atomic store
    /// record with the will's deliveries. After a crash the store then holds either the will
    /// still due or the will delivered: never neither (lost) nor both (published again at
    /// restart). A retained will is stored just before that record (under the retained
    /// store's lock, as every retained change): a crash in between republishes it at restart,
    /// which stores the same retained message again. Called with the session table locked, so
    /// that a new session of the same client cannot write its records in between (the end
    /// deletes the client's keys); the caller hands the will to `finish` once the table is
    /// unlocked, as the sink may block.
    fn route_will(&self, will: Message, record: Option<crate::store::journal::Op>) -> Routed {
        self.route(will, record).0
    }

    fn store_retained(&self, message: &Arc<Message>) {
        // $SYS values are regenerated at start-up; storing them would only fill the journal.
        let durable = !message.topic.starts_with("$SYS/");
        let outcome = self.router.retain(message, || {
            if let Some(store) = self.store.get().filter(|_| durable) {
                store.submit(if message.payload.is_empty() {
                    records::retained_clear(&message.topic)
                } else {
                    records::retained_put(message)
                });
            }
        });
        if outcome == router::RetainOutcome::Refused {
            // Logged for the first refusal and every 1000th after, so a client flooding
            // new retained topics cannot flood the log as well.
            let n = self.stats.retained_refused.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                warn!(
                    "retained message on {} from {} not stored: retained store full \
                     (limits.max_retained_messages {}, max_retained_bytes {}; {} refused \
                     so far); the message is still delivered",
                    message.topic,
                    message.publisher.as_deref().unwrap_or("broker"),
                    self.config.limits.max_retained_messages,
                    self.config.limits.max_retained_bytes,
                    n + 1
                );
            }
        }
    }

    /// `log.messages`: one info line per routed message.
    fn log_message(&self, message: &Message) {
        if self.config.log.messages {
            info!(
                "message from {} on {} (qos {}, retain {}): {}",
                message.publisher.as_deref().unwrap_or("broker"),
                message.topic,
                message.qos as u8,
                message.retain,
                String::from_utf8_lossy(&message.payload)
            );
        }
    }

    fn deliver_all(&self, message: &Arc<Message>, deliveries: Vec<router::Delivery>) {
        for d in deliveries {
            let shared_group = d.shared_group.clone();
            let (session, route) = d.route(message);
            // ACL read access is checked per delivered message, as mosquitto does. A shared
            // group's message that its chosen member may not read goes to another member.
            if !self.deliver_if_allowed(&session, message, route) {
                if let Some(group) = shared_group {
                    if let Some(other) = self.router.redeliver_shared(&group, &session.client_id) {
                        let (session, route) = other.route(message);
                        self.deliver_if_allowed(&session, message, route);
                    }
                }
            }
        }
    }

    /// Deliver with every receiving session locked (in address order, so two publishers
    /// cannot deadlock), their store records and `first` submitted as one atomic record, and
    /// the packets for their connections sent only after that.
    fn deliver_atomically(
        &self,
        store: &Store,
        first: crate::store::journal::Op,
        message: &Arc<Message>,
        deliveries: Vec<router::Delivery>,
    ) {
        let mut routes: Vec<(SessionRef, Route)> = deliveries
            .into_iter()
            .map(|d| self.readable_member(d, message).route(message))
            .collect();
        routes.sort_by_key(|(s, _)| Arc::as_ptr(s) as usize);
        let mut sessions: Vec<SessionRef> = routes.iter().map(|(s, _)| s.clone()).collect();
        sessions.dedup_by(|a, b| Arc::ptr_eq(a, b));
        let mut states: Vec<_> = sessions.iter().map(|s| s.lock()).collect();
        session::defer_sends(|| {
            store.atomically(|| {
                store.submit(first);
                for (session, route) in routes {
                    let Some(i) = sessions.iter().position(|s| Arc::ptr_eq(s, &session)) else {
                        continue;
                    };
                    let state = &mut states[i];
                    if state.can_receive(&session.client_id, &message.topic, &self.security) {
                        state.deliver(message, route, &session.client_id, &self.stats);
                    }
                }
            })
        });
    }

    /// A shared group's delivery whose chosen member may not read the message goes to another
    /// member, as in `deliver_all`; decided before `deliver_atomically` locks the sessions, as
    /// the other member's session could not be locked in order then.
    fn readable_member(&self, d: router::Delivery, message: &Message) -> router::Delivery {
        let Some(group) = d.shared_group.clone() else {
            return d;
        };
        let allowed =
            d.session
                .lock()
                .can_receive(&d.session.client_id, &message.topic, &self.security);
        if allowed {
            return d;
        }
        self.router
            .redeliver_shared(&group, &d.session.client_id)
            .unwrap_or(d)
    }

    /// Send the retained messages matching `filter` to one session, RETAIN set [MQTT-3.3.1-8].
    pub fn deliver_retained(
        &self,
        session: &SessionRef,
        filter: &str,
        granted: QoS,
        subscription_id: Option<u32>,
    ) {
        // Runs on the subscriber's own reader thread: a retained set larger than the client's
        // queues is paced (waiting for its writer and acks) instead of being cut off.
        let retained = self.router.retained_matching(filter);
        for message in retained {
            let route = Route {
                qos: message.qos.min(granted),
                retain: true,
                subscription_ids: subscription_id.into_iter().collect(),
                shared_group: None,
            };
            let deadline = Instant::now() + RETAINED_REPLAY_TIMEOUT;
            let mut state = session.lock();
            while state.backlog_full() && Instant::now() < deadline && !self.is_shutting_down() {
                drop(state);
                // What this thread queued for the session must go out for room to appear.
                outbox::flush_batched();
                std::thread::sleep(Duration::from_millis(1));
                state = session.lock();
            }
            if state.can_receive(&session.client_id, &message.topic, &self.security) {
                state.deliver(&message, route, &session.client_id, &self.stats);
            }
        }
    }

    /// Find or create the session for `client_id` and attach `link` to it. An existing
    /// connection with that id is closed [MQTT-3.1.4-2]; with clean start the old state is
    /// discarded [MQTT-3.1.2-6].
    ///
    /// `expiry_interval` is the session's lifetime after disconnection in seconds (3.1.1: 0 for
    /// clean session, `NEVER_EXPIRES` otherwise); `limits` already include the client's v5
    /// Receive Maximum. `connack` builds the CONNACK from "session present"; it is queued before
    /// anything the session resends, so CONNACK is always the first packet [MQTT-3.2.0-1].
    pub fn attach_session(
        &self,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        limits: SessionLimits,
        link: Link,
        connack: impl FnOnce(bool) -> crate::protocol::Packet,
    ) -> Attached {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let existing = sessions.get(client_id).cloned();
        // Set when a stored session is created or discarded here.
        let mut stored_change = false;
        let mut pending_will = None;
        let resumable = |s: &SessionRef| {
            let state = s.lock();
            // A session with expiry 0 (3.1.1 clean session) ends with its connection, even
            // if that connection has not finished closing yet: it is never resumed
            // [MQTT-3.1.2-6].
            if state.expiry_interval == 0 || state.is_expired(Instant::now()) {
                return false;
            }
            // Only the identity that owns the session resumes it. Another one gets a new
            // session, and the old one ends as on a Clean Start: its subscriptions and queued
            // messages are dropped, never handed to the newcomer. (Any client may end another
            // client id's session with Clean Start anyway; keeping it for its owner while
            // another connection holds the client id would need two sessions per id.)
            let owned = state.may_resume(link.username.as_ref());
            if !owned {
                info!(
                    "client {client_id}: session owned by {} not resumed by {}; \
                     it is discarded and a new session started",
                    describe_owner(state.owner()),
                    describe_identity(link.username.as_deref())
                );
            }
            owned
        };
        let (session, session_present) = match existing {
            Some(s) if !clean_start && resumable(&s) => {
                let mut state = s.lock();
                let username = link.username.as_deref();
                let discarded = state.discard_unreadable(client_id, username, &self.security);
                if discarded > 0 {
                    info!(
                        "client {client_id}: {discarded} queued message(s) the client may no \
                         longer read were discarded"
                    );
                }
                drop(state);
                (s, true)
            }
            other => {
                if let Some(old) = other {
                    stored_change |= old.lock().has_journal();
                    pending_will = self.end_session(&old, &mut sessions);
                }
                let s = SessionHandle::new(
                    client_id.into(),
                    expiry_interval,
                    limits,
                    link.username.clone(),
                );
                sessions.insert(s.client_id.clone(), s.clone());
                (s, false)
            }
        };
        let old_link = {
            let mut state = session.lock();
            state.expiry_interval = expiry_interval;
            match self.store.get() {
                Some(store) if expiry_interval != 0 && !state.has_journal() => {
                    state.enable_journal(SessionJournal::new(store.clone(), client_id));
                    stored_change = true;
                }
                _ => state.record_session(),
            }
            stored_change |= state.note_reconnected();
            // CONNACK's "session present" must not be contradicted by a crash right after it.
            if stored_change && !self.wait_durable() {
                log::warn!("client {client_id}: the store did not confirm the session change");
            }
            state.attach(
                link,
                limits,
                Outbound::Packet(Box::new(connack(session_present))),
            )
        };
        if let Some(old) = old_link {
            info!(
                "client {client_id}: session taken over by a new connection; closing the old one"
            );
            close_link(&old, crate::protocol::reason::SESSION_TAKEN_OVER);
        }
        drop(sessions);
        if let Some(will) = pending_will {
            // The old session ended (clean start or expired) before its Will Delay Interval
            // passed: the will was due then (section 3.1.3.2.2, "whichever happens first").
            self.finish(&will);
        }
        Attached {
            session,
            session_present,
        }
    }

    /// The connection `connection_id` ended: detach it; end the session if its expiry interval
    /// is 0; publish the will now, or later if it has a v5 Will Delay Interval.
    pub fn detach_session(
        &self,
        session: &SessionRef,
        connection_id: u64,
        will: Option<(Arc<Message>, u32)>,
    ) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = session.lock();
        if !state.detach(connection_id) {
            // Taken over: the session belongs to another connection now, so a delayed will is
            // cancelled [MQTT-3.1.3-9]; an immediate one is still published, and so is any will
            // whose session the new connection ended (clean start): the session is over.
            let session_ended = state.ended;
            drop(state);
            drop(sessions);
            match will {
                Some((will, delay)) if delay == 0 || session_ended => {
                    self.publish(Arc::unwrap_or_clone(will));
                }
                _ => {}
            }
            return;
        }
        let ends_now = state.expiry_interval == 0;
        if !ends_now {
            // The v5 expiry interval may have changed at DISCONNECT.
            state.record_session();
        }
        let shared = state.take_shared_messages();
        let will_now = match will {
            Some((will, delay)) if delay > 0 && !ends_now => {
                state.delayed_will =
                    Some((Instant::now() + Duration::from_secs(delay as u64), will));
                None
            }
            other => other.map(|(will, _)| will),
        };
        if !ends_now {
            state.record_detached();
        }
        drop(state);
        if ends_now {
            // An attached session has no delayed will (`attach` cancelled it), so its end
            // publishes none: this connection's will is `will_now`.
            let ended_will = self.end_session(session, &mut sessions);
            debug_assert!(ended_will.is_none());
        }
        drop(sessions);
        self.redeliver_shared(session, connection_id, shared);
        if let Some(will) = will_now {
            self.publish(Arc::unwrap_or_clone(will));
        }
    }

    /// Give the shared-subscription messages a disconnected member had not completed to another
    /// member of the same group; with no other member they stay with the original session.
    ///
    /// Their publishers were acknowledged long ago, so they must not be dropped for the other
    /// member's full queue: the leaving member held up to its queue and its inflight window of
    /// them, more than the other member's queue may grow past `max_queued` (and a busy member
    /// that takes all of a flood is near `max_queued` just then). On the leaving connection's
    /// reader (inside a `flow::Scope`) a delivery that fills the other member's queue waits for
    /// room like a publisher would (`flow::give_way`), bounded by `stalled_subscriber_secs`; on
    /// other threads it overflows within the bound, as before.
    fn redeliver_shared(
        &self,
        leaving: &SessionRef,
        connection_id: u64,
        messages: Vec<(Arc<Message>, Route)>,
    ) {
        let stall = Duration::from_secs(self.config.limits.stalled_subscriber_secs);
        for (message, route) in messages {
            if flow::must_give_way() {
                // What this thread queued for the member must go out for room to appear.
                outbox::flush_batched();
                flow::give_way(
                    connection_id,
                    stall,
                    &|| !self.is_shutting_down(),
                    &|room, connection| self.disconnect_stalled(room.client_id(), connection),
                );
            }
            let group = route.shared_group.clone().unwrap_or_default();
            let other = self.router.redeliver_shared(&group, &leaving.client_id);
            let delivered = other.is_some_and(|d| {
                let (session, route) = d.route(&message);
                debug!(
                    "redelivering a message of {group} from {} to {}",
                    leaving.client_id, session.client_id
                );
                self.deliver_if_allowed(&session, &message, route)
            });
            if !delivered {
                leaving
                    .lock()
                    .deliver(&message, route, &leaving.client_id, &self.stats);
            }
        }
    }

    /// Deliver to one session if its ACL lets it read the topic; false if refused.
    fn deliver_if_allowed(
        &self,
        session: &SessionRef,
        message: &Arc<Message>,
        route: Route,
    ) -> bool {
        let mut state = session.lock();
        if !state.can_receive(&session.client_id, &message.topic, &self.security) {
            return false;
        }
        state.deliver(message, route, &session.client_id, &self.stats);
        true
    }

    /// Expire sessions whose expiry interval has passed and publish delayed wills that are due
    /// (a will is also due when its session ends [MQTT-3.1.3-9]). Called about once a second.
    pub fn housekeeping(&self) {
        // What the wills routed below send goes out when this scope ends, after the session
        // table is unlocked: a slow subscriber must not hold up every CONNECT meanwhile.
        let _batching = outbox::Batching::start();
        let now = Instant::now();
        let mut due_wills = Vec::new();
        {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let all: Vec<SessionRef> = sessions.values().cloned().collect();
            for session in all {
                let (expired, will_due) = {
                    let state = session.lock();
                    let expired = state.is_expired(now);
                    let due = !expired
                        && state
                            .delayed_will
                            .as_ref()
                            .is_some_and(|(at, _)| *at <= now);
                    (expired, due)
                };
                if expired {
                    // A will still waiting for its delay is published with the session's end.
                    info!("session {} expired", session.client_id);
                    Stats::add(&self.stats.sessions_expired, 1);
                    due_wills.extend(self.end_session(&session, &mut sessions));
                } else if will_due {
                    // The session lives on: its disconnection record loses the will in the
                    // same atomic record as the will's deliveries.
                    let (will, record) = {
                        let mut state = session.lock();
                        let will = state.delayed_will.take().map(|(_, w)| w.published_now());
                        (will, state.detached_record())
                    };
                    due_wills.extend(will.map(|w| self.route_will(w, record)));
                }
            }
        }
        for will in due_wills {
            self.finish(&will);
        }
    }

    /// Start the thread that runs `housekeeping` four times a second until `shutdown`, which
    /// joins it.
    pub fn start_housekeeping(self: &Arc<Self>) -> std::io::Result<()> {
        let broker = self.clone();
        let thread = std::thread::Builder::new()
            .name("housekeeping".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(250));
                if broker.is_shutting_down() {
                    return;
                }
                broker.housekeeping();
            })?;
        *self
            .housekeeping_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(())
    }

    /// Discard a session: close its connection, drop its subscriptions, remove it from the table
    /// and its records from the store. A will that was waiting for its delay is due now that
    /// the session ends: it is routed with the records' deletion (`route_will`) and returned;
    /// the caller hands it to `finish` once the session table is unlocked.
    fn end_session(
        &self,
        session: &SessionRef,
        sessions: &mut HashMap<Arc<str>, SessionRef>,
    ) -> Option<Routed> {
        let (link, filters, will, record) = {
            let mut state = session.lock();
            state.ended = true;
            (
                state.take_link(),
                std::mem::take(&mut state.subscriptions),
                state
                    .delayed_will
                    .take()
                    .map(|(_, will)| will.published_now()),
                state.end_journal(),
            )
        };
        if let Some(link) = link {
            close_link(&link, crate::protocol::reason::SESSION_TAKEN_OVER);
        }
        for filter in filters.keys() {
            self.router.unsubscribe(filter, session);
        }
        if sessions
            .get(&session.client_id)
            .is_some_and(|s| Arc::ptr_eq(s, session))
        {
            sessions.remove(&session.client_id);
        }
        match will {
            Some(will) => Some(self.route_will(will, record)),
            None => {
                if let (Some(record), Some(store)) = (record, self.store.get()) {
                    store.submit(record);
                }
                None
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Messages in flight or queued across all sessions (for `$SYS/broker/messages/stored`).
    pub fn pending_message_count(&self) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .values()
            .map(|s| {
                let state = s.lock();
                state.inflight_len() + state.queued_len()
            })
            .sum()
    }

    /// Register a new connection; returns its id, or None when the broker is shutting down.
    pub fn register_connection(&self, stream: &Arc<Socket>) -> Option<u64> {
        let stream = stream.clone();
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_shutting_down() {
            return None;
        }
        conns.insert(
            id,
            LiveConnection {
                stream,
                thread: None,
                credential: None,
            },
        );
        Some(id)
    }

    pub fn set_connection_thread(&self, id: u64, thread: threads::ConnectionThread) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get_mut(&id) {
            Some(c) => c.thread = Some(thread),
            None => drop(thread), // already finished
        }
    }

    /// Remember what connection `id` authenticated with (see `reload_security`).
    pub fn note_credential(&self, id: u64, credential: Credential) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns.get_mut(&id) {
            c.credential = Some(credential);
        }
    }

    /// Reload the password and ACL files (SIGHUP), then close the connections whose
    /// credentials no longer hold: user removed from the password file or given another entry.
    /// Everybody else stays connected and gets the new ACL at the next check. mosquitto 2.0
    /// also re-checks every client's credentials at reload (`mosquitto_security_apply_default`)
    /// and drops those that fail.
    pub fn reload_security(&self) -> Result<u64, security::SecurityError> {
        let generation = self.security.reload()?;
        let snapshot = self.security.current();
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for c in conns.values() {
            let Some(cred) = &c.credential else { continue };
            if snapshot.still_holds(&cred.username, &cred.entry) {
                continue;
            }
            if cred.revoked.swap(true, Ordering::AcqRel) {
                continue; // already being closed
            }
            warn!(
                "client {} (user {:?}): password file entry removed or changed by the reload; \
                 disconnecting",
                cred.client_id, cred.username
            );
            // Its reader sees the end of input, or the flag at its next packet, and closes
            // the connection (v5: DISCONNECT 0x87 first).
            let _ = c.stream.shutdown(Shutdown::Read);
        }
        Ok(generation)
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A subscriber that completed nothing for `limits.stalled_subscriber_secs` while publishers
    /// waited on its full queue: close its socket, so one dead client cannot hold them back.
    /// Its reader then ends the connection as for any lost client: the will is published, a
    /// persistent session keeps its queue (and drops beyond `max_queued`, counted).
    pub fn disconnect_stalled(&self, client_id: &str, connection_id: u64) {
        let stream = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&connection_id)
            .map(|c| c.stream.clone());
        let Some(stream) = stream else { return };
        Stats::add(&self.stats.stalled_subscribers, 1);
        warn!(
            "client {client_id}: completed no message for {}s while publishers waited on its \
             full queue (limits.stalled_subscriber_secs); disconnecting it",
            self.config.limits.stalled_subscriber_secs
        );
        // Both directions: its reader sees the end at once, and a writer blocked on the
        // client's full socket fails instead of waiting for the write timeout.
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Graceful shutdown: refuse new connections, close every client (v5 clients get
    /// DISCONNECT 0x8B), join their threads, then flush the sink.
    pub fn shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // A housekeeping round under way finishes (and records its wills) while the store is
        // still running; none starts after this.
        let housekeeping = self
            .housekeeping_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = housekeeping {
            let _ = thread.join();
        }
        let live: Vec<(u64, LiveConnection)> = {
            let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            conns.drain().collect()
        };
        info!("shutting down: closing {} connection(s)", live.len());
        {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            for s in sessions.values() {
                if let Some(link) = s.lock().link() {
                    close_link(link, crate::protocol::reason::SERVER_SHUTTING_DOWN);
                }
            }
        }
        // Closing the read side ends each reader loop; the writer still flushes what it has.
        for (_, c) in &live {
            let _ = c.stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + timeout;
        for (id, c) in live {
            let Some(thread) = c.thread else { continue };
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                thread.join();
            } else {
                debug!("connection {id} did not stop in time; closing its socket");
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
        // The sink first: what it writes or spools while flushing is then deleted from the
        // store before the store stops (otherwise the next start would write it again).
        self.sink.shutdown();
        if let Some(store) = self.store.get() {
            // Everything the closed connections and the sink changed is written and fsynced.
            store.stop();
        }
    }
}

fn sink_record(message: &Message) -> SinkRecord<'_> {
    SinkRecord {
        topic: &message.topic,
        payload: &message.payload,
        received_at_ns: message.received_at_ns,
    }
}

/// A session owner for the log: `user "alice"`, `an anonymous client`.
fn describe_owner(owner: &session::SessionOwner) -> String {
    match owner {
        session::SessionOwner::Identity(user) => describe_identity(user.as_deref()),
        session::SessionOwner::Unrecorded => "an unrecorded owner".to_string(),
    }
}

fn describe_identity(user: Option<&str>) -> String {
    match user {
        Some(user) => format!("user {user:?}"),
        None => "an anonymous client".to_string(),
    }
}

/// Ask a connection's writer to close it; v5 clients are told why first [MQTT-4.13.2-1].
fn close_link(link: &Link, reason_code: u8) {
    if link.version.is_v5() {
        let disconnect = crate::protocol::Disconnect {
            reason_code,
            properties: Default::default(),
        };
        let _ = link.outbox.send(Outbound::Packet(Box::new(
            crate::protocol::Packet::Disconnect(disconnect),
        )));
    }
    let _ = link.outbox.send(Outbound::Close);
}
