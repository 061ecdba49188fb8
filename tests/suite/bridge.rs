//! Bridges (`[[bridges]]`): mqflux as the local side, forwarding `out` to (and bringing `in`
//! from) a real second broker — Debian's mosquitto or another mqflux — through a fault proxy
//! where a test breaks the link. The promise under test: a message the local broker
//! acknowledged reaches the remote, in order, once per subscriber, whatever happens to the link
//! or to either broker.

use crate::common::codec::RawClient;
use crate::common::fault_proxy::{FaultProxy, Mode};
use crate::common::ops::{http, metrics_addr};
use crate::common::remote::Mosquitto;
use crate::common::Broker;
use mqflux::protocol::{Packet, QoS};
use std::time::{Duration, Instant};

/// A `[[bridges]]` table to `port`, with a short keep-alive (4 s unless `extra` sets one) and
/// retry for tests.
fn bridge_toml(port: u16, topics: &[&str], extra: &str) -> String {
    let topics: Vec<String> = topics.iter().map(|t| format!("{t:?}")).collect();
    let keepalive = if extra.contains("keepalive_interval") {
        ""
    } else {
        "keepalive_interval = 4\n"
    };
    let queue_dir = if extra.contains("queue_dir") {
        ""
    } else {
        "queue_dir = \"queue\"\n"
    };
    format!(
        "[[bridges]]\nconnection = \"edge\"\naddress = [\"127.0.0.1:{port}\"]\ntopic = [{}]\n\
         {queue_dir}{keepalive}restart_timeout = 1\n\
         remote_clientid = \"edge-bridge\"\n{extra}\n",
        topics.join(", ")
    )
}

/// Receive `n` PUBLISHes (acknowledging QoS 1/2 ones) within `timeout`: (topic, payload).
fn collect(client: &mut RawClient, n: usize, timeout: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.try_recv(left.min(Duration::from_millis(500))) {
            Ok(Packet::Publish(p)) => {
                match p.qos {
                    QoS::AtLeastOnce => client.puback(p.packet_id),
                    QoS::ExactlyOnce => {
                        client.send(&Packet::PubRec(mqflux::protocol::Ack::new(p.packet_id)))
                    }
                    QoS::AtMostOnce => {}
                }
                got.push((
                    p.topic.to_string(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                ));
            }
            Ok(Packet::PubRel(a)) => {
                client.send(&Packet::PubComp(mqflux::protocol::Ack::new(a.packet_id)))
            }
            Ok(_) => {}
            Err(crate::common::codec::RecvError::Timeout) => {}
            Err(e) => panic!("subscriber connection failed: {e:?}"),
        }
    }
    got
}

/// After `collect`: nothing more arrives within `within` (no duplicate came late).
fn expect_nothing_more(client: &mut RawClient, within: Duration) {
    let extra = collect(client, 1, within);
    assert!(extra.is_empty(), "unexpected extra message(s): {extra:?}");
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<(String, String)> {
    range
        .map(|i| (prefix.to_string(), format!("m{i}")))
        .collect()
}

/// Publish `m{i}` for each `i` in `range` on `topic` at QoS 1, each acknowledged: what
/// `numbered` expects to arrive.
fn publish_numbered(client: &mut RawClient, topic: &str, range: std::ops::Range<usize>) {
    for i in range {
        client.publish(topic, &format!("m{i}"), QoS::AtLeastOnce);
    }
}

#[test]
fn out_forwards_every_acknowledged_message_once_in_order() {
    let remote = Mosquitto::start("");
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&bridge_toml(remote.port, &["sensors/# out 1"], ""));
    local.wait_for_log(&["bridge edge: connected to"]);
    // notifications: the link state, retained, on the local broker (mosquitto's topic).
    let mut state = RawClient::connect_v311(local.port, "state-watch");
    state.subscribe("$SYS/broker/connection/edge-bridge/state", QoS::AtMostOnce);
    assert_eq!(
        collect(&mut state, 1, Duration::from_secs(5)),
        vec![(
            "$SYS/broker/connection/edge-bridge/state".to_string(),
            "1".to_string()
        )]
    );
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..300);
    let got = collect(&mut sub, 300, Duration::from_secs(20));
    assert_eq!(got, numbered("sensors/t", 0..300));
    expect_nothing_more(&mut sub, Duration::from_millis(500));
    // SIGTERM: the bridge says DISCONNECT, its state goes to 0, and the broker exits cleanly.
    let mut local = local;
    let took = local.terminate();
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    assert!(local.log_text().contains("bridge edge: stopped"));
    assert!(
        remote.log().contains("Client edge-bridge disconnected"),
        "a DISCONNECT, not a dropped link: {}",
        remote.log()
    );
}

/// `[metrics]` on a free port, to put before a `[[bridges]]` table.
const METRICS: &str = "[metrics]\nbind = \"127.0.0.1:0\"\n";

/// One sample of a bridge metric, e.g. `metric(&local, "mqflux_bridge_queued_messages")`.
fn metric(broker: &Broker, name: &str) -> u64 {
    let (status, _, body) = http(metrics_addr(broker), "GET", "/metrics");
    assert_eq!(status, 200);
    let prefix = format!("{name}{{bridge=\"edge\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in {body}"))
}

/// Wait until the bridge's queue is empty (everything acknowledged by the remote).
fn wait_drained(broker: &Broker) {
    crate::common::eventually(Duration::from_secs(10), || {
        (metric(broker, "mqflux_bridge_queued_messages") == 0).then_some(())
    })
    .expect("the bridge queue drains");
}

/// A 3.1.1 subscriber with a persistent session (clean session 0) subscribed to `filter`.
fn persistent_sub(port: u16, id: &str, filter: &str, qos: QoS) -> RawClient {
    let mut c = persistent_connect(port, id);
    c.subscribe(filter, qos);
    c
}

fn persistent_connect(port: u16, id: &str) -> RawClient {
    let mut connect = crate::common::codec::connect_packet(id);
    connect.version = mqflux::protocol::ProtocolVersion::V311;
    connect.clean_start = false;
    let (c, ack) = RawClient::connect_with(port, connect);
    assert_eq!(ack.code, 0, "CONNACK {ack:?}");
    c
}

#[test]
fn out_backlog_survives_the_remote_being_killed_and_restarted() {
    let mut remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&format!(
        "sys_interval = 1\n{METRICS}{}",
        bridge_toml(proxy.port, &["sensors/# out 1"], "")
    ));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..50);
    assert_eq!(
        collect(&mut sub, 50, Duration::from_secs(10)),
        numbered("sensors/t", 0..50)
    );
    // Acknowledged by the remote too (else a QoS 1 resend after the kill is right).
    wait_drained(&local);
    // SIGKILL: mosquitto forgets its sessions; the proxy keeps the bridge away until a new
    // subscriber is there to see what arrives.
    proxy.set(Mode::Refuse);
    remote.kill();
    drop(sub);
    // Acknowledged locally while the remote is gone: they wait in the bridge's queue.
    publish_numbered(&mut publisher, "sensors/t", 50..150);
    remote.restart();
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    proxy.set(Mode::Forward);
    let got = collect(&mut sub, 100, Duration::from_secs(20));
    assert_eq!(got, numbered("sensors/t", 50..150));
    expect_nothing_more(&mut sub, Duration::from_millis(500));
    wait_drained(&local);
    assert!(metric(&local, "mqflux_bridge_reconnects_total") >= 1);
    assert_eq!(metric(&local, "mqflux_bridge_acked_total"), 150);
    // The same figures in $SYS, under mosquitto-style names.
    let mut sys = RawClient::connect_v311(local.port, "sys-watch");
    sys.subscribe("$SYS/broker/bridge/edge/#", QoS::AtMostOnce);
    // Values are republished each sys_interval when they change: wait for the current ones.
    let want = [
        ("$SYS/broker/bridge/edge/state", "1"),
        ("$SYS/broker/bridge/edge/queue/messages", "0"),
        ("$SYS/broker/bridge/edge/messages/acked", "150"),
    ];
    let mut latest = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !want
            .iter()
            .all(|(t, v)| latest.get(*t).map(String::as_str) == Some(*v))
    {
        for (topic, value) in collect(&mut sys, 1, Duration::from_millis(200)) {
            latest.insert(topic, value);
        }
    }
    for (topic, value) in want {
        assert_eq!(
            latest.get(topic).map(String::as_str),
            Some(value),
            "{topic}: {latest:?}"
        );
    }
}

#[test]
fn out_backlog_survives_sigkill_of_the_local_broker() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let mut local = Broker::with_config(&bridge_toml(proxy.port, &["sensors/# out 1"], ""));
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..200);
    // Every one of them was acknowledged; the broker dies before the link is back.
    local.kill();
    proxy.set(Mode::Forward);
    local.restart();
    local.wait_for_log(&["bridge edge: 200 queued messages"]);
    let got = collect(&mut sub, 200, Duration::from_secs(20));
    assert_eq!(got, numbered("sensors/t", 0..200));
    expect_nothing_more(&mut sub, Duration::from_millis(500));
}

#[test]
fn blackholed_link_is_detected_within_one_and_a_half_keepalives() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    let mut sub = persistent_sub(remote.port, "remote-sub", "sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(proxy.port, &["sensors/# out 1"], "keepalive_interval = 2")
    ));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publisher.publish("sensors/t", "m0", QoS::AtLeastOnce);
    assert_eq!(
        collect(&mut sub, 1, Duration::from_secs(10)),
        numbered("sensors/t", 0..1)
    );
    // Its PUBACK reached the bridge (else resending it after the cut is right for QoS 1).
    wait_drained(&local);
    let mark = local.log_mark();
    proxy.set(Mode::Blackhole);
    let cut = Instant::now();
    // Published into the silent link: acknowledged locally, not yet by the remote.
    publish_numbered(&mut publisher, "sensors/t", 1..20);
    local.wait_for_log_after(
        mark,
        &["bridge edge: link to", "nothing received for"],
        Duration::from_secs(10),
    );
    let detected = cut.elapsed();
    // 1.5 x 2 s after the last packet received, which came at most now - cut ago; slack for a
    // loaded machine.
    assert!(
        detected <= Duration::from_millis(3000 + 1500),
        "silent link detected only after {detected:?}"
    );
    proxy.set(Mode::Forward);
    let got = collect(&mut sub, 19, Duration::from_secs(20));
    assert_eq!(got, numbered("sensors/t", 1..20));
    expect_nothing_more(&mut sub, Duration::from_millis(500));
}

#[test]
fn full_queue_drops_exactly_the_oldest_counts_them_and_keeps_flowing() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    // Each message costs topic (9) + payload (4) + 64 = 77 bytes: 13 fit in 1024.
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(proxy.port, &["sensors/# out 1"], "queue_max_bytes = 1024")
    ));
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    for i in 0..30 {
        publisher.publish("sensors/t", &format!("m{i:03}"), QoS::AtLeastOnce);
    }
    local.wait_for_log(&["bridge edge: dropped", "QueueFull"]);
    // A bridge that is down does not fail /health: the broker still takes messages.
    let (status, _, body) = http(metrics_addr(&local), "GET", "/health");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!(
            "bridge edge: down (127.0.0.1:{}), 13 queued",
            proxy.port
        )),
        "{body}"
    );
    proxy.set(Mode::Forward);
    let got = collect(&mut sub, 13, Duration::from_secs(20));
    let want: Vec<(String, String)> = (17..30)
        .map(|i| ("sensors/t".to_string(), format!("m{i:03}")))
        .collect();
    assert_eq!(got, want, "exactly the 17 oldest are dropped");
    expect_nothing_more(&mut sub, Duration::from_millis(300));
    // And the bridge keeps flowing.
    publisher.publish("sensors/t", "after", QoS::AtLeastOnce);
    assert_eq!(
        collect(&mut sub, 1, Duration::from_secs(10)),
        vec![("sensors/t".to_string(), "after".to_string())]
    );
    // Every drop is logged (a line per second at most, with the count since the last one).
    let logged = || -> u64 {
        local
            .log_text()
            .lines()
            .filter(|l| l.contains("bridge edge: dropped"))
            .filter_map(|l| {
                l.split("dropped ")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    crate::common::eventually(Duration::from_secs(5), || (logged() == 17).then_some(()))
        .unwrap_or_else(|| panic!("{} drops logged, want 17: {}", logged(), local.log_text()));
    let (_, _, body) = http(metrics_addr(&local), "GET", "/metrics");
    assert!(
        body.contains("mqflux_bridge_dropped_total{bridge=\"edge\",reason=\"queue_full\"} 17\n"),
        "{body}"
    );
}

#[test]
fn qos2_across_cuts_is_delivered_exactly_once() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    let mut sub = persistent_sub(remote.port, "remote-sub", "sensors/#", QoS::ExactlyOnce);
    let local = Broker::with_config(&bridge_toml(proxy.port, &["sensors/# out 2"], ""));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    let mut got = Vec::new();
    for i in 0..300 {
        publisher.publish("sensors/t", &format!("m{i}"), QoS::ExactlyOnce);
        if i % 60 == 30 {
            // Cut the link while QoS 2 exchanges are under way.
            proxy.reset();
        }
        got.extend(collect(&mut sub, 1, Duration::from_millis(1)));
    }
    let left = 300 - got.len();
    got.extend(collect(&mut sub, left, Duration::from_secs(20)));
    let want = numbered("sensors/t", 0..300);
    let missing: Vec<_> = want.iter().filter(|m| !got.contains(m)).collect();
    let mut seen = std::collections::HashSet::new();
    let doubled: Vec<_> = got.iter().filter(|m| !seen.insert(*m)).collect();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "missing {missing:?}, doubled {doubled:?}; remote log:\n{}",
        remote.log()
    );
    assert_eq!(got, want);
    expect_nothing_more(&mut sub, Duration::from_millis(500));
    assert!(
        local
            .log_text()
            .matches("bridge edge: connected to")
            .count()
            >= 2,
        "the link was cut at least once"
    );
}

#[test]
fn retained_set_and_cleared_while_the_link_is_down_propagate() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(proxy.port, &["state/# out 1"], "")
    ));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publisher.publish_with(
        "state/b",
        b"old",
        QoS::AtLeastOnce,
        true,
        Default::default(),
    );
    let mut check = RawClient::connect_v311(remote.port, "check-1");
    check.subscribe("state/#", QoS::AtLeastOnce);
    assert_eq!(
        collect(&mut check, 1, Duration::from_secs(10)),
        vec![("state/b".to_string(), "old".to_string())]
    );
    wait_drained(&local);
    proxy.set(Mode::Blackhole);
    proxy.reset();
    publisher.publish_with("state/a", b"1", QoS::AtLeastOnce, true, Default::default());
    publisher.publish_with("state/b", b"", QoS::AtLeastOnce, true, Default::default());
    proxy.set(Mode::Forward);
    // The clear went out after the set, in order: the remote ends with state/a only.
    let mut live = collect(&mut check, 2, Duration::from_secs(20));
    live.sort();
    assert_eq!(
        live,
        vec![
            ("state/a".to_string(), "1".to_string()),
            ("state/b".to_string(), String::new())
        ]
    );
    let mut fresh = RawClient::connect_v311(remote.port, "check-2");
    fresh.subscribe("state/#", QoS::AtLeastOnce);
    let retained = collect(&mut fresh, 2, Duration::from_secs(2));
    assert_eq!(retained, vec![("state/a".to_string(), "1".to_string())]);
}

#[test]
fn in_publishes_remote_messages_locally_once_in_order() {
    let remote = Mosquitto::start("");
    let local = Broker::with_config(&bridge_toml(remote.port, &["cmd/# in 1"], ""));
    local.wait_for_log(&["bridge edge: subscribed on the remote to 1 of 1"]);
    let mut local_sub = RawClient::connect_v311(local.port, "local-sub");
    local_sub.subscribe("cmd/#", QoS::AtLeastOnce);
    let mut remote_pub = RawClient::connect_v311(remote.port, "remote-pub");
    publish_numbered(&mut remote_pub, "cmd/x", 0..200);
    let got = collect(&mut local_sub, 200, Duration::from_secs(20));
    assert_eq!(got, numbered("cmd/x", 0..200));
    expect_nothing_more(&mut local_sub, Duration::from_millis(500));
}

#[test]
fn in_qos2_from_the_remote_is_published_locally_exactly_once() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    let local = Broker::with_config(&bridge_toml(proxy.port, &["cmd/# in 2"], ""));
    local.wait_for_log(&["bridge edge: subscribed on the remote to 1 of 1"]);
    let mut local_sub = RawClient::connect_v311(local.port, "local-sub");
    local_sub.subscribe("cmd/#", QoS::ExactlyOnce);
    let mut remote_pub = RawClient::connect_v311(remote.port, "remote-pub");
    let mut got = Vec::new();
    for round in 0..3 {
        publish_qos2_pipelined(&mut remote_pub, "cmd/x", round * 100..round * 100 + 100);
        got.extend(collect(&mut local_sub, 1, Duration::from_millis(50)));
        // Cut the link while the remote's QoS 2 exchanges with the bridge are under way.
        proxy.reset();
    }
    let left = 300 - got.len();
    got.extend(collect(&mut local_sub, left, Duration::from_secs(20)));
    let want = numbered("cmd/x", 0..300);
    let mut seen = std::collections::HashSet::new();
    let doubled: Vec<_> = got.iter().filter(|m| !seen.insert(*m)).collect();
    let missing: Vec<_> = want.iter().filter(|m| !got.contains(m)).collect();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "missing {missing:?}, doubled {doubled:?}"
    );
    expect_nothing_more(&mut local_sub, Duration::from_millis(500));
}

/// A subscriber (QoS 1) and a publisher on each side of a `both` bridge.
struct Sides {
    local_sub: RawClient,
    remote_sub: RawClient,
    local_pub: RawClient,
    remote_pub: RawClient,
}

impl Sides {
    fn connect(local: u16, local_filter: &str, remote: u16, remote_filter: &str) -> Sides {
        let mut local_sub = RawClient::connect_v311(local, "local-sub");
        local_sub.subscribe(local_filter, QoS::AtLeastOnce);
        let mut remote_sub = RawClient::connect_v311(remote, "remote-sub");
        remote_sub.subscribe(remote_filter, QoS::AtLeastOnce);
        Sides {
            local_sub,
            remote_sub,
            local_pub: RawClient::connect_v311(local, "local-pub"),
            remote_pub: RawClient::connect_v311(remote, "remote-pub"),
        }
    }

    /// Publish `m0`..`m{n-1}` at QoS 1 on each side, interleaved.
    fn publish_both(&mut self, local_topic: &str, remote_topic: &str, n: usize) {
        for i in 0..n {
            let payload = format!("m{i}");
            self.local_pub
                .publish(local_topic, &payload, QoS::AtLeastOnce);
            self.remote_pub
                .publish(remote_topic, &payload, QoS::AtLeastOnce);
        }
    }
}

#[test]
fn both_directions_deliver_each_message_once_per_side_without_echo() {
    let remote = Mosquitto::start("");
    // Prefixes remap: local site/... is central/site1/... on the remote.
    let local = Broker::with_config(&bridge_toml(
        remote.port,
        &["chat/# both 1 site/ central/site1/"],
        "",
    ));
    local.wait_for_log(&["bridge edge: subscribed on the remote to 1 of 1"]);
    let mut sides = Sides::connect(
        local.port,
        "site/chat/#",
        remote.port,
        "central/site1/chat/#",
    );
    sides.publish_both("site/chat/l", "central/site1/chat/r", 50);
    let Sides {
        mut local_sub,
        mut remote_sub,
        ..
    } = sides;
    let on_topic = |got: &[(String, String)], topic: &str| -> Vec<(String, String)> {
        got.iter().filter(|(t, _)| t == topic).cloned().collect()
    };
    let local_got = collect(&mut local_sub, 100, Duration::from_secs(20));
    expect_nothing_more(&mut local_sub, Duration::from_millis(500));
    assert_eq!(
        on_topic(&local_got, "site/chat/l"),
        numbered("site/chat/l", 0..50)
    );
    assert_eq!(
        on_topic(&local_got, "site/chat/r"),
        numbered("site/chat/r", 0..50)
    );
    assert_eq!(local_got.len(), 100, "no echo: {local_got:?}");
    let remote_got = collect(&mut remote_sub, 100, Duration::from_secs(20));
    expect_nothing_more(&mut remote_sub, Duration::from_millis(500));
    assert_eq!(
        on_topic(&remote_got, "central/site1/chat/l"),
        numbered("central/site1/chat/l", 0..50)
    );
    assert_eq!(
        on_topic(&remote_got, "central/site1/chat/r"),
        numbered("central/site1/chat/r", 0..50)
    );
    assert_eq!(remote_got.len(), 100, "no echo: {remote_got:?}");
}

/// Publish QoS 2 messages `m{range}` on `topic`, pipelined in chunks (within the broker's
/// Receive Maximum), each exchange completed.
fn publish_qos2_pipelined(client: &mut RawClient, topic: &str, range: std::ops::Range<usize>) {
    use mqflux::protocol::{Ack, Publish};
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(20) {
        let mut ids = Vec::new();
        for i in chunk {
            let id = client.packet_id();
            ids.push(id);
            client.send(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: topic.into(),
                packet_id: id,
                payload: format!("m{i}").into_bytes().into(),
                properties: Default::default(),
            }));
        }
        for id in &ids {
            client.wait_for("PUBREC", |p| match p {
                Packet::PubRec(a) if a.packet_id == *id => Some(()),
                _ => None,
            });
            client.send(&Packet::PubRel(Ack::new(*id)));
        }
        for id in &ids {
            client.wait_for("PUBCOMP", |p| match p {
                Packet::PubComp(a) if a.packet_id == *id => Some(()),
                _ => None,
            });
        }
    }
}

#[test]
fn remote_with_receive_maximum_5_and_1000_queued_does_not_reconnect_loop() {
    // A second mqflux as the remote: it announces Receive Maximum 5 and disconnects a client
    // that has more QoS 2 messages unreleased [MQTT-3.3.4-9].
    let remote = Broker::with_config("[limits]\nmax_inflight = 5\n");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::ExactlyOnce);
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(
            proxy.port,
            &["sensors/# out 2"],
            "bridge_protocol_version = \"mqttv50\"\nmax_inflight = 100"
        )
    ));
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_qos2_pipelined(&mut publisher, "sensors/t", 0..1000);
    assert_eq!(metric(&local, "mqflux_bridge_queued_messages"), 1000);
    proxy.set(Mode::Forward);
    let got = collect(&mut sub, 1000, Duration::from_secs(30));
    assert_eq!(got, numbered("sensors/t", 0..1000));
    expect_nothing_more(&mut sub, Duration::from_millis(300));
    wait_drained(&local);
    assert_eq!(metric(&local, "mqflux_bridge_reconnects_total"), 0);
    assert!(
        !local.log_text().contains("bridge edge: link to"),
        "the link never broke: {}",
        local.log_text()
    );
}

#[test]
fn tls_to_a_remote_with_its_own_ca_and_refused_with_another() {
    let certs = tempfile::tempdir().unwrap();
    let pki = crate::common::listeners::make_pki(certs.path(), "edge");
    // Every file readable by mosquitto, which drops root.
    for f in std::fs::read_dir(certs.path()).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let path = f.unwrap().path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(
        certs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let plain = crate::common::remote::free_port();
    // The first listener (TLS) is the bridge's; the second (plain) the test subscriber's.
    let remote = Mosquitto::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nlistener {plain} 127.0.0.1\n",
        pki.ca.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    ));
    // `Mosquitto::start` waits for the first listener only; the plain one opens just after.
    crate::common::eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", plain)).ok()
    })
    .unwrap_or_else(|| panic!("mosquitto did not listen on {plain}: {}", remote.log()));
    let mut sub = RawClient::connect_v311(plain, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let tls = format!("bridge_cafile = {:?}", pki.ca.to_str().unwrap());
    let config =
        bridge_toml(remote.port, &["sensors/# out 1"], &tls).replace("127.0.0.1:", "localhost:");
    let local = Broker::with_config(&config);
    local.wait_for_log(&["bridge edge: connected to localhost:"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..20);
    assert_eq!(
        collect(&mut sub, 20, Duration::from_secs(10)),
        numbered("sensors/t", 0..20)
    );
    // A CA that did not sign the remote's certificate: no connection, and the log says why.
    let other = tempfile::tempdir().unwrap();
    let other_pki = crate::common::listeners::make_pki(other.path(), "edge");
    let tls = format!("bridge_cafile = {:?}", other_pki.ca.to_str().unwrap());
    let config =
        bridge_toml(remote.port, &["sensors/# out 1"], &tls).replace("127.0.0.1:", "localhost:");
    let refused = Broker::with_config(&config);
    let line = refused.wait_for_log(&["bridge edge: cannot connect to localhost:"]);
    assert!(line.contains("TLS"), "{line}");
    assert!(!refused.log_text().contains("bridge edge: connected"));
}

#[test]
fn in_messages_are_stored_by_the_sink_before_the_remote_gets_its_puback() {
    let influx = crate::common::influx::Influx::start();
    let remote = Mosquitto::start("");
    let spool = tempfile::tempdir().unwrap();
    let config = format!(
        "[persistence]\ndir = \"state\"\nmode = \"sync\"\n\n[sink]\nenabled = true\nurl = \"{}\"\n\
         database = \"bridged\"\nspool_dir = {:?}\nflush_interval_ms = 50\n\n{}",
        influx.url(),
        spool.path().to_str().unwrap(),
        bridge_toml(remote.port, &["meter/# in 1"], "")
    );
    let local = Broker::with_config(&config);
    local.wait_for_log(&["bridge edge: subscribed on the remote to 1 of 1"]);
    let mut remote_pub = RawClient::connect_v311(remote.port, "remote-pub");
    for i in 0..100 {
        remote_pub.publish("meter/power", &i.to_string(), QoS::AtLeastOnce);
    }
    assert!(
        influx.wait_until(Duration::from_secs(30), || influx
            .count("bridged", "mqtt", "value")
            == 100),
        "points stored: {}",
        influx.count("bridged", "mqtt", "value")
    );
    let (_, rows) = influx.select("bridged", "SELECT sum(value) FROM mqtt");
    assert_eq!(
        rows[0][1].as_f64(),
        Some((0..100).sum::<i32>() as f64),
        "none twice"
    );
}

#[test]
fn check_config_names_file_key_and_expectation_for_bad_bridges() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridges.toml");
    std::fs::write(
        &file,
        "[[bridges]]\nconnection = \"a b\"\naddress = [\"host:x\"]\n\
         topic = [\"a/# sideways\", \"\\\"\\\" out 1 local/only \\\"\\\"\", \"x/# out 3\"]\n\
         keepalive_interval = 1\nbridge_protocol_version = \"mqttv4\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (status, out) =
        crate::common::run_to_exit(&["check-config", path], Duration::from_secs(10));
    assert!(!status.success(), "{out}");
    // A bad enum value is a parse error; it is reported (and commented out) first.
    assert!(out.contains("bridges[0].bridge_protocol_version"), "{out}");
    assert!(out.contains("mqttv311") && out.contains("mqttv50"), "{out}");
    for (key, expected) in [
        ("bridges[0].connection", "expected a name"),
        ("bridges[0].address[0]", "expected \"host:port\""),
        ("bridges[0].topic[0]", "`out`, `in` or `both`"),
        (
            "bridges[0].topic[1]",
            "needs both a local and a remote prefix",
        ),
        ("bridges[0].topic[2]", "QoS 0, 1 or 2"),
        ("bridges[0].keepalive_interval", "expected 2 to 65535"),
        ("bridges[0].queue_dir", "expected a directory"),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("key `{key}`")))
            .unwrap_or_else(|| panic!("no error for {key}: {out}"));
        assert!(line.contains(path), "names the file: {line}");
        assert!(line.contains(expected), "{line}");
    }
    // A CA file that is not PEM: named with its key, before the broker would start.
    let bad_ca = dir.path().join("ca.pem");
    std::fs::write(&bad_ca, "not a certificate\n").unwrap();
    let tls = dir.path().join("tls.toml");
    std::fs::write(
        &tls,
        format!(
            "[persistence]\ndir = \"state\"\n{}",
            bridge_toml(
                1,
                &["a/# out 1"],
                &format!("bridge_cafile = {:?}", bad_ca.to_str().unwrap())
            )
        ),
    )
    .unwrap();
    let (status, out) = crate::common::run_to_exit(
        &["check-config", tls.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("key `bridges[0].bridge_cafile`") && out.contains("no PEM certificate"),
        "{out}"
    );
    // The mosquitto-style example in config.example.toml passes, uncommented.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let start = example.find("#[[bridges]]").unwrap();
    let block: String = example[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .filter(|l| !l.starts_with("##") && !l.contains("file ="))
        .map(|l| format!("{}\n", &l[1..]))
        .collect();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, block).unwrap();
    let (status, out) = crate::common::run_to_exit(
        &["check-config", good.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(status.success(), "{out}");
    assert!(out.contains("bridges central"), "{out}");
}

#[test]
fn sighup_reload_keeps_the_queue_of_a_bridge_whose_connection_stays() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&bridge_toml(proxy.port, &["sensors/# out 1"], ""));
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..30);
    // Same connection, other settings: the bridge restarts on the queue it had.
    let changed = bridge_toml(proxy.port, &["sensors/# out 1"], "keepalive_interval = 7");
    std::fs::write(local.config_path(), changed).unwrap();
    let mark = local.log_mark();
    local.send_signal(libc::SIGHUP);
    local.wait_for_log_after(
        mark,
        &["bridge edge: settings changed; restarting with its queue"],
        Duration::from_secs(10),
    );
    proxy.set(Mode::Forward);
    let got = collect(&mut sub, 30, Duration::from_secs(20));
    assert_eq!(got, numbered("sensors/t", 0..30));
    expect_nothing_more(&mut sub, Duration::from_millis(300));
}

#[test]
fn failover_to_the_next_address_and_back_to_the_primary() {
    let primary = Mosquitto::start("");
    let secondary = Mosquitto::start("");
    let proxy = FaultProxy::start(primary.port);
    proxy.set(Mode::Refuse);
    let mut on_primary = RawClient::connect_v311(primary.port, "sub-primary");
    on_primary.subscribe("sensors/#", QoS::AtLeastOnce);
    let mut on_secondary = RawClient::connect_v311(secondary.port, "sub-secondary");
    on_secondary.subscribe("sensors/#", QoS::AtLeastOnce);
    let config = bridge_toml(proxy.port, &["sensors/# out 1"], "primary_retry_secs = 1").replace(
        &format!("address = [\"127.0.0.1:{}\"]", proxy.port),
        &format!(
            "address = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
            proxy.port, secondary.port
        ),
    );
    let local = Broker::with_config(&format!("{METRICS}{config}"));
    local.wait_for_log(&[&format!(
        "bridge edge: connected to 127.0.0.1:{}",
        secondary.port
    )]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..10);
    assert_eq!(
        collect(&mut on_secondary, 10, Duration::from_secs(10)),
        numbered("sensors/t", 0..10)
    );
    wait_drained(&local);
    // The primary answers again: within primary_retry_secs the bridge moves back.
    proxy.set(Mode::Forward);
    local.wait_for_log(&[&format!(
        "bridge edge: connected to 127.0.0.1:{}",
        proxy.port
    )]);
    publish_numbered(&mut publisher, "sensors/t", 10..20);
    assert_eq!(
        collect(&mut on_primary, 10, Duration::from_secs(10)),
        numbered("sensors/t", 10..20)
    );
    expect_nothing_more(&mut on_secondary, Duration::from_millis(300));
}

#[test]
fn max_rate_caps_how_fast_a_backlog_drains() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&bridge_toml(
        proxy.port,
        &["sensors/# out 1"],
        "max_rate = 50",
    ));
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..100);
    proxy.set(Mode::Forward);
    let first = collect(&mut sub, 1, Duration::from_secs(10));
    let start = Instant::now();
    let mut got = first;
    got.extend(collect(&mut sub, 99, Duration::from_secs(10)));
    let took = start.elapsed();
    assert_eq!(got, numbered("sensors/t", 0..100));
    // 99 more at 50/s: about 2 s (a 100 ms burst allowance at most).
    assert!(
        took >= Duration::from_millis(1700),
        "drained in {took:?} despite max_rate = 50"
    );
}

#[test]
fn in_messages_obey_the_acl_of_local_username() {
    let remote = Mosquitto::start("");
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    // Anonymous local clients may read everything; the bridge's user may write cmd/allowed/#.
    std::fs::write(
        &acl,
        "topic read #\n\nuser bridge\ntopic write cmd/allowed/#\n",
    )
    .unwrap();
    let config = format!(
        "{METRICS}[security]\nallow_anonymous = true\nacl_file = {:?}\n\n{}",
        acl.to_str().unwrap(),
        bridge_toml(remote.port, &["cmd/# in 1"], "local_username = \"bridge\"")
    );
    let local = Broker::with_config(&config);
    local.wait_for_log(&["bridge edge: subscribed on the remote to 1 of 1"]);
    let mut local_sub = RawClient::connect_v311(local.port, "local-sub");
    local_sub.subscribe("cmd/#", QoS::AtLeastOnce);
    let mut remote_pub = RawClient::connect_v311(remote.port, "remote-pub");
    remote_pub.publish("cmd/denied/x", "no", QoS::AtLeastOnce);
    remote_pub.publish("cmd/allowed/x", "yes", QoS::AtLeastOnce);
    assert_eq!(
        collect(&mut local_sub, 2, Duration::from_secs(3)),
        vec![("cmd/allowed/x".to_string(), "yes".to_string())]
    );
    let (_, _, body) = http(metrics_addr(&local), "GET", "/metrics");
    assert!(
        body.contains("mqflux_bridge_dropped_total{bridge=\"edge\",reason=\"denied\"} 1\n"),
        "{body}"
    );
}

#[test]
fn v311_bridge_to_a_second_mqflux_delivers_with_or_without_the_bridge_bit() {
    // try_private: a remote that refuses protocol level 0x84 is retried without the bit; one
    // that accepts it takes the bridge as such. Either way every message arrives once.
    let remote = Broker::start();
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&bridge_toml(remote.port, &["sensors/# out 1"], ""));
    let line = local.wait_for_log(&["bridge edge: connected to"]);
    let refused = local.log_text().contains("refused the bridge bit");
    assert_eq!(line.contains("bridge bit"), !refused, "{line}");
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..50);
    assert_eq!(
        collect(&mut sub, 50, Duration::from_secs(10)),
        numbered("sensors/t", 0..50)
    );
    expect_nothing_more(&mut sub, Duration::from_millis(300));
}

#[test]
fn qos2_state_survives_sigkill_of_the_local_broker_mid_drain() {
    let remote = Mosquitto::start("");
    let mut sub = persistent_sub(remote.port, "remote-sub", "sensors/#", QoS::ExactlyOnce);
    // A rate cap keeps QoS 2 exchanges under way when the broker dies.
    let mut local = Broker::with_config(&bridge_toml(
        remote.port,
        &["sensors/# out 2"],
        "max_rate = 200",
    ));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_qos2_pipelined(&mut publisher, "sensors/t", 0..300);
    let mut got = collect(&mut sub, 300, Duration::from_millis(400));
    assert!(got.len() < 300, "the kill must come mid-drain");
    local.kill();
    local.restart();
    let left = 300 - got.len();
    got.extend(collect(&mut sub, left, Duration::from_secs(20)));
    let want = numbered("sensors/t", 0..300);
    let missing: Vec<_> = want.iter().filter(|m| !got.contains(m)).collect();
    let mut seen = std::collections::HashSet::new();
    let doubled: Vec<_> = got.iter().filter(|m| !seen.insert(*m)).collect();
    assert!(
        missing.is_empty() && doubled.is_empty(),
        "missing {missing:?}, doubled {doubled:?}"
    );
    expect_nothing_more(&mut sub, Duration::from_millis(500));
}

#[test]
fn v5_properties_travel_and_expired_messages_are_dropped_not_sent() {
    use mqflux::protocol::Properties;
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let mut sub = RawClient::connect_v5(remote.port, "remote-sub", Properties::default());
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(
            proxy.port,
            &["sensors/# out 1"],
            "bridge_protocol_version = \"mqttv50\""
        )
    ));
    let mut publisher = RawClient::connect_v5(local.port, "local-pub", Properties::default());
    let kept = Properties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("site".into(), "1".into())],
        message_expiry_interval: Some(600),
        ..Default::default()
    };
    publisher.publish_with("sensors/kept", b"a", QoS::AtLeastOnce, false, kept);
    // [MQTT-3.3.2-5] a message whose expiry passes in the queue is not sent.
    let short = Properties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    publisher.publish_with("sensors/short", b"b", QoS::AtLeastOnce, false, short);
    std::thread::sleep(Duration::from_millis(2100));
    proxy.set(Mode::Forward);
    let p = sub.expect_publish();
    sub.puback(p.packet_id);
    assert_eq!(&*p.topic, "sensors/kept");
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        p.properties.user_properties,
        vec![("site".to_string(), "1".to_string())]
    );
    // [MQTT-3.3.2-6] the interval forwarded is less the whole seconds it waited.
    let left = p
        .properties
        .message_expiry_interval
        .expect("expiry forwarded");
    assert!((590..=598).contains(&left), "expiry {left}");
    expect_nothing_more(&mut sub, Duration::from_millis(500));
    wait_drained(&local);
    let (_, _, body) = http(metrics_addr(&local), "GET", "/metrics");
    assert!(
        body.contains("mqflux_bridge_dropped_total{bridge=\"edge\",reason=\"expired\"} 1\n"),
        "{body}"
    );
}

#[test]
fn a_damaged_queue_journal_stops_the_start_until_recover_keeps_what_is_readable() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    proxy.set(Mode::Refuse);
    let state = tempfile::tempdir().unwrap();
    let queue_dir = state.path().join("queue");
    let config = bridge_toml(
        proxy.port,
        &["sensors/# out 1"],
        &format!("queue_dir = {:?}", queue_dir.to_str().unwrap()),
    );
    let mut local = Broker::with_config(&config);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..10);
    local.kill();
    // A torn write at the end of the queue's journal.
    let journal = queue_dir.join("edge").join("mqflux.journal");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    std::io::Write::write_all(&mut file, &[0x40, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(file);
    let config_path = state.path().join("mqflux.toml");
    std::fs::write(&config_path, &config).unwrap();
    let path = config_path.to_str().unwrap();
    let (status, out) = crate::common::run_to_exit(
        &["--config", path, "--bind", "127.0.0.1", "--port", "0"],
        Duration::from_secs(10),
    );
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("bridge edge: cannot open its queue") && out.contains("--recover"),
        "{out}"
    );
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let recovered = Broker::builder().config(&config).arg("--recover").start();
    recovered.wait_for_log(&["bridge edge: 10 queued messages"]);
    proxy.set(Mode::Forward);
    assert_eq!(
        collect(&mut sub, 10, Duration::from_secs(10)),
        numbered("sensors/t", 0..10)
    );
}

#[test]
fn a_message_over_bridge_max_packet_size_is_dropped_counted_and_the_rest_flows() {
    let remote = Mosquitto::start("");
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(
            remote.port,
            &["sensors/# out 1"],
            "bridge_max_packet_size = 100"
        )
    ));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publisher.publish("sensors/t", "small-1", QoS::AtLeastOnce);
    publisher.publish("sensors/t", &"x".repeat(200), QoS::AtLeastOnce);
    publisher.publish("sensors/t", "small-2", QoS::AtLeastOnce);
    assert_eq!(
        collect(&mut sub, 2, Duration::from_secs(10)),
        vec![
            ("sensors/t".to_string(), "small-1".to_string()),
            ("sensors/t".to_string(), "small-2".to_string())
        ]
    );
    wait_drained(&local);
    expect_nothing_more(&mut sub, Duration::from_millis(300));
    let (_, _, body) = http(metrics_addr(&local), "GET", "/metrics");
    assert!(
        body.contains("mqflux_bridge_dropped_total{bridge=\"edge\",reason=\"too_large\"} 1\n"),
        "{body}"
    );
    local.wait_for_log(&["larger than the remote takes"]);
}

#[test]
fn v5_both_to_a_second_mqflux_uses_no_local_and_keeps_retained_flags() {
    let remote = Broker::start();
    let local = Broker::with_config(&bridge_toml(
        remote.port,
        &["room/# both 1"],
        "bridge_protocol_version = \"mqttv50\"",
    ));
    local.wait_for_log(&["bridge edge: subscribed on the remote to 1 of 1"]);
    let mut sides = Sides::connect(local.port, "room/#", remote.port, "room/#");
    sides.publish_both("room/local", "room/remote", 20);
    let Sides {
        mut local_sub,
        mut remote_sub,
        mut remote_pub,
        ..
    } = sides;
    // [MQTT-3.8.3-3] No Local: the remote does not send the bridge its own messages back.
    let mut local_got = collect(&mut local_sub, 40, Duration::from_secs(10));
    expect_nothing_more(&mut local_sub, Duration::from_millis(500));
    let mut remote_got = collect(&mut remote_sub, 40, Duration::from_secs(10));
    expect_nothing_more(&mut remote_sub, Duration::from_millis(500));
    local_got.sort();
    remote_got.sort();
    let mut want: Vec<(String, String)> = numbered("room/local", 0..20);
    want.extend(numbered("room/remote", 0..20));
    want.sort();
    assert_eq!(local_got, want);
    assert_eq!(remote_got, want);
    // Retain As Published: a retained message from the remote is retained here too.
    remote_pub.publish_with(
        "room/state",
        b"on",
        QoS::AtLeastOnce,
        true,
        Default::default(),
    );
    collect(&mut local_sub, 1, Duration::from_secs(10));
    let mut late = RawClient::connect_v311(local.port, "late-sub");
    late.subscribe("room/state", QoS::AtLeastOnce);
    assert_eq!(
        collect(&mut late, 1, Duration::from_secs(5)),
        vec![("room/state".to_string(), "on".to_string())]
    );
}

#[test]
fn a_link_paused_shorter_than_the_keepalive_resumes_without_reconnecting() {
    let remote = Mosquitto::start("");
    let proxy = FaultProxy::start(remote.port);
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = Broker::with_config(&format!(
        "{METRICS}{}",
        bridge_toml(proxy.port, &["sensors/# out 1"], "keepalive_interval = 4")
    ));
    local.wait_for_log(&["bridge edge: connected to"]);
    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    // TCP holds the bytes while the proxy reads nothing; 2 s is below 1.5 x 4 s.
    proxy.set(Mode::Pause);
    publish_numbered(&mut publisher, "sensors/t", 0..20);
    std::thread::sleep(Duration::from_secs(2));
    proxy.set(Mode::Forward);
    assert_eq!(
        collect(&mut sub, 20, Duration::from_secs(10)),
        numbered("sensors/t", 0..20)
    );
    wait_drained(&local);
    assert_eq!(metric(&local, "mqflux_bridge_reconnects_total"), 0);
    assert_eq!(metric(&local, "mqflux_bridge_resent_total"), 0);
}

#[test]
fn dashboard_overview_shows_the_bridge_up_sending_then_down_and_queueing() {
    use crate::common::dashboard::{broker_with_dashboard, dashboard_addr, get};
    let mut remote = Mosquitto::start("");
    let mut sub = RawClient::connect_v311(remote.port, "remote-sub");
    sub.subscribe("sensors/#", QoS::AtLeastOnce);
    let local = broker_with_dashboard(&bridge_toml(remote.port, &["sensors/# out 1"], ""));
    local.wait_for_log(&["bridge edge: connected to"]);
    let addr = dashboard_addr(&local);
    let edge = |want: &dyn Fn(&serde_json::Value) -> bool| {
        crate::common::eventually(Duration::from_secs(20), || {
            let o = get(addr, "/api/v1/overview");
            let bridges = o["bridges"]
                .as_array()
                .expect("bridges is an array")
                .clone();
            assert_eq!(bridges.len(), 1, "one entry per [[bridges]]: {o}");
            want(&bridges[0]).then(|| bridges[0].clone())
        })
    };
    let up = edge(&|b| b["up"] == true).expect("the bridge shows up");
    assert_eq!(up["name"], "edge");
    assert_eq!(up["address"], format!("127.0.0.1:{}", remote.port));
    assert_eq!(up["reconnects"], 0);

    let mut publisher = RawClient::connect_v311(local.port, "local-pub");
    publish_numbered(&mut publisher, "sensors/t", 0..20);
    assert_eq!(
        collect(&mut sub, 20, Duration::from_secs(10)),
        numbered("sensors/t", 0..20)
    );
    let sent = edge(&|b| b["acked"] == 20)
        .unwrap_or_else(|| panic!("acked reaches 20: {}", get(addr, "/api/v1/overview")));
    assert_eq!(sent["sent"], 20, "{sent}");
    assert_eq!(sent["queued_messages"], 0, "{sent}");
    assert_eq!(sent["dropped"], 0, "{sent}");

    // The remote goes away: the bridge shows down, and what is published waits in its queue.
    remote.kill();
    edge(&|b| b["up"] == false)
        .unwrap_or_else(|| panic!("the bridge shows down: {}", get(addr, "/api/v1/overview")));
    publish_numbered(&mut publisher, "sensors/t", 20..30);
    let down = edge(&|b| b["queued_messages"] == 10)
        .unwrap_or_else(|| panic!("10 queued: {}", get(addr, "/api/v1/overview")));
    assert_eq!(down["up"], false, "{down}");
    assert!(down["queued_bytes"].as_u64().unwrap() > 0, "{down}");
    assert_eq!(down["acked"], 20, "nothing more acknowledged: {down}");
    // The oldest queued message ages while the link is down.
    edge(&|b| b["oldest_age_secs"].as_f64().unwrap() >= 1.0)
        .unwrap_or_else(|| panic!("oldest age rises: {}", get(addr, "/api/v1/overview")));
}
