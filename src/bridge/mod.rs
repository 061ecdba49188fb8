//! Bridges to other MQTT brokers (`[[bridges]]`), with mosquitto's configuration keys and a
//! durable queue per bridge, so that nothing acknowledged is lost when the link drops or
//! either broker restarts.
//!
//! Data flow `out`: a local PUBLISH routed by the broker (`Broker::finish_with`) goes to
//! `Bridges::forward` (the broker's `Forward`, installed by `main`), which appends it to the
//! queue of every bridge with a matching `out` topic line (`queue.rs`, its own journal). The
//! publisher's acknowledgement waits for that journal (`Broker::wait_durable` ->
//! `Queue::wait_touched`). The bridge's thread (`session.rs`) sends the queue in order over its
//! link (`link.rs`, our own codec as a client; TCP or TLS) within the window (`out.rs`) and
//! deletes each message on the remote's PUBACK/PUBCOMP.
//!
//! Data flow `in`: the thread subscribes on the remote (`inbound.rs`) and publishes what
//! arrives into the local broker under `local_username`'s ACL, acknowledging to the remote once
//! the local side is durable.
//!
//! Files: `config` (keys, topic grammar), `queue` (durable queue), `link` (the client
//! connection), `session` (the thread: failover, keep-alive, dispatch), `out`, `inbound`,
//! `stats`. Floor: above `broker` (it calls the broker's publish pipeline), below `ops` (which
//! reads `Bridges::figures`).

pub mod config;
mod inbound;
mod link;
mod out;
pub mod queue;
mod session;
pub mod stats;

use crate::broker::forward::Forward;
use crate::broker::message::{now_ns, Message};
use crate::broker::Broker;
use crate::protocol::QoS;
use config::{BridgeConfig, TopicLine};
use log::{info, warn};
use queue::Queue;
use stats::{BridgeFigures, BridgeStats};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// One running bridge: its settings, queue, counters and thread.
pub struct Bridge {
    pub config: BridgeConfig,
    lines: Vec<TopicLine>,
    pub queue: Arc<Queue>,
    pub stats: BridgeStats,
    broker: Arc<Broker>,
    /// The publisher id of what this bridge brings in: never forwarded back out by it.
    local_clientid: Arc<str>,
    stopping: AtomicBool,
    wake: (Mutex<()>, Condvar),
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Bridge {
    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleep up to `d`, ended early by `stop`; drops counted meanwhile are logged each second.
    fn sleep(&self, d: Duration) {
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
    fn notify(&self, up: bool) {
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
    fn forward(&self, message: &Message) {
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
        );
    }

    fn takes(&self, topic: &str) -> bool {
        self.lines
            .iter()
            .any(|l| l.direction.is_out() && l.to_remote(topic).is_some())
    }

    fn figures(&self) -> BridgeFigures {
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
            dropped_denied: BridgeStats::get(&s.denied),
        }
    }

    /// Stop the thread (DISCONNECT to the remote) and wait for it; the queue stays open.
    fn stop_thread(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let _guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.1.notify_all();
        }
        self.queue.wake();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Every configured bridge; the broker's `Forward`.
pub struct Bridges {
    broker: Arc<Broker>,
    /// Where queues live when a bridge names no `queue_dir`: `<persistence.dir>/bridges`.
    default_root: Option<PathBuf>,
    running: RwLock<Vec<Arc<Bridge>>>,
}

/// The queue directory of a bridge.
fn queue_path(c: &BridgeConfig, default_root: Option<&Path>) -> Option<PathBuf> {
    let root = c.queue_dir.as_deref().or(default_root)?;
    Some(root.join(&c.connection))
}

impl Bridges {
    /// Open every bridge's queue and start its thread. Call before the listeners open, then
    /// hand the result to `Broker::set_forward`.
    pub fn start(broker: &Arc<Broker>) -> Result<Arc<Bridges>, String> {
        let default_root = broker
            .config
            .persistence
            .dir
            .as_ref()
            .map(|d| d.join("bridges"));
        let bridges = Arc::new(Bridges {
            broker: broker.clone(),
            default_root,
            running: RwLock::new(Vec::new()),
        });
        let configs = broker.config.bridges.clone();
        let mut running = Vec::new();
        for c in configs {
            match bridges.start_one(c, None) {
                Ok(b) => running.push(b),
                Err(e) => {
                    running.iter().for_each(|b: &Arc<Bridge>| {
                        b.stop_thread();
                        b.queue.close();
                    });
                    return Err(e);
                }
            }
        }
        *bridges.running.write().unwrap_or_else(|e| e.into_inner()) = running;
        Ok(bridges)
    }

    fn start_one(&self, c: BridgeConfig, queue: Option<Arc<Queue>>) -> Result<Arc<Bridge>, String> {
        let queue = match queue {
            Some(q) => q,
            None => {
                let dir = queue_path(&c, self.default_root.as_deref()).ok_or_else(|| {
                    format!(
                        "bridge {}: no queue_dir and no persistence.dir to put its queue in",
                        c.connection
                    )
                })?;
                Queue::open(&c.connection, &dir, c.queue_max_bytes)
                    .map_err(|e| format!("bridge {}: cannot open its queue: {e}", c.connection))?
            }
        };
        let (n, bytes, _) = queue.depth();
        if n > 0 {
            info!(
                "bridge {}: {n} queued messages ({bytes} bytes) from the previous run",
                c.connection
            );
        }
        let bridge = Arc::new(Bridge {
            lines: c.topic_lines(),
            local_clientid: c.local_clientid().into(),
            config: c,
            queue,
            stats: BridgeStats::default(),
            broker: self.broker.clone(),
            stopping: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            thread: Mutex::new(None),
        });
        let runner = bridge.clone();
        let thread = std::thread::Builder::new()
            .name(format!("bridge-{}", bridge.config.connection))
            .spawn(move || session::run(runner))
            .map_err(|e| {
                format!(
                    "bridge {}: cannot start its thread: {e}",
                    bridge.config.connection
                )
            })?;
        *bridge.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread);
        Ok(bridge)
    }

    /// SIGHUP: apply a new `[[bridges]]` list. A bridge whose settings are unchanged keeps
    /// running; one whose `connection` stays but settings changed restarts with the same queue;
    /// a removed one stops (its queue stays on disk); a new one starts.
    pub fn reload(&self, configs: &[BridgeConfig]) {
        let mut running = self.running.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Vec::new();
        let old: Vec<Arc<Bridge>> = std::mem::take(&mut *running);
        for c in configs {
            match old.iter().find(|b| b.config.connection == c.connection) {
                Some(b) if b.config == *c => next.push(b.clone()),
                Some(b) => {
                    b.stop_thread();
                    info!(
                        "bridge {}: settings changed; restarting with its queue",
                        c.connection
                    );
                    match self.start_one(c.clone(), Some(b.queue.clone())) {
                        Ok(b) => next.push(b),
                        Err(e) => warn!("{e}"),
                    }
                }
                None => match self.start_one(c.clone(), None) {
                    Ok(b) => {
                        info!("bridge {}: added", c.connection);
                        next.push(b)
                    }
                    Err(e) => warn!("{e}"),
                },
            }
        }
        for b in &old {
            if !configs.iter().any(|c| c.connection == b.config.connection) {
                info!(
                    "bridge {}: removed; its queue stays on disk",
                    b.config.connection
                );
                b.stop_thread();
                b.queue.close();
            }
        }
        *running = next;
    }

    /// Figures of every bridge, in configuration order.
    pub fn figures(&self) -> Vec<BridgeFigures> {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        running.iter().map(|b| b.figures()).collect()
    }

    /// Stop every bridge (DISCONNECT), then close the queues (final fsync).
    pub fn stop(&self) {
        let running = std::mem::take(&mut *self.running.write().unwrap_or_else(|e| e.into_inner()));
        for b in &running {
            b.stop_thread();
        }
        for b in &running {
            b.queue.close();
        }
    }
}

impl Forward for Bridges {
    fn takes(&self, topic: &str) -> bool {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        running.iter().any(|b| b.takes(topic))
    }

    fn forward(&self, message: &Message) {
        let running = self.running.read().unwrap_or_else(|e| e.into_inner());
        for b in running.iter() {
            b.forward(message);
        }
    }

    fn wait_durable(&self) -> bool {
        Queue::wait_touched()
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
