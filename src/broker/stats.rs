//! Broker-wide counters: cheap relaxed atomics that the broker's threads bump. The ops layer
//! above reads them all at once (`ops::snapshot::Snapshot`) for `$SYS` and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub clients_connected: AtomicU64,
    pub clients_maximum: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// PUBLISHes refused by the ACL (or to $SYS).
    pub publish_denied: AtomicU64,
    /// Persistent sessions ended because their expiry interval passed.
    pub sessions_expired: AtomicU64,
    /// QoS 1/2 messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages dropped because a subscriber's outbound buffer was full (slow reader).
    pub dropped_slow_subscriber: AtomicU64,
    /// Retained PUBLISHes to a new topic not stored because the retained store was full
    /// (`limits.max_retained_messages` / `max_retained_bytes`); they were still routed.
    pub retained_refused: AtomicU64,
    /// Connected subscribers disconnected because they completed nothing for
    /// `limits.stalled_subscriber_secs` while publishers waited on their full queue.
    pub stalled_subscribers: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn client_disconnected(&self) {
        self.clients_connected.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maximum_follows_the_peak_of_connected_clients() {
        let s = Stats::default();
        s.client_connected();
        s.client_connected();
        s.client_disconnected();
        s.client_connected();
        assert_eq!(Stats::get(&s.clients_connected), 2);
        assert_eq!(Stats::get(&s.clients_maximum), 2);
        assert_eq!(Stats::get(&s.connections_total), 3);
    }
}
