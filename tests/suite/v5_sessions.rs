//! MQTT 5.0 session behaviour: Session Expiry Interval (also changed at DISCONNECT), Clean
//! Start, Will Delay Interval, Message Expiry Interval and Receive Maximum. Time-based rules use
//! intervals of 1-2 s; a sleep is used only where the spec's clock is the thing under test.

use crate::common;
use crate::common::codec as v5_common;

use common::{persistent_config, Broker};
use mqflux::protocol::{reason, Ack, Packet, Properties, QoS};
use std::time::{Duration, Instant};
use v5_common::{connect_packet, payload_str, will, RawClient};

fn props() -> Properties {
    Properties::default()
}

fn expiry(secs: u32) -> Properties {
    Properties {
        session_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// Connect `client_id` with Clean Start `clean_start` and `properties`; returns the client and
/// the Session Present flag.
fn connect(
    port: u16,
    client_id: &str,
    clean_start: bool,
    properties: Properties,
) -> (RawClient, bool) {
    let mut c = connect_packet(client_id);
    c.clean_start = clean_start;
    c.properties = properties;
    let (client, ack) = RawClient::connect_with(port, c);
    assert_eq!(ack.code, 0, "{ack:?}");
    (client, ack.session_present)
}

// ---------------------------------------------------------------------------------------------
// Session expiry, clean start
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.1.2-23] a session with a Session Expiry Interval > 0 is kept after the connection
/// closes (Session Present 1 [MQTT-3.2.2-3], queued QoS 1 messages delivered) and discarded once
/// the interval has passed (Session Present 0, subscriptions gone).
#[test]
fn session_is_kept_for_its_expiry_interval_then_discarded() {
    let broker = Broker::start();
    let (mut c, present) = connect(broker.port, "se-1", true, expiry(1));
    assert!(!present);
    c.subscribe("se/t", QoS::AtLeastOnce);
    c.disconnect();

    let mut publ = RawClient::connect_v5(broker.port, "se-1-pub", props());
    publ.publish("se/t", "while offline", QoS::AtLeastOnce);
    let (mut c, present) = connect(broker.port, "se-1", false, expiry(1));
    assert!(present, "session kept within its expiry interval");
    let m = c.expect_publish();
    assert_eq!(payload_str(&m), "while offline");
    c.puback(m.packet_id);
    c.disconnect();

    // The spec's clock is what is tested here: wait past the 1 s interval (plus housekeeping).
    std::thread::sleep(Duration::from_millis(1700));
    assert_eq!(
        publ.publish("se/t", "after expiry", QoS::AtLeastOnce),
        reason::NO_MATCHING_SUBSCRIBERS,
        "the expired session's subscription is gone"
    );
    let (mut c, present) = connect(broker.port, "se-1", false, expiry(1));
    assert!(!present, "session discarded after its expiry interval");
    c.expect_no_publish(Duration::from_millis(200));
}

/// Section 3.1.2.11.2: an absent Session Expiry Interval means 0: the session ends with the
/// connection, even with Clean Start 0.
#[test]
fn session_without_expiry_interval_ends_with_the_connection() {
    let broker = Broker::start();
    let (mut c, _) = connect(broker.port, "se-0", false, props());
    c.subscribe("se0/t", QoS::AtLeastOnce);
    c.disconnect();
    let (_c, present) = connect(broker.port, "se-0", false, props());
    assert!(!present);
}

/// [MQTT-3.1.2-4] Clean Start 1 discards an existing session: Session Present 0
/// [MQTT-3.2.2-2], its subscriptions and queued messages are gone.
#[test]
fn clean_start_discards_the_existing_session() {
    let broker = Broker::start();
    let (mut c, _) = connect(broker.port, "cs", true, expiry(60));
    c.subscribe("cs/t", QoS::AtLeastOnce);
    c.disconnect();
    let mut publ = RawClient::connect_v5(broker.port, "cs-pub", props());
    publ.publish("cs/t", "queued", QoS::AtLeastOnce);

    let (mut c, present) = connect(broker.port, "cs", true, expiry(60));
    assert!(!present, "clean start gives a new session");
    c.expect_no_publish(Duration::from_millis(300));
    assert_eq!(
        publ.publish("cs/t", "x", QoS::AtLeastOnce),
        reason::NO_MATCHING_SUBSCRIBERS
    );
}

/// Section 3.14.2.2.2: the Session Expiry Interval sent in DISCONNECT replaces the one from
/// CONNECT: 0 at DISCONNECT ends a session that CONNECT asked to keep.
#[test]
fn session_expiry_set_to_zero_at_disconnect_ends_the_session() {
    let broker = Broker::start();
    let (mut c, _) = connect(broker.port, "se-dc0", true, expiry(60));
    c.subscribe("dc0/t", QoS::AtLeastOnce);
    c.disconnect_with(0, expiry(0));
    let (_c, present) = connect(broker.port, "se-dc0", false, expiry(60));
    assert!(!present, "DISCONNECT set the expiry to 0");
}

/// Section 3.14.2.2.2: a longer Session Expiry Interval in DISCONNECT keeps the session beyond
/// the interval given in CONNECT.
#[test]
fn session_expiry_raised_at_disconnect_keeps_the_session_longer() {
    let broker = Broker::start();
    let (mut c, _) = connect(broker.port, "se-dcup", true, expiry(1));
    c.subscribe("dcup/t", QoS::AtLeastOnce);
    c.disconnect_with(0, expiry(60));
    std::thread::sleep(Duration::from_millis(1600));
    let (_c, present) = connect(broker.port, "se-dcup", false, expiry(60));
    assert!(present, "DISCONNECT raised the expiry to 60 s");
}

/// [MQTT-3.14.2-2] a Session Expiry Interval of 0 at CONNECT must not be set to non-zero in
/// DISCONNECT: the broker answers DISCONNECT 0x82 "Protocol Error".
#[test]
fn nonzero_session_expiry_at_disconnect_after_zero_at_connect_gets_0x82() {
    let broker = Broker::start();
    let (mut c, _) = connect(broker.port, "se-bad", true, props());
    c.send(&Packet::Disconnect(mqflux::protocol::Disconnect {
        reason_code: 0,
        properties: expiry(30),
    }));
    c.expect_disconnect(reason::PROTOCOL_ERROR);
}

// ---------------------------------------------------------------------------------------------
// Will delay
// ---------------------------------------------------------------------------------------------

fn will_connect(
    client_id: &str,
    topic: &str,
    delay: Option<u32>,
    session_expiry: u32,
) -> mqflux::protocol::Connect {
    let mut c = connect_packet(client_id);
    c.properties = expiry(session_expiry);
    c.will = Some(will(
        topic,
        "offline",
        Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    ));
    c
}

/// [MQTT-3.1.3-9] the will is published once the Will Delay Interval has passed after the
/// connection was lost (not before).
#[test]
fn will_is_published_after_the_will_delay_interval() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wd-watch", props());
    watcher.subscribe("wd/#", QoS::AtLeastOnce);
    let (c, _) = RawClient::connect_with(broker.port, will_connect("wd-1", "wd/1", Some(1), 60));
    let lost = Instant::now();
    c.drop_connection();
    watcher.expect_no_publish(Duration::from_millis(700));
    let m = watcher.expect_publish();
    assert_eq!((&*m.topic, payload_str(&m)), ("wd/1", "offline"));
    assert!(
        lost.elapsed() >= Duration::from_secs(1),
        "published after {:?}",
        lost.elapsed()
    );
}

/// [MQTT-3.1.3-9] a client that reconnects (resuming its session) before the Will Delay Interval
/// passes cancels the will.
#[test]
fn will_is_cancelled_by_reconnect_before_the_will_delay() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wdc-watch", props());
    watcher.subscribe("wdc/#", QoS::AtLeastOnce);
    let (c, _) = RawClient::connect_with(broker.port, will_connect("wd-2", "wdc/2", Some(1), 60));
    c.drop_connection();
    std::thread::sleep(Duration::from_millis(200));
    let (mut back, present) = connect(broker.port, "wd-2", false, expiry(60));
    assert!(present);
    watcher.expect_no_publish(Duration::from_millis(1800));
    back.ping();
}

/// [MQTT-3.1.3-9] section 3.1.3.2.2: the will is published when the session ends, if that comes
/// before the Will Delay Interval (session expiry 1 s, will delay 60 s).
#[test]
fn will_is_published_when_the_session_expires_before_the_will_delay() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wds-watch", props());
    watcher.subscribe("wds/#", QoS::AtLeastOnce);
    let (c, _) = RawClient::connect_with(broker.port, will_connect("wd-3", "wds/3", Some(60), 1));
    c.drop_connection();
    let m = watcher.expect_publish();
    assert_eq!(&*m.topic, "wds/3");
}

/// Section 3.1.3.2.2: the will is published when the Will Delay Interval passes or the session
/// ends, whichever is first; reconnecting with Clean Start 1 ends the old session
/// [MQTT-3.1.2-4], so a will still waiting for its delay is published then.
#[test]
fn delayed_will_is_published_when_clean_start_ends_the_old_session() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wdcs-watch", props());
    watcher.subscribe("wdcs/#", QoS::AtLeastOnce);
    let (c, _) =
        RawClient::connect_with(broker.port, will_connect("wd-cs", "wdcs/x", Some(60), 60));
    c.drop_connection();
    watcher.expect_no_publish(Duration::from_millis(300));
    let (mut back, present) = connect(broker.port, "wd-cs", true, expiry(60));
    assert!(!present);
    let m = watcher.expect_publish();
    assert_eq!((&*m.topic, payload_str(&m)), ("wdcs/x", "offline"));
    back.ping();
}

/// Without a Will Delay Interval the will is published as soon as the connection is lost
/// [MQTT-3.1.2-8].
#[test]
fn will_without_delay_is_published_at_once_on_connection_loss() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wd0-watch", props());
    watcher.subscribe("wd0/#", QoS::AtLeastOnce);
    let (c, _) = RawClient::connect_with(broker.port, will_connect("wd-0", "wd0/x", None, 60));
    let lost = Instant::now();
    c.drop_connection();
    let m = watcher.expect_publish();
    assert_eq!(&*m.topic, "wd0/x");
    assert!(lost.elapsed() < Duration::from_millis(900));
}

// ---------------------------------------------------------------------------------------------
// Message expiry
// ---------------------------------------------------------------------------------------------

fn message_expiry(secs: u32) -> Properties {
    Properties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

/// [MQTT-3.3.2-5] a retained message whose Message Expiry Interval has passed is not delivered
/// to a new subscriber; before that it is, with the remaining interval [MQTT-3.3.2-6].
#[test]
fn expired_retained_message_is_not_delivered() {
    let broker = Broker::start();
    let mut publ = RawClient::connect_v5(broker.port, "mx-ret-pub", props());
    publ.publish_with(
        "mx/ret",
        b"short-lived",
        QoS::AtLeastOnce,
        true,
        message_expiry(1),
    );

    let mut early = RawClient::connect_v5(broker.port, "mx-ret-early", props());
    early.subscribe("mx/ret", QoS::AtLeastOnce);
    let m = early.expect_publish();
    assert!(m.retain);
    let left = m
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!(left <= 1, "remaining interval {left}");

    std::thread::sleep(Duration::from_millis(1200));
    let mut late = RawClient::connect_v5(broker.port, "mx-ret-late", props());
    late.subscribe("mx/ret", QoS::AtLeastOnce);
    late.expect_no_publish(Duration::from_millis(300));
}

/// [MQTT-3.3.2-5] a message queued for an offline session expires there and is not delivered
/// on reconnect; a longer-lived one is, carrying the remaining interval [MQTT-3.3.2-6]; one
/// without expiry carries none.
#[test]
fn expired_queued_message_is_not_delivered_and_remaining_expiry_is_forwarded() {
    let broker = Broker::start();
    let (mut sub, _) = connect(broker.port, "mx-q", true, expiry(60));
    sub.subscribe("mx/q", QoS::AtLeastOnce);
    sub.disconnect();

    let mut publ = RawClient::connect_v5(broker.port, "mx-q-pub", props());
    publ.publish_with("mx/q", b"short", QoS::AtLeastOnce, false, message_expiry(1));
    publ.publish_with("mx/q", b"long", QoS::AtLeastOnce, false, message_expiry(60));
    publ.publish_with("mx/q", b"forever", QoS::AtLeastOnce, false, props());
    std::thread::sleep(Duration::from_millis(1300));

    let (mut sub, present) = connect(broker.port, "mx-q", false, expiry(60));
    assert!(present);
    let m = sub.expect_publish();
    assert_eq!(payload_str(&m), "long", "the expired message is skipped");
    let left = m
        .properties
        .message_expiry_interval
        .expect("remaining expiry");
    assert!(
        (1..=59).contains(&left),
        "remaining interval {left} must have gone down from 60"
    );
    sub.puback(m.packet_id);
    let m = sub.expect_publish();
    assert_eq!(payload_str(&m), "forever");
    assert_eq!(m.properties.message_expiry_interval, None);
    sub.puback(m.packet_id);
    sub.expect_no_publish(Duration::from_millis(200));
}

/// [MQTT-3.3.2-6] the forwarded Message Expiry Interval is the received one minus the time the
/// message waited, in whole seconds, as mosquitto, EMQX and FlashMQ send it: a message
/// forwarded at once keeps 2000 (Node-RED's own v5 tests expect exactly that), and one queued
/// for an offline session for more than a second carries 1999 or less. Wills too: a will
/// published at once keeps its interval.
#[test]
fn forwarded_message_expiry_subtracts_only_whole_seconds_waited() {
    let broker = Broker::start();
    let mut live = RawClient::connect_v5(broker.port, "mx2k-live", props());
    live.subscribe("mx2k/#", QoS::AtLeastOnce);
    let (mut offline, _) = connect(broker.port, "mx2k-off", true, expiry(60));
    offline.subscribe("mx2k/#", QoS::AtLeastOnce);
    offline.disconnect();

    let mut publ = RawClient::connect_v5(broker.port, "mx2k-pub", props());
    publ.publish_with(
        "mx2k/a",
        b"x",
        QoS::AtLeastOnce,
        false,
        message_expiry(2000),
    );
    let m = live.expect_publish();
    assert_eq!(m.properties.message_expiry_interval, Some(2000));
    live.puback(m.packet_id);

    // Waiting is what is measured here: the message sits in the offline session's queue.
    std::thread::sleep(Duration::from_millis(1300));
    let (mut offline, present) = connect(broker.port, "mx2k-off", false, expiry(60));
    assert!(present);
    let m = offline.expect_publish();
    let left = m.properties.message_expiry_interval.expect("expiry");
    assert!(
        (1997..=1999).contains(&left),
        "queued >1 s: one or two whole seconds subtracted, got {left}"
    );

    // A will published at once keeps its whole interval.
    let mut c = connect_packet("mx2k-will");
    c.will = Some(will("mx2k/will", "gone", message_expiry(2000)));
    let (c, _) = RawClient::connect_with(broker.port, c);
    c.drop_connection();
    let m = live.expect_publish();
    assert_eq!(&*m.topic, "mx2k/will");
    assert_eq!(m.properties.message_expiry_interval, Some(2000));
}

// ---------------------------------------------------------------------------------------------
// Receive Maximum towards the client
// ---------------------------------------------------------------------------------------------

/// [MQTT-3.3.4-9 (v5 3.3.4: "The Server MUST NOT send more than Receive Maximum QoS 1 and QoS 2
/// PUBLISH packets for which it has not received PUBACK")]: with Receive Maximum 2 and 50
/// queued messages, at most 2 are ever unacknowledged, and all 50 arrive in order.
#[test]
fn receive_maximum_2_is_never_exceeded_with_50_queued_messages() {
    let broker = Broker::start();
    let (mut sub, _) = connect(broker.port, "rm2", true, expiry(60));
    sub.subscribe("rm/t", QoS::AtLeastOnce);
    sub.disconnect();
    let mut publ = RawClient::connect_v5(broker.port, "rm2-pub", props());
    for i in 0..50 {
        publ.publish("rm/t", &i.to_string(), QoS::AtLeastOnce);
    }

    let mut p = expiry(60);
    p.receive_maximum = Some(2);
    let (mut sub, present) = connect(broker.port, "rm2", false, p);
    assert!(present);
    let mut received: Vec<mqflux::protocol::Publish> = Vec::new();
    let mut acked = 0;
    while acked < 50 {
        // A PINGREQ round trip is a barrier: every PUBLISH the broker sent because of the
        // acknowledgements so far is read before the PINGRESP.
        sub.ping();
        while let Ok(Packet::Publish(m)) = sub.try_recv(Duration::ZERO) {
            received.push(m);
        }
        let unacked = received.len() - acked;
        assert!(
            unacked <= 2,
            "{unacked} unacknowledged after {acked} PUBACKs"
        );
        assert_eq!(
            unacked,
            2.min(50 - acked),
            "window not refilled after {acked} PUBACKs"
        );
        sub.puback(received[acked].packet_id);
        acked += 1;
    }
    sub.ping();
    assert!(
        sub.try_recv(Duration::from_millis(100)).is_err(),
        "nothing after the 50th"
    );
    let payloads: Vec<String> = received
        .iter()
        .map(|m| payload_str(m).to_string())
        .collect();
    let want: Vec<String> = (0..50).map(|i: i32| i.to_string()).collect();
    assert_eq!(payloads, want);
}

/// v5 section 4.9: a QoS 2 message counts against Receive Maximum until PUBCOMP (PUBREC with a
/// success code does not free the slot); PUBREC with a reason code >= 0x80 does.
#[test]
fn qos2_message_holds_its_receive_maximum_slot_until_pubcomp() {
    let broker = Broker::start();
    let mut p = props();
    p.receive_maximum = Some(1);
    let mut sub = RawClient::connect_v5(broker.port, "rm1-q2", p);
    sub.subscribe("rmq2/t", QoS::ExactlyOnce);
    let mut publ = RawClient::connect_v5(broker.port, "rm1-q2-pub", props());
    for payload in ["a", "b", "c"] {
        publ.publish("rmq2/t", payload, QoS::ExactlyOnce);
    }
    let a = sub.expect_publish();
    assert_eq!(payload_str(&a), "a");
    sub.send(&Packet::PubRec(Ack::new(a.packet_id)));
    sub.wait_for("PUBREL", |p| {
        matches!(p, Packet::PubRel(r) if r.packet_id == a.packet_id).then_some(())
    });
    sub.ping();
    sub.expect_no_publish(Duration::from_millis(200));
    sub.send(&Packet::PubComp(Ack::new(a.packet_id)));
    let b = sub.expect_publish();
    assert_eq!(payload_str(&b), "b");
    // Refuse "b" with PUBREC 0x80: the exchange ends and the slot is free for "c".
    sub.send(&Packet::PubRec(Ack {
        packet_id: b.packet_id,
        reason_code: reason::UNSPECIFIED_ERROR,
        properties: props(),
    }));
    let c = sub.expect_publish();
    assert_eq!(payload_str(&c), "c");
}

/// Section 3.1.3.2: the will's properties (Content Type, User Properties, Response Topic,
/// Correlation Data, Payload Format Indicator) travel with the will message; the Will Delay
/// Interval is not a PUBLISH property and is not forwarded.
#[test]
fn will_properties_are_forwarded_with_the_will_message() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wp-watch", props());
    watcher.subscribe("wp/#", QoS::AtLeastOnce);
    let will_props = Properties {
        will_delay_interval: Some(0),
        content_type: Some("text/plain".into()),
        user_properties: vec![("reason".into(), "lost".into())],
        response_topic: Some("wp/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"w1")),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    let mut c = connect_packet("wp");
    c.will = Some(will("wp/status", "offline", will_props.clone()));
    let (c, _) = RawClient::connect_with(broker.port, c);
    c.drop_connection();
    let m = watcher.expect_publish();
    let mut want = will_props;
    want.will_delay_interval = None;
    assert_eq!(*m.properties, want);
}

/// [MQTT-3.1.3-11 (v5 3.1.3.2.3)] a will marked as UTF-8 (Payload Format Indicator 1) whose
/// payload is not valid UTF-8 is refused: CONNACK 0x99 "Payload format invalid".
#[test]
fn will_payload_marked_utf8_but_invalid_gets_connack_0x99() {
    let broker = Broker::start();
    let mut c = connect_packet("wp-bad");
    let mut w = will(
        "wp/bad",
        "",
        Properties {
            payload_format_indicator: Some(1),
            ..Default::default()
        },
    );
    w.payload = bytes::Bytes::from_static(&[0xFF, 0xFE]);
    c.will = Some(w);
    let (mut c, ack) = RawClient::connect_with(broker.port, c);
    assert_eq!(ack.code, reason::PAYLOAD_FORMAT_INVALID);
    c.expect_closed();
}

/// [MQTT-3.1.2-25] a message queued while the client was offline that exceeds the Maximum
/// Packet Size the client gives on reconnect is not sent; the others are.
#[test]
fn queued_message_larger_than_client_maximum_packet_size_is_not_sent_on_reconnect() {
    let broker = Broker::start();
    let mut p = expiry(60);
    p.maximum_packet_size = Some(64);
    let (mut sub, _) = connect(broker.port, "mps-q", true, p.clone());
    sub.subscribe("mpsq/t", QoS::AtLeastOnce);
    sub.disconnect();
    let mut publ = RawClient::connect_v5(broker.port, "mps-q-pub", props());
    publ.publish("mpsq/t", &"x".repeat(200), QoS::AtLeastOnce);
    publ.publish("mpsq/t", "small", QoS::AtLeastOnce);
    let (mut sub, present) = connect(broker.port, "mps-q", false, p);
    assert!(present);
    let m = sub.expect_publish();
    assert_eq!(payload_str(&m), "small");
    sub.puback(m.packet_id);
    sub.expect_no_publish(Duration::from_millis(200));
}

/// [MQTT-3.3.4-9 (v5)] Receive Maximum applies per connection: a client that reconnects with
/// a smaller Receive Maximum than it had is not sent more unacknowledged PUBLISHes than that,
/// even for messages resent from the previous connection.
#[test]
fn receive_maximum_given_on_reconnect_limits_resent_messages() {
    let broker = Broker::start();
    let mut p = expiry(60);
    p.receive_maximum = Some(10);
    let (mut sub, _) = connect(broker.port, "rm-re", true, p);
    sub.subscribe("rmre/t", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "rm-re-pub", props());
    for i in 0..6 {
        publ.publish("rmre/t", &i.to_string(), QoS::AtLeastOnce);
    }
    for _ in 0..6 {
        sub.expect_publish(); // never acknowledged
    }
    sub.drop_connection();
    let mut p = expiry(60);
    p.receive_maximum = Some(2);
    let (mut sub, present) = connect(broker.port, "rm-re", false, p);
    assert!(present);
    let mut got = Vec::new();
    let mut acked = 0;
    while acked < 6 {
        sub.ping();
        while let Ok(Packet::Publish(m)) = sub.try_recv(Duration::ZERO) {
            got.push(m);
        }
        let unacked = got.len() - acked;
        assert!(
            unacked <= 2,
            "{unacked} unacknowledged with Receive Maximum 2"
        );
        assert!(unacked > 0, "nothing in flight after {acked} PUBACKs");
        sub.puback(got[acked].packet_id);
        acked += 1;
    }
    let payloads: Vec<&str> = got.iter().map(payload_str).collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4", "5"]);
}

/// Section 3.1.3.2.4: the will's Message Expiry Interval is its lifetime once published, so a
/// will published after its delay is delivered even when the delay is as long as the expiry.
#[test]
fn will_message_expiry_counts_from_publication_after_the_will_delay() {
    let broker = Broker::start();
    let mut watcher = RawClient::connect_v5(broker.port, "wx-watch", props());
    watcher.subscribe("wx/#", QoS::AtLeastOnce);
    let mut c = connect_packet("wx");
    c.properties = expiry(60);
    c.will = Some(will(
        "wx/status",
        "offline",
        Properties {
            will_delay_interval: Some(1),
            message_expiry_interval: Some(1),
            ..Default::default()
        },
    ));
    let (c, _) = RawClient::connect_with(broker.port, c);
    c.drop_connection();
    let m = watcher.expect_publish();
    assert_eq!(&*m.topic, "wx/status");
    assert_eq!(m.properties.message_expiry_interval, Some(1));
}

/// Section 4.9: Receive Maximum limits only QoS 1 and 2; QoS 0 messages still flow while the
/// window is full.
#[test]
fn qos0_messages_flow_while_the_receive_maximum_window_is_full() {
    let broker = Broker::start();
    let mut p = props();
    p.receive_maximum = Some(1);
    let mut sub = RawClient::connect_v5(broker.port, "rm-q0", p);
    sub.subscribe("rmq0/#", QoS::AtLeastOnce);
    let mut publ = RawClient::connect_v5(broker.port, "rm-q0-pub", props());
    publ.publish("rmq0/a", "held", QoS::AtLeastOnce);
    publ.publish("rmq0/a", "waits", QoS::AtLeastOnce);
    publ.publish("rmq0/b", "q0", QoS::AtMostOnce);
    let first = sub.expect_publish();
    assert_eq!(payload_str(&first), "held");
    let next = sub.expect_publish();
    assert_eq!(
        payload_str(&next),
        "q0",
        "QoS 0 is not held back by the window"
    );
    sub.puback(first.packet_id);
    assert_eq!(payload_str(&sub.expect_publish()), "waits");
}

/// [MQTT-3.2.2-16 (v5)] the Assigned Client Identifier names the session: a client that got one
/// with a Session Expiry Interval can resume that session by connecting with it.
#[test]
fn assigned_client_identifier_can_resume_its_session() {
    let broker = Broker::start();
    let mut c = connect_packet("");
    c.properties = expiry(60);
    let (mut first, ack) = RawClient::connect_with(broker.port, c);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned client identifier");
    first.subscribe("aci/t", QoS::AtLeastOnce);
    first.disconnect();
    let mut publ = RawClient::connect_v5(broker.port, "aci-pub", props());
    publ.publish("aci/t", "for the assigned id", QoS::AtLeastOnce);
    let (mut again, present) = connect(broker.port, &id, false, expiry(60));
    assert!(present, "session of {id} resumed");
    assert_eq!(payload_str(&again.expect_publish()), "for the assigned id");
}

/// Section 3.3.2.3: a retained message keeps its application properties: a late
/// subscriber gets the User Properties, Content Type and Correlation Data it was published with.
#[test]
fn retained_message_keeps_its_properties_for_late_subscribers() {
    let broker = Broker::start();
    let mut publ = RawClient::connect_v5(broker.port, "retp-pub", props());
    let p = Properties {
        user_properties: vec![("unit".into(), "C".into())],
        content_type: Some("text/plain".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"r1")),
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    publ.publish_with("retp/t", b"21", QoS::AtLeastOnce, true, p.clone());
    let mut late = RawClient::connect_v5(broker.port, "retp-late", props());
    late.subscribe("retp/#", QoS::AtLeastOnce);
    let m = late.expect_publish();
    assert!(m.retain);
    assert_eq!(*m.properties, p);
}

// ---------------------------------------------------------------------------------------------
// Across a restart (persistence on): the clocks keep running while the broker is down.

/// [MQTT-3.1.3-9] a delayed will survives a restart and is published when its Will Delay
/// Interval, counted from the disconnection, has passed: not lost, not sent at start-up.
#[test]
fn delayed_will_survives_a_restart_and_keeps_its_delay() {
    let store = tempfile::tempdir().unwrap();
    let mut broker = Broker::with_config(&persistent_config(store.path()));
    let (c, _) = RawClient::connect_with(broker.port, will_connect("rw-1", "rw/1", Some(3), 60));
    let lost = Instant::now();
    c.drop_connection();
    std::thread::sleep(Duration::from_millis(300));
    broker.stop_gracefully();
    broker.restart();
    let mut watcher = RawClient::connect_v5(broker.port, "rw-watch", props());
    watcher.subscribe("rw/#", QoS::AtLeastOnce);
    let m = watcher.expect_publish();
    assert_eq!((&*m.topic, payload_str(&m)), ("rw/1", "offline"));
    let after = lost.elapsed();
    assert!(
        after >= Duration::from_secs(3) && after < Duration::from_secs(6),
        "published {after:?} after the disconnection"
    );
    // Published once: another restart does not send it again.
    std::thread::sleep(Duration::from_millis(300));
    broker.stop_gracefully();
    broker.restart();
    let mut watcher = RawClient::connect_v5(broker.port, "rw-watch", props());
    watcher.subscribe("rw/#", QoS::AtLeastOnce);
    watcher.expect_no_publish(Duration::from_millis(1000));
}

/// [MQTT-3.1.2-23] the Session Expiry Interval counts from the disconnection: a session that
/// expired while the broker was down is gone after the restart (Session Present 0), one whose
/// interval has not passed is still there.
#[test]
fn session_expiry_counts_the_time_the_broker_was_down() {
    let store = tempfile::tempdir().unwrap();
    let mut broker = Broker::with_config(&persistent_config(store.path()));
    let (short, _) = connect(broker.port, "rx-short", true, expiry(1));
    let (long, _) = connect(broker.port, "rx-long", true, expiry(60));
    short.disconnect();
    long.disconnect();
    broker.stop_gracefully();
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    let (_, present) = connect(broker.port, "rx-short", false, expiry(1));
    assert!(!present, "expired while the broker was down");
    let (_, present) = connect(broker.port, "rx-long", false, expiry(60));
    assert!(present);
}

/// What the journal image `data` (a crash after its last byte) says about the will on `topic`
/// of client `owner`: (still due in its disconnection record, queued for client `subscriber`).
fn will_in_store(data: &[u8], owner: &str, subscriber: &str, topic: &str) -> (bool, bool) {
    let (map, _, _) = mqflux::store::journal::replay(data);
    let loaded = mqflux::broker::persist::load(&map);
    let session = |id: &str| loaded.sessions.iter().find(|s| s.client_id == id);
    let due = session(owner)
        .and_then(|s| s.detached.as_ref())
        .and_then(|d| d.will.as_ref())
        .is_some_and(|(_, w)| &*w.topic == topic);
    let queued =
        session(subscriber).is_some_and(|s| s.outgoing.iter().any(|o| &*o.message.topic == topic));
    (due, queued)
}

/// A will published from the store (its delay passed, its session expired, or a Clean Start
/// ended its session) changes two things there: its client's records lose it and the
/// subscribers' queues gain it. A crash at any byte of the journal must leave exactly one of
/// them: the will still due (published after the restart) or delivered; never neither (lost)
/// nor both (published twice) [MQTT-3.1.3-9].
#[test]
fn a_will_published_from_the_store_is_never_lost_nor_doubled_by_a_crash_at_any_point() {
    let store = tempfile::tempdir().unwrap();
    let journal = store.path().join(mqflux::store::journal::FILE_NAME);
    let broker = Broker::with_config(&persistent_config(store.path()));
    let (mut sub, _) = connect(broker.port, "cw-sub", true, expiry(300));
    sub.subscribe("cw/#", QoS::AtLeastOnce);
    sub.disconnect(); // its session (and queue) is in the store from now on
    let read = || std::fs::read(&journal).expect("journal");
    let wait_for = |what: &str, f: &dyn Fn(&[u8]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let data = read();
            if f(&data) {
                return data;
            }
            assert!(Instant::now() < deadline, "store never had {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // (client, will delay, session expiry, Clean Start reconnection)
    let cases = [
        ("cw-delay", 3, 60, false), // the will's delay passes; the session lives on
        ("cw-expiry", 60, 3, false), // the session expires first
        ("cw-clean", 60, 60, true), // a Clean Start reconnection ends the session
    ];
    for (client, delay, session_expiry, clean) in cases {
        let topic = format!("cw/{client}");
        let (c, _) = RawClient::connect_with(
            broker.port,
            will_connect(client, &topic, Some(delay), session_expiry),
        );
        c.drop_connection();
        let before = wait_for("the delayed will", &|d| {
            will_in_store(d, client, "cw-sub", &topic).0
        });
        let _back = clean.then(|| connect(broker.port, client, true, expiry(60)).0);
        let after = wait_for("the will delivered", &|d| {
            will_in_store(d, client, "cw-sub", &topic) == (false, true)
        });
        for cut in before.len()..=after.len() {
            let (due, queued) = will_in_store(&after[..cut], client, "cw-sub", &topic);
            assert!(
                due != queued,
                "{client}: a crash after byte {cut} of the journal leaves the will {}",
                if due { "due and delivered" } else { "lost" }
            );
        }
    }
}
