//! Crash test of the ingest contract: with `[persistence] mode = "sync"` and the sink on, a QoS 1
//! or QoS 2 PUBLISH the broker acknowledged (PUBACK / PUBREC) is in InfluxDB exactly once, and
//! reached the persistent subscriber, however often the broker is killed with SIGKILL and
//! restarted on the same store and spool.
//!
//! Publishers are real clients (rumqttc, persistent sessions) that resend what was not
//! acknowledged when they reconnect, as MQTT requires [MQTT-4.4.0-1]. Each payload is JSON with
//! a sequence number and a timestamp derived from it; the sink rule takes the point's time from
//! that field (`timestamp_field = "ts"`), not from the broker's receive time. Why: a QoS 1
//! message whose PUBACK was lost in the crash is resent and received again with a new receive
//! time, so with receive times a second point would be legitimate at-least-once, and "exactly
//! once" would not be checkable. With the payload's time, every write of one message (a resend,
//! or the broker writing again at start-up what it had not confirmed as written) lands on the
//! same series and time, where InfluxDB keeps one point; so one row per acknowledged sequence
//! number, and a second row for one would be a point written with another time: a duplicate.
//!
//! The sink holds batches up to `flush_interval_ms` (500 ms, no early idle flush) so that a kill
//! nearly always finds acknowledged points in its queue and in-memory batches: without the
//! journal records of `sink::durable` those are lost (this test fails on code without them).

use crate::common;
use crate::common::influx;

use common::Broker;
use influx::Influx;
use rumqttc::{Event, MqttOptions, Packet, QoS};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const KILLS: usize = 4;
const PUBLISHERS_PER_QOS: usize = 3;
/// Point times: this many microseconds since the epoch plus the sequence number.
const BASE_US: u64 = 1_700_000_000_000_000;
const DB: &str = "crash";

#[derive(Default)]
struct Shared {
    stop_publishers: AtomicBool,
    stop_subscriber: AtomicBool,
    /// Publisher -> sequence numbers whose PUBACK (QoS 1) or PUBREC (QoS 2) it received.
    acked: Mutex<HashMap<String, Vec<u64>>>,
    /// Payloads the persistent subscriber received (at least once).
    received: Mutex<HashSet<String>>,
}

impl Shared {
    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().values().map(Vec::len).sum()
    }
}

fn options(port: u16, id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(false);
    o
}

/// A rumqttc client whose event loop runs on its own thread, its events sent to the returned
/// channel (None: the connection was lost). After a connection error (the broker was killed)
/// the thread polls again, which reconnects, and rumqttc then resends what was not
/// acknowledged. It ends at the first event or error after the receiver is dropped.
type Events = mpsc::Receiver<Option<Event>>;

fn start_client(port: u16, id: &str) -> (rumqttc::Client, Events) {
    let (client, mut connection) = rumqttc::Client::new(options(port, id), 16);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("rumqttc-{id}"))
        .spawn(move || loop {
            let event = match connection.recv() {
                Ok(Ok(event)) => Some(event),
                Ok(Err(_)) => None,
                Err(_) => return,
            };
            let lost = event.is_none();
            if tx.send(event).is_err() {
                return;
            }
            if lost {
                // The broker is down (killed, restarting): try again shortly.
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .expect("spawn rumqttc event loop thread");
    (client, rx)
}

fn next_event(events: &Events, timeout: Duration) -> Option<Event> {
    events.recv_timeout(timeout).ok().flatten()
}

/// Publish `{"seq": n, "ts": BASE_US + n}` one at a time (each waits for its acknowledgement,
/// so an acknowledgement always belongs to the one message in flight), across broker kills.
fn publisher(port: u16, name: String, qos: QoS, shared: Arc<Shared>) {
    let (client, events) = start_client(port, &name);
    let topic = format!("load/{name}");
    for seq in 0u64.. {
        if shared.stop_publishers.load(Ordering::Relaxed) {
            return;
        }
        let payload = format!("{{\"seq\":{seq},\"ts\":{}}}", BASE_US + seq);
        client
            .publish(&topic, qos, false, payload.into_bytes())
            .expect("queue PUBLISH");
        loop {
            if shared.stop_publishers.load(Ordering::Relaxed) {
                return;
            }
            match next_event(&events, Duration::from_millis(100)) {
                Some(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => break,
                // The broker's promise is made at PUBREC; rumqttc completes the exchange
                // (PUBREL, resent after a reconnect) while the next message goes out.
                Some(Event::Incoming(Packet::PubRec(_))) if qos == QoS::ExactlyOnce => break,
                _ => {}
            }
        }
        shared
            .acked
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .push(seq);
    }
}

fn subscriber(port: u16, shared: Arc<Shared>) {
    let (_client, events) = start_client(port, "crash-sub");
    while !shared.stop_subscriber.load(Ordering::Relaxed) {
        if let Some(Event::Incoming(Packet::Publish(p))) =
            next_event(&events, Duration::from_millis(100))
        {
            let text = format!(
                "{} {}",
                p.topic,
                String::from_utf8_lossy(&p.payload).into_owned()
            );
            shared.received.lock().unwrap().insert(text);
        }
    }
}

/// Subscribe "crash-sub" persistently to `load/#` and disconnect: its session then queues every
/// message across the kills. QoS 1: rumqttc 0.25 forgets the QoS 2 packet ids it has answered
/// with PUBREC when it reconnects, and takes the broker's PUBREL resent for one
/// [MQTT-4.4.0-1] for an error ("Unsolicited"), disconnecting again and again.
/// (`durability_crash.rs` checks exactly-once QoS 2 delivery with a hand-written client.)
fn create_subscriber_session(port: u16) {
    let (client, events) = start_client(port, "crash-sub");
    client
        .subscribe("load/#", QoS::AtLeastOnce)
        .expect("queue SUBSCRIBE");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no SUBACK for crash-sub");
        if let Some(Event::Incoming(Packet::SubAck(_))) =
            next_event(&events, Duration::from_millis(100))
        {
            break;
        }
    }
    client.disconnect().expect("queue DISCONNECT");
    loop {
        assert!(
            Instant::now() < deadline,
            "DISCONNECT of crash-sub not sent"
        );
        if let Some(Event::Outgoing(rumqttc::Outgoing::Disconnect)) =
            next_event(&events, Duration::from_millis(100))
        {
            break;
        }
    }
}

fn config(influx: &Influx, store: &std::path::Path, spool: &std::path::Path) -> String {
    format!(
        r#"
[limits]
max_queued = 1000000

[persistence]
dir = "{store}"
mode = "sync"

[sink]
enabled = true
url = "{url}"
database = "{DB}"
spool_dir = "{spool}"
flush_interval_ms = 500
idle_flush_ms = 0
retry_initial_ms = 20
retry_max_ms = 300
timeout_secs = 5

[[sink.rules]]
topic = "load/{{publisher}}"
measurement = "load"
timestamp_field = "ts"
timestamp_unit = "us"
"#,
        url = influx.url(),
        store = store.display(),
        spool = spool.display(),
    )
}

/// Sequence number -> points stored for one publisher.
fn stored_points(influx: &Influx, publisher: &str) -> HashMap<u64, usize> {
    let (_, rows) = influx.select(
        DB,
        &format!("SELECT \"seq\" FROM \"load\" WHERE \"publisher\" = '{publisher}'"),
    );
    let mut points = HashMap::new();
    for row in rows {
        let time_ns = row.first().and_then(|v| v.as_i64()).unwrap_or(-1);
        let seq = row.get(1).and_then(|v| v.as_f64()).unwrap_or(-1.0) as u64;
        assert_eq!(
            time_ns as u64,
            (BASE_US + seq) * 1000,
            "{publisher} seq {seq}: the point's time is not the payload's"
        );
        *points.entry(seq).or_default() += 1;
    }
    points
}

fn run(with_subscriber: bool) {
    let influx = Influx::start();
    let store = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    let mut broker = Broker::with_config(&config(&influx, store.path(), spool.path()));
    let port = broker.port;
    if with_subscriber {
        create_subscriber_session(port);
    }

    let shared = Arc::new(Shared::default());
    let subscriber_thread = with_subscriber.then(|| {
        let s = shared.clone();
        std::thread::spawn(move || subscriber(port, s))
    });
    let mut publishers = Vec::new();
    for (tag, qos) in [("q1", QoS::AtLeastOnce), ("q2", QoS::ExactlyOnce)] {
        for i in 0..PUBLISHERS_PER_QOS {
            let s = shared.clone();
            let name = format!("pub-{tag}-{i}");
            publishers.push(std::thread::spawn(move || publisher(port, name, qos, s)));
        }
    }

    // Kill at random moments: 0.5 to 2 s apart (the seed is printed to replay a failure).
    for (kill, wait) in common::kill_waits(500, 1500).take(KILLS).enumerate() {
        std::thread::sleep(wait);
        println!(
            "kill {kill} after {wait:?}: {} messages acknowledged so far",
            shared.acked_count()
        );
        broker.restart();
    }
    // Some load after the last restart too.
    let mark = shared.acked_count();
    common::eventually(Duration::from_secs(10), || {
        (shared.acked_count() > mark + 100).then_some(())
    })
    .expect("publishers go on after the last restart");
    shared.stop_publishers.store(true, Ordering::Relaxed);
    for t in publishers {
        t.join().expect("publisher thread");
    }
    let acked = shared.acked.lock().unwrap().clone();
    let total: usize = acked.values().map(Vec::len).sum();
    assert!(
        total > 1000,
        "too little load to mean anything: {total} acknowledged"
    );

    // Every acknowledged message in InfluxDB (once the last batches are written).
    let complete = |influx: &Influx| {
        let mut missing = Vec::new();
        let mut duplicates = Vec::new();
        for (publisher, seqs) in &acked {
            let points = stored_points(influx, publisher);
            for seq in seqs {
                match points.get(seq) {
                    None => missing.push(format!("{publisher} {seq}")),
                    Some(n) if *n > 1 => duplicates.push(format!("{publisher} {seq} x{n}")),
                    Some(_) => {}
                }
            }
        }
        (missing, duplicates)
    };
    let mut outcome = complete(&influx);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !outcome.0.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        outcome = complete(&influx);
    }
    let (missing, duplicates) = outcome;
    // The kills found acknowledged points not yet written, and the restarts wrote them.
    let replays = broker
        .log_text()
        .matches("were not yet written; writing them again")
        .count();
    assert!(
        missing.is_empty(),
        "{} of {total} acknowledged messages never reached InfluxDB, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        replays > 0,
        "no restart found unwritten acknowledged publishes in the store: the test did not \
         exercise what it is about"
    );
    assert!(
        duplicates.is_empty(),
        "acknowledged messages stored more than once: {:?}",
        &duplicates[..duplicates.len().min(10)]
    );

    if let Some(t) = subscriber_thread {
        let wanted: Vec<String> = acked
            .iter()
            .flat_map(|(p, seqs)| {
                seqs.iter()
                    .map(move |seq| format!("load/{p} {{\"seq\":{seq},\"ts\":{}}}", BASE_US + seq))
            })
            .collect();
        let all_there = common::eventually(Duration::from_secs(30), || {
            let received = shared.received.lock().unwrap();
            wanted.iter().all(|w| received.contains(w)).then_some(())
        });
        shared.stop_subscriber.store(true, Ordering::Relaxed);
        t.join().expect("subscriber thread");
        let received = shared.received.lock().unwrap();
        let lost: Vec<_> = wanted.iter().filter(|w| !received.contains(*w)).collect();
        assert!(
            all_there.is_some() && lost.is_empty(),
            "{} of {total} acknowledged messages never reached the persistent subscriber, \
             e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
    // Written points leave no records behind: after a graceful stop the store holds none.
    broker.stop_gracefully();
    let mark = broker.log_mark();
    broker.restart();
    broker.wait_for_log_after(mark, &["messages, 0 sink records"], Duration::from_secs(10));
    let q1: usize = acked
        .iter()
        .filter(|(p, _)| p.starts_with("pub-q1"))
        .map(|(_, s)| s.len())
        .sum();
    println!(
        "{total} messages acknowledged ({q1} QoS 1, {} QoS 2) through {KILLS} kills: each in \
         InfluxDB exactly once ({replays} restarts wrote unwritten ones again){}",
        total - q1,
        if with_subscriber {
            ", and delivered to the persistent subscriber"
        } else {
            ""
        }
    );
}

/// With a subscriber every publish takes the routed path (QoS 2 records its packet id and the
/// sink's copy in one atomic store record).
#[test]
fn acknowledged_publishes_reach_influxdb_exactly_once_and_the_subscriber_through_sigkill() {
    run(true);
}

/// Without any subscription a QoS 1 publish takes the in-place path straight from the read
/// buffer to the sink; with sync persistence it must still be made durable before its PUBACK.
#[test]
fn acknowledged_publishes_without_subscribers_reach_influxdb_exactly_once_through_sigkill() {
    run(false);
}

/// With InfluxDB unreachable every batch goes to the spool, and a full spool drops its oldest
/// batches (`spool_full = "drop_oldest"`, counted): a publish leaves the store once its batch is
/// spooled, so neither spooling nor dropping leaks store records. Checked across a clean stop:
/// the next start finds none.
#[test]
fn spooled_and_dropped_points_leave_no_records_in_the_store() {
    let store = tempfile::tempdir().unwrap();
    let spool = tempfile::tempdir().unwrap();
    // Nothing listens there: InfluxDB is down for the whole test.
    let url = format!("http://127.0.0.1:{}", influx::free_port());
    let config = format!(
        r#"
[persistence]
dir = "{store}"
mode = "sync"

[sink]
enabled = true
url = "{url}"
database = "{DB}"
spool_dir = "{spool}"
spool_max_bytes = 65536
spool_full = "drop_oldest"
batch_size = 50
flush_interval_ms = 20
retry_initial_ms = 20
retry_max_ms = 100
timeout_secs = 1
"#,
        store = store.path().display(),
        spool = spool.path().display(),
    );
    let mut broker = Broker::with_config(&config);
    let mut client = common::client::MqttClient::connect(&broker, "spool-filler");
    let payload = format!("{{\"pad\":\"{}\",\"seq\":0}}", "x".repeat(400));
    // 600 x ~430 bytes: about four times what the spool may hold.
    for _ in 0..600 {
        client.publish("load/filler", 1, false, payload.as_bytes());
    }
    broker.wait_for_log(&["spool full", "dropped the oldest"]);
    client.disconnect();
    broker.stop_gracefully();
    let mark = broker.log_mark();
    broker.restart();
    broker.wait_for_log_after(mark, &["messages, 0 sink records"], Duration::from_secs(10));
}
