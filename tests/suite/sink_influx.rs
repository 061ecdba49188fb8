//! The sink against a real influxd (Debian `influxdb` 1.6.7) started by the harness: what is
//! stored (measurement, tags, field types, exact timestamps), escaping, refused points, an
//! InfluxDB outage mid-stream and a restart with a non-empty spool.

use crate::common::influx;

use influx::Influx;
use mqflux::sink::{DropReason, RuleConfig, Sink, SinkConfig, SinkRecord, TimestampUnit};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Query rows with small integral numbers as floats (InfluxDB prints the float 45.0 as `45`);
/// timestamps (large) stay exact integers.
fn norm(rows: Vec<Vec<serde_json::Value>>) -> Vec<Vec<serde_json::Value>> {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| match v.as_i64() {
                    Some(i) if i.abs() < 1 << 50 => json!(i as f64),
                    _ => v,
                })
                .collect()
        })
        .collect()
}

fn config(influx: &Influx, db: &str, spool: &Path) -> SinkConfig {
    let _ = env_logger::builder().is_test(true).try_init();
    SinkConfig {
        enabled: true,
        url: influx.url(),
        database: db.into(),
        spool_dir: spool.to_path_buf(),
        flush_interval_ms: 50,
        retry_initial_ms: 20,
        retry_max_ms: 300,
        timeout_secs: 5,
        ..SinkConfig::default()
    }
}

fn sel(influx: &Influx, db: &str, q: &str) -> (Vec<String>, Vec<Vec<serde_json::Value>>) {
    let (cols, rows) = influx.select(db, q);
    (cols, norm(rows))
}

fn rule(topic: &str) -> RuleConfig {
    RuleConfig {
        topic: topic.into(),
        ..RuleConfig::default()
    }
}

fn record<'a>(topic: &'a str, payload: &'a str, ts: i64) -> SinkRecord<'a> {
    SinkRecord {
        topic,
        payload: payload.as_bytes(),
        received_at_ns: ts,
    }
}

/// 2023-11-14T22:13:20Z in ns: a fixed base so timestamps can be compared exactly.
const T0: i64 = 1_700_000_000_000_000_000;

#[test]
fn database_is_created_and_points_keep_measurement_tags_types_and_exact_timestamps() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "mqtt_data", spool.path());
    let mut sensors = rule("sensors/{device}/{measurement}");
    sensors.timestamp_field = "ts".into();
    sensors.timestamp_unit = TimestampUnit::Ms;
    cfg.rules = vec![sensors];
    let sink = Sink::start(&cfg).unwrap();
    assert!(
        influx.wait_until(WAIT, || influx
            .databases()
            .contains(&"mqtt_data".to_string())),
        "database not created"
    );

    sink.submit(record(
        "sensors/kitchen/climate",
        r#"{"temp":21.5,"hum":{"rel":45},"ok":true,"ts":1700000000123}"#,
        T0,
    ));
    sink.submit(record("sensors/kitchen/temperature", "22", T0 + 1));
    sink.submit(record("sensors/attic/temperature", "24.3°C", T0 + 2));
    sink.submit(record("home/door", "open", T0 + 3));
    sink.submit(record("home/list", "[1, 2]", T0 + 4));
    sink.submit(record("$SYS/broker/uptime", "99", T0 + 5));
    sink.shutdown();

    let db = "mqtt_data";
    let (cols, rows) = sel(&influx, db, "SELECT * FROM climate");
    assert_eq!(
        cols,
        vec!["time", "device", "hum.rel", "ok", "temp", "topic"]
    );
    assert_eq!(
        rows,
        vec![vec![
            json!(1_700_000_000_123_000_000i64),
            json!("kitchen"),
            json!(45.0),
            json!(true),
            json!(21.5),
            json!("sensors/kitchen/climate")
        ]]
    );
    let mut types = influx.field_types(db, "climate");
    types.sort();
    assert_eq!(
        types,
        vec![
            ("hum.rel".into(), "float".into()),
            ("ok".into(), "boolean".into()),
            ("temp".into(), "float".into())
        ]
    );
    assert_eq!(influx.tag_keys(db, "climate"), vec!["device", "topic"]);

    let (cols, rows) = sel(&influx, db, "SELECT * FROM temperature");
    assert_eq!(cols, vec!["time", "device", "topic", "unit", "value"]);
    assert_eq!(
        rows,
        vec![
            vec![
                json!(T0 + 1),
                json!("kitchen"),
                json!("sensors/kitchen/temperature"),
                json!(null),
                json!(22.0)
            ],
            vec![
                json!(T0 + 2),
                json!("attic"),
                json!("sensors/attic/temperature"),
                json!("°C"),
                json!(24.3)
            ],
        ]
    );
    // Topics no rule matches go to the default measurement with the topic as tag.
    let (cols, rows) = sel(&influx, db, "SELECT * FROM mqtt");
    assert_eq!(cols, vec!["time", "topic", "value", "value.0", "value.1"]);
    assert_eq!(
        rows,
        vec![
            vec![
                json!(T0 + 3),
                json!("home/door"),
                json!("open"),
                json!(null),
                json!(null)
            ],
            vec![
                json!(T0 + 4),
                json!("home/list"),
                json!(null),
                json!(1.0),
                json!(2.0)
            ],
        ]
    );
    let types = influx.field_types(db, "mqtt");
    assert!(
        types.contains(&("value".into(), "string".into())),
        "{types:?}"
    );
    // $SYS/# is excluded by default.
    let mut ms = influx.measurements(db);
    ms.sort();
    assert_eq!(ms, vec!["climate", "mqtt", "temperature"]);
}

#[test]
fn escaping_of_spaces_commas_equals_quotes_backslashes_and_unicode_round_trips() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "esc", spool.path());
    cfg.rules = vec![rule("esc/{tag}/{measurement}")];
    let sink = Sink::start(&cfg).unwrap();
    let tag = "a b,c=d \"q\" \\x ü✓";
    let measurement = "m x,y=z ü";
    let topic = format!("esc/{tag}/{measurement}");
    let payload = json!({"f k,=": "say \"hi\" \\ back\\slash\nnew line ✓", "n": 1}).to_string();
    sink.submit(record(&topic, &payload, T0));
    sink.shutdown();

    let (_, rows) = sel(&influx, "esc", "SHOW MEASUREMENTS");
    assert_eq!(rows, vec![vec![json!(measurement)]]);
    let q = format!("SELECT * FROM \"{}\"", measurement.replace('"', "\\\""));
    let (cols, rows) = sel(&influx, "esc", &q);
    assert_eq!(cols, vec!["time", "f k,=", "n", "tag", "topic"]);
    assert_eq!(
        rows,
        vec![vec![
            json!(T0),
            json!("say \"hi\" \\ back\\slash\nnew line ✓"),
            json!(1.0),
            json!(tag),
            json!(topic)
        ]]
    );
}

#[test]
fn partial_write_with_one_bad_point_stores_the_others_once_and_later_points_adapt() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "pw", spool.path());
    cfg.rules = vec![rule("s/{measurement}")];
    cfg.flush_interval_ms = 60_000; // one batch, written at shutdown
    cfg.idle_flush_ms = 0;
    let sink = Sink::start(&cfg).unwrap();
    // The sink has made the database and read its field types (before that, the write below
    // could be learnt at start-up, and the point converted instead of refused).
    assert!(influx.wait_until(WAIT, || sink.stats().prepared));
    // The field becomes a string in the database behind the sink's back.
    // (Same shard as the sink's points: InfluxDB 1.x checks field types per shard.)
    assert_eq!(
        influx
            .write("pw", &format!("clash value=\"text\" {}\n", T0 - 1000))
            .0,
        204
    );
    for i in 0..9 {
        sink.submit(record("s/good", &i.to_string(), T0 + i));
    }
    sink.submit(record("s/clash", "5", T0 + 100));
    let stats = sink.shutdown_with_stats();
    // InfluxDB stored 9 points and refused 1 ("partial write: field type conflict ...
    // dropped=1"). Its answer would not mention a line it could not parse, so the 9 are sent
    // once more (a second request); written twice, each is stored once.
    assert_eq!(
        (
            stats.written,
            stats.dropped(DropReason::Rejected),
            stats.write_requests
        ),
        (9, 1, 2),
        "{stats:?}"
    );
    assert_eq!(influx.count("pw", "good", "value"), 9);
    let (_, rows) = sel(&influx, "pw", "SELECT value FROM clash");
    assert_eq!(rows, vec![vec![json!(T0 - 1000), json!("text")]]);

    // A new sink learns the stored type at start-up: a number for the string field is stored
    // as a string instead of being refused.
    let mut cfg2 = cfg.clone();
    cfg2.flush_interval_ms = 20;
    let sink = Sink::start(&cfg2).unwrap();
    sink.submit(record("s/clash", "6", T0 + 200));
    sink.shutdown();
    let (_, rows) = sel(&influx, "pw", "SELECT value FROM clash");
    assert_eq!(
        rows,
        vec![
            vec![json!(T0 - 1000), json!("text")],
            vec![json!(T0 + 200), json!("6")]
        ]
    );
}

#[test]
fn influxdb_stopped_mid_stream_then_restarted_keeps_every_point_exactly_once() {
    let mut influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "outage", spool.path());
    cfg.batch_size = 100;
    cfg.flush_interval_ms = 20;
    cfg.timeout_secs = 2;
    cfg.rules = vec![rule("o/{measurement}")];
    let sink = Sink::start(&cfg).unwrap();
    let total = 3000i64;
    for i in 0..1000 {
        sink.submit(record("o/seq", &i.to_string(), T0 + i));
    }
    assert!(
        influx.wait_until(WAIT, || influx.count("outage", "seq", "value") >= 200),
        "first points never arrived"
    );
    influx.stop();
    for i in 1000..2000 {
        sink.submit(record("o/seq", &i.to_string(), T0 + i));
    }
    // Wait until the sink has noticed the outage and spooled.
    let deadline = std::time::Instant::now() + WAIT;
    while sink.stats().spooled == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing spooled while InfluxDB was down: {:?}",
            sink.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    influx.restart();
    for i in 2000..total {
        sink.submit(record("o/seq", &i.to_string(), T0 + i));
    }
    assert!(
        influx.wait_until(WAIT, || influx.count("outage", "seq", "value") == total),
        "stored {} of {total}; stats {:?}",
        influx.count("outage", "seq", "value"),
        sink.stats()
    );
    // A batch InfluxDB wrote just as it stopped may have lost its response: the sink cannot
    // tell, so it resends it (same series and timestamps: InfluxDB overwrites, stores it once).
    // Wait until the sink counted that resend too, then check the database holds each once.
    assert!(
        influx.wait_until(WAIT, || sink.stats().written >= total as u64),
        "sink never counted all points written: {:?}",
        sink.stats()
    );
    let stats = sink.stats();
    sink.shutdown();
    assert_eq!(influx.count("outage", "seq", "value"), total, "{stats:?}");
    assert!(stats.retried > 0 && stats.spooled > 0, "{stats:?}");
    assert_eq!(stats.dropped_total(), 0, "{stats:?}");
    // Values and timestamps all as sent.
    let (_, rows) = sel(
        &influx,
        "outage",
        "SELECT sum(value), min(time), max(time) FROM seq",
    );
    assert_eq!(rows[0][1], json!((0..total).sum::<i64>() as f64));
    let (_, first) = sel(&influx, "outage", "SELECT value FROM seq LIMIT 1");
    assert_eq!(first[0][0], json!(T0));
    let (_, last) = sel(&influx, "outage", "SELECT last(value) FROM seq");
    assert_eq!(
        last[0],
        vec![json!(T0 + total - 1), json!((total - 1) as f64)]
    );
}

#[test]
fn spool_left_by_a_stopped_sink_is_replayed_after_restart() {
    let mut influx = Influx::start();
    influx.stop();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "replay", spool.path());
    cfg.rules = vec![rule("r/{measurement}")];
    cfg.batch_size = 50;
    cfg.shutdown_timeout_secs = 1;
    let sink = Sink::start(&cfg).unwrap();
    for i in 0..500 {
        sink.submit(record("r/seq", &i.to_string(), T0 + i));
    }
    sink.shutdown();
    let files = std::fs::read_dir(spool.path()).unwrap().count();
    assert!(files > 0, "nothing in the spool");

    influx.restart();
    let sink = Sink::start(&cfg).unwrap();
    assert!(
        influx.wait_until(WAIT, || influx.count("replay", "seq", "value") == 500),
        "replayed {} of 500: {:?}",
        influx.count("replay", "seq", "value"),
        sink.stats()
    );
    let deadline = std::time::Instant::now() + WAIT;
    while sink.stats().spool_points > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sink.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = sink.stats();
    sink.shutdown();
    assert_eq!((stats.replayed, stats.written), (500, 500), "{stats:?}");
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    let (_, rows) = sel(&influx, "replay", "SELECT sum(value) FROM seq");
    assert_eq!(rows[0][1], json!((0..500).sum::<i64>() as f64));
}

#[test]
fn influx_cli_reads_back_what_the_sink_wrote() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "cli", spool.path());
    cfg.rules = vec![rule("sensors/{device}/{measurement}")];
    let sink = Sink::start(&cfg).unwrap();
    sink.submit(record("sensors/d1/temp", "19.25", T0));
    sink.shutdown();
    let out = std::process::Command::new("influx")
        .args([
            "-host",
            "127.0.0.1",
            "-port",
            &influx.http_port.to_string(),
            "-database",
            "cli",
            "-format",
            "csv",
        ])
        .args([
            "-precision",
            "rfc3339",
            "-execute",
            "SELECT device, value FROM temp",
        ])
        .output()
        .expect("run the influx CLI (Debian influxdb-client)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text.trim(),
        "name,time,device,value\ntemp,2023-11-14T22:13:20Z,d1,19.25"
    );
}

#[test]
fn partial_batch_is_written_when_the_sender_is_idle_not_after_the_flush_interval() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "idle", spool.path());
    cfg.rules = vec![rule("i/{measurement}")];
    cfg.flush_interval_ms = 600_000; // the test would time out long before this
    cfg.idle_flush_ms = 5;
    let sink = Sink::start(&cfg).unwrap();
    for i in 0..3 {
        sink.submit(record("i/trickle", &i.to_string(), T0 + i));
    }
    // Nothing else is queued and the sender has nothing to do: the 3 points go out at once.
    assert!(
        influx.wait_until(WAIT, || sink.stats().written == 3),
        "{:?}",
        sink.stats()
    );
    assert_eq!(influx.count("idle", "trickle", "value"), 3);
    let stats = sink.shutdown_with_stats();
    assert_eq!((stats.written, stats.dropped_total()), (3, 0), "{stats:?}");
}

#[test]
fn batch_refused_as_too_large_is_split_and_fully_stored() {
    // 413 beyond 4 KB: a 200-point batch (~12 KB) must be split until the parts fit.
    let influx = Influx::start_with(influx::InfluxOptions {
        max_body_size: Some(4096),
        ..Default::default()
    });
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "big", spool.path());
    cfg.rules = vec![rule("b/{measurement}")];
    cfg.flush_interval_ms = 60_000; // one batch, written at shutdown
    cfg.idle_flush_ms = 0;
    let sink = Sink::start(&cfg).unwrap();
    for i in 0..200 {
        sink.submit(record("b/split", &i.to_string(), T0 + i));
    }
    let stats = sink.shutdown_with_stats();
    assert_eq!(influx.count("big", "split", "value"), 200);
    assert_eq!(
        (stats.written, stats.dropped_total()),
        (200, 0),
        "{stats:?}"
    );
    assert!(stats.write_requests > 1, "{stats:?}");
}

#[test]
fn username_and_password_are_sent_and_wrong_ones_keep_points_spooled() {
    let influx = Influx::start_with(influx::InfluxOptions {
        auth: true,
        ..Default::default()
    });
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "authdb", spool.path());
    cfg.username = influx::ADMIN_USER.into();
    cfg.password = influx::ADMIN_PASSWORD.into();
    let sink = Sink::start(&cfg).unwrap();
    sink.submit(record("a/b", "1", T0));
    let stats = sink.shutdown_with_stats();
    assert_eq!(stats.written, 1, "{stats:?}");
    assert_eq!(influx.count("authdb", "mqtt", "value"), 1);

    // Wrong password: 401 is retried (logged loudly), never dropped; the point waits in the spool.
    let spool2 = tempfile::tempdir().unwrap();
    let mut bad = config(&influx, "authdb", spool2.path());
    bad.username = influx::ADMIN_USER.into();
    bad.password = "wrong".into();
    bad.shutdown_timeout_secs = 1;
    let sink = Sink::start(&bad).unwrap();
    sink.submit(record("a/b", "2", T0 + 1));
    let deadline = std::time::Instant::now() + WAIT;
    while sink.stats().retried == 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sink.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = sink.shutdown_with_stats();
    assert_eq!(
        (stats.written, stats.dropped_total(), stats.spool_points),
        (0, 0, 1),
        "{stats:?}"
    );
    // With the right password the spooled point gets through.
    let mut good = bad.clone();
    good.password = influx::ADMIN_PASSWORD.into();
    let sink = Sink::start(&good).unwrap();
    assert!(influx.wait_until(WAIT, || influx.count("authdb", "mqtt", "value") == 2));
    sink.shutdown();
}

#[test]
fn gzip_compressed_writes_are_stored() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "gz", spool.path());
    cfg.gzip = true;
    let sink = Sink::start(&cfg).unwrap();
    for i in 0..50 {
        sink.submit(record(
            "z/seq",
            &format!("{{\"v\":{i},\"s\":\"text ✓\"}}"),
            T0 + i,
        ));
    }
    let stats = sink.shutdown_with_stats();
    assert_eq!(stats.written, 50, "{stats:?}");
    assert_eq!(influx.count("gz", "mqtt", "v"), 50);
    let (_, rows) = sel(&influx, "gz", "SELECT s FROM mqtt LIMIT 1");
    assert_eq!(rows[0][1], json!("text ✓"));
}

#[test]
fn full_spool_drops_oldest_batches_with_a_counter() {
    let mut influx = Influx::start();
    influx.stop();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "full", spool.path());
    cfg.spool_max_bytes = 64 * 1024;
    cfg.batch_size = 100;
    cfg.shutdown_timeout_secs = 1;
    let sink = Sink::start(&cfg).unwrap();
    // ~60 bytes per point: 3000 points are ~180 KB, three times the spool.
    for i in 0..3000 {
        sink.submit(record("f/seq", &i.to_string(), T0 + i));
    }
    // Every batch has gone through the spool (while running: at shutdown the limit is ignored
    // rather than losing the last batches).
    let deadline = std::time::Instant::now() + WAIT;
    while sink.stats().spooled < 3000 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sink.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    let stats = sink.shutdown_with_stats();
    let dropped = stats.dropped(DropReason::SpoolFull);
    assert!(dropped > 0, "{stats:?}");
    assert!(stats.spool_bytes <= 64 * 1024, "{stats:?}");
    assert_eq!(
        stats.spool_points + dropped,
        3000,
        "every point is spooled or counted as dropped: {stats:?}"
    );
    // What is left is the newest points, replayed once InfluxDB is back.
    influx.restart();
    let sink = Sink::start(&cfg).unwrap();
    assert!(
        influx.wait_until(WAIT, || influx.count("full", "mqtt", "value")
            == stats.spool_points as i64)
    );
    let (_, rows) = sel(&influx, "full", "SELECT last(value) FROM mqtt");
    assert_eq!(rows[0][1], json!(2999.0));
    sink.shutdown();
}

#[test]
fn full_spool_with_backpressure_blocks_publishers_and_loses_nothing() {
    let mut influx = Influx::start();
    influx.stop();
    let spool = tempfile::tempdir().unwrap();
    let mut cfg = config(&influx, "bp", spool.path());
    cfg.spool_max_bytes = 64 * 1024;
    cfg.batch_size = 100;
    cfg.queue_capacity = 100;
    cfg.spool_full = mqflux::sink::SpoolFull::Backpressure;
    let sink = std::sync::Arc::new(Sink::start(&cfg).unwrap());
    let total = 3000i64;
    let publisher = {
        let sink = sink.clone();
        std::thread::spawn(move || {
            for i in 0..total {
                sink.submit(record("p/seq", &i.to_string(), T0 + i));
            }
        })
    };
    // The publisher gets stuck once spool and queue are full...
    let deadline = std::time::Instant::now() + WAIT;
    while sink.stats().spool_bytes < 56 * 1024 {
        assert!(std::time::Instant::now() < deadline, "{:?}", sink.stats());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !publisher.is_finished(),
        "publisher was not held back: {:?}",
        sink.stats()
    );
    // ...and continues when InfluxDB is back; nothing is dropped.
    influx.restart();
    publisher.join().unwrap();
    assert!(
        influx.wait_until(WAIT, || influx.count("bp", "mqtt", "value") == total),
        "{:?}",
        sink.stats()
    );
    let stats = sink.shutdown_with_stats();
    assert_eq!(
        (stats.written, stats.dropped_total()),
        (total as u64, 0),
        "{stats:?}"
    );
}
