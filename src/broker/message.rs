//! An application message as the broker routes it: shared (`Arc`) between every subscriber queue,
//! the retained store and the sink, so the payload is never copied on fan-out.

use crate::protocol::{Properties, QoS};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS the publisher used; each subscriber receives min(this, its granted QoS).
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties forwarded unchanged (topic alias already resolved and removed).
    pub properties: Properties,
    /// Client id of the publisher (None for broker-generated messages), for v5 No Local.
    pub publisher: Option<Arc<str>>,
    /// Broker receive time, nanoseconds since the Unix epoch.
    pub received_at_ns: i64,
}

pub fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX)
}
