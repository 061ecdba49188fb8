//! SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK, wildcard matching, overlapping subscriptions,
//! `$` topics and invalid filters.
//!
//! Absence of a delivery is checked with a sentinel: the publisher sends the messages that must
//! not arrive, then one that must; since the broker keeps a publisher's messages in order for a
//! subscriber [MQTT-4.6.0-6], the first message the subscriber sees must be the sentinel.

use crate::common;

use common::client::MqttClient;
use common::raw::{self, RawClient};
use common::Broker;
use std::time::Duration;

/// Topics of the messages `sub` receives up to and including the one on `sentinel`.
fn topics_until(sub: &mut MqttClient, sentinel: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let p = sub.recv_publish();
        topics.push(p.topic.clone());
        if p.topic == sentinel {
            return topics;
        }
    }
}

#[test]
fn suback_has_same_packet_id_and_granted_qos_per_filter_in_order() {
    let broker = Broker::start();
    let mut c = RawClient::connected(broker.addr(), "suback");
    c.send(&raw::subscribe(0x1234, &[("a", 0), ("b", 1), ("c", 2)]));
    // [MQTT-3.8.4-1] SUBACK, [MQTT-3.8.4-2] same packet id, [MQTT-3.9.3-1] codes in filter order.
    c.expect_bytes(&[0x90, 0x05, 0x12, 0x34, 0x00, 0x01, 0x02]);
}

#[test]
fn unsuback_has_same_packet_id_even_when_no_subscription_existed() {
    let broker = Broker::start();
    let mut c = RawClient::connected(broker.addr(), "unsuback");
    assert_eq!(c.subscribe(1, &[("u/1", 1)]), vec![1]);
    c.send(&raw::unsubscribe(0x0203, &["u/1"]));
    // [MQTT-3.10.4-4]
    c.expect_bytes(&[0xB0, 0x02, 0x02, 0x03]);
    c.send(&raw::unsubscribe(7, &["never/subscribed"]));
    // [MQTT-3.10.4-5]
    c.expect_bytes(&[0xB0, 0x02, 0x00, 0x07]);
}

#[test]
fn unsubscribe_stops_delivery_for_that_filter_only() {
    let broker = Broker::start();
    let mut sub = MqttClient::connect(&broker, "unsub-sub");
    sub.subscribe("x/#", 0);
    sub.subscribe("x/keep", 0);
    sub.unsubscribe("x/#");
    let mut publisher = MqttClient::connect(&broker, "unsub-pub");
    publisher.publish("x/gone", 0, false, b"1");
    publisher.publish("x/keep", 0, false, b"2");
    assert_eq!(topics_until(&mut sub, "x/keep"), ["x/keep"]);
}

#[test]
fn single_level_wildcard_matches_exactly_one_level() {
    let broker = Broker::start();
    let mut sub = MqttClient::connect(&broker, "plus-sub");
    sub.subscribe("sensors/+/temp", 1);
    sub.subscribe("+", 1);
    let mut publisher = MqttClient::connect(&broker, "plus-pub");
    for topic in [
        "sensors/a/b/temp",
        "sensors/temp",
        "sensors/a/temp/x",
        "a/b",
        "sensors/a/temp",
        "sensors//temp",
        "top",
    ] {
        publisher.publish(topic, 1, false, b"v");
    }
    // "sensors//temp" has an empty level, which `+` matches.
    assert_eq!(
        topics_until(&mut sub, "top"),
        ["sensors/a/temp", "sensors//temp", "top"]
    );
}

#[test]
fn multi_level_wildcard_matches_parent_and_all_descendants() {
    let broker = Broker::start();
    let mut sub = MqttClient::connect(&broker, "hash-sub");
    sub.subscribe("home/#", 1);
    sub.subscribe("end", 1);
    let mut publisher = MqttClient::connect(&broker, "hash-pub");
    for topic in [
        "home",
        "home/a",
        "home/a/b/c",
        "homes/a",
        "other/home",
        "end",
    ] {
        publisher.publish(topic, 1, false, b"v");
    }
    // "home/#" also matches the parent level "home" (section 4.7.1.2).
    assert_eq!(
        topics_until(&mut sub, "end"),
        ["home", "home/a", "home/a/b/c", "end"]
    );
}

#[test]
fn overlapping_subscriptions_deliver_one_copy_at_the_highest_granted_qos() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "overlap-sub");
    assert_eq!(
        sub.subscribe(1, &[("o/#", 0), ("o/+", 2), ("o/x", 1), ("end", 2)]),
        vec![0, 2, 1, 2]
    );
    let mut publisher = MqttClient::connect(&broker, "overlap-pub");
    publisher.publish("o/x", 2, false, b"once");
    publisher.publish("end", 2, false, b"end");
    // [MQTT-3.3.5-1] one message, at the maximum QoS of all matching subscriptions.
    let first = sub.expect_publish();
    assert_eq!(
        (first.topic.as_str(), first.qos, first.payload.as_slice()),
        ("o/x", 2, &b"once"[..])
    );
    sub.ack(&first);
    let second = sub.expect_publish();
    assert_eq!(
        second.topic, "end",
        "a second copy of o/x was delivered: {second:?}"
    );
    sub.ack(&second);
}

#[test]
fn delivered_qos_is_the_minimum_of_published_and_granted_qos() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "minqos-sub");
    assert_eq!(
        sub.subscribe(1, &[("q0", 0), ("q1", 1), ("q2", 2)]),
        vec![0, 1, 2]
    );
    let mut publisher = MqttClient::connect(&broker, "minqos-pub");
    // [MQTT-3.8.4-6]
    for (topic, pub_qos, expected) in [("q0", 2, 0), ("q1", 2, 1), ("q2", 1, 1), ("q2", 0, 0)] {
        publisher.publish(topic, pub_qos, false, b"m");
        let p = sub.expect_publish();
        assert_eq!(
            (p.topic.as_str(), p.qos),
            (topic, expected),
            "published at QoS {pub_qos}"
        );
        sub.ack(&p);
    }
}

#[test]
fn resubscribing_to_the_same_filter_replaces_the_subscription() {
    let broker = Broker::start();
    let mut sub = RawClient::connected(broker.addr(), "resub");
    assert_eq!(sub.subscribe(1, &[("r/x", 2)]), vec![2]);
    assert_eq!(sub.subscribe(2, &[("r/x", 0)]), vec![0]);
    let mut publisher = MqttClient::connect(&broker, "resub-pub");
    publisher.publish("r/x", 2, false, b"m");
    publisher.publish("r/x", 2, false, b"n");
    // [MQTT-3.8.4-3] one subscription, now at QoS 0: two messages, each once, at QoS 0.
    for payload in [&b"m"[..], b"n"] {
        let p = sub.expect_publish();
        assert_eq!((p.qos, p.payload.as_slice()), (0, payload));
    }
}

#[test]
fn dollar_topics_are_not_matched_by_filters_starting_with_a_wildcard() {
    let broker = Broker::start();
    let mut wild = MqttClient::connect(&broker, "dollar-wild");
    wild.subscribe("#", 0);
    wild.subscribe("+/x", 0);
    wild.subscribe("+/+", 0);
    let mut explicit = MqttClient::connect(&broker, "dollar-explicit");
    explicit.subscribe("$app/#", 0);
    let mut publisher = MqttClient::connect(&broker, "dollar-pub");
    publisher.publish("$app/x", 0, false, b"hidden");
    publisher.publish("$SYS/x", 0, false, b"hidden");
    publisher.publish("plain/x", 0, false, b"visible");
    // [MQTT-4.7.2-1] `#` and `+/x` must not match "$app/x" or "$SYS/x"; the first message the
    // wildcard subscriber sees is the sentinel (once: overlapping subscriptions, one copy).
    let p = wild.recv_publish();
    assert_eq!(
        p.topic, "plain/x",
        "a `$` topic matched a leading wildcard: {p:?}"
    );
    // ... while a filter that names the `$` level does match.
    let p = explicit.recv_publish();
    assert_eq!(p.topic, "$app/x");
}

#[test]
fn invalid_topic_filters_get_failure_code_0x80_and_the_connection_stays_open() {
    let broker = Broker::start();
    let mut c = RawClient::connected(broker.addr(), "badfilter");
    // [MQTT-4.7.1-2] `#` must be last and alone in its level; [MQTT-4.7.1-3] `+` must occupy a
    // whole level. Valid filters in the same SUBSCRIBE are still granted [MQTT-3.8.4-4].
    let codes = c.subscribe(
        9,
        &[
            ("a/#/b", 0),
            ("a+", 1),
            ("ok/+", 1),
            ("a/b#", 0),
            ("+a/b", 2),
            ("fine/#", 2),
        ],
    );
    assert_eq!(codes, vec![0x80, 0x80, 0x01, 0x80, 0x80, 0x02]);
    c.ping();
}

#[test]
fn topics_deeper_than_200_levels_are_refused_without_harming_the_broker() {
    // The topic trie is walked level by level: an unbounded depth let one client overflow a
    // connection thread's stack and abort the broker. Like mosquitto, at most 200 levels.
    let broker = Broker::start();
    let deep = vec!["a"; 400].join("/");
    let mut c = RawClient::connected(broker.addr(), "deep");
    assert_eq!(c.subscribe(1, &[(&deep, 1), ("ok/#", 1)]), vec![0x80, 0x01]);
    c.send(&raw::unsubscribe(2, &[&deep]));
    c.expect_reply(11); // UNSUBACK
    c.send(&raw::publish(&deep, b"x", 0, 0, false, false));
    c.expect_closed(Duration::from_secs(5));
    // The broker is still serving.
    let mut other = RawClient::connected(broker.addr(), "after-deep");
    other.ping();
}
