//! Keep-alive: PINGREQ/PINGRESP, and disconnection after 1.5x the keep-alive of silence.

use crate::common;

use common::raw::{self, Connect, RawClient};
use common::Broker;
use std::time::{Duration, Instant};

#[test]
fn pingreq_gets_pingresp() {
    let broker = Broker::start();
    let mut c = RawClient::connected(broker.addr(), "pinger");
    c.send(&raw::pingreq());
    // [MQTT-3.12.4-1]
    c.expect_bytes(&[0xD0, 0x00]);
}

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_keep_alive_periods() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect_mqtt(
        broker.addr(),
        &Connect {
            keep_alive: 1,
            ..Connect::new("silent")
        },
    );
    let start = Instant::now();
    // [MQTT-3.1.2-24] 1.5 x 1 s; allow scheduling slack above, none below the keep-alive itself.
    c.expect_closed(Duration::from_secs(5));
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "disconnected after {took:?}, before the 1 s keep-alive"
    );
    assert!(
        took <= Duration::from_millis(3000),
        "disconnected only after {took:?}, expected about 1.5 s"
    );
}

#[test]
fn client_that_keeps_pinging_stays_connected_past_the_keep_alive() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect_mqtt(
        broker.addr(),
        &Connect {
            keep_alive: 1,
            ..Connect::new("chatty")
        },
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3000) {
        // Each round trip takes ~600 ms: well inside the 1.5 s allowance.
        c.expect_silence(Duration::from_millis(600));
        c.ping();
    }
}

#[test]
fn any_control_packet_resets_the_keep_alive_timer() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect_mqtt(
        broker.addr(),
        &Connect {
            keep_alive: 1,
            ..Connect::new("busy")
        },
    );
    let start = Instant::now();
    let mut id = 1;
    while start.elapsed() < Duration::from_millis(3000) {
        c.expect_silence(Duration::from_millis(600));
        c.publish_acked("busy/t", b"x", 1, id, false);
        id += 1;
    }
    c.ping();
}

#[test]
fn keep_alive_zero_turns_the_timeout_off() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::connect_mqtt(
        broker.addr(),
        &Connect {
            keep_alive: 0,
            ..Connect::new("forever")
        },
    );
    // With keep-alive 1 this would be closed by now (see above); with 0 it stays open.
    c.expect_silence(Duration::from_millis(2000));
    c.ping();
}
