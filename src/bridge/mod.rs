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
//! connection), `running` (one bridge: settings, queue, counters, its thread), `session` (the
//! thread: failover, keep-alive, dispatch), `out`, `inbound`, `stats`. Floor: above `broker`
//! (it calls the broker's publish pipeline), below `ops` (which reads `Bridges::figures`). The
//! files import each other directly (`super::running::Bridge`), so no file is on an import
//! cycle with this front door.

pub mod config;
mod inbound;
mod link;
mod out;
pub mod queue;
mod running;
mod session;
pub mod stats;

use crate::broker::forward::Forward;
use crate::broker::message::Message;
use crate::broker::Broker;
use config::BridgeConfig;
use log::{info, warn};
use queue::Queue;
use running::Bridge;
use stats::{BridgeFigures, BridgeStats};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, RwLock};

/// What is wrong with a bridge's TLS files (they must load and fit together), for
/// `check-config`; None when they are fine or TLS is off.
pub fn tls_problem(c: &BridgeConfig) -> Option<String> {
    link::tls_config(c).err()
}

/// Every configured bridge; the broker's `Forward`.
pub struct Bridges {
    broker: Arc<Broker>,
    /// Where queues live when a bridge names no `queue_dir`: `<persistence.dir>/bridges`.
    default_root: Option<PathBuf>,
    /// `mqflux --recover`: open damaged queue journals with what can be read.
    recover: bool,
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
    pub fn start(broker: &Arc<Broker>, recover: bool) -> Result<Arc<Bridges>, String> {
        let default_root = broker
            .config
            .persistence
            .dir
            .as_ref()
            .map(|d| d.join("bridges"));
        let bridges = Arc::new(Bridges {
            broker: broker.clone(),
            default_root,
            recover,
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
        // TLS files that do not load are refused now, not logged later by the thread.
        link::tls_config(&c).map_err(|e| format!("bridge {}: {e}", c.connection))?;
        let queue = match queue {
            Some(q) => q,
            None => {
                let dir = queue_path(&c, self.default_root.as_deref()).ok_or_else(|| {
                    format!(
                        "bridge {}: no queue_dir and no persistence.dir to put its queue in",
                        c.connection
                    )
                })?;
                Queue::open(&c.connection, &dir, c.queue_max_bytes, self.recover)
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
        // No lock is held while threads stop and start: a bridge thread publishing locally
        // calls `forward`, which reads the list.
        let old: Vec<Arc<Bridge>> = self
            .running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut next = Vec::new();
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
        *self.running.write().unwrap_or_else(|e| e.into_inner()) = next;
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
