//! Crash test: QoS 1 and QoS 2 publishers under load while the broker is killed with SIGKILL
//! at random moments and restarted. Every message whose PUBACK (QoS 1) or PUBCOMP (QoS 2) a
//! publisher received must reach the persistent subscriber: at least once for QoS 1, exactly
//! once for QoS 2 [MQTT-4.3.3].
//!
//! Clients follow the spec's recovery rules across broker restarts: publishers reconnect with
//! their session and resend the unacknowledged PUBLISH with DUP, or the PUBREL
//! [MQTT-4.4.0-1]; the subscriber keeps the packet ids of QoS 2 messages it has acknowledged with
//! PUBREC until PUBREL, and treats a PUBLISH with such an id as a duplicate (method B,
//! [MQTT-4.3.3-2] receiver side).

use crate::common;

use common::raw::{self, Connect, RawClient, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL};
use common::{eventually, Broker};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KILLS: usize = 5;
const PUBLISHERS_PER_QOS: usize = 2;

#[derive(Default)]
struct Shared {
    stop_publishers: AtomicBool,
    stop_subscriber: AtomicBool,
    /// Payloads whose PUBACK/PUBCOMP was received, with their QoS.
    acked: Mutex<Vec<(String, u8)>>,
    /// Deliveries counted by the subscriber (duplicates by method B excluded).
    received: Mutex<HashMap<String, u32>>,
}

fn connect_until_up(addr: SocketAddr, id: &str, stop: &AtomicBool) -> Option<RawClient> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some((c, _)) = RawClient::try_connect_mqtt(addr, &Connect::persistent(id)) {
            return Some(c);
        }
        // The broker is down (killed, restarting): try again shortly.
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Wait for the ack of `kind` for `packet_id`; anything else (or a closed socket) is an error.
fn wait_ack(c: &mut RawClient, kind: u8, packet_id: u16) -> Result<(), ()> {
    let p = c.read_packet(raw::REPLY_TIMEOUT).map_err(|_| ())?;
    if p.kind() == kind && p.packet_id() == packet_id {
        Ok(())
    } else {
        panic!(
            "expected ack {kind} for {packet_id}, got {:02x?}",
            p.bytes()
        )
    }
}

fn publisher(addr: SocketAddr, name: String, qos: u8, shared: Arc<Shared>) {
    let mut conn: Option<RawClient> = None;
    let stop = &shared.stop_publishers;
    let mut packet_id: u16 = 0;
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let payload = format!("{name}-{seq}");
        packet_id = packet_id.checked_add(1).unwrap_or(1);
        // Where the exchange is: 0 = PUBLISH not acknowledged, 1 = PUBREC received.
        let mut phase = 0;
        let mut dup = false;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let c = match &mut conn {
                Some(c) => c,
                None => match connect_until_up(addr, &name, stop) {
                    Some(c) => {
                        // A new connection: the unacknowledged PUBLISH goes again with DUP.
                        dup = phase == 0 && seq > 0;
                        conn.insert(c)
                    }
                    None => return,
                },
            };
            let step = if phase == 0 {
                let p = raw::publish(
                    &format!("load/{name}"),
                    payload.as_bytes(),
                    qos,
                    packet_id,
                    false,
                    dup,
                );
                c.try_send(&p)
                    .map_err(|_| ())
                    .and_then(|_| wait_ack(c, if qos == 1 { PUBACK } else { PUBREC }, packet_id))
            } else {
                c.try_send(&raw::pubrel(packet_id))
                    .map_err(|_| ())
                    .and_then(|_| wait_ack(c, PUBCOMP, packet_id))
            };
            match step {
                Ok(()) if qos == 2 && phase == 0 => phase = 1,
                Ok(()) => break,
                Err(()) => {
                    conn = None;
                    dup = true;
                }
            }
        }
        shared.acked.lock().unwrap().push((payload, qos));
    }
}

fn subscriber(addr: SocketAddr, shared: Arc<Shared>) {
    let stop = &shared.stop_subscriber;
    // QoS 2 packet ids acknowledged with PUBREC and not yet released: the client's session
    // state, kept across reconnects.
    let mut awaiting_pubrel: HashSet<u16> = HashSet::new();
    let mut conn: Option<RawClient> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match &mut conn {
            Some(c) => c,
            None => match connect_until_up(addr, "crash-sub", stop) {
                Some(c) => conn.insert(c),
                None => return,
            },
        };
        let p = match c.read_packet(Duration::from_millis(200)) {
            Ok(p) => p,
            Err(raw::ReadError::Timeout) => continue,
            Err(_) => {
                conn = None;
                continue;
            }
        };
        let reply = match p.kind() {
            PUBLISH => {
                let m = p.publish();
                let payload = String::from_utf8(m.payload).expect("utf-8 payload");
                let new = m.qos != 2 || awaiting_pubrel.insert(m.packet_id);
                if new {
                    *shared.received.lock().unwrap().entry(payload).or_default() += 1;
                }
                match m.qos {
                    1 => raw::puback(m.packet_id),
                    _ => raw::pubrec(m.packet_id),
                }
            }
            PUBREL => {
                awaiting_pubrel.remove(&p.packet_id());
                raw::pubcomp(p.packet_id())
            }
            _ => panic!("unexpected packet {:02x?}", p.bytes()),
        };
        if c.try_send(&reply).is_err() {
            conn = None;
        }
    }
}

#[test]
fn acknowledged_messages_survive_repeated_sigkill_under_load() {
    let store = tempfile::tempdir().unwrap();
    let config = format!(
        "[limits]\nmax_queued = 1000000\n[persistence]\ndir = {:?}\nmode = \"sync\"\n",
        store.path().to_str().unwrap()
    );
    let mut broker = Broker::with_config(&config);
    let addr = broker.addr();
    let (mut sub, _) = RawClient::connect_mqtt(addr, &Connect::persistent("crash-sub"));
    assert_eq!(sub.subscribe(1, &[("load/#", 2)]), vec![2]);
    sub.drop_connection();

    let shared = Arc::new(Shared::default());
    let mut threads = Vec::new();
    let s = shared.clone();
    let subscriber_thread = std::thread::spawn(move || subscriber(addr, s));
    for qos in [1u8, 2] {
        for i in 0..PUBLISHERS_PER_QOS {
            let s = shared.clone();
            threads.push(std::thread::spawn(move || {
                publisher(addr, format!("pub-q{qos}-{i}"), qos, s)
            }));
        }
    }

    // Kill at random moments: 0.3 to 1.5 s apart (the seed is printed to replay a failure).
    for (kill, wait) in common::kill_waits(300, 1200).take(KILLS).enumerate() {
        std::thread::sleep(wait);
        let acked = shared.acked.lock().unwrap().len();
        println!("kill {kill} after {wait:?}: {acked} messages acknowledged so far");
        broker.restart();
    }
    // Some load after the last restart too.
    let mark = shared.acked.lock().unwrap().len();
    eventually(Duration::from_secs(10), || {
        (shared.acked.lock().unwrap().len() > mark + 50).then_some(())
    })
    .expect("publishers go on after the last restart");
    shared.stop_publishers.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("publisher thread");
    }

    let acked = shared.acked.lock().unwrap().clone();
    assert!(
        acked.len() > 200,
        "too little load to mean anything: {}",
        acked.len()
    );
    let all_there = eventually(Duration::from_secs(30), || {
        let received = shared.received.lock().unwrap();
        acked
            .iter()
            .all(|(p, _)| received.contains_key(p))
            .then_some(())
    });
    shared.stop_subscriber.store(true, Ordering::Relaxed);
    subscriber_thread.join().expect("subscriber thread");
    let received = shared.received.lock().unwrap();
    let missing: Vec<_> = acked
        .iter()
        .filter(|(p, _)| !received.contains_key(p))
        .map(|(p, _)| p.clone())
        .collect();
    assert!(
        all_there.is_some() && missing.is_empty(),
        "{} of {} acknowledged messages never delivered, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    // Exactly once for QoS 2, acknowledged or not.
    let twice: Vec<_> = received
        .iter()
        .filter(|(p, n)| p.starts_with("pub-q2") && **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "QoS 2 messages delivered more than once: {twice:?}"
    );
    let q1 = acked.iter().filter(|(_, q)| *q == 1).count();
    println!(
        "{} messages acknowledged ({q1} QoS 1, {} QoS 2), all delivered",
        acked.len(),
        acked.len() - q1
    );
}
