//! Interoperability with Eclipse Paho, the client library of many IoT gateways (Debian
//! `python3-paho-mqtt`, run by Debian's `/usr/bin/python3`): `tests/interop/paho_clients.py`
//! drives MQTT 3.1.1 and 5.0 clients against the real broker (QoS 0/1/2, retained messages,
//! wills, persistent sessions, v5 properties, subscription identifiers, No Local).

mod common;

use common::Broker;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn paho_clients_v311_and_v5_work_against_the_broker() {
    let broker = Broker::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_clients.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(broker.port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (Debian packages python3 and python3-paho-mqtt)");
    // Every wait in the script is bounded (5 s); this only guards against a hung interpreter.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("paho script output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "paho checks failed:\n{text}");
    assert!(text.contains("all paho checks passed"), "{text}");
}
