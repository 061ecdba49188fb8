//! MQTT over WebSocket (`protocol = "ws"`) and over secure WebSocket (`"wss"`): a tungstenite
//! client sending MQTT packets in binary frames, crossing to a plain TCP client.

use crate::common;
use crate::common::listeners as listeners_support;

use common::Broker;
use listeners_support::*;
use mqflux::protocol::Packet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// A WebSocket client seen as a byte stream: MQTT packets may span or share binary frames.
struct WsStream<S: Read + Write> {
    ws: WebSocket<S>,
    pending: Vec<u8>,
}

impl<S: Read + Write> WsStream<S> {
    fn new(ws: WebSocket<S>) -> Self {
        WsStream {
            ws,
            pending: Vec::new(),
        }
    }
}

impl<S: Read + Write> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.ws.read().map_err(io::Error::other)? {
                Message::Binary(b) => self.pending.extend_from_slice(&b),
                Message::Close(_) => return Ok(0),
                _ => {}
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl<S: Read + Write> Write for WsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ws
            .send(Message::binary(buf.to_vec()))
            .map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.ws.flush().map_err(io::Error::other)
    }
}

fn ws_request(url: &str, subprotocol: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    if let Some(p) = subprotocol {
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    request
}

type WsHandshake = Result<
    (
        WebSocket<TcpStream>,
        tungstenite::handshake::client::Response,
    ),
    // Boxed: the error holds a whole HTTP response.
    Box<tungstenite::HandshakeError<tungstenite::ClientHandshake<TcpStream>>>,
>;

/// Open a TCP connection to `addr` (reads bounded by `WAIT`) and ask for a WebSocket upgrade
/// on `path`, offering `subprotocol`.
fn ws_handshake(addr: SocketAddr, path: &str, subprotocol: Option<&str>) -> WsHandshake {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tungstenite::client(ws_request(&format!("ws://{addr}{path}"), subprotocol), tcp)
        .map_err(Box::new)
}

/// A WebSocket connection to the broker's `/mqtt` path, with subprotocol "mqtt".
fn ws_mqtt(addr: SocketAddr) -> WebSocket<TcpStream> {
    ws_handshake(addr, "/mqtt", Some("mqtt")).unwrap().0
}

/// The upgrade must be refused with this HTTP status; `what` names the request in the panic.
fn assert_upgrade_refused(handshake: WsHandshake, status: u16, what: &str) {
    match handshake.map_err(|e| *e) {
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
            assert_eq!(r.status(), status)
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("{what} was accepted"),
    }
}

/// The broker must have closed `s` (EOF or an error), with nothing more after `what`.
fn assert_closed_after(s: &mut impl Read, what: &str) {
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("{n} bytes after {what}"),
    }
}

fn negotiated(response: &tungstenite::handshake::client::Response) -> Option<String> {
    response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string())
}

const WS_CONFIG: &str = r#"
[[listeners]]
bind = "127.0.0.1"
port = 0

[[listeners]]
protocol = "ws"
bind = "127.0.0.1"
port = 0
"#;

fn tcp_client(broker: &Broker, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(broker.listener_addr("tcp")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    mqtt_connect(&mut s, id);
    s
}

fn subscribe(s: &mut (impl Read + Write), filter: &str) {
    s.write_all(&encode(&subscribe_packet(filter))).unwrap();
    assert!(matches!(read_packet(s), Packet::SubAck(_)));
}

fn expect_publish(s: &mut impl Read, topic: &str, payload: &[u8]) {
    match read_packet(s) {
        Packet::Publish(p) => {
            assert_eq!(&*p.topic, topic);
            assert_eq!(&p.payload[..], payload);
        }
        other => panic!("expected PUBLISH, got {}", other.name()),
    }
}

#[test]
fn websocket_client_and_tcp_client_exchange_messages_with_subprotocol_mqtt() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    let (ws, response) = ws_handshake(addr, "/mqtt", Some("mqtt")).unwrap();
    // [MQTT-6.0.0-4] the server selects "mqtt".
    assert_eq!(negotiated(&response).as_deref(), Some("mqtt"));
    let mut ws = WsStream::new(ws);
    mqtt_connect(&mut ws, "ws-client");

    // WebSocket -> TCP
    let mut tcp_sub = tcp_client(&broker, "tcp-client");
    subscribe(&mut tcp_sub, "cross/#");
    ws.write_all(&encode(&publish_packet("cross/from-ws", b"hello tcp")))
        .unwrap();
    expect_publish(&mut tcp_sub, "cross/from-ws", b"hello tcp");

    // TCP -> WebSocket, with two packets in one TCP write to exercise re-framing.
    subscribe(&mut ws, "back/#");
    let mut two = encode(&publish_packet("back/1", b"one"));
    two.extend(encode(&publish_packet("back/2", &[7u8; 40_000])));
    tcp_sub.write_all(&two).unwrap();
    expect_publish(&mut ws, "back/1", b"one");
    expect_publish(&mut ws, "back/2", &[7u8; 40_000]);

    // A clean WebSocket close ends the session like a TCP close.
    ws.ws.close(None).unwrap();
    broker.wait_for_log_after(0, &["client ws-client disconnected"], WAIT);
}

#[test]
fn websocket_upgrade_on_another_path_is_refused_with_404() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    assert_upgrade_refused(
        ws_handshake(addr, "/not-mqtt", Some("mqtt")),
        404,
        "upgrade on the wrong path",
    );
}

#[test]
fn websocket_client_offering_only_other_subprotocols_is_refused() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    assert_upgrade_refused(
        ws_handshake(addr, "/mqtt", Some("chat, wamp")),
        400,
        "upgrade without the mqtt subprotocol",
    );
}

#[test]
fn websocket_text_frame_closes_the_connection() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    let mut ws = WsStream::new(ws_mqtt(addr));
    mqtt_connect(&mut ws, "texter");
    // [MQTT-6.0.0-1] only binary frames carry MQTT; anything else closes the connection.
    ws.ws.send(Message::text("not mqtt")).unwrap();
    broker.wait_for_log_after(0, &["client texter disconnected"], WAIT);
    assert_closed_after(&mut ws, "a text frame");
}

#[test]
fn secure_websocket_carries_mqtt_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "x");
    let config = tls_listener_toml("wss", &pki) + "path = \"/broker\"\n";
    let ca = pki.ca.clone();
    let broker = Broker::builder().dir(dir).config(&config).start();
    let addr = broker.listener_addr("wss");

    let tls = tls_client(addr, &ca);
    let url = format!("wss://localhost:{}/broker", addr.port());
    let (ws, response) = tungstenite::client(ws_request(&url, Some("mqtt")), tls).unwrap();
    assert_eq!(negotiated(&response).as_deref(), Some("mqtt"));
    let mut ws = WsStream::new(ws);
    mqtt_connect(&mut ws, "wss-client");
    subscribe(&mut ws, "secure/#");
    ws.write_all(&encode(&publish_packet(
        "secure/echo",
        b"through tls and ws",
    )))
    .unwrap();
    expect_publish(&mut ws, "secure/echo", b"through tls and ws");
}

#[test]
fn disconnect_sent_just_before_the_socket_closes_is_still_delivered() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    let mut ws = WsStream::new(ws_mqtt(addr));
    mqtt_connect(&mut ws, "leaver");
    let disconnect = Packet::Disconnect(mqflux::protocol::Disconnect {
        reason_code: 0,
        properties: Default::default(),
    });
    ws.write_all(&encode(&disconnect)).unwrap();
    // Drop the TCP socket at once, without a WebSocket close: the pump must still hand the
    // DISCONNECT to the connection before it signals the end of the stream.
    drop(ws);
    let line = broker.wait_for_log_after(0, &["client leaver disconnected"], WAIT);
    assert!(line.contains("client sent DISCONNECT"), "{line}");
}

#[test]
fn shutdown_closes_websocket_and_tls_clients_and_pending_handshakes_promptly() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "x");
    let config = format!("{WS_CONFIG}\n{}", tls_listener_toml("wss", &pki));
    let mut broker = Broker::builder().dir(dir).config(&config).start();
    let addr = broker.listener_addr("ws");
    let mut ws = WsStream::new(ws_mqtt(addr));
    mqtt_connect(&mut ws, "stayer");
    // A client stuck before its TLS handshake must not hold the shutdown for connect_timeout.
    let _silent = TcpStream::connect(broker.listener_addr("wss")).unwrap();

    let took = broker.terminate();
    assert!(
        took < std::time::Duration::from_secs(5),
        "shutdown took {took:?}"
    );
    // The WebSocket client got a close frame or EOF, not a hang.
    assert_closed_after(&mut ws, "the shutdown");
}

#[test]
fn refusal_connack_reaches_the_websocket_client_before_the_close() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    let mut ws = WsStream::new(ws_mqtt(addr));
    let mut connect = encode(&connect_packet("from-the-future"));
    // Protocol level byte after the fixed header (2) and the name "MQTT" (6): 4 -> 9.
    assert_eq!(connect[8], 4);
    connect[8] = 9;
    ws.write_all(&connect).unwrap();
    // [MQTT-3.1.2-2] CONNACK 0x01 (unacceptable protocol version), then the connection closes.
    let mut connack = [0u8; 4];
    ws.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x01]);
    assert_closed_after(&mut ws, "the refusal");
}

#[test]
fn websocket_ping_is_answered_with_pong() {
    let broker = Broker::with_config(WS_CONFIG);
    let addr = broker.listener_addr("ws");
    let mut ws = ws_mqtt(addr);
    ws.send(Message::Ping(b"are you there"[..].into())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are you there");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
}

/// Read until the broker closes the socket; panics if it is still open after `WAIT`.
fn wait_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {} // e.g. an HTTP error response before the close
            Err(e) => {
                assert_ne!(
                    e.kind(),
                    io::ErrorKind::WouldBlock,
                    "still open after {WAIT:?}"
                );
                return;
            }
        }
    }
}

#[test]
fn upgrade_request_trickled_byte_by_byte_is_cut_off_at_the_connect_timeout() {
    let broker = Broker::with_config(&format!(
        "{WS_CONFIG}\n[limits]\nconnect_timeout_secs = 1\n"
    ));
    let mut s = TcpStream::connect(broker.listener_addr("ws")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut writer = s.try_clone().unwrap();
    let started = std::time::Instant::now();
    // Each byte arrives well within any per-read timeout; only a deadline for the whole
    // handshake stops this (slowloris).
    let trickler = std::thread::spawn(move || {
        for b in b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".iter() {
            if writer.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
    });
    wait_closed(&mut s);
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(4),
        "closed only after {took:?}"
    );
    broker.wait_for_log_after(0, &["closed during the handshake"], WAIT);
    drop(s);
    trickler.join().unwrap();
}

#[test]
fn endless_upgrade_request_header_is_refused() {
    let broker = Broker::with_config(WS_CONFIG);
    let mut s = TcpStream::connect(broker.listener_addr("ws")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let _ = s.write_all(b"GET /mqtt HTTP/1.1\r\nX-Filler: ");
    let filler = vec![b'a'; 16 * 1024];
    for _ in 0..64 {
        // 1 MiB of one header line; the broker gives up long before the end.
        if s.write_all(&filler).is_err() {
            break;
        }
    }
    wait_closed(&mut s);
    broker.wait_for_log_after(0, &["closed during the handshake"], WAIT);
}
