//! Malformed packets and protocol violations: each closes the offending connection
//! [MQTT-4.8.0-1] and is logged with the client id and the rule broken, and nothing else is
//! disturbed. Packets are hand-built byte vectors so that exactly one thing is wrong in each.

use crate::common;

use common::raw::{self, RawClient};
use common::Broker;
use std::time::{Duration, Instant};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connect `client_id`, send `bytes`, and assert: the connection is closed, the broker logs a
/// violation naming the client and citing a rule, and another client is still served.
fn assert_violation_closes(client_id: &str, bytes: &[u8]) -> Broker {
    let broker = Broker::start();
    let mut bystander = RawClient::connected(broker.addr(), "bystander");
    let mut c = RawClient::connected(broker.addr(), client_id);
    c.send(bytes);
    c.expect_closed(CLOSE_TIMEOUT);
    broker.wait_for_violation(client_id);
    bystander.ping();
    broker
}

#[test]
fn remaining_length_longer_than_four_bytes_closes_connection() {
    // Section 2.2.3: at most 4 bytes; the 4th may not have the continuation bit.
    assert_violation_closes("bad-remlen", &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
}

#[test]
fn body_shorter_than_its_fields_closes_connection() {
    // PUBLISH whose topic length (0x0064 = 100) runs past the 5-byte remaining length.
    assert_violation_closes("truncated", &[0x30, 0x05, 0x00, 0x64, b'a', b'b', b'c']);
}

#[test]
fn ill_formed_utf8_in_topic_closes_connection() {
    // [MQTT-1.5.3-1] 0xC3 0x28 is an invalid 2-byte sequence.
    assert_violation_closes(
        "bad-utf8",
        &raw::publish_raw_topic(b"a/\xC3\x28", b"x", 0, 0, false, false),
    );
}

#[test]
fn utf16_surrogate_encoded_in_topic_closes_connection() {
    // [MQTT-1.5.3-1] code points U+D800..U+DFFF must not be encoded (0xED 0xA0 0x80 = U+D800).
    assert_violation_closes(
        "surrogate",
        &raw::publish_raw_topic(b"a/\xED\xA0\x80", b"x", 0, 0, false, false),
    );
}

#[test]
fn null_character_in_topic_closes_connection() {
    // [MQTT-1.5.3-2] [MQTT-4.7.3-2]
    assert_violation_closes(
        "nul-topic",
        &raw::publish_raw_topic(b"a/\x00b", b"x", 0, 0, false, false),
    );
}

#[test]
fn null_character_in_topic_filter_closes_connection() {
    assert_violation_closes("nul-filter", &raw::subscribe(1, &[("a/\u{0}", 0)]));
}

#[test]
fn subscribe_with_reserved_flags_0000_closes_connection() {
    // [MQTT-3.8.1-1] flags must be 0010.
    assert_violation_closes(
        "sub-flags",
        &raw::subscribe_with_header(0x80, 1, &[("a", 0)]),
    );
}

#[test]
fn unsubscribe_with_reserved_flags_0000_closes_connection() {
    // [MQTT-3.10.1-1]
    let mut p = raw::unsubscribe(1, &["a"]);
    p[0] = 0xA0;
    assert_violation_closes("unsub-flags", &p);
}

#[test]
fn pubrel_with_reserved_flags_0000_closes_connection() {
    // [MQTT-3.6.1-1] flags must be 0010.
    assert_violation_closes("pubrel-flags", &[0x60, 0x02, 0x00, 0x01]);
}

#[test]
fn pingreq_with_flags_set_closes_connection() {
    // [MQTT-2.2.2-2]
    assert_violation_closes("ping-flags", &[0xC1, 0x00]);
}

#[test]
fn publish_with_both_qos_bits_set_closes_connection() {
    // [MQTT-3.3.1-4]
    let mut p = raw::publish("a", b"x", 1, 1, false, false);
    p[0] = 0x36;
    assert_violation_closes("qos3", &p);
}

#[test]
fn publish_topic_with_wildcards_closes_connection() {
    // [MQTT-3.3.2-2]
    assert_violation_closes(
        "wild-pub-plus",
        &raw::publish("a/+/b", b"x", 0, 0, false, false),
    );
    assert_violation_closes(
        "wild-pub-hash",
        &raw::publish("a/#", b"x", 1, 1, false, false),
    );
}

#[test]
fn publish_with_empty_topic_closes_connection() {
    // [MQTT-4.7.3-1] topic names are at least one character long.
    assert_violation_closes("empty-topic", &raw::publish("", b"x", 0, 0, false, false));
}

#[test]
fn qos1_publish_with_packet_id_zero_closes_connection() {
    // [MQTT-2.3.1-1]
    assert_violation_closes("pid-zero-pub", &raw::publish("a", b"x", 1, 0, false, false));
}

#[test]
fn subscribe_with_packet_id_zero_closes_connection() {
    // [MQTT-2.3.1-1]
    assert_violation_closes("pid-zero-sub", &raw::subscribe(0, &[("a", 0)]));
}

#[test]
fn subscribe_without_any_filter_closes_connection() {
    // [MQTT-3.8.3-3]
    assert_violation_closes("sub-empty", &raw::packet(0x82, &[0x00, 0x01]));
}

#[test]
fn unsubscribe_without_any_filter_closes_connection() {
    // [MQTT-3.10.3-2]
    assert_violation_closes("unsub-empty", &raw::packet(0xA2, &[0x00, 0x01]));
}

#[test]
fn subscribe_requesting_qos_3_closes_connection() {
    // [MQTT-3.8.3-4]
    assert_violation_closes("sub-qos3", &raw::subscribe(1, &[("a", 3)]));
}

#[test]
fn reserved_packet_type_0_closes_connection() {
    // Type 0 is reserved (section 2.2.1).
    assert_violation_closes("type0", &[0x00, 0x00]);
}

#[test]
fn server_to_client_packet_from_client_closes_connection() {
    // CONNACK only travels server -> client.
    assert_violation_closes("sends-connack", &[0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn disconnect_with_reserved_flags_closes_connection_and_publishes_will() {
    // [MQTT-3.14.1-1] an invalid DISCONNECT is not a DISCONNECT: the will is not discarded.
    let broker = Broker::start();
    let mut watcher = RawClient::connected(broker.addr(), "dflag-watcher");
    assert_eq!(watcher.subscribe(1, &[("dflag/will", 0)]), vec![0]);
    let connect = raw::Connect {
        will: Some(raw::Will {
            topic: "dflag/will".into(),
            payload: b"w".to_vec(),
            qos: 0,
            retain: false,
        }),
        ..raw::Connect::new("dflag")
    };
    let (mut c, _) = RawClient::connect_mqtt(broker.addr(), &connect);
    c.send(&[0xE1, 0x00]);
    c.expect_closed(CLOSE_TIMEOUT);
    broker.wait_for_violation("dflag");
    assert_eq!(watcher.expect_publish().topic, "dflag/will");
}

#[test]
fn packet_larger_than_max_packet_size_is_refused_from_its_header() {
    let broker = Broker::with_config("[limits]\nmax_packet_size = 1024\n");
    let mut c = RawClient::connected(broker.addr(), "huge");
    // A PUBLISH header announcing 200,000,000 bytes, and no body: a broker that tried to
    // allocate or read the body first would wait here; it must close from the header alone.
    let mut header = vec![0x30];
    header.extend(raw::remaining_length(200_000_000));
    let start = Instant::now();
    c.send(&header);
    c.expect_closed(CLOSE_TIMEOUT);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?} to refuse",
        start.elapsed()
    );
    broker.wait_for_log(&["huge", "size"]);
}

#[test]
fn packet_just_over_max_packet_size_closes_connection_and_one_under_is_accepted() {
    let broker = Broker::with_config("[limits]\nmax_packet_size = 1024\n");
    let mut sub = RawClient::connected(broker.addr(), "size-sub");
    assert_eq!(sub.subscribe(1, &[("s", 0)]), vec![0]);
    let mut c = RawClient::connected(broker.addr(), "size-pub");
    // Whole packet = 1 (header) + 2 (remaining length) + 3 (topic "s") + payload.
    let fits = raw::publish("s", &vec![b'a'; 1024 - 6], 0, 0, false, false);
    assert_eq!(fits.len(), 1024);
    c.send(&fits);
    assert_eq!(sub.expect_publish().payload.len(), 1018);
    let too_big = raw::publish("s", &vec![b'a'; 1024 - 5], 0, 0, false, false);
    assert_eq!(too_big.len(), 1025);
    c.send(&too_big);
    c.expect_closed(CLOSE_TIMEOUT);
    broker.wait_for_log(&["size-pub", "size"]);
    sub.ping();
}

#[test]
fn garbage_instead_of_connect_is_closed_by_the_connect_timeout_at_the_latest() {
    let broker = Broker::with_config("[limits]\nconnect_timeout_secs = 2\n");
    let mut c = RawClient::connect(broker.addr());
    // 'G' reads as a PUBACK header and 'E' as a remaining length of 69 that never arrives: the
    // broker may refuse at the first byte (not CONNECT [MQTT-3.1.0-1]) or wait for the rest,
    // but not beyond the CONNECT timeout.
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    c.expect_closed(CLOSE_TIMEOUT);
    RawClient::connected(broker.addr(), "after-garbage").ping();
}

#[test]
fn connection_closed_in_the_middle_of_a_packet_is_handled() {
    let broker = Broker::start();
    let mut c = RawClient::connected(broker.addr(), "half");
    // Remaining length says 100, only 3 bytes follow, then the socket closes.
    c.send(&[0x30, 100, 0x00, 0x01, b'a']);
    c.drop_connection();
    // The broker neither hangs nor dies: a new client is served.
    RawClient::connected(broker.addr(), "after-half").ping();
}

#[test]
fn random_bytes_after_connect_never_crash_or_hang_the_broker() {
    let mut broker = Broker::start();
    // A small deterministic generator (xorshift): the same 300 inputs on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..300 {
        let len = (next() % 64) as usize + 1;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half of the time, make the flags nibble valid for most types (0000 or 0010) so that
        // decoding gets past the fixed-header checks into the packet bodies.
        if i % 2 == 0 {
            bytes[0] = (bytes[0] & 0xF0) | [0x00, 0x02, 0x00, 0x02][(bytes[0] >> 4) as usize % 4];
        }
        let mut c = RawClient::connected(broker.addr(), &format!("fuzz-{i}"));
        let _ = c.try_send(&bytes);
        // Either the broker answers, closes, or waits for more bytes: all fine, none may panic.
        let _ = c.read_packet(Duration::from_millis(5));
        c.drop_connection();
    }
    let mut c = RawClient::connected(broker.addr(), "after-fuzz");
    c.ping();
    assert!(broker.is_running(), "broker exited");
    assert!(
        !broker.log_text().contains("panicked"),
        "a thread panicked:\n{}",
        broker.log_text()
    );
}
