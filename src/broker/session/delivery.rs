//! What a session sends and what acknowledges it: delivery into the inflight window or the
//! queue, packet ids, PUBACK / PUBREC / PUBCOMP, incoming QoS 2 ids, and the two thread-locals
//! of the per-read scope that belong to sending (`FED_BACKLOG`, `DEFERRED`; see `read_scope`).

use crate::broker::flow;
use crate::broker::message::{Message, Route};
use crate::broker::outbox::{Outbound, Outbox};
use crate::broker::persist as records;
use crate::broker::stats::Stats;
use crate::protocol::QoS;
use log::{debug, warn};
use std::sync::Arc;

use super::state::{next_seq, too_large, Inflight, Queued, Session};

thread_local! {
    /// Set when this thread queued a message for a connected session whose inflight window was
    /// full (see `take_fed_backlog`).
    static FED_BACKLOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread, since the last call, queued a message behind a connected session's
/// full inflight window: that session's client is behind, and only its own connection thread
/// (handling the client's acks) can move the window on.
pub(in crate::broker) fn take_fed_backlog() -> bool {
    FED_BACKLOG.with(|f| f.replace(false))
}

/// Packets held back for their connections.
type HeldSends = Vec<(Arc<Outbox>, Outbound)>;

thread_local! {
    /// Packets held back by `defer_sends` on this thread.
    pub(super) static DEFERRED: std::cell::RefCell<Option<HeldSends>> = const { std::cell::RefCell::new(None) };
}

/// Run `f` holding back what sessions send to their connections meanwhile, then send it: a
/// connection's writer must not see a delivery before the store has its record (it waits for
/// the store only after it received the packet).
pub(in crate::broker) fn defer_sends<T>(f: impl FnOnce() -> T) -> T {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    let out = f();
    let sends = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    for (outbox, packet) in sends.unwrap_or_default() {
        let _ = outbox.send(packet);
    }
    out
}

impl Session {
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
    pub(super) fn count_drop(&mut self, client_id: &str, what: impl FnOnce() -> String) {
        self.dropped += 1;
        if self.dropped == 1 || self.dropped % 1000 == 0 {
            warn!(
                "client {client_id}: {} ({} dropped so far)",
                what(),
                self.dropped
            );
        }
    }

    pub(super) fn too_large_for_client(&self, message: &Message, route: &Route) -> bool {
        too_large(
            self.link.as_ref().and_then(|l| l.max_packet_size),
            message,
            route,
        )
    }

    /// Move queued messages into the inflight window while it has room and a client is
    /// attached. Messages that expired while queued are dropped [MQTT-3.3.2-5].
    pub(super) fn fill_window(&mut self) {
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

    pub(super) fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    pub(super) fn send(&self, out: Outbound) {
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

    pub(super) fn complete(&mut self, packet_id: u16, qos: QoS) -> bool {
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

    /// Messages this session dropped so far (queue full, slow reader, expired, too large).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}
