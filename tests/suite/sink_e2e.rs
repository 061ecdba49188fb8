//! End to end: publish over MQTT to the real `mqflux` binary with a `[sink]` section, query the
//! real influxd back.

use crate::common;
use crate::common::influx;

use common::client::MqttClient;
use common::Broker;
use influx::Influx;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn sink_config(influx: &Influx, db: &str, spool: &Path, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
bind = "127.0.0.1"

[sink]
enabled = true
url = "{url}"
database = "{db}"
spool_dir = "{spool}"
flush_interval_ms = 50
retry_initial_ms = 20
retry_max_ms = 300
timeout_secs = 5
{extra}

[[sink.rules]]
topic = "sensors/{{device}}/{{measurement}}"
timestamp_field = "ts"
timestamp_unit = "s"
"#,
        url = influx.url(),
        spool = spool.display(),
    )
}

fn as_f64(rows: &[Vec<serde_json::Value>], col: usize) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| r.get(col).and_then(|v| v.as_f64()))
        .collect()
}

#[test]
fn mqtt_publishes_of_every_qos_are_stored_once_with_tags_fields_and_timestamps() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&sink_config(&influx, "e2e", spool.path(), ""));
    let mut c = MqttClient::connect(&broker, "e2e-pub");
    c.publish(
        "sensors/kitchen/climate",
        1,
        false,
        br#"{"temp":21.5,"hum":45,"ts":1700000000}"#,
    );
    c.publish("sensors/kitchen/temperature", 0, false, b"22.25");
    c.publish("sensors/attic/temperature", 2, false, "24.3°C".as_bytes());
    c.publish("home/switch", 1, false, b"on");
    c.publish("$SYS/ignored", 1, false, b"1");
    assert!(
        influx.wait_until(WAIT, || influx.count("e2e", "temperature", "value") == 2
            && influx.count("e2e", "climate", "temp") == 1
            && influx.count("e2e", "mqtt", "value") == 1),
        "points missing; measurements: {:?}",
        influx.measurements("e2e")
    );
    let (cols, rows) = influx.select("e2e", "SELECT * FROM climate");
    assert_eq!(cols, vec!["time", "device", "hum", "temp", "topic"]);
    assert_eq!(
        rows[0][0],
        json!(1_700_000_000_000_000_000i64),
        "timestamp from the payload, in s"
    );
    assert_eq!(
        (rows[0][1].clone(), as_f64(&rows, 2), as_f64(&rows, 3)),
        (json!("kitchen"), vec![45.0], vec![21.5])
    );
    let (cols, rows) = influx.select(
        "e2e",
        "SELECT device, unit, value FROM temperature ORDER BY time",
    );
    assert_eq!(cols, vec!["time", "device", "unit", "value"]);
    assert_eq!(as_f64(&rows, 3), vec![22.25, 24.3]);
    assert_eq!(
        (rows[1][1].clone(), rows[1][2].clone()),
        (json!("attic"), json!("°C"))
    );
    // Receive-time stamps are recent (the broker's clock, in ns).
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let t = rows[0][0].as_i64().unwrap();
    assert!(
        (now_ns - t).abs() < 60_000_000_000,
        "receive time {t} vs now {now_ns}"
    );
    let (_, rows) = influx.select("e2e", "SELECT topic, value FROM mqtt");
    assert_eq!(
        rows.iter()
            .map(|r| (r[1].clone(), r[2].clone()))
            .collect::<Vec<_>>(),
        vec![(json!("home/switch"), json!("on"))]
    );
    let mut ms = influx.measurements("e2e");
    ms.sort();
    assert_eq!(ms, vec!["climate", "mqtt", "temperature"], "$SYS excluded");
}

#[test]
fn mosquitto_pub_qos2_burst_is_stored_exactly_once() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&sink_config(&influx, "burst", spool.path(), ""));
    let lines: String = (0..200).map(|i| format!("{i}\n")).collect();
    let mut child = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "2",
            "-t",
            "sensors/m1/seq",
            "-l",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run mosquitto_pub");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        influx.wait_until(WAIT, || influx.count("burst", "seq", "value") == 200),
        "stored {} of 200",
        influx.count("burst", "seq", "value")
    );
    let (_, rows) = influx.select("burst", "SELECT sum(value) FROM seq");
    assert_eq!(rows[0][1].as_f64(), Some((0..200).sum::<i64>() as f64));
}

/// The broker reads the clock once per socket read: the publishes of one read get its time plus
/// their place in it (ns), so a burst on one topic (one series) keeps every point, in order;
/// equal timestamps would make InfluxDB keep only the last.
#[test]
fn a_burst_read_at_once_on_one_topic_keeps_every_point_in_order() {
    use mqflux::protocol::{self, Packet, ProtocolVersion::V311, QoS};
    use std::io::{Read, Write};
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&sink_config(&influx, "oneread", spool.path(), ""));
    let mut bytes = Vec::new();
    let connect = Packet::Connect(protocol::Connect {
        version: V311,
        clean_start: true,
        keep_alive: 60,
        client_id: "one-read".into(),
        will: None,
        username: None,
        password: None,
        properties: protocol::Properties::default(),
        bridge: false,
    });
    protocol::encode_packet(&connect, V311, &mut bytes);
    const N: i64 = 500;
    for i in 0..N {
        let publish = Packet::Publish(protocol::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "sensors/b1/seq".into(),
            packet_id: 0,
            payload: i.to_string().into(),
            properties: Default::default(),
        });
        protocol::encode_packet(&publish, V311, &mut bytes);
    }
    protocol::encode_packet(&Packet::Disconnect(Default::default()), V311, &mut bytes);
    // One write of about 9 KB: the broker takes it in one or a few reads.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", broker.port)).unwrap();
    stream.write_all(&bytes).unwrap();
    let mut rest = Vec::new();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let _ = stream.read_to_end(&mut rest); // CONNACK, then the broker closes
    assert_eq!(rest.get(..4), Some(&[0x20, 2, 0, 0][..]), "CONNACK");
    assert!(
        influx.wait_until(WAIT, || influx.count("oneread", "seq", "value") == N),
        "stored {} of {N}",
        influx.count("oneread", "seq", "value")
    );
    let (_, rows) = influx.select("oneread", "SELECT value FROM seq ORDER BY time");
    let values: Vec<f64> = as_f64(&rows, 1);
    assert_eq!(values, (0..N).map(|i| i as f64).collect::<Vec<_>>());
}

#[test]
fn sigterm_flushes_buffered_points_before_exit() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    // A batch that would otherwise wait a minute.
    let config = sink_config(&influx, "flush", spool.path(), "").replace(
        "flush_interval_ms = 50",
        "flush_interval_ms = 60000\nidle_flush_ms = 0",
    );
    let mut broker = Broker::with_config(&config);
    let mut c = MqttClient::connect(&broker, "flusher");
    for i in 0..10 {
        c.publish("sensors/d/count", 1, false, i.to_string().as_bytes());
    }
    broker.send_signal(15);
    assert!(
        broker.wait_exit(WAIT).is_some(),
        "broker did not exit on SIGTERM"
    );
    assert_eq!(influx.count("flush", "count", "value"), 10);
}

#[test]
fn broker_restarted_with_a_non_empty_spool_replays_it_into_influxdb() {
    let mut influx = Influx::start();
    influx.stop();
    let spool = tempfile::tempdir().unwrap();
    let config = sink_config(
        &influx,
        "restart",
        spool.path(),
        "shutdown_timeout_secs = 1",
    );
    let mut broker = Broker::with_config(&config);
    let mut c = MqttClient::connect(&broker, "offline-pub");
    for i in 0..100 {
        c.publish("sensors/d/seq", 1, false, i.to_string().as_bytes());
    }
    broker.send_signal(15);
    assert!(
        broker.wait_exit(WAIT).is_some(),
        "broker did not exit on SIGTERM"
    );
    let spooled = std::fs::read_dir(spool.path()).unwrap().count();
    assert!(
        spooled > 0,
        "nothing spooled while InfluxDB was down; log:\n{}",
        broker.log_text()
    );

    influx.restart();
    broker.restart();
    assert!(
        influx.wait_until(WAIT, || influx.count("restart", "seq", "value") == 100),
        "replayed {} of 100; log:\n{}",
        influx.count("restart", "seq", "value"),
        broker.log_text()
    );
    let (_, rows) = influx.select("restart", "SELECT sum(value) FROM seq");
    assert_eq!(rows[0][1].as_f64(), Some((0..100).sum::<i64>() as f64));
    assert!(influx.wait_until(WAIT, || std::fs::read_dir(spool.path())
        .map(|d| d.count())
        .unwrap_or(1)
        == 0));
}
