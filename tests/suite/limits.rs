//! Memory limits a client cannot grow past: subscriptions per client
//! (`limits.max_subscriptions_per_client`), the retained store (`limits.max_retained_messages`,
//! `limits.max_retained_bytes`) and the session expiry cap (`limits.max_session_expiry_secs`).

use crate::common;
use crate::common::codec as v5_common;

use common::raw::{self, Connect, RawClient};
use common::Broker;
use mqflux::protocol::{reason, ConnAck, Properties, QoS};
use std::time::Duration;
use v5_common::{connect_packet, sub_options, RawClient as V5Client};

const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// max_subscriptions_per_client
// ---------------------------------------------------------------------------------------------

/// v3.1.1: a filter beyond the limit gets 0x80 Failure [MQTT-3.9.3-2] while the others in the
/// same SUBSCRIBE are granted; re-subscribing to a held filter replaces it [MQTT-3.8.4-3] and
/// does not count twice; an UNSUBSCRIBE frees a place.
#[test]
fn v311_subscription_beyond_the_limit_gets_0x80_and_resubscribing_does_not_count() {
    let broker = Broker::with_config("[limits]\nmax_subscriptions_per_client = 2\n");
    let mut c = RawClient::connected(broker.addr(), "subs-311");
    assert_eq!(c.subscribe(1, &[("a", 0), ("b", 1)]), [0, 1]);
    // "a" again (a replacement, at a new QoS) is granted; "c" would be a third filter.
    let mark = broker.log_mark();
    assert_eq!(c.subscribe(2, &[("a", 1), ("c", 0)]), [1, 0x80]);
    broker.wait_for_log_after(
        mark,
        &[
            "subs-311",
            "subscription to \"c\" refused",
            "max_subscriptions_per_client is 2",
        ],
        common::LOG_TIMEOUT,
    );
    // The refused filter really is not subscribed: a message on "c" does not arrive.
    let mut publ = RawClient::connected(broker.addr(), "subs-311-pub");
    publ.publish_acked("c", b"not for you", 1, 1, false);
    publ.publish_acked("b", b"for you", 1, 2, false);
    let p = c.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("b", &b"for you"[..])
    );
    c.ack(&p);
    c.expect_silence(QUIET);
    // Unsubscribing frees a place for "c".
    c.send(&raw::unsubscribe(3, &["b"]));
    c.expect_reply(raw::UNSUBACK);
    assert_eq!(c.subscribe(4, &[("c", 0)]), [0]);
}

/// v5: a filter beyond the limit gets 0x97 Quota exceeded (MQTT 5.0 section 3.9.3).
#[test]
fn v5_subscription_beyond_the_limit_gets_quota_exceeded() {
    let broker = Broker::with_config("[limits]\nmax_subscriptions_per_client = 1\n");
    let mut c = V5Client::connect_v5(broker.port, "subs-5", Properties::default());
    let ack = c.subscribe_with(
        &[
            ("x/1", sub_options(QoS::AtLeastOnce)),
            ("x/2", sub_options(QoS::AtMostOnce)),
        ],
        Properties::default(),
    );
    assert_eq!(ack.reason_codes, [1, reason::QUOTA_EXCEEDED]);
    // The held filter can still be re-subscribed to.
    c.subscribe("x/1", QoS::AtMostOnce);
}

// ---------------------------------------------------------------------------------------------
// max_retained_messages / max_retained_bytes
// ---------------------------------------------------------------------------------------------

/// Receive `n` PUBLISHes and return (topic, payload) sorted by topic, acknowledging each.
fn receive(c: &mut RawClient, n: usize) -> Vec<(String, String)> {
    let mut got: Vec<_> = (0..n)
        .map(|_| {
            let p = c.expect_publish();
            c.ack(&p);
            (p.topic, String::from_utf8_lossy(&p.payload).into_owned())
        })
        .collect();
    got.sort();
    got
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(t, p)| (t.to_string(), p.to_string()))
        .collect()
}

/// A retained PUBLISH to a new topic beyond `max_retained_messages` is delivered to the
/// current subscribers but not stored (logged with its topic); replacing and clearing stored
/// topics keeps working, and clearing one makes room again.
#[test]
fn retained_message_beyond_the_count_limit_is_routed_but_not_stored() {
    let broker = Broker::with_config("[limits]\nmax_retained_messages = 2\n");
    let mut live = RawClient::connected(broker.addr(), "ret-live");
    assert_eq!(live.subscribe(1, &[("r/#", 1)]), [1]);
    let mut publ = RawClient::connected(broker.addr(), "ret-pub");
    let mark = broker.log_mark();
    publ.publish_acked("r/1", b"one", 1, 1, true);
    publ.publish_acked("r/2", b"two", 1, 2, true);
    publ.publish_acked("r/3", b"three", 1, 3, true);
    // All three reach the live subscriber, the refused one included.
    assert_eq!(
        receive(&mut live, 3),
        pairs(&[("r/1", "one"), ("r/2", "two"), ("r/3", "three")])
    );
    broker.wait_for_log_after(
        mark,
        &[
            "retained message on r/3 from ret-pub not stored",
            "1 refused so far",
        ],
        common::LOG_TIMEOUT,
    );

    // A late subscriber gets only the two stored ones [MQTT-3.3.1-6].
    let mut late = RawClient::connected(broker.addr(), "ret-late");
    assert_eq!(late.subscribe(1, &[("r/#", 1)]), [1]);
    assert_eq!(
        receive(&mut late, 2),
        pairs(&[("r/1", "one"), ("r/2", "two")])
    );
    late.expect_silence(QUIET);
    drop(late);

    // Replacing r/1 and clearing r/2 work at the limit; the cleared place takes r/3.
    publ.publish_acked("r/1", b"one again", 1, 4, true);
    publ.publish_acked("r/2", b"", 1, 5, true);
    publ.publish_acked("r/3", b"three again", 1, 6, true);
    let mut late = RawClient::connected(broker.addr(), "ret-late-2");
    assert_eq!(late.subscribe(1, &[("r/#", 1)]), [1]);
    assert_eq!(
        receive(&mut late, 2),
        pairs(&[("r/1", "one again"), ("r/3", "three again")])
    );
    late.expect_silence(QUIET);
}

/// `max_retained_bytes` counts topic + payload: a new topic that would pass it is refused
/// (and routed), one that fits is stored.
#[test]
fn retained_message_beyond_the_byte_limit_is_routed_but_not_stored() {
    let broker = Broker::with_config("[limits]\nmax_retained_bytes = 100\n");
    let mut live = RawClient::connected(broker.addr(), "retb-live");
    assert_eq!(live.subscribe(1, &[("b/#", 0)]), [0]);
    let mut publ = RawClient::connected(broker.addr(), "retb-pub");
    let big = [b'x'; 60];
    let mark = broker.log_mark();
    publ.publish_acked("b/1", &big, 1, 1, true); // 63 bytes stored
    publ.publish_acked("b/2", &big, 1, 2, true); // 126 > 100: refused
    publ.publish_acked("b/3", b"small", 1, 3, true); // 63 + 8 fits
    let got = receive(&mut live, 3);
    let topics: Vec<_> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["b/1", "b/2", "b/3"], "every message is routed");
    broker.wait_for_log_after(
        mark,
        &["retained message on b/2 from retb-pub not stored"],
        common::LOG_TIMEOUT,
    );
    let mut late = RawClient::connected(broker.addr(), "retb-late");
    assert_eq!(late.subscribe(1, &[("b/#", 0)]), [0]);
    let got = receive(&mut late, 2);
    let topics: Vec<_> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["b/1", "b/3"]);
    late.expect_silence(QUIET);
}

/// The broker's own `$SYS` values are never refused: with the store filled by a client, a
/// new subscriber still gets the retained `$SYS` value.
#[test]
fn sys_values_are_kept_when_the_retained_store_is_full() {
    let broker = Broker::with_config("sys_interval = 1\n[limits]\nmax_retained_messages = 1\n");
    let mut publ = RawClient::connected(broker.addr(), "sys-fill");
    publ.publish_acked("fill/1", b"a", 1, 1, true);
    publ.publish_acked("fill/2", b"b", 1, 2, true);
    // A value that changes every round, so it is published again after the store is full.
    let mut sys = RawClient::connected(broker.addr(), "sys-sub");
    assert_eq!(sys.subscribe(1, &[("$SYS/broker/uptime", 0)]), [0]);
    let p = sys.expect_publish();
    assert_eq!(p.topic, "$SYS/broker/uptime");
    assert!(p.retain, "delivered from the retained store");

    // The refusal of fill/2 is counted in $SYS (and /metrics, from the same snapshot).
    let mut refused = RawClient::connected(broker.addr(), "sys-refused");
    let topic = "$SYS/broker/retained messages/refused";
    assert_eq!(refused.subscribe(1, &[(topic, 0)]), [0]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let p = refused.expect_publish();
        assert_eq!(p.topic, topic);
        let count: u64 = String::from_utf8(p.payload).unwrap().parse().unwrap();
        if count == 1 {
            break;
        }
        assert_eq!(count, 0, "only fill/2 was refused");
        assert!(
            std::time::Instant::now() < deadline,
            "refusal never counted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// max_session_expiry_secs
// ---------------------------------------------------------------------------------------------

fn v5_connect(port: u16, client_id: &str, expiry: Option<u32>) -> (V5Client, ConnAck) {
    let mut c = connect_packet(client_id);
    c.clean_start = false;
    c.properties.session_expiry_interval = expiry;
    let (client, ack) = V5Client::connect_with(port, c);
    assert_eq!(ack.code, 0, "{ack:?}");
    (client, ack)
}

/// A v5 client asking for a longer Session Expiry Interval than the cap is told the cap in
/// CONNACK (MQTT 5.0 section 3.2.2.3.2), and its session ends after the cap, not after what
/// it asked for; a client asking for less is not sent the property.
#[test]
fn v5_session_expiry_is_capped_and_the_cap_is_sent_in_connack() {
    let broker = Broker::with_config("[limits]\nmax_session_expiry_secs = 1\n");
    let (_c, ack) = v5_connect(broker.port, "cap-never", Some(u32::MAX));
    assert_eq!(ack.properties.session_expiry_interval, Some(1));
    let (_c, ack) = v5_connect(broker.port, "cap-0", None);
    assert_eq!(
        ack.properties.session_expiry_interval, None,
        "0 is within the cap"
    );

    let (mut c, ack) = v5_connect(broker.port, "cap-5", Some(3600));
    assert_eq!(ack.properties.session_expiry_interval, Some(1));
    assert!(!ack.session_present);
    c.subscribe("cap/t", QoS::AtLeastOnce);
    let mark = broker.log_mark();
    c.disconnect();
    broker.wait_for_log_after(mark, &["session cap-5 expired"], common::LOG_TIMEOUT);
    let (mut c, ack) = v5_connect(broker.port, "cap-5", Some(3600));
    assert!(!ack.session_present, "session ended after the cap");
    let mut publ = V5Client::connect_v5(broker.port, "cap-pub", Properties::default());
    assert_eq!(
        publ.publish("cap/t", "x", QoS::AtLeastOnce),
        reason::NO_MATCHING_SUBSCRIBERS
    );
    c.expect_no_publish(QUIET);
}

/// A longer interval set at DISCONNECT is held to the cap as well.
#[test]
fn v5_session_expiry_raised_at_disconnect_is_held_to_the_cap() {
    let broker = Broker::with_config("[limits]\nmax_session_expiry_secs = 1\n");
    let (c, _) = v5_connect(broker.port, "cap-d", Some(1));
    let mark = broker.log_mark();
    c.disconnect_with(
        reason::SUCCESS,
        Properties {
            session_expiry_interval: Some(3600),
            ..Default::default()
        },
    );
    broker.wait_for_log_after(mark, &["session cap-d expired"], common::LOG_TIMEOUT);
    let (_c, ack) = v5_connect(broker.port, "cap-d", Some(1));
    assert!(!ack.session_present);
}

/// A v3.1.1 persistent session (clean session 0), which has no expiry of its own, ends once
/// the cap has passed after its client left; within the cap it is resumed as usual.
#[test]
fn v311_persistent_session_expires_after_the_cap() {
    let broker = Broker::with_config("[limits]\nmax_session_expiry_secs = 2\n");
    let (mut c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("p311"));
    assert!(!present);
    assert_eq!(c.subscribe(1, &[("p/t", 1)]), [1]);
    c.send(&raw::disconnect());
    drop(c);
    let (mut c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("p311"));
    assert!(present, "resumed within the cap [MQTT-3.2.2-2]");
    let mark = broker.log_mark();
    c.send(&raw::disconnect());
    drop(c);
    broker.wait_for_log_after(mark, &["session p311 expired"], common::LOG_TIMEOUT);
    let (_c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("p311"));
    assert!(!present, "session ended after the cap");
}

/// Without a cap (0), a v3.1.1 persistent session is kept and v5 CONNACK carries no
/// Session Expiry Interval.
#[test]
fn session_expiry_cap_of_zero_leaves_sessions_alone() {
    let broker = Broker::with_config("[limits]\nmax_session_expiry_secs = 0\n");
    let (_c, ack) = v5_connect(broker.port, "nocap", Some(u32::MAX));
    assert_eq!(ack.properties.session_expiry_interval, None);
    let (c, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("nocap311"));
    c.drop_connection();
    let (_c, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("nocap311"));
    assert!(present);
}
