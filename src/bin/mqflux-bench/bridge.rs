//! `mqflux-bench bridge`: a broker's bridge measured from outside, the same way for any broker.
//!
//! The broker under test (the *local* broker) bridges `mqflux-bench/#` out to `--gate-port`,
//! where this tool runs a TCP relay (the *gate*) to the remote broker at `--remote-port`.
//! Publishers connect to the local broker, the subscriber to the remote one, so every message
//! crosses the bridge. Two phases:
//!
//! 1. throughput: the closed-loop fan-in of `engine.rs` (publishers at most `--window` ahead of
//!    the subscriber), gate open: messages per second through the bridge;
//! 2. backlog drain: the gate is closed (no listener, the relayed connections are cut), so the
//!    remote is unreachable; `--backlog` QoS 1 messages are published to the local broker and
//!    acknowledged there (its bridge queue holds them); then the gate opens. The drain rate is
//!    the backlog over the time from the first to the last of them at the subscriber; the
//!    reconnection before the first (the bridge's retry interval) is reported apart. Lost
//!    (acknowledged, never delivered), duplicated and reordered messages are counted as in
//!    every scenario.
//!
//! The gate is a plain byte relay (two copy threads per connection), so both brokers' bridges
//! see the same remote; it costs a copy per byte, equal for both.

use crate::client;
use crate::engine::{self, LoadParams, Topology};
use crate::report::Record;
use crate::stats::{self, now_ns, SeqTracker};
use crate::wire::{self, AckKind, AckTemplate, Incoming, PublishTemplate, Stamp};
use mqflux::protocol::{ProtocolVersion, QoS};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const KEEP_ALIVE_SECS: u16 = 600;
/// How long the bridge may take to (re)connect and carry a first message across.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct BridgeParams {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub gate: SocketAddr,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub size: usize,
    pub duration: Duration,
    pub window: u64,
    pub publishers: usize,
    pub backlog: u64,
    pub drain_timeout: Duration,
    pub connect_timeout: Duration,
    pub local_pid: Option<u32>,
    pub label: String,
    pub run_id: String,
}

// ---------------------------------------------------------------------------------------------
// The gate: a TCP relay that can be closed (remote unreachable) and opened again
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct GateState {
    /// Relayed sockets (both ends of every connection), cut when the gate closes.
    sockets: Vec<TcpStream>,
    accept_thread: Option<JoinHandle<()>>,
}

pub struct Gate {
    addr: SocketAddr,
    remote: SocketAddr,
    open: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    state: Arc<Mutex<GateState>>,
}

impl Gate {
    pub fn new(addr: SocketAddr, remote: SocketAddr) -> Gate {
        Gate {
            addr,
            remote,
            open: Arc::new(AtomicBool::new(false)),
            accepted: Arc::new(AtomicU64::new(0)),
            state: Arc::default(),
        }
    }

    /// Listen on the gate's address and relay every connection to the remote.
    pub fn open(&self) -> Result<(), String> {
        let listener =
            TcpListener::bind(self.addr).map_err(|e| format!("gate: bind {}: {e}", self.addr))?;
        self.open.store(true, SeqCst);
        let (open, accepted, state, remote) = (
            self.open.clone(),
            self.accepted.clone(),
            self.state.clone(),
            self.remote,
        );
        let handle = thread::Builder::new()
            .name("bench-gate".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if !open.load(SeqCst) {
                        break; // woken by `close`; the listener is dropped here
                    }
                    let Ok(client) = conn else { continue };
                    let Ok(server) = TcpStream::connect(remote) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    accepted.fetch_add(1, SeqCst);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    {
                        let mut st = state.lock().unwrap();
                        for s in [&client, &server] {
                            if let Ok(s) = s.try_clone() {
                                st.sockets.push(s);
                            }
                        }
                    }
                    relay(client, s2);
                    relay(server, c2);
                }
            })
            .map_err(|e| format!("gate: spawn: {e}"))?;
        self.state.lock().unwrap().accept_thread = Some(handle);
        Ok(())
    }

    /// Stop listening and cut every relayed connection: the bridge sees its link drop and
    /// its reconnections refused.
    pub fn close(&self) {
        self.open.store(false, SeqCst);
        let thread = self.state.lock().unwrap().accept_thread.take();
        if let Some(t) = thread {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wake accept
            let _ = t.join();
        }
        for s in self.state.lock().unwrap().sockets.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
    }
}

/// Copy `from` into `to` until either side ends (detached thread).
fn relay(mut from: TcpStream, mut to: TcpStream) {
    let _ = thread::Builder::new()
        .name("bench-gate-copy".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
}

// ---------------------------------------------------------------------------------------------
// The two phases
// ---------------------------------------------------------------------------------------------

/// Run both phases; returns the throughput record and the drain record.
pub fn run(p: &BridgeParams) -> Result<Vec<Record>, String> {
    let gate = Gate::new(p.gate, p.remote);
    gate.open()?;
    let base = format!("mqflux-bench/{}", p.run_id);
    let ready = wait_until_bridged(p, &base)?;
    log::info!(
        "bridge of {} forwards (first message across after {:.1} s, {} connection(s) through the gate)",
        p.label,
        ready.as_secs_f64(),
        gate.accepted()
    );
    let throughput = run_throughput(p, &base)?;
    let drain = run_drain(p, &base, &gate)?;
    Ok(vec![throughput, drain])
}

/// Publish a probe on the local broker every 200 ms until the subscriber on the remote gets
/// one: the bridge is connected and its remote subscription (if any) in place.
fn wait_until_bridged(p: &BridgeParams, base: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let topic = format!("{base}/probe");
    let mut sub = client::connect(
        p.remote,
        p.version,
        &format!("{}-probe-s", p.run_id),
        KEEP_ALIVE_SECS,
        4096,
        p.connect_timeout,
    )?;
    sub.subscribe(&topic, QoS::AtMostOnce, p.connect_timeout)?;
    let mut publisher = client::connect(
        p.local,
        p.version,
        &format!("{}-probe-p", p.run_id),
        KEEP_ALIVE_SECS,
        4096,
        p.connect_timeout,
    )?;
    let template = PublishTemplate::new(p.version, &topic, QoS::AtMostOnce, 20, 0);
    let mut out = Vec::new();
    sub.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    while started.elapsed() < PROBE_TIMEOUT {
        out.clear();
        template.append(&mut out, 0, 0, now_ns());
        publisher
            .stream
            .write_all(&out)
            .map_err(|e| format!("probe publish: {e}"))?;
        match sub.reader.fill(&mut sub.stream) {
            Ok(_) => {
                if let Some(Incoming::Publish { .. }) =
                    sub.reader.next_packet().map_err(|e| e.to_string())?
                {
                    client::disconnect(&mut publisher.stream, p.version);
                    client::disconnect(&mut sub.stream, p.version);
                    return Ok(started.elapsed());
                }
            }
            Err(wire::WireError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("probe subscriber: {e}")),
        }
    }
    Err(format!(
        "no message crossed the bridge of {} within {PROBE_TIMEOUT:?} (is `topic mqflux-bench/# out` \
         bridged to the gate {}?)",
        p.label, p.gate
    ))
}

fn run_throughput(p: &BridgeParams, base: &str) -> Result<Record, String> {
    let topo = Topology {
        topics: (0..p.publishers)
            .map(|i| format!("{base}/through/{i}"))
            .collect(),
        subscribers: vec![(format!("{base}/through/+"), (0..p.publishers).collect())],
    };
    let params = LoadParams {
        addr: p.local,
        sub_addr: Some(p.remote),
        version: p.version,
        qos: p.qos,
        size: p.size,
        duration: p.duration,
        messages: 10_000_000,
        window: p.window,
        rate: None,
        drain_timeout: Duration::from_secs(30),
        stall_timeout: Duration::from_secs(10),
        connect_timeout: p.connect_timeout,
        persistent_subscribers: false,
        open_loop: false,
        run_id: format!("{}-t", p.run_id),
    };
    let cpu = cpu_meter(p.local_pid);
    let o = engine::run(&topo, &params);
    let (tool_cpu_s, broker_cpu_s) = cpu();
    Ok(Record {
        name: format!(
            "bridge q{} {}->1 {}",
            p.qos as u8,
            p.publishers,
            version_name(p.version)
        ),
        scenario: "bridge".into(),
        label: p.label.clone(),
        mqtt: p.version.to_string(),
        qos: p.qos as u8,
        publishers: p.publishers,
        subscribers: 1,
        payload_bytes: p.size.max(wire::PAYLOAD_HEADER),
        window: p.window,
        ..Record::measured(o, tool_cpu_s, broker_cpu_s)
    })
}

/// CPU seconds of this tool and of the broker from now until the returned function is called.
fn cpu_meter(pid: Option<u32>) -> impl FnOnce() -> (Option<f64>, Option<f64>) {
    let before = (
        stats::cpu_secs("self"),
        pid.and_then(|p| stats::cpu_secs(&p.to_string())),
    );
    move || {
        let tool = stats::cpu_secs("self").zip(before.0).map(|(a, b)| a - b);
        let broker = pid
            .and_then(|p| stats::cpu_secs(&p.to_string()))
            .zip(before.1)
            .map(|(a, b)| a - b);
        (tool, broker)
    }
}

fn version_name(v: ProtocolVersion) -> &'static str {
    if v.is_v5() {
        "v5"
    } else {
        "v3.1.1"
    }
}

/// What the drain subscriber saw.
#[derive(Default)]
struct Drained {
    trackers: Vec<SeqTracker>,
    unique: u64,
    first_ns: Option<u64>,
    last_ns: u64,
    error: Option<String>,
}

fn run_drain(p: &BridgeParams, base: &str, gate: &Gate) -> Result<Record, String> {
    let npub = p.publishers.max(1);
    let per_pub = p.backlog.div_ceil(npub as u64);
    let total = per_pub * npub as u64;
    let mut sub = client::connect(
        p.remote,
        p.version,
        &format!("{}-d-s", p.run_id),
        KEEP_ALIVE_SECS,
        1 << 20,
        p.connect_timeout,
    )?;
    sub.subscribe(
        &format!("{base}/drain/+"),
        QoS::AtLeastOnce,
        p.connect_timeout,
    )?;

    gate.close();
    log::info!("gate closed: queueing {total} messages at {}", p.label);
    let cpu = cpu_meter(p.local_pid);
    let queue_started = Instant::now();
    let handles: Vec<JoinHandle<Result<u64, String>>> = (0..npub)
        .map(|i| {
            let topic = format!("{base}/drain/{i}");
            let (local, version, size, window, timeout) =
                (p.local, p.version, p.size, p.window, p.drain_timeout);
            let id = format!("{}-d-p{i}", p.run_id);
            thread::Builder::new()
                .name(format!("bench-drain-p{i}"))
                .spawn(move || {
                    publish_acked(
                        local, version, &id, &topic, i as u32, size, per_pub, window, timeout,
                    )
                })
                .map_err(|e| format!("spawn publisher: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut acked = 0;
    let mut errors = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => acked += n,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("publisher thread panicked".into()),
        }
    }
    let queue_secs = queue_started.elapsed().as_secs_f64();
    log::info!(
        "{acked} of {total} acknowledged by {} in {queue_secs:.1} s; opening the gate",
        p.label
    );

    let opened_ns = now_ns();
    gate.open()?;
    let drained = receive(&mut sub, npub, total, p.drain_timeout, p.version);
    let (tool_cpu_s, broker_cpu_s) = cpu();
    client::disconnect(&mut sub.stream, p.version);
    errors.extend(drained.error.clone());
    let first_ns = drained.first_ns.unwrap_or(drained.last_ns);
    // The drain proper: first to last message at the remote. The reconnection before it
    // (the bridge's retry interval) is reported apart, as `first_delivery_s`.
    let drain_secs = (drained.last_ns.saturating_sub(first_ns)) as f64 / 1e9;
    let (duplicated, reordered) = drained
        .trackers
        .iter()
        .fold((0, 0), |(d, r), t| (d + t.duplicated, r + t.reordered));
    let lost = acked.saturating_sub(drained.unique);
    log::info!(
        "{} drained {} of {total} in {drain_secs:.2} s (the first {:.2} s after the gate opened)",
        p.label,
        drained.unique,
        first_ns.saturating_sub(opened_ns) as f64 / 1e9
    );
    Ok(Record {
        name: format!("bridge drain q1 {total} queued"),
        scenario: "bridge-drain".into(),
        label: p.label.clone(),
        mqtt: p.version.to_string(),
        qos: 1,
        publishers: npub,
        subscribers: 1,
        payload_bytes: p.size.max(wire::PAYLOAD_HEADER),
        window: p.window,
        sent: total,
        acked,
        expected: total,
        received: drained.unique,
        lost,
        duplicated,
        reordered,
        missing: total - drained.unique.min(total),
        elapsed_s: drain_secs,
        // Queueing: how fast the broker acknowledged the backlog with its remote away.
        publish_rate: acked as f64 / queue_secs.max(1e-9),
        // Drain: from the first to the last message at the remote subscriber.
        delivery_rate: drained.unique as f64 / drain_secs.max(1e-9),
        first_delivery_s: Some(first_ns.saturating_sub(opened_ns) as f64 / 1e9),
        tool_cpu_s,
        broker_cpu_s,
        deliveries_per_broker_cpu_s: broker_cpu_s
            .filter(|&c| c > 0.0)
            .map(|c| drained.unique as f64 / c),
        errors,
        rounds: 1,
        ..Default::default()
    })
}

/// Publish `count` QoS 1 messages with at most `window` awaiting PUBACK; returns how many were
/// acknowledged.
#[allow(clippy::too_many_arguments)]
fn publish_acked(
    addr: SocketAddr,
    version: ProtocolVersion,
    id: &str,
    topic: &str,
    publisher: u32,
    size: usize,
    count: u64,
    window: u64,
    timeout: Duration,
) -> Result<u64, String> {
    let mut c = client::connect(addr, version, id, KEEP_ALIVE_SECS, 64 * 1024, timeout)?;
    let window = window.clamp(1, c.receive_maximum as u64).min(65_000);
    let template = PublishTemplate::new(version, topic, QoS::AtLeastOnce, size, publisher);
    c.stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut out = Vec::with_capacity(64 * 1024);
    while acked < count {
        out.clear();
        while sent < count && sent - acked < window && out.len() < 60 * 1024 {
            let packet_id = (sent % 65_000) as u16 + 1;
            template.append(&mut out, packet_id, sent, now_ns());
            sent += 1;
        }
        if !out.is_empty() {
            c.stream
                .write_all(&out)
                .map_err(|e| format!("{id}: publish: {e} ({acked} acknowledged)"))?;
        }
        if sent - acked < window && sent < count {
            // Room for more before waiting: still drain whatever acks are already here.
            c.stream.set_nonblocking(true).map_err(|e| e.to_string())?;
            let r = c.reader.fill(&mut c.stream);
            c.stream.set_nonblocking(false).map_err(|e| e.to_string())?;
            match r {
                Ok(_) => {}
                Err(wire::WireError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(format!("{id}: {e} ({acked} acknowledged)")),
            }
        } else {
            c.reader
                .fill(&mut c.stream)
                .map_err(|e| format!("{id}: waiting for PUBACK: {e} ({acked} acknowledged)"))?;
        }
        while let Some(packet) = c.reader.next_packet().map_err(|e| e.to_string())? {
            match packet {
                Incoming::PubAck(_) => acked += 1,
                other => return Err(format!("{id}: expected PUBACK, got {other:?}")),
            }
        }
    }
    client::disconnect(&mut c.stream, version);
    Ok(acked)
}

/// Receive (and acknowledge) until `total` distinct messages have arrived or `timeout` passes.
fn receive(
    sub: &mut client::Client,
    npub: usize,
    total: u64,
    timeout: Duration,
    version: ProtocolVersion,
) -> Drained {
    let mut d = Drained {
        trackers: vec![SeqTracker::default(); npub],
        ..Default::default()
    };
    let deadline = Instant::now() + timeout;
    let mut acks = Vec::with_capacity(64 * 1024);
    let puback = AckTemplate::new(AckKind::PubAck, version);
    let _ = sub
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)));
    while d.unique < total {
        if Instant::now() >= deadline {
            d.error = Some(format!(
                "drain: {} of {total} received within {timeout:?}",
                d.unique
            ));
            break;
        }
        match sub.reader.fill(&mut sub.stream) {
            Ok(_) => {}
            Err(wire::WireError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => {
                d.error = Some(format!("drain subscriber: {e}"));
                break;
            }
        }
        let now = now_ns();
        acks.clear();
        loop {
            let packet = match sub.reader.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    d.error = Some(format!("drain subscriber: {e}"));
                    return d;
                }
            };
            if let Incoming::Publish {
                qos,
                packet_id,
                payload,
            } = packet
            {
                if qos == 1 {
                    puback.append(&mut acks, packet_id);
                }
                if let Some(stamp) = Stamp::parse(payload) {
                    if let Some(t) = d.trackers.get_mut(stamp.publisher as usize) {
                        let before = t.unique;
                        t.record(stamp.seq);
                        if t.unique > before {
                            d.unique += 1;
                            d.first_ns.get_or_insert(now);
                            d.last_ns = now;
                        }
                    }
                }
            }
        }
        if !acks.is_empty() && sub.stream.write_all(&acks).is_err() {
            d.error = Some("drain subscriber: writing PUBACKs failed".into());
            break;
        }
    }
    d
}
