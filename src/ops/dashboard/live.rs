//! The live figures: the `dashboard-sampler` thread reads the broker's snapshot once a second,
//! turns counters into per-second rates, keeps the last `HISTORY` samples for the chart, and
//! smooths the broker's sampled topic counts (`broker::topic_rates`) into the busiest topics.
//! Server-Sent Events streams (`events`) wait on it and send each new sample.

use crate::broker::Broker;
use crate::ops::snapshot::Snapshot;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Samples kept: 10 minutes at one a second.
pub const HISTORY: usize = 600;
const TICK: Duration = Duration::from_secs(1);
/// Weight of the newest second in a topic's smoothed rate.
const SMOOTHING: f64 = 0.4;
/// Topics kept with a smoothed rate (twice what the broker tracks at once).
const TOPICS_KEPT: usize = 2 * crate::broker::topic_rates::CAPACITY;
/// An SSE stream sends a comment this often when there is nothing new, so proxies and the
/// browser keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// One second of the broker, as the chart and the overview show it.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub seq: u64,
    pub at_ms: u64,
    pub snapshot: Snapshot,
    pub in_per_sec: f64,
    pub out_per_sec: f64,
    pub dropped_per_sec: f64,
    pub sink_written_per_sec: f64,
}

impl Sample {
    pub fn dropped_total(s: &Snapshot) -> u64 {
        s.dropped_queue_full + s.dropped_slow_subscriber
    }

    pub fn to_json(&self) -> Value {
        let s = &self.snapshot;
        let sink = s.sink.as_ref();
        json!({
            "seq": self.seq,
            "at_ms": self.at_ms,
            "uptime_secs": s.uptime_secs,
            "connections": s.clients_connected,
            "sessions_online": s.clients_connected,
            "sessions_offline": s.sessions.saturating_sub(s.clients_connected),
            "subscriptions": s.subscriptions,
            "retained": s.retained,
            "messages_in": s.publish_received,
            "messages_out": s.publish_sent,
            "messages_dropped": Sample::dropped_total(s),
            "in_per_sec": round(self.in_per_sec),
            "out_per_sec": round(self.out_per_sec),
            "dropped_per_sec": round(self.dropped_per_sec),
            "sink_written": sink.map(|k| k.written),
            "sink_written_per_sec": sink.map(|_| round(self.sink_written_per_sec)),
            "sink_spool_bytes": sink.map(|k| k.spool_bytes),
            "sink_error": sink.and_then(|k| k.last_error.clone()),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[derive(Default)]
struct State {
    history: VecDeque<Sample>,
    topics: HashMap<Arc<str>, f64>,
}

pub struct Live {
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
}

pub struct Sampler {
    live: Arc<Live>,
    thread: JoinHandle<()>,
}

impl Live {
    /// The latest sample, if one was taken.
    pub fn latest(&self) -> Option<Sample> {
        self.lock().history.back().cloned()
    }

    pub fn history(&self) -> Vec<Sample> {
        self.lock().history.iter().cloned().collect()
    }

    /// The busiest topics by smoothed publishes per second, at most `n`.
    pub fn busiest(&self, n: usize) -> Vec<(Arc<str>, f64)> {
        let mut topics: Vec<(Arc<str>, f64)> = self
            .lock()
            .topics
            .iter()
            .map(|(t, r)| (t.clone(), *r))
            .collect();
        topics.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        topics.truncate(n);
        topics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stream every new sample as an SSE `sample` event until a write fails (the client went,
    /// or the server closed the socket) or the sampler stops.
    pub fn events(self: &Arc<Self>, out: &mut dyn Write) {
        let mut last_seq = self.latest().map(|s| s.seq);
        if let Some(s) = self.latest() {
            if send(out, &s).is_err() {
                return;
            }
        }
        // The browser reconnects after this many milliseconds if the stream breaks.
        if out
            .write_all(b"retry: 2000\n\n")
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
        loop {
            let next = {
                let mut state = self.lock();
                let deadline = Instant::now() + KEEPALIVE;
                loop {
                    if self.stopping.load(Ordering::Acquire) {
                        return;
                    }
                    let newest = state.history.back().map(|s| s.seq);
                    if newest.is_some() && newest != last_seq {
                        break state.history.back().cloned();
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break None;
                    }
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            };
            let written = match &next {
                Some(sample) => {
                    last_seq = Some(sample.seq);
                    send(out, sample)
                }
                None => out.write_all(b": keep-alive\n\n").and_then(|_| out.flush()),
            };
            if written.is_err() {
                return;
            }
        }
    }
}

fn send(out: &mut dyn Write, sample: &Sample) -> std::io::Result<()> {
    let data = sample.to_json().to_string();
    out.write_all(format!("event: sample\nid: {}\ndata: {data}\n\n", sample.seq).as_bytes())?;
    out.flush()
}

impl Sampler {
    /// Start the `dashboard-sampler` thread; it also turns the broker's topic counting on.
    pub fn start(broker: &Arc<Broker>) -> std::io::Result<Sampler> {
        broker.topic_rates.enable();
        let live = Arc::new(Live {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let (b, l) = (broker.clone(), live.clone());
        let thread = std::thread::Builder::new()
            .name("dashboard-sampler".into())
            .spawn(move || run(&b, &l))?;
        Ok(Sampler { live, thread })
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub fn stop(self) {
        self.live.stopping.store(true, Ordering::Release);
        self.live.changed.notify_all();
        let _ = self.thread.join();
    }
}

fn run(broker: &Broker, live: &Live) {
    let mut previous: Option<(Instant, Snapshot)> = None;
    let mut seq = 0u64;
    let mut next = Instant::now();
    loop {
        {
            let state = live.lock();
            let wait = next.saturating_duration_since(Instant::now());
            let (_state, _) = live
                .changed
                .wait_timeout_while(state, wait, |_| !live.stopping.load(Ordering::Acquire))
                .unwrap_or_else(|e| e.into_inner());
        }
        if live.stopping.load(Ordering::Acquire) {
            return;
        }
        next += TICK;
        let now = Instant::now();
        if next < now {
            next = now + TICK; // the machine was busy: no burst of catch-up samples
        }
        let snapshot = Snapshot::of(broker);
        let counts = broker.topic_rates.take();
        seq += 1;
        let mut sample = Sample {
            seq,
            at_ms: crate::broker::message::now_ns() as u64 / 1_000_000,
            snapshot: snapshot.clone(),
            ..Sample::default()
        };
        let secs = previous
            .as_ref()
            .map(|(at, _)| now.duration_since(*at).as_secs_f64())
            .filter(|s| *s > 0.0);
        if let (Some((_, before)), Some(secs)) = (&previous, secs) {
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
            sample.in_per_sec = rate(snapshot.publish_received, before.publish_received);
            sample.out_per_sec = rate(snapshot.publish_sent, before.publish_sent);
            sample.dropped_per_sec = rate(
                Sample::dropped_total(&snapshot),
                Sample::dropped_total(before),
            );
            if let (Some(k), Some(b)) = (&snapshot.sink, &before.sink) {
                sample.sink_written_per_sec = rate(k.written, b.written);
            }
        }
        {
            let mut state = live.lock();
            let secs = secs.unwrap_or(1.0);
            update_topics(&mut state.topics, counts, secs);
            state.history.push_back(sample);
            if state.history.len() > HISTORY {
                state.history.pop_front();
            }
        }
        live.changed.notify_all();
        previous = Some((now, snapshot));
    }
}

/// Fold one interval's counts into the smoothed rates; quiet topics fade out, and at most
/// `TOPICS_KEPT` stay.
fn update_topics(topics: &mut HashMap<Arc<str>, f64>, counts: Vec<(Arc<str>, u64)>, secs: f64) {
    let mut fresh: HashMap<Arc<str>, f64> = counts
        .into_iter()
        .map(|(t, c)| (t, c as f64 / secs))
        .collect();
    for (topic, rate) in topics.iter_mut() {
        let now = fresh.remove(topic).unwrap_or(0.0);
        *rate = SMOOTHING * now + (1.0 - SMOOTHING) * *rate;
    }
    for (topic, now) in fresh {
        topics.insert(topic, SMOOTHING * now);
    }
    topics.retain(|_, r| *r >= 0.05);
    if topics.len() > TOPICS_KEPT {
        let mut rates: Vec<f64> = topics.values().copied().collect();
        rates.sort_by(|a, b| b.total_cmp(a));
        let floor = rates[TOPICS_KEPT - 1];
        topics.retain(|_, r| *r >= floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_rates_smooth_fade_and_stay_bounded() {
        let mut topics = HashMap::new();
        update_topics(&mut topics, vec![("a".into(), 100)], 1.0);
        assert!((topics["a"] - 40.0).abs() < 1e-9);
        for _ in 0..40 {
            update_topics(&mut topics, vec![], 1.0);
        }
        assert!(topics.is_empty(), "a quiet topic fades out");
        let many: Vec<(Arc<str>, u64)> = (0..500).map(|i| (format!("t{i}").into(), i)).collect();
        update_topics(&mut topics, many, 1.0);
        assert!(topics.len() <= TOPICS_KEPT);
        assert!(topics.contains_key("t499"));
    }
}
