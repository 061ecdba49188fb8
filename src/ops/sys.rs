//! The `$SYS` publisher: a named thread that every `sys_interval` seconds publishes the broker's
//! figures as retained messages under `$SYS/broker/...`, with mosquitto's topic names and
//! meanings (mosquitto(8), "BROKER STATUS"), so tools that watch mosquitto watch mqflux too.
//!
//! Like mosquitto, a topic is published only when its value changed since the last round (the
//! first round publishes every topic); the messages are retained, so a new subscriber to
//! `$SYS/#` gets every current value at once.
//!
//! mosquitto publishes `$SYS` at QoS 2. mqflux uses QoS 0: each value supersedes the previous
//! one, so queueing old values for an offline persistent subscriber (and counting them as
//! dropped once its queue is full) helps nobody.

use super::snapshot::{LoadTracker, Snapshot};
use crate::broker::message::{now_ns, Message};
use crate::broker::Broker;
use crate::protocol::QoS;
use bytes::Bytes;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use log::debug;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The running `$SYS` publisher. Dropping the handle without `stop` leaves the thread running
/// until the process exits; `stop` ends and joins it.
pub struct SysPublisher {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl SysPublisher {
    /// Start publishing every `interval`; None when the interval is zero ($SYS disabled).
    pub fn start(broker: &Arc<Broker>, interval: Duration) -> io::Result<Option<SysPublisher>> {
        if interval.is_zero() {
            return Ok(None);
        }
        let (stop, stopped) = bounded::<()>(1);
        let mut tree = SysTree::new(&Snapshot::of(broker));
        // The first round on the caller's thread, before `main` logs "ready": from then on a
        // client subscribing to `$SYS/#` gets every value from the retained store at once.
        let mut next = Instant::now();
        for (topic, payload) in tree.round(&Snapshot::of(broker), next) {
            publish(broker, topic, payload);
        }
        let broker = broker.clone();
        let thread = thread::Builder::new().name("sys".into()).spawn(move || {
            while wait_tick(&stopped, &mut next, interval) {
                for (topic, payload) in tree.round(&Snapshot::of(&broker), Instant::now()) {
                    publish(&broker, topic, payload);
                }
            }
            debug!("$SYS publisher stopped");
        })?;
        Ok(Some(SysPublisher { stop, thread }))
    }

    /// Stop the thread and wait for it.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Wait for the next tick of a fixed-rate loop: false once `stop` fires or its sender is gone.
/// After a stall (e.g. a suspended machine) the schedule restarts from now instead of bursting.
pub(super) fn wait_tick(stop: &Receiver<()>, next: &mut Instant, interval: Duration) -> bool {
    *next += interval;
    let now = Instant::now();
    if *next < now {
        *next = now + interval;
    }
    match stop.recv_timeout(*next - now) {
        Err(RecvTimeoutError::Timeout) => true,
        Ok(()) | Err(RecvTimeoutError::Disconnected) => false,
    }
}

/// Publish one retained QoS 0 `$SYS` value (each value supersedes the previous one).
pub(super) fn publish(broker: &Broker, topic: String, payload: String) {
    broker.publish(Message::new(
        topic.into(),
        Bytes::from(payload),
        QoS::AtMostOnce,
        true,
        Default::default(),
        None,
        now_ns(),
    ));
}

/// The `$SYS` tree's state between rounds: the last value of every topic (to publish only
/// changes) and the load averages.
pub struct SysTree {
    last: HashMap<String, String>,
    loads: LoadTracker,
    last_round: Option<Instant>,
}

impl SysTree {
    pub fn new(first: &Snapshot) -> SysTree {
        SysTree {
            last: HashMap::new(),
            loads: LoadTracker::new(first),
            last_round: None,
        }
    }

    /// The (topic, payload) pairs to publish for this round: those whose value changed.
    pub fn round(&mut self, s: &Snapshot, now: Instant) -> Vec<(String, String)> {
        if let Some(last) = self.last_round {
            self.loads
                .update(s, now.saturating_duration_since(last).as_secs_f64());
        }
        self.last_round = Some(now);
        let mut out = Vec::new();
        for (topic, payload) in sys_values(s, &self.loads) {
            if self.last.get(&topic) != Some(&payload) {
                self.last.insert(topic.clone(), payload.clone());
                out.push((topic, payload));
            }
        }
        out
    }
}

/// Every `$SYS` topic and its current payload. Meanings follow mosquitto(8):
/// - clients/total: clients known to the broker, connected or not (sessions held);
///   clients/connected: with a live connection; clients/disconnected: persistent sessions
///   whose client is away; clients/maximum: most clients connected at once;
///   clients/expired: persistent sessions removed on expiry; clients/stalled (mqflux's own):
///   subscribers disconnected for holding publishers back (`limits.stalled_subscriber_secs`).
/// - messages/*: MQTT packets of any type; messages/stored: retained messages plus messages in
///   flight or queued for sessions (counted per session, not deduplicated).
/// - publish/messages/*: PUBLISH packets only; dropped: discarded because a subscriber's queue
///   was full.
/// - retained messages/refused (mqflux's own): retained PUBLISHes to a new topic not stored
///   because `limits.max_retained_messages` / `max_retained_bytes` was reached.
/// - load/*/{1min,5min,15min}: per-minute rates, exponentially averaged (see `LoadAverage`).
/// - heap/current, heap/maximum: resident memory (VmRSS/VmHWM) in bytes; mosquitto reports its
///   own allocations here, which Rust's allocator does not count.
/// - sink/... (mqflux's own, only with the sink enabled): points received from the router,
///   written to InfluxDB, retried, spooled, dropped (all reasons); points and bytes in the spool
///   now; why the sink cannot write: "last write failed: ..." or "InfluxDB not reachable ..."
///   since start-up ("none" once a write succeeds or InfluxDB answers).
pub fn sys_values(s: &Snapshot, loads: &LoadTracker) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::with_capacity(64);
    let mut put = |path: &str, value: String| v.push((format!("$SYS/broker/{path}"), value));
    put(
        "version",
        format!("mqflux version {}", env!("CARGO_PKG_VERSION")),
    );
    put("uptime", format!("{} seconds", s.uptime_secs));
    put("clients/total", s.sessions.to_string());
    put("clients/connected", s.clients_connected.to_string());
    put("clients/disconnected", s.clients_disconnected().to_string());
    put("clients/maximum", s.clients_maximum.to_string());
    put("clients/expired", s.clients_expired.to_string());
    put("clients/stalled", s.stalled_subscribers.to_string());
    put("messages/received", s.messages_received.to_string());
    put("messages/sent", s.messages_sent.to_string());
    put("messages/stored", s.messages_stored.to_string());
    put("publish/messages/received", s.publish_received.to_string());
    put("publish/messages/sent", s.publish_sent.to_string());
    put("publish/messages/dropped", s.publish_dropped().to_string());
    put("bytes/received", s.bytes_received.to_string());
    put("bytes/sent", s.bytes_sent.to_string());
    put("subscriptions/count", s.subscriptions.to_string());
    put("retained messages/count", s.retained.to_string());
    put("retained messages/refused", s.retained_refused.to_string());
    if let Some(bytes) = s.resident_bytes {
        put("heap/current", bytes.to_string());
    }
    if let Some(bytes) = s.resident_peak_bytes {
        put("heap/maximum", bytes.to_string());
    }
    if let Some(k) = &s.sink {
        put("sink/points/received", k.received.to_string());
        put("sink/points/written", k.written.to_string());
        put("sink/points/retried", k.retried.to_string());
        put("sink/points/spooled", k.spooled.to_string());
        put("sink/points/dropped", k.dropped_total().to_string());
        put("sink/spool/points", k.spool_points.to_string());
        put("sink/spool/bytes", k.spool_bytes.to_string());
        // Not empty when there is no error: an empty retained payload would clear the topic.
        let last_error = k.last_error.as_deref().unwrap_or("none");
        put("sink/last_error", last_error.to_string());
    }
    for b in &s.bridges {
        let mut bridge =
            |path: &str, value: String| put(&format!("bridge/{}/{path}", b.name), value);
        bridge("state", (b.up as u8).to_string());
        bridge("queue/messages", b.queued_messages.to_string());
        bridge("queue/bytes", b.queued_bytes.to_string());
        bridge("queue/oldest_age", format!("{:.0}", b.oldest_age_secs));
        bridge("messages/sent", b.sent.to_string());
        bridge("messages/acked", b.acked.to_string());
        bridge("messages/received", b.received.to_string());
        bridge(
            "messages/dropped/queue_full",
            b.dropped_queue_full.to_string(),
        );
        bridge(
            "messages/dropped/too_large",
            b.dropped_too_large.to_string(),
        );
        bridge("messages/dropped/refused", b.dropped_refused.to_string());
        bridge("messages/dropped/expired", b.dropped_expired.to_string());
        bridge("messages/dropped/denied", b.dropped_denied.to_string());
        bridge("reconnects", b.reconnects.to_string());
    }
    for (path, l) in loads.iter() {
        for (window, avg) in [("1min", l.one), ("5min", l.five), ("15min", l.fifteen)] {
            put(
                &format!("load/{path}/{window}"),
                format!("{:.2}", avg.value()),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(s: &Snapshot) -> HashMap<String, String> {
        sys_values(s, &LoadTracker::new(s)).into_iter().collect()
    }

    #[test]
    fn topics_use_mosquitto_names_and_formats() {
        let s = Snapshot {
            uptime_secs: 42,
            clients_connected: 2,
            sessions: 5,
            clients_maximum: 3,
            retained: 7,
            resident_bytes: Some(4096),
            ..Default::default()
        };
        let v = values(&s);
        assert_eq!(v["$SYS/broker/uptime"], "42 seconds");
        assert_eq!(v["$SYS/broker/clients/total"], "5");
        assert_eq!(v["$SYS/broker/clients/connected"], "2");
        assert_eq!(v["$SYS/broker/clients/disconnected"], "3");
        assert_eq!(v["$SYS/broker/clients/maximum"], "3");
        assert_eq!(v["$SYS/broker/retained messages/count"], "7");
        assert_eq!(v["$SYS/broker/heap/current"], "4096");
        assert!(v["$SYS/broker/version"].starts_with("mqflux version "));
        assert_eq!(v["$SYS/broker/load/connections/15min"], "0.00");
        // mosquitto has no received/sent split for connections.
        assert!(!v.contains_key("$SYS/broker/load/connections/received/1min"));
        for key in [
            "load/messages/received/1min",
            "load/messages/sent/5min",
            "load/publish/received/15min",
            "load/publish/sent/1min",
            "load/publish/dropped/1min",
            "load/bytes/received/5min",
            "load/bytes/sent/15min",
            "publish/messages/dropped",
            "messages/stored",
            "subscriptions/count",
            "clients/expired",
        ] {
            assert!(v.contains_key(&format!("$SYS/broker/{key}")), "{key}");
        }
    }

    #[test]
    fn first_round_publishes_everything_then_only_changes() {
        let t0 = Instant::now();
        let s = Snapshot::default();
        let mut tree = SysTree::new(&s);
        let first = tree.round(&s, t0);
        assert_eq!(first.len(), values(&s).len());

        let later = Snapshot {
            uptime_secs: 10,
            publish_received: 60,
            ..s.clone()
        };
        let second: HashMap<_, _> = tree
            .round(&later, t0 + Duration::from_secs(10))
            .into_iter()
            .collect();
        assert_eq!(second["$SYS/broker/uptime"], "10 seconds");
        assert_eq!(second["$SYS/broker/publish/messages/received"], "60");
        // 60 in 10 s = 360/min; 1-minute load after one step: 360 * (1 - e^(-1/6)).
        assert_eq!(second["$SYS/broker/load/publish/received/1min"], "55.27");
        assert!(!second.contains_key("$SYS/broker/clients/connected"));
        assert!(!second.contains_key("$SYS/broker/load/bytes/sent/1min"));
    }

    #[test]
    fn sink_topics_appear_only_with_the_sink_enabled() {
        assert!(!values(&Snapshot::default())
            .keys()
            .any(|k| k.starts_with("$SYS/broker/sink/")));
        let s = Snapshot {
            sink: Some(crate::sink::SinkStats {
                written: 10,
                retried: 3,
                spool_bytes: 512,
                dropped: vec![("rejected", 2), ("spool_full", 1)],
                last_error: Some("connection refused".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = values(&s);
        assert_eq!(v["$SYS/broker/sink/points/written"], "10");
        assert_eq!(v["$SYS/broker/sink/points/retried"], "3");
        assert_eq!(v["$SYS/broker/sink/points/dropped"], "3");
        assert_eq!(v["$SYS/broker/sink/spool/bytes"], "512");
        assert_eq!(v["$SYS/broker/sink/last_error"], "connection refused");
        let ok = Snapshot {
            sink: Some(Default::default()),
            ..Default::default()
        };
        assert_eq!(values(&ok)["$SYS/broker/sink/last_error"], "none");
    }
}
