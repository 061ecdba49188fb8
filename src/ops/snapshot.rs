//! The stats snapshot: `Snapshot` reads the broker's counters (`broker::stats::Stats`), its
//! tables and the sink's counters all at once; `LoadTracker` turns them into mosquitto-style
//! load averages. Both the `$SYS` tree and `/metrics` read this, never the counters directly.

use crate::broker::stats::Stats;
use crate::broker::Broker;

/// Every figure the broker reports, read at one moment: the single source for the `$SYS` tree
/// (`sys.rs`) and the Prometheus endpoint (`metrics.rs`), so both always agree.
/// Counters are totals since start; the rest are current values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub uptime_secs: u64,
    /// Clients with a live, CONNECTed network connection.
    pub clients_connected: u64,
    /// Sessions held: connected clients plus persistent sessions whose client is away.
    pub sessions: u64,
    /// Most clients connected at the same time since start.
    pub clients_maximum: u64,
    /// Persistent sessions removed because their expiry interval passed.
    pub clients_expired: u64,
    /// CONNECTs accepted since start.
    pub connections_total: u64,
    /// Sockets closed at accept because `limits.max_connections` was reached.
    pub connections_refused: u64,
    /// MQTT packets of any type.
    pub messages_received: u64,
    pub messages_sent: u64,
    /// Messages held by the broker: retained ones plus those in flight or queued per session.
    pub messages_stored: u64,
    /// PUBLISH packets from clients / to clients.
    pub publish_received: u64,
    pub publish_sent: u64,
    pub dropped_queue_full: u64,
    pub dropped_slow_subscriber: u64,
    /// Retained PUBLISHes not stored because the retained store was full.
    pub retained_refused: u64,
    /// Subscribers disconnected for holding publishers back (`limits.stalled_subscriber_secs`).
    pub stalled_subscribers: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub subscriptions: u64,
    pub retained: u64,
    /// Resident memory (VmRSS) and its peak (VmHWM) in bytes; None where /proc is unavailable.
    pub resident_bytes: Option<u64>,
    pub resident_peak_bytes: Option<u64>,
    /// The InfluxDB sink's counters; None when the sink is disabled.
    pub sink: Option<crate::sink::SinkStats>,
    /// Every bridge's figures, in configuration order (empty without `[[bridges]]`).
    pub bridges: Vec<crate::bridge::stats::BridgeFigures>,
}

impl Snapshot {
    pub fn of(broker: &Broker) -> Snapshot {
        let s = &broker.stats;
        let memory = ProcessMemory::read();
        let connected = Stats::get(&s.clients_connected);
        Snapshot {
            uptime_secs: broker.uptime().as_secs(),
            clients_connected: connected,
            // A clean session is removed just after its client is counted as disconnected, so
            // the two can briefly disagree; never report fewer sessions than connected clients.
            sessions: (broker.session_count() as u64).max(connected),
            clients_maximum: Stats::get(&s.clients_maximum),
            clients_expired: Stats::get(&s.sessions_expired),
            connections_total: Stats::get(&s.connections_total),
            connections_refused: Stats::get(&s.connections_refused),
            messages_received: Stats::get(&s.messages_received),
            messages_sent: Stats::get(&s.messages_sent),
            messages_stored: (broker.router.retained_count() + broker.pending_message_count())
                as u64,
            publish_received: Stats::get(&s.publish_received),
            publish_sent: Stats::get(&s.publish_sent),
            dropped_queue_full: Stats::get(&s.dropped_queue_full),
            dropped_slow_subscriber: Stats::get(&s.dropped_slow_subscriber),
            retained_refused: Stats::get(&s.retained_refused),
            stalled_subscribers: Stats::get(&s.stalled_subscribers),
            bytes_received: Stats::get(&s.bytes_received),
            bytes_sent: Stats::get(&s.bytes_sent),
            subscriptions: broker.router.subscription_count() as u64,
            retained: broker.router.retained_count() as u64,
            resident_bytes: memory.map(|m| m.resident_bytes),
            resident_peak_bytes: memory.map(|m| m.peak_resident_bytes),
            sink: broker.sink.is_enabled().then(|| broker.sink.stats()),
            bridges: bridge_figures(broker),
        }
    }

    /// Clients known to the broker but not connected (mosquitto's clients/disconnected).
    pub fn clients_disconnected(&self) -> u64 {
        self.sessions.saturating_sub(self.clients_connected)
    }

    /// PUBLISH messages dropped for any reason (mosquitto's publish/messages/dropped).
    pub fn publish_dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_slow_subscriber
    }
}

/// The bridges the broker forwards to (`Broker::set_forward`), when they are ours.
pub fn bridge_figures(broker: &Broker) -> Vec<crate::bridge::stats::BridgeFigures> {
    broker
        .forward()
        .and_then(|f| f.as_any().downcast_ref::<crate::bridge::Bridges>())
        .map(|b| b.figures())
        .unwrap_or_default()
}

/// The process's resident memory from /proc/self/status (Linux). mosquitto's heap/current
/// counts bytes it allocated itself; Rust's allocator keeps no such total, so mqflux reports
/// resident memory, which is what an operator sees in `top` and what the OOM killer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessMemory {
    pub resident_bytes: u64,
    pub peak_resident_bytes: u64,
}

impl ProcessMemory {
    pub fn read() -> Option<ProcessMemory> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        ProcessMemory::parse(&status)
    }

    /// Parse the `VmRSS:` and `VmHWM:` lines ("VmRSS: 12345 kB", tab-separated).
    pub fn parse(status: &str) -> Option<ProcessMemory> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let mut words = line[name.len()..].split_whitespace();
            let value: u64 = words.next()?.parse().ok()?;
            match words.next() {
                Some("kB") => Some(value * 1024),
                _ => None,
            }
        };
        Some(ProcessMemory {
            resident_bytes: field("VmRSS:")?,
            peak_resident_bytes: field("VmHWM:")?,
        })
    }
}

/// One exponentially damped moving average of a per-minute rate, as mosquitto computes its
/// `$SYS/broker/load/...` figures (sys_tree.c `calc_load`): at each update the counter's
/// increase over the last `dt` seconds becomes a rate per minute `r`, and
/// `load = r + exp(-dt / window) * (load - r)`. So `1min`/`5min`/`15min` are per-minute rates
/// smoothed over windows of 60, 300 and 900 seconds, like the Unix load average.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    window_secs: f64,
    value: f64,
}

impl LoadAverage {
    pub fn new(window_secs: f64) -> LoadAverage {
        LoadAverage {
            window_secs,
            value: 0.0,
        }
    }

    /// Fold in `increase` events seen over the last `dt_secs` seconds.
    pub fn update(&mut self, increase: u64, dt_secs: f64) {
        if dt_secs <= 0.0 || !dt_secs.is_finite() {
            return; // no time has passed: no rate to fold in
        }
        let per_minute = increase as f64 * 60.0 / dt_secs;
        let decay = (-dt_secs / self.window_secs).exp();
        self.value = per_minute + decay * (self.value - per_minute);
    }

    pub fn value(&self) -> f64 {
        self.value
    }
}

/// The 1, 5 and 15 minute load averages of one counter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loads {
    pub one: LoadAverage,
    pub five: LoadAverage,
    pub fifteen: LoadAverage,
    /// Counter value at the previous update.
    last: u64,
}

impl Loads {
    fn new(start: u64) -> Loads {
        Loads {
            one: LoadAverage::new(60.0),
            five: LoadAverage::new(300.0),
            fifteen: LoadAverage::new(900.0),
            last: start,
        }
    }

    fn update(&mut self, counter: u64, dt_secs: f64) {
        let increase = counter.saturating_sub(self.last);
        self.last = counter;
        for l in [&mut self.one, &mut self.five, &mut self.fifteen] {
            l.update(increase, dt_secs);
        }
    }
}

/// Which counters have load averages, with their `$SYS/broker/load/...` path.
/// `publish/dropped` and `connections` are mosquitto's; `connections` counts accepted CONNECTs.
pub const LOAD_PATHS: [&str; 8] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "connections",
];

fn load_counters(s: &Snapshot) -> [u64; 8] {
    [
        s.messages_received,
        s.messages_sent,
        s.publish_received,
        s.publish_sent,
        s.publish_dropped(),
        s.bytes_received,
        s.bytes_sent,
        s.connections_total,
    ]
}

/// Load averages for every counter in `LOAD_PATHS`, updated from successive snapshots.
#[derive(Debug, Clone)]
pub struct LoadTracker {
    loads: [Loads; 8],
}

impl LoadTracker {
    /// Start from `first`: its counters are the baseline, every average starts at 0.
    pub fn new(first: &Snapshot) -> LoadTracker {
        LoadTracker {
            loads: load_counters(first).map(Loads::new),
        }
    }

    /// Fold in the counters of `now`, taken `dt_secs` after the previous snapshot.
    pub fn update(&mut self, now: &Snapshot, dt_secs: f64) {
        for (loads, counter) in self.loads.iter_mut().zip(load_counters(now)) {
            loads.update(counter, dt_secs);
        }
    }

    /// (path, loads) pairs in `LOAD_PATHS` order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Loads)> {
        LOAD_PATHS.iter().copied().zip(self.loads.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn load_average_first_step_matches_mosquitto_formula() {
        // 100 messages in 10 s = 600/min; from 0: 600 + e^(-10/60) * (0 - 600).
        let mut l = LoadAverage::new(60.0);
        l.update(100, 10.0);
        assert!(close(l.value(), 600.0 * (1.0 - (-10.0f64 / 60.0).exp())));
    }

    #[test]
    fn load_average_converges_to_a_steady_rate_per_minute() {
        let mut l = LoadAverage::new(60.0);
        for _ in 0..200 {
            l.update(50, 10.0); // 5 per second = 300 per minute
        }
        assert!((l.value() - 300.0).abs() < 0.01, "{}", l.value());
    }

    #[test]
    fn load_average_decays_towards_zero_when_traffic_stops() {
        let mut l = LoadAverage::new(60.0);
        for _ in 0..100 {
            l.update(60, 10.0);
        }
        let busy = l.value();
        l.update(0, 60.0); // one window later: down by a factor e
        assert!(
            close(l.value(), busy / std::f64::consts::E),
            "{}",
            l.value()
        );
    }

    #[test]
    fn longer_windows_react_more_slowly() {
        let mut t = LoadTracker::new(&Snapshot::default());
        let s = Snapshot {
            messages_received: 120,
            ..Default::default()
        };
        t.update(&s, 10.0);
        let (path, loads) = t.iter().next().unwrap();
        assert_eq!(path, "messages/received");
        assert!(loads.one.value() > loads.five.value());
        assert!(loads.five.value() > loads.fifteen.value());
        assert!(loads.fifteen.value() > 0.0);
    }

    #[test]
    fn load_average_does_not_depend_on_how_time_is_sliced() {
        // A steady rate folded in as one 10 s step or two 5 s steps gives the same value.
        let (mut a, mut b) = (LoadAverage::new(300.0), LoadAverage::new(300.0));
        a.update(20, 10.0);
        b.update(10, 5.0);
        b.update(10, 5.0);
        assert!(
            close(a.value(), b.value()),
            "{} vs {}",
            a.value(),
            b.value()
        );
    }

    #[test]
    fn zero_elapsed_time_leaves_the_average_unchanged() {
        let mut l = LoadAverage::new(60.0);
        l.update(10, 0.0);
        assert_eq!(l.value(), 0.0);
    }

    #[test]
    fn tracker_uses_counter_increases_not_totals() {
        let start = Snapshot {
            bytes_sent: 1_000_000,
            ..Default::default()
        };
        let mut t = LoadTracker::new(&start);
        t.update(&start, 10.0); // no increase since the baseline
        let bytes_sent = t.iter().find(|(p, _)| *p == "bytes/sent").unwrap().1;
        assert_eq!(bytes_sent.one.value(), 0.0);
    }

    #[test]
    fn process_memory_parses_proc_status_in_bytes() {
        let status = "Name:\tmqflux\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t3\n";
        assert_eq!(
            ProcessMemory::parse(status),
            Some(ProcessMemory {
                resident_bytes: 1024 * 1024,
                peak_resident_bytes: 2048 * 1024
            })
        );
        assert_eq!(ProcessMemory::parse("VmRSS: lots\n"), None);
    }
}
