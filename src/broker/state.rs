//! The `Broker` struct: what every connection thread shares, its construction, loading the
//! store, limits. Its other methods live in one file per role (`publish`, `sessions`,
//! `registry`; see `broker/mod.rs`).

use super::forward::Forward;
use super::live::LiveConnection;
use super::outbox::OutboxContext;
use super::persist::Loaded;
use super::router::{self, Router};
use super::security::SecurityFiles;
use super::session::{Session, SessionHandle, SessionJournal};
use super::session::{SessionLimits, SessionRef};
use super::stats::Stats;
use super::topic_rates::TopicRates;
use crate::config::Config;
use crate::sink::Sink;
use crate::store::Store;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub struct Broker {
    pub config: Config,
    /// Password and ACL files, replaced on SIGHUP.
    pub security: SecurityFiles,
    pub router: Router,
    pub stats: Stats,
    /// Messages and bytes per topic prefix (`sink.self_metrics`), counted in `admit`.
    pub prefix_stats: Option<super::prefix_stats::PrefixStats>,
    /// The busiest topics, counted only while the dashboard is on (`topic_rates.rs`).
    pub topic_rates: TopicRates,
    pub sink: Sink,
    /// Persistence, when configured (see `crate::store`).
    pub(super) store: OnceLock<Arc<Store>>,
    pub(super) sessions: Mutex<HashMap<Arc<str>, SessionRef>>,
    pub(super) connections: Mutex<HashMap<u64, LiveConnection>>,
    pub(super) next_connection_id: AtomicU64,
    pub(super) shutting_down: AtomicBool,
    /// The thread `start_housekeeping` started; `shutdown` joins it before the store stops, so
    /// a will it publishes is never left half-recorded.
    pub(super) housekeeping_thread: Mutex<Option<JoinHandle<()>>>,
    pub(super) started: Instant,
    /// The bridges, when any are configured (`set_forward`): every routed message goes there
    /// too, and acknowledgements wait for their queues.
    pub(super) forward: OnceLock<Arc<dyn Forward>>,
}

impl Broker {
    pub fn new(config: Config, sink: Sink, security: SecurityFiles) -> Arc<Broker> {
        let retained_limits = router::RetainedLimits {
            max_messages: config.limits.max_retained_messages,
            max_bytes: config.limits.max_retained_bytes,
        };
        let prefix_stats = config.sink.self_metrics.then(|| {
            super::prefix_stats::PrefixStats::new(
                config.sink.self_metrics_prefix_depth,
                config.sink.self_metrics_max_prefixes,
            )
        });
        Arc::new(Broker {
            prefix_stats,
            config,
            security,
            router: Router::new(retained_limits),
            stats: Stats::default(),
            topic_rates: TopicRates::default(),
            sink,
            store: OnceLock::new(),
            sessions: Mutex::new(HashMap::new()),
            connections: Mutex::new(HashMap::new()),
            next_connection_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            housekeeping_thread: Mutex::new(None),
            started: Instant::now(),
            forward: OnceLock::new(),
        })
    }

    /// Use `store` from now on, after rebuilding the retained messages and sessions it held.
    /// Called once, before the listener starts.
    pub fn attach_store(&self, store: Arc<Store>, loaded: Loaded) {
        // Acknowledged publishes the sink had not written before a crash go to it again first.
        self.sink.attach_store(store.clone(), loaded.sink);
        for message in loaded.retained {
            self.router.retain(&message, || {});
        }
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for stored in loaded.sessions {
            let client_id: Arc<str> = stored.client_id.as_str().into();
            let journal = SessionJournal::new(store.clone(), &client_id);
            let state = Session::restore(stored, self.session_limits(None), journal);
            let session = SessionHandle::restored(client_id.clone(), state);
            let subscriptions = session.lock().subscription_list();
            for (filter, options, identifier) in subscriptions {
                self.router
                    .subscribe(&filter, &session, options, identifier);
            }
            sessions.insert(client_id, session);
        }
        drop(sessions);
        let _ = self.store.set(store);
        // Wills that fell due and sessions that expired while the broker was down are handled
        // before any client can connect (a reconnect would otherwise cancel an overdue will).
        self.housekeeping();
    }

    /// In sync persistence mode, wait until every change this thread made so far is durable:
    /// called before acknowledging a QoS 1/2 PUBLISH, a PUBREL or a PUBREC. False when the
    /// store failed or timed out: the acknowledgement must not be sent.
    pub fn wait_durable(&self) -> bool {
        let stored = match self.store.get() {
            Some(store) if store.is_sync() => store.wait_durable(crate::store::DURABLE_TIMEOUT),
            _ => true,
        };
        stored && self.forward.get().is_none_or(|f| f.wait_durable())
    }

    /// Install the bridges (once, before any listener opens).
    pub fn set_forward(&self, forward: Arc<dyn Forward>) {
        let _ = self.forward.set(forward);
    }

    /// The bridges, if any.
    pub(crate) fn forward(&self) -> Option<&Arc<dyn Forward>> {
        self.forward.get()
    }

    /// Whether a publisher's acknowledgement waits for `wait_durable`: sync persistence, or
    /// bridges whose durable queues must hold the message first.
    pub fn acks_wait_durable(&self) -> bool {
        self.acks_wait_for_store() || self.forward.get().is_some()
    }

    /// Whether acknowledgements wait for the store (sync persistence).
    pub fn acks_wait_for_store(&self) -> bool {
        self.store.get().is_some_and(|s| s.is_sync())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Limits for a session whose client allows `receive_maximum` unacknowledged messages.
    pub fn session_limits(&self, receive_maximum: Option<u16>) -> SessionLimits {
        let l = &self.config.limits;
        SessionLimits {
            max_inflight: l.max_inflight.min(receive_maximum.unwrap_or(u16::MAX)) as usize,
            max_queued: l.max_queued,
            outbound_queue: l.outbound_queue,
            backpressure: l.queue_full == crate::config::QueueFullPolicy::Backpressure,
        }
    }
}

/// The outbox's view of the broker (passed down as `Arc<dyn OutboxContext>`).
impl OutboxContext for Broker {
    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn acks_wait_for_store(&self) -> bool {
        Broker::acks_wait_for_store(self)
    }

    fn wait_durable(&self) -> bool {
        Broker::wait_durable(self)
    }
}
