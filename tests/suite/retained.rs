//! Retained messages: stored per topic, delivered with the RETAIN flag on subscribe, replaced
//! by newer ones and cleared by an empty payload.

use crate::common;

use common::client::MqttClient;
use common::raw::{self, RawClient};
use common::Broker;

#[test]
fn retained_message_is_delivered_to_late_subscriber_with_retain_flag() {
    let broker = Broker::start();
    let mut publisher = MqttClient::connect(&broker, "ret-pub");
    publisher.publish("ret/state", 1, true, b"on");
    // [MQTT-3.3.1-5] stored; [MQTT-3.3.1-6] sent on a new subscription; [MQTT-3.3.1-8] with
    // RETAIN 1.
    let mut sub = RawClient::connected(broker.addr(), "ret-sub");
    assert_eq!(sub.subscribe(1, &[("ret/state", 1)]), vec![1]);
    let p = sub.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.retain, p.qos, p.payload.as_slice()),
        ("ret/state", true, 1, &b"on"[..])
    );
    sub.ack(&p);
}

#[test]
fn retained_messages_are_delivered_for_matching_wildcard_subscription() {
    let broker = Broker::start();
    let mut publisher = MqttClient::connect(&broker, "retw-pub");
    // QoS 1: the PUBACK means the broker has stored it before we subscribe.
    publisher.publish("retw/a", 1, true, b"A");
    publisher.publish("retw/b/c", 1, true, b"C");
    publisher.publish("other", 1, true, b"X");
    let mut sub = RawClient::connected(broker.addr(), "retw-sub");
    assert_eq!(sub.subscribe(1, &[("retw/#", 1)]), vec![1]);
    let mut got = [sub.expect_publish(), sub.expect_publish()];
    sub.ack(&got[0]);
    sub.ack(&got[1]);
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    let got: Vec<_> = got
        .iter()
        .map(|p| (p.topic.as_str(), p.retain, p.payload.as_slice()))
        .collect();
    assert_eq!(
        got,
        vec![("retw/a", true, &b"A"[..]), ("retw/b/c", true, &b"C"[..])]
    );
}

#[test]
fn message_to_established_subscription_has_retain_flag_cleared() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "retlive-sub");
    assert_eq!(sub.subscribe(1, &[("retlive", 1)]), vec![1]);
    let mut publisher = MqttClient::connect(&broker, "retlive-pub");
    publisher.publish("retlive", 1, true, b"v");
    // [MQTT-3.3.1-9] RETAIN 0 when forwarding to an existing subscription.
    let p = sub.expect_publish();
    assert!(!p.retain, "live delivery carried the RETAIN flag: {p:?}");
    sub.ack(&p);
}

#[test]
fn newer_retained_message_replaces_older_one() {
    let broker = Broker::start();
    let mut publisher = MqttClient::connect(&broker, "retrep-pub");
    publisher.publish("retrep", 1, true, b"old");
    publisher.publish("retrep", 0, true, b"new");
    // [MQTT-3.3.1-12] a non-retained publish does not touch the retained message.
    publisher.publish("retrep", 1, false, b"not retained");
    let mut sub = RawClient::connected(broker.addr(), "retrep-sub");
    assert_eq!(
        sub.subscribe(1, &[("retrep", 2), ("sentinel", 0)]),
        vec![2, 0]
    );
    let p = sub.expect_publish();
    // [MQTT-3.3.1-7] the QoS 0 retained message replaced the QoS 1 one, and keeps its QoS.
    assert_eq!(
        (p.payload.as_slice(), p.qos, p.retain),
        (&b"new"[..], 0, true)
    );
    publisher.publish("sentinel", 0, false, b"s");
    assert_eq!(
        sub.expect_publish().topic,
        "sentinel",
        "more than one retained message for one topic"
    );
}

#[test]
fn empty_retained_payload_clears_retained_message_and_is_forwarded() {
    let broker = Broker::start();
    let mut publisher = MqttClient::connect(&broker, "retclr-pub");
    publisher.publish("retclr", 1, true, b"something");
    let mut live = RawClient::connected(broker.addr(), "retclr-live");
    assert_eq!(live.subscribe(1, &[("retclr", 1)]), vec![1]);
    let p = live.expect_publish();
    assert_eq!((p.retain, p.payload.as_slice()), (true, &b"something"[..]));
    live.ack(&p);

    publisher.publish("retclr", 1, true, b"");
    // [MQTT-3.3.1-10] the empty message is forwarded to existing subscribers as usual ...
    let p = live.expect_publish();
    assert_eq!((p.topic.as_str(), p.payload.len()), ("retclr", 0));
    live.ack(&p);
    // ... and removes the retained message, which is not replaced by the empty one
    // [MQTT-3.3.1-11]: a new subscriber gets nothing before the sentinel.
    let mut late = RawClient::connected(broker.addr(), "retclr-late");
    assert_eq!(
        late.subscribe(1, &[("retclr", 1), ("sentinel", 1)]),
        vec![1, 1]
    );
    publisher.publish("sentinel", 1, false, b"s");
    let p = late.expect_publish();
    assert_eq!(
        p.topic, "sentinel",
        "a cleared retained message was still delivered: {p:?}"
    );
    late.ack(&p);
}

#[test]
fn retained_message_outlives_the_publishers_session() {
    let broker = Broker::start();
    let mut publisher = RawClient::connected(broker.addr(), "retgone-pub");
    publisher.publish_acked("retgone", b"stays", 1, 1, true);
    publisher.send(&raw::disconnect());
    publisher.read_until_closed(std::time::Duration::from_secs(5));
    // [MQTT-3.1.2-7] retained messages are not part of the session.
    let mut sub = RawClient::connected(broker.addr(), "retgone-sub");
    assert_eq!(sub.subscribe(1, &[("retgone", 1)]), vec![1]);
    assert_eq!(sub.expect_publish().payload, b"stays");
}

#[test]
fn a_retained_set_larger_than_the_client_queues_is_delivered_whole() {
    // 3,000 retained messages against outbound_queue = 1024: the replay is paced, not cut off.
    let broker = Broker::start();
    let mut publisher = MqttClient::connect(&broker, "many-retained-pub");
    for i in 0..3000u32 {
        publisher.publish(&format!("many/{i}"), 0, true, b"r");
    }
    publisher.publish("many/last", 1, true, b"r"); // PUBACK: everything before is stored
    let mut sub = RawClient::connected(broker.addr(), "many-retained-sub");
    sub.send(&raw::subscribe(1, &[("many/#", 0)]));
    sub.expect_reply(9); // SUBACK
    let mut got = 0;
    while got < 3001 {
        let p = sub.expect_publish();
        assert!(p.retain);
        got += 1;
    }
}
