//! The closed-loop message engine shared by fan-in, fan-out, pairs and latency.
//!
//! Threads: one writer per publisher (plus one ack reader per publisher at QoS 1/2) and one reader
//! per subscriber, all on blocking sockets. A publisher may be at most its window of messages
//! ahead of the slowest subscriber it feeds (progress = highest sequence number received + 1), and
//! at QoS 1/2 at most its in-flight cap ahead of its own acks. When it may not send it parks; the
//! subscriber (or ack reader) that makes progress unparks it. So the broker never holds more than
//! `--window` messages per subscriber and the numbers measure the broker, not socket buffers.

use crate::client::{self, Client};
use crate::stats::{now_ns, Histogram, SeqSet, SeqTracker};
use crate::wire::{AckKind, AckTemplate, Incoming, PublishTemplate, Stamp, WireError};
use mqflux::protocol::{ProtocolVersion, QoS};
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// Keep-alive of the load's connections: longer than any run, so no PINGREQ is due, but not 0,
/// which rumqttd refuses ("ZeroKeepAlive").
const KEEP_ALIVE_SECS: u16 = 600;

/// Who publishes where and who receives what.
pub struct Topology {
    /// Topic of each publisher.
    pub topics: Vec<String>,
    /// Each subscriber: its filter and the publishers (indexes into `topics`) it receives from.
    pub subscribers: Vec<(String, Vec<usize>)>,
}

#[derive(Clone, Debug)]
pub struct LoadParams {
    pub addr: SocketAddr,
    /// Where the subscribers connect, when not to `addr`: the far side of a bridge.
    pub sub_addr: Option<SocketAddr>,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub size: usize,
    pub duration: Duration,
    /// Per publisher.
    pub messages: u64,
    /// Messages outstanding per subscriber (split between the publishers feeding it).
    pub window: u64,
    /// Per publisher, messages per second; None = as fast as the closed loop allows.
    pub rate: Option<f64>,
    pub drain_timeout: Duration,
    pub stall_timeout: Duration,
    pub connect_timeout: Duration,
    /// Subscribers ask for persistent sessions (see `client::connect_session`).
    pub persistent_subscribers: bool,
    /// Publishers ignore the subscribers' progress: only their own unacked QoS 1/2 messages
    /// (up to `window` each) hold them back.
    pub open_loop: bool,
    /// Prefix making this run's client ids and topics unique.
    pub run_id: String,
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sent: u64,
    /// QoS 1/2: publishes whose final ack (PUBACK/PUBCOMP) came back.
    pub acked: u64,
    /// Sum over (subscriber, publisher) pairs of what the publisher sent.
    pub expected: u64,
    /// Distinct messages received (duplicates not counted).
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// QoS 1/2: acked to the publisher but never delivered.
    pub lost: u64,
    /// expected - received (at QoS 0 the broker may drop; at QoS 1/2 includes unacked ones).
    pub missing: u64,
    /// Seconds from the first publish to the last delivery.
    pub elapsed: f64,
    /// Seconds the publishers spent publishing.
    pub publish_elapsed: f64,
    pub latency: Histogram,
    /// Set when the run stopped making progress for `stall_timeout`.
    pub stalled: Option<String>,
    pub errors: Vec<String>,
}

struct Shared {
    stop: AtomicBool,
    shutdown: AtomicBool,
    received: AtomicU64,
    last_recv_ns: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, e: String) {
        if !self.shutdown.load(SeqCst) {
            log::warn!("{e}");
            if let Ok(mut v) = self.errors.lock() {
                if v.len() < 20 {
                    v.push(e);
                }
            }
        }
    }
}

struct PubState {
    sent: AtomicU64,
    completed: AtomicU64,
    done: AtomicBool,
    waiting: AtomicBool,
    thread: OnceLock<Thread>,
    /// Highest sequence number + 1 seen by each subscriber this publisher feeds.
    progress: Vec<Arc<AtomicU64>>,
}

impl PubState {
    fn wake(&self) {
        if self.waiting.load(SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
    fn slowest(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.load(SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }
}

struct SubReport {
    trackers: Vec<(usize, SeqTracker)>,
    latency: Histogram,
}

pub fn run(topo: &Topology, p: &LoadParams) -> Outcome {
    let mut out = Outcome::default();
    match run_inner(topo, p, &mut out) {
        Ok(()) => {}
        Err(e) => out.errors.insert(0, e),
    }
    out
}

fn pid_for(seq: u64) -> u16 {
    (seq % 65535) as u16 + 1
}

fn run_inner(topo: &Topology, p: &LoadParams, out: &mut Outcome) -> Result<(), String> {
    let npub = topo.topics.len();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        received: AtomicU64::new(0),
        last_recv_ns: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    });

    // Progress cells: one per (subscriber, publisher) relation.
    let mut pub_progress: Vec<Vec<Arc<AtomicU64>>> = vec![Vec::new(); npub];
    let mut sub_progress: Vec<Vec<(usize, Arc<AtomicU64>)>> = Vec::new();
    let mut pub_window = vec![p.window.max(1); npub];
    for (_, feeds) in &topo.subscribers {
        let mut cells = Vec::new();
        for &pi in feeds {
            let cell = Arc::new(AtomicU64::new(0));
            pub_progress[pi].push(cell.clone());
            cells.push((pi, cell));
            // The subscriber's window is shared by everyone feeding it (closed loop).
            if !p.open_loop {
                pub_window[pi] = pub_window[pi].min((p.window / feeds.len() as u64).max(1));
            }
        }
        sub_progress.push(cells);
    }
    let pubs: Vec<Arc<PubState>> = pub_progress
        .into_iter()
        .map(|progress| {
            Arc::new(PubState {
                sent: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                done: AtomicBool::new(false),
                waiting: AtomicBool::new(false),
                thread: OnceLock::new(),
                progress,
            })
        })
        .collect();

    // Subscribers first, each acknowledged before anyone publishes.
    let mut sockets: Vec<TcpStream> = Vec::new();
    let mut sub_clients = Vec::new();
    for (i, (filter, _)) in topo.subscribers.iter().enumerate() {
        let id = format!("{}-s{i}", p.run_id);
        let mut c = client::connect_session(
            p.sub_addr.unwrap_or(p.addr),
            p.version,
            &id,
            KEEP_ALIVE_SECS,
            256 * 1024,
            p.connect_timeout,
            p.persistent_subscribers,
        )?;
        c.subscribe(filter, p.qos, p.connect_timeout)
            .map_err(|e| format!("{id}: {e}"))?;
        sockets.push(c.stream.try_clone().map_err(|e| e.to_string())?);
        sub_clients.push(c);
    }
    let mut pub_clients = Vec::new();
    for i in 0..npub {
        let id = format!("{}-p{i}", p.run_id);
        let c = client::connect(
            p.addr,
            p.version,
            &id,
            KEEP_ALIVE_SECS,
            64 * 1024,
            p.connect_timeout,
        )?;
        sockets.push(c.stream.try_clone().map_err(|e| e.to_string())?);
        pub_clients.push(c);
    }

    let mut sub_handles: Vec<JoinHandle<SubReport>> = Vec::new();
    for (i, c) in sub_clients.into_iter().enumerate() {
        let cells = std::mem::take(&mut sub_progress[i]);
        let pubs_fed: Vec<Arc<PubState>> = cells.iter().map(|(pi, _)| pubs[*pi].clone()).collect();
        let (shared, npub) = (shared.clone(), npub);
        let h = thread::Builder::new()
            .name(format!("bench-sub-{i}"))
            .spawn(move || subscriber_loop(c, cells, pubs_fed, npub, &shared))
            .map_err(|e| format!("spawn subscriber thread: {e}"))?;
        sub_handles.push(h);
    }

    let t0 = Instant::now();
    let t0_ns = now_ns();
    let mut pub_handles: Vec<JoinHandle<()>> = Vec::new();
    let mut ack_handles: Vec<JoinHandle<SeqSet>> = Vec::new();
    for (i, c) in pub_clients.into_iter().enumerate() {
        let writer = Arc::new(Mutex::new(c.stream.try_clone().map_err(|e| e.to_string())?));
        let inflight_cap = pub_window[i].min(c.receive_maximum as u64).min(65_000);
        if p.qos != QoS::AtMostOnce {
            let (state, shared, writer) = (pubs[i].clone(), shared.clone(), writer.clone());
            let h = thread::Builder::new()
                .name(format!("bench-ack-{i}"))
                .spawn(move || ack_loop(c, writer, &state, &shared))
                .map_err(|e| format!("spawn ack thread: {e}"))?;
            ack_handles.push(h);
        }
        let tpl = PublishTemplate::new(p.version, &topo.topics[i], p.qos, p.size, i as u32);
        let (state, shared, params, window) =
            (pubs[i].clone(), shared.clone(), p.clone(), pub_window[i]);
        let h = thread::Builder::new()
            .name(format!("bench-pub-{i}"))
            .spawn(move || {
                let _ = state.thread.set(thread::current());
                publisher_loop(
                    &tpl,
                    &writer,
                    &state,
                    &shared,
                    &params,
                    window,
                    inflight_cap,
                    t0,
                );
                state.done.store(true, SeqCst);
            })
            .map_err(|e| format!("spawn publisher thread: {e}"))?;
        pub_handles.push(h);
    }

    // Monitor: end of publishing, drain, stalls.
    let mut last_sig = (u64::MAX, u64::MAX);
    let mut last_change = Instant::now();
    let mut pub_end: Option<Instant> = None;
    let drain_idle = p.stall_timeout.min(Duration::from_secs(1));
    loop {
        thread::sleep(Duration::from_millis(5));
        let now = Instant::now();
        let sent: u64 = pubs.iter().map(|s| s.sent.load(SeqCst)).sum();
        let completed: u64 = pubs.iter().map(|s| s.completed.load(SeqCst)).sum();
        let received = shared.received.load(SeqCst);
        let sig = (received, completed + sent);
        if sig != last_sig {
            last_sig = sig;
            last_change = now;
        }
        let all_done = pubs.iter().all(|s| s.done.load(SeqCst));
        if all_done && pub_end.is_none() {
            pub_end = Some(now);
        }
        let acks_in = p.qos == QoS::AtMostOnce || completed == sent;
        let delivered = pubs.iter().all(|s| s.slowest() >= s.sent.load(SeqCst));
        if all_done && acks_in && delivered {
            break;
        }
        let idle = now - last_change;
        if all_done && idle >= drain_idle && (p.qos == QoS::AtMostOnce || acks_in) {
            break; // QoS 0 drops or QoS 1/2 losses: nothing more is coming.
        }
        if idle >= p.stall_timeout {
            out.stalled = Some(format!(
                "no progress for {:.1}s {} publishing: sent {sent}, acked {completed}, received {received}",
                idle.as_secs_f64(),
                if all_done { "after" } else { "while" }
            ));
            break;
        }
        if let Some(end) = pub_end {
            if now - end >= p.drain_timeout {
                out.stalled = Some(format!(
                    "drain timeout ({:.0}s): sent {sent}, acked {completed}, received {received}",
                    p.drain_timeout.as_secs_f64()
                ));
                break;
            }
        }
        if shared.errors.lock().map(|e| !e.is_empty()).unwrap_or(false) && !all_done {
            shared.stop.store(true, SeqCst);
        }
    }
    shared.stop.store(true, SeqCst);
    for s in &pubs {
        if let Some(t) = s.thread.get() {
            t.unpark();
        }
    }
    for h in pub_handles {
        let _ = h.join();
    }
    let pub_end = pub_end.unwrap_or_else(Instant::now);
    shared.shutdown.store(true, SeqCst);
    for s in &mut sockets {
        client::disconnect(s, p.version);
    }
    let acked_sets: Vec<SeqSet> = ack_handles
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect();
    let reports: Vec<SubReport> = sub_handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or(SubReport {
                trackers: Vec::new(),
                latency: Histogram::default(),
            })
        })
        .collect();

    out.sent = pubs.iter().map(|s| s.sent.load(SeqCst)).sum();
    out.acked = pubs.iter().map(|s| s.completed.load(SeqCst)).sum();
    for r in &reports {
        out.latency.merge(&r.latency);
        for (pi, t) in &r.trackers {
            let sent = pubs[*pi].sent.load(SeqCst);
            out.expected += sent;
            out.received += t.unique;
            out.duplicated += t.duplicated;
            out.reordered += t.reordered;
            out.missing += sent.saturating_sub(t.unique);
            if let Some(acked) = acked_sets.get(*pi) {
                out.lost += acked.count_missing_from(&t.seen);
            }
            if t.unique < sent && log::log_enabled!(log::Level::Debug) {
                // Which messages never arrived (RUST_LOG=debug): tells a burst from a trickle.
                let miss: Vec<u64> = (0..sent)
                    .filter(|s| !t.seen.contains(*s))
                    .take(10)
                    .collect();
                log::debug!(
                    "publisher {pi}: sent {sent}, received {}, first missing {miss:?}",
                    t.unique
                );
            }
        }
    }
    let last = shared.last_recv_ns.load(SeqCst);
    out.elapsed = last.saturating_sub(t0_ns) as f64 / 1e9;
    out.publish_elapsed = (pub_end - t0).as_secs_f64();
    out.errors
        .extend(shared.errors.lock().map(|v| v.clone()).unwrap_or_default());
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn publisher_loop(
    tpl: &PublishTemplate,
    writer: &Mutex<TcpStream>,
    state: &PubState,
    shared: &Shared,
    p: &LoadParams,
    window: u64,
    inflight_cap: u64,
    t0: Instant,
) {
    let deadline = t0 + p.duration;
    let max_batch = ((32 * 1024) / tpl.len().max(1)).max(1) as u64;
    let interval = p.rate.map(|r| Duration::from_secs_f64(1.0 / r.max(0.001)));
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut seq: u64 = 0;
    loop {
        if shared.stop.load(Relaxed) || seq >= p.messages || Instant::now() >= deadline {
            return;
        }
        let room = |seq: u64| {
            let mut allowed = if p.open_loop {
                u64::MAX
            } else {
                window.saturating_sub(seq.saturating_sub(state.slowest()))
            };
            if p.qos != QoS::AtMostOnce {
                let inflight = seq - state.completed.load(SeqCst);
                allowed = allowed.min(inflight_cap.saturating_sub(inflight));
            }
            allowed
        };
        let mut allowed = room(seq);
        if allowed == 0 {
            state.waiting.store(true, SeqCst);
            if room(seq) == 0 {
                thread::park_timeout(Duration::from_millis(2));
            }
            state.waiting.store(false, SeqCst);
            continue;
        }
        if let Some(iv) = interval {
            // Fixed rate: message n leaves at t0 + n * interval (late ones leave at once).
            let due = t0 + iv.mul_f64(seq as f64);
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            allowed = 1;
        }
        let n = allowed.min(max_batch).min(p.messages - seq);
        buf.clear();
        let ts = now_ns();
        for s in seq..seq + n {
            tpl.append(&mut buf, pid_for(s), s, ts);
        }
        let res = match writer.lock() {
            Ok(mut w) => w.write_all(&buf),
            Err(_) => return,
        };
        if let Err(e) = res {
            shared.error(format!(
                "publisher {}: write: {e}",
                thread::current().name().unwrap_or("?")
            ));
            return;
        }
        seq += n;
        state.sent.store(seq, SeqCst);
    }
}

/// QoS 1/2 acks towards one publisher: PUBACK, or PUBREC -> PUBREL -> PUBCOMP [MQTT-4.3.3].
/// Returns the set of sequence numbers whose final ack arrived.
fn ack_loop(
    mut c: Client,
    writer: Arc<Mutex<TcpStream>>,
    state: &PubState,
    shared: &Shared,
) -> SeqSet {
    let mut acked = SeqSet::default();
    let mut frontier: u64 = 0; // lowest sequence number not yet acked
    let pubrel = AckTemplate::new(AckKind::PubRel, c.version);
    let mut rels = Vec::new();
    let _ = c.stream.set_read_timeout(Some(Duration::from_millis(100)));
    let name = thread::current().name().unwrap_or("?").to_string();
    loop {
        match c.reader.fill(&mut c.stream) {
            Ok(_) => {}
            Err(WireError::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if shared.shutdown.load(SeqCst) {
                    return acked;
                }
                continue;
            }
            Err(e) => {
                shared.error(format!("{name}: {e}"));
                return acked;
            }
        }
        let mut newly = 0;
        loop {
            let pkt = match c.reader.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    shared.error(format!("{name}: {e}"));
                    return acked;
                }
            };
            let pid = match pkt {
                Incoming::PubAck(pid) | Incoming::PubComp(pid) => pid,
                Incoming::PubRec(pid) => {
                    pubrel.append(&mut rels, pid);
                    continue;
                }
                Incoming::Other { header, .. } if header >> 4 == 14 => {
                    shared.error(format!("{name}: broker sent DISCONNECT"));
                    return acked;
                }
                _ => continue,
            };
            // In-flight sequence numbers span < 65535, so the id maps back to one of them.
            let off = (pid as u64 + 65535 - 1 - frontier % 65535) % 65535;
            if acked.insert(frontier + off) {
                newly += 1;
            }
            while acked.contains(frontier) {
                frontier += 1;
            }
        }
        if !rels.is_empty() {
            let res = writer.lock().map(|mut w| w.write_all(&rels));
            rels.clear();
            if let Ok(Err(e)) = res {
                shared.error(format!("{name}: write PUBREL: {e}"));
                return acked;
            }
        }
        if newly > 0 {
            state.completed.fetch_add(newly, SeqCst);
            state.wake();
        }
    }
}

fn subscriber_loop(
    mut c: Client,
    cells: Vec<(usize, Arc<AtomicU64>)>,
    pubs_fed: Vec<Arc<PubState>>,
    npub: usize,
    shared: &Shared,
) -> SubReport {
    // Publisher index -> slot in `trackers`.
    let mut slot = vec![usize::MAX; npub];
    for (k, (pi, _)) in cells.iter().enumerate() {
        slot[*pi] = k;
    }
    let mut trackers: Vec<SeqTracker> = vec![SeqTracker::default(); cells.len()];
    let mut latency = Histogram::default();
    let puback = AckTemplate::new(AckKind::PubAck, c.version);
    let pubrec = AckTemplate::new(AckKind::PubRec, c.version);
    let pubcomp = AckTemplate::new(AckKind::PubComp, c.version);
    let mut acks = Vec::with_capacity(16 * 1024);
    let _ = c.stream.set_read_timeout(Some(Duration::from_millis(100)));
    let name = thread::current().name().unwrap_or("?").to_string();
    let report = |trackers: Vec<SeqTracker>, latency| SubReport {
        trackers: cells.iter().map(|(pi, _)| *pi).zip(trackers).collect(),
        latency,
    };
    loop {
        match c.reader.fill(&mut c.stream) {
            Ok(_) => {}
            Err(WireError::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                if shared.shutdown.load(SeqCst) {
                    return report(trackers, latency);
                }
                continue;
            }
            Err(e) => {
                shared.error(format!("{name}: {e}"));
                return report(trackers, latency);
            }
        }
        let now = now_ns();
        let mut got = 0u64;
        loop {
            let pkt = match c.reader.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    shared.error(format!("{name}: {e}"));
                    return report(trackers, latency);
                }
            };
            match pkt {
                Incoming::Publish {
                    qos,
                    packet_id,
                    payload,
                } => {
                    match qos {
                        1 => puback.append(&mut acks, packet_id),
                        2 => pubrec.append(&mut acks, packet_id),
                        _ => {}
                    }
                    let Some(stamp) = Stamp::parse(payload) else {
                        shared.error(format!(
                            "{name}: PUBLISH with a {}-byte payload, not ours",
                            payload.len()
                        ));
                        continue;
                    };
                    let Some(&k) = slot
                        .get(stamp.publisher as usize)
                        .filter(|&&k| k != usize::MAX)
                    else {
                        shared.error(format!(
                            "{name}: message from publisher {} it does not follow",
                            stamp.publisher
                        ));
                        continue;
                    };
                    trackers[k].record(stamp.seq);
                    latency.record(now.saturating_sub(stamp.sent_ns));
                    got += 1;
                }
                Incoming::PubRel(pid) => pubcomp.append(&mut acks, pid),
                Incoming::Other { header, .. } if header >> 4 == 14 => {
                    shared.error(format!("{name}: broker sent DISCONNECT"));
                    return report(trackers, latency);
                }
                _ => {}
            }
        }
        if !acks.is_empty() {
            if let Err(e) = c.stream.write_all(&acks) {
                shared.error(format!("{name}: write acks: {e}"));
                return report(trackers, latency);
            }
            acks.clear();
        }
        if got > 0 {
            for (k, (_, cell)) in cells.iter().enumerate() {
                if cell.load(Relaxed) != trackers[k].next {
                    cell.store(trackers[k].next, SeqCst);
                    pubs_fed[k].wake();
                }
            }
            shared.received.fetch_add(got, SeqCst);
            shared.last_recv_ns.fetch_max(now, SeqCst);
        }
    }
}
