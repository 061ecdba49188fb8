//! The `in` direction: subscribe on the remote (v5: No Local, Retain As Published; v3: the
//! bridge bit asks the same of a broker that knows it), and publish what arrives into the local
//! broker's pipeline under `local_username`'s ACL. The caller acknowledges to the remote only
//! after `Broker::wait_durable`, so an acknowledged message is safe locally (subscribers'
//! queues, retained store, the sink's journal record, other bridges' queues).

use super::config::TopicLine;
use super::running::Bridge;
use super::stats::BridgeStats;
use crate::broker::message::{now_ns, Message};
use crate::protocol::{
    Ack, Packet, Properties, Publish, QoS, Subscribe, SubscribeFilter, SubscriptionOptions,
};
use log::{debug, info, warn};

/// The SUBSCRIBE for every `in` line, None when there is none.
pub fn subscribe(lines: &[TopicLine]) -> Option<Packet> {
    let filters: Vec<SubscribeFilter> = lines
        .iter()
        .filter(|l| l.direction.is_in())
        .map(|l| SubscribeFilter {
            filter: l.remote_filter(),
            options: SubscriptionOptions {
                qos: l.qos,
                no_local: true,
                retain_as_published: true,
                retain_handling: 0,
            },
        })
        .collect();
    (!filters.is_empty()).then(|| {
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters,
            properties: Properties::default(),
        })
    })
}

/// A PUBLISH from the remote: route it locally; returns the acknowledgement to send once the
/// local side is durable.
pub fn on_publish(bridge: &Bridge, mut p: Publish) -> Option<Packet> {
    let ack = match p.qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => Some(Packet::PubAck(Ack::new(p.packet_id))),
        QoS::ExactlyOnce => Some(Packet::PubRec(Ack::new(p.packet_id))),
    };
    // [MQTT-4.3.3-2] a QoS 2 resend before PUBREL is acknowledged again, not routed again.
    if p.qos == QoS::ExactlyOnce && !bridge.queue.incoming_put(p.packet_id) {
        debug!(
            "bridge {}: duplicate QoS 2 PUBLISH {} not routed again",
            bridge.config.connection, p.packet_id
        );
        return ack;
    }
    let Some(topic) = bridge
        .lines
        .iter()
        .filter(|l| l.direction.is_in())
        .find_map(|l| l.to_local(&p.topic))
    else {
        debug!(
            "bridge {}: PUBLISH on {} matches no `in` topic line; not published locally",
            bridge.config.connection, p.topic
        );
        return ack;
    };
    let allowed = bridge
        .broker
        .security
        .current()
        .client_acl(
            &bridge.local_clientid,
            bridge.config.local_username.as_deref(),
        )
        .is_none_or(|acl| acl.can_publish(&topic));
    if !allowed {
        let n = bridge
            .stats
            .denied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if n == 1 || n % 1000 == 0 {
            info!(
                "bridge {}: message on {topic} from the remote denied by the ACL of {} ({n} so \
                 far)",
                bridge.config.connection,
                bridge
                    .config
                    .local_username
                    .as_deref()
                    .unwrap_or("(anonymous)")
            );
        }
        return ack;
    }
    // What only meant something on the remote link goes.
    p.properties.subscription_identifiers.clear();
    p.properties.topic_alias = None;
    let message = Message::new(
        topic.into(),
        p.payload,
        p.qos,
        p.retain,
        p.properties,
        Some(bridge.local_clientid.clone()),
        now_ns(),
    );
    bridge.broker.publish(message);
    BridgeStats::add(&bridge.stats.received, 1);
    ack
}

/// PUBREL from the remote: forget the id, answer PUBCOMP once that is durable.
pub fn on_pubrel(bridge: &Bridge, a: &Ack) -> Packet {
    bridge.queue.incoming_release(a.packet_id);
    Packet::PubComp(Ack::new(a.packet_id))
}

/// SUBACK: log the filters the remote refused.
pub fn on_suback(bridge: &Bridge, codes: &[u8]) {
    let lines: Vec<&TopicLine> = bridge
        .lines
        .iter()
        .filter(|l| l.direction.is_in())
        .collect();
    let granted = codes.iter().filter(|c| **c < 0x80).count();
    info!(
        "bridge {}: subscribed on the remote to {granted} of {} `in` filters",
        bridge.config.connection,
        lines.len()
    );
    for (line, code) in lines.iter().zip(codes) {
        if *code >= 0x80 {
            warn!(
                "bridge {}: the remote refused the subscription to {} (code {code:#04x})",
                bridge.config.connection,
                line.remote_filter()
            );
        }
    }
}
