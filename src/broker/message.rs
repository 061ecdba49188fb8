//! An application message as the broker routes it: shared (`Arc`) between every subscriber queue,
//! the retained store and the sink, so the payload is never copied on fan-out.

use crate::protocol::{PublishProperties, QoS};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS the publisher used; each subscriber receives min(this, its granted QoS).
    pub qos: QoS,
    pub retain: bool,
    /// v5 properties forwarded unchanged (topic alias already resolved and removed; the
    /// message expiry interval is rewritten per delivery from `expires_at`).
    pub properties: PublishProperties,
    /// Client id of the publisher (None for broker-generated messages), for v5 No Local.
    pub publisher: Option<Arc<str>>,
    /// Broker receive time, nanoseconds since the Unix epoch.
    pub received_at_ns: i64,
    /// v5 Message Expiry Interval as a deadline; None = never expires.
    pub expires_at: Option<Instant>,
}

impl Message {
    /// Build a message received at `received_at_ns` (ns since the Unix epoch, see `now_ns`),
    /// turning a v5 Message Expiry Interval into a deadline.
    pub fn new(
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: PublishProperties,
        publisher: Option<Arc<str>>,
        received_at_ns: i64,
    ) -> Message {
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| Instant::now() + Duration::from_secs(secs as u64));
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            publisher,
            received_at_ns,
            expires_at,
        }
    }

    /// The same message published now: fresh receive time and expiry deadline. A will sent
    /// after its Will Delay Interval is published then, and its Message Expiry Interval counts
    /// from that moment (section 3.1.3.2.4).
    pub fn published_now(&self) -> Message {
        Message::new(
            self.topic.clone(),
            self.payload.clone(),
            self.qos,
            self.retain,
            self.properties.clone(),
            self.publisher.clone(),
            now_ns(),
        )
    }

    /// [MQTT-3.3.2-5] an expired message must not be delivered.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| Instant::now() >= at)
    }

    /// [MQTT-3.3.2-6] the interval forwarded is the original one minus the time the message
    /// waited in the broker. Only whole seconds waited are subtracted (as mosquitto, EMQX and
    /// FlashMQ do): a message forwarded after a few milliseconds keeps its 2000, not 1999. That
    /// is the time left rounded up; 1 at least, as an expired message is never sent.
    pub fn remaining_expiry_secs(&self) -> Option<u32> {
        self.expires_at
            .map(|at| remaining_whole_secs(at.saturating_duration_since(Instant::now())))
    }
}

/// `left` rounded up to whole seconds, within 1..=u32::MAX.
fn remaining_whole_secs(left: Duration) -> u32 {
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    secs.clamp(1, u32::MAX as u64) as u32
}

pub fn now_ns() -> i64 {
    // SystemTime directly: this runs for every publish, and chrono's Utc::now() also works
    // out a calendar date that is not needed here.
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |ns| -ns),
    }
}

/// How one message travels to one session.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// RETAIN flag to send.
    pub retain: bool,
    /// v5 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Set when delivered through a shared subscription: `$share/{group}/{filter}`.
    pub shared_group: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_forwarded_subtracts_whole_seconds_waited() {
        // 2000 s interval: after 3 ms 1999.997 s are left, forwarded as 2000 [MQTT-3.3.2-6].
        let left = |ms: u64| remaining_whole_secs(Duration::from_millis(ms));
        assert_eq!(left(1_999_997), 2000);
        assert_eq!(left(2_000_000), 2000);
        // 1.5 s waited: one whole second subtracted.
        assert_eq!(left(1_998_500), 1999);
        assert_eq!(left(1), 1);
        assert_eq!(left(0), 1);
    }

    #[test]
    fn fresh_message_keeps_its_expiry_interval() {
        let properties = crate::protocol::Properties {
            message_expiry_interval: Some(2000),
            ..Default::default()
        };
        let m = Message::new(
            "a".into(),
            Bytes::new(),
            QoS::AtLeastOnce,
            false,
            properties.into(),
            None,
            now_ns(),
        );
        assert_eq!(m.remaining_expiry_secs(), Some(2000));
    }
}
