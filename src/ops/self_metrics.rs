//! `[sink] self_metrics`: the broker writes its own load to InfluxDB, where the user already
//! looks, as the measurement `self_metrics_measurement` (default `mqflux_self`), through the
//! sink like any publish (`Sink::submit_lines`: same queue, batches, retries and spool). Every
//! `self_metrics_interval_secs` the `self-metrics` thread takes a `Snapshot` and the per-prefix
//! totals (`broker::prefix_stats`), turns the increases since its last round into rates per
//! minute, and writes:
//!
//! ```text
//! mqflux_self,kind=broker connections=3i,messages_per_min=..,bytes_per_min=..,
//!     publish_bytes_per_min=..,sink_points_per_min=..,sink_bytes_per_min=..,
//!     spool_points=..i,spool_bytes=..i <time>
//! mqflux_self,kind=prefix,prefix=sensors messages_per_min=..,bytes_per_min=.. <time>
//! ```
//!
//! - messages: PUBLISH packets received; bytes: every MQTT byte received; publish bytes and
//!   the per-prefix bytes: topic + payload of the PUBLISHes counted.
//! - sink points / bytes: points and line-protocol bytes the sink encoded into batches (what
//!   the spool holds while InfluxDB is away); spool: its size now.
//!
//! These are the series `mqflux forecast` and the broker's `[forecast]` thread read back.

use super::snapshot::Snapshot;
use super::sys::wait_tick;
use crate::broker::message::now_ns;
use crate::broker::Broker;
use crossbeam_channel::{bounded, Sender};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The running self-metrics writer; `stop` ends and joins it.
pub struct SelfMetrics {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl SelfMetrics {
    /// Start when `sink.self_metrics` is on and the sink is enabled; None otherwise.
    pub fn start(broker: &Arc<Broker>) -> io::Result<Option<SelfMetrics>> {
        let cfg = &broker.config.sink;
        if !cfg.self_metrics || !broker.sink.is_enabled() {
            return Ok(None);
        }
        let interval = Duration::from_secs(cfg.self_metrics_interval_secs.max(1));
        let (stop, stopped) = bounded::<()>(1);
        let broker = broker.clone();
        let thread = thread::Builder::new()
            .name("self-metrics".into())
            .spawn(move || {
                let mut rounds = Rounds::new(&broker);
                let mut next = Instant::now();
                while wait_tick(&stopped, &mut next, interval) {
                    let lines = rounds.round(&broker, Instant::now(), now_ns());
                    broker.sink.submit_lines(&lines, now_ns());
                }
                log::debug!("self-metrics writer stopped");
            })?;
        Ok(Some(SelfMetrics { stop, thread }))
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Counter totals at the previous round.
#[derive(Debug, Clone, Default)]
struct Totals {
    messages: u64,
    bytes: u64,
    publish_bytes: u64,
    sink_points: u64,
    sink_bytes: u64,
    prefixes: HashMap<String, (u64, u64)>,
}

impl Totals {
    fn of(broker: &Broker, s: &Snapshot) -> Totals {
        let prefixes: HashMap<String, (u64, u64)> = broker
            .prefix_stats
            .as_ref()
            .map(|p| {
                p.totals()
                    .into_iter()
                    .map(|(k, m, b)| (k, (m, b)))
                    .collect()
            })
            .unwrap_or_default();
        let sink = s.sink.clone().unwrap_or_default();
        Totals {
            messages: s.publish_received,
            bytes: s.bytes_received,
            publish_bytes: prefixes.values().map(|(_, b)| b).sum(),
            sink_points: sink.queued,
            sink_bytes: sink.queued_bytes,
            prefixes,
        }
    }
}

struct Rounds {
    last: Totals,
    at: Instant,
}

impl Rounds {
    fn new(broker: &Broker) -> Rounds {
        Rounds {
            last: Totals::of(broker, &Snapshot::of(broker)),
            at: Instant::now(),
        }
    }

    /// The lines for the increases since the last round, stamped `ts_ns`.
    fn round(&mut self, broker: &Broker, now: Instant, ts_ns: i64) -> String {
        let s = Snapshot::of(broker);
        let t = Totals::of(broker, &s);
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        let lines = render(
            &broker.config.sink.self_metrics_measurement,
            &self.last,
            &t,
            &s,
            secs,
            ts_ns,
        );
        self.last = t;
        self.at = now;
        lines
    }
}

/// Rate per minute of the increase `now - before` over `secs`.
fn per_min(before: u64, now: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    now.saturating_sub(before) as f64 * 60.0 / secs
}

/// Escape a tag value for line protocol (commas, spaces, equals signs); an empty one (topic
/// `/x` at depth 1) is written as `(empty)`, as line protocol has no empty tag values.
fn tag_value(v: &str) -> String {
    if v.is_empty() {
        return "(empty)".into();
    }
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, ',' | ' ' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn render(
    measurement: &str,
    before: &Totals,
    now: &Totals,
    s: &Snapshot,
    secs: f64,
    ts_ns: i64,
) -> String {
    let sink = s.sink.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{measurement},kind=broker connections={}i,messages_per_min={},bytes_per_min={},\
         publish_bytes_per_min={},sink_points_per_min={},sink_bytes_per_min={},\
         spool_points={}i,spool_bytes={}i {ts_ns}",
        s.clients_connected,
        per_min(before.messages, now.messages, secs),
        per_min(before.bytes, now.bytes, secs),
        per_min(before.publish_bytes, now.publish_bytes, secs),
        per_min(before.sink_points, now.sink_points, secs),
        per_min(before.sink_bytes, now.sink_bytes, secs),
        sink.spool_points,
        sink.spool_bytes,
    );
    let mut prefixes: Vec<(&String, &(u64, u64))> = now.prefixes.iter().collect();
    prefixes.sort();
    for (prefix, (m, b)) in prefixes {
        let (m0, b0) = before.prefixes.get(prefix).copied().unwrap_or((0, 0));
        let _ = writeln!(
            out,
            "{measurement},kind=prefix,prefix={} messages_per_min={},bytes_per_min={} {ts_ns}",
            tag_value(prefix),
            per_min(m0, *m, secs),
            per_min(b0, *b, secs),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_minute_whatever_the_interval() {
        assert_eq!(per_min(100, 160, 30.0), 120.0);
        assert_eq!(per_min(5, 3, 10.0), 0.0); // a counter never goes back; no negative rate
        assert_eq!(per_min(0, 10, 0.0), 0.0);
    }

    #[test]
    fn lines_are_valid_line_protocol_with_escaped_prefixes() {
        let before = Totals::default();
        let mut now = Totals {
            messages: 60,
            bytes: 6000,
            ..Default::default()
        };
        now.prefixes.insert("a b,c".into(), (30, 300));
        now.prefixes.insert(String::new(), (1, 1));
        let s = Snapshot {
            clients_connected: 2,
            ..Default::default()
        };
        let text = render("mqflux_self", &before, &now, &s, 60.0, 7);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(
            "mqflux_self,kind=broker connections=2i,messages_per_min=60,bytes_per_min=6000,"
        ));
        assert_eq!(
            lines[1],
            "mqflux_self,kind=prefix,prefix=(empty) messages_per_min=1,bytes_per_min=1 7"
        );
        assert_eq!(
            lines[2],
            "mqflux_self,kind=prefix,prefix=a\\ b\\,c messages_per_min=30,bytes_per_min=300 7"
        );
        for l in lines {
            crate::sink::line_protocol::parse_line(l.as_bytes()).unwrap();
        }
    }
}
