//! Persistent sessions (clean session = 0): stored subscriptions, QoS 1/2 messages queued while
//! offline, resend of unacknowledged messages with DUP on reconnect, and the bounded queue.

use crate::common;

use common::client::MqttClient;
use common::raw::{self, Connect, RawClient};
use common::Broker;
use std::time::Duration;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect `id` with clean session 0, subscribe `filter` at QoS 2 and disconnect cleanly.
fn park_persistent_subscriber(broker: &Broker, id: &str, filter: &str) {
    let (mut c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent(id));
    // [MQTT-3.2.2-3] no stored session yet.
    assert!(!present, "session present on first connect of {id}");
    assert_eq!(c.subscribe(1, &[(filter, 2)]), vec![2]);
    c.send(&raw::disconnect());
    c.read_until_closed(CLOSE_TIMEOUT);
}

#[test]
fn persistent_session_keeps_subscriptions_and_queues_qos1_and_qos2_while_offline() {
    let broker = Broker::start();
    park_persistent_subscriber(&broker, "offline-sub", "off/#");
    let mut publisher = MqttClient::connect(&broker, "offline-pub");
    publisher.publish("off/1", 1, false, b"first");
    publisher.publish("off/2", 2, false, b"second");
    publisher.publish("off/3", 1, false, b"third");

    let (mut sub, present) =
        RawClient::connect_mqtt(broker.addr(), &Connect::persistent("offline-sub"));
    // [MQTT-3.2.2-2] stored session -> session present 1.
    assert!(present, "session present must be 1 for a stored session");
    // [MQTT-3.1.2-5] messages that arrived while offline, in order [MQTT-4.6.0-6], without
    // subscribing again.
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = sub.expect_publish();
        got.push((p.topic.clone(), p.qos, p.payload.clone()));
        sub.ack(&p);
    }
    assert_eq!(
        got,
        vec![
            ("off/1".to_string(), 1, b"first".to_vec()),
            ("off/2".to_string(), 2, b"second".to_vec()),
            ("off/3".to_string(), 1, b"third".to_vec()),
        ]
    );
    // The subscription itself survived too: live messages still arrive.
    publisher.publish("off/live", 1, false, b"live");
    let p = sub.expect_publish();
    assert_eq!(p.topic, "off/live");
    sub.ack(&p);
}

#[test]
fn persistent_session_survives_socket_drop_as_well_as_disconnect() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("dropper"));
    assert_eq!(c.subscribe(1, &[("drop/#", 1)]), vec![1]);
    c.drop_connection();
    let mut publisher = MqttClient::connect(&broker, "dropper-pub");
    // The broker may not have noticed the drop yet; either way the message must reach the session.
    publisher.publish("drop/x", 1, false, b"kept");
    let (mut c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("dropper"));
    assert!(present);
    let p = c.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("drop/x", &b"kept"[..])
    );
    c.ack(&p);
}

#[test]
fn clean_session_discards_the_stored_session() {
    let broker = Broker::start();
    park_persistent_subscriber(&broker, "cleaner", "clean/#");
    // [MQTT-3.1.2-6] clean session 1 discards the previous session; [MQTT-3.2.2-1] SP = 0.
    let (mut c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::new("cleaner"));
    assert!(!present);
    let mut publisher = MqttClient::connect(&broker, "cleaner-pub");
    publisher.publish("clean/x", 1, false, b"old subscription");
    assert_eq!(c.subscribe(2, &[("sentinel", 1)]), vec![1]);
    publisher.publish("sentinel", 1, false, b"s");
    let p = c.expect_publish();
    assert_eq!(
        p.topic, "sentinel",
        "the discarded subscription still delivered: {p:?}"
    );
    c.ack(&p);
    c.send(&raw::disconnect());
    c.read_until_closed(CLOSE_TIMEOUT);
    // A clean session is not stored after disconnect either.
    let (_c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("cleaner"));
    assert!(!present, "a clean session was kept after disconnect");
}

#[test]
fn unacknowledged_qos1_message_is_resent_with_dup_and_same_packet_id_on_reconnect() {
    let broker = Broker::start();
    let (mut sub, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("resend1"));
    assert_eq!(sub.subscribe(1, &[("re/#", 1)]), vec![1]);
    let mut publisher = MqttClient::connect(&broker, "resend1-pub");
    publisher.publish("re/1", 1, false, b"unacked");
    let first = sub.expect_publish();
    assert!(!first.dup);
    sub.drop_connection(); // never PUBACKed

    let (mut sub, present) =
        RawClient::connect_mqtt(broker.addr(), &Connect::persistent("resend1"));
    assert!(present);
    // [MQTT-4.4.0-1] resent with its original packet id; [MQTT-3.3.1-1] DUP set.
    let again = sub.expect_publish();
    assert_eq!(
        (
            again.topic.as_str(),
            again.packet_id,
            again.dup,
            again.payload.as_slice()
        ),
        ("re/1", first.packet_id, true, &b"unacked"[..])
    );
    sub.ack(&again);
    sub.ping();
}

#[test]
fn unacknowledged_qos2_message_is_resent_with_dup_on_reconnect() {
    let broker = Broker::start();
    let (mut sub, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("resend2"));
    assert_eq!(sub.subscribe(1, &[("re2/#", 2)]), vec![2]);
    let mut publisher = MqttClient::connect(&broker, "resend2-pub");
    publisher.publish("re2/1", 2, false, b"unrec");
    let first = sub.expect_publish();
    sub.drop_connection(); // never PUBRECed

    let (mut sub, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("resend2"));
    let again = sub.expect_publish();
    assert_eq!(
        (again.packet_id, again.dup, again.qos),
        (first.packet_id, true, 2)
    );
    sub.ack(&again);
    sub.ping();
}

#[test]
fn unacknowledged_pubrel_is_resent_on_reconnect() {
    let broker = Broker::start();
    let (mut sub, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("resend-rel"));
    assert_eq!(sub.subscribe(1, &[("rel/#", 2)]), vec![2]);
    let mut publisher = MqttClient::connect(&broker, "resend-rel-pub");
    publisher.publish("rel/1", 2, false, b"m");
    let p = sub.expect_publish();
    sub.send(&raw::pubrec(p.packet_id));
    sub.expect_bytes(&raw::pubrel(p.packet_id));
    sub.drop_connection(); // never PUBCOMPed

    let (mut sub, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("resend-rel"));
    // [MQTT-4.4.0-1] the PUBREL is resent (not the PUBLISH: [MQTT-4.3.3-1]).
    sub.expect_bytes(&raw::pubrel(p.packet_id));
    sub.send(&raw::pubcomp(p.packet_id));
    sub.ping();
}

#[test]
fn offline_queue_is_bounded_by_max_queued_and_overflow_is_logged() {
    let broker = Broker::with_config("[limits]\nmax_inflight = 1\nmax_queued = 3\n");
    park_persistent_subscriber(&broker, "overflow-sub", "ov/#");
    let mark = broker.log_mark();
    let mut publisher = MqttClient::connect(&broker, "overflow-pub");
    for i in 0..10 {
        publisher.publish(&format!("ov/{i}"), 1, false, b"m");
    }
    // Never silent: the drop is logged with the client and the queue.
    broker.wait_for_log_after(mark, &["overflow-sub", "queue"], Duration::from_secs(5));

    let (mut sub, present) =
        RawClient::connect_mqtt(broker.addr(), &Connect::persistent("overflow-sub"));
    assert!(present);
    let mut delivered = Vec::new();
    loop {
        match sub.read_packet(Duration::from_millis(700)) {
            Ok(p) => {
                let p = p.publish();
                sub.ack(&p);
                delivered.push(p.topic);
            }
            Err(raw::ReadError::Timeout) => break,
            Err(e) => panic!("connection failed while draining the queue: {e:?}"),
        }
        assert!(
            delivered.len() <= 10,
            "more messages than were published: {delivered:?}"
        );
    }
    // At most max_queued (plus the one inflight slot) survived; at least some did.
    assert!(
        (3..=4).contains(&delivered.len()),
        "expected 3 or 4 of 10 messages kept with max_queued = 3, max_inflight = 1: {delivered:?}"
    );
}
