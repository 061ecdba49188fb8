//! The benchmark tool (`mqflux-bench`) driven end to end: against the real mqflux broker it must
//! count every message exactly once at each QoS and version, and against a mosquitto that is
//! configured to drop (queue of 1) it must report the messages that were acked but never
//! delivered as lost. Runs are bounded by message count, so each takes well under a second.

use crate::common;

use common::Broker;
use serde_json::Value;
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::bench::{n, BENCH};

/// Run the tool with `--json -`; returns its exit code and the JSON record it printed.
fn bench(port: u16, args: &[&str]) -> (i32, Value) {
    common::bench::run(port, args)
}

/// `sent` publishes, each delivered once to each subscriber: `deliveries` in all.
fn assert_exactly_once(v: &Value, sent: u64, deliveries: u64) {
    assert_eq!(n(v, "sent"), sent, "{v}");
    assert_eq!(n(v, "received"), deliveries, "{v}");
    assert_eq!(
        (
            n(v, "lost"),
            n(v, "duplicated"),
            n(v, "reordered"),
            n(v, "missing")
        ),
        (0, 0, 0, 0),
        "{v}"
    );
    assert!(
        v.get("stalled").is_none() && v.get("errors").is_none(),
        "{v}"
    );
}

#[test]
fn fan_in_counts_every_message_exactly_once_at_each_qos_and_version() {
    let broker = Broker::start();
    for (qos, mqtt) in [("0", "3.1.1"), ("1", "3.1.1"), ("1", "5"), ("2", "5")] {
        let (code, v) = bench(
            broker.port,
            &[
                "fan-in",
                "--publishers",
                "3",
                "--qos",
                qos,
                "--mqtt",
                mqtt,
                "--messages",
                "2000",
                "--window",
                "60",
            ],
        );
        assert_exactly_once(&v, 6000, 6000);
        if qos != "0" {
            // Every QoS 1/2 publish got its final ack (PUBACK, or PUBREC/PUBREL/PUBCOMP).
            assert_eq!(n(&v, "acked"), 6000, "{v}");
        }
        assert_eq!(code, 0, "{v}");
    }
}

#[test]
fn fan_out_delivers_each_message_to_every_subscriber() {
    let broker = Broker::start();
    let (code, v) = bench(
        broker.port,
        &[
            "fan-out",
            "--subscribers",
            "5",
            "--qos",
            "1",
            "--messages",
            "1000",
        ],
    );
    assert_eq!(n(&v, "expected"), 5000, "{v}");
    assert_exactly_once(&v, 1000, 5000);
    assert_eq!(code, 0);
}

#[test]
fn latency_run_paces_publishes_and_reports_percentiles() {
    let broker = Broker::start();
    let started = Instant::now();
    let (code, v) = bench(
        broker.port,
        &[
            "latency",
            "--rate",
            "1000",
            "--messages",
            "300",
            "--qos",
            "1",
        ],
    );
    // 300 messages at 1000/s take at least 0.3 s.
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_exactly_once(&v, 300, 300);
    let (p50, p99) = (v["p50_us"].as_f64().unwrap(), v["p99_us"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{v}");
    assert_eq!(code, 0);
}

#[test]
fn connection_scale_reports_broker_memory_and_pings_every_connection() {
    let broker = Broker::start();
    let pid = broker.pid().to_string();
    let (code, v) = bench(
        broker.port,
        &[
            "connections",
            "--count",
            "40",
            "--broker-pid",
            &pid,
            "--settle",
            "1",
        ],
    );
    let c = &v["connections"];
    assert_eq!(
        (n(c, "connected"), n(c, "alive"), n(c, "failed")),
        (40, 40, 0),
        "{v}"
    );
    assert!(c["rss_after_kib"].as_u64().unwrap() > 0, "{v}");
    assert!(c["fds_per_conn"].as_f64().unwrap() >= 1.0, "{v}");
    assert_eq!(code, 0);
}

/// A mosquitto on a free loopback port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(extra_config: &str) -> Mosquitto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra_config}"),
        )
        .expect("write mosquitto.conf");
        let bin = ["/usr/sbin/mosquitto", "mosquitto"]
            .into_iter()
            .find(|b| Command::new(b).arg("-h").output().is_ok())
            .expect("mosquitto is installed (Debian package mosquitto)");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn messages_acked_to_the_publisher_but_never_delivered_are_reported_lost() {
    // One message in flight and one queued per client: mosquitto acks the publishes and drops
    // what does not fit in the subscriber's queue ("Outgoing messages are being dropped").
    let mosquitto = Mosquitto::start("max_inflight_messages 1\nmax_queued_messages 1\n");
    let (code, v) = bench(
        mosquitto.port,
        &[
            "fan-in",
            "--publishers",
            "4",
            "--qos",
            "1",
            "--messages",
            "500",
            "--window",
            "200",
            "--duration",
            "5",
            "--stall-timeout",
            "2",
        ],
    );
    assert_eq!(n(&v, "acked"), n(&v, "sent"), "{v}");
    assert!(n(&v, "lost") > 0, "{v}");
    assert_eq!(n(&v, "lost"), n(&v, "sent") - n(&v, "received"), "{v}");
    assert_eq!(code, 1, "a run with losses exits with 1");
}

#[test]
fn compare_prints_candidate_over_base_ratio_per_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let rec = |label: &str, rate: f64| {
        format!(
            r#"{{"name":"fan-in q0 10->1 v3.1.1","scenario":"fan-in","label":"{label}","delivery_rate":{rate},"goal":{{"RatioAtLeast":4.0}}}}"#
        )
    };
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, rec("mosquitto", 1000.0) + "\n").unwrap();
    std::fs::write(&b, rec("mqflux", 5000.0) + "\n").unwrap();
    let out = Command::new(BENCH)
        .arg("compare")
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("fan-in q0"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("5.00x") && row.contains(">=4x MET"), "{row}");
}

/// A `bridge` run through the broker on `port` (its bridge points at `gate`) to `remote`:
/// 1 s of throughput, then a 3000-message backlog drained; exit code and both records.
fn bridge_bench(port: u16, remote: u16, gate: u16) -> (i32, Vec<Value>) {
    common::bench::run_all(
        port,
        &[
            "bridge",
            "--remote-port",
            &remote.to_string(),
            "--gate-port",
            &gate.to_string(),
            "--duration",
            "1",
            "--backlog",
            "3000",
            "--publishers",
            "2",
            "--window",
            "100",
        ],
    )
}

#[test]
fn bridge_run_measures_a_mosquitto_bridge_and_drains_its_whole_backlog() {
    // mosquitto bridges mqflux-bench/# out to the tool's gate, which relays to a remote mqflux.
    let remote = Broker::start();
    let gate = common::influx::free_port();
    let mosquitto = Mosquitto::start(&format!(
        "max_queued_messages 0\nconnection bench\naddress 127.0.0.1:{gate}\n\
         topic mqflux-bench/# out 1\ncleansession false\ntry_private false\n\
         notifications false\nrestart_timeout 1\n"
    ));
    let (code, records) = bridge_bench(mosquitto.port, remote.port, gate);
    assert_eq!(records.len(), 2, "{records:#?}");
    let (through, drain) = (&records[0], &records[1]);
    assert_eq!(through["scenario"], "bridge");
    assert!(n(through, "sent") > 0, "{through}");
    assert_exactly_once(through, n(through, "sent"), n(through, "sent"));
    assert_eq!(drain["scenario"], "bridge-drain");
    assert_eq!(drain["name"], "bridge drain q1 3000 queued");
    assert_eq!(
        n(drain, "acked"),
        3000,
        "all queued while the remote was cut off: {drain}"
    );
    assert_exactly_once(drain, 3000, 3000);
    assert!(drain["first_delivery_s"].as_f64().is_some(), "{drain}");
    assert!(drain["delivery_rate"].as_f64().unwrap() > 0.0, "{drain}");
    assert_eq!(code, 0);
}

#[test]
fn bridge_run_measures_an_mqflux_bridge_and_drains_its_whole_backlog() {
    // The same run with mqflux bridging (durable queue, sync persistence): nothing the local
    // broker acknowledged while its remote was cut off is lost or doubled.
    let remote = Broker::start();
    let gate = common::influx::free_port();
    let store = tempfile::tempdir().unwrap();
    let local = Broker::with_config(&format!(
        "[persistence]\ndir = {:?}\nmode = \"sync\"\n\n[[bridges]]\nconnection = \"bench\"\n\
         address = [\"127.0.0.1:{gate}\"]\nremote_clientid = \"bench-mqflux\"\n\
         topic = [\"mqflux-bench/# out 1\"]\ntry_private = false\nnotifications = false\n\
         restart_timeout = 1\nmax_inflight = 20\n",
        store.path().to_str().unwrap()
    ));
    let (code, records) = bridge_bench(local.port, remote.port, gate);
    assert_eq!(records.len(), 2, "{records:#?}\n{}", local.log_text());
    let (through, drain) = (&records[0], &records[1]);
    assert!(n(through, "sent") > 0, "{through}");
    assert_exactly_once(through, n(through, "sent"), n(through, "sent"));
    assert_eq!(n(drain, "acked"), 3000, "{drain}");
    assert_exactly_once(drain, 3000, 3000);
    assert_eq!(code, 0);
}

#[test]
fn bench_script_quick_bridge_run_prints_both_bridges_side_by_side() {
    // README: `scripts/bench.sh --quick --only bridge`, here on the debug binaries of this build
    // (the script builds release ones otherwise) and without CPU pinning.
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("300")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench.sh"))
        .args(["--quick", "--only", "bridge", "--no-build", "--out"])
        .arg(out_dir.path())
        .env("MQFLUX_BIN", env!("CARGO_BIN_EXE_mqflux"))
        .env("MQFLUX_BENCH_BIN", BENCH)
        .env("BENCH_NO_PIN", "1")
        .output()
        .expect("run scripts/bench.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench.sh failed:\n{stdout}\n{stderr}");
    let table =
        std::fs::read_to_string(out_dir.path().join("side-by-side.txt")).expect("side-by-side.txt");
    for scenario in ["bridge q1 4->1 v3.1.1", "bridge drain q1 50000 queued"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(scenario))
            .unwrap_or_else(|| panic!("no row {scenario:?} in\n{table}"));
        // Both brokers' checks say ok: nothing lost, duplicated or reordered.
        assert_eq!(row.matches(" ok").count(), 2, "{row}\n{table}");
    }
    for label in ["mosquitto", "mqflux"] {
        let records = std::fs::read_to_string(out_dir.path().join(format!("{label}.jsonl")))
            .expect("results file");
        let drain: Value = records
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON record"))
            .find(|r| r["scenario"] == "bridge-drain")
            .unwrap_or_else(|| panic!("no drain record for {label}: {records}"));
        assert_exactly_once(&drain, 50_000, 50_000);
    }
}
