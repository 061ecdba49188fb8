//! Connection scale: open M idle MQTT connections, measure the connect rate and the broker's
//! resident memory per connection, then check every connection still answers a PINGREQ.

use crate::client::{self, Client};
use crate::wire::{self, Incoming};
use mqflux::protocol::{Packet, ProtocolVersion};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct ConnOutcome {
    pub requested: usize,
    /// Connections tried before the run ended (less than requested if it gave up).
    pub attempted: usize,
    pub connected: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub connect_secs: f64,
    /// Connections that answered a PINGREQ after all were open.
    pub alive: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Broker threads and open file descriptors before and with all connections open.
    pub threads_before: Option<u64>,
    pub threads_after: Option<u64>,
    pub fds_before: Option<u64>,
    pub fds_after: Option<u64>,
}

impl ConnOutcome {
    pub fn connect_rate(&self) -> f64 {
        self.connected as f64 / self.connect_secs.max(1e-9)
    }
    pub fn rss_per_conn_kib(&self) -> Option<f64> {
        self.per_conn(self.rss_before_kib, self.rss_after_kib)
    }
    pub fn threads_per_conn(&self) -> Option<f64> {
        self.per_conn(self.threads_before, self.threads_after)
    }
    pub fn fds_per_conn(&self) -> Option<f64> {
        self.per_conn(self.fds_before, self.fds_after)
    }
    fn per_conn(&self, before: Option<u64>, after: Option<u64>) -> Option<f64> {
        let (b, a) = (before?, after?);
        (self.connected > 0).then(|| a.saturating_sub(b) as f64 / self.connected as f64)
    }
}

/// A number field of /proc/PID/status (VmRSS in KiB, Threads).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// VmRSS of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS")
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn open_files_limit() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = s.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// What to open and how.
pub struct ConnParams<'a> {
    pub addr: SocketAddr,
    pub version: ProtocolVersion,
    pub count: usize,
    pub threads: usize,
    pub broker_pid: Option<u32>,
    pub run_id: &'a str,
    pub timeout: Duration,
    /// Longest wait for the broker's RSS to stop growing.
    pub settle: Duration,
    /// Keep the connections open this long after measuring (for inspecting the broker).
    pub hold: Duration,
    /// Stop opening connections after this long.
    pub max_time: Duration,
    /// Stop opening connections after this many have failed.
    pub max_failures: usize,
}

pub fn run(p: &ConnParams) -> ConnOutcome {
    let ConnParams {
        addr,
        version,
        count,
        threads,
        broker_pid,
        run_id,
        timeout,
        settle,
        hold,
        max_time,
        max_failures,
    } = *p;
    let mut out = ConnOutcome {
        requested: count,
        ..Default::default()
    };
    out.rss_before_kib = broker_pid.and_then(rss_kib);
    out.threads_before = broker_pid.and_then(|p| status_field(p, "Threads"));
    out.fds_before = broker_pid.and_then(open_fds);
    let next = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let first_error: Mutex<Option<String>> = Mutex::new(None);
    let threads = threads.clamp(1, 64);
    let t0 = Instant::now();
    // Bounded: give up after `max_time`, or once the broker has refused `max_failures`.
    let deadline = t0 + max_time;
    // When the last successful CONNACK arrived: the connect rate ignores time spent failing.
    let last_ok = AtomicU64::new(0);
    let mut clients: Vec<Client> = thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, SeqCst);
                        if i >= count
                            || Instant::now() >= deadline
                            || failed.load(SeqCst) >= max_failures
                        {
                            return mine;
                        }
                        // Keep-alive 0: the broker must not time idle connections out [MQTT-3.1.2-23].
                        match client::connect(
                            addr,
                            version,
                            &format!("{run_id}-c{i}"),
                            0,
                            256,
                            timeout,
                        ) {
                            Ok(c) => {
                                mine.push(c);
                                last_ok.fetch_max(t0.elapsed().as_nanos() as u64, SeqCst);
                            }
                            Err(e) => {
                                failed.fetch_add(1, SeqCst);
                                if let Ok(mut f) = first_error.lock() {
                                    f.get_or_insert(e);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    out.connect_secs = last_ok.load(SeqCst) as f64 / 1e9;
    out.connected = clients.len();
    out.attempted = next.load(SeqCst).min(count);
    out.failed = failed.load(SeqCst);
    out.first_error = first_error.into_inner().unwrap_or(None);

    // Let the broker finish per-connection set-up, then read its RSS once it stops growing.
    if let Some(pid) = broker_pid {
        let end = Instant::now() + settle;
        let mut last = rss_kib(pid);
        while Instant::now() < end {
            thread::sleep(Duration::from_millis(250));
            let now = rss_kib(pid);
            if now == last {
                break;
            }
            last = now;
        }
        out.rss_after_kib = last;
        out.threads_after = status_field(pid, "Threads");
        out.fds_after = open_fds(pid);
    }

    // Every connection must still be served: PINGREQ -> PINGRESP [MQTT-3.12.4-1].
    let mut ping = Vec::new();
    wire::encode(&Packet::PingReq, version, &mut ping);
    let alive = AtomicUsize::new(0);
    let chunk = clients.len().div_ceil(threads).max(1);
    thread::scope(|s| {
        for part in clients.chunks_mut(chunk) {
            let (ping, alive) = (&ping, &alive);
            s.spawn(move || {
                for c in part.iter_mut() {
                    if c.stream.write_all(ping).is_ok() && wait_pingresp(c, timeout) {
                        alive.fetch_add(1, SeqCst);
                    }
                }
            });
        }
    });
    out.alive = alive.load(SeqCst);
    if !hold.is_zero() {
        eprintln!(
            "holding {} connections for {:.0}s",
            clients.len(),
            hold.as_secs_f64()
        );
        thread::sleep(hold);
    }
    for c in &mut clients {
        client::disconnect(&mut c.stream, version);
    }
    out
}

fn wait_pingresp(c: &mut Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match c.reader.next_packet() {
            Ok(Some(Incoming::Other { header, .. })) if header >> 4 == 13 => return true,
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(_) => return false,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || c.stream.set_read_timeout(Some(left)).is_err()
            || c.reader.fill(&mut c.stream).is_err()
        {
            return false;
        }
    }
}
