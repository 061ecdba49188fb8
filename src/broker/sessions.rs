//! Sessions and wills: attaching a connection to its session at CONNECT, detaching it,
//! ending a session (and publishing its will), and the housekeeping thread that fires delayed
//! wills and expires sessions.

use super::message::Message;
use super::message::Route;
use super::session::{Link, Outbound, SessionHandle, SessionJournal};
use super::session::{SessionLimits, SessionRef};
use super::stats::Stats;
use log::{debug, info};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::publish::Routed;
use super::state::Broker;
use super::{flow, read_scope, session};

/// Result of attaching a connection to a session at CONNECT.
pub struct Attached {
    pub session: SessionRef,
    pub session_present: bool,
}

impl Broker {
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
                read_scope::flush();
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

    /// Expire sessions whose expiry interval has passed and publish delayed wills that are due
    /// (a will is also due when its session ends [MQTT-3.1.3-9]). Called about once a second.
    pub fn housekeeping(&self) {
        // What the wills routed below send goes out when this scope ends, after the session
        // table is unlocked: a slow subscriber must not hold up every CONNECT meanwhile.
        let _batching = read_scope::ReadScope::start();
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
    pub(super) fn end_session(
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
pub(super) fn close_link(link: &Link, reason_code: u8) {
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
