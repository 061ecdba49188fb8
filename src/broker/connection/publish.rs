//! PUBLISH from the client: admission (size, topic, ACL, rate limit, QoS 2 duplicates), the
//! in-place path that decodes straight from the read buffer, and the hand-off to the broker's
//! publish pipeline with the acknowledgement it earns.

use super::*;
use crate::broker::acl::ClientAcl;
use crate::broker::message::Message;
use crate::broker::stats::Stats;
use crate::broker::topic::validate_topic_name;
use crate::protocol::decode::FrameRef;
use crate::protocol::{self, reason, Packet, Properties, Publish, QoS};
use crate::sink::SinkRecord;
use log::{debug, info};
use std::thread;

impl Connection {
    /// Resolve a v5 topic alias: set it when the PUBLISH carries a topic, use it when not.
    pub(super) fn resolve_topic_alias(&mut self, p: &mut Publish) -> Result<(), Exit> {
        let Some(alias) = p.properties.take_topic_alias() else {
            return Ok(());
        };
        if alias == 0 || alias > self.broker.config.limits.max_topic_alias {
            let message =
                format!("[MQTT-3.3.2-8] topic alias {alias} is 0 or above the maximum we allow");
            return Err(violation(reason::TOPIC_ALIAS_INVALID, message));
        }
        if p.topic.is_empty() {
            match self.topic_aliases.get(&alias) {
                Some(topic) => p.topic = topic.clone(),
                None => {
                    let message =
                        format!("topic alias {alias} used before it was set (MQTT 5.0 section 3.3.2.3.4: a Protocol Error)");
                    return Err(violation(reason::PROTOCOL_ERROR, message));
                }
            }
        } else {
            self.topic_aliases.insert(alias, p.topic.clone());
        }
        Ok(())
    }

    pub(super) fn on_publish(&mut self, mut p: Publish) -> Result<(), Exit> {
        if self.version.is_v5() {
            self.resolve_topic_alias(&mut p)?;
        }
        if !self.admit(&p.topic, &p.payload, &p.properties, p.qos, p.packet_id)? {
            return Ok(());
        }
        self.route_publish(p)
    }

    /// A PUBLISH still in the read buffer. When only the sink takes it (no subscription at
    /// all, not retained, QoS 0 or 1, messages not logged), it goes there straight from the
    /// buffer: the usual telemetry publish costs no allocation. Any other is copied out and
    /// handled as usual.
    #[inline(never)]
    pub(super) fn on_publish_in_place(
        &mut self,
        frame: FrameRef,
        received_at_ns: i64,
    ) -> Result<(), Exit> {
        self.received_at_ns = received_at_ns;
        let p = protocol::decode_publish_view(frame.header, frame.body, self.version)
            .map_err(violation_from)?;
        self.check_attached()?;
        if p.properties.topic_alias.is_some() {
            return self.on_publish(p.into_owned());
        }
        if !self.admit(p.topic, p.payload, &p.properties, p.qos, p.packet_id)? {
            return Ok(());
        }
        let sink_only = p.qos != QoS::ExactlyOnce
            && !p.retain
            && !self.broker.config.log.messages
            && !self.broker.router.has_subscriptions()
            && self.broker.forward().is_none_or(|f| !f.takes(p.topic));
        if !sink_only {
            return self.route_publish(p.into_owned());
        }
        let record = SinkRecord {
            topic: p.topic,
            payload: p.payload,
            received_at_ns,
        };
        match p.qos {
            // With sync persistence its PUBACK then waits for the sink's store record too.
            QoS::AtLeastOnce => self.broker.sink.submit_acknowledged(record),
            _ => self.broker.sink.submit(record),
        }
        match p.qos {
            QoS::AtLeastOnce => {
                let code = self.delivered_code(0);
                self.ack_durable(Packet::PubAck(ack(p.packet_id, code)))
            }
            _ => Ok(()),
        }
    }

    /// The checks every PUBLISH passes before it is routed. `Ok(false)`: refused, and answered
    /// where the protocol has an answer.
    pub(super) fn admit(
        &mut self,
        topic: &str,
        payload: &[u8],
        properties: &Properties,
        qos: QoS,
        packet_id: u16,
    ) -> Result<bool, Exit> {
        if self.version.is_v5() && !properties.subscription_identifiers.is_empty() {
            return Err(violation(
                reason::PROTOCOL_ERROR,
                "[MQTT-3.3.4-6] a PUBLISH from a client must not carry a subscription identifier",
            ));
        }
        if let Err(rule) = validate_topic_name(topic) {
            return Err(violation(reason::TOPIC_NAME_INVALID, rule));
        }
        let pause = self.rate_limiter.acquire_now(payload.len());
        if !pause.is_zero() {
            // Over its publish rate: stop reading from this client for a while, so TCP slows it
            // down and nothing it sent is dropped.
            read_scope::flush();
            thread::sleep(pause);
        }
        if !self.can_publish(topic) {
            // Dropped, as mosquitto does; v5 clients are told (0x87), v3 clients cannot be.
            self.denied += 1;
            if self.denied == 1 || self.denied % 1000 == 0 {
                info!(
                    "client {}: PUBLISH to {} denied by ACL ({} so far)",
                    self.client_id, topic, self.denied
                );
            }
            Stats::add(&self.broker.stats.publish_denied, 1);
            let code = if self.version.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            return match qos {
                QoS::AtMostOnce => Ok(()),
                QoS::AtLeastOnce => self.ack_durable(Packet::PubAck(ack(packet_id, code))),
                QoS::ExactlyOnce => self.ack_durable(Packet::PubRec(ack(packet_id, code))),
            }
            .map(|()| false);
        }
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
            // v5: payload declared UTF-8 but is not; refuse it with 0x99 (3.3.2.3.2).
            debug!(
                "client {}: PUBLISH on {} has a payload that is not UTF-8 as declared",
                self.client_id, topic
            );
            return match qos {
                QoS::AtMostOnce => Err(violation(
                    reason::PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8 as declared",
                )),
                QoS::AtLeastOnce => self.ack_durable(Packet::PubAck(ack(
                    packet_id,
                    reason::PAYLOAD_FORMAT_INVALID,
                ))),
                QoS::ExactlyOnce => self.ack_durable(Packet::PubRec(ack(
                    packet_id,
                    reason::PAYLOAD_FORMAT_INVALID,
                ))),
            }
            .map(|()| false);
        }
        // The dashboard's busiest topics: a sampled, bounded count (see `topic_rates.rs`).
        self.broker.topic_rates.note(topic);
        if let Some(p) = &self.broker.prefix_stats {
            p.count(&mut self.prefix, topic, topic.len() + payload.len());
        }
        Ok(true)
    }

    /// v5: tell the publisher when nobody was subscribed (0x10, a success code).
    pub(super) fn delivered_code(&self, delivered: usize) -> u8 {
        if self.version.is_v5() && delivered == 0 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        }
    }

    /// Route an admitted PUBLISH and acknowledge it.
    pub(super) fn route_publish(&mut self, p: Publish) -> Result<(), Exit> {
        let (qos, packet_id) = (p.qos, p.packet_id);
        let message = Message::new(
            p.topic,
            p.payload,
            qos,
            p.retain,
            p.properties,
            Some(self.client_id.clone()),
            self.received_at_ns,
        );
        match qos {
            QoS::AtMostOnce => {
                self.broker.publish(message);
                Ok(())
            }
            QoS::AtLeastOnce => {
                let delivered = self.broker.publish(message);
                self.ack_durable(Packet::PubAck(ack(
                    packet_id,
                    self.delivered_code(delivered),
                )))
            }
            QoS::ExactlyOnce => {
                let (new, pending) = {
                    let mut state = self.session().lock();
                    let pending = state.incoming_qos2_len();
                    (state.receive_qos2(packet_id), pending)
                };
                // v5 only: more unreleased QoS 2 messages than the Receive Maximum we announced
                // [MQTT-3.3.4-9]. 3.1.1 has no such limit (the packet id space bounds it).
                let receive_maximum = self.broker.config.limits.max_inflight as usize;
                if new && self.version.is_v5() && pending >= receive_maximum {
                    self.session().lock().release_qos2(packet_id);
                    return Err(violation(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "[MQTT-3.3.4-9] receive maximum exceeded",
                    ));
                }
                // [MQTT-4.3.3-2] route once; a resend before PUBREL is only acknowledged again.
                let delivered = if new {
                    let incoming = self.session().lock().incoming_record(packet_id);
                    self.broker.publish_exactly_once(message, incoming)
                } else {
                    debug!(
                        "client {}: duplicate QoS 2 PUBLISH {packet_id} not routed again",
                        self.client_id
                    );
                    1
                };
                self.ack_durable(Packet::PubRec(ack(
                    packet_id,
                    self.delivered_code(delivered),
                )))
            }
        }
    }

    /// ACL write access; clients never write to `$SYS` (the broker's own topics).
    pub(super) fn can_publish(&mut self, topic: &str) -> bool {
        if topic.starts_with("$SYS/") || topic == "$SYS" {
            return false;
        }
        self.client_acl().is_none_or(|acl| acl.can_publish(topic))
    }

    /// This client's ACL rules (None: no ACL file), rebuilt when the files were reloaded.
    pub(super) fn client_acl(&mut self) -> Option<&ClientAcl> {
        let generation = self.broker.security.generation();
        if self.acl.0 != generation {
            let acl = self
                .broker
                .security
                .current()
                .client_acl(&self.client_id, self.username.as_deref());
            self.acl = (generation, acl);
        }
        self.acl.1.as_ref()
    }
}
