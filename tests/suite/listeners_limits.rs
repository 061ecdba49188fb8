//! Several listeners at once, and each listener's own `max_connections`.

use crate::common;
use crate::common::listeners as listeners_support;

use common::Broker;
use listeners_support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

/// Connect and send CONNECT; true if CONNACK came back, false if the broker closed the socket.
fn try_connect(addr: std::net::SocketAddr, id: &str) -> (bool, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(&encode(&connect_packet(id)));
    let mut header = [0u8; 4];
    let ok = match s.read_exact(&mut header) {
        Ok(()) => header == [0x20, 0x02, 0x00, 0x00],
        Err(e) => {
            assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "no answer at all");
            false
        }
    };
    (ok, s)
}

#[test]
fn listener_max_connections_refuses_the_extra_connection_but_not_on_other_listeners() {
    let broker = Broker::with_config(
        r#"
[[listeners]]
bind = "127.0.0.1"
port = 0
max_connections = 2

[[listeners]]
bind = "127.0.0.1"
port = 0
"#,
    );
    let limited = broker.listeners()[0].1;
    let open = broker.listeners()[1].1;
    let (ok1, first) = try_connect(limited, "one");
    let (ok2, _second) = try_connect(limited, "two");
    assert!(ok1 && ok2);
    let (ok3, _) = try_connect(limited, "three");
    assert!(
        !ok3,
        "third connection on a listener limited to 2 was accepted"
    );
    broker.wait_for_log_after(0, &["this listener's max_connections (2) reached"], WAIT);
    // The other listener has its own count.
    let (ok_other, _other) = try_connect(open, "elsewhere");
    assert!(ok_other);

    // A closed connection frees its place (released when its threads end: retry, bounded).
    drop(first);
    let deadline = Instant::now() + WAIT;
    loop {
        if try_connect(limited, "again").0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "place not freed after a disconnect"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn websocket_listener_counts_connections_during_the_upgrade() {
    let broker = Broker::with_config(
        r#"
[[listeners]]
protocol = "ws"
bind = "127.0.0.1"
port = 0
max_connections = 1
"#,
    );
    let addr = broker.listener_addr("ws");
    // A client that connected but has not sent its upgrade request yet holds the only place.
    // The accept thread takes connections in arrival order, so it counts this one first.
    let _pending = TcpStream::connect(addr).unwrap();
    let mut extra = TcpStream::connect(addr).unwrap();
    extra.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 16];
    match extra.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "the extra connection got an answer"),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "not closed"),
    }
    broker.wait_for_log_after(0, &["this listener's max_connections (1) reached"], WAIT);
}
