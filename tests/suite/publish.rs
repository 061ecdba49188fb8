//! PUBLISH at QoS 0, 1 and 2 in both directions with the exact ack flows, QoS 2 exactly-once
//! when a publisher resends with DUP, and the per-client inflight window.

use crate::common;

use common::client::MqttClient;
use common::raw::{self, RawClient, ReadError};
use common::Broker;
use std::time::Duration;

#[test]
fn qos0_publish_is_delivered_at_qos0_without_packet_id() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "q0-sub");
    assert_eq!(sub.subscribe(1, &[("q/0", 2)]), vec![2]);
    let mut publisher = RawClient::connected(broker.addr(), "q0-pub");
    publisher.send(&raw::publish("q/0", b"zero", 0, 0, false, false));
    // [MQTT-4.3.1-1] QoS 0, DUP 0; [MQTT-2.3.1-5] no packet id.
    sub.expect_bytes(&raw::publish("q/0", b"zero", 0, 0, false, false));
    // The publisher gets no ack for QoS 0.
    publisher.ping();
}

#[test]
fn qos1_publish_gets_puback_and_is_delivered_with_qos1_flow() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "q1-sub");
    assert_eq!(sub.subscribe(1, &[("q/1", 1)]), vec![1]);
    let mut publisher = RawClient::connected(broker.addr(), "q1-pub");
    publisher.send(&raw::publish("q/1", b"one", 1, 0x0A0B, false, false));
    // [MQTT-4.3.2-2] PUBACK with the publisher's packet id.
    publisher.expect_bytes(&[0x40, 0x02, 0x0A, 0x0B]);
    let p = sub.expect_publish();
    assert_eq!(
        (
            p.topic.as_str(),
            p.qos,
            p.dup,
            p.retain,
            p.payload.as_slice()
        ),
        ("q/1", 1, false, false, &b"one"[..])
    );
    // [MQTT-2.3.1-1] non-zero packet id.
    assert_ne!(p.packet_id, 0);
    sub.send(&raw::puback(p.packet_id));
    sub.ping();
}

#[test]
fn qos2_publish_completes_pubrec_pubrel_pubcomp_in_both_directions() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "q2-sub");
    assert_eq!(sub.subscribe(1, &[("q/2", 2)]), vec![2]);
    let mut publisher = RawClient::connected(broker.addr(), "q2-pub");
    // Broker as receiver [MQTT-4.3.3-2]: PUBREC, then PUBCOMP for our PUBREL, same packet id.
    publisher.send(&raw::publish("q/2", b"two", 2, 77, false, false));
    publisher.expect_bytes(&[0x50, 0x02, 0x00, 77]);
    publisher.send(&raw::pubrel(77));
    publisher.expect_bytes(&[0x70, 0x02, 0x00, 77]);
    // Broker as sender [MQTT-4.3.3-1]: PUBLISH QoS 2 DUP 0, PUBREL (flags 0010) for our PUBREC.
    let p = sub.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.qos, p.dup, p.payload.as_slice()),
        ("q/2", 2, false, &b"two"[..])
    );
    assert_ne!(p.packet_id, 0);
    sub.send(&raw::pubrec(p.packet_id));
    let id = p.packet_id.to_be_bytes();
    sub.expect_bytes(&[0x62, 0x02, id[0], id[1]]);
    sub.send(&raw::pubcomp(p.packet_id));
    sub.ping();
}

#[test]
fn real_client_qos_0_1_2_round_trip() {
    let broker = Broker::start();
    let mut sub = MqttClient::connect(&broker, "rt-sub");
    sub.subscribe("rt/#", 2);
    let mut publisher = MqttClient::connect(&broker, "rt-pub");
    for qos in 0..=2u8 {
        let topic = format!("rt/{qos}");
        publisher.publish(&topic, qos, false, format!("payload {qos}").as_bytes());
        let p = sub.recv_publish();
        assert_eq!(p.topic, topic);
        assert_eq!(p.qos as u8, qos);
        assert_eq!(&p.payload[..], format!("payload {qos}").as_bytes());
    }
}

#[test]
fn qos2_publish_resent_with_dup_before_pubrel_is_delivered_exactly_once() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "eo-sub");
    assert_eq!(sub.subscribe(1, &[("eo/#", 2)]), vec![2]);
    let mut publisher = RawClient::connected(broker.addr(), "eo-pub");
    publisher.send(&raw::publish("eo/x", b"exactly-once", 2, 5, false, false));
    publisher.expect_bytes(&raw::pubrec(5));
    // The publisher did not see the PUBREC (as far as it knows) and resends with DUP:
    // [MQTT-4.3.3-2] the broker answers PUBREC again and must not deliver a second copy.
    publisher.send(&raw::publish("eo/x", b"exactly-once", 2, 5, false, true));
    publisher.expect_bytes(&raw::pubrec(5));
    publisher.send(&raw::pubrel(5));
    publisher.expect_bytes(&raw::pubcomp(5));
    // After PUBCOMP the same packet id is a new message [MQTT-4.3.3-2].
    publisher.publish_acked("eo/end", b"next", 2, 5, false);

    let first = sub.expect_publish();
    assert_eq!(
        (first.topic.as_str(), first.payload.as_slice()),
        ("eo/x", &b"exactly-once"[..])
    );
    sub.ack(&first);
    let second = sub.expect_publish();
    assert_eq!(
        (second.topic.as_str(), second.payload.as_slice()),
        ("eo/end", &b"next"[..]),
        "the DUP resend was delivered again"
    );
    sub.ack(&second);
}

#[test]
fn qos2_publish_resent_after_reconnect_before_pubrel_is_delivered_exactly_once() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "eo2-sub");
    assert_eq!(sub.subscribe(1, &[("eo2/#", 2)]), vec![2]);
    let (mut publisher, _) =
        RawClient::connect_mqtt(broker.addr(), &raw::Connect::persistent("eo2-pub"));
    publisher.send(&raw::publish("eo2/x", b"once", 2, 9, false, false));
    publisher.expect_bytes(&raw::pubrec(9));
    publisher.drop_connection();
    // [MQTT-4.4.0-1] the client resends its unacknowledged PUBLISH on reconnect (DUP set); the
    // broker's session remembers packet id 9 until PUBREL.
    let (mut publisher, present) =
        RawClient::connect_mqtt(broker.addr(), &raw::Connect::persistent("eo2-pub"));
    assert!(present);
    publisher.send(&raw::publish("eo2/x", b"once", 2, 9, false, true));
    publisher.expect_bytes(&raw::pubrec(9));
    publisher.send(&raw::pubrel(9));
    publisher.expect_bytes(&raw::pubcomp(9));
    publisher.publish_acked("eo2/end", b"end", 2, 10, false);

    let first = sub.expect_publish();
    assert_eq!(first.topic, "eo2/x");
    sub.ack(&first);
    let second = sub.expect_publish();
    assert_eq!(
        second.topic, "eo2/end",
        "the resend after reconnect was delivered again"
    );
    sub.ack(&second);
}

#[test]
fn inflight_window_limits_unacknowledged_deliveries_until_acked() {
    let broker = Broker::with_config("[limits]\nmax_inflight = 2\n");
    let mut sub = RawClient::connected(broker.addr(), "window-sub");
    assert_eq!(sub.subscribe(1, &[("w/#", 1)]), vec![1]);
    let mut publisher = MqttClient::connect(&broker, "window-pub");
    for i in 0..5 {
        publisher.publish(&format!("w/{i}"), 1, false, b"m");
    }
    // The broker has taken all 5 (PUBACKed to the publisher); the subscriber acks none yet.
    let a = sub.expect_publish();
    let b = sub.expect_publish();
    assert_eq!((a.topic.as_str(), b.topic.as_str()), ("w/0", "w/1"));
    // Absence is the behaviour here: with 2 unacknowledged, no third PUBLISH may be sent.
    match sub.read_packet(Duration::from_millis(700)) {
        Err(ReadError::Timeout) => {}
        other => {
            panic!("a third message was sent with 2 unacknowledged (max_inflight = 2): {other:?}")
        }
    }
    // Each ack opens exactly one slot.
    sub.send(&raw::puback(a.packet_id));
    let c = sub.expect_publish();
    assert_eq!(c.topic, "w/2");
    match sub.read_packet(Duration::from_millis(500)) {
        Err(ReadError::Timeout) => {}
        other => panic!("more than one message sent for one ack: {other:?}"),
    }
    sub.send(&raw::puback(b.packet_id));
    sub.send(&raw::puback(c.packet_id));
    let d = sub.expect_publish();
    let e = sub.expect_publish();
    assert_eq!((d.topic.as_str(), e.topic.as_str()), ("w/3", "w/4"));
    sub.send(&raw::puback(d.packet_id));
    sub.send(&raw::puback(e.packet_id));
    sub.ping();
}

#[test]
fn publish_to_topic_without_subscribers_is_acked_and_dropped() {
    let broker = Broker::start();
    let mut publisher = RawClient::connected(broker.addr(), "nobody");
    publisher.publish_acked("no/one/listens", b"x", 1, 1, false);
    publisher.publish_acked("no/one/listens", b"x", 2, 2, false);
    publisher.ping();
}

#[test]
fn default_inflight_window_is_20() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "window20-sub");
    assert_eq!(sub.subscribe(1, &[("w20/#", 1)]), vec![1]);
    let mut publisher = MqttClient::connect(&broker, "window20-pub");
    for i in 0..25 {
        publisher.publish(&format!("w20/{i}"), 1, false, b"m");
    }
    let first: Vec<_> = (0..20).map(|_| sub.expect_publish()).collect();
    match sub.read_packet(Duration::from_millis(500)) {
        Err(ReadError::Timeout) => {}
        other => panic!("a 21st unacknowledged message was sent: {other:?}"),
    }
    for p in &first {
        sub.send(&raw::puback(p.packet_id));
    }
    for i in 20..25 {
        let p = sub.expect_publish();
        assert_eq!(p.topic, format!("w20/{i}"));
        sub.send(&raw::puback(p.packet_id));
    }
    sub.ping();
}

#[test]
fn publish_with_four_byte_remaining_length_is_delivered_intact() {
    // Remaining lengths above 2,097,151 need all 4 bytes (section 2.2.3).
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "big-sub");
    assert_eq!(sub.subscribe(1, &[("big", 1)]), vec![1]);
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let packet = raw::publish("big", &payload, 1, 1, false, false);
    assert_eq!(
        packet[1..5].iter().filter(|b| *b & 0x80 != 0).count(),
        3,
        "4-byte remaining length"
    );
    let mut publisher = RawClient::connected(broker.addr(), "big-pub");
    publisher.send(&packet);
    publisher.expect_bytes(&raw::puback(1));
    let p = sub.expect_publish();
    assert_eq!(p.payload.len(), payload.len());
    assert!(p.payload == payload, "payload corrupted in transit");
    sub.send(&raw::puback(p.packet_id));
}

#[test]
fn mqtt311_publisher_may_hold_more_unreleased_qos2_messages_than_max_inflight() {
    // Receive Maximum is an MQTT 5 concept [MQTT-3.3.4-9 (v5)]; a 3.1.1 publisher with 50 QoS 2
    // messages awaiting PUBREL (limits.max_inflight is 20) must not be disconnected.
    let broker = Broker::start();
    let mut publisher = RawClient::connected(broker.addr(), "q2-window");
    for id in 1..=50u16 {
        publisher.send(&raw::publish("q2/x", b"m", 2, id, false, false));
    }
    for id in 1..=50u16 {
        publisher.expect_bytes(&raw::pubrec(id));
    }
    for id in 1..=50u16 {
        publisher.send(&raw::pubrel(id));
        publisher.expect_bytes(&raw::pubcomp(id));
    }
}

/// Names of the broker's threads, from /proc.
fn thread_names(broker: &Broker) -> Vec<String> {
    let dir = format!("/proc/{}/task", broker.pid());
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn subscriber_that_stops_reading_then_resumes_gets_every_message_in_order() {
    // [MQTT-4.6.0-6]: messages to a subscriber keep the order they were published in, also when
    // its socket fills up and the broker's writing moves to a blocking writer thread and back.
    const BIG: usize = 400;
    const SMALL: usize = 200;
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "stuck-sub");
    assert_eq!(sub.subscribe(1, &[("stuck/#", 1)]), vec![1]);
    let mut publisher = RawClient::connected(broker.addr(), "stuck-pub");

    // 400 x 32 KiB at QoS 0 (12.8 MiB, more than the socket buffers hold) while `sub` reads
    // nothing; `outbound_queue` (1024) is not reached, so nothing may be dropped.
    let mut payload = vec![b'x'; 32 * 1024];
    for i in 0..BIG {
        payload[..4].copy_from_slice(&(i as u32).to_be_bytes());
        publisher.send(&raw::publish("stuck/big", &payload, 0, 0, false, false));
    }
    publisher.ping(); // the broker has handled every PUBLISH before the PINGREQ
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !thread_names(&broker).iter().any(|n| n.ends_with("-w")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no writer thread took over the full socket: {:?}",
            thread_names(&broker)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The stuck client costs no CPU: the writer blocks on the socket, nobody spins.
    let used = broker.cpu_ticks_over(Duration::from_millis(500));
    assert!(
        used < 10,
        "broker used {used} ticks in 0.5 s while a client was stuck"
    );

    // QoS 1 messages queued behind the QoS 0 backlog, then sent by the direct path again.
    for i in 0..SMALL {
        let id = i as u16 + 1;
        publisher.publish_acked("stuck/small", &(i as u32).to_be_bytes(), 1, id, false);
    }
    for i in 0..BIG {
        let p = sub.expect_publish();
        assert_eq!(p.topic, "stuck/big");
        assert_eq!(p.payload.len(), 32 * 1024);
        assert_eq!(
            p.payload[..4],
            (i as u32).to_be_bytes(),
            "big message {i} out of order"
        );
    }
    for i in 0..SMALL {
        let p = sub.expect_publish();
        assert_eq!((p.topic.as_str(), p.qos), ("stuck/small", 1));
        assert_eq!(
            p.payload,
            (i as u32).to_be_bytes(),
            "small message {i} out of order"
        );
        sub.ack(&p);
    }
    sub.expect_silence(Duration::from_millis(200));
}
