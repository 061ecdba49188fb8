//! Flow control towards connected subscribers (`limits.queue_full`, issue 16): with the default
//! `backpressure` a subscriber's full queue stops its publishers instead of dropping what they
//! were already acknowledged; `drop` keeps the old behaviour; a stalled subscriber is
//! disconnected so it cannot hold the broker; a client feeding its own subscription, and two
//! clients feeding each other, do not deadlock.

use crate::common;
use crate::common::ops as ops_support;

use common::bench::n;
use common::raw::{self, RawClient, PUBACK, PUBLISH};
use common::Broker;
use ops_support::{metrics_addr, scrape};
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The load: 8 QoS 1 publishers running flat out (each with up to 1,000 messages
/// awaiting PUBACK, never held back by the subscriber) into one QoS 1 subscriber, for 3 s or
/// 100,000 messages each. mqflux-bench counts, by sequence number, the messages acknowledged
/// to a publisher that the subscriber never got (`lost`).
fn open_loop_fan_in(broker: &Broker) -> Value {
    let args = ["fan-in", "--open-loop", "--publishers", "8", "--qos", "1"];
    let bounds = [
        "--window",
        "1000",
        "--duration",
        "3",
        "--messages",
        "100000",
    ];
    common::bench::run(broker.port, &[&args[..], &bounds[..]].concat()).1
}

const METRICS: &str = "[metrics]\nbind = \"127.0.0.1:0\"\n";

#[test]
fn flat_out_qos1_publishers_lose_no_acknowledged_message_with_default_backpressure() {
    // The same small queue as the `drop` test below, which shows that this load overflows it:
    // `drop` is what every connected subscriber got before flow control.
    let broker = Broker::with_config(&format!("[limits]\nmax_queued = 100\n{METRICS}"));
    let v = open_loop_fan_in(&broker);
    let acked = n(&v, "acked");
    assert!(acked >= 8000, "the load ran: {v}");
    assert_eq!(n(&v, "lost"), 0, "acknowledged but never delivered: {v}");
    assert_eq!(n(&v, "received"), n(&v, "sent"), "{v}");
    assert!(
        v.get("stalled").is_none() && v.get("errors").is_none(),
        "{v}"
    );
    let m = scrape(metrics_addr(&broker));
    assert_eq!(
        m["mqflux_publish_messages_dropped_total{reason=\"queue_full\"}"],
        0.0
    );
}

#[test]
fn queue_full_drop_still_drops_for_a_slow_subscriber_and_counts_it() {
    let broker = Broker::with_config(&format!(
        "[limits]\nmax_queued = 100\nqueue_full = \"drop\"\n{METRICS}"
    ));
    let v = open_loop_fan_in(&broker);
    let lost = n(&v, "lost");
    assert!(lost > 0, "drop mode drops behind a slow subscriber: {v}");
    let m = scrape(metrics_addr(&broker));
    let dropped = m["mqflux_publish_messages_dropped_total{reason=\"queue_full\"}"];
    assert!(dropped >= lost as f64, "{dropped} counted, {lost} lost");
    broker.wait_for_log(&["message queue full (100 messages)", "dropping message"]);
}

/// Reads and acknowledges every PUBLISH on its own thread; returns the payloads it got once
/// `count` distinct ones arrived or `timeout` passed.
fn acking_subscriber(
    mut c: RawClient,
    count: usize,
    timeout: Duration,
) -> std::thread::JoinHandle<HashSet<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut got = HashSet::new();
        let deadline = Instant::now() + timeout;
        while got.len() < count && Instant::now() < deadline {
            let Ok(p) = c.read_packet(Duration::from_millis(200)) else {
                continue;
            };
            if p.kind() == PUBLISH {
                let p = p.publish();
                c.send(&raw::puback(p.packet_id));
                got.insert(p.payload);
            }
        }
        got
    })
}

/// Write `count` QoS 1 PUBLISHes to `topic` on a thread of its own (`writer` is shared with
/// whoever else writes on the connection).
fn publish_all(
    writer: Arc<Mutex<TcpStream>>,
    topic: &'static str,
    count: u16,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for i in 1..=count {
            let p = raw::publish(topic, format!("m{i}").as_bytes(), 1, i, false, false);
            if writer.lock().unwrap().write_all(&p).is_err() {
                return;
            }
        }
    })
}

#[test]
fn stalled_subscriber_is_disconnected_and_publishers_and_other_subscribers_go_on() {
    let broker = Broker::with_config(&format!(
        "[limits]\nmax_queued = 50\nstalled_subscriber_secs = 2\n{METRICS}"
    ));
    // Connected, subscribed, and then never reads its socket again.
    let mut stalled = RawClient::connected(broker.addr(), "stalled");
    stalled.subscribe(1, &[("flow/#", 1)]);
    let mut healthy = RawClient::connected(broker.addr(), "healthy");
    healthy.subscribe(1, &[("flow/#", 1)]);
    const N: u16 = 2000;
    let healthy = acking_subscriber(healthy, N as usize, Duration::from_secs(60));

    let mut publisher = RawClient::connected(broker.addr(), "publisher");
    let writer = Arc::new(Mutex::new(publisher.stream.try_clone().unwrap()));
    let started = Instant::now();
    let writing = publish_all(writer, "flow/t", N);
    let mut acked = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < N as usize && Instant::now() < deadline {
        if let Ok(p) = publisher.read_packet(Duration::from_millis(200)) {
            if p.kind() == PUBACK {
                acked.insert(p.packet_id());
            }
        }
    }
    writing.join().unwrap();
    assert_eq!(acked.len(), N as usize, "every PUBLISH acknowledged");
    // The publisher was held back while the stalled client still counted as a subscriber.
    assert!(started.elapsed() >= Duration::from_secs(2));
    let line = broker.wait_for_log(&["client stalled:", "stalled_subscriber_secs"]);
    assert!(line.contains("completed no message for 2s"), "{line}");
    assert_eq!(healthy.join().unwrap().len(), N as usize, "healthy got all");
    // Closed by the broker (after the deliveries it had written before it stalled).
    stalled.read_until_closed(Duration::from_secs(10));
    let m = scrape(metrics_addr(&broker));
    assert_eq!(m["mqflux_stalled_subscribers_disconnected_total"], 1.0);
}

/// Reads PUBACKs and PUBLISHes (acknowledging those through `writer`) until
/// `done(pubacks, deliveries, quiet)` (quiet: nothing came for 200 ms) or `timeout` passed;
/// returns (PUBACKs, distinct PUBLISH payloads).
fn read_until(
    c: &mut RawClient,
    writer: &Mutex<TcpStream>,
    timeout: Duration,
    done: &dyn Fn(usize, usize, bool) -> bool,
) -> (usize, HashSet<Vec<u8>>) {
    let (mut acked, mut got) = (HashSet::new(), HashSet::new());
    let deadline = Instant::now() + timeout;
    let mut quiet = false;
    while !done(acked.len(), got.len(), quiet) && Instant::now() < deadline {
        let Ok(p) = c.read_packet(Duration::from_millis(200)) else {
            quiet = true;
            continue;
        };
        quiet = false;
        match p.kind() {
            PUBACK => {
                acked.insert(p.packet_id());
            }
            PUBLISH => {
                let p = p.publish();
                let _ = writer.lock().unwrap().write_all(&raw::puback(p.packet_id));
                got.insert(p.payload);
            }
            _ => {}
        }
    }
    (acked.len(), got)
}

#[test]
fn client_publishing_into_its_own_full_subscription_does_not_deadlock() {
    let broker = Broker::with_config(&format!("[limits]\nmax_queued = 20\n{METRICS}"));
    let mut me = RawClient::connected(broker.addr(), "me");
    me.subscribe(1, &[("me/#", 1)]);
    let writer = Arc::new(Mutex::new(me.stream.try_clone().unwrap()));
    // Its reader reads its PUBACKs too: it must not wait for room in its own queue.
    const N: u16 = 1000;
    let writing = publish_all(writer.clone(), "me/t", N);
    // Until every PUBLISH is acknowledged and no more deliveries come.
    let (acked, got) = read_until(
        &mut me,
        &writer,
        Duration::from_secs(30),
        &|acks, _, quiet| acks >= N as usize && quiet,
    );
    writing.join().unwrap();
    assert_eq!(acked, N as usize, "every PUBLISH acknowledged");
    // What overflowed the bound (max_queued + allowance) is dropped and counted, not lost
    // silently: delivered + dropped = published.
    let m = scrape(metrics_addr(&broker));
    let dropped = m["mqflux_publish_messages_dropped_total{reason=\"queue_full\"}"];
    assert_eq!(got.len() as f64 + dropped, N as f64, "{dropped} dropped");
    assert_eq!(m["mqflux_stalled_subscribers_disconnected_total"], 0.0);
}

#[test]
fn two_clients_subscribed_to_each_other_do_not_deadlock() {
    let broker = Broker::with_config(&format!("[limits]\nmax_queued = 20\n{METRICS}"));
    let mut a = RawClient::connected(broker.addr(), "a");
    a.subscribe(1, &[("to-a/#", 1)]);
    let mut b = RawClient::connected(broker.addr(), "b");
    b.subscribe(1, &[("to-b/#", 1)]);
    let wa = Arc::new(Mutex::new(a.stream.try_clone().unwrap()));
    let wb = Arc::new(Mutex::new(b.stream.try_clone().unwrap()));
    // Both first write all their publishes without reading, so that each fills the other's
    // queue while its own reader is held back by the other's: a wait cycle if one were allowed.
    const N: u16 = 300;
    publish_all(wa.clone(), "to-b/x", N).join().unwrap();
    publish_all(wb.clone(), "to-a/x", N).join().unwrap();
    // Each keeps reading (and acknowledging its deliveries) until both have all their PUBACKs.
    let finished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = |mut c: RawClient, w: Arc<Mutex<TcpStream>>| {
        let finished = finished.clone();
        std::thread::spawn(move || {
            let counted = std::sync::atomic::AtomicBool::new(false);
            read_until(&mut c, &w, Duration::from_secs(30), &|acks, _, _| {
                if acks >= N as usize && !counted.swap(true, SeqCst) {
                    finished.fetch_add(1, SeqCst);
                }
                finished.load(SeqCst) == 2
            })
        })
    };
    let (reader_a, reader_b) = (reader(a, wa), reader(b, wb));
    let (acked_a, _) = reader_a.join().unwrap();
    let (acked_b, _) = reader_b.join().unwrap();
    assert_eq!((acked_a, acked_b), (N as usize, N as usize), "no deadlock");
    let m = scrape(metrics_addr(&broker));
    assert_eq!(m["mqflux_stalled_subscribers_disconnected_total"], 0.0);
}

#[test]
fn shared_subscription_gives_messages_to_a_member_with_room_instead_of_waiting() {
    let broker = Broker::with_config("[limits]\nmax_queued = 100\nstalled_subscriber_secs = 10\n");
    // One member stops reading at once; the other reads and acknowledges everything, so its
    // queue keeps room (were both full, the publisher would wait on the one in turn).
    let mut stuck = RawClient::connected(broker.addr(), "stuck");
    stuck.subscribe(1, &[("$share/g/shared/#", 1)]);
    let mut healthy = RawClient::connected(broker.addr(), "healthy");
    healthy.subscribe(1, &[("$share/g/shared/#", 1)]);
    let mut publisher = RawClient::connected(broker.addr(), "publisher");
    // Two messages first, one per member in turn: the healthy member has taken one (its
    // PUBACK handled, as the PINGRESP after it shows) before the flood, so were both members
    // full the broker would know which one is taking messages.
    for (id, payload) in [(1000u16, "w1"), (1001, "w2")] {
        publisher.publish_acked("shared/t", payload.as_bytes(), 1, id, false);
    }
    let first = healthy.expect_publish();
    healthy.ack(&first);
    healthy.ping();
    const N: u16 = 600;
    // N messages and the other warm-up one, which reaches it when the stuck member leaves.
    let healthy = acking_subscriber(healthy, N as usize + 1, Duration::from_secs(30));

    let writer = Arc::new(Mutex::new(publisher.stream.try_clone().unwrap()));
    let started = Instant::now();
    let writing = publish_all(writer, "shared/t", N);
    let mut acked = HashSet::new();
    while acked.len() < N as usize && started.elapsed() < Duration::from_secs(30) {
        if let Ok(p) = publisher.read_packet(Duration::from_millis(200)) {
            if p.kind() == PUBACK {
                acked.insert(p.packet_id());
            }
        }
    }
    writing.join().unwrap();
    assert_eq!(acked.len(), N as usize);
    // Not held back by the stuck member's full queue: its share went to the other member,
    // long before stalled_subscriber_secs.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "publisher waited {:?}",
        started.elapsed()
    );
    // What the stuck member holds moves to the other member when it leaves: nothing is lost.
    stuck.drop_connection();
    assert_eq!(healthy.join().unwrap().len(), N as usize + 1);
}

#[test]
fn leaving_shared_member_hands_its_messages_to_a_full_member_without_dropping_them() {
    let broker = Broker::with_config("[limits]\nmax_queued = 100\nstalled_subscriber_secs = 60\n");
    let mut stuck = RawClient::connected(broker.addr(), "stuck");
    stuck.subscribe(1, &[("$share/g/shared/#", 1)]);
    let mut busy = RawClient::connected(broker.addr(), "busy");
    busy.subscribe(1, &[("$share/g/shared/#", 1)]);
    let mut publisher = RawClient::connected(broker.addr(), "publisher");
    // One message per member in turn; the busy member completes its one, so that once both
    // are full the publisher waits on it (it takes messages), not on the stuck one.
    for (id, payload) in [(1000u16, "w1"), (1001, "w2")] {
        publisher.publish_acked("shared/t", payload.as_bytes(), 1, id, false);
    }
    let first = busy.expect_publish();
    busy.ack(&first);
    busy.ping();

    // Neither member reads now: each fills its window (20) and queue (100), the stuck one
    // first, and the publisher then waits on the busy one with about 240 acknowledged.
    const N: u16 = 300;
    let writer = Arc::new(Mutex::new(publisher.stream.try_clone().unwrap()));
    let writing = publish_all(writer, "shared/t", N);
    let mut acked = HashSet::new();
    let started = Instant::now();
    while acked.len() < 230 && started.elapsed() < Duration::from_secs(30) {
        if let Ok(p) = publisher.read_packet(Duration::from_millis(200)) {
            if p.kind() == PUBACK {
                acked.insert(p.packet_id());
            }
        }
    }
    assert!(acked.len() >= 230, "{} acknowledged", acked.len());
    // The stuck member leaves holding about 120 messages, acknowledged to their publisher long
    // ago; the busy member's queue is full: they must wait for its room, not be dropped.
    stuck.drop_connection();
    broker.wait_for_log(&["client stuck disconnected"]);
    let busy = acking_subscriber(busy, N as usize + 1, Duration::from_secs(30));
    while acked.len() < N as usize && started.elapsed() < Duration::from_secs(60) {
        if let Ok(p) = publisher.read_packet(Duration::from_millis(200)) {
            if p.kind() == PUBACK {
                acked.insert(p.packet_id());
            }
        }
    }
    writing.join().unwrap();
    assert_eq!(acked.len(), N as usize, "every PUBLISH acknowledged");
    // The flood and the stuck member's warm-up message: nothing lost.
    assert_eq!(busy.join().unwrap().len(), N as usize + 1);
    assert!(
        !broker.log_text().contains("dropping message"),
        "{}",
        broker.log_text()
    );
}
