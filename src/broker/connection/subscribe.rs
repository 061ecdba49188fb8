//! SUBSCRIBE and UNSUBSCRIBE: filter validation, ACL, the router, retained replay and the
//! SUBACK/UNSUBACK.

use super::*;
use crate::broker::topic::validate_subscription_filter;
use crate::protocol::{
    reason, Packet, Properties, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use log::{debug, info, warn};

impl Connection {
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let session = self.session().clone();
        let v5 = self.version.is_v5();
        let identifier = s.properties.subscription_identifiers.first().copied();
        let mut reason_codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            if let Err(rule) = validate_subscription_filter(&f.filter) {
                // A failed filter gets 0x80 in SUBACK, the others still apply: one code per filter
                // [MQTT-3.8.4-5] (3.1.1), [MQTT-3.8.4-6]/[MQTT-3.8.4-7] (5.0).
                debug!(
                    "client {}: subscription to {:?} refused: {rule}",
                    self.client_id, f.filter
                );
                reason_codes.push(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    0x80
                });
                continue;
            }
            let shared = crate::broker::router::parse_shared(&f.filter);
            if shared.is_some() && f.options.no_local {
                let message = "[MQTT-3.8.3-4] No Local on a shared subscription";
                return Err(violation(reason::PROTOCOL_ERROR, message));
            }
            let topic_filter = shared.map_or(f.filter.as_str(), |(_, filter)| filter);
            let options = self.subscription_options(f.options, shared.is_some());
            if !self
                .client_acl()
                .is_none_or(|acl| acl.can_subscribe(topic_filter))
            {
                // The ACL leaves the filter nothing to read: refused in SUBACK, 0x80 Failure
                // (MQTT 3.1.1 section 3.9.3) or 0x87 Not authorized (MQTT 5.0 section 3.9.3).
                info!(
                    "client {}: subscription to {:?} denied by ACL",
                    self.client_id, f.filter
                );
                reason_codes.push(if v5 { reason::NOT_AUTHORIZED } else { 0x80 });
                continue;
            }
            let shared = shared.is_some();
            // `limits.max_subscriptions_per_client`: a filter the session already holds is
            // a replacement [MQTT-3.8.4-3] and never counts twice.
            let max = self.broker.config.limits.max_subscriptions_per_client;
            if max > 0 {
                let (held, holds_filter) = {
                    let state = session.lock();
                    let held = state.subscriptions.len();
                    (held, state.subscriptions.contains_key(&f.filter))
                };
                if held >= max && !holds_filter {
                    warn!(
                        "client {}: subscription to {:?} refused: {held} subscriptions held, \
                         limits.max_subscriptions_per_client is {max}",
                        self.client_id, f.filter
                    );
                    // 0x97 Quota exceeded (MQTT 5.0 section 3.9.3); v3.1.1 only has 0x80 Failure.
                    reason_codes.push(if v5 { reason::QUOTA_EXCEEDED } else { 0x80 });
                    continue;
                }
            }
            let existed = self
                .broker
                .router
                .subscribe(&f.filter, &session, options, identifier);
            session.lock().subscribe(&f.filter, options, identifier);
            reason_codes.push(f.options.qos as u8);
            // v5 retain handling: 0 always, 1 only for a new subscription, 2 never [MQTT-3.3.1-9..11 (v5)].
            // Shared subscriptions get no retained messages (MQTT 5.0 section 4.8.2).
            let wants_retained =
                f.options.retain_handling == 0 || (f.options.retain_handling == 1 && !existed);
            if wants_retained && !shared {
                retained.push((f.filter.clone(), f.options.qos));
            }
            debug!(
                "client {} subscribed to {} (qos {})",
                self.client_id, f.filter, f.options.qos as u8
            );
        }
        // A granted subscription is stored before SUBACK confirms it.
        self.durable()?;
        // [MQTT-3.8.4-1] SUBACK, with one return code per filter [MQTT-3.8.4-5].
        self.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes,
            properties: Properties::default(),
        }))?;
        for (filter, qos) in retained {
            self.broker
                .deliver_retained(&session, &filter, qos, identifier);
        }
        Ok(())
    }

    /// The options a subscription is stored with. A bridge (CONNECT with the bridge bit) gets
    /// what a 5.0 bridge asks for itself: No Local, so the messages it forwards to us are not
    /// echoed back to it (a loop), and Retain As Published, so a retained message it forwards
    /// arrives on its side retained too (mosquitto's `is_bridge`). No Local is left off a
    /// shared subscription, where it is a protocol error [MQTT-3.8.3-4].
    fn subscription_options(
        &self,
        requested: SubscriptionOptions,
        shared: bool,
    ) -> SubscriptionOptions {
        if !self.bridge {
            return requested;
        }
        SubscriptionOptions {
            no_local: !shared,
            retain_as_published: true,
            ..requested
        }
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Exit> {
        let session = self.session().clone();
        let mut reason_codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            if validate_subscription_filter(filter).is_err() {
                // v5 0x8F "Topic Filter invalid" (section 3.11.2.1): no subscription can have
                // this filter, so there is nothing to remove.
                reason_codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let existed = self.broker.router.unsubscribe(filter, &session);
            session.lock().unsubscribe(filter);
            reason_codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.durable()?;
        // [MQTT-3.10.4-4] UNSUBACK even when nothing was removed.
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes,
            properties: Properties::default(),
        }))
    }
}
