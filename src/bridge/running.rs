//! One running bridge (`Bridge`): its settings and parsed topic lines, its queue and counters,
//! the broker it publishes into, and the handle of its thread (`session::run`). `Bridges`
//! (`mod.rs`) holds every one and is the broker's `Forward`.

use super::config::{BridgeConfig, TopicLine};
use super::queue::Queue;
use super::stats::{BridgeFigures, BridgeStats};
use crate::broker::message::{now_ns, Message};
use crate::broker::Broker;
use crate::protocol::QoS;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One running bridge: its settings, queue, counters and thread.
pub struct Bridge {
    pub config: BridgeConfig,
    pub(super) lines: Vec<TopicLine>,
    pub queue: Arc<Queue>,
    pub stats: BridgeStats,
    pub(super) broker: Arc<Broker>,
    /// The publisher id of what this bridge brings in: never forwarded back out by it.
    pub(super) local_clientid: Arc<str>,
    pub(super) stopping: AtomicBool,
    pub(super) wake: (Mutex<()>, Condvar),
    pub(super) thread: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleep up to `d`, ended early by `stop`; drops counted meanwhile are logged each second.
    pub(super) fn sleep(&self, d: Duration) {
        let end = std::time::Instant::now() + d;
        loop {
            self.queue.flush_drop_log();
            let left = end.saturating_duration_since(std::time::Instant::now());
            let guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_stopping() || left.is_zero() {
                return;
            }
            let _ = self
                .wake
                .1
                .wait_timeout(guard, left.min(Duration::from_secs(1)));
        }
    }

    /// `notifications`: the retained connection state, 1 or 0, on the local broker.
    pub(super) fn notify(&self, up: bool) {
        if !self.config.notifications {
            return;
        }
        let message = Message::new(
            self.config.notification_topic().into(),
            bytes::Bytes::from_static(if up { b"1" } else { b"0" }),
            QoS::AtLeastOnce,
            true,
            Default::default(),
            None,
            now_ns(),
        );
        self.broker.publish(message);
    }

    /// Queue `message` if an `out` line takes it.
    pub(super) fn forward(&self, message: &Message) {
        if message.publisher.as_deref() == Some(&*self.local_clientid) {
            return; // it came in over this bridge
        }
        let Some((remote, qos)) = self.lines.iter().find_map(|l| {
            if !l.direction.is_out() {
                return None;
            }
            l.to_remote(&message.topic).map(|t| (t, l.qos))
        }) else {
            return;
        };
        if message.is_expired() {
            return;
        }
        self.queue.push(
            remote.into(),
            message.payload.clone(),
            message.qos.min(qos),
            message.retain,
            message.received_at_ns,
            message.properties.clone(),
        );
    }

    pub(super) fn takes(&self, topic: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.direction.is_out() && l.to_remote(topic).is_some())
    }

    pub(super) fn figures(&self) -> BridgeFigures {
        let s = &self.stats;
        let (queued_messages, queued_bytes, oldest) = self.queue.depth();
        let d = &self.queue.drops;
        let index = BridgeStats::get(&s.address_index) as usize;
        BridgeFigures {
            name: self.config.connection.clone(),
            up: s.up.load(Ordering::Relaxed),
            address: self.config.address.get(index).cloned().unwrap_or_default(),
            queued_messages,
            queued_bytes,
            oldest_age_secs: oldest
                .map(|at| ((now_ns() - at).max(0) as f64) / 1e9)
                .unwrap_or(0.0),
            sent: BridgeStats::get(&s.sent),
            resent: BridgeStats::get(&s.resent),
            acked: BridgeStats::get(&s.acked),
            received: BridgeStats::get(&s.received),
            reconnects: BridgeStats::get(&s.reconnects),
            dropped_queue_full: d.queue_full.load(Ordering::Relaxed),
            dropped_too_large: d.too_large.load(Ordering::Relaxed),
            dropped_refused: d.refused.load(Ordering::Relaxed),
            dropped_expired: d.expired.load(Ordering::Relaxed),
            dropped_denied: BridgeStats::get(&s.denied),
        }
    }

    /// Stop the thread (DISCONNECT to the remote) and wait for it; the queue stays open.
    pub(super) fn stop_thread(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let _guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.1.notify_all();
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}
