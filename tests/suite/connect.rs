//! CONNECT / CONNACK: protocol levels, return codes, client identifiers, session takeover,
//! CONNECT timeout, and what the broker does with packets out of order.

use crate::common;

use common::raw::{self, Connect, RawClient, CONNACK};
use common::Broker;
use std::time::{Duration, Instant};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn mqtt_311_connect_is_accepted_with_return_code_0_and_no_session_present() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr());
    c.send(&Connect::new("c311").encode());
    // [MQTT-3.2.0-1] CONNACK comes first; [MQTT-3.1.4-4] return code 0;
    // [MQTT-3.2.2-1] clean session -> session present 0.
    c.expect_bytes(&[0x20, 0x02, 0x00, 0x00]);
    c.ping();
}

#[test]
fn mqtt_31_mqisdp_connect_is_accepted() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr());
    c.send(
        &Connect {
            protocol_name: "MQIsdp",
            protocol_level: 3,
            ..Connect::new("c31")
        }
        .encode(),
    );
    c.expect_bytes(&[0x20, 0x02, 0x00, 0x00]);
    c.ping();
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01_then_close() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr());
    c.send(
        &Connect {
            protocol_level: 9,
            ..Connect::new("level9")
        }
        .encode(),
    );
    // [MQTT-3.1.2-2] CONNACK 0x01 (unacceptable protocol level) then disconnect;
    // [MQTT-3.2.2-4] session present 0 with a non-zero code.
    let packets = c.read_until_closed(CLOSE_TIMEOUT);
    assert_eq!(
        packets.iter().map(|p| p.bytes()).collect::<Vec<_>>(),
        vec![vec![0x20, 0x02, 0x00, 0x01]],
        "expected exactly CONNACK 0x01 before the close"
    );
}

#[test]
fn zero_length_client_id_with_clean_session_is_assigned_a_unique_id() {
    let broker = Broker::start();
    // [MQTT-3.1.3-6] the server assigns a unique id: two anonymous clients coexist (the same id
    // would make the second take over the first).
    let (mut a, _) = RawClient::connect_mqtt(broker.addr(), &Connect::new(""));
    let (mut b, _) = RawClient::connect_mqtt(broker.addr(), &Connect::new(""));
    a.ping();
    b.ping();
    // The assigned id (prefix `auto-`) is what the broker names the client by in its log.
    a.send(&raw::subscribe_with_header(0x80, 1, &[("t", 0)]));
    a.expect_closed(CLOSE_TIMEOUT);
    broker.wait_for_log(&["auto-", "[MQTT-"]);
    b.ping();
}

#[test]
fn zero_length_client_id_without_clean_session_gets_connack_0x02_then_close() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr());
    c.send(
        &Connect {
            clean_session: false,
            ..Connect::new("")
        }
        .encode(),
    );
    // [MQTT-3.1.3-8] CONNACK 0x02 (identifier rejected) and close.
    let packets = c.read_until_closed(CLOSE_TIMEOUT);
    assert_eq!(
        packets.iter().map(|p| p.bytes()).collect::<Vec<_>>(),
        vec![vec![0x20, 0x02, 0x00, 0x02]]
    );
}

#[test]
fn connect_with_same_client_id_takes_over_and_closes_old_connection() {
    let broker = Broker::start();
    let mut old = RawClient::connected(broker.addr(), "twin");
    old.ping();
    let mut new = RawClient::connected(broker.addr(), "twin");
    // [MQTT-3.1.4-2] the existing client is disconnected.
    old.read_until_closed(CLOSE_TIMEOUT);
    new.ping();
}

#[test]
fn session_takeover_moves_subscriptions_of_persistent_session_to_new_connection() {
    let broker = Broker::start();
    let (mut old, _) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("mover"));
    assert_eq!(old.subscribe(1, &[("move/#", 1)]), vec![1]);
    let (mut new, present) = RawClient::connect_mqtt(broker.addr(), &Connect::persistent("mover"));
    // [MQTT-3.2.2-2] the stored session is resumed.
    assert!(
        present,
        "session present must be 1 when taking over a persistent session"
    );
    old.read_until_closed(CLOSE_TIMEOUT);
    let mut publisher = RawClient::connected(broker.addr(), "mover-pub");
    publisher.publish_acked("move/x", b"here", 1, 1, false);
    let p = new.expect_publish();
    assert_eq!(
        (p.topic.as_str(), p.payload.as_slice()),
        ("move/x", &b"here"[..])
    );
}

#[test]
fn socket_that_never_sends_connect_is_closed_after_connect_timeout() {
    let broker = Broker::with_config("[limits]\nconnect_timeout_secs = 1\n");
    let start = Instant::now();
    let mut c = RawClient::connect(broker.addr());
    c.expect_closed(Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the 1 s connect timeout"
    );
}

/// Write `connect` to each socket one byte a second, for at most `limit` or until `stop`.
fn trickle(
    sockets: Vec<std::net::TcpStream>,
    connect: Vec<u8>,
    limit: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    std::thread::spawn(move || {
        let started = Instant::now();
        for byte in connect {
            for mut s in &sockets {
                let _ = s.write_all(&[byte]);
            }
            std::thread::sleep(Duration::from_secs(1));
            if started.elapsed() > limit || stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
        }
    })
}

/// `limits.connect_timeout_secs` bounds the whole CONNECT from accept, not each read: a client
/// sending its CONNECT one byte a second (each read well within the timeout) is closed at the
/// deadline, and the close is logged.
#[test]
fn connect_sent_one_byte_a_second_is_closed_at_the_connect_deadline() {
    let broker = Broker::with_config("[limits]\nconnect_timeout_secs = 2\n");
    let start = Instant::now();
    let mut c = RawClient::connect(broker.addr());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = trickle(
        vec![c.stream.try_clone().expect("clone")],
        Connect::new("slow-connect").encode(),
        Duration::from_secs(10),
        stop.clone(),
    );
    c.expect_closed(Duration::from_secs(6));
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("trickle thread");
    assert!(
        took >= Duration::from_millis(1900) && took <= Duration::from_millis(3500),
        "closed after {took:?}; the deadline is 2 s from accept"
    );
    broker.wait_for_log(&["no complete CONNECT within 2s"]);
}

/// Slow CONNECTs cannot lock the broker: with `max_connections = 3` taken by three sockets
/// trickling their CONNECT, a real client is accepted once their deadline has passed.
#[test]
fn slow_connects_filling_max_connections_lock_out_a_client_only_until_the_deadline() {
    let broker = Broker::with_config("[limits]\nconnect_timeout_secs = 2\nmax_connections = 3\n");
    let start = Instant::now();
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let s = std::net::TcpStream::connect(broker.addr()).expect("connect");
            s.set_nodelay(true).expect("nodelay");
            s
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = trickle(
        slow,
        Connect::new("slow").encode(),
        Duration::from_secs(12),
        stop.clone(),
    );
    let accepted = common::eventually(Duration::from_secs(8), || {
        let mut c = RawClient::connect(broker.addr());
        c.try_send(&Connect::new("real-client").encode()).ok()?;
        match c.read_packet(Duration::from_secs(1)) {
            Ok(p) if p.kind() == CONNACK && p.body == [0, 0] => Some(c),
            _ => None,
        }
    });
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sender.join().expect("trickle thread");
    let mut accepted = accepted.expect("a real client is accepted once the slow CONNECTs expire");
    accepted.ping();
    assert!(
        took <= Duration::from_millis(4500),
        "real client locked out for {took:?}; the CONNECT deadline is 2 s"
    );
}

#[test]
fn connect_timeout_does_not_close_a_connected_client() {
    let broker = Broker::with_config("[limits]\nconnect_timeout_secs = 1\n");
    let mut c = RawClient::connected(broker.addr(), "patient");
    // Outlive the connect timeout (keep-alive is 60 s), then check the connection still works.
    c.expect_silence(Duration::from_millis(1500));
    c.ping();
}

#[test]
fn packet_before_connect_closes_connection_without_reply() {
    let broker = Broker::start();
    // [MQTT-3.1.0-1] the first packet must be CONNECT.
    // The connection is a `Handshake` until CONNECT is accepted: the packet is refused as a
    // violation before anything acts on it (no PINGRESP, nothing published or subscribed).
    for (first, name) in [
        (raw::pingreq(), "PINGREQ"),
        (raw::publish("early", b"x", 0, 0, false, false), "PUBLISH"),
        (raw::subscribe(1, &[("early", 0)]), "SUBSCRIBE"),
    ] {
        let mut c = RawClient::connect(broker.addr());
        c.send(&first);
        c.expect_closed(CLOSE_TIMEOUT);
        let got = format!("first packet must be CONNECT, got {name}");
        broker.wait_for_log(&["(before CONNECT)", "[MQTT-3.1.0-1]", &got]);
    }
}

#[test]
fn second_connect_is_a_protocol_violation_and_closes_connection() {
    let broker = Broker::start();
    let mut c = RawClient::connected(broker.addr(), "double-connect");
    c.send(&Connect::new("double-connect").encode());
    // [MQTT-3.1.0-2]
    c.expect_closed(CLOSE_TIMEOUT);
    broker.wait_for_violation("double-connect");
}

#[test]
fn connect_with_reserved_flag_set_closes_connection_without_connack() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr());
    c.send(
        &Connect {
            reserved_flag: true,
            ..Connect::new("reserved")
        }
        .encode(),
    );
    // [MQTT-3.1.2-3]
    c.expect_closed(CLOSE_TIMEOUT);
}

#[test]
fn connect_with_will_qos_3_closes_connection() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr());
    let will = raw::Will {
        topic: "w".into(),
        payload: b"x".to_vec(),
        qos: 3,
        retain: false,
    };
    c.send(
        &Connect {
            will: Some(will),
            ..Connect::new("willqos3")
        }
        .encode(),
    );
    // [MQTT-3.1.2-14] will QoS must not be 3.
    c.expect_closed(CLOSE_TIMEOUT);
}

#[test]
fn connections_beyond_max_connections_are_refused() {
    let broker = Broker::with_config("[limits]\nmax_connections = 2\n");
    let mut a = RawClient::connected(broker.addr(), "mc-a");
    let mut b = RawClient::connected(broker.addr(), "mc-b");
    let mut extra = RawClient::connect(broker.addr());
    let _ = extra.try_send(&Connect::new("mc-c").encode());
    // Closed at accept (nothing sent) or refused with CONNACK 0x03 "server unavailable":
    // never accepted.
    let packets = extra.read_until_closed(CLOSE_TIMEOUT);
    for p in &packets {
        assert_eq!(
            p.bytes(),
            vec![0x20, 0x02, 0x00, 0x03],
            "extra connection got {:02x?}",
            p.bytes()
        );
    }
    a.ping();
    b.ping();
    // A freed slot can be used again.
    a.send(&raw::disconnect());
    a.read_until_closed(CLOSE_TIMEOUT);
    let again = common::eventually(Duration::from_secs(5), || {
        let mut c = RawClient::connect(broker.addr());
        c.try_send(&Connect::new("mc-d").encode()).ok()?;
        match c.read_packet(Duration::from_secs(2)) {
            Ok(p) if p.kind() == CONNACK && p.body == [0, 0] => Some(c),
            _ => None,
        }
    });
    let mut again = again.expect("a new connection is accepted after one of the two disconnected");
    again.ping();
}

#[test]
fn connect_with_ill_formed_utf8_client_id_is_closed_without_connack() {
    let broker = Broker::start();
    // Hand-built CONNECT: "MQTT", level 4, clean session, keep-alive 60, client id 0xC3 0x28.
    let mut body = raw::string(b"MQTT");
    body.extend([4, 0x02, 0, 60]);
    body.extend(raw::string(b"\xC3\x28"));
    let mut c = RawClient::connect(broker.addr());
    c.send(&raw::packet(0x10, &body));
    // [MQTT-3.1.3-4] [MQTT-1.5.3-1]; [MQTT-3.1.4-1] no CONNACK for a CONNECT that does not conform.
    c.expect_closed(CLOSE_TIMEOUT);
    RawClient::connected(broker.addr(), "after-bad-id").ping();
}

#[test]
fn connect_with_null_character_in_will_topic_is_closed_without_connack() {
    let broker = Broker::start();
    let will = raw::Will {
        topic: "w/\u{0}".into(),
        payload: b"x".to_vec(),
        qos: 0,
        retain: false,
    };
    let mut c = RawClient::connect(broker.addr());
    c.send(
        &Connect {
            will: Some(will),
            ..Connect::new("nul-will")
        }
        .encode(),
    );
    // [MQTT-3.1.3-10] [MQTT-1.5.3-2]
    c.expect_closed(CLOSE_TIMEOUT);
}

#[test]
fn packets_an_old_connection_still_had_buffered_do_not_touch_its_successors_session() {
    // The old connection's reader is held back by the publish rate limit with an UNSUBSCRIBE
    // still buffered; meanwhile a new connection takes the client id over and subscribes. When
    // the old reader wakes it must not act for the session it no longer owns [MQTT-3.1.4-2].
    let broker = Broker::with_config("[limits]\nmax_publish_rate = 1\n");
    let mut old = RawClient::connected(broker.addr(), "stale");
    assert_eq!(old.subscribe(1, &[("stale/t", 0)]), vec![0]);
    for _ in 0..3 {
        old.send(&raw::publish("stale/other", b"x", 0, 0, false, false));
    }
    old.send(&raw::unsubscribe(2, &["stale/t"]));
    let mut new = RawClient::connected(broker.addr(), "stale");
    assert_eq!(new.subscribe(1, &[("stale/t", 0)]), vec![0]);
    // The old reader wakes up (about 1 s per rate-limited publish) and stops at its next packet.
    broker.wait_for_log(&["stale", "session taken over by a new connection"]);
    let mut publisher = RawClient::connected(broker.addr(), "stale-pub");
    publisher.send(&raw::publish(
        "stale/t",
        b"still subscribed",
        0,
        0,
        false,
        false,
    ));
    let p = new.expect_publish();
    assert_eq!(p.payload, b"still subscribed");
}
