//! Load forecasting against a real broker and a real influxd: `[sink] self_metrics` points
//! read back from InfluxDB, the `[forecast]` thread's `$SYS/broker/forecast/...` topics and its
//! `/health` warning, and the `mqflux forecast` subcommand on InfluxDB data and on the bundled
//! CSV files. The models and the backtest themselves are unit-tested in `src/forecast/`.

use crate::common;
use crate::common::influx;
use crate::common::ops as ops_support;

use common::client::MqttClient;
use common::{eventually, run_to_exit, Broker};
use influx::Influx;
use ops_support::{http, metrics_addr, sink_config_head};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(40);

fn config(influx_url: &str, spool: &std::path::Path, forecast: &str) -> String {
    let head = sink_config_head(influx_url, "selfm", spool);
    format!(
        r#"sys_interval = 1
{head}spool_max_bytes = 65536
flush_interval_ms = 50
self_metrics = true
self_metrics_interval_secs = 1
self_metrics_prefix_depth = 1

{forecast}
"#
    )
}

/// Publish `n` messages on each topic, QoS 1 (so each is in the broker before the next).
fn publish_some(client: &mut MqttClient, topics: &[&str], n: usize) {
    for i in 0..n {
        for t in topics {
            client.publish(t, 1, false, format!("{i}").as_bytes());
        }
    }
}

#[test]
fn self_metrics_are_written_to_influxdb_per_topic_prefix_and_broker_wide() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&config(&influx.url(), spool.path(), ""));
    let mut publisher = MqttClient::connect(&broker, "selfm-pub");
    publish_some(
        &mut publisher,
        &["sensors/a/t", "sensors/b/t", "plant/x"],
        20,
    );

    // Per prefix (depth 1): `sensors` counts both sensors' messages, `plant` its own.
    let q = "SELECT max(\"messages_per_min\"), max(\"bytes_per_min\") FROM \"mqflux_self\" \
             WHERE \"kind\" = 'prefix' GROUP BY \"prefix\"";
    let per_prefix = eventually(WAIT, || {
        let v = influx.query("selfm", q);
        let series = v["results"][0]["series"].as_array()?.clone();
        let found: HashMap<String, (f64, f64)> = series
            .iter()
            .map(|s| {
                let row = &s["values"][0];
                (
                    s["tags"]["prefix"].as_str().unwrap_or_default().to_string(),
                    (
                        row[1].as_f64().unwrap_or(0.0),
                        row[2].as_f64().unwrap_or(0.0),
                    ),
                )
            })
            .collect();
        (found.get("sensors").is_some_and(|v| v.0 > 0.0)
            && found.get("plant").is_some_and(|v| v.0 > 0.0))
        .then_some(found)
    })
    .unwrap_or_else(|| panic!("no per-prefix self metrics in InfluxDB within {WAIT:?}"));
    // 40 `sensors` messages and 20 `plant` ones, within one or two 1 s rounds: the per-minute
    // rates keep that 2:1 ratio in the round that saw them all, and bytes follow the topics.
    let (sensors, plant) = (per_prefix["sensors"], per_prefix["plant"]);
    assert!(sensors.0 > plant.0, "{per_prefix:?}");
    assert!(sensors.1 > 0.0 && plant.1 > 0.0, "{per_prefix:?}");

    // Broker-wide: the connection, messages and the sink's own rate.
    let (columns, rows) = influx.select(
        "selfm",
        "SELECT max(\"connections\"), max(\"messages_per_min\"), max(\"sink_points_per_min\"), \
         max(\"sink_bytes_per_min\") FROM \"mqflux_self\" WHERE \"kind\" = 'broker'",
    );
    assert_eq!(columns.len(), 5, "{columns:?}");
    let row = &rows[0];
    assert!(row[1].as_f64().unwrap() >= 1.0, "connections {row:?}");
    assert!(row[2].as_f64().unwrap() > 0.0, "messages {row:?}");
    assert!(row[3].as_f64().unwrap() > 0.0, "sink points {row:?}");
    assert!(row[4].as_f64().unwrap() > 0.0, "sink bytes {row:?}");
    // Types as documented: connections an integer, rates floats.
    let types: HashMap<String, String> = influx
        .field_types("selfm", "mqflux_self")
        .into_iter()
        .collect();
    assert_eq!(types["connections"], "integer");
    assert_eq!(types["messages_per_min"], "float");
    assert_eq!(types["spool_bytes"], "integer");
}

#[test]
fn forecast_publishes_sys_topics_and_warns_when_the_spool_cannot_ride_out_the_outage() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    // Steps of 1 s, 5 s ahead, a day-long outage: any traffic outgrows the 64 KiB spool.
    let forecast = r#"[forecast]
enabled = true
refit_interval_secs = 2
refit_at_start = true
history_secs = 600
step_secs = 1
horizon_secs = 5
origins = 2
outage_secs = 86400
lstm = false
"#;
    let broker = Broker::with_config(&config(&influx.url(), spool.path(), forecast));
    let addr = metrics_addr(&broker);
    let mut sys = MqttClient::connect(&broker, "forecast-sys");
    sys.subscribe("$SYS/broker/forecast/#", 0);
    let mut publisher = MqttClient::connect(&broker, "forecast-pub");

    let mut values: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while values.get("status").map(String::as_str) != Some("ok") {
        assert!(
            Instant::now() < deadline,
            "the forecast never became ok; $SYS values: {values:#?}\nlog:\n{}",
            broker.log_text()
        );
        publish_some(&mut publisher, &["line/1/temp"], 5);
        while let Some(p) = sys.recv_publish_timeout(Duration::from_millis(200)) {
            let topic = p
                .topic
                .trim_start_matches("$SYS/broker/forecast/")
                .to_string();
            values.insert(topic, String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    // Each series has a winning model, its backtest in words and a JSON forecast.
    for series in ["sink_bytes", "sink_points", "publish_bytes"] {
        assert!(
            !values[&format!("{series}/model")].is_empty(),
            "{values:#?}"
        );
        assert!(
            values[&format!("{series}/backtest")].contains("wins the backtest (MASE"),
            "{values:#?}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&values[&format!("{series}/json")]).unwrap();
        assert_eq!(json["point"].as_array().unwrap().len(), 5, "{json}");
        assert_eq!(json["step_secs"], 1);
    }
    let spool_rec: u64 = values["recommendation/spool_max_bytes"].parse().unwrap();
    assert!(spool_rec > 65536, "{values:#?}");
    for key in ["bridge_queue_max_bytes", "batch_size", "queue_capacity"] {
        let n: u64 = values[&format!("recommendation/{key}")].parse().unwrap();
        assert!(n >= 1, "{key}: {values:#?}");
    }
    let warning = &values["spool_warning"];
    assert!(
        warning.starts_with("sink.spool_max_bytes = 65536 cannot hold the forecast peak"),
        "{warning}"
    );
    // /health: still 200 (a warning, not a failure), with the warning on its own line.
    let (status, _, body) = http(addr, "GET", "/health");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ok\n"), "{body}");
    assert!(
        body.contains("warning: sink.spool_max_bytes = 65536 cannot hold the forecast peak"),
        "{body}"
    );
    broker.wait_for_log(&["forecast: sink.spool_max_bytes = 65536 cannot hold"]);

    // The subcommand reads the same self metrics back (InfluxDB and spool size from the
    // broker's config file) and recommends the same kind of sizes.
    let (exit, out) = run_to_exit(
        &[
            "forecast",
            "--config",
            broker.config_path().to_str().unwrap(),
            "--step-secs",
            "1",
            "--history-secs",
            "600",
            "--horizon-secs",
            "5",
            "--origins",
            "2",
            "--no-lstm",
            "--outage-secs",
            "86400",
        ],
        Duration::from_secs(60),
    );
    assert!(exit.success(), "{out}");
    for needle in [
        "== sink_bytes:",
        "== sink_points:",
        "== publish_bytes:",
        "wins the backtest (MASE",
        "recommendation for a 86400 s outage",
        "sink.spool_max_bytes        = ",
        "warning: sink.spool_max_bytes = 65536 cannot hold",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    }
}

#[test]
fn forecast_subcommand_forecasts_an_influxql_query_with_a_known_answer() {
    let influx = Influx::start();
    influx.create_database("known");
    // A pure seasonal series (period 4 steps of 60 s): seasonal naive is exact, MASE 0.
    let pattern = [10.0, 30.0, 20.0, 50.0];
    let start = 1_699_999_980i64; // a multiple of 60: GROUP BY time(60s) buckets start there
    let lines: String = (0..48)
        .map(|k| {
            format!(
                "load v={} {}\n",
                pattern[k % 4],
                (start + k as i64 * 60) * 1_000_000_000
            )
        })
        .collect();
    let (status, body) = influx.write("known", &lines);
    assert_eq!(status, 204, "{body}");
    let (exit, out) = run_to_exit(
        &[
            "forecast",
            "--url",
            &influx.url(),
            "--database",
            "known",
            "--query",
            "SELECT mean(\"v\") FROM \"load\" WHERE time > 0 GROUP BY time(60s) fill(none)",
            "--seasons",
            "4",
            "--horizon-steps",
            "4",
            "--origins",
            "3",
            "--no-lstm",
        ],
        Duration::from_secs(60),
    );
    assert!(exit.success(), "{out}");
    assert!(
        out.contains("== query1: 48 points, step 60 s (0 filled), horizon 4 steps"),
        "{out}"
    );
    assert!(
        out.contains("snaive(4) wins the backtest (MASE 0.000"),
        "{out}"
    );
    // The next four steps repeat the pattern, from the step after the last point.
    let next = chrono::DateTime::from_timestamp(start + 48 * 60, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    let row = out
        .lines()
        .find(|l| l.starts_with(&next))
        .unwrap_or_else(|| panic!("no forecast row for {next}:\n{out}"));
    assert!(row.contains(" 10.00 "), "{row}");

    // A query that names nothing is a clear error and exit 1, not a panic.
    let (exit, out) = run_to_exit(
        &[
            "forecast",
            "--url",
            &influx.url(),
            "--database",
            "known",
            "--query",
            "SELECT mean(\"v\") FROM \"nothing\" GROUP BY time(60s)",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(exit.code(), Some(1), "{out}");
    assert!(out.contains("the query returned no data"), "{out}");
}

#[test]
fn forecast_help_explains_every_flag() {
    let (exit, out) = run_to_exit(&["forecast", "--help"], Duration::from_secs(30));
    assert!(exit.success(), "{out}");
    for flag in [
        "--config",
        "--url",
        "--database",
        "--query",
        "--backtest-file",
        "--step-secs",
        "--history-secs",
        "--horizon-secs",
        "--horizon-steps",
        "--seasons",
        "--origins",
        "--max-history",
        "--level",
        "--no-lstm",
        "--lstm-epochs",
        "--seed",
        "--lstm-margin",
        "--outage-secs",
        "--no-forecast",
        "--markdown",
    ] {
        // The flag's line, with its explanation after the flag and its value name.
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with('-') && l.contains(&format!("{flag} ")))
            .unwrap_or_else(|| panic!("{flag} not in --help:\n{out}"));
        let after = &line[line.find(flag).unwrap() + flag.len()..];
        let explanation = after
            .trim_start()
            .trim_start_matches(|c: char| c != ' ')
            .trim();
        assert!(
            explanation.split_whitespace().count() >= 3,
            "{flag} has no explanation in --help: {line:?}"
        );
    }
}

#[test]
fn backtest_script_runs_every_bundled_series_and_prints_the_readme_table() {
    // `--quick` (no LSTM, 2 origins) keeps this to seconds; the README's table is the full run.
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new("timeout")
        .args(["180", "bash"])
        .arg(format!("{root}/scripts/forecast-backtest.sh"))
        .arg("--quick")
        .env("MQFLUX", env!("CARGO_BIN_EXE_mqflux"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/forecast-backtest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("| series | model | MASE | coverage (80%) | fit ms |"),
        "{stdout}"
    );
    for series in ["taylor", "seattle-temps", "sf-temps", "mqflux-traffic"] {
        for model in ["snaive(", "ets", "mstl("] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.starts_with(&format!("| {series} | {model}"))),
                "no {model} row for {series}:\n{stdout}"
            );
        }
        assert!(
            stderr.contains(&format!("== {series}: ")),
            "{series} not run:\n{stderr}"
        );
    }
    assert!(
        !stdout.contains("| lstm |"),
        "--quick leaves the LSTM out:\n{stdout}"
    );
    // Every series has a winner, named with its margin over the runner-up.
    assert_eq!(
        stderr.matches(" wins the backtest (MASE ").count(),
        4,
        "{stderr}"
    );
    assert!(stderr.contains("% lower than "), "{stderr}");
}
