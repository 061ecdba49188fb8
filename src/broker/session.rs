//! Session state [MQTT-4.1]: subscriptions, outgoing QoS 1/2 messages in flight and queued,
//! incoming QoS 2 packet ids awaiting PUBREL, and the connection the session is attached to.
//!
//! A session outlives its connection when clean session = 0. Every method is called with the
//! session's mutex held, and never blocks: sends to the connection's writer are `try_send`.

use super::message::Message;
use super::stats::Stats;
use crate::protocol::{Ack, Packet, ProtocolVersion, QoS, SubscriptionOptions};
use crossbeam_channel::Sender;
use log::warn;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// What a connection's writer thread is asked to send.
#[derive(Debug)]
pub enum Outbound {
    /// Boxed: `Packet` is large (v5 properties) and most traffic is `Publish`.
    Packet(Box<Packet>),
    Publish {
        message: Arc<Message>,
        qos: QoS,
        packet_id: u16,
        dup: bool,
        retain: bool,
    },
    /// Flush what is queued, then close the socket.
    Close,
}

/// The connection a session is currently attached to.
#[derive(Clone)]
pub struct Link {
    /// Unique per connection, so a connection that was taken over can tell it no longer owns
    /// the session.
    pub connection_id: u64,
    pub version: ProtocolVersion,
    pub tx: Sender<Outbound>,
}

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_inflight: usize,
    pub max_queued: usize,
    /// QoS 0 messages are dropped once this many packets wait for the writer.
    pub outbound_queue: usize,
}

pub struct SessionHandle {
    pub client_id: Arc<str>,
    pub state: Mutex<Session>,
}

pub type SessionRef = Arc<SessionHandle>;

impl SessionHandle {
    pub fn new(client_id: Arc<str>, clean: bool, limits: SessionLimits) -> SessionRef {
        Arc::new(SessionHandle {
            client_id,
            state: Mutex::new(Session::new(clean, limits)),
        })
    }

    /// Lock the state; a poisoned lock (a panicked thread) still holds consistent data for us.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Session> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inflight {
    packet_id: u16,
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
    /// QoS 2: PUBREC received and PUBREL sent; waiting for PUBCOMP.
    released: bool,
}

struct Queued {
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
}

pub struct Session {
    pub clean: bool,
    /// Set when the session is discarded; late deliveries to it are ignored.
    pub ended: bool,
    pub subscriptions: HashMap<String, SubscriptionOptions>,
    link: Option<Link>,
    limits: SessionLimits,
    next_packet_id: u16,
    inflight: VecDeque<Inflight>,
    queued: VecDeque<Queued>,
    /// Incoming QoS 2 packet ids whose PUBLISH was routed and whose PUBREL has not come yet.
    /// A PUBLISH resent with the same id is acknowledged but not routed again (exactly once).
    incoming_qos2: HashSet<u16>,
    dropped: u64,
}

impl Session {
    fn new(clean: bool, limits: SessionLimits) -> Session {
        Session {
            clean,
            ended: false,
            subscriptions: HashMap::new(),
            link: None,
            limits,
            next_packet_id: 1,
            inflight: VecDeque::new(),
            queued: VecDeque::new(),
            incoming_qos2: HashSet::new(),
            dropped: 0,
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

    /// Attach a new connection and send it `first` (the CONNACK), returning the one it replaces (to be closed by the caller).
    /// Unacknowledged messages are resent with DUP set and the queue drained into the window
    /// [MQTT-4.4.0-1].
    pub fn attach(&mut self, link: Link, limits: SessionLimits, first: Outbound) -> Option<Link> {
        let old = self.link.replace(link);
        self.limits = limits;
        self.send(first);
        for i in 0..self.inflight.len() {
            let item = &self.inflight[i];
            let out = if item.released {
                Outbound::Packet(Box::new(Packet::PubRel(Ack::new(item.packet_id))))
            } else {
                Outbound::Publish {
                    message: item.message.clone(),
                    qos: item.qos,
                    packet_id: item.packet_id,
                    dup: true,
                    retain: item.retain,
                }
            };
            self.send(out);
        }
        self.fill_window();
        old
    }

    /// Detach `connection_id` if it is still the session's connection.
    pub fn detach(&mut self, connection_id: u64) -> bool {
        if self.is_attached_to(connection_id) {
            self.link = None;
            true
        } else {
            false
        }
    }

    /// Take the current link away (session discarded or taken over).
    pub fn take_link(&mut self) -> Option<Link> {
        self.link.take()
    }

    /// Deliver one message at `qos` (already min(published, granted)).
    pub fn deliver(
        &mut self,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        client_id: &str,
        stats: &Stats,
    ) {
        if self.ended {
            return;
        }
        if qos == QoS::AtMostOnce {
            // QoS 0 is not queued for offline sessions (as mosquitto), and dropped for a client
            // whose writer is this far behind rather than growing memory without bound.
            if let Some(link) = &self.link {
                if link.tx.len() >= self.limits.outbound_queue {
                    Stats::add(&stats.dropped_slow_subscriber, 1);
                    self.dropped += 1;
                    if self.dropped == 1 || self.dropped % 1000 == 0 {
                        warn!(
                            "client {client_id}: outbound queue full ({} packets), dropping QoS 0 messages ({} dropped so far)",
                            self.limits.outbound_queue, self.dropped
                        );
                    }
                    return;
                }
                self.send(Outbound::Publish {
                    message: message.clone(),
                    qos,
                    packet_id: 0,
                    dup: false,
                    retain,
                });
            }
            return;
        }
        if self.queued.len() >= self.limits.max_queued {
            Stats::add(&stats.dropped_queue_full, 1);
            self.dropped += 1;
            if self.dropped == 1 || self.dropped % 1000 == 0 {
                warn!(
                    "client {client_id}: message queue full ({} messages), dropping message on {} ({} dropped so far)",
                    self.limits.max_queued, message.topic, self.dropped
                );
            }
            return;
        }
        self.queued.push_back(Queued {
            message: message.clone(),
            qos,
            retain,
        });
        self.fill_window();
    }

    /// Move queued messages into the inflight window while it has room and a client is attached.
    fn fill_window(&mut self) {
        if self.link.is_none() {
            return;
        }
        while self.inflight.len() < self.limits.max_inflight {
            let Some(q) = self.queued.pop_front() else {
                break;
            };
            let packet_id = self.allocate_packet_id();
            self.send(Outbound::Publish {
                message: q.message.clone(),
                qos: q.qos,
                packet_id,
                dup: false,
                retain: q.retain,
            });
            self.inflight.push_back(Inflight {
                packet_id,
                message: q.message,
                qos: q.qos,
                retain: q.retain,
                released: false,
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
            // The channel is unbounded (it allocates lazily, so an idle client costs nothing);
            // what bounds it is the inflight window, `outbound_queue` for QoS 0, and the
            // reader waiting in `Connection::send`. An error means the connection is gone: the
            // message stays inflight and is resent on reconnect.
            let _ = link.tx.send(out);
        }
    }

    /// PUBACK for a QoS 1 message. Returns false for an unknown packet id.
    pub fn puback(&mut self, packet_id: u16) -> bool {
        self.complete(packet_id, QoS::AtLeastOnce)
    }

    /// PUBCOMP for a QoS 2 message. Returns false for an unknown packet id.
    pub fn pubcomp(&mut self, packet_id: u16) -> bool {
        self.complete(packet_id, QoS::ExactlyOnce)
    }

    fn complete(&mut self, packet_id: u16, qos: QoS) -> bool {
        let Some(pos) = self
            .inflight
            .iter()
            .position(|i| i.packet_id == packet_id && i.qos == qos)
        else {
            return false;
        };
        self.inflight.remove(pos);
        self.fill_window();
        true
    }

    /// PUBREC for a QoS 2 message: from now on only PUBREL is resent [MQTT-4.3.3-1].
    /// Returns false for an unknown packet id.
    pub fn pubrec(&mut self, packet_id: u16) -> bool {
        match self
            .inflight
            .iter_mut()
            .find(|i| i.packet_id == packet_id && i.qos == QoS::ExactlyOnce)
        {
            Some(item) => {
                item.released = true;
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

    /// Incoming PUBREL: forget the packet id. Returns false if it was unknown.
    pub fn release_qos2(&mut self, packet_id: u16) -> bool {
        self.incoming_qos2.remove(&packet_id)
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }
}
