//! Sink throughput next to influxd's own ceiling, on this machine.
//!
//!     cargo build --release && cargo run --release --example bench_sink -- [POINTS] [ROUNDS]
//!
//! Starts its own influxd (the test harness), then per round, in an order that rotates from
//! round to round, each on fresh timestamps of the same 100 series
//! (`bench,device=devN,topic=sensors/devN/bench value=V`):
//! - ceiling: POST pre-built line protocol (batches of 5000, one connection, as the sink does)
//!   until the last batch is acknowledged;
//! - sink: `Sink::submit` the publishes (topic `sensors/devN/bench`, plain number payload)
//!   until `stats().written` reaches the count;
//! - mqtt: the release `mqflux` binary with a `[sink]` section; one TCP connection sends the
//!   publishes as pre-encoded QoS 0 PUBLISH packets (one write: the publisher is never the
//!   limit); until the broker's `/metrics` says its sink has had them all accepted by InfluxDB
//!   (polling InfluxDB itself would take its CPU while it is measured). InfluxDB's own count is
//!   checked afterwards, untimed.
//!
//! - q1 off / q1 sync / q2 off / q2 sync: the same through QoS 1 or QoS 2 publishers
//!   (`CONNECTIONS` connections (default 16) with persistent sessions, each keeping `WINDOW`
//!   messages (default 1000) unacknowledged at most), to a broker without persistence ("off") and to one with
//!   `[persistence] mode = "sync"` ("sync": a PUBACK/PUBREC is sent only once the message is
//!   durable for the subscribers and for InfluxDB, see `sink::durable`); timed until every
//!   message is acknowledged (PUBACK / PUBCOMP) and accepted by InfluxDB. Also prints the
//!   acknowledgement latency (PUBLISH written -> PUBACK / PUBCOMP read), p50 and p99.
//!
//! Prints points/s (median of the rounds) and CPU time per point of influxd and of the client
//! side (this process, or the broker process), which shows where the time goes when other
//! work shares the machine's cores. `ONLY=q1` (a comma-separated list of `sink`, `mqtt`,
//! `q1`, `q2`) limits which paths run; the ceiling always does.

#[path = "../tests/common/influx.rs"]
mod influx;

use mqflux::protocol::{self, ProtocolVersion::V311};
use mqflux::sink::{RuleConfig, Sink, SinkConfig, SinkRecord};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 5000;
const SERIES: usize = 100;

/// CPU seconds (user + system) a process has used so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat; here indices 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

struct Run {
    rate: f64,
    influx_us_per_point: f64,
    client_us_per_point: f64,
    /// Acknowledgement latencies in microseconds (QoS 1/2 runs only).
    latencies_us: Vec<u32>,
}

fn measure(influx: &influx::Influx, client_pid: u32, points: usize, f: impl FnOnce()) -> Run {
    let ipid = influx.pid().expect("influxd running");
    let (i0, c0) = (cpu_secs(ipid), cpu_secs(client_pid));
    let start = Instant::now();
    f();
    let secs = start.elapsed().as_secs_f64();
    let (i1, c1) = (cpu_secs(ipid), cpu_secs(client_pid));
    Run {
        rate: points as f64 / secs,
        influx_us_per_point: (i1 - i0) * 1e6 / points as f64,
        client_us_per_point: (c1 - c0) * 1e6 / points as f64,
        latencies_us: Vec::new(),
    }
}

fn ceiling(influx: &influx::Influx, points: usize, base: i64) -> Run {
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
    measure(influx, std::process::id(), points, || {
        for b in &batches {
            let r = agent
                .post(&url)
                .query("db", "bench")
                .query("precision", "ns")
                .send(b.as_bytes())
                .expect("write");
            assert_eq!(r.status().as_u16(), 204);
        }
    })
}

fn sink_config(influx: &influx::Influx, spool: &std::path::Path) -> SinkConfig {
    SinkConfig {
        enabled: true,
        url: influx.url(),
        database: "bench".into(),
        spool_dir: spool.to_path_buf(),
        rules: vec![RuleConfig {
            topic: "sensors/{device}/{measurement}".into(),
            ..RuleConfig::default()
        }],
        ..SinkConfig::default()
    }
}

fn sink_api(influx: &influx::Influx, points: usize, base: i64, spool: &std::path::Path) -> Run {
    let sink = Sink::start(&sink_config(influx, spool)).expect("start sink");
    let topics: Vec<String> = (0..SERIES)
        .map(|d| format!("sensors/dev{d}/bench"))
        .collect();
    let payloads: Vec<String> = (0..1000).map(|v| v.to_string()).collect();
    let run = measure(influx, std::process::id(), points, || {
        for i in 0..points {
            sink.submit(SinkRecord {
                topic: &topics[i % SERIES],
                payload: payloads[i % 1000].as_bytes(),
                received_at_ns: base + i as i64,
            });
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while sink.stats().written < points as u64 {
            assert!(
                Instant::now() < deadline,
                "sink did not finish: {:?}",
                sink.stats()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let stats = sink.shutdown_with_stats();
    assert_eq!(stats.dropped_total(), 0, "{stats:?}");
    run
}

/// A QoS 0 PUBLISH, encoded by the broker's own codec.
fn publish_packet(topic: &str, payload: &[u8], out: &mut Vec<u8>) {
    let qos = protocol::QoS::AtMostOnce;
    let props = protocol::Properties::default();
    protocol::encode_publish(out, V311, topic, payload, qos, false, false, 0, &props);
}

struct BrokerProcess {
    child: std::process::Child,
    port: u16,
    /// The broker's `/metrics` URL: how far its sink has got, without querying InfluxDB.
    metrics: String,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `persistence`: None for a broker without it, or the mode (`"sync"`).
fn start_broker(
    influx: &influx::Influx,
    dir: &std::path::Path,
    persistence: Option<&str>,
) -> Option<BrokerProcess> {
    let exe = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .join("mqflux");
    if !exe.exists() {
        eprintln!(
            "{} not built (cargo build --release): skipping the MQTT measurement",
            exe.display()
        );
        return None;
    }
    let name = persistence.unwrap_or("off");
    let config = dir.join(format!("bench-{name}.toml"));
    let persistence = match persistence {
        Some(mode) => format!(
            "[persistence]\ndir = \"{}\"\nmode = \"{mode}\"\n",
            dir.join(format!("store-{name}")).display()
        ),
        None => String::new(),
    };
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\nbind = \"127.0.0.1\"\nport = 0\n[metrics]\nbind = \"127.0.0.1:0\"\n{persistence}[sink]\nenabled = true\nurl = \"{}\"\ndatabase = \"bench\"\nspool_dir = \"{}\"\n[[sink.rules]]\ntopic = \"sensors/{{device}}/{{measurement}}\"\n",
            influx.url(),
            dir.join(format!("spool-{name}")).display()
        ),
    )
    .ok()?;
    let mut child = Command::new(exe)
        .args(["--config", &config.display().to_string()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let stderr = child.stderr.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains(" ERROR ") || line.contains(" WARN ") {
                eprintln!("broker: {line}");
            }
            let port = |addr: &str| {
                addr.split_whitespace()
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
            };
            if let Some(addr) = line.split("listening on tcp://").nth(1) {
                let _ = tx.send(("mqtt", port(addr)));
            }
            if let Some(addr) = line.split("metrics on http://").nth(1) {
                let _ = tx.send(("metrics", port(addr)));
            }
        }
    });
    let (mut mqtt, mut metrics) = (None, None);
    while mqtt.is_none() || metrics.is_none() {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(("mqtt", p)) if p.is_some() => mqtt = p,
            Ok((_, p)) if p.is_some() => metrics = p,
            _ => {
                eprintln!(
                    "the broker did not start (see its log above): skipping the MQTT measurement"
                );
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    Some(BrokerProcess {
        child,
        port: mqtt?,
        metrics: format!("http://127.0.0.1:{}/metrics", metrics?),
    })
}

/// Points the broker's sink has had accepted by InfluxDB so far (from its `/metrics`).
fn sink_written(agent: &ureq::Agent, metrics: &str) -> u64 {
    let text = agent
        .get(metrics)
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("mqflux_sink_points_written_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("mqflux_sink_points_written_total in /metrics") as u64
}

fn mqtt(influx: &influx::Influx, broker: &BrokerProcess, points: usize, round: usize) -> Run {
    // Timestamps are the broker's receive time: this round's points are told apart by their
    // measurement.
    let measurement = format!("bench{round}");
    let mut stream = TcpStream::connect(("127.0.0.1", broker.port)).expect("connect");
    let mut connect = Vec::new();
    let packet = protocol::Packet::Connect(protocol::Connect {
        version: V311,
        clean_start: true,
        keep_alive: 60,
        client_id: format!("bench-{round}"),
        will: None,
        username: None,
        password: None,
        properties: protocol::Properties::default(),
        bridge: false,
    });
    protocol::encode_packet(&packet, V311, &mut connect);
    stream.write_all(&connect).expect("CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK");
    // Encoded before the clock starts: the publisher costs one write of the whole buffer, so it
    // is never what limits the rate.
    let mut packets = Vec::with_capacity(points * 40);
    for i in 0..points {
        publish_packet(
            &format!("sensors/dev{}/{measurement}", i % SERIES),
            (i % 1000).to_string().as_bytes(),
            &mut packets,
        );
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    // Until the broker's sink has had every point accepted: its own counter, polled from the
    // broker (querying InfluxDB while it is being measured would take its CPU).
    let before = sink_written(&agent, &broker.metrics);
    let run = measure(influx, broker.child.id(), points, || {
        let start = Instant::now();
        stream.write_all(&packets).expect("send publishes");
        let deadline = start + Duration::from_secs(300);
        loop {
            let written = sink_written(&agent, &broker.metrics) - before;
            if written >= points as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker stored {written} of {points} points"
            );
            // Each poll costs the broker a /metrics render (~50 us): poll rarely while the end
            // is far, every millisecond near it (half the time left at the rate so far).
            let rate = written as f64 / start.elapsed().as_secs_f64();
            let left = (points as u64 - written) as f64 / rate.max(1.0) / 2.0;
            std::thread::sleep(Duration::from_secs_f64(left.clamp(0.001, 0.02)));
        }
    });
    // Not timed: InfluxDB has every point, once.
    let (_, rows) = influx.select("bench", &format!("SELECT count(value) FROM {measurement}"));
    let stored = rows.first().and_then(|r| r[1].as_i64());
    assert_eq!(stored, Some(points as i64), "points InfluxDB has");
    run
}

/// Connections of the QoS 1/2 scenarios (env `CONNECTIONS`), and messages each keeps
/// unacknowledged at most (env `WINDOW`).
fn connections() -> usize {
    env_usize("CONNECTIONS", 16)
}

fn window() -> usize {
    env_usize("WINDOW", 1000)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

fn connect(port: u16, client_id: &str, clean_start: bool) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).expect("TCP_NODELAY");
    let mut connect = Vec::new();
    let packet = protocol::Packet::Connect(protocol::Connect {
        version: V311,
        clean_start,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: protocol::Properties::default(),
        bridge: false,
    });
    protocol::encode_packet(&packet, V311, &mut connect);
    stream.write_all(&connect).expect("CONNECT");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack[..2], [0x20, 2], "CONNACK");
    assert_eq!(connack[3], 0, "CONNACK return code");
    stream
}

/// Send `count` QoS 1 or 2 publishes on one connection, at most `WINDOW` unacknowledged; returns
/// the latency of each (PUBLISH written -> PUBACK / PUBCOMP read), in microseconds.
fn publish_windowed(
    mut stream: TcpStream,
    qos: protocol::QoS,
    measurement: &str,
    first: usize,
    count: usize,
    ready: &StartLine,
) -> Vec<u32> {
    let window = window().min(30_000);
    let mut sent_at = vec![None::<Instant>; 65536];
    let mut latencies = Vec::with_capacity(count);
    // Encoded before the clock starts (as in `mqtt`): the publisher's CPU is not what is
    // measured. Ids 1..=65535 in turn: one is reused only long after it was acknowledged.
    let id_of = |k: usize| (k % 65535 + 1) as u16;
    let props = protocol::Properties::default();
    let mut packets = Vec::with_capacity(count * 48);
    let mut ends = Vec::with_capacity(count);
    for k in 0..count {
        let i = first + k;
        protocol::encode_publish(
            &mut packets,
            V311,
            &format!("sensors/dev{}/{measurement}", i % SERIES),
            (i % 1000).to_string().as_bytes(),
            qos,
            false,
            false,
            id_of(k),
            &props,
        );
        ends.push(packets.len());
    }
    ready.wait_start();
    let (mut sent, mut done, mut inflight) = (0usize, 0usize, 0usize);
    let mut inbuf = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    while done < count {
        // As many as the window allows, in one write.
        let take = (window - inflight).min(count - sent);
        if take > 0 {
            let from = if sent == 0 { 0 } else { ends[sent - 1] };
            let now = Instant::now();
            for k in sent..sent + take {
                sent_at[id_of(k) as usize] = Some(now);
            }
            stream
                .write_all(&packets[from..ends[sent + take - 1]])
                .expect("send publishes");
            sent += take;
            inflight += take;
        }
        // What came back: PUBACK (0x40), PUBREC (0x50: answered with PUBREL), PUBCOMP (0x70).
        let n = stream.read(&mut inbuf).expect("read acks");
        assert!(n > 0, "broker closed the connection");
        pending.extend_from_slice(&inbuf[..n]);
        let now = Instant::now();
        let mut replies = Vec::new();
        let mut at = 0;
        while pending.len() - at >= 4 {
            let (kind, id) = (
                pending[at] >> 4,
                u16::from_be_bytes([pending[at + 2], pending[at + 3]]),
            );
            assert_eq!(pending[at + 1], 2, "ack of 2 bytes (MQTT 3.1.1)");
            at += 4;
            match kind {
                4 | 7 => {
                    if let Some(t) = sent_at[id as usize].take() {
                        latencies.push(now.duration_since(t).as_micros() as u32);
                    }
                    done += 1;
                    inflight -= 1;
                }
                5 => replies.extend_from_slice(&[0x62, 2, (id >> 8) as u8, id as u8]),
                k => panic!("unexpected packet type {k} from the broker"),
            }
        }
        pending.drain(..at);
        if !replies.is_empty() {
            stream.write_all(&replies).expect("send PUBREL");
        }
    }
    latencies
}

/// Publisher threads encode their packets, then wait here until all (and the measuring
/// thread) are ready; the clock starts then.
struct StartLine {
    waiting: std::sync::Mutex<usize>,
    all_ready: std::sync::Condvar,
}

impl StartLine {
    fn new(parties: usize) -> StartLine {
        StartLine {
            waiting: std::sync::Mutex::new(parties),
            all_ready: std::sync::Condvar::new(),
        }
    }

    fn wait_start(&self) {
        let mut left = self.waiting.lock().expect("start line");
        *left = left.saturating_sub(1);
        // Wakes the other publishers when this was the last, and `wait_ready` in any case.
        self.all_ready.notify_all();
        while *left > 0 {
            left = self.all_ready.wait(left).expect("start line");
        }
    }

    /// Returns once every party but the caller has arrived.
    fn wait_ready(&self) {
        let mut left = self.waiting.lock().expect("start line");
        while *left > 1 {
            left = self.all_ready.wait(left).expect("start line");
        }
    }
}

/// `points` QoS 1 or 2 publishes over `CONNECTIONS` connections, timed until every one is
/// acknowledged and the broker's sink has had them all accepted by InfluxDB.
fn mqtt_acked(
    influx: &influx::Influx,
    broker: &BrokerProcess,
    points: usize,
    name: &str,
    round: usize,
    qos: protocol::QoS,
) -> Run {
    let measurement = format!("bench_{name}_{round}").replace(' ', "_");
    let streams: Vec<TcpStream> = (0..connections())
        .map(|c| connect(broker.port, &format!("bench-{name}-{round}-{c}"), false))
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let before = sink_written(&agent, &broker.metrics);
    let per = points / connections();
    // One more party than publishers: the measuring thread, which starts the clock.
    let ready = Arc::new(StartLine::new(connections() + 1));
    let threads: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, s)| {
            let (m, ready) = (measurement.clone(), ready.clone());
            std::thread::spawn(move || publish_windowed(s, qos, &m, c * per, per, &ready))
        })
        .collect();
    ready.wait_ready();
    let mut latencies = Vec::new();
    let mut run = measure(influx, broker.child.id(), per * connections(), || {
        ready.wait_start();
        for t in threads {
            latencies.extend(t.join().expect("publisher thread"));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let written = sink_written(&agent, &broker.metrics) - before;
            if written >= (per * connections()) as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "broker stored {written} of {points} points"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let (_, rows) = influx.select("bench", &format!("SELECT count(value) FROM {measurement}"));
    let stored = rows.first().and_then(|r| r[1].as_i64());
    assert_eq!(
        stored,
        Some((per * connections()) as i64),
        "points InfluxDB has"
    );
    run.latencies_us = latencies;
    run
}

fn percentile(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
    v[i] as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians over the rounds. The share of the ceiling is given twice: the median rate over the
/// median ceiling, and the median of each round's rate over the ceiling measured in the same
/// round (less sensitive to load that other work puts on the machine meanwhile).
fn report(name: &str, runs: &[Run], ceilings: &[Run]) {
    let rate = median(runs.iter().map(|r| r.rate).collect());
    let ceiling = median(ceilings.iter().map(|r| r.rate).collect());
    let paired = median(
        runs.iter()
            .zip(ceilings)
            .map(|(r, c)| r.rate / c.rate)
            .collect(),
    );
    let i = median(runs.iter().map(|r| r.influx_us_per_point).collect());
    let c = median(runs.iter().map(|r| r.client_us_per_point).collect());
    // Acknowledgement latency over all rounds' messages.
    let mut lat: Vec<u32> = runs.iter().flat_map(|r| r.latencies_us.clone()).collect();
    let latency = if lat.is_empty() {
        String::new()
    } else {
        format!(
            "  ack latency p50 {:.1} ms, p99 {:.1} ms",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99)
        )
    };
    println!(
        "{name:<8} {rate:>9.0} points/s ({:>3.0}% of ceiling, per round {:>3.0}%)  CPU per point: influxd {i:.2} us, client {c:.2} us{latency}",
        100.0 * rate / ceiling,
        100.0 * paired
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let points: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let influx = influx::Influx::start();
    influx.create_database("bench");
    let dir = tempfile::tempdir().expect("temp dir");
    let only = std::env::var("ONLY").unwrap_or_else(|_| "sink,mqtt,q1,q2".into());
    let wanted = |p: &str| only.split(',').any(|o| o.trim() == p);
    let broker = start_broker(&influx, dir.path(), None);
    let acked = wanted("q1") || wanted("q2");
    let sync_broker = acked
        .then(|| start_broker(&influx, dir.path(), Some("sync")))
        .flatten();
    let mut scenarios: Vec<(&str, protocol::QoS, Option<&BrokerProcess>)> = Vec::new();
    for (tag, qos) in [
        ("q1", protocol::QoS::AtLeastOnce),
        ("q2", protocol::QoS::ExactlyOnce),
    ] {
        if wanted(tag) {
            scenarios.push((
                if tag == "q1" { "q1 off" } else { "q2 off" },
                qos,
                broker.as_ref(),
            ));
            scenarios.push((
                if tag == "q1" { "q1 sync" } else { "q2 sync" },
                qos,
                sync_broker.as_ref(),
            ));
        }
    }
    let mut acked_runs: Vec<Vec<Run>> = scenarios.iter().map(|_| Vec::new()).collect();
    // Warm-up: series creation and the first shard are not what is measured.
    ceiling(&influx, 20_000, 1_600_000_000_000_000_000);
    let (mut c, mut s, mut m) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rounds {
        let base = 1_700_000_000_000_000_000 + (r as i64) * 2 * points as i64;
        // The order rotates from round to round: influxd's background work (cache snapshots,
        // compactions) follows the points written before, so a fixed order would hand it to
        // the same path every round.
        let phases = 3 + scenarios.len();
        for phase in (0..phases).map(|i| (i + r) % phases) {
            match phase {
                0 => c.push(ceiling(&influx, points, base)),
                1 if wanted("sink") => {
                    s.push(sink_api(&influx, points, base + points as i64, dir.path()))
                }
                2 if wanted("mqtt") => {
                    if let Some(b) = &broker {
                        m.push(mqtt(&influx, b, points, r));
                    }
                }
                p if p >= 3 => {
                    let (name, qos, b) = scenarios[p - 3];
                    if let Some(b) = b {
                        acked_runs[p - 3].push(mqtt_acked(&influx, b, points, name, r, qos));
                    }
                }
                _ => {}
            }
        }
        let last = |v: &Vec<Run>| {
            v.last()
                .map(|x| format!("{:.0}", x.rate))
                .unwrap_or("-".into())
        };
        let acked_text: String = scenarios
            .iter()
            .zip(&acked_runs)
            .map(|((name, _, _), runs)| format!(" {name} {}", last(runs)))
            .collect();
        println!(
            "round {}: ceiling {} sink {} mqtt {}{acked_text} points/s",
            r + 1,
            last(&c),
            last(&s),
            last(&m)
        );
    }
    println!("median of {rounds} rounds x {points} points:");
    report("ceiling", &c, &c);
    if !s.is_empty() {
        report("sink", &s, &c);
    }
    if !m.is_empty() {
        report("mqtt", &m, &c);
    }
    for ((name, _, _), runs) in scenarios.iter().zip(&acked_runs) {
        if !runs.is_empty() {
            report(name, runs, &c);
        }
    }
}
