//! mqflux as the *remote* side of a bridge. A mosquitto-style bridge sets bit 7 of the CONNECT
//! protocol level (0x83 for MQIsdp 3.1, 0x84 for MQTT 3.1.1; mosquitto's `try_private`) to say
//! it is a broker. mqflux accepts it and gives every subscription of that client No Local and
//! Retain As Published: what the bridge forwards is not echoed back to it (no loop), and a
//! retained message reaches the far side retained. Checked with raw packets and with a real
//! Debian `mosquitto` whose `connection` block bridges `topic # both` into mqflux.

use crate::common;

use common::raw::{self, Connect, RawClient, RawPublish, PUBLISH};
use common::spawned::Spawned;
use common::Broker;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn bridge_connect(protocol_name: &'static str, protocol_level: u8, client_id: &str) -> Connect {
    Connect {
        protocol_name,
        protocol_level,
        ..Connect::new(client_id)
    }
}

/// A bridge connected with `connect` subscribes to `t/#`; an ordinary client subscribes too.
/// The bridge's own publish is not echoed to it (No Local, [MQTT-3.8.3-3]), while the ordinary
/// client still gets its own; a retained message published while both are subscribed reaches
/// the bridge with RETAIN 1 (Retain As Published, [MQTT-3.3.1-13]) and the ordinary 3.1.1
/// client with RETAIN 0 [MQTT-3.3.1-9].
fn bridge_gets_no_echo_and_retain_as_published(connect: Connect) {
    let broker = Broker::start();
    let (mut bridge, _) = RawClient::connect_mqtt(broker.addr(), &connect);
    broker.wait_for_log(&[
        &format!("client {} connected", connect.client_id),
        "bridge (no local, retain as published)",
    ]);
    assert_eq!(bridge.subscribe(1, &[("t/#", 1)]), vec![1]);
    let mut watcher = RawClient::connected(broker.addr(), "watcher");
    assert_eq!(watcher.subscribe(1, &[("t/#", 1)]), vec![1]);

    bridge.publish_acked("t/from-bridge", b"b", 1, 10, false);
    let seen = watcher.expect_publish();
    assert_eq!((seen.topic.as_str(), seen.retain), ("t/from-bridge", false));
    watcher.ack(&seen);

    watcher.publish_acked("t/from-watcher", b"w", 1, 11, false);
    // Routed after the bridge's own message: had that been echoed, it would come first.
    let first = bridge.expect_publish();
    assert_eq!(
        first.topic, "t/from-watcher",
        "the bridge got its own message back: No Local is missing"
    );
    bridge.ack(&first);
    let own = watcher.expect_publish();
    assert_eq!(
        own.topic, "t/from-watcher",
        "an ordinary client's own messages come back"
    );
    watcher.ack(&own);

    watcher.publish_acked("t/kept", b"r", 1, 12, true);
    let at_bridge = bridge.expect_publish();
    assert_eq!(
        (at_bridge.topic.as_str(), at_bridge.retain),
        ("t/kept", true),
        "retain as published towards a bridge"
    );
    bridge.ack(&at_bridge);
    let at_watcher = watcher.expect_publish();
    assert_eq!(
        (at_watcher.topic.as_str(), at_watcher.retain),
        ("t/kept", false)
    );
    watcher.ack(&at_watcher);
    bridge.ping();
}

#[test]
fn bridge_bit_level_0x84_connects_without_echo_and_with_retain_as_published() {
    bridge_gets_no_echo_and_retain_as_published(bridge_connect("MQTT", 0x84, "bridge-311"));
}

#[test]
fn bridge_bit_level_0x83_mqisdp_connects_without_echo_and_with_retain_as_published() {
    bridge_gets_no_echo_and_retain_as_published(bridge_connect("MQIsdp", 0x83, "bridge-31"));
}

#[test]
fn bridge_bit_is_refused_on_levels_that_have_none() {
    let broker = Broker::start();
    // 5.0 (0x85) asks for No Local per subscription instead; "MQTT" 0x83 is no version at all.
    for (name, level) in [("MQTT", 0x85), ("MQTT", 0x83), ("MQIsdp", 0x84)] {
        let mut c = RawClient::connect(broker.addr());
        c.send(&bridge_connect(name, level, "no-such-bridge").encode());
        // [MQTT-3.1.2-2] CONNACK 0x01 (unacceptable protocol level), then the close.
        let packets = c.read_until_closed(WAIT);
        assert_eq!(
            packets.iter().map(|p| p.bytes()).collect::<Vec<_>>(),
            vec![vec![0x20, 0x02, 0x00, 0x01]],
            "{name} level {level:#04x}"
        );
        broker.wait_for_log(&[&format!("unsupported protocol {name:?} level {level}")]);
    }
}

#[test]
fn bridge_subscription_keeps_no_local_across_a_broker_restart() {
    let store = tempfile::tempdir().expect("temp dir");
    let mut broker = Broker::with_config(&common::persistent_config(store.path()));
    let connect = Connect {
        clean_session: false,
        ..bridge_connect("MQTT", 0x84, "site-bridge")
    };
    let (mut bridge, _) = RawClient::connect_mqtt(broker.addr(), &connect);
    assert_eq!(bridge.subscribe(1, &[("t/#", 1)]), vec![1]);
    bridge.send(&raw::disconnect());
    broker.restart();

    // The stored subscription keeps the options it was made with, even when the same client
    // id comes back without the bridge bit.
    let plain = Connect {
        clean_session: false,
        ..Connect::new("site-bridge")
    };
    let (mut bridge, present) = RawClient::connect_mqtt(broker.addr(), &plain);
    assert!(
        present,
        "the persistent session was restored [MQTT-3.2.2-2]"
    );
    bridge.publish_acked("t/own", b"o", 1, 5, false);
    let mut other = RawClient::connected(broker.addr(), "other");
    other.publish_acked("t/other", b"x", 1, 6, false);
    let first = bridge.expect_publish();
    assert_eq!(
        first.topic, "t/other",
        "own message echoed after the restart"
    );
}

// ---------------------------------------------------------------------------------------------
// A real mosquitto bridging into mqflux
// ---------------------------------------------------------------------------------------------

/// Debian's `mosquitto` with one `connection` block towards `remote`, on a free loopback port.
struct MosquittoBridge {
    process: Spawned,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl MosquittoBridge {
    fn start(remote: SocketAddr, connection: &str) -> MosquittoBridge {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = common::influx::free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nlog_type all\n\n\
             connection {connection}\naddress {remote}\nremote_clientid {connection}\n\
             try_private true\nbridge_protocol_version mqttv311\ncleansession true\n\
             notifications false\nrestart_timeout 1\ntopic # both 1\n"
        );
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        let mut cmd = Command::new("mosquitto");
        cmd.arg("-c").arg(&path);
        let process = Spawned::start(cmd);
        process.wait_for_line(0, &format!("listen socket on port {port}"), WAIT);
        // The bridge's remote SUBSCRIBE to `#` is answered: from here on both directions flow.
        process.wait_for_line(0, &format!("Received SUBACK from local.{connection}"), WAIT);
        MosquittoBridge {
            process,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }
}

/// Read PUBLISHes (acknowledging each) until every topic in `until` has been seen; returns how
/// often each topic arrived.
fn collect_until(client: &mut RawClient, until: &[&str]) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + WAIT;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while !until.iter().all(|t| seen.contains_key(*t)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = match client.read_packet(left) {
            Ok(p) if p.kind() == PUBLISH => p.publish(),
            Ok(p) => panic!("expected PUBLISH, got {:02x?}", p.bytes()),
            Err(e) => panic!("waiting for {until:?}: {e:?}; seen so far {seen:?}"),
        };
        client.ack(&p);
        *seen.entry(p.topic).or_default() += 1;
    }
    seen
}

fn retained_at(addr: SocketAddr, topic: &str) -> Option<RawPublish> {
    let mut c = RawClient::connected(addr, "late-reader");
    assert_eq!(c.subscribe(1, &[(topic, 1)]), vec![1]);
    let p = c.read_packet(Duration::from_millis(500)).ok()?;
    (p.kind() == PUBLISH).then(|| p.publish())
}

#[test]
fn mosquitto_bridge_with_try_private_forwards_each_message_once_each_way() {
    let broker = Broker::start();
    let mosquitto = MosquittoBridge::start(broker.addr(), "site-gw");
    broker.wait_for_log(&[
        "client site-gw connected",
        "bridge (no local, retain as published)",
    ]);
    let mut at_mqflux = RawClient::connected(broker.addr(), "sub-mqflux");
    assert_eq!(at_mqflux.subscribe(1, &[("loop/#", 1)]), vec![1]);
    let mut at_mosquitto = RawClient::connected(mosquitto.addr, "sub-mosquitto");
    assert_eq!(at_mosquitto.subscribe(1, &[("loop/#", 1)]), vec![1]);

    const N: usize = 20;
    let mut pub_mqflux = RawClient::connected(broker.addr(), "pub-mqflux");
    let mut pub_mosquitto = RawClient::connected(mosquitto.addr, "pub-mosquitto");
    let mut topics = Vec::new();
    for i in 0..N {
        let (a, b) = (format!("loop/mqflux/{i}"), format!("loop/mosquitto/{i}"));
        pub_mqflux.publish_acked(&a, b"m", 1, 1 + i as u16, false);
        pub_mosquitto.publish_acked(&b, b"m", 1, 1 + i as u16, false);
        topics.extend([a, b]);
    }
    // A last message on each side, after which every earlier one (and any echo of it, which
    // travels the same link in order) has arrived.
    pub_mqflux.publish_acked("loop/mqflux/end", b"e", 1, 100, false);
    pub_mosquitto.publish_acked("loop/mosquitto/end", b"e", 1, 100, false);
    topics.extend(["loop/mqflux/end".into(), "loop/mosquitto/end".into()]);
    let ends = ["loop/mqflux/end", "loop/mosquitto/end"];
    for (side, client) in [("mqflux", &mut at_mqflux), ("mosquitto", &mut at_mosquitto)] {
        let mut seen = collect_until(client, &ends);
        // Nothing else trickles in afterwards either (a loop never stops on its own).
        while let Ok(p) = client.read_packet(Duration::from_millis(500)) {
            let p = p.publish();
            client.ack(&p);
            *seen.entry(p.topic).or_default() += 1;
        }
        let expected: BTreeMap<String, usize> = topics.iter().map(|t| (t.clone(), 1)).collect();
        assert_eq!(seen, expected, "each message exactly once at {side}");
    }

    // Retained, both ways: a subscriber arriving later on the far side gets it retained. From
    // mqflux to mosquitto this needs Retain As Published on the bridge's subscription.
    pub_mqflux.publish_acked("keep/mqflux", b"r1", 1, 200, true);
    pub_mosquitto.publish_acked("keep/mosquitto", b"r2", 1, 200, true);
    for (addr, topic, payload) in [
        (mosquitto.addr, "keep/mqflux", b"r1"),
        (broker.addr(), "keep/mosquitto", b"r2"),
    ] {
        let got = common::eventually(WAIT, || retained_at(addr, topic))
            .unwrap_or_else(|| panic!("no retained {topic} on the far side"));
        assert!(got.retain && got.payload == payload, "{topic}: {got:?}");
    }

    // The bridge connected once, with the bridge bit: mosquitto never fell back to level 4.
    let log = broker.log_text();
    let connects: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("client site-gw connected"))
        .collect();
    assert_eq!(connects.len(), 1, "bridge reconnected: {connects:#?}");
    assert!(connects[0].contains("bridge (no local"), "{}", connects[0]);
    assert!(
        !mosquitto.process.output().contains("Connection Refused"),
        "mosquitto was refused:\n{}",
        mosquitto.process.output()
    );
}
