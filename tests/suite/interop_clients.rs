//! Interoperability with the client libraries our users' devices and dashboards run, each a
//! Debian package driven by a script in `tests/interop/` against the real broker binary:
//! - Eclipse Paho (`python3-paho-mqtt`, run by Debian's `/usr/bin/python3`), the library of
//!   many IoT gateways;
//! - MQTT.js (`node-mqtt`), the client of Node-RED and of Node.js dashboards.
//!
//! Both check MQTT 3.1.1 and 5.0: QoS 0/1/2 at the granted QoS, retained messages, wills on a
//! lost connection, persistent sessions with queued messages, v5 properties, subscription
//! identifiers and No Local. Every wait inside a script is bounded (5 s).

use crate::common;

use common::Broker;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `program script PORT` against a fresh broker; the script prints "ok CHECK" lines and
/// exits non-zero with "FAIL why" on the first failure.
fn run_client_script(program: &str, script: &str, env: &[(&str, &str)], package: &str) -> String {
    let broker = Broker::start();
    let script = format!("{}/tests/interop/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(program)
        .arg(&script)
        .arg(broker.port.to_string())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program} {script} (Debian package {package}): {e}"));
    // Only a guard against a hung interpreter: the script's own waits are bounded.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("script output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

#[test]
fn paho_python_clients_v311_and_v5_work_against_the_broker() {
    let text = run_client_script(
        "/usr/bin/python3",
        "paho_clients.py",
        &[],
        "python3-paho-mqtt",
    );
    assert!(text.contains("all paho checks passed"), "{text}");
}

#[test]
fn mqtt_js_clients_v311_and_v5_work_against_the_broker() {
    // Debian installs node modules under /usr/share/nodejs, which a Node.js from elsewhere
    // (NodeSource) does not search by itself.
    let env = [("NODE_PATH", "/usr/share/nodejs:/usr/lib/nodejs")];
    let text = run_client_script("node", "mqttjs_clients.js", &env, "nodejs, node-mqtt");
    assert!(text.contains("all MQTT.js checks passed"), "{text}");
}
