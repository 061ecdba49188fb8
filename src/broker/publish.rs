//! The publish pipeline: an accepted message goes to the retained store, to every matching
//! session (with its store records, atomically for QoS 2), then to the message log and the sink.
//! Wills take the same path (`route_will`, called by `sessions`).

use super::message::Message;
use super::message::Route;
use super::persist as records;
use super::session::SessionRef;
use crate::protocol::QoS;
use crate::sink::SinkRecord;
use crate::store::Store;
use log::{info, warn};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::state::Broker;
use super::{read_scope, router};

/// How long a retained replay waits for a subscriber that does not take its messages before
/// the rest is dropped (counted and logged by the session like any queue overflow).
const RETAINED_REPLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// A message routed to the retained store and the subscribers, not yet logged nor given to
/// the sink.
pub(super) enum Routed {
    /// Nobody took a share of it.
    Unshared(Message),
    Shared(Arc<Message>),
}

impl Broker {
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
    pub(super) fn finish(&self, routed: &Routed) {
        self.finish_with(routed, 0);
    }

    /// `finish` for a message whose sink record `sink_id` (0: none) was submitted to the store.
    fn finish_with(&self, routed: &Routed, sink_id: u64) {
        let message = match routed {
            Routed::Unshared(m) => m,
            Routed::Shared(m) => &**m,
        };
        self.log_message(message);
        if let Some(forward) = self.forward() {
            forward.forward(message);
        }
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
    pub(super) fn route_will(
        &self,
        will: Message,
        record: Option<crate::store::journal::Op>,
    ) -> Routed {
        self.route(will, record).0
    }

    pub(super) fn store_retained(&self, message: &Arc<Message>) {
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
        read_scope::atomically(store, || {
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

    /// Deliver to one session if its ACL lets it read the topic; false if refused.
    pub(super) fn deliver_if_allowed(
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
                read_scope::flush();
                std::thread::sleep(Duration::from_millis(1));
                state = session.lock();
            }
            if state.can_receive(&session.client_id, &message.topic, &self.security) {
                state.deliver(&message, route, &session.client_id, &self.stats);
            }
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
