//! MQTT 5.0 subscriptions: subscription options (No Local, Retain As Published, Retain
//! Handling), Subscription Identifiers, shared subscriptions (v5 and v3.1.1) and mixed protocol
//! versions.

use crate::common;
use crate::common::codec as v5_common;

use bytes::Bytes;
use common::Broker;
use mqflux::protocol::{reason, Packet, Properties, ProtocolVersion, QoS, SubscriptionOptions};
use std::time::{Duration, Instant};
use v5_common::{connect_packet, payload_str, sub_options, RawClient, WAIT};

fn props() -> Properties {
    Properties::default()
}

fn with_sub_id(id: u32) -> Properties {
    Properties {
        subscription_identifiers: vec![id],
        ..Default::default()
    }
}

fn opts(
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    retain_handling: u8,
) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local,
        retain_as_published,
        retain_handling,
    }
}

// ---------------------------------------------------------------------------------------------
// Subscription options
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.8.3-3] with No Local the broker does not forward a client's own publishes to it;
/// other clients' publishes still arrive, and a subscription without No Local gets both.
#[test]
fn no_local_subscription_does_not_receive_own_publishes() {
    let broker = Broker::start();
    let mut a = RawClient::connect_v5(broker.port, "nl-a", props());
    a.subscribe_with(&[("nl/t", opts(QoS::AtLeastOnce, true, false, 0))], props());
    let mut b = RawClient::connect_v5(broker.port, "nl-b", props());
    b.subscribe("nl/t", QoS::AtLeastOnce);

    a.publish("nl/t", "from a", QoS::AtLeastOnce);
    b.publish("nl/t", "from b", QoS::AtLeastOnce);

    let m = a.expect_publish();
    assert_eq!(payload_str(&m), "from b", "a must not get its own message");
    a.puback(m.packet_id);
    a.expect_no_publish(Duration::from_millis(200));
    let got: Vec<String> = (0..2)
        .map(|_| {
            let m = b.expect_publish();
            b.puback(m.packet_id);
            payload_str(&m).to_string()
        })
        .collect();
    assert_eq!(got, ["from a", "from b"]);
}

/// [MQTT-3.3.1-12] Retain As Published 1 keeps the RETAIN flag of a live retained publish;
/// [MQTT-3.3.1-13] with 0 it is cleared. Retained messages sent because of a new subscription
/// always have RETAIN 1 [MQTT-3.3.1-9 (v5)].
#[test]
fn retain_as_published_keeps_the_retain_flag_and_default_clears_it() {
    let broker = Broker::start();
    let mut rap = RawClient::connect_v5(broker.port, "rap-1", props());
    rap.subscribe_with(
        &[("rap/t", opts(QoS::AtLeastOnce, false, true, 0))],
        props(),
    );
    let mut plain = RawClient::connect_v5(broker.port, "rap-0", props());
    plain.subscribe("rap/t", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "rap-pub", props());
    publ.publish_with("rap/t", b"r", QoS::AtLeastOnce, true, props());
    publ.publish_with("rap/t", b"n", QoS::AtLeastOnce, false, props());

    let m = rap.expect_publish();
    assert!(m.retain, "retain as published");
    let m2 = rap.expect_publish();
    assert!(!m2.retain);
    let m = plain.expect_publish();
    assert!(!m.retain, "RETAIN cleared without retain as published");

    let mut late = RawClient::connect_v5(broker.port, "rap-late", props());
    late.subscribe("rap/t", QoS::AtLeastOnce);
    let m = late.expect_publish();
    assert!(m.retain, "retained message sent at subscribe has RETAIN 1");
    assert_eq!(payload_str(&m), "r");
}

fn retained_setup(broker: &Broker, topic: &str) {
    let mut publ = RawClient::connect_v5(broker.port, &format!("{topic}-pub"), props());
    publ.publish_with(topic, b"kept", QoS::AtLeastOnce, true, props());
}

/// [MQTT-3.3.1-9 (v5)] Retain Handling 0: retained messages are sent at every subscribe, also
/// when the subscription already exists.
#[test]
fn retain_handling_0_sends_retained_messages_on_every_subscribe() {
    let broker = Broker::start();
    retained_setup(&broker, "rh0/t");
    let mut c = RawClient::connect_v5(broker.port, "rh0", props());
    for _ in 0..2 {
        c.subscribe_with(
            &[("rh0/t", opts(QoS::AtLeastOnce, false, false, 0))],
            props(),
        );
        let m = c.expect_publish();
        assert!(m.retain);
        assert_eq!(payload_str(&m), "kept");
        c.puback(m.packet_id);
    }
}

/// [MQTT-3.3.1-10] Retain Handling 1: retained messages only when the subscription is new, not
/// when it replaces an existing one.
#[test]
fn retain_handling_1_sends_retained_messages_only_for_a_new_subscription() {
    let broker = Broker::start();
    retained_setup(&broker, "rh1/t");
    let mut c = RawClient::connect_v5(broker.port, "rh1", props());
    c.subscribe_with(
        &[("rh1/t", opts(QoS::AtLeastOnce, false, false, 1))],
        props(),
    );
    let m = c.expect_publish();
    assert_eq!(payload_str(&m), "kept");
    c.puback(m.packet_id);
    c.subscribe_with(
        &[("rh1/t", opts(QoS::AtLeastOnce, false, false, 1))],
        props(),
    );
    c.expect_no_publish(Duration::from_millis(300));
}

/// [MQTT-3.3.1-11] Retain Handling 2: retained messages are never sent at subscribe; live
/// messages still are.
#[test]
fn retain_handling_2_never_sends_retained_messages() {
    let broker = Broker::start();
    retained_setup(&broker, "rh2/t");
    let mut c = RawClient::connect_v5(broker.port, "rh2", props());
    c.subscribe_with(
        &[("rh2/t", opts(QoS::AtLeastOnce, false, false, 2))],
        props(),
    );
    c.expect_no_publish(Duration::from_millis(300));
    let mut publ = RawClient::connect_v5(broker.port, "rh2-live", props());
    publ.publish("rh2/t", "live", QoS::AtLeastOnce);
    assert_eq!(payload_str(&c.expect_publish()), "live");
}

/// Section 3.8.3.1: Retain Handling 3 is a protocol error (reserved value).
#[test]
fn retain_handling_3_is_a_protocol_error() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "rh3", props());
    // SUBSCRIBE id 1, no properties, filter "t", options 0b0011_0000 (retain handling 3).
    c.send_bytes(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b't', 0x30]);
    match c.try_recv(WAIT) {
        Ok(Packet::Disconnect(d)) => assert!(
            d.reason_code == reason::PROTOCOL_ERROR || d.reason_code == reason::MALFORMED_PACKET,
            "{d:?}"
        ),
        other => panic!("expected DISCONNECT 0x81/0x82, got {other:?}"),
    }
    c.expect_closed();
}

// ---------------------------------------------------------------------------------------------
// Subscription identifiers
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.3.4-3 (v5 3.8.2.1.2)] a PUBLISH matching a subscription made with a Subscription
/// Identifier carries it; one without an identifier carries none; retained messages sent at
/// subscribe carry it too.
#[test]
fn subscription_identifier_is_sent_with_matching_publishes() {
    let broker = Broker::start();
    retained_setup(&broker, "sid/ret");
    let mut c = RawClient::connect_v5(broker.port, "sid", props());
    c.subscribe_with(
        &[("sid/ret", sub_options(QoS::AtLeastOnce))],
        with_sub_id(42),
    );
    let m = c.expect_publish();
    assert!(m.retain);
    assert_eq!(m.properties.subscription_identifiers, vec![42]);
    c.puback(m.packet_id);

    c.subscribe_with(&[("sid/plain", sub_options(QoS::AtLeastOnce))], props());
    let mut publ = RawClient::connect_v5(broker.port, "sid-pub", props());
    publ.publish("sid/ret", "live", QoS::AtLeastOnce);
    publ.publish("sid/plain", "plain", QoS::AtLeastOnce);
    let m = c.expect_publish();
    assert_eq!(payload_str(&m), "live");
    assert_eq!(m.properties.subscription_identifiers, vec![42]);
    let m = c.expect_publish();
    assert_eq!(payload_str(&m), "plain");
    assert!(m.properties.subscription_identifiers.is_empty());
}

/// [MQTT-3.3.4-4/5 (v5)] one copy for overlapping subscriptions carries the identifiers of all
/// matching subscriptions that have one.
#[test]
fn overlapping_subscriptions_deliver_one_copy_with_all_identifiers() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sid-overlap", props());
    c.subscribe_with(&[("ov/+", sub_options(QoS::AtLeastOnce))], with_sub_id(1));
    c.subscribe_with(&[("ov/#", sub_options(QoS::AtMostOnce))], with_sub_id(2));
    let mut publ = RawClient::connect_v5(broker.port, "sid-overlap-pub", props());
    publ.publish("ov/x", "once", QoS::AtLeastOnce);
    let m = c.expect_publish();
    let mut ids = m.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(
        m.qos,
        QoS::AtLeastOnce,
        "highest granted QoS of the overlapping subscriptions"
    );
    c.puback(m.packet_id);
    c.expect_no_publish(Duration::from_millis(200));
}

/// Section 3.8.2.1.2: resubscribing replaces the subscription, including its identifier.
#[test]
fn resubscribing_replaces_the_subscription_identifier() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sid-replace", props());
    c.subscribe_with(&[("rp/t", sub_options(QoS::AtLeastOnce))], with_sub_id(5));
    c.subscribe_with(&[("rp/t", sub_options(QoS::AtLeastOnce))], with_sub_id(6));
    let mut publ = RawClient::connect_v5(broker.port, "sid-replace-pub", props());
    publ.publish("rp/t", "x", QoS::AtLeastOnce);
    let m = c.expect_publish();
    assert_eq!(m.properties.subscription_identifiers, vec![6]);
}

/// Section 3.8.2.1.2: Subscription Identifier 0 is a protocol error (DISCONNECT 0x82).
#[test]
fn subscription_identifier_0_is_a_protocol_error() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sid0", props());
    // SUBSCRIBE id 1, properties [0x0B 0x00], filter "t", QoS 0.
    c.send_bytes(&[
        0x82, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b't', 0x00,
    ]);
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// [MQTT-3.3.4-6] a PUBLISH from a client must not carry a Subscription Identifier: 0x82.
#[test]
fn publish_from_client_with_subscription_identifier_is_a_protocol_error() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sid-pub-bad", props());
    c.publish_with("x", b"x", QoS::AtMostOnce, false, with_sub_id(3));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

// ---------------------------------------------------------------------------------------------
// Shared subscriptions
// ---------------------------------------------------------------------------------------------

/// Receive `n` QoS 1 PUBLISHes, acknowledging each; returns the payloads.
fn take_acked(c: &mut RawClient, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let m = c.expect_publish();
            c.puback(m.packet_id);
            payload_str(&m).to_string()
        })
        .collect()
}

fn shared_round_robin(version: ProtocolVersion) {
    let broker = Broker::start();
    let connect = |id: &str| match version {
        ProtocolVersion::V5 => RawClient::connect_v5(broker.port, id, props()),
        _ => RawClient::connect_v311(broker.port, id),
    };
    let mut a = connect("rr-a");
    let mut b = connect("rr-b");
    a.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    b.subscribe("$share/workers/jobs/#", QoS::AtLeastOnce);
    // A plain subscriber and another group each get every message.
    let mut all = connect("rr-all");
    all.subscribe("jobs/#", QoS::AtLeastOnce);
    let mut other_group = connect("rr-other");
    other_group.subscribe("$share/audit/jobs/#", QoS::AtLeastOnce);

    let mut publ = connect("rr-pub");
    for i in 0..6 {
        publ.publish(&format!("jobs/{i}"), &i.to_string(), QoS::AtLeastOnce);
    }
    let got_a = take_acked(&mut a, 3);
    let got_b = take_acked(&mut b, 3);
    a.ping();
    b.ping();
    a.expect_no_publish(Duration::from_millis(200));
    b.expect_no_publish(Duration::ZERO);
    let mut both: Vec<String> = got_a.iter().chain(&got_b).cloned().collect();
    both.sort();
    assert_eq!(
        both,
        ["0", "1", "2", "3", "4", "5"],
        "a {got_a:?} b {got_b:?}"
    );
    // Round-robin: the two members alternate.
    let parity = |v: &[String]| {
        v.iter()
            .map(|s| s.parse::<u8>().unwrap_or(0) % 2)
            .collect::<Vec<_>>()
    };
    assert!(
        parity(&got_a).iter().all(|p| *p == parity(&got_a)[0]),
        "members alternate: a {got_a:?} b {got_b:?}"
    );
    assert_eq!(take_acked(&mut all, 6).len(), 6);
    assert_eq!(take_acked(&mut other_group, 6).len(), 6);
}

/// MQTT 5.0 section 4.8.2: each message matching `$share/{group}/{filter}` goes to one member
/// of the group, round-robin here; plain subscribers and other groups still get every message.
#[test]
fn shared_subscription_delivers_each_message_to_one_member_round_robin_v5() {
    shared_round_robin(ProtocolVersion::V5);
}

/// The same `$share/{group}/{filter}` semantics for MQTT 3.1.1 clients.
#[test]
fn shared_subscription_delivers_each_message_to_one_member_round_robin_v311() {
    shared_round_robin(ProtocolVersion::V311);
}

/// Section 4.8.2: QoS 1 messages sent to a member that disconnects before acknowledging them
/// are delivered to another member of the group.
#[test]
fn unacknowledged_qos1_messages_of_a_disconnected_shared_member_go_to_another_member() {
    let broker = Broker::start();
    let mut a = RawClient::connect_v5(broker.port, "sh-a", props());
    let mut b = RawClient::connect_v5(broker.port, "sh-b", props());
    a.subscribe("$share/g/sh/t", QoS::AtLeastOnce);
    b.subscribe("$share/g/sh/t", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "sh-pub", props());
    for i in 0..4 {
        publ.publish("sh/t", &i.to_string(), QoS::AtLeastOnce);
    }
    // a receives its two messages but never acknowledges them.
    let a_got: Vec<String> = (0..2)
        .map(|_| payload_str(&a.expect_publish()).to_string())
        .collect();
    let mut b_got = take_acked(&mut b, 2);
    a.drop_connection();
    b_got.extend(take_acked(&mut b, 2));
    b_got.sort();
    assert_eq!(b_got, ["0", "1", "2", "3"], "a had {a_got:?}");
    b.expect_no_publish(Duration::from_millis(200));
}

/// A QoS 1 shared member whose session outlives its connection (expiry 60 s) is skipped while
/// offline: new messages go to the connected member.
#[test]
fn offline_shared_member_with_a_kept_session_is_skipped() {
    let broker = Broker::start();
    let mut connect = connect_packet("sh-off-a");
    connect.properties.session_expiry_interval = Some(60);
    let (mut a, _) = RawClient::connect_with(broker.port, connect);
    let mut b = RawClient::connect_v5(broker.port, "sh-off-b", props());
    a.subscribe("$share/g/off/t", QoS::AtLeastOnce);
    b.subscribe("$share/g/off/t", QoS::AtLeastOnce);
    a.disconnect();
    let mut publ = RawClient::connect_v5(broker.port, "sh-off-pub", props());
    for i in 0..4 {
        publ.publish("off/t", &i.to_string(), QoS::AtLeastOnce);
    }
    assert_eq!(take_acked(&mut b, 4), ["0", "1", "2", "3"]);
}

/// Section 4.8.2: retained messages are not sent when a shared subscription is made.
#[test]
fn shared_subscription_gets_no_retained_messages() {
    let broker = Broker::start();
    retained_setup(&broker, "shr/t");
    let mut c = RawClient::connect_v5(broker.port, "shr", props());
    c.subscribe("$share/g/shr/t", QoS::AtLeastOnce);
    c.expect_no_publish(Duration::from_millis(300));
}

/// [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error (DISCONNECT 0x82).
#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sh-nl", props());
    let id = c.packet_id();
    c.send(&Packet::Subscribe(mqflux::protocol::Subscribe {
        packet_id: id,
        filters: vec![mqflux::protocol::SubscribeFilter {
            filter: "$share/g/x".into(),
            options: opts(QoS::AtMostOnce, true, false, 0),
        }],
        properties: props(),
    }));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

// ---------------------------------------------------------------------------------------------
// Mixed versions
// ---------------------------------------------------------------------------------------------

/// A v3.1.1 subscriber receives a v5 publish with its properties stripped: the packet parses
/// as 3.1.1 and the payload is byte for byte what was published (properties would otherwise
/// show up as leading payload bytes).
#[test]
fn v311_subscriber_receives_v5_publish_without_properties() {
    let broker = Broker::start();
    let mut old = RawClient::connect_v311(broker.port, "mix-old");
    old.subscribe("mix/#", QoS::AtLeastOnce);
    let mut new = RawClient::connect_v5(broker.port, "mix-new", props());
    let p = Properties {
        user_properties: vec![("unit".into(), "C".into())],
        response_topic: Some("mix/reply".into()),
        correlation_data: Some(Bytes::from_static(b"c1")),
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(1),
        ..Default::default()
    };
    new.publish_with("mix/temp", b"21.5", QoS::AtLeastOnce, false, p);
    let m = old.expect_publish();
    assert_eq!(&*m.topic, "mix/temp");
    assert_eq!(&m.payload[..], b"21.5");
    assert!(m.properties.is_empty());
}

/// A v5 subscriber receives a v3.1.1 publish, with no properties added.
#[test]
fn v5_subscriber_receives_v311_publish() {
    let broker = Broker::start();
    let mut new = RawClient::connect_v5(broker.port, "mix5-sub", props());
    new.subscribe_with(&[("mix5/#", sub_options(QoS::ExactlyOnce))], props());
    let mut old = RawClient::connect_v311(broker.port, "mix5-old");
    old.publish("mix5/x", "from 3.1.1", QoS::ExactlyOnce);
    let m = new.expect_publish();
    assert_eq!((&*m.topic, payload_str(&m)), ("mix5/x", "from 3.1.1"));
    assert_eq!(m.qos, QoS::ExactlyOnce);
    assert!(m.properties.is_empty(), "{:?}", m.properties);
}

/// Mixed versions with real client libraries: a rumqttc v3.1.1 client and a rumqttc v5 client
/// exchange messages both ways through the broker; the v5 side's properties are dropped for the
/// v3.1.1 side and kept between v5 clients.
#[test]
fn rumqttc_v311_and_v5_clients_exchange_messages_both_ways() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties};
    let broker = Broker::start();

    let mut o4 = rumqttc::MqttOptions::new("lib-v311", "127.0.0.1", broker.port);
    o4.set_keep_alive(Duration::from_secs(5));
    let (c4, mut conn4) = rumqttc::Client::new(o4, 16);
    let mut o5 = rumqttc::v5::MqttOptions::new("lib-v5", "127.0.0.1", broker.port);
    o5.set_keep_alive(Duration::from_secs(5));
    let (c5, mut conn5) = rumqttc::v5::Client::new(o5, 16);
    c4.subscribe("lib/to4", rumqttc::QoS::AtLeastOnce)
        .expect("sub v4");
    c5.subscribe("lib/to5", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .expect("sub v5");

    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut sub4, mut sub5) = (false, false);
    let (mut got4, mut got5) = (None, None);
    let mut sent = false;
    while got4.is_none() || got5.is_none() {
        assert!(
            Instant::now() < deadline,
            "v4 got {got4:?}, v5 got {got5:?}"
        );
        if let Ok(ev) = conn4.recv_timeout(Duration::from_millis(20)) {
            match ev.expect("v3.1.1 connection") {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => sub4 = true,
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    got4 = Some((p.topic.clone(), p.payload.to_vec()))
                }
                _ => {}
            }
        }
        if let Ok(ev) = conn5.recv_timeout(Duration::from_millis(20)) {
            match ev.expect("v5 connection") {
                rumqttc::v5::Event::Incoming(P5::SubAck(_)) => sub5 = true,
                rumqttc::v5::Event::Incoming(P5::Publish(p)) => {
                    got5 = Some((p.topic.to_vec(), p.payload.to_vec(), p.properties))
                }
                _ => {}
            }
        }
        if sub4 && sub5 && !sent {
            sent = true;
            let props = PublishProperties {
                user_properties: vec![("from".into(), "v5".into())],
                content_type: Some("text/plain".into()),
                ..Default::default()
            };
            c5.publish_with_properties(
                "lib/to4",
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                false,
                "hello 3.1.1",
                props,
            )
            .expect("v5 publish");
            c4.publish("lib/to5", rumqttc::QoS::AtLeastOnce, false, "hello 5")
                .expect("v4 publish");
        }
    }
    let (t4, p4) = got4.expect("v4 message");
    assert_eq!(
        (t4.as_str(), p4.as_slice()),
        ("lib/to4", &b"hello 3.1.1"[..])
    );
    let (t5, p5, props5) = got5.expect("v5 message");
    assert_eq!(
        (t5.as_slice(), p5.as_slice()),
        (&b"lib/to5"[..], &b"hello 5"[..])
    );
    assert!(
        props5.is_none_or(|p| p.user_properties.is_empty() && p.content_type.is_none()),
        "a v3.1.1 publish has no application properties"
    );
}

/// A v5 publisher's message reaches a v5 and a v3.1.1 member of the same shared group.
#[test]
fn shared_group_with_v5_and_v311_members_serves_both() {
    let broker = Broker::start();
    let mut a = RawClient::connect_v5(broker.port, "mixsh-5", props());
    let mut b = RawClient::connect_v311(broker.port, "mixsh-3");
    a.subscribe("$share/mixed/ms/t", QoS::AtLeastOnce);
    b.subscribe("$share/mixed/ms/t", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "mixsh-pub", props());
    let p = Properties {
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    for i in 0..4 {
        publ.publish_with(
            "ms/t",
            i.to_string().as_bytes(),
            QoS::AtLeastOnce,
            false,
            p.clone(),
        );
    }
    let got_a = take_acked(&mut a, 2);
    let got_b = take_acked(&mut b, 2);
    let mut all: Vec<String> = got_a.into_iter().chain(got_b).collect();
    all.sort();
    assert_eq!(all, ["0", "1", "2", "3"]);
}

/// Section 3.8.2.1.2: a Subscription Identifier given with a shared subscription is sent with
/// the messages delivered through it.
#[test]
fn shared_subscription_carries_its_subscription_identifier() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sh-sid", props());
    c.subscribe_with(
        &[("$share/g/shid/t", sub_options(QoS::AtLeastOnce))],
        with_sub_id(9),
    );
    let mut publ = RawClient::connect_v5(broker.port, "sh-sid-pub", props());
    publ.publish("shid/t", "x", QoS::AtLeastOnce);
    let m = c.expect_publish();
    assert_eq!(m.properties.subscription_identifiers, vec![9]);
}

/// Section 3.10.4: unsubscribing from `$share/{group}/{filter}` removes the member: UNSUBACK
/// 0x00, and the remaining member gets every message.
#[test]
fn unsubscribing_a_shared_subscription_removes_the_member() {
    let broker = Broker::start();
    let mut a = RawClient::connect_v5(broker.port, "shu-a", props());
    let mut b = RawClient::connect_v5(broker.port, "shu-b", props());
    a.subscribe("$share/g/shu/t", QoS::AtLeastOnce);
    b.subscribe("$share/g/shu/t", QoS::AtLeastOnce);
    let id = a.packet_id();
    a.send(&Packet::Unsubscribe(mqflux::protocol::Unsubscribe {
        packet_id: id,
        filters: vec!["$share/g/shu/t".into()],
        properties: props(),
    }));
    let ack = a.wait_for("UNSUBACK", |p| match p {
        Packet::UnsubAck(u) => Some(u.clone()),
        _ => None,
    });
    assert_eq!(ack.reason_codes, vec![reason::SUCCESS]);
    let mut publ = RawClient::connect_v5(broker.port, "shu-pub", props());
    for i in 0..4 {
        publ.publish("shu/t", &i.to_string(), QoS::AtLeastOnce);
    }
    assert_eq!(take_acked(&mut b, 4), ["0", "1", "2", "3"]);
    a.expect_no_publish(Duration::from_millis(200));
}

/// Section 4.8.2: QoS 2 messages a member had not started to acknowledge (no PUBREC), and
/// messages still queued behind its Receive Maximum, go to another member when it disconnects.
#[test]
fn queued_qos2_messages_of_a_disconnected_shared_member_go_to_another_but_the_sent_one_does_not() {
    let broker = Broker::start();
    let mut p = props();
    p.receive_maximum = Some(1);
    let mut a = RawClient::connect_v5(broker.port, "sh2-a", p);
    let mut b = RawClient::connect_v5(broker.port, "sh2-b", props());
    a.subscribe("$share/g/sh2/t", QoS::ExactlyOnce);
    b.subscribe("$share/g/sh2/t", QoS::ExactlyOnce);
    let mut publ = RawClient::connect_v5(broker.port, "sh2-pub", props());
    for i in 0..6 {
        publ.publish("sh2/t", &i.to_string(), QoS::ExactlyOnce);
    }
    // a gets one message (Receive Maximum 1, two more queued for it) and never answers.
    let first = a.expect_publish();
    assert_eq!(first.qos, QoS::ExactlyOnce);
    a.drop_connection();
    // [MQTT-4.8.2-5 (v5)] the QoS 2 message already sent to a must not go to another member
    // when a's session ends; the ones still queued for a may.
    let mut b_got = Vec::new();
    while b_got.len() < 5 {
        let m = b.expect_publish();
        b.send(&Packet::PubRec(mqflux::protocol::Ack::new(m.packet_id)));
        b.wait_for("PUBREL", |p| {
            matches!(p, Packet::PubRel(r) if r.packet_id == m.packet_id).then_some(())
        });
        b.send(&Packet::PubComp(mqflux::protocol::Ack::new(m.packet_id)));
        b_got.push(payload_str(&m).to_string());
    }
    b.expect_no_publish(Duration::from_millis(300));
    let mut expected: Vec<String> = (0..6)
        .map(|i| i.to_string())
        .filter(|i| i != payload_str(&first))
        .collect();
    expected.sort();
    b_got.sort();
    assert_eq!(b_got, expected);
}

/// [MQTT-4.8.2-1/2 (v5)] a shared subscription needs a non-empty ShareName without "/", "+"
/// or "#", followed by "/" and a topic filter; anything else is refused with SUBACK 0x8F.
#[test]
fn malformed_shared_subscription_filters_are_refused_with_0x8f() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "sh-bad", props());
    let filters = [
        "$share/g",
        "$share//x",
        "$share/g/",
        "$share/g+/x",
        "$share/#/x",
    ];
    let requested: Vec<(&str, SubscriptionOptions)> = filters
        .iter()
        .map(|f| (*f, sub_options(QoS::AtMostOnce)))
        .collect();
    let ack = c.subscribe_with(&requested, props());
    for (f, code) in filters.iter().zip(&ack.reason_codes) {
        assert_eq!(*code, reason::TOPIC_FILTER_INVALID, "filter {f:?}");
    }
    let mut old = RawClient::connect_v311(broker.port, "sh-bad-311");
    let ack = old.subscribe_with(&[("$share/g", sub_options(QoS::AtMostOnce))], props());
    assert_eq!(ack.reason_codes, vec![0x80], "3.1.1 failure return code");
}

/// As the Paho interop suite's `test_subscribe_failure`: a filter the ACL leaves nothing to
/// read is refused in SUBACK itself, 0x80 Failure in MQTT 3.1.1 [MQTT-3.9.3-2] and 0x87 Not
/// authorized in MQTT 5.0 (section 3.9.3), while the other filters of the same SUBSCRIBE are
/// granted [MQTT-3.8.4-5]; a filter only partly denied is granted and filtered per message.
#[test]
fn subscribe_to_a_filter_the_acl_denies_is_refused_in_suback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "topic readwrite #\ntopic deny test/nosubscribe\ntopic deny secret/#\n",
    )
    .expect("write ACL");
    let broker = Broker::with_config(&format!("[security]\nacl_file = {acl:?}\n"));
    let filters = [
        ("test/nosubscribe", sub_options(QoS::AtLeastOnce)),
        ("secret/+/x", sub_options(QoS::AtLeastOnce)),
        ("test/#", sub_options(QoS::AtLeastOnce)),
        ("$share/g/test/nosubscribe", sub_options(QoS::AtLeastOnce)),
    ];
    let mut v5 = RawClient::connect_v5(broker.port, "acl-sub-v5", Properties::default());
    let ack = v5.subscribe_with(&filters, Properties::default());
    let n = reason::NOT_AUTHORIZED;
    assert_eq!(ack.reason_codes, vec![n, n, 1, n]);
    let mut v3 = RawClient::connect_v311(broker.port, "acl-sub-v3");
    let ack = v3.subscribe_with(&filters[..3], Properties::default());
    assert_eq!(ack.reason_codes, vec![0x80, 0x80, 1]);
    broker.wait_for_log(&[
        "acl-sub-v3",
        "subscription to \"test/nosubscribe\" denied by ACL",
    ]);
    // The granted `test/#` still gets nothing from the denied topic.
    v5.publish("test/nosubscribe", "no", QoS::AtLeastOnce);
    v5.publish("test/ok", "yes", QoS::AtLeastOnce);
    assert_eq!(payload_str(&v3.expect_publish()), "yes");
}
