//! Scale-out onto NATS: a real 3-node NATS JetStream cluster serving MQTT 3.1.1 on every node
//! (`tests/common/nats.rs`). First what mqflux relies on NATS for, checked against the real
//! thing: QoS 1 and 2 and retained messages between clients on different nodes, a persistent
//! session that survives the SIGKILL of its node (resumed on another), and the node rejoining.
//! Skipped, saying so, only where no nats-server is installed (`scripts/test.sh` installs it).

use crate::common;

use common::nats::{self, NatsCluster};
use common::raw::{self, Connect, RawClient};
use std::time::{Duration, Instant};

#[test]
fn nats_cluster_carries_qos_1_2_and_retained_between_nodes_and_through_a_node_kill() {
    let Some(mut cluster) = NatsCluster::start(3) else {
        return;
    };
    let persistent = Connect {
        clean_session: false,
        ..Connect::new("nats-sub")
    };
    let (mut sub, _) = RawClient::connect_mqtt(cluster.mqtt_addr(1), &persistent);
    assert_eq!(sub.subscribe(1, &[("s/#", 2)]), vec![2], "QoS 2 granted");

    let mut p0 = RawClient::connected(cluster.mqtt_addr(0), "nats-pub-0");
    p0.publish_acked("s/q1", b"one", 1, 1, false);
    let mut p2 = RawClient::connected(cluster.mqtt_addr(2), "nats-pub-2");
    p2.publish_acked("s/q2", b"two", 2, 1, false);
    for (topic, qos) in [("s/q1", 1), ("s/q2", 2)] {
        let p = sub.expect_publish();
        assert_eq!((p.topic.as_str(), p.qos), (topic, qos));
        sub.ack(&p);
    }

    // Retained on node 0, read by a subscriber arriving later on node 2.
    p0.publish_acked("s/kept", b"r", 1, 2, true);
    let live = sub.expect_publish();
    assert_eq!((live.topic.as_str(), live.retain), ("s/kept", false));
    sub.ack(&live);
    let got = common::eventually(Duration::from_secs(10), || {
        let mut late = RawClient::connected(cluster.mqtt_addr(2), "nats-late");
        late.subscribe(1, &[("s/kept", 1)]);
        late.read_packet(Duration::from_secs(1))
            .ok()
            .map(|p| p.publish())
    })
    .expect("retained message on another node");
    assert!(got.retain && got.payload == b"r");
    sub.send(&raw::disconnect());
    p0.send(&raw::disconnect());
    p2.send(&raw::disconnect());

    // SIGKILL the subscriber's node; a QoS 1 publish on the others is acknowledged (perhaps
    // after a resend while JetStream moves its leaders) and waits in the session.
    cluster.kill(1);
    let others = [cluster.mqtt_addr(0), cluster.mqtt_addr(2)];
    let attempts = nats::publish_qos1_until_acked(
        &others,
        "nats-pub-k",
        "s/while-down",
        b"k",
        Duration::from_secs(60),
    );
    eprintln!("publish after the kill of n2 acknowledged at attempt {attempts}");
    let (mut sub, present) = RawClient::connect_mqtt(cluster.mqtt_addr(2), &persistent);
    assert!(
        present,
        "the session was kept by the cluster, not by node n2 alone"
    );
    // The session's JetStream consumer may need its own leader election first.
    let resumed = Instant::now();
    let p = sub
        .read_packet(nats::READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("queued message not delivered after the kill: {e:?}"))
        .publish();
    eprintln!(
        "queued message delivered {:?} after the session resumed",
        resumed.elapsed()
    );
    assert_eq!(p.topic, "s/while-down");
    sub.ack(&p);

    // The killed node comes back and serves MQTT again.
    cluster.restart(1);
    nats::publish_qos1_until_acked(
        &[cluster.mqtt_addr(1)],
        "nats-pub-r",
        "s/after-restart",
        b"a",
        Duration::from_secs(60),
    );
    let p = sub
        .read_packet(nats::READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("message published on the restarted node: {e:?}"))
        .publish();
    assert_eq!(p.topic, "s/after-restart");
    sub.ack(&p);
    cluster.stop();
}
