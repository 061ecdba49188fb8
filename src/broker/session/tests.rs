//! Unit tests of `Session`'s own bookkeeping: queueing, acks, expiry, ownership. They build a
//! session without a connection (no `Link`: an `Outbox` needs a socket and a broker), so what
//! needs a connected client (the window filling on delivery, resends on attach) is covered by
//! the integration tests instead. Being a child module, they may set up in-flight messages
//! directly, as a connection's deliveries would have left them.

use super::delivery::DEFERRED;
use super::state::{next_seq, too_large, Inflight};
use super::*;
use crate::broker::message::{Message, Route};
use crate::broker::outbox::Outbox;
use crate::broker::security::SecurityFiles;
use crate::broker::stats::Stats;
use crate::protocol::{Packet, ProtocolVersion, QoS};
use crate::protocol::{Properties, SubscriptionOptions};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn limits(max_inflight: usize, max_queued: usize) -> SessionLimits {
    SessionLimits {
        max_inflight,
        max_queued,
        outbound_queue: 100,
        backpressure: false,
    }
}

fn session_owned_by(owner: Option<&str>, expiry_interval: u32) -> SessionRef {
    SessionHandle::new(
        "client".into(),
        expiry_interval,
        limits(2, 3),
        owner.map(Arc::from),
    )
}

fn message(topic: &str, qos: QoS, expiry_secs: Option<u32>) -> Arc<Message> {
    let properties = Properties {
        message_expiry_interval: expiry_secs,
        ..Default::default()
    };
    Arc::new(Message::new(
        topic.into(),
        Bytes::from_static(b"payload"),
        qos,
        false,
        properties.into(),
        None,
        super::super::message::now_ns(),
    ))
}

fn route(qos: QoS) -> Route {
    Route {
        qos,
        ..Default::default()
    }
}

fn shared_route(qos: QoS) -> Route {
    Route {
        qos,
        shared_group: Some("$share/g/t".into()),
        ..Default::default()
    }
}

/// Put a message in flight as `fill_window` would for a connected client.
fn put_inflight(s: &mut Session, packet_id: u16, route: Route) {
    s.inflight.push_back(Inflight {
        seq: next_seq(),
        packet_id,
        message: message("t", route.qos, None),
        route,
        released: false,
        awaiting_resend: false,
    });
}

#[test]
fn offline_session_queues_qos1_and_qos2_messages() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    s.deliver(
        &message("a", QoS::AtLeastOnce, None),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    s.deliver(
        &message("b", QoS::ExactlyOnce, None),
        route(QoS::ExactlyOnce),
        "client",
        &stats,
    );
    assert_eq!(s.queued_len(), 2);
    // Without a connection nothing is sent, so nothing is in flight.
    assert_eq!(s.inflight_len(), 0);
    let topics: Vec<&str> = s.queued.iter().map(|q| &*q.message.topic).collect();
    assert_eq!(topics, ["a", "b"], "queued in delivery order");
    assert_eq!(Stats::get(&stats.dropped_queue_full), 0);
}

#[test]
fn offline_session_drops_messages_beyond_max_queued_and_counts_them() {
    let h = session_owned_by(None, NEVER_EXPIRES); // max_queued 3
    let stats = Stats::default();
    let mut s = h.lock();
    for i in 0..5 {
        let m = message(&format!("t/{i}"), QoS::AtLeastOnce, None);
        s.deliver(&m, route(QoS::AtLeastOnce), "client", &stats);
    }
    assert_eq!(s.queued_len(), 3);
    assert!(s.backlog_full());
    // The newest are dropped; the oldest stay.
    let topics: Vec<&str> = s.queued.iter().map(|q| &*q.message.topic).collect();
    assert_eq!(topics, ["t/0", "t/1", "t/2"]);
    assert_eq!(Stats::get(&stats.dropped_queue_full), 2);
    assert_eq!(s.dropped, 2);
}

#[test]
fn backpressure_mode_drops_at_max_queued_while_offline() {
    // The overflow allowance of `backpressure` is only for a connected client's publishers.
    let mut l = limits(2, 3);
    l.backpressure = true;
    let h = SessionHandle::new("client".into(), NEVER_EXPIRES, l, None);
    let stats = Stats::default();
    let mut s = h.lock();
    for _ in 0..4 {
        s.deliver(
            &message("t", QoS::ExactlyOnce, None),
            route(QoS::ExactlyOnce),
            "client",
            &stats,
        );
    }
    assert_eq!(s.queued_len(), 3);
    assert_eq!(Stats::get(&stats.dropped_queue_full), 1);
}

#[test]
fn offline_session_does_not_queue_qos0_messages() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    s.deliver(
        &message("a", QoS::AtMostOnce, None),
        route(QoS::AtMostOnce),
        "client",
        &stats,
    );
    // A QoS 1 publish delivered at granted QoS 0 is not queued either.
    s.deliver(
        &message("b", QoS::AtLeastOnce, None),
        route(QoS::AtMostOnce),
        "client",
        &stats,
    );
    assert_eq!(s.queued_len(), 0);
    // Not queued is not a drop: nothing is counted.
    assert_eq!(Stats::get(&stats.dropped_queue_full), 0);
    assert_eq!(Stats::get(&stats.dropped_slow_subscriber), 0);
    assert_eq!(s.dropped, 0);
}

#[test]
fn expired_message_is_not_queued() {
    // [MQTT-3.3.2-5] a message whose expiry interval has passed is not delivered. An interval
    // of 0 s expires at once.
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    s.deliver(
        &message("gone", QoS::AtLeastOnce, Some(0)),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    s.deliver(
        &message("kept", QoS::AtLeastOnce, Some(3600)),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    let topics: Vec<&str> = s.queued.iter().map(|q| &*q.message.topic).collect();
    assert_eq!(topics, ["kept"]);
    assert_eq!(Stats::get(&stats.dropped_queue_full), 0);
}

#[test]
fn ended_session_ignores_deliveries() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    s.ended = true;
    s.deliver(
        &message("a", QoS::AtLeastOnce, None),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    assert_eq!(s.queued_len(), 0);
    assert_eq!(Stats::get(&stats.dropped_queue_full), 0);
}

#[test]
fn offline_session_keeps_queued_messages_out_of_the_inflight_window() {
    // The window has room (max_inflight 2), but nothing moves into it without a client: a
    // completed ack while offline does not send anything.
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    put_inflight(&mut s, 7, route(QoS::AtLeastOnce));
    s.deliver(
        &message("a", QoS::AtLeastOnce, None),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    assert!(s.puback(7));
    assert_eq!(s.inflight_len(), 0);
    assert_eq!(s.queued_len(), 1);
}

#[test]
fn puback_releases_the_inflight_slot_of_a_qos1_message() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    put_inflight(&mut s, 1, route(QoS::AtLeastOnce));
    put_inflight(&mut s, 2, route(QoS::AtLeastOnce));
    assert_eq!(s.inflight_len(), 2);
    assert!(s.puback(2));
    assert_eq!(s.inflight_len(), 1);
    assert_eq!(s.inflight[0].packet_id, 1);
    // A second PUBACK for the same id, or one for an id never sent, is unknown.
    assert!(!s.puback(2));
    assert!(!s.puback(99));
    assert_eq!(s.inflight_len(), 1);
}

#[test]
fn acks_of_the_wrong_qos_do_not_complete_a_message() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    put_inflight(&mut s, 1, route(QoS::AtLeastOnce));
    put_inflight(&mut s, 2, route(QoS::ExactlyOnce));
    // PUBACK is the QoS 1 ack, PUBREC/PUBCOMP the QoS 2 ones [MQTT-4.3.2, MQTT-4.3.3].
    assert!(!s.puback(2));
    assert!(!s.pubrec(1));
    assert!(!s.pubcomp(1));
    assert_eq!(s.inflight_len(), 2);
}

#[test]
fn qos2_message_holds_its_slot_from_pubrec_until_pubcomp() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    put_inflight(&mut s, 5, route(QoS::ExactlyOnce));
    assert!(s.pubrec(5));
    // [MQTT-4.3.3-1] after PUBREC only PUBREL is resent; the slot stays taken until PUBCOMP
    // [MQTT-3.3.4-9 (v5)].
    assert!(s.inflight[0].released);
    assert_eq!(s.inflight_len(), 1);
    // A repeated PUBREC is still known (the client may resend it).
    assert!(s.pubrec(5));
    assert!(s.pubcomp(5));
    assert_eq!(s.inflight_len(), 0);
    assert!(!s.pubcomp(5));
    assert!(!s.pubrec(5));
}

#[test]
fn packet_ids_skip_those_in_flight_and_wrap_past_zero() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    put_inflight(&mut s, 1, route(QoS::AtLeastOnce));
    put_inflight(&mut s, 2, route(QoS::AtLeastOnce));
    assert_eq!(s.allocate_packet_id(), 3);
    // Packet id 0 is not allowed [MQTT-2.2.1-3]: after 65535 comes 1, which is in use here.
    s.next_packet_id = u16::MAX;
    assert_eq!(s.allocate_packet_id(), u16::MAX);
    assert_eq!(s.allocate_packet_id(), 3);
}

#[test]
fn connected_session_never_expires() {
    let h = session_owned_by(None, 0);
    let s = h.lock();
    // A new session counts as connected until `detach` sets `disconnected_at`.
    assert!(!s.is_expired(Instant::now() + Duration::from_secs(1_000_000)));
}

#[test]
fn session_expires_once_its_interval_passed_since_disconnection() {
    // [MQTT-3.1.2-23 (v5)] the session is kept for the Session Expiry Interval after the
    // network connection closes.
    let h = session_owned_by(None, 10);
    let mut s = h.lock();
    let at = Instant::now();
    s.disconnected_at = Some(at);
    assert!(!s.is_expired(at));
    assert!(!s.is_expired(at + Duration::from_secs(9)));
    assert!(s.is_expired(at + Duration::from_secs(10)));
}

#[test]
fn session_with_zero_expiry_interval_expires_at_disconnection() {
    let h = session_owned_by(None, 0);
    let mut s = h.lock();
    let at = Instant::now();
    s.disconnected_at = Some(at);
    assert!(s.is_expired(at));
}

#[test]
fn session_with_never_expires_interval_is_kept() {
    // 0xFFFFFFFF: the session does not expire [MQTT-3.1.2-11 (v5)].
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    let at = Instant::now();
    s.disconnected_at = Some(at);
    assert!(!s.is_expired(at + Duration::from_secs(u32::MAX as u64 + 1)));
}

#[test]
fn only_the_owner_may_resume_a_session() {
    let h = session_owned_by(Some("alice"), NEVER_EXPIRES);
    let s = h.lock();
    let alice: Arc<str> = "alice".into();
    let bob: Arc<str> = "bob".into();
    assert!(s.may_resume(Some(&alice)));
    assert!(!s.may_resume(Some(&bob)));
    assert!(
        !s.may_resume(None),
        "an anonymous client may not take alice's session"
    );
    assert_eq!(s.owner(), &SessionOwner::Identity(Some(alice)));
}

#[test]
fn anonymous_session_may_only_be_resumed_anonymously() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let s = h.lock();
    let alice: Arc<str> = "alice".into();
    assert!(s.may_resume(None));
    assert!(!s.may_resume(Some(&alice)));
}

#[test]
fn session_without_recorded_owner_may_be_resumed_by_anyone() {
    // As restored from a store written before owners were recorded.
    let s = Session::new("client".into(), NEVER_EXPIRES, limits(2, 3));
    let alice: Arc<str> = "alice".into();
    assert_eq!(s.owner(), &SessionOwner::Unrecorded);
    assert!(s.may_resume(Some(&alice)));
    assert!(s.may_resume(None));
}

#[test]
fn resent_incoming_qos2_publish_is_not_routed_again_until_pubrel() {
    // Exactly once: a PUBLISH resent with the same packet id before PUBREL is acknowledged
    // but not delivered onwards again [MQTT-4.3.3-3 / MQTT-4.3.3-10 (v5)].
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    assert!(s.receive_qos2(10));
    assert!(!s.receive_qos2(10));
    assert!(s.receive_qos2(11));
    assert_eq!(s.incoming_qos2_len(), 2);
    assert!(s.release_qos2(10));
    assert!(!s.release_qos2(10), "a second PUBREL is for an unknown id");
    assert_eq!(s.incoming_qos2_len(), 1);
    // Once released, the id may carry a new message.
    assert!(s.receive_qos2(10));
}

#[test]
fn subscriptions_keep_their_identifiers() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    let opts = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    s.subscribe("a/#", opts, Some(7));
    s.subscribe("b", opts, None);
    let mut list = s.subscription_list();
    list.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        list,
        vec![
            ("a/#".to_string(), opts, Some(7)),
            ("b".to_string(), opts, None)
        ]
    );
    // Subscribing again without an identifier removes the old one.
    s.subscribe("a/#", opts, None);
    assert_eq!(
        s.subscription_list()
            .iter()
            .find(|x| x.0 == "a/#")
            .map(|x| x.2),
        Some(None)
    );
    s.unsubscribe("a/#");
    s.unsubscribe("never-subscribed");
    assert_eq!(s.subscription_list().len(), 1);
}

#[test]
fn without_acl_file_no_queued_message_is_discarded() {
    let security = SecurityFiles::load(None, None).expect("no files to load");
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    s.deliver(
        &message("a", QoS::AtLeastOnce, None),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    put_inflight(&mut s, 1, route(QoS::AtLeastOnce));
    assert_eq!(s.discard_unreadable("client", None, &security), 0);
    assert_eq!(s.queued_len(), 1);
    assert_eq!(s.inflight_len(), 1);
    assert!(s.can_receive("client", "a", &security));
}

#[test]
fn shared_messages_move_on_except_qos2_already_sent() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let stats = Stats::default();
    let mut s = h.lock();
    s.deliver(
        &message("shared", QoS::AtLeastOnce, None),
        shared_route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    s.deliver(
        &message("own", QoS::AtLeastOnce, None),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    put_inflight(&mut s, 1, shared_route(QoS::AtLeastOnce));
    put_inflight(&mut s, 2, shared_route(QoS::ExactlyOnce));
    put_inflight(&mut s, 3, route(QoS::AtLeastOnce));
    let taken = s.take_shared_messages();
    assert_eq!(
        taken.len(),
        2,
        "the queued shared message and the shared QoS 1 in flight"
    );
    assert!(taken.iter().all(|(_, r)| r.shared_group.is_some()));
    // A sent QoS 2 message finishes with this client [MQTT-4.8.2-5 (v5)].
    let left: Vec<u16> = s.inflight.iter().map(|i| i.packet_id).collect();
    assert_eq!(left, [2, 3]);
    assert_eq!(s.queued_len(), 1);
    assert_eq!(&*s.queued[0].message.topic, "own");
}

#[test]
fn detach_ignores_a_connection_the_session_is_not_attached_to() {
    let h = session_owned_by(None, NEVER_EXPIRES);
    let mut s = h.lock();
    assert!(!s.is_attached_to(1));
    assert!(!s.detach(1));
    assert!(s.disconnected_at.is_none());
    assert!(s.take_link().is_none());
}

#[test]
fn reconnection_clears_the_disconnection_time() {
    let h = session_owned_by(None, 10);
    let mut s = h.lock();
    s.disconnected_at = Some(Instant::now());
    // Without a journal there is no record to wait for.
    assert!(!s.note_reconnected());
    assert!(s.disconnected_at.is_none());
    assert!(!s.is_expired(Instant::now() + Duration::from_secs(60)));
    assert!(s.end_journal().is_none());
    assert!(!s.has_journal());
}

#[test]
fn message_larger_than_client_maximum_packet_size_is_too_large() {
    // [MQTT-3.1.2-25] such a message is not sent to the client.
    let m = message("topic", QoS::AtLeastOnce, None);
    let r = route(QoS::AtLeastOnce);
    assert!(!too_large(None, &m, &r));
    assert!(too_large(Some(10), &m, &r));
    assert!(!too_large(Some(1000), &m, &r));
}

// --- With a connection -------------------------------------------------------------------
//
// A `Link` needs an `Outbox`, which needs a socket and a broker: a local socket pair and a
// broker without sink or store. What the session sends is captured through the session's own
// deferral (`DEFERRED`, as `defer_sends` uses it), so nothing is written to the socket and the
// tests see exactly the packets handed to the connection, in order.

struct TestLink {
    link: Link,
    /// The client's end, kept open for the test's duration.
    _peer: std::os::unix::net::UnixStream,
}

fn test_link(connection_id: u64, max_packet_size: Option<u32>) -> TestLink {
    let sink = crate::sink::Sink::start(&Default::default()).expect("disabled sink");
    let security = SecurityFiles::load(None, None).expect("no files");
    let broker = super::super::Broker::new(crate::config::Config::default(), sink, security);
    let (ours, peer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let outbox = Outbox::new(
        Arc::new(super::super::socket::Socket::Bridged(ours)),
        ProtocolVersion::V5,
        0,
        broker,
        connection_id,
    );
    TestLink {
        link: Link {
            connection_id,
            version: ProtocolVersion::V5,
            outbox,
            max_packet_size,
            username: None,
            owns_session: Arc::new(AtomicBool::new(true)),
        },
        _peer: peer,
    }
}

/// Run `f`, returning what the session handed to its connection meanwhile.
fn captured<T>(f: impl FnOnce() -> T) -> (T, Vec<Outbound>) {
    let outer = DEFERRED.with(|d| d.borrow_mut().replace(Vec::new()));
    let out = f();
    let sends = DEFERRED.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer));
    let packets = sends
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    (out, packets)
}

/// (packet id, dup, topic) of each PUBLISH in `sent`.
fn publishes(sent: &[Outbound]) -> Vec<(u16, bool, String)> {
    sent.iter()
        .filter_map(|o| match o {
            Outbound::Publish {
                packet_id,
                dup,
                message,
                ..
            } => Some((*packet_id, *dup, message.topic.to_string())),
            _ => None,
        })
        .collect()
}

fn connack() -> Outbound {
    Outbound::Packet(Box::new(Packet::PingResp))
}

#[test]
fn inflight_window_fills_up_to_max_inflight_and_puback_moves_it_on() {
    // [MQTT-3.3.4-7 (v5)] no more QoS > 0 PUBLISHes unacknowledged than the Receive Maximum.
    let l = limits(2, 10);
    let h = SessionHandle::new("client".into(), NEVER_EXPIRES, l, None);
    let stats = Stats::default();
    let tl = test_link(1, None);
    let mut s = h.lock();
    let ((), sent) = captured(|| {
        assert!(s.attach(tl.link.clone(), l, connack()).is_none());
        for i in 0..4 {
            let m = message(&format!("t/{i}"), QoS::AtLeastOnce, None);
            s.deliver(&m, route(QoS::AtLeastOnce), "client", &stats);
        }
    });
    assert_eq!(
        publishes(&sent),
        [(1, false, "t/0".into()), (2, false, "t/1".into())]
    );
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 2));
    assert!(take_fed_backlog(), "queued behind a full window");
    let (known, sent) = captured(|| s.puback(1));
    assert!(known);
    assert_eq!(publishes(&sent), [(3, false, "t/2".into())]);
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 1));
}

#[test]
fn qos2_slot_is_freed_by_pubcomp_not_by_pubrec() {
    let l = limits(1, 10);
    let h = SessionHandle::new("client".into(), NEVER_EXPIRES, l, None);
    let stats = Stats::default();
    let tl = test_link(1, None);
    let mut s = h.lock();
    let ((), sent) = captured(|| {
        s.attach(tl.link.clone(), l, connack());
        for t in ["first", "second"] {
            let m = message(t, QoS::ExactlyOnce, None);
            s.deliver(&m, route(QoS::ExactlyOnce), "client", &stats);
        }
    });
    assert_eq!(publishes(&sent), [(1, false, "first".into())]);
    // [MQTT-3.3.4-9 (v5)] a PUBREC'd message still counts against the Receive Maximum.
    let (known, sent) = captured(|| s.pubrec(1));
    assert!(known);
    assert!(publishes(&sent).is_empty());
    assert_eq!((s.inflight_len(), s.queued_len()), (1, 1));
    let (known, sent) = captured(|| s.pubcomp(1));
    assert!(known);
    assert_eq!(publishes(&sent), [(2, false, "second".into())]);
}

#[test]
fn connected_session_sends_qos0_without_queueing_it() {
    let l = limits(2, 10);
    let h = SessionHandle::new("client".into(), NEVER_EXPIRES, l, None);
    let stats = Stats::default();
    let tl = test_link(1, None);
    let mut s = h.lock();
    let ((), sent) = captured(|| {
        s.attach(tl.link.clone(), l, connack());
        let m = message("q0", QoS::AtMostOnce, None);
        s.deliver(&m, route(QoS::AtMostOnce), "client", &stats);
    });
    assert_eq!(publishes(&sent), [(0, false, "q0".into())]);
    assert_eq!((s.inflight_len(), s.queued_len()), (0, 0));
}

#[test]
fn message_that_expired_while_queued_is_dropped_instead_of_sent() {
    // [MQTT-3.3.2-5] queued while the client was away, expired before it came back.
    let l = limits(2, 10);
    let h = SessionHandle::new("client".into(), 60, l, None);
    let stats = Stats::default();
    let mut s = h.lock();
    for t in ["stale", "fresh"] {
        let m = message(t, QoS::AtLeastOnce, Some(3600));
        s.deliver(&m, route(QoS::AtLeastOnce), "client", &stats);
    }
    // Its deadline passes while it waits (rather than sleeping an expiry interval away).
    let stale = (*s.queued[0].message).clone();
    s.queued[0].message = Arc::new(Message {
        expires_at: Some(Instant::now()),
        ..stale
    });
    let tl = test_link(1, None);
    let (_, sent) = captured(|| s.attach(tl.link.clone(), l, connack()));
    assert_eq!(publishes(&sent), [(1, false, "fresh".into())]);
    assert_eq!((s.inflight_len(), s.queued_len()), (1, 0));
}

#[test]
fn queued_message_too_large_for_the_new_connection_is_dropped() {
    // [MQTT-3.1.2-25] queued before the client's Maximum Packet Size was known.
    let l = limits(2, 10);
    let h = SessionHandle::new("client".into(), 60, l, None);
    let stats = Stats::default();
    let mut s = h.lock();
    s.deliver(
        &message("t", QoS::AtLeastOnce, None),
        route(QoS::AtLeastOnce),
        "client",
        &stats,
    );
    let tl = test_link(1, Some(10));
    let (_, sent) = captured(|| s.attach(tl.link.clone(), l, connack()));
    assert!(publishes(&sent).is_empty());
    assert_eq!((s.inflight_len(), s.queued_len()), (0, 0));
}

#[test]
fn reattach_resends_unacknowledged_publishes_with_dup_and_pubrel_for_pubrecd() {
    // [MQTT-4.4.0-1] on a resumed session unacknowledged PUBLISHes are resent with their
    // original packet ids (DUP set), and PUBRELs for those already PUBREC'd.
    let l = limits(5, 10);
    let h = SessionHandle::new("client".into(), NEVER_EXPIRES, l, None);
    let mut s = h.lock();
    put_inflight(&mut s, 7, route(QoS::AtLeastOnce));
    put_inflight(&mut s, 8, route(QoS::ExactlyOnce));
    assert!(s.pubrec(8));
    let tl = test_link(1, None);
    let (_, sent) = captured(|| s.attach(tl.link.clone(), l, connack()));
    assert!(matches!(&sent[0], Outbound::Packet(p) if matches!(**p, Packet::PingResp)));
    assert!(
        matches!(&sent[1], Outbound::Packet(p) if matches!(&**p, Packet::PubRel(a) if a.packet_id == 8))
    );
    assert_eq!(publishes(&sent), [(7, true, "t".into())]);
    assert_eq!(sent.len(), 3);
}

#[test]
fn takeover_returns_the_old_connection_released() {
    let l = limits(2, 10);
    let h = SessionHandle::new("client".into(), 60, l, None);
    let mut s = h.lock();
    let first = test_link(1, None);
    let second = test_link(2, None);
    let (old, _) = captured(|| {
        assert!(s.attach(first.link.clone(), l, connack()).is_none());
        s.attach(second.link.clone(), l, connack())
    });
    let old = old.expect("the first connection");
    assert_eq!(old.connection_id, 1);
    // Its reader sees it no longer owns the session.
    assert!(!first.link.owns_session.load(Ordering::Acquire));
    assert!(second.link.owns_session.load(Ordering::Acquire));
    assert!(s.is_attached_to(2));
    // The replaced connection's late disconnect does not detach the new one.
    assert!(!s.detach(1));
    assert!(s.detach(2));
    assert!(s.disconnected_at.is_some());
    assert!(!second.link.owns_session.load(Ordering::Acquire));
}
