//! Node-RED (issue 21): the example flows in `examples/node-red/` run headless against the real
//! `mqflux` binary (with `examples/node-red/mqflux.toml`: sink on) and a real influxd, all on
//! free loopback ports, and the flows' work is checked over MQTT and in InfluxDB. A second test
//! runs the node-red-node-test-helper (mocha) suite `examples/node-red/test/mqtt_spec.js`,
//! which loads Node-RED's own MQTT nodes against the broker.
//!
//! Node-RED and mocha come from `examples/node-red/node_modules` (`npm ci` there;
//! `scripts/test.sh` does it). Node-RED runs in its own process group and is stopped by PID
//! (SIGTERM, then SIGKILL of the group on drop if a check failed first).

use crate::common;
use crate::common::codec as v5_common;
use crate::common::influx;
use crate::common::spawned;

use bytes::Bytes;
use common::Broker;
use influx::Influx;
use mqflux::protocol::{Packet, Properties, Publish, QoS};
use serde_json::Value;
use spawned::Spawned;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use v5_common::{connect_packet, RawClient};

/// Node-RED loads its palette (~100 node types) before it starts the flows: seconds, more on a
/// loaded machine.
const NODE_RED_START: Duration = Duration::from_secs(60);
/// A message that one flow step must produce.
const STEP: Duration = Duration::from_secs(15);
/// `$SYS` rounds come every `sys_interval` (2 s in the example config); a change of the client
/// count shows up in the next round.
const SYS_WAIT: Duration = Duration::from_secs(20);
/// Points must reach InfluxDB within this (the sink writes within a second).
const SINK_WAIT: Duration = Duration::from_secs(30);
/// Simulator rounds requested: one reading per room per round.
const ROUNDS: usize = 5;
const ROOMS: [&str; 3] = ["kitchen", "bedroom", "office"];

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-red")
}

/// Panics with what to do when the npm packages are missing (`scripts/test.sh` installs them).
fn require_node_modules() {
    let red = example_dir().join("node_modules/node-red/red.js");
    assert!(
        red.exists(),
        "{} missing: run `npm ci` in examples/node-red (scripts/test.sh does)",
        red.display()
    );
}

/// The example's mqflux.toml with this test's InfluxDB and spool (the harness sets the port).
fn example_config(influx: &Influx, spool: &Path) -> String {
    let text = std::fs::read_to_string(example_dir().join("mqflux.toml")).expect("read example");
    let url_line = "url = \"http://127.0.0.1:8086\"";
    let spool_line = "spool_dir = \"run-state/node-red-spool\"";
    assert!(
        text.contains(url_line) && text.contains(spool_line),
        "{text}"
    );
    text.replace(url_line, &format!("url = \"{}\"", influx.url()))
        .replace(spool_line, &format!("spool_dir = \"{}\"", spool.display()))
}

/// Node-RED with the example flows, as the README's command runs it, on a free port.
struct NodeRed {
    process: Spawned,
    _user_dir: tempfile::TempDir,
}

impl NodeRed {
    fn start(broker: &Broker, influx: &Influx) -> NodeRed {
        require_node_modules();
        let user_dir = tempfile::tempdir().expect("temp dir");
        let dir = example_dir();
        let mut cmd = Command::new("node");
        cmd.current_dir(&dir)
            .arg("node_modules/node-red/red.js")
            .args(["--settings", "settings.js", "--userDir"])
            .arg(user_dir.path())
            .env("MQFLUX_HOST", "127.0.0.1")
            .env("MQFLUX_PORT", broker.port.to_string())
            .env("INFLUX_URL", influx.url())
            .env("INFLUX_DB", "mqtt_data")
            .env("NODE_RED_PORT", influx::free_port().to_string())
            // Readings only on request, so that the test knows exactly which were published.
            .env("SIM_PERIODIC", "false");
        let process = Spawned::start(cmd);
        process.wait_for_line(0, "Started flows", NODE_RED_START);
        NodeRed {
            process,
            _user_dir: user_dir,
        }
    }

    /// Asserts that no flow logged an error so far; then SIGTERM to Node-RED's PID: it stops
    /// its flows (the broker node sends its close message and DISCONNECT) and exits.
    fn stop(mut self) {
        let output = self.process.output();
        assert!(
            !output.contains(" - [error] "),
            "Node-RED logged errors:\n{output}"
        );
        let pid = self.process.pid() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child process (not yet reaped: we wait below).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill {pid}");
        assert!(
            self.process.wait_exit(Duration::from_secs(20)).is_some(),
            "Node-RED did not exit on SIGTERM; output:\n{}",
            self.process.output()
        );
    }
}

/// A v5 test client; keep-alive 0 so that a long wait does not end its session.
fn client(broker: &Broker, id: &str) -> RawClient {
    let mut connect = connect_packet(id);
    connect.keep_alive = 0;
    let (c, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.code, 0, "CONNACK for {id}: {ack:?}");
    c
}

/// The first PUBLISH on `topic` for which `pred` holds, within `timeout`; others are skipped.
fn wait_publish(
    c: &mut RawClient,
    topic: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Publish) -> bool,
) -> Publish {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.try_recv(left) {
            Ok(Packet::Publish(p)) if &*p.topic == topic && pred(&p) => return p,
            Ok(Packet::Publish(p)) => seen.push(format!(
                "{} {}",
                p.topic,
                String::from_utf8_lossy(&p.payload)
            )),
            Ok(_) => {}
            Err(e) => {
                panic!("no matching PUBLISH on {topic} within {timeout:?} ({e:?}); seen: {seen:#?}")
            }
        }
    }
}

/// Run a command of the README (`mosquitto_pub`, `mosquitto_rr`, `influx`) to its end; its
/// output. Panics if it fails or takes longer than `STEP`.
fn run(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let mut p = Spawned::start(cmd);
    let status = p
        .wait_exit(STEP)
        .unwrap_or_else(|| panic!("{program} {args:?} still running; output:\n{}", p.output()));
    assert!(
        status.success(),
        "{program} {args:?}: {status}; output:\n{}",
        p.output()
    );
    p.output()
}

/// `mosquitto_pub -q 1 -t TOPIC -m MESSAGE` to the test's broker.
fn mosquitto_pub(broker: &Broker, topic: &str, message: &str) {
    let port = broker.port.to_string();
    run(
        "mosquitto_pub",
        &["-p", &port, "-q", "1", "-t", topic, "-m", message],
    );
}

fn json(p: &Publish) -> Value {
    serde_json::from_slice(&p.payload).unwrap_or_else(|e| {
        panic!(
            "{} payload is not JSON ({e}): {}",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        )
    })
}

/// (room, seq, temperature, humidity), comparable across JSON and InfluxDB rows.
type Reading = (String, i64, String, String);

fn reading(room: &str, v: &Value) -> Reading {
    let num = |k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
    (
        room.to_string(),
        num("seq") as i64,
        format!("{:.1}", num("temperature")),
        format!("{:.1}", num("humidity")),
    )
}

#[test]
fn node_red_example_flows_store_alert_report_health_query_history_and_answer_v5_requests() {
    let started = Instant::now();
    let influx = Influx::start();
    let spool = tempfile::tempdir().expect("temp dir");
    let broker = Broker::with_config(&example_config(&influx, spool.path()));
    let mut obs = client(&broker, "test-observer");
    obs.subscribe("nodered/#", QoS::AtMostOnce);
    obs.subscribe("test/reply/#", QoS::AtMostOnce);

    let port = broker.port.to_string();
    // The README's "watch" command; it is a client too (the $SYS check counts it).
    let mut watch = Command::new("mosquitto_sub");
    watch.args([
        "-p",
        &port,
        "-v",
        "-t",
        "sensors/#",
        "-t",
        "alerts/#",
        "-t",
        "nodered/#",
    ]);
    let watch = Spawned::start(watch);

    let node_red = NodeRed::start(&broker, &influx);
    // Birth message (retained, from the broker node). Node-RED sends the flows' SUBSCRIBEs
    // before it on the same connection, so from here every flow's subscription is in place.
    wait_publish(&mut obs, "nodered/status", NODE_RED_START, |p| {
        &p.payload[..] == b"online"
    });
    let node_red_ready = started.elapsed();

    // 1. Simulator: exactly ROUNDS readings per room, listed on nodered/sim/done.
    mosquitto_pub(
        &broker,
        "nodered/sim/run",
        &format!("{{\"rounds\":{ROUNDS}}}"),
    );
    let done = json(&wait_publish(&mut obs, "nodered/sim/done", STEP, |_| true));
    let mut published: Vec<Reading> = done["published"]
        .as_array()
        .expect("published list")
        .iter()
        .map(|r| reading(r["room"].as_str().expect("room"), r))
        .collect();
    published.sort();
    assert_eq!(published.len(), ROUNDS * ROOMS.len(), "{done}");
    for room in ROOMS {
        let seqs: Vec<i64> = published
            .iter()
            .filter(|r| r.0 == room)
            .map(|r| r.1)
            .collect();
        assert_eq!(seqs, (1..=ROUNDS as i64).collect::<Vec<_>>(), "{room}");
    }
    // The values are the simulator's curves (flows.json, "readings per room").
    for (room, seq, temperature, humidity) in &published {
        let i = ROOMS.iter().position(|r| r == room).expect("room") as f64;
        let s = *seq as f64;
        let round1 = |v: f64| format!("{:.1}", (v * 10.0).round() / 10.0);
        assert_eq!(
            temperature,
            &round1(21.0 + 3.0 * (s * 0.7 + i).sin()),
            "{room} {seq}"
        );
        assert_eq!(
            humidity,
            &round1(45.0 + 8.0 * (s * 0.3 + i).cos()),
            "{room} {seq}"
        );
    }
    // ... and they are exactly the points of measurement env, tagged with their room.
    let expected = published.len() as i64;
    assert!(
        influx.wait_until(SINK_WAIT, || influx.count(
            "mqtt_data",
            "env",
            "temperature"
        ) >= expected),
        "env points: {} of {expected}; measurements {:?}; broker log:\n{}",
        influx.count("mqtt_data", "env", "temperature"),
        influx.measurements("mqtt_data"),
        broker.log_text()
    );
    let (cols, rows) = influx.select(
        "mqtt_data",
        "SELECT room, seq, temperature, humidity, topic FROM env",
    );
    assert_eq!(
        cols,
        ["time", "room", "seq", "temperature", "humidity", "topic"]
    );
    let mut stored: Vec<Reading> = rows
        .iter()
        .map(|r| {
            let room = r[1].as_str().expect("room tag");
            assert_eq!(r[5], format!("sensors/{room}/env"), "topic tag");
            let v = serde_json::json!({"seq": r[2], "temperature": r[3], "humidity": r[4]});
            reading(room, &v)
        })
        .collect();
    stored.sort();
    assert_eq!(stored, published, "every reading stored once, as published");
    let mut tags = influx.tag_keys("mqtt_data", "env");
    tags.sort();
    assert_eq!(tags, ["room", "topic"]);
    assert_eq!(
        influx.measurements("mqtt_data"),
        ["env"],
        "control, alert and result topics are excluded from the sink"
    );
    let influx_port = influx.url().rsplit(':').next().expect("port").to_string();
    let counts = run(
        "influx",
        &[
            "-port",
            &influx_port,
            "-database",
            "mqtt_data",
            "-execute",
            "SELECT count(temperature) FROM env GROUP BY room",
        ],
    );
    for room in ROOMS {
        assert!(counts.contains(&format!("tags: room={room}")), "{counts}");
    }

    // 4. History: the flow queries InfluxDB and publishes what the sink stored, oldest first.
    mosquitto_pub(&broker, "nodered/history/get", r#"{"room":"kitchen"}"#);
    let history = json(&wait_publish(
        &mut obs,
        "nodered/history/kitchen",
        STEP,
        |_| true,
    ));
    let from_history: Vec<Reading> = history["readings"]
        .as_array()
        .unwrap_or_else(|| panic!("readings in {history}"))
        .iter()
        .map(|r| reading("kitchen", r))
        .collect();
    let kitchen: Vec<Reading> = published
        .iter()
        .filter(|r| r.0 == "kitchen")
        .cloned()
        .collect();
    assert_eq!(from_history, kitchen, "{history}");
    assert_eq!(history["count"], ROUNDS);
    // The same as an MQTT 5 request: the answer goes to the response topic, with the
    // request's correlation data.
    let correlation = Bytes::from_static(b"\x00history\xff");
    obs.publish_with(
        "nodered/history/get",
        br#"{"room":"office","limit":2}"#,
        QoS::AtLeastOnce,
        false,
        Properties {
            response_topic: Some("test/reply/history".into()),
            correlation_data: Some(correlation.clone()),
            ..Default::default()
        },
    );
    let answer = wait_publish(&mut obs, "test/reply/history", STEP, |_| true);
    assert_eq!(answer.properties.correlation_data, Some(correlation));
    assert_eq!(
        answer.properties.content_type.as_deref(),
        Some("application/json")
    );
    let seqs: Vec<i64> = json(&answer)["readings"]
        .as_array()
        .expect("readings")
        .iter()
        .map(|r| r["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        [ROUNDS as i64 - 1, ROUNDS as i64],
        "the last two, oldest first"
    );

    // The README's mosquitto_rr command: a v5 request, printing the answer.
    let rr = run(
        "mosquitto_rr",
        &[
            "-p",
            &port,
            "-t",
            "nodered/history/get",
            "-e",
            "test/rr/history",
            "-m",
            r#"{"room":"kitchen","limit":3}"#,
            "-W",
            "15",
        ],
    );
    let rr: Value = serde_json::from_str(rr.trim()).unwrap_or_else(|e| panic!("{e}: {rr}"));
    assert_eq!(rr["count"], 3, "{rr}");
    assert_eq!(rr["readings"][2]["seq"], ROUNDS, "{rr}");

    // 2. Alerts: a reading above ALERT_TEMP_HIGH (28) raises a retained alert; one at or below
    // clears it.
    let alert_topic = "alerts/attic/temperature";
    obs.subscribe(alert_topic, QoS::AtMostOnce);
    mosquitto_pub(
        &broker,
        "sensors/attic/env",
        r#"{"temperature":35.5,"humidity":40}"#,
    );
    let alert = json(&wait_publish(&mut obs, alert_topic, STEP, |p| {
        !p.payload.is_empty()
    }));
    assert_eq!(alert["temperature"], 35.5, "{alert}");
    assert_eq!(alert["threshold"], 28.0, "{alert}");
    let mut late = client(&broker, "test-late-subscriber");
    late.subscribe(alert_topic, QoS::AtMostOnce);
    let retained = wait_publish(&mut late, alert_topic, STEP, |_| true);
    assert!(retained.retain, "the alert is retained");
    assert_eq!(json(&retained), alert);
    late.disconnect();
    mosquitto_pub(
        &broker,
        "sensors/attic/env",
        r#"{"temperature":21,"humidity":40}"#,
    );
    wait_publish(&mut obs, alert_topic, STEP, |p| p.payload.is_empty());
    let mut late = client(&broker, "test-late-subscriber-2");
    late.subscribe(alert_topic, QoS::AtMostOnce);
    // Retained messages are queued with the SUBACK, before the PINGRESP.
    late.ping();
    late.expect_no_publish(Duration::ZERO);
    late.disconnect();

    // 5. MQTT 5 request/response through the broker, both ways round.
    // The test asks Node-RED's service...
    let correlation = Bytes::from_static(&[0xde, 0xad, 0x00, 0x01]);
    obs.publish_with(
        "nodered/rpc/latest",
        br#"{"room":"attic"}"#,
        QoS::AtLeastOnce,
        false,
        Properties {
            response_topic: Some("test/reply/latest".into()),
            correlation_data: Some(correlation.clone()),
            ..Default::default()
        },
    );
    let reply = wait_publish(&mut obs, "test/reply/latest", STEP, |_| true);
    assert_eq!(reply.properties.correlation_data, Some(correlation));
    assert_eq!(
        reply.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(
        reply.properties.user_properties,
        [("served-by".to_string(), "node-red".to_string())]
    );
    let body = json(&reply);
    assert_eq!(body["latest"]["temperature"], 21.0, "{body}");
    let rr = run(
        "mosquitto_rr",
        &[
            "-p",
            &port,
            "-t",
            "nodered/rpc/latest",
            "-e",
            "test/rr/latest",
            "-m",
            r#"{"room":"kitchen"}"#,
            "-W",
            "15",
        ],
    );
    let rr: Value = serde_json::from_str(rr.trim()).unwrap_or_else(|e| panic!("{e}: {rr}"));
    assert_eq!(rr["latest"]["seq"], ROUNDS, "{rr}");
    // ... and Node-RED's requester asks it, matching the answer by correlation data.
    obs.publish("nodered/rpc/ask", r#"{"room":"office"}"#, QoS::AtLeastOnce);
    let roundtrip = json(&wait_publish(
        &mut obs,
        "nodered/rpc/roundtrip",
        STEP,
        |p| {
            serde_json::from_slice::<Value>(&p.payload)
                .is_ok_and(|v| v["answer"]["room"] == "office")
        },
    ));
    assert_eq!(roundtrip["ok"], true, "{roundtrip}");
    assert_eq!(roundtrip["content_type"], "application/json");
    assert_eq!(roundtrip["served_by"], "node-red");
    assert_eq!(roundtrip["answer"]["latest"]["seq"], ROUNDS, "{roundtrip}");

    // 3. Broker health from $SYS: Node-RED, the observer and mosquitto_sub; then 3 more
    // clients; then without them again.
    // The summary is published on every change of one of its figures, so within a $SYS round
    // some figures may still be those of the round before: wait for all of them.
    let at_least = |v: &Value, key: &str| v[key].as_u64().is_some_and(|n| n >= expected as u64);
    let health_with = |obs: &mut RawClient, n: u64| {
        wait_publish(obs, "nodered/health", SYS_WAIT, |p| {
            serde_json::from_slice::<Value>(&p.payload).is_ok_and(|v| {
                v["clients_connected"] == n
                    && at_least(&v, "publish_received")
                    && at_least(&v, "sink_points_written")
                    && v["sink_last_error"] == "none"
            })
        })
    };
    let extra: Vec<RawClient> = (0..3)
        .map(|i| client(&broker, &format!("test-extra-{i}")))
        .collect();
    health_with(&mut obs, 6);
    for c in extra {
        c.disconnect();
    }
    health_with(&mut obs, 3);

    // No reading was published beyond what the simulator listed and the two of the test.
    assert_eq!(
        influx.count("mqtt_data", "env", "temperature"),
        expected + 2
    );

    // Stop Node-RED by PID: its broker node sends the close message (retained).
    node_red.stop();
    wait_publish(&mut obs, "nodered/status", STEP, |p| {
        &p.payload[..] == b"offline"
    });
    let watched = watch.output();
    for line in [
        "nodered/sim/done {",
        "alerts/attic/temperature {",
        "sensors/office/env {",
    ] {
        assert!(
            watched.contains(line),
            "mosquitto_sub saw no {line:?}:\n{watched}"
        );
    }
    eprintln!(
        "node-red ready after {node_red_ready:?}, test done after {:?}",
        started.elapsed()
    );
}

#[test]
fn node_red_mqtt_nodes_pass_the_test_helper_suite_against_mqflux() {
    require_node_modules();
    let broker = Broker::start();
    let mut cmd = Command::new("npx");
    cmd.current_dir(example_dir())
        .args(["--no", "--", "mocha", "test/mqtt_spec.js"])
        .env("MQFLUX_HOST", "127.0.0.1")
        .env("MQFLUX_PORT", broker.port.to_string());
    let mut mocha = Spawned::start(cmd);
    let status = mocha
        .wait_exit(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("mocha still running; output:\n{}", mocha.output()));
    let output = mocha.output();
    assert!(status.success(), "mocha failed:\n{output}");
    assert!(
        output.contains("9 passing") && !output.contains("failing"),
        "{output}"
    );
}
