//! Sink throughput next to influxd's own ceiling, on this machine.
//!
//!     cargo run --release --example bench_sink -- [POINTS] [ROUNDS]
//!
//! Starts its own influxd (the test harness), then per round:
//! - ceiling: POST pre-built line protocol (batches of 5000, one connection, as the sink does)
//!   and time until the last batch is acknowledged;
//! - sink: `Sink::submit` the same number of publishes (topic `sensors/devN/bench`, plain
//!   number payload) and time until `stats().written` reaches it.
//!
//! Each round writes to fresh timestamps of the same 100 series. Prints points/s for both and
//! the sink's share of the ceiling (median of the rounds).

#[path = "../tests/common/influx.rs"]
mod influx;

use bytes::Bytes;
use mqflux::sink::{RuleConfig, Sink, SinkConfig, SinkRecord};
use std::time::{Duration, Instant};

const BATCH: usize = 5000;
const SERIES: usize = 100;

fn ceiling(influx: &influx::Influx, points: usize, base: i64) -> f64 {
    let mut batches = Vec::new();
    let mut cur = String::new();
    for i in 0..points {
        let dev = i % SERIES;
        cur.push_str(&format!(
            "bench,device=dev{dev},topic=sensors/dev{dev}/bench value={} {}\n",
            i % 1000,
            base + i as i64
        ));
        if (i + 1) % BATCH == 0 {
            batches.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/write", influx.url());
    let start = Instant::now();
    for b in &batches {
        let r = agent
            .post(&url)
            .query("db", "bench")
            .query("precision", "ns")
            .send(b.as_bytes())
            .expect("write");
        assert_eq!(r.status().as_u16(), 204);
    }
    points as f64 / start.elapsed().as_secs_f64()
}

fn sink_rate(influx: &influx::Influx, points: usize, base: i64, spool: &std::path::Path) -> f64 {
    let config = SinkConfig {
        enabled: true,
        url: influx.url(),
        database: "bench".into(),
        spool_dir: spool.to_path_buf(),
        rules: vec![RuleConfig {
            topic: "sensors/{device}/{measurement}".into(),
            ..RuleConfig::default()
        }],
        ..SinkConfig::default()
    };
    let sink = Sink::start(&config).expect("start sink");
    let topics: Vec<String> = (0..SERIES)
        .map(|d| format!("sensors/dev{d}/bench"))
        .collect();
    let payloads: Vec<Bytes> = (0..1000).map(|v| Bytes::from(v.to_string())).collect();
    let start = Instant::now();
    for i in 0..points {
        sink.submit(SinkRecord {
            topic: topics[i % SERIES].clone(),
            payload: payloads[i % 1000].clone(),
            received_at_ns: base + i as i64,
        });
    }
    let deadline = start + Duration::from_secs(300);
    while sink.stats().written < points as u64 {
        assert!(
            Instant::now() < deadline,
            "sink did not finish: {:?}",
            sink.stats()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let rate = points as f64 / start.elapsed().as_secs_f64();
    let stats = sink.shutdown_with_stats();
    assert_eq!(stats.dropped_total(), 0, "{stats:?}");
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let points: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let influx = influx::Influx::start();
    influx.create_database("bench");
    let spool = tempfile::tempdir().expect("spool dir");
    // Warm-up: series creation and the first shard are not what is measured.
    ceiling(&influx, 20_000, 1_600_000_000_000_000_000);
    let (mut c, mut s) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let base = 1_700_000_000_000_000_000 + (r as i64) * 2 * points as i64;
        let cr = ceiling(&influx, points, base);
        let sr = sink_rate(&influx, points, base + points as i64, spool.path());
        println!(
            "round {}: influxd ceiling {:>9.0} points/s, sink {:>9.0} points/s ({:.0}%)",
            r + 1,
            cr,
            sr,
            100.0 * sr / cr
        );
        c.push(cr);
        s.push(sr);
    }
    let (cm, sm) = (median(c), median(s));
    println!("median of {rounds} rounds x {points} points: influxd ceiling {cm:.0} points/s, sink {sm:.0} points/s = {:.0}% of the ceiling", 100.0 * sm / cm);
}
