//! A TLS or WebSocket client that stops reading: its transport pump must wait (poll) rather
//! than spin, keep its buffers bounded, and not hold up anyone else.

use crate::common;
use crate::common::listeners as listeners_support;

use common::Broker;
use listeners_support::*;
use mqflux::protocol::Packet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::client::IntoClientRequest;

const MESSAGES: usize = 1000;
const PAYLOAD: usize = 16 * 1024;

/// Flood `flood/x` from a plain client while `stuck` (already subscribed) reads nothing; a plain
/// subscriber must get everything, and the broker must then sit idle, not spin.
fn flood_past_a_stuck_client(broker: &Broker) {
    let tcp = broker.listener_addr("tcp");
    let mut sub = TcpStream::connect(tcp).unwrap();
    sub.set_read_timeout(Some(WAIT)).unwrap();
    mqtt_connect(&mut sub, "reader");
    sub.write_all(&encode(&subscribe_packet("flood/#")))
        .unwrap();
    assert!(matches!(read_packet(&mut sub), Packet::SubAck(_)));

    let mut publisher = TcpStream::connect(tcp).unwrap();
    publisher.set_read_timeout(Some(WAIT)).unwrap();
    mqtt_connect(&mut publisher, "flooder");
    let payload = vec![b'x'; PAYLOAD];
    let reader = std::thread::spawn(move || {
        for _ in 0..MESSAGES {
            match read_packet(&mut sub) {
                Packet::Publish(p) => assert_eq!(p.payload.len(), PAYLOAD),
                other => panic!("expected PUBLISH, got {}", other.name()),
            }
        }
    });
    for _ in 0..MESSAGES {
        publisher
            .write_all(&encode(&publish_packet("flood/x", &payload)))
            .unwrap();
    }
    reader
        .join()
        .expect("the reading subscriber did not get every message");

    // Everything is delivered or parked behind the stuck client: the broker must now be idle.
    let used = broker.cpu_ticks_over(Duration::from_secs(1));
    // A pump spinning on a full socket would burn ~100 ticks (one core) here.
    assert!(
        used < 20,
        "broker used {used} ticks in 1 s while one client was stuck"
    );
}

const CONFIG: &str = r#"
[[listeners]]
bind = "127.0.0.1"
port = 0
"#;

#[test]
fn tls_client_that_stops_reading_neither_blocks_others_nor_makes_the_broker_spin() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "x");
    let config = format!("{CONFIG}\n{}", tls_listener_toml("mqtts", &pki));
    let broker = Broker::builder().dir(dir).config(&config).start();
    let mut stuck = tls_client(broker.listener_addr("mqtts"), &pki.ca);
    mqtt_connect(&mut stuck, "stuck-tls");
    stuck
        .write_all(&encode(&subscribe_packet("flood/#")))
        .unwrap();
    assert!(matches!(read_packet(&mut stuck), Packet::SubAck(_)));
    flood_past_a_stuck_client(&broker);
    // The stuck client can still catch up on what was buffered for it.
    let mut buf = [0u8; 1024];
    assert!(stuck.read(&mut buf).unwrap() > 0);
}

#[test]
fn websocket_client_that_stops_reading_neither_blocks_others_nor_makes_the_broker_spin() {
    let config =
        format!("{CONFIG}\n[[listeners]]\nprotocol = \"ws\"\nbind = \"127.0.0.1\"\nport = 0\n");
    let broker = Broker::with_config(&config);
    let addr = broker.listener_addr("ws");
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut request = format!("ws://{addr}/mqtt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
    let (mut ws, _) = tungstenite::client(request, tcp).unwrap();
    let send = |ws: &mut tungstenite::WebSocket<TcpStream>, packet: &Packet| {
        ws.send(tungstenite::Message::binary(encode(packet)))
            .unwrap()
    };
    send(&mut ws, &connect_packet("stuck-ws"));
    send(&mut ws, &subscribe_packet("flood/#"));
    // Read CONNACK and SUBACK (4 + 5 bytes, possibly in one frame), then stop reading.
    let mut got = 0;
    while got < 9 {
        if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
            got += b.len();
        }
    }
    flood_past_a_stuck_client(&broker);
    assert!(matches!(
        ws.read().unwrap(),
        tungstenite::Message::Binary(_)
    ));
}
