//! What an operator sees of the broker and may do to it (the dashboard, `ops::dashboard`):
//! read-only views of the connected clients, the sessions, their subscriptions and wills, the
//! retained messages; and three actions — kick a client, discard a session, delete a retained
//! message. Each view is a copy taken under the broker's locks in their usual order (§4 of
//! ARCHITECTURE.md: the registry alone, then the session table and each session), so a page
//! that is read never holds a lock while it is encoded or sent.

use super::live::ClientInfo;
use super::message::Message;
use super::read_scope;
use super::state::Broker;
use crate::protocol::reason;
use std::sync::Arc;
use std::time::Instant;

/// One session, connected or not, with what its connection (if any) said at CONNECT.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub client_id: Arc<str>,
    /// None while the session waits offline for its client.
    pub connection: Option<ClientInfo>,
    /// Seconds the session outlives its connection (0: ends with it).
    pub expiry_interval: u32,
    /// Seconds since the client went away (offline sessions).
    pub offline_secs: Option<u64>,
    pub inflight: usize,
    pub queued: usize,
    /// Messages this session dropped (queue full, slow reader, too large, expired).
    pub dropped: u64,
    pub subscriptions: Vec<SubscriptionView>,
}

#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub identifier: Option<u32>,
}

/// A retained message, for browsing.
#[derive(Debug, Clone)]
pub struct RetainedView {
    pub message: Arc<Message>,
}

impl Broker {
    /// Every session (connected ones and persistent ones whose client is away), sorted by
    /// client id. Takes the registry, then the session table and each session in turn.
    pub fn sessions_view(&self) -> Vec<SessionView> {
        let mut connected: std::collections::HashMap<Arc<str>, ClientInfo> = self
            .connected_clients()
            .into_iter()
            .map(|c| (c.client_id.clone(), c))
            .collect();
        let sessions: Vec<_> = {
            let table = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            table.values().cloned().collect()
        };
        let now = Instant::now();
        let mut views: Vec<SessionView> = sessions
            .iter()
            .map(|s| {
                let state = s.lock();
                let attached = state.link().is_some();
                let mut subscriptions: Vec<SubscriptionView> = state
                    .subscription_list()
                    .into_iter()
                    .map(|(filter, o, identifier)| SubscriptionView {
                        filter,
                        qos: o.qos as u8,
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        retain_handling: o.retain_handling,
                        identifier,
                    })
                    .collect();
                subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
                SessionView {
                    client_id: s.client_id.clone(),
                    connection: if attached {
                        connected.remove(&s.client_id)
                    } else {
                        None
                    },
                    expiry_interval: state.expiry_interval,
                    offline_secs: state
                        .disconnected_at
                        .filter(|_| !attached)
                        .map(|at| now.saturating_duration_since(at).as_secs()),
                    inflight: state.inflight_len(),
                    queued: state.queued_len(),
                    dropped: state.dropped(),
                    subscriptions,
                }
            })
            .collect();
        views.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        views
    }

    /// Retained messages whose topic starts with `prefix` (all for ""), sorted by topic, at most
    /// `limit` of them; and how many matched in all.
    pub fn retained_view(&self, prefix: &str, limit: usize) -> (Vec<RetainedView>, usize) {
        let mut all = self.router.retained_with_prefix(prefix);
        all.sort_by(|a, b| a.topic.cmp(&b.topic));
        let total = all.len();
        all.truncate(limit);
        let views = all
            .into_iter()
            .map(|message| RetainedView { message })
            .collect();
        (views, total)
    }

    /// Every retained topic (for the topic tree), sorted.
    pub fn retained_topics(&self) -> Vec<Arc<str>> {
        let mut topics = self.router.retained_topics();
        topics.sort();
        topics
    }

    /// Disconnect `client_id` on behalf of an operator: the same path as a password reload
    /// (`Revocation`, then its read side closed), with reason 0x98 Administrative action for
    /// a v5 client (MQTT 5.0 section 3.14.2.1); its will is published, as for any connection
    /// the server closes [MQTT-3.1.2-8]. A persistent session stays. False when not connected.
    pub fn kick(&self, client_id: &str) -> bool {
        self.revoke_client(client_id, reason::ADMINISTRATIVE_ACTION)
    }

    /// Discard the session of `client_id`: a connected client is kicked and its session ends
    /// with the connection (its expiry interval set to 0 first); an offline session ends now,
    /// with its subscriptions, queue and stored records, and a will still waiting for its
    /// delay is published [MQTT-3.1.3-9]. False when there is no such session.
    pub fn discard_session(&self, client_id: &str) -> bool {
        // Wills routed below go out when this scope ends, after the table is unlocked.
        let _batching = read_scope::ReadScope::start();
        let will = {
            let mut table = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let Some(session) = table.get(client_id).cloned() else {
                return false;
            };
            let attached = {
                let mut state = session.lock();
                if state.link().is_some() {
                    state.expiry_interval = 0;
                    true
                } else {
                    false
                }
            };
            if attached {
                drop(table);
                if self.kick(client_id) {
                    return true;
                }
                // Connecting or going just now: end it here instead.
                table = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
                if !table
                    .get(client_id)
                    .is_some_and(|s| Arc::ptr_eq(s, &session))
                {
                    return true; // ended meanwhile
                }
            }
            self.end_session(&session, &mut table)
        };
        if let Some(will) = will {
            self.finish(&will);
        }
        true
    }

    /// Delete the retained message on `topic` as an empty retained PUBLISH would (store record
    /// included), without routing anything to subscribers. False when there is none.
    pub fn delete_retained(&self, topic: &str) -> bool {
        if !self.router.has_retained(topic) {
            return false;
        }
        let clear = Message::new(
            topic.into(),
            bytes::Bytes::new(),
            crate::protocol::QoS::AtMostOnce,
            true,
            Default::default(),
            None,
            super::message::now_ns(),
        );
        self.store_retained(&Arc::new(clear));
        true
    }
}
