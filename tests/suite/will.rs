//! Last will: published when the connection ends abnormally (socket drop, keep-alive expiry,
//! protocol violation), not after DISCONNECT, with the will's QoS and retain flag.

use crate::common;

use common::client::MqttClient;
use common::raw::{self, Connect, RawClient, Will};
use common::Broker;
use std::time::Duration;

fn with_will(client_id: &str, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
    Connect {
        will: Some(Will {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos,
            retain,
        }),
        ..Connect::new(client_id)
    }
}

#[test]
fn will_is_published_when_the_socket_drops() {
    let broker = Broker::start();
    let mut watcher = MqttClient::connect(&broker, "will-watcher");
    watcher.subscribe("will/#", 1);
    let (dying, _) = RawClient::connect_mqtt(
        broker.addr(),
        &with_will("will-drop", "will/drop", b"gone", 1, false),
    );
    dying.drop_connection();
    // [MQTT-3.1.2-8]
    let p = watcher.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/drop", &b"gone"[..])
    );
    // [MQTT-3.1.2-16] will retain 0 -> not retained.
    assert!(!p.retain);
}

#[test]
fn will_is_published_when_keep_alive_expires() {
    let broker = Broker::start();
    let mut watcher = MqttClient::connect(&broker, "ka-watcher");
    watcher.subscribe("will/#", 0);
    let (mut silent, _) = RawClient::connect_mqtt(
        broker.addr(),
        &Connect {
            keep_alive: 1,
            ..with_will("will-ka", "will/ka", b"timed out", 0, false)
        },
    );
    // [MQTT-3.1.2-24] disconnect "as if the network had failed" -> the will is published.
    silent.expect_closed(Duration::from_secs(5));
    let p = watcher.recv_publish();
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("will/ka", &b"timed out"[..])
    );
}

#[test]
fn will_is_published_when_the_broker_closes_a_connection_for_a_protocol_violation() {
    let broker = Broker::start();
    let mut watcher = MqttClient::connect(&broker, "pv-watcher");
    watcher.subscribe("will/#", 0);
    let (mut bad, _) = RawClient::connect_mqtt(
        broker.addr(),
        &with_will("will-pv", "will/pv", b"violated", 0, false),
    );
    bad.send(&raw::subscribe_with_header(0x80, 1, &[("x", 0)]));
    bad.expect_closed(Duration::from_secs(5));
    let p = watcher.recv_publish();
    assert_eq!(p.topic, "will/pv");
}

#[test]
fn will_is_not_published_after_disconnect() {
    let broker = Broker::start();
    let mut watcher = MqttClient::connect(&broker, "nowill-watcher");
    watcher.subscribe("will/#", 0);
    let (mut polite, _) = RawClient::connect_mqtt(
        broker.addr(),
        &with_will("will-polite", "will/polite", b"no", 0, false),
    );
    polite.send(&raw::disconnect());
    // The broker closes the connection after DISCONNECT; by then the will is discarded
    // [MQTT-3.14.4-3] [MQTT-3.1.2-10].
    polite.read_until_closed(Duration::from_secs(5));
    let mut publisher = MqttClient::connect(&broker, "nowill-pub");
    publisher.publish("will/sentinel", 0, false, b"s");
    let p = watcher.recv_publish();
    assert_eq!(
        p.topic, "will/sentinel",
        "the will was published after DISCONNECT: {p:?}"
    );
    // A late will (published as the connection thread winds down) would still show up here.
    assert!(
        watcher
            .recv_publish_timeout(Duration::from_millis(500))
            .is_none(),
        "a message arrived after the sentinel"
    );
}

#[test]
fn will_with_retain_and_qos_is_published_retained_at_its_qos() {
    let broker = Broker::start();
    let mut live = RawClient::connected(broker.addr(), "willr-live");
    assert_eq!(live.subscribe(1, &[("will/r", 2)]), vec![2]);
    let (dying, _) = RawClient::connect_mqtt(
        broker.addr(),
        &with_will("willr", "will/r", b"last words", 1, true),
    );
    dying.drop_connection();
    // Live subscriber: QoS min(1, 2) = 1, RETAIN 0 because the subscription already existed
    // [MQTT-3.3.1-9].
    let p = live.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.qos, p.payload.as_slice()),
        ("will/r", 1, &b"last words"[..])
    );
    live.ack(&p);
    // [MQTT-3.1.2-17] published as a retained message: a new subscriber gets it with RETAIN 1.
    let mut late = RawClient::connected(broker.addr(), "willr-late");
    assert_eq!(late.subscribe(1, &[("will/r", 2)]), vec![2]);
    let p = late.expect_publish();
    assert_eq!(
        (p.retain, p.qos, p.payload.as_slice()),
        (true, 1, &b"last words"[..])
    );
    late.ack(&p);
}

#[test]
fn will_is_published_when_session_is_taken_over() {
    // A takeover closes the old network connection without DISCONNECT, so its will is published
    // [MQTT-3.1.2-8] (mosquitto does the same).
    let broker = Broker::start();
    let mut watcher = MqttClient::connect(&broker, "takeover-watcher");
    watcher.subscribe("will/#", 0);
    let (mut old, _) = RawClient::connect_mqtt(
        broker.addr(),
        &with_will("will-twin", "will/twin", b"replaced", 0, false),
    );
    let (mut new, _) = RawClient::connect_mqtt(broker.addr(), &Connect::new("will-twin"));
    old.read_until_closed(Duration::from_secs(5));
    let p = watcher.recv_publish();
    assert_eq!(p.topic, "will/twin");
    new.ping();
}
