//! Operations with the InfluxDB sink on: `/health` follows whether InfluxDB takes the writes, and
//! the sink's counters appear in `/metrics` and under `$SYS/broker/sink/`. Uses a real influxd
//! that the test stops and restarts.

use crate::common;
use crate::common::influx;
use crate::common::ops as ops_support;

use common::client::MqttClient;
use common::{eventually, Broker};
use influx::Influx;
use ops_support::{http, metrics_addr, scrape, sink_config_head};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn config(influx_url: &str, spool: &std::path::Path) -> String {
    let head = sink_config_head(influx_url, "ops", spool);
    format!(
        r#"sys_interval = 1
{head}flush_interval_ms = 50
retry_initial_ms = 50
retry_max_ms = 200
timeout_secs = 2
"#
    )
}

/// Wait until `/health` answers `status`; returns its body.
fn wait_health(addr: SocketAddr, status: u16) -> String {
    let mut last = (0, String::new());
    eventually(WAIT, || {
        let (s, _, body) = http(addr, "GET", "/health");
        last = (s, body.clone());
        (s == status).then_some(body)
    })
    .unwrap_or_else(|| panic!("/health never answered {status} within {WAIT:?}; last: {last:?}"))
}

/// Read `$SYS/broker/sink/...` publications until `done` holds for the latest values.
fn wait_sys(
    client: &mut MqttClient,
    values: &mut HashMap<String, String>,
    what: &str,
    done: impl Fn(&HashMap<String, String>) -> bool,
) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done(values) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match client.recv_publish_timeout(left) {
            Some(p) => {
                let topic = p.topic.trim_start_matches("$SYS/broker/sink/").to_string();
                values.insert(topic, String::from_utf8_lossy(&p.payload).into_owned());
            }
            None => panic!("$SYS never showed {what}; values: {values:#?}"),
        }
    }
}

fn num(values: &HashMap<String, String>, key: &str) -> u64 {
    values
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

#[test]
fn health_turns_503_while_influxdb_is_down_and_200_once_it_takes_writes_again() {
    let mut influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&config(&influx.url(), spool.path()));
    let addr = metrics_addr(&broker);
    let mut sys = MqttClient::connect(&broker, "ops-sink-sys");
    sys.subscribe("$SYS/broker/sink/#", 0);
    let mut values = HashMap::new();
    let mut publisher = MqttClient::connect(&broker, "ops-sink-pub");

    // InfluxDB up: a publish is written, health is ok.
    publisher.publish("ops/health/t", 1, false, b"1.5");
    wait_sys(&mut sys, &mut values, "a written point", |v| {
        num(v, "points/written") >= 1
    });
    assert_eq!(values["last_error"], "none");
    assert_eq!(http(addr, "GET", "/health").0, 200);
    let m = scrape(addr);
    assert!(m["mqflux_sink_points_written_total"] >= 1.0);
    assert_eq!(m["mqflux_sink_last_write_ok"], 1.0);

    // InfluxDB down: the next write fails, the point is spooled, health says why.
    influx.stop();
    publisher.publish("ops/health/t", 1, false, b"2.5");
    let body = wait_health(addr, 503);
    assert!(body.contains("InfluxDB sink: last write failed"), "{body}");
    wait_sys(&mut sys, &mut values, "a retried point and an error", |v| {
        num(v, "points/retried") >= 1 && v.get("last_error").is_some_and(|e| e != "none")
    });
    let m = scrape(addr);
    assert_eq!(m["mqflux_sink_last_write_ok"], 0.0);
    assert!(m["mqflux_sink_points_retried_total"] >= 1.0);
    assert!(m["mqflux_sink_points_spooled_total"] >= 1.0);

    // InfluxDB back: the spool is replayed and health recovers.
    influx.restart();
    wait_health(addr, 200);
    wait_sys(&mut sys, &mut values, "the spooled point written", |v| {
        num(v, "points/written") >= 2 && v.get("last_error").map(String::as_str) == Some("none")
    });
    assert_eq!(influx.count("ops", "mqtt", "value"), 2);
}

#[test]
fn health_is_503_when_influxdb_was_never_reachable() {
    // A port nobody listens on.
    let url = format!("http://127.0.0.1:{}", influx::free_port());
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&config(&url, spool.path()));
    let addr = metrics_addr(&broker);
    let mut publisher = MqttClient::connect(&broker, "ops-sink-never");
    publisher.publish("ops/never/t", 0, false, b"7");
    let body = wait_health(addr, 503);
    assert!(body.contains("InfluxDB sink"), "{body}");
    assert!(body.contains("points held in the spool"), "{body}");
}

#[test]
fn health_reports_an_influxdb_unreachable_at_start_up_before_any_publish_and_recovers_alone() {
    let mut influx = Influx::start();
    influx.stop();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&config(&influx.url(), spool.path()));
    let addr = metrics_addr(&broker);
    // Nothing is published: the start-up check alone tells.
    let body = wait_health(addr, 503);
    assert!(
        body.contains("InfluxDB sink: InfluxDB not reachable"),
        "{body}"
    );
    assert_eq!(scrape(addr)["mqflux_sink_last_write_ok"], 0.0);
    // InfluxDB comes up on the same port: the sink notices without a publish.
    influx.restart();
    wait_health(addr, 200);
    assert_eq!(scrape(addr)["mqflux_sink_last_write_ok"], 1.0);
    assert!(
        influx.databases().contains(&"ops".to_string()),
        "database made once reachable"
    );
}

#[test]
fn health_reports_an_unreachable_influxdb_also_when_the_database_is_not_ours_to_create() {
    let url = format!("http://127.0.0.1:{}", influx::free_port());
    let spool = tempfile::tempdir().unwrap();
    let config = config(&url, spool.path()).replace(
        "[sink]\nenabled = true\n",
        "[sink]\nenabled = true\ncreate_database = false\n",
    );
    assert!(config.contains("create_database = false"));
    let broker = Broker::with_config(&config);
    let body = wait_health(metrics_addr(&broker), 503);
    assert!(
        body.contains("InfluxDB sink: InfluxDB not reachable at start-up"),
        "{body}"
    );
}
