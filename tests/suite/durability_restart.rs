//! Persistence across restarts (`[persistence] mode = "sync"`): retained messages, persistent
//! sessions with their subscriptions, queued and inflight QoS 1/2 messages and incoming QoS 2
//! packet ids survive both a graceful stop and SIGKILL; a damaged store stops the broker from
//! starting unless `--recover` is given.

use crate::common;

use common::raw::{self, Connect, RawClient, RawPublish, PUBCOMP, PUBLISH, PUBREC, PUBREL};
use common::{persistent_config, run_to_exit, Broker};
use std::time::Duration;

const JOURNAL: &str = "mqflux.journal";

/// Read packets until `n` PUBLISH/PUBREL packets arrived (acknowledging nothing).
fn read_deliveries(c: &mut RawClient, n: usize) -> Vec<raw::RawPacket> {
    (0..n)
        .map(|i| {
            c.read_packet(raw::REPLY_TIMEOUT)
                .unwrap_or_else(|e| panic!("delivery {i} of {n}: {e:?}"))
        })
        .collect()
}

fn stop(broker: &mut Broker, kill: bool) {
    if kill {
        broker.kill();
    } else {
        broker.stop_gracefully();
    }
}

fn state_survives_restart(kill: bool) {
    let store = tempfile::tempdir().unwrap();
    let mut broker = Broker::with_config(&persistent_config(store.path()));
    let addr = broker.addr();

    // A persistent subscriber: two QoS 1 messages left inflight (not acknowledged), one QoS 2
    // message acknowledged with PUBREC only (released: waiting for PUBCOMP).
    let (mut sub, present) = RawClient::connect_mqtt(addr, &Connect::persistent("sub"));
    assert!(!present);
    assert_eq!(sub.subscribe(1, &[("t/#", 1), ("q2/#", 2)]), vec![1, 2]);
    let mut publisher = RawClient::connect_mqtt(addr, &Connect::persistent("pub")).0;
    publisher.publish_acked("t/a", b"inflight-1", 1, 1, false);
    publisher.publish_acked("t/a", b"inflight-2", 1, 2, false);
    publisher.publish_acked("q2/a", b"released", 2, 3, false);
    let got: Vec<RawPublish> = read_deliveries(&mut sub, 3)
        .iter()
        .map(|p| p.publish())
        .collect();
    let released = got.iter().find(|p| p.qos == 2).expect("QoS 2 delivery");
    sub.send(&raw::pubrec(released.packet_id));
    let rel = sub.expect_reply(PUBREL);
    assert_eq!(rel.packet_id(), released.packet_id);
    sub.drop_connection();

    // While it is offline: queued messages, a retained message, and an incoming QoS 2 message
    // whose PUBREL has not come yet.
    publisher.publish_acked("t/b", b"queued-1", 1, 4, false);
    publisher.publish_acked("q2/b", b"queued-2", 2, 5, false);
    publisher.publish_acked("r/x", b"retained", 1, 6, true);
    publisher.send(&raw::publish("q2/c", b"once", 2, 7, false, false));
    assert_eq!(publisher.expect_reply(PUBREC).packet_id(), 7);
    publisher.drop_connection();

    stop(&mut broker, kill);
    broker.restart();

    // The restored subscription routes a message published before the subscriber is back.
    let mut publisher = RawClient::connect_mqtt(addr, &Connect::persistent("other-pub")).0;
    publisher.publish_acked("t/c", b"after-restart", 1, 1, false);

    let (mut sub, present) = RawClient::connect_mqtt(addr, &Connect::persistent("sub"));
    assert!(
        present,
        "[MQTT-3.2.2-2] the stored session is present after the restart"
    );
    // Inflight first, resent with DUP [MQTT-4.4.0-1]; then PUBREL for the released one; then
    // the queue in order.
    let packets = read_deliveries(&mut sub, 7);
    let rel = packets
        .iter()
        .find(|p| p.kind() == PUBREL)
        .expect("PUBREL resent for the released QoS 2 message");
    assert_eq!(rel.packet_id(), released.packet_id);
    let publishes: Vec<RawPublish> = packets
        .iter()
        .filter(|p| p.kind() == PUBLISH)
        .map(|p| p.publish())
        .collect();
    let payloads: Vec<&[u8]> = publishes.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(
        payloads,
        vec![
            &b"inflight-1"[..],
            b"inflight-2",
            b"queued-1",
            b"queued-2",
            b"once",
            b"after-restart"
        ]
    );
    assert!(
        publishes[0].dup && publishes[1].dup,
        "inflight resent with DUP"
    );
    assert_eq!(publishes[0].packet_id, got[0].packet_id);
    for p in &publishes {
        match p.qos {
            1 => sub.send(&raw::puback(p.packet_id)),
            _ => {
                sub.send(&raw::pubrec(p.packet_id));
                assert_eq!(sub.expect_reply(PUBREL).packet_id(), p.packet_id);
                sub.send(&raw::pubcomp(p.packet_id));
            }
        }
    }
    sub.send(&raw::pubcomp(rel.packet_id()));

    // The publisher's QoS 2 exchange goes on: its resend is acknowledged but not routed again
    // [MQTT-4.3.3-2], and PUBREL completes it.
    let (mut publisher, present) = RawClient::connect_mqtt(addr, &Connect::persistent("pub"));
    assert!(present);
    publisher.send(&raw::publish("q2/c", b"once", 2, 7, false, true));
    assert_eq!(publisher.expect_reply(PUBREC).packet_id(), 7);
    publisher.send(&raw::pubrel(7));
    assert_eq!(publisher.expect_reply(PUBCOMP).packet_id(), 7);
    sub.expect_silence(Duration::from_millis(300));

    // The retained message is still there.
    let mut late = RawClient::connected(addr, "late");
    late.subscribe(1, &[("r/#", 1)]);
    let r = late.expect_publish();
    assert_eq!(
        (r.topic.as_str(), &r.payload[..], r.retain),
        ("r/x", &b"retained"[..], true)
    );
}

#[test]
fn retained_queued_inflight_and_qos2_state_survive_a_graceful_restart() {
    state_survives_restart(false);
}

#[test]
fn retained_queued_inflight_and_qos2_state_survive_sigkill() {
    state_survives_restart(true);
}

#[test]
fn ended_session_and_cleared_retained_message_stay_gone_after_restart() {
    let store = tempfile::tempdir().unwrap();
    let mut broker = Broker::with_config(&persistent_config(store.path()));
    let addr = broker.addr();
    let (mut sub, _) = RawClient::connect_mqtt(addr, &Connect::persistent("sub"));
    sub.subscribe(1, &[("t/#", 1)]);
    sub.drop_connection();
    let mut p = RawClient::connected(addr, "pub");
    p.publish_acked("r/x", b"retained", 1, 1, true);
    p.publish_acked("t/a", b"queued", 1, 2, false);
    // [MQTT-3.3.1-10] an empty retained message clears the topic.
    p.publish_acked("r/x", b"", 1, 3, true);
    // [MQTT-3.1.2-6] clean session discards the stored session.
    let clean = RawClient::connect_mqtt(addr, &Connect::new("sub")).0;
    clean.drop_connection();
    broker.restart();
    let (mut sub, present) = RawClient::connect_mqtt(addr, &Connect::persistent("sub"));
    assert!(!present, "the discarded session did not come back");
    sub.subscribe(1, &[("r/#", 1)]);
    sub.expect_silence(Duration::from_millis(300));
}

#[test]
fn damaged_store_refuses_to_start_and_recover_keeps_the_readable_part() {
    let store = tempfile::tempdir().unwrap();
    let config = persistent_config(store.path());
    let mut broker = Broker::with_config(&config);
    let mut p = RawClient::connected(broker.addr(), "pub");
    p.publish_acked("r/kept", b"first", 1, 1, true);
    p.publish_acked("r/lost", b"second", 1, 2, true);
    broker.kill();

    // Cut the last record short, as a torn write or a truncated copy would.
    let journal = store.path().join(JOURNAL);
    let len = std::fs::metadata(&journal).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&journal)
        .unwrap();
    file.set_len(len - 3).unwrap();
    drop(file);

    let config_path = broker.config_path().to_path_buf();
    let (status, stderr) = run_to_exit(
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ],
        Duration::from_secs(10),
    );
    assert!(!status.success(), "started on a damaged store: {stderr}");
    assert!(
        stderr.contains(&journal.display().to_string()) && stderr.contains("--recover"),
        "error names the file and the way out: {stderr}"
    );

    let recovered = Broker::builder().config(&config).arg("--recover").start();
    assert!(
        recovered
            .log_text()
            .contains("unreadable bytes from there on (record cut short)"),
        "says what was lost: {}",
        recovered.log_text()
    );
    let mut s = RawClient::connected(recovered.addr(), "s");
    s.subscribe(1, &[("r/#", 1)]);
    let r = s.expect_publish();
    assert_eq!(
        (r.topic.as_str(), &r.payload[..]),
        ("r/kept", &b"first"[..])
    );
    s.expect_silence(Duration::from_millis(300));
    // What was kept is written back clean: a normal start works again.
    drop(s);
    drop(recovered);
    let again = Broker::with_config(&config);
    let mut s = RawClient::connected(again.addr(), "s");
    s.subscribe(1, &[("r/#", 1)]);
    assert_eq!(s.expect_publish().payload, b"first");
}

/// The operator sees in the log what the store restored.
#[test]
fn start_up_logs_what_the_store_restored() {
    let store = tempfile::tempdir().unwrap();
    let mut broker = Broker::with_config(&persistent_config(store.path()));
    let mut p = RawClient::connected(broker.addr(), "pub");
    p.publish_acked("r/1", b"x", 0, 0, true);
    p.publish_acked("r/2", b"y", 1, 1, true);
    broker.restart();
    let log = broker.log_text();
    assert!(log.contains("loaded 2 retained messages"), "{log}");
}

#[test]
fn periodic_mode_keeps_state_across_a_graceful_restart_and_off_mode_keeps_nothing() {
    for (mode, kept) in [("periodic", true), ("off", false)] {
        let store = tempfile::tempdir().unwrap();
        let config = format!(
            "[persistence]\ndir = {:?}\nmode = \"{mode}\"\nperiodic_interval_secs = 60\n",
            store.path().to_str().unwrap()
        );
        let mut broker = Broker::with_config(&config);
        let addr = broker.addr();
        let (mut sub, _) = RawClient::connect_mqtt(addr, &Connect::persistent("sub"));
        sub.subscribe(1, &[("t/#", 1)]);
        sub.drop_connection();
        let mut p = RawClient::connected(addr, "pub");
        p.publish_acked("t/a", b"queued", 1, 1, false);
        p.publish_acked("r/x", b"retained", 1, 2, true);
        // A graceful stop writes and fsyncs what the interval had not yet.
        stop(&mut broker, false);
        broker.restart();
        let (mut sub, present) = RawClient::connect_mqtt(addr, &Connect::persistent("sub"));
        assert_eq!(present, kept, "mode {mode}");
        sub.subscribe(2, &[("r/#", 1)]);
        if kept {
            let got: Vec<_> = (0..2).map(|_| sub.expect_publish().payload).collect();
            assert!(got.contains(&b"queued".to_vec()) && got.contains(&b"retained".to_vec()));
        } else {
            sub.expect_silence(Duration::from_millis(300));
            assert!(
                !store.path().join(JOURNAL).exists(),
                "mode off writes nothing"
            );
        }
    }
}
