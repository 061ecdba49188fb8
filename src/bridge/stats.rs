//! One bridge's counters, bumped by its thread (and by publishers for queued messages, which
//! the queue counts itself), read by `ops` for `/metrics`, `$SYS` and `/health`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Connected to the remote (CONNACK accepted).
    pub up: AtomicBool,
    /// Index in `address` of the remote we are (or were last) connected to.
    pub address_index: AtomicU64,
    /// Connections made after the first one.
    pub reconnects: AtomicU64,
    /// Messages written to the remote (first sends; resends are counted in `resent`).
    pub sent: AtomicU64,
    pub resent: AtomicU64,
    /// Messages the remote acknowledged (PUBACK, PUBCOMP; QoS 0 counts when written).
    pub acked: AtomicU64,
    /// `in`: messages received from the remote and published locally.
    pub received: AtomicU64,
    /// `in`: messages the local ACL of `local_username` refused.
    pub denied: AtomicU64,
}

impl BridgeStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A bridge's figures at one moment (`Bridges::figures`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeFigures {
    pub name: String,
    pub up: bool,
    pub address: String,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    /// Age of the oldest queued message, seconds (0 when the queue is empty).
    pub oldest_age_secs: f64,
    pub sent: u64,
    pub resent: u64,
    pub acked: u64,
    pub received: u64,
    pub reconnects: u64,
    pub dropped_queue_full: u64,
    pub dropped_too_large: u64,
    pub dropped_refused: u64,
    pub dropped_expired: u64,
    pub dropped_denied: u64,
}
