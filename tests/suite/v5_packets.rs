//! MQTT 5.0 packet-level behaviour: property validation, reason codes, server-initiated
//! DISCONNECT, CONNACK properties, AUTH, maximum packet size, topic aliases, property
//! pass-through and the request/response pattern. Raw packets where bytes matter; rumqttc v5
//! for the request/response pattern.

use crate::common;
use crate::common::codec as v5_common;

use bytes::Bytes;
use common::Broker;
use mqflux::protocol::{
    reason, Ack, Packet, Properties, ProtocolVersion, Publish, QoS, Unsubscribe,
};
use std::time::{Duration, Instant};
use v5_common::{connect_packet, payload_str, sub_options, RawClient, WAIT};

/// One frame: fixed-header byte, remaining length, body.
fn frame(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    mqflux::protocol::write_variable_int(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A QoS 0 PUBLISH to "a/b" with `props` as the raw property bytes after a property length of
/// `declared_len` (so a wrong length can be written), and payload "x".
fn publish_with_raw_properties(declared_len: u8, props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x03, b'a', b'/', b'b', declared_len];
    body.extend_from_slice(props);
    body.push(b'x');
    frame(0x30, &body)
}

fn props() -> Properties {
    Properties::default()
}

// ---------------------------------------------------------------------------------------------
// Properties on every packet, with validation
// ---------------------------------------------------------------------------------------------

/// Section 2.2.2.2 / 3.3.2.3.2: "It is a Protocol Error to include the Payload Format Indicator
/// more than once."
#[test]
fn duplicate_property_in_publish_gets_disconnect_0x82_protocol_error() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "dup", props());
    c.send_bytes(&publish_with_raw_properties(4, &[0x01, 0x00, 0x01, 0x00]));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// Section 3.8.2.1.2: "It is a Protocol Error to include the Subscription Identifier more than
/// once" in SUBSCRIBE.
#[test]
fn duplicate_subscription_identifier_in_subscribe_gets_disconnect_0x82() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "dupsub", props());
    // packet id 1, properties: sub id 1, sub id 2; filter "t" with QoS 0.
    let body = [
        0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b't', 0x00,
    ];
    c.send_bytes(&frame(0x82, &body));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// Section 2.2.2.2: a property not valid for the packet type (Session Expiry Interval 0x11 in a
/// PUBLISH) makes the packet malformed; the broker says 0x81 and closes [MQTT-4.13.1-1].
#[test]
fn property_not_allowed_on_publish_gets_disconnect_0x81_malformed() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "wrongprop", props());
    c.send_bytes(&publish_with_raw_properties(5, &[0x11, 0, 0, 0, 5]));
    c.expect_disconnect(reason::MALFORMED_PACKET);
}

/// Section 2.2.2.2: Topic Alias (0x23) is a PUBLISH property; in SUBSCRIBE it is malformed.
#[test]
fn property_not_allowed_on_subscribe_gets_disconnect_0x81_malformed() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "wrongsubprop", props());
    let body = [0x00, 0x01, 0x03, 0x23, 0x00, 0x01, 0x00, 0x01, b't', 0x00];
    c.send_bytes(&frame(0x82, &body));
    c.expect_disconnect(reason::MALFORMED_PACKET);
}

/// Section 2.2.2.1: a property length running past the end of the packet is malformed (0x81).
#[test]
fn property_length_beyond_packet_end_gets_disconnect_0x81_malformed() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "badlen", props());
    c.send_bytes(&publish_with_raw_properties(10, &[0x01, 0x00]));
    c.expect_disconnect(reason::MALFORMED_PACKET);
}

/// A property whose value runs past the property length (a 4-byte Message Expiry Interval in a
/// property length of 2) is malformed too.
#[test]
fn property_value_running_past_property_length_gets_disconnect_0x81() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "shortprop", props());
    // Property length 2 but Message Expiry Interval needs 1 + 4 bytes; the rest is payload.
    c.send_bytes(&publish_with_raw_properties(
        2,
        &[0x02, 0x00, 0x00, 0x00, 0x05],
    ));
    c.expect_disconnect(reason::MALFORMED_PACKET);
}

/// Section 3.3.2.3.2: Payload Format Indicator is 0 or 1; another value is a protocol error.
#[test]
fn payload_format_indicator_outside_0_or_1_gets_disconnect_0x82() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "badflag", props());
    c.send_bytes(&publish_with_raw_properties(2, &[0x01, 0x02]));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// [MQTT-3.3.2-14 (v5)] a Response Topic must not contain wildcards: protocol error 0x82.
#[test]
fn response_topic_with_wildcard_gets_disconnect_0x82() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "rt-wild", props());
    // Response Topic (0x08) "r/#": 1 + 2 + 3 bytes.
    c.send_bytes(&publish_with_raw_properties(
        6,
        &[0x08, 0x00, 0x03, b'r', b'/', b'#'],
    ));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// Section 3.1.2.11.3: a Receive Maximum of 0 in CONNECT is a protocol error; the broker does
/// not accept the connection.
#[test]
fn connect_with_receive_maximum_0_is_refused() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.port, ProtocolVersion::V5);
    // "MQTT" level 5, clean start, keep-alive 30, properties [0x21 0x00 0x00], client id "c".
    let body = [
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1E, 0x03, 0x21, 0x00, 0x00, 0x00,
        0x01, b'c',
    ];
    c.send_bytes(&frame(0x10, &body));
    match c.try_recv(WAIT) {
        Ok(Packet::ConnAck(a)) => assert_eq!(a.code, reason::PROTOCOL_ERROR, "{a:?}"),
        Ok(other) => panic!("CONNECT with Receive Maximum 0 accepted: {other:?}"),
        Err(v5_common::RecvError::Closed) => {}
        Err(e) => panic!("{e:?}"),
    }
}

/// A malformed CONNECT property (duplicate Session Expiry Interval) is refused before CONNACK:
/// the broker answers with a DISCONNECT-class reason code or closes, never accepts.
#[test]
fn duplicate_property_in_connect_is_refused() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.port, ProtocolVersion::V5);
    // "MQTT" level 5, flags clean start, keep-alive 30, properties: 0x11 twice, client id "c".
    let body = [
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x1E, 0x0A, 0x11, 0, 0, 0, 1, 0x11,
        0, 0, 0, 2, 0x00, 0x01, b'c',
    ];
    c.send_bytes(&frame(0x10, &body));
    match c.try_recv(WAIT) {
        Ok(Packet::ConnAck(a)) => assert_eq!(a.code, reason::PROTOCOL_ERROR, "{a:?}"),
        Ok(Packet::Disconnect(d)) => assert_eq!(d.reason_code, reason::PROTOCOL_ERROR),
        Ok(other) => panic!("CONNECT with a duplicate property accepted: {other:?}"),
        Err(v5_common::RecvError::Closed) => {}
        Err(e) => panic!("{e:?}"),
    }
}

/// Properties are accepted on every client-to-server packet that may carry them: user
/// properties on SUBSCRIBE, UNSUBSCRIBE, PUBACK, PUBREC/PUBREL/PUBCOMP and DISCONNECT, and a
/// reason string on acknowledgements (section 2.2.2.2 table).
#[test]
fn user_properties_are_accepted_on_every_client_packet_type() {
    let broker = Broker::start();
    let mut sub = RawClient::connect_v5(broker.port, "props-sub", props());
    let mut p = props();
    p.user_properties = vec![("k".into(), "v".into())];
    sub.subscribe_with(&[("up/#", sub_options(QoS::ExactlyOnce))], {
        let mut s = p.clone();
        s.subscription_identifiers = vec![3];
        s
    });
    let mut publ = RawClient::connect_v5(broker.port, "props-pub", props());
    publ.publish_with("up/1", b"one", QoS::AtLeastOnce, false, p.clone());
    publ.publish_with("up/2", b"two", QoS::ExactlyOnce, false, p.clone());

    let mut ack_props = p.clone();
    ack_props.reason_string = Some("thanks".into());
    let m1 = sub.expect_publish();
    assert_eq!(m1.qos, QoS::AtLeastOnce);
    sub.send(&Packet::PubAck(Ack {
        packet_id: m1.packet_id,
        reason_code: 0,
        properties: ack_props.clone(),
    }));
    let m2 = sub.expect_publish();
    assert_eq!(m2.qos, QoS::ExactlyOnce);
    sub.send(&Packet::PubRec(Ack {
        packet_id: m2.packet_id,
        reason_code: 0,
        properties: ack_props.clone(),
    }));
    let rel = sub.wait_for("PUBREL", |p| match p {
        Packet::PubRel(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(rel.packet_id, m2.packet_id);
    sub.send(&Packet::PubComp(Ack {
        packet_id: m2.packet_id,
        reason_code: 0,
        properties: ack_props,
    }));
    let id = sub.packet_id();
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        filters: vec!["up/#".into()],
        properties: p.clone(),
    }));
    let unsuback = sub.wait_for("UNSUBACK", |p| match p {
        Packet::UnsubAck(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(unsuback.reason_codes, vec![reason::SUCCESS]);
    // The connection is still healthy: a ping round trip works.
    sub.ping();
    sub.disconnect_with(0, p);
}

// ---------------------------------------------------------------------------------------------
// Reason codes
// ---------------------------------------------------------------------------------------------

/// Section 3.4.2.1: PUBACK 0x10 "No matching subscribers" when nobody is subscribed, 0x00 when
/// somebody is; the same for PUBREC (3.5.2.1).
#[test]
fn puback_and_pubrec_say_0x10_when_no_subscriber_matches() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "nomatch", props());
    assert_eq!(
        c.publish("nobody/here", "x", QoS::AtLeastOnce),
        reason::NO_MATCHING_SUBSCRIBERS
    );
    assert_eq!(
        c.publish("nobody/here", "x", QoS::ExactlyOnce),
        reason::NO_MATCHING_SUBSCRIBERS
    );
    c.subscribe("somebody/here", QoS::AtMostOnce);
    assert_eq!(c.publish("somebody/here", "x", QoS::AtLeastOnce), 0);
    assert_eq!(c.publish("somebody/here", "x", QoS::ExactlyOnce), 0);
}

/// Section 3.9.3: SUBACK carries one reason code per filter: the granted QoS, or 0x8F "Topic
/// Filter invalid" for a bad filter, the others still applying [MQTT-3.9.3-1].
#[test]
fn suback_reports_granted_qos_and_0x8f_for_an_invalid_filter() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "subcodes", props());
    let ack = c.subscribe_with(
        &[
            ("a/+", sub_options(QoS::AtMostOnce)),
            ("a/b#", sub_options(QoS::AtLeastOnce)),
            ("c/#", sub_options(QoS::ExactlyOnce)),
        ],
        props(),
    );
    assert_eq!(
        ack.reason_codes,
        vec![0x00, reason::TOPIC_FILTER_INVALID, 0x02]
    );
}

/// Section 3.11.3: UNSUBACK 0x00 for a removed subscription, 0x11 "No subscription existed",
/// 0x8F "Topic Filter invalid" for a filter that breaks the wildcard rules [MQTT-4.7.1-1].
#[test]
fn unsuback_says_0x11_when_no_subscription_existed() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "unsubcodes", props());
    c.subscribe("x/y", QoS::AtMostOnce);
    let id = c.packet_id();
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: id,
        filters: vec!["x/y".into(), "never/subscribed".into(), "bad/#/x".into()],
        properties: props(),
    }));
    let ack = c.wait_for("UNSUBACK", |p| match p {
        Packet::UnsubAck(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(ack.packet_id, id);
    assert_eq!(
        ack.reason_codes,
        vec![
            reason::SUCCESS,
            reason::NO_SUBSCRIPTION_EXISTED,
            reason::TOPIC_FILTER_INVALID
        ]
    );
}

/// Section 3.6.2.1 / 3.7.2.1: a PUBREL for an unknown packet id gets PUBCOMP 0x92 "Packet
/// Identifier not found".
#[test]
fn pubrel_for_unknown_packet_id_gets_pubcomp_0x92() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "unknownrel", props());
    c.send(&Packet::PubRel(Ack::new(77)));
    let comp = c.wait_for("PUBCOMP", |p| match p {
        Packet::PubComp(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(comp.packet_id, 77);
    assert_eq!(comp.reason_code, reason::PACKET_IDENTIFIER_NOT_FOUND);
}

/// Section 3.14.2.1: DISCONNECT 0x04 "Disconnect with Will Message" publishes the will; a normal
/// DISCONNECT (0x00) discards it [MQTT-3.14.4-3].
#[test]
fn client_disconnect_0x04_publishes_the_will_and_0x00_does_not() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "will-watch", props());
    watcher.subscribe("will/#", QoS::AtLeastOnce);

    let mut connect = connect_packet("will-normal");
    connect.will = Some(v5_common::will("will/normal", "gone", props()));
    let (normal, _) = RawClient::connect_with(broker.port, connect);
    normal.disconnect_with(0x00, props());

    let mut connect = connect_packet("will-04");
    connect.will = Some(v5_common::will("will/04", "gone", props()));
    let (with_will, _) = RawClient::connect_with(broker.port, connect);
    with_will.disconnect_with(reason::DISCONNECT_WITH_WILL, props());

    let m = watcher.expect_publish();
    assert_eq!(&*m.topic, "will/04", "only the 0x04 will is published");
    watcher.puback(m.packet_id);
    watcher.expect_no_publish(Duration::from_millis(300));
}

/// [MQTT-3.1.2-10 (v5)] only a DISCONNECT with reason 0x00 discards the will; a client that
/// disconnects with an error reason (0x80 "Unspecified error", 0x83 "Implementation specific
/// error") did not end normally, so its will is published (section 3.1.2.5).
#[test]
fn client_disconnect_with_an_error_reason_publishes_the_will() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "will-err-watch", props());
    watcher.subscribe("will-err/#", QoS::AtLeastOnce);
    for code in [
        reason::UNSPECIFIED_ERROR,
        reason::IMPLEMENTATION_SPECIFIC_ERROR,
    ] {
        let mut connect = connect_packet("will-err");
        connect.will = Some(v5_common::will(
            &format!("will-err/{code:x}"),
            "gone",
            props(),
        ));
        let (c, _) = RawClient::connect_with(broker.port, connect);
        c.disconnect_with(code, props());
        let m = watcher.expect_publish();
        assert_eq!(&*m.topic, format!("will-err/{code:x}"));
        watcher.puback(m.packet_id);
    }
}

// ---------------------------------------------------------------------------------------------
// Server-initiated DISCONNECT
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.1.4-3] a second connection with the same client id takes the session over; the old
/// v5 connection gets DISCONNECT 0x8E "Session taken over" (section 3.14.2.1).
#[test]
fn session_takeover_sends_disconnect_0x8e_to_the_old_connection() {
    let broker = Broker::start();
    let mut first = RawClient::connect_v5(broker.port, "same-id", props());
    let mut second = RawClient::connect_v5(broker.port, "same-id", props());
    first.expect_disconnect(reason::SESSION_TAKEN_OVER);
    second.ping();
}

/// Section 3.14.2.1: on shutdown the broker tells v5 clients 0x8B "Server shutting down".
#[test]
fn broker_shutdown_sends_disconnect_0x8b() {
    let mut broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "shutdown", props());
    c.ping();
    broker.terminate();
    c.expect_disconnect(reason::SERVER_SHUTTING_DOWN);
}

/// [MQTT-3.2.2-15 (v5: 3.1.2.6)] a packet above the broker's Maximum Packet Size gets DISCONNECT
/// 0x95 "Packet too large".
#[test]
fn packet_above_broker_maximum_packet_size_gets_disconnect_0x95() {
    let broker = Broker::with_config("[limits]\nmax_packet_size = 128\n");
    let mut c = RawClient::connect_v5(broker.port, "toolarge", props());
    c.publish("small", "fits", QoS::AtMostOnce);
    c.ping();
    c.publish("big", &"x".repeat(500), QoS::AtMostOnce);
    c.expect_disconnect(reason::PACKET_TOO_LARGE);
}

/// [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISHes than the broker's Receive Maximum is
/// answered with DISCONNECT 0x93 "Receive Maximum exceeded".
#[test]
fn more_qos2_publishes_than_broker_receive_maximum_gets_disconnect_0x93() {
    let broker = Broker::with_config("[limits]\nmax_inflight = 2\n");
    let (mut c, ack) = RawClient::connect_with(broker.port, connect_packet("rm-exceed"));
    assert_eq!(ack.properties.receive_maximum, Some(2));
    for id in 1..=3u16 {
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "rm/x".into(),
            packet_id: id,
            payload: Bytes::from_static(b"x"),
            properties: props().into(),
        }));
    }
    // The first two are received (PUBREC), the third breaks the limit (no PUBREL was sent).
    c.expect_disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
}

/// [MQTT-3.3.4-9] / MQTT 5.0 section 4.9: as the Paho interop suite's `test_flow_control2`
/// does, a client that broke the Receive Maximum goes on answering each PUBREC with a PUBREL
/// while it reads. It must still read the DISCONNECT 0x93: the broker waits for the client to
/// close instead of closing a socket with unread input, which answers the PUBRELs with RST
/// (the client then got a broken pipe before it reached the DISCONNECT).
#[test]
fn client_answering_pubrecs_after_exceeding_receive_maximum_still_reads_disconnect_0x93() {
    let broker = Broker::with_config("[limits]\nmax_inflight = 5\n");
    let (mut c, ack) = RawClient::connect_with(broker.port, connect_packet("rm-paho"));
    assert_eq!(ack.properties.receive_maximum, Some(5));
    for id in 1..=6u16 {
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "rm/paho".into(),
            packet_id: id,
            payload: Bytes::from_static(b"x"),
            properties: props().into(),
        }));
    }
    let deadline = Instant::now() + WAIT;
    let disconnect = loop {
        assert!(Instant::now() < deadline, "no DISCONNECT within {WAIT:?}");
        match c.recv() {
            Packet::PubRec(a) => {
                // Give the broker time to close first, as a client busy elsewhere would.
                std::thread::sleep(Duration::from_millis(50));
                c.send(&Packet::PubRel(Ack::new(a.packet_id)));
            }
            Packet::Disconnect(d) => break d,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(disconnect.reason_code, reason::RECEIVE_MAXIMUM_EXCEEDED);
    c.expect_closed();
}

/// [MQTT-3.3.2-9] a topic alias above the broker's Topic Alias Maximum gets DISCONNECT 0x94
/// "Topic Alias invalid"; so does alias 0 [MQTT-3.3.2-8].
#[test]
fn topic_alias_above_maximum_or_zero_gets_disconnect_0x94() {
    let broker = Broker::with_config("[limits]\nmax_topic_alias = 3\n");
    for alias in [4u16, 0] {
        let (mut c, ack) = RawClient::connect_with(broker.port, connect_packet("alias-bad"));
        assert_eq!(ack.properties.topic_alias_maximum, Some(3));
        let mut p = props();
        p.topic_alias = Some(alias);
        c.publish_with("t", b"x", QoS::AtMostOnce, false, p);
        c.expect_disconnect(reason::TOPIC_ALIAS_INVALID);
    }
}

/// Section 3.3.2.3.4: a PUBLISH with an empty topic and an alias the client never set is a
/// protocol error (0x82).
#[test]
fn unknown_topic_alias_with_empty_topic_gets_disconnect_0x82() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "alias-unset", props());
    let mut p = props();
    p.topic_alias = Some(1);
    c.publish_with("", b"x", QoS::AtMostOnce, false, p);
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// [MQTT-4.12.0-6 / 3.15] AUTH on a connection that did not start enhanced authentication is a
/// protocol error: DISCONNECT 0x82.
#[test]
fn auth_packet_without_authentication_method_gets_disconnect_0x82() {
    let broker = Broker::start();
    let mut c = RawClient::connect_v5(broker.port, "auth-late", props());
    let mut p = props();
    p.authentication_method = Some("SCRAM-SHA-1".into());
    c.send(&Packet::Auth(mqflux::protocol::Auth {
        reason_code: reason::CONTINUE_AUTHENTICATION,
        properties: p,
    }));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// Section 3.1.2.11.9 / 4.12: the broker supports no enhanced authentication method, so a
/// CONNECT naming one is refused with CONNACK 0x8C "Bad authentication method" and closed
/// [MQTT-3.2.2-7].
#[test]
fn connect_with_authentication_method_gets_connack_0x8c_and_close() {
    let broker = Broker::start();
    let mut connect = connect_packet("auth-method");
    connect.properties.authentication_method = Some("SCRAM-SHA-256".into());
    connect.properties.authentication_data = Some(Bytes::from_static(b"client-first"));
    let (mut c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.code, reason::BAD_AUTHENTICATION_METHOD);
    assert!(!ack.session_present, "[MQTT-3.2.2-6]");
    c.expect_closed();
}

// ---------------------------------------------------------------------------------------------
// CONNACK properties: capabilities, assigned client id, response information
// ---------------------------------------------------------------------------------------------

/// Section 3.2.2.3: CONNACK tells the client the broker's limits (Receive Maximum, Maximum
/// Packet Size, Topic Alias Maximum) and capabilities; an absent Retain Available, Maximum QoS,
/// Wildcard / Subscription Identifier / Shared Subscription Available means "supported".
#[test]
fn connack_states_limits_and_capabilities() {
    let broker = Broker::with_config(
        "[limits]\nmax_inflight = 7\nmax_packet_size = 4096\nmax_topic_alias = 5\n",
    );
    let (_c, ack) = RawClient::connect_with(broker.port, connect_packet("caps"));
    assert_eq!(ack.code, 0);
    let p = &ack.properties;
    assert_eq!(p.receive_maximum, Some(7));
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.topic_alias_maximum, Some(5));
    assert!(p.maximum_qos.is_none(), "QoS 2 supported: {p:?}");
    for (name, flag) in [
        ("retain available", p.retain_available),
        ("wildcard available", p.wildcard_subscription_available),
        ("sub id available", p.subscription_identifier_available),
        ("shared available", p.shared_subscription_available),
    ] {
        assert!(matches!(flag, None | Some(1)), "{name}: {flag:?}");
    }
    assert_eq!(
        p.assigned_client_identifier, None,
        "the client named itself"
    );
    assert_eq!(p.response_information, None, "not requested");
}

/// [MQTT-3.2.2-16] a client connecting with an empty client id gets an Assigned Client
/// Identifier in CONNACK, also with Clean Start 0 in v5 (section 3.1.3.1); ids are unique.
#[test]
fn empty_client_id_gets_an_assigned_client_identifier() {
    let broker = Broker::start();
    let mut ids = Vec::new();
    for clean_start in [true, false] {
        let mut connect = connect_packet("");
        connect.clean_start = clean_start;
        let (mut c, ack) = RawClient::connect_with(broker.port, connect);
        assert_eq!(ack.code, 0);
        let id = ack
            .properties
            .assigned_client_identifier
            .expect("assigned client identifier");
        assert!(!id.is_empty());
        c.ping();
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

/// Section 3.1.2.11.7 / 3.2.2.3.15: Request Response Information 1 gets Response Information in
/// CONNACK (the broker's per-client prefix `response/{client id}`); 0 or absent gets none.
#[test]
fn response_information_is_returned_only_when_requested() {
    let broker = Broker::start();
    let mut connect = connect_packet("rri");
    connect.properties.request_response_information = Some(1);
    let (_c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(
        ack.properties.response_information.as_deref(),
        Some("response/rri")
    );
    let mut connect = connect_packet("rri0");
    connect.properties.request_response_information = Some(0);
    let (_c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.properties.response_information, None);
}

// ---------------------------------------------------------------------------------------------
// Maximum packet size towards the client
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.1.2-25] the broker must not send a packet above the client's Maximum Packet Size: it
/// discards the message (as if sent) and later messages still arrive [MQTT-3.1.2-24].
#[test]
fn message_larger_than_client_maximum_packet_size_is_not_sent() {
    let broker = Broker::start();
    let mut p = props();
    p.maximum_packet_size = Some(64);
    let mut small = RawClient::connect_v5(broker.port, "small-client", p);
    small.subscribe("mps/#", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "mps-pub", props());
    publ.publish("mps/big", &"x".repeat(200), QoS::AtLeastOnce);
    publ.publish("mps/small", "ok", QoS::AtLeastOnce);
    let m = small.expect_publish();
    assert_eq!(&*m.topic, "mps/small");
    assert_eq!(payload_str(&m), "ok");
    small.puback(m.packet_id);
    small.expect_no_publish(Duration::from_millis(300));
}

// ---------------------------------------------------------------------------------------------
// Topic aliases both ways
// ---------------------------------------------------------------------------------------------

/// Section 3.3.2.3.4: a client sets alias 1 = topic with one PUBLISH and then publishes with an
/// empty topic name and alias 1; subscribers get the full topic each time.
#[test]
fn topic_alias_from_client_is_resolved_for_subscribers() {
    let broker = Broker::start();
    let mut sub = RawClient::connect_v5(broker.port, "alias-in-sub", props());
    sub.subscribe("sensors/#", QoS::AtMostOnce);
    let mut c = RawClient::connect_v5(broker.port, "alias-in", props());
    let mut p = props();
    p.topic_alias = Some(1);
    c.publish_with("sensors/temp", b"21", QoS::AtLeastOnce, false, p.clone());
    c.publish_with("", b"22", QoS::AtLeastOnce, false, p.clone());
    // Re-map alias 1 to another topic: a new topic for a known alias replaces the mapping
    // (section 3.3.2.3.4).
    c.publish_with("sensors/hum", b"40", QoS::AtLeastOnce, false, p.clone());
    c.publish_with("", b"41", QoS::AtLeastOnce, false, p);
    let got: Vec<(String, String)> = (0..4)
        .map(|_| {
            let m = sub.expect_publish();
            assert_eq!(
                m.properties.topic_alias, None,
                "subscriber set no alias max"
            );
            (m.topic.to_string(), payload_str(&m).to_string())
        })
        .collect();
    let want = [
        ("sensors/temp", "21"),
        ("sensors/temp", "22"),
        ("sensors/hum", "40"),
        ("sensors/hum", "41"),
    ];
    for (g, w) in got.iter().zip(want) {
        assert_eq!((g.0.as_str(), g.1.as_str()), w);
    }
}

/// Section 3.3.2.3.4 / [MQTT-3.2.2-18 (v5: 3.1.2.16)]: the broker may use topic aliases towards a
/// client up to the client's Topic Alias Maximum: the first PUBLISH carries topic + alias, later
/// ones an empty topic + the alias; beyond the maximum, full topics without alias.
#[test]
fn broker_assigns_topic_aliases_up_to_the_client_topic_alias_maximum() {
    let broker = Broker::start();
    let mut p = props();
    p.topic_alias_maximum = Some(1);
    let mut sub = RawClient::connect_v5(broker.port, "alias-out", p);
    sub.subscribe("out/#", QoS::AtMostOnce);
    let mut publ = RawClient::connect_v5(broker.port, "alias-out-pub", props());
    for (topic, payload) in [
        ("out/a", "1"),
        ("out/a", "2"),
        ("out/b", "3"),
        ("out/a", "4"),
    ] {
        publ.publish(topic, payload, QoS::AtLeastOnce);
    }
    let m1 = sub.expect_publish();
    assert_eq!((&*m1.topic, m1.properties.topic_alias), ("out/a", Some(1)));
    let m2 = sub.expect_publish();
    assert_eq!((&*m2.topic, m2.properties.topic_alias), ("", Some(1)));
    assert_eq!(payload_str(&m2), "2");
    let m3 = sub.expect_publish();
    assert_eq!(
        (&*m3.topic, m3.properties.topic_alias),
        ("out/b", None),
        "only one alias allowed"
    );
    let m4 = sub.expect_publish();
    assert_eq!((&*m4.topic, m4.properties.topic_alias), ("", Some(1)));
    assert_eq!(payload_str(&m4), "4");
}

/// Section 3.1.2.11.8: a client with Topic Alias Maximum absent or 0 (the default) never gets
/// a topic alias from the broker.
#[test]
fn broker_sends_no_topic_alias_to_a_client_without_topic_alias_maximum() {
    let broker = Broker::start();
    let mut sub = RawClient::connect_v5(broker.port, "alias-none", props());
    sub.subscribe("na/#", QoS::AtMostOnce);
    let mut publ = RawClient::connect_v5(broker.port, "alias-none-pub", props());
    publ.publish("na/x", "1", QoS::AtLeastOnce);
    publ.publish("na/x", "2", QoS::AtLeastOnce);
    for _ in 0..2 {
        let m = sub.expect_publish();
        assert_eq!(&*m.topic, "na/x");
        assert_eq!(m.properties.topic_alias, None);
    }
}

// ---------------------------------------------------------------------------------------------
// Pass-through of application properties; payload format validation
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.3.2-16 .. -20] Response Topic, Correlation Data, User Properties (order kept),
/// Content Type and Payload Format Indicator reach the subscriber unchanged.
#[test]
fn application_properties_are_forwarded_unchanged() {
    let broker = Broker::start();
    let mut sub = RawClient::connect_v5(broker.port, "pass-sub", props());
    sub.subscribe("pass/#", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "pass-pub", props());
    let mut p = props();
    p.response_topic = Some("pass/reply".into());
    p.correlation_data = Some(Bytes::from_static(&[0, 1, 2, 0xFF]));
    p.user_properties = vec![
        ("b".into(), "2".into()),
        ("a".into(), "1".into()),
        ("b".into(), "3".into()),
    ];
    p.content_type = Some("application/json".into());
    p.payload_format_indicator = Some(1);
    publ.publish_with("pass/x", br#"{"t":21}"#, QoS::AtLeastOnce, false, p.clone());
    let m = sub.expect_publish();
    assert_eq!(*m.properties, p);
    assert_eq!(&m.payload[..], br#"{"t":21}"#);
}

/// Section 3.3.2.3.2: Payload Format Indicator 1 with a payload that is not UTF-8 is refused
/// with reason 0x99 "Payload format invalid" (PUBACK for QoS 1, DISCONNECT for QoS 0) and not
/// delivered.
#[test]
fn payload_marked_utf8_but_invalid_is_refused_with_0x99() {
    let broker = Broker::start();
    let mut sub = RawClient::connect_v5(broker.port, "pfi-sub", props());
    sub.subscribe("pfi/#", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "pfi-pub", props());
    let mut p = props();
    p.payload_format_indicator = Some(1);
    let code = publ.publish_with("pfi/x", &[0xC3, 0x28], QoS::AtLeastOnce, false, p.clone());
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    let code = publ.publish_with("pfi/x", &[0xFF], QoS::ExactlyOnce, false, p.clone());
    assert_eq!(code, reason::PAYLOAD_FORMAT_INVALID);
    sub.expect_no_publish(Duration::from_millis(300));
    publ.publish_with("pfi/x", &[0xFF], QoS::AtMostOnce, false, p);
    publ.expect_disconnect(reason::PAYLOAD_FORMAT_INVALID);
    sub.expect_no_publish(Duration::from_millis(200));
}

// ---------------------------------------------------------------------------------------------
// Request / response (section 4.10) with a real v5 client library
// ---------------------------------------------------------------------------------------------

/// Section 4.10: the requester asks for response information, publishes requests with a
/// Response Topic under that prefix and Correlation Data; the responder answers on the Response
/// Topic echoing the Correlation Data; the requester matches every answer to its request.
#[test]
fn request_response_pattern_with_response_topic_and_correlation_data() {
    use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{Client, Event, MqttOptions};

    let broker = Broker::start();
    let port = broker.port;

    // Responder: answers every request on its Response Topic with the same Correlation Data.
    let mut opts = MqttOptions::new("responder", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (responder, mut rconn) = Client::new(opts, 16);
    responder
        .subscribe("service/double", RQoS::AtLeastOnce)
        .expect("subscribe");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let responder_thread = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut answered = 0;
        while answered < 3 && Instant::now() < deadline {
            let Ok(event) = rconn.recv_timeout(Duration::from_millis(500)) else {
                continue;
            };
            match event {
                Ok(Event::Incoming(RPacket::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(Event::Incoming(RPacket::Publish(p))) => {
                    let props = p.properties.clone().expect("request has properties");
                    let topic = props.response_topic.clone().expect("response topic");
                    let n: i64 = std::str::from_utf8(&p.payload)
                        .expect("utf8")
                        .parse()
                        .expect("number");
                    let answer = PublishProperties {
                        correlation_data: props.correlation_data.clone(),
                        ..Default::default()
                    };
                    responder
                        .publish_with_properties(
                            topic,
                            RQoS::AtLeastOnce,
                            false,
                            (n * 2).to_string(),
                            answer,
                        )
                        .expect("publish answer");
                    answered += 1;
                }
                Ok(_) => {}
                Err(e) => panic!("responder connection failed: {e}"),
            }
        }
        // Keep polling briefly so the last answer is actually written.
        let flush_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < flush_until {
            let _ = rconn.recv_timeout(Duration::from_millis(50));
        }
        answered
    });
    ready_rx.recv_timeout(WAIT).expect("responder subscribed");

    // Requester.
    let mut opts = MqttOptions::new("requester", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_request_response_info(Some(1));
    let (requester, mut conn) = Client::new(opts, 16);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut response_prefix = None;
    let mut subscribed = false;
    let mut answers = std::collections::HashMap::new();
    let requests = [("req-a", 3), ("req-b", 20), ("req-c", -7)];
    requester
        .subscribe("response/requester/#", RQoS::AtLeastOnce)
        .expect("subscribe");
    while answers.len() < requests.len() {
        assert!(Instant::now() < deadline, "answers so far: {answers:?}");
        let Ok(event) = conn.recv_timeout(Duration::from_millis(500)) else {
            continue;
        };
        match event.expect("requester connection") {
            Event::Incoming(RPacket::ConnAck(ack)) => {
                response_prefix = ack.properties.and_then(|p| p.response_information);
            }
            Event::Incoming(RPacket::SubAck(_)) if !subscribed => {
                subscribed = true;
                let prefix = response_prefix.clone().expect("response information");
                for (corr, n) in requests {
                    let props = PublishProperties {
                        response_topic: Some(format!("{prefix}/double")),
                        correlation_data: Some(Bytes::from(corr)),
                        ..Default::default()
                    };
                    requester
                        .publish_with_properties(
                            "service/double",
                            RQoS::AtLeastOnce,
                            false,
                            n.to_string(),
                            props,
                        )
                        .expect("publish request");
                }
            }
            Event::Incoming(RPacket::Publish(p)) => {
                assert_eq!(&p.topic[..], b"response/requester/double");
                let corr = p
                    .properties
                    .and_then(|p| p.correlation_data)
                    .expect("answer carries the correlation data");
                let corr = String::from_utf8(corr.to_vec()).expect("utf8");
                let value: i64 = std::str::from_utf8(&p.payload)
                    .expect("utf8")
                    .parse()
                    .expect("number");
                answers.insert(corr, value);
            }
            _ => {}
        }
    }
    assert_eq!(response_prefix.as_deref(), Some("response/requester"));
    for (corr, n) in requests {
        assert_eq!(answers.get(corr), Some(&(n * 2)), "answer to {corr}");
    }
    assert_eq!(responder_thread.join().expect("responder"), 3);
}

// ---------------------------------------------------------------------------------------------
// Server keep-alive
// ---------------------------------------------------------------------------------------------

/// Wait for the broker to end a silent connection with DISCONNECT 0x8D "Keep Alive timeout"
/// and close it [MQTT-3.1.2-22]. Returns how long it took.
fn time_until_keep_alive_close(c: &mut RawClient) -> Duration {
    let started = Instant::now();
    c.expect_disconnect(reason::KEEP_ALIVE_TIMEOUT);
    started.elapsed()
}

/// Section 3.2.2.3.14: a client asking for a longer keep-alive than `limits.max_keep_alive` is
/// told the maximum as Server Keep Alive, must use it [MQTT-3.2.2-21], and the broker closes
/// the connection after 1.5 times it without a packet [MQTT-3.1.2-22].
#[test]
fn server_keep_alive_caps_a_longer_client_keep_alive_and_is_enforced() {
    let broker = Broker::with_config("[limits]\nmax_keep_alive = 1\n");
    let mut connect = connect_packet("ska-long");
    connect.keep_alive = 30;
    let (mut c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let took = time_until_keep_alive_close(&mut c);
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_millis(3500),
        "closed after {took:?}, want about 1.5 s"
    );
}

/// Section 3.2.2.3.14: a client asking for no keep-alive (0) gets the broker's maximum too.
#[test]
fn server_keep_alive_replaces_a_client_keep_alive_of_zero() {
    let broker = Broker::with_config("[limits]\nmax_keep_alive = 1\n");
    let mut connect = connect_packet("ska-zero");
    connect.keep_alive = 0;
    let (mut c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.properties.server_keep_alive, Some(1));
    let took = time_until_keep_alive_close(&mut c);
    assert!(took < Duration::from_millis(3500), "closed after {took:?}");
}

/// A client keep-alive within the maximum is accepted as is: no Server Keep Alive in CONNACK
/// (section 3.2.2.3.14: absent means the client's value applies), and packets within it keep
/// the connection open.
#[test]
fn client_keep_alive_within_the_maximum_gets_no_server_keep_alive() {
    let broker = Broker::with_config("[limits]\nmax_keep_alive = 60\n");
    let mut connect = connect_packet("ska-ok");
    connect.keep_alive = 1;
    let (mut c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.properties.server_keep_alive, None);
    // PINGREQ every 0.5 s for 2.5 s (beyond 1.5x the keep-alive) keeps it open.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(500));
        c.ping();
    }
    let took = time_until_keep_alive_close(&mut c);
    assert!(took >= Duration::from_millis(1300), "closed after {took:?}");
}

/// Without `limits.max_keep_alive` the client's keep-alive applies unchanged.
#[test]
fn without_max_keep_alive_the_client_keep_alive_applies() {
    let broker = Broker::start();
    let mut connect = connect_packet("ska-none");
    connect.keep_alive = 0;
    let (mut c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.properties.server_keep_alive, None);
    assert!(matches!(
        c.try_recv(Duration::from_millis(1600)),
        Err(v5_common::RecvError::Timeout)
    ));
    c.ping();
}

// ---------------------------------------------------------------------------------------------
// Topic alias scope
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.3.2-10 / -11 (v5)] topic alias mappings last only as long as the network
/// connection: after reconnecting, an alias set on the old connection is unknown (0x82), and
/// a retained message published through an alias is stored under its full topic.
#[test]
fn client_topic_aliases_do_not_survive_reconnect_and_retained_keeps_full_topic() {
    let broker = Broker::start();
    let mut p = props();
    p.topic_alias = Some(2);
    let mut c = RawClient::connect_v5(broker.port, "alias-scope", props());
    c.publish_with("scope/t", b"first", QoS::AtLeastOnce, false, p.clone());
    c.publish_with("", b"retained", QoS::AtLeastOnce, true, p.clone());
    c.disconnect();

    let mut late = RawClient::connect_v5(broker.port, "alias-scope-late", props());
    late.subscribe("scope/#", QoS::AtLeastOnce);
    let m = late.expect_publish();
    assert_eq!((&*m.topic, payload_str(&m)), ("scope/t", "retained"));
    assert!(m.retain);

    let mut c = RawClient::connect_v5(broker.port, "alias-scope", props());
    c.publish_with("", b"stale alias", QoS::AtMostOnce, false, p);
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

/// [MQTT-3.3.2-10 / -11 (v5)] the broker's aliases towards a client start afresh on each
/// connection: a message resent or delivered after reconnect carries the full topic again.
#[test]
fn broker_topic_aliases_start_afresh_on_reconnect() {
    let broker = Broker::start();
    let mut connect = connect_packet("alias-out-re");
    connect.properties.topic_alias_maximum = Some(2);
    connect.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = RawClient::connect_with(broker.port, connect.clone());
    sub.subscribe("re/t", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "alias-out-re-pub", props());
    publ.publish("re/t", "1", QoS::AtLeastOnce);
    publ.publish("re/t", "2", QoS::AtLeastOnce);
    let m1 = sub.expect_publish();
    let m2 = sub.expect_publish();
    assert_eq!((&*m1.topic, &*m2.topic), ("re/t", ""));
    let alias = m1.properties.topic_alias.expect("alias assigned");
    assert_eq!(m2.properties.topic_alias, Some(alias));
    sub.puback(m1.packet_id);
    // The ping's answer proves the broker has processed the PUBACK before the drop.
    sub.ping();
    // m2 is left unacknowledged: it is resent after reconnect.
    sub.drop_connection();

    connect.clean_start = false;
    let (mut sub, ack) = RawClient::connect_with(broker.port, connect);
    assert!(ack.session_present);
    let again = sub.expect_publish();
    assert!(again.dup);
    assert_eq!(payload_str(&again), "2");
    assert_eq!(
        &*again.topic, "re/t",
        "new connection: the alias must be set up again"
    );
    sub.puback(again.packet_id);
    publ.publish("re/t", "3", QoS::AtLeastOnce);
    let m3 = sub.expect_publish();
    assert_eq!(&*m3.topic, "", "alias from this connection reused");
    assert_eq!(payload_str(&m3), "3");
}

// ---------------------------------------------------------------------------------------------
// v5 reason codes of authentication and authorization
// ---------------------------------------------------------------------------------------------

/// Section 3.2.2.2: a v5 client refused at CONNECT gets a v5 reason code (0x86 "Bad User Name
/// or Password" or 0x87 "Not authorized"), never a 3.1.1 return code; section 3.4.2.1: a QoS 1
/// PUBLISH the ACL denies gets PUBACK 0x87.
#[test]
fn v5_authentication_and_acl_refusals_use_v5_reason_codes() {
    let files = tempfile::tempdir().expect("tempdir");
    let passwords = files.path().join("passwd");
    let status = std::process::Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args(["alice", "secret"])
        .status()
        .expect("run mosquitto_passwd (Debian package mosquitto)");
    assert!(status.success());
    let acl = files.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite ok/#\n").expect("write acl");
    let broker = Broker::with_config(&format!(
        "[security]\nallow_anonymous = false\npassword_file = {passwords:?}\nacl_file = {acl:?}\n"
    ));

    for (user, password) in [(None, None), (Some("alice"), Some("wrong"))] {
        let mut connect = connect_packet("v5-auth");
        connect.username = user.map(String::from);
        connect.password = password.map(|p: &str| Bytes::copy_from_slice(p.as_bytes()));
        let (mut c, ack) = RawClient::connect_with(broker.port, connect);
        assert!(
            ack.code == reason::BAD_USERNAME_OR_PASSWORD || ack.code == reason::NOT_AUTHORIZED,
            "user {user:?}: CONNACK {:#04x}",
            ack.code
        );
        c.expect_closed();
    }

    let mut connect = connect_packet("v5-auth");
    connect.username = Some("alice".into());
    connect.password = Some(Bytes::from_static(b"secret"));
    let (mut c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.code, 0);
    assert_eq!(
        c.publish("denied/x", "x", QoS::AtLeastOnce),
        reason::NOT_AUTHORIZED
    );
    assert_eq!(
        c.publish("ok/x", "x", QoS::AtLeastOnce),
        reason::NO_MATCHING_SUBSCRIBERS
    );
}
