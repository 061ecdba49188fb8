//! The `out` direction on a live link: send the queue in order, at most `window` QoS 1/2
//! messages in flight (min of `max_inflight` and the remote's Receive Maximum), each released
//! only by the remote's PUBACK / PUBCOMP; PUBREC is recorded before PUBREL goes out, so a QoS 2
//! message is never sent twice after a cut or a restart.

use super::link::Link;
use super::queue::{DropReason, Entry, Queue};
use super::stats::BridgeStats;
use crate::protocol::{reason, Ack, Packet, Publish, QoS};
use log::debug;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct Outgoing {
    /// Packet id -> queue sequence number of the messages in flight.
    in_flight: HashMap<u16, u64>,
    window: usize,
    /// Largest packet the remote takes (its Maximum Packet Size, or `bridge_max_packet_size`).
    max_packet: usize,
    retain: bool,
    /// `max_rate`: when the next message may go.
    interval: Option<Duration>,
    next_send: Instant,
    /// PUBRELs to send once the PUBRECs they answer are durable.
    pub pubrel: Vec<u16>,
}

/// Size of a PUBLISH on the wire (an upper bound: 4 bytes of Remaining Length, 1 property byte).
fn publish_size(e: &Entry) -> usize {
    1 + 4 + 2 + e.topic.len() + 2 + 1 + e.payload.len()
}

impl Outgoing {
    pub fn new(window: usize, max_packet: usize, retain: bool, max_rate: u32) -> Outgoing {
        Outgoing {
            in_flight: HashMap::new(),
            window: window.max(1),
            max_packet,
            retain,
            interval: (max_rate > 0).then(|| Duration::from_secs_f64(1.0 / max_rate as f64)),
            next_send: Instant::now(),
            pubrel: Vec::new(),
        }
    }

    /// After CONNACK: what was in flight is sent again (DUP), or its PUBREL when the remote
    /// had acknowledged it with PUBREC [MQTT-4.4.0-1].
    pub fn resume(&mut self, link: &mut Link, queue: &Queue, stats: &BridgeStats) {
        for e in queue.in_flight() {
            let id = e.packet_id();
            self.in_flight.insert(id, e.seq);
            if e.released {
                link.queue(&Packet::PubRel(Ack::new(id)));
            } else if let Some(publish) = self.publish(&e, true) {
                link.queue(&publish);
                BridgeStats::add(&stats.resent, 1);
            } else {
                self.in_flight.remove(&id);
                queue.drop_unsendable(&e, DropReason::Expired);
            }
        }
    }

    /// The PUBLISH for `e`; None when its Message Expiry Interval has passed [MQTT-3.3.2-5].
    fn publish(&self, e: &Entry, dup: bool) -> Option<Packet> {
        let mut properties = e.properties.clone();
        if let Some(interval) = e.properties.message_expiry_interval {
            // [MQTT-3.3.2-6] forward the interval minus the whole seconds it waited.
            let waited = (crate::broker::message::now_ns() - e.received_at_ns).max(0) as u64;
            let left = (interval as u64).checked_sub(waited / 1_000_000_000)?;
            if left == 0 {
                return None;
            }
            properties.message_expiry_interval = Some(left as u32);
        }
        Some(Packet::Publish(Publish {
            dup,
            qos: e.qos,
            retain: e.retain && self.retain,
            topic: e.topic.clone(),
            packet_id: if e.qos == QoS::AtMostOnce {
                0
            } else {
                e.packet_id()
            },
            payload: e.payload.clone(),
            properties,
        }))
    }

    /// Queue on the link as many messages as the window and the rate cap allow.
    pub fn fill(&mut self, link: &mut Link, queue: &Queue, stats: &BridgeStats) {
        let mut sent = 0;
        let mut acked = 0;
        while self.in_flight.len() < self.window && link.pending() < 256 * 1024 {
            let now = Instant::now();
            if let Some(interval) = self.interval {
                if self.next_send > now {
                    break;
                }
                // A quiet period does not save up a burst of more than 100 ms.
                self.next_send = self.next_send.max(now - Duration::from_millis(100)) + interval;
            }
            let in_flight = &self.in_flight;
            let Some(e) = queue.next_unsent(|id| in_flight.contains_key(&id)) else {
                break;
            };
            if publish_size(&e) > self.max_packet {
                log::warn!(
                    "bridge: message on {} ({} bytes) is larger than the remote takes ({} \
                     bytes); dropped",
                    e.topic,
                    e.payload.len(),
                    self.max_packet
                );
                queue.drop_unsendable(&e, DropReason::TooLarge);
                continue;
            }
            let Some(publish) = self.publish(&e, false) else {
                queue.drop_unsendable(&e, DropReason::Expired);
                continue;
            };
            link.queue(&publish);
            sent += 1;
            if e.qos == QoS::AtMostOnce {
                acked += 1;
            } else {
                self.in_flight.insert(e.packet_id(), e.seq);
            }
        }
        BridgeStats::add(&stats.sent, sent);
        BridgeStats::add(&stats.acked, acked);
    }

    /// PUBACK or PUBCOMP: the message leaves the queue.
    pub fn on_complete(&mut self, a: &Ack, queue: &Queue, stats: &BridgeStats) {
        let Some(seq) = self.in_flight.remove(&a.packet_id) else {
            debug!(
                "bridge: acknowledgement for unknown packet id {}",
                a.packet_id
            );
            return;
        };
        let refused = a.reason_code >= reason::UNSPECIFIED_ERROR;
        if queue.complete(seq, refused) && !refused {
            BridgeStats::add(&stats.acked, 1);
        }
    }

    /// PUBREC: recorded; PUBREL follows once that is durable. A refusal (v5 >= 0x80) ends the
    /// exchange (section 4.3.3).
    pub fn on_pubrec(&mut self, a: &Ack, queue: &Queue, stats: &BridgeStats) {
        if a.reason_code >= reason::UNSPECIFIED_ERROR {
            self.on_complete(a, queue, stats);
            return;
        }
        let Some(&seq) = self.in_flight.get(&a.packet_id) else {
            // Not ours (any more): answer so the remote can forget it [MQTT-4.3.3].
            self.pubrel.push(a.packet_id);
            return;
        };
        queue.released(seq);
        self.pubrel.push(a.packet_id);
    }
}
