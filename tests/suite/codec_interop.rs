//! The codec against real clients: mosquitto_pub / mosquitto_sub (mosquitto-clients) connect to a
//! bare TCP socket on 127.0.0.1 where the test plays the broker with `read_frame` /
//! `decode_packet` / `encode_packet`, in MQTT 3.1, 3.1.1 and 5.0. Proves the decoder accepts what a
//! real client sends and the encoder writes what a real client accepts.

use bytes::Bytes;
use mqflux::protocol::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_PACKET: usize = 1 << 20;

/// Kills the client process if the test fails half-way.
struct ClientProcess(Child);
impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args...` pointed at a fresh listener and returns the accepted connection.
fn start_client(program: &str, args: &[&str]) -> (TcpStream, ClientProcess) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener
        .local_addr()
        .expect("local addr")
        .port()
        .to_string();
    let child = Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (install mosquitto-clients): {e}"));
    let child = ClientProcess(child);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("interop-accept".into())
        .spawn(move || {
            let _ = tx.send(listener.accept());
        })
        .expect("spawn accept thread");
    let (stream, _) = rx
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("{program} did not connect within {TIMEOUT:?}"))
        .expect("accept");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("read timeout");
    (stream, child)
}

fn read_packet(stream: &mut TcpStream, version: ProtocolVersion) -> Packet {
    let frame = read_frame(stream, MAX_PACKET).expect("read frame");
    decode_packet(frame, version).expect("decode packet")
}

fn send(stream: &mut TcpStream, packet: Packet, version: ProtocolVersion) {
    let mut out = Vec::new();
    encode_packet(&packet, version, &mut out);
    stream.write_all(&out).expect("write packet");
}

fn version_arg(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V31 => "mqttv31",
        ProtocolVersion::V311 => "mqttv311",
        ProtocolVersion::V5 => "mqttv5",
    }
}

/// Reads CONNECT, checks its version and client id, answers CONNACK (accepted).
fn accept_connect(stream: &mut TcpStream, version: ProtocolVersion, client_id: &str) -> Connect {
    let Packet::Connect(connect) = read_packet(stream, version) else {
        panic!("first packet must be CONNECT")
    };
    assert_eq!(connect.version, version);
    assert_eq!(connect.client_id, client_id);
    let connack = ConnAck {
        session_present: false,
        code: 0,
        properties: Properties::default(),
    };
    send(stream, Packet::ConnAck(connack), version);
    connect
}

fn mosquitto_pub_publish_decodes(version: ProtocolVersion) {
    // 70,000 bytes: a three-byte remaining length, read from a real socket in several chunks.
    let payload = "x".repeat(70_000);
    let mut args = vec![
        "-V",
        version_arg(version),
        "-i",
        "codec-pub",
        "-t",
        "sensors/room1/temp",
    ];
    args.extend([
        "-q", "1", "-r", "-m", &payload, "-u", "alice", "-P", "secret",
    ]);
    args.extend([
        "--will-topic",
        "status/codec-pub",
        "--will-payload",
        "gone",
        "--will-qos",
        "1",
    ]);
    if version.is_v5() {
        args.extend(["-D", "publish", "user-property", "site", "lab"]);
        args.extend(["-D", "connect", "session-expiry-interval", "60"]);
    }
    let (mut stream, _child) = start_client("mosquitto_pub", &args);

    let connect = accept_connect(&mut stream, version, "codec-pub");
    assert_eq!(connect.username.as_deref(), Some("alice"));
    assert_eq!(connect.password.as_deref(), Some(&b"secret"[..]));
    let will = connect.will.expect("will");
    assert_eq!(
        (will.topic.as_str(), &will.payload[..], will.qos),
        ("status/codec-pub", &b"gone"[..], QoS::AtLeastOnce)
    );
    if version.is_v5() {
        assert_eq!(connect.properties.session_expiry_interval, Some(60));
    }

    let Packet::Publish(publish) = read_packet(&mut stream, version) else {
        panic!("expected PUBLISH")
    };
    assert_eq!(&*publish.topic, "sensors/room1/temp");
    assert_eq!((publish.qos, publish.retain), (QoS::AtLeastOnce, true));
    assert_eq!(publish.payload.len(), payload.len());
    assert!(publish.payload.iter().all(|&b| b == b'x'));
    if version.is_v5() {
        assert_eq!(
            publish.properties.user_properties,
            vec![("site".to_string(), "lab".to_string())]
        );
    }
    send(
        &mut stream,
        Packet::PubAck(Ack::new(publish.packet_id)),
        version,
    );

    assert!(matches!(
        read_packet(&mut stream, version),
        Packet::Disconnect(_)
    ));
    assert!(matches!(
        read_frame(&mut stream, MAX_PACKET),
        Err(DecodeError::Eof)
    ));
}

fn mosquitto_sub_accepts_encoded_publish(version: ProtocolVersion) {
    let mut args = vec![
        "-V",
        version_arg(version),
        "-i",
        "codec-sub",
        "-t",
        "sensors/#",
        "-q",
        "2",
    ];
    // %P (v5 user properties) prints nothing for v3 connections.
    args.extend(["-C", "1", "-F", "%t|%q|%p|%P"]);
    let (mut stream, child) = start_client("mosquitto_sub", &args);

    accept_connect(&mut stream, version, "codec-sub");
    let Packet::Subscribe(subscribe) = read_packet(&mut stream, version) else {
        panic!("expected SUBSCRIBE")
    };
    assert_eq!(subscribe.filters.len(), 1);
    assert_eq!(subscribe.filters[0].filter, "sensors/#");
    assert_eq!(subscribe.filters[0].options.qos, QoS::ExactlyOnce);
    let suback = SubAck {
        packet_id: subscribe.packet_id,
        reason_codes: vec![1],
        properties: Properties::default(),
    };
    send(&mut stream, Packet::SubAck(suback), version);

    // QoS 1 PUBLISH with v5 properties (dropped for v3 by the encoder).
    let properties = Properties {
        user_properties: vec![("unit".into(), "C".into())],
        message_expiry_interval: Some(30),
        ..Properties::default()
    };
    let publish = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "sensors/room1/temp".into(),
        packet_id: 42,
        payload: Bytes::from_static(b"22.5"),
        properties: properties.into(),
    };
    send(&mut stream, Packet::Publish(publish), version);
    let Packet::PubAck(puback) = read_packet(&mut stream, version) else {
        panic!("expected PUBACK")
    };
    assert_eq!(puback.packet_id, 42);
    assert!(matches!(
        read_packet(&mut stream, version),
        Packet::Disconnect(_)
    ));

    let mut child = child;
    let status = child.0.wait().expect("wait for mosquitto_sub");
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    assert!(status.success(), "mosquitto_sub failed: {status}");
    let expected = if version.is_v5() {
        "sensors/room1/temp|1|22.5|unit:C"
    } else {
        "sensors/room1/temp|1|22.5|"
    };
    assert_eq!(stdout.trim_end(), expected);
}

#[test]
fn mosquitto_pub_v31_connect_publish_disconnect_decode() {
    mosquitto_pub_publish_decodes(ProtocolVersion::V31);
}

#[test]
fn mosquitto_pub_v311_connect_publish_disconnect_decode() {
    mosquitto_pub_publish_decodes(ProtocolVersion::V311);
}

#[test]
fn mosquitto_pub_v5_connect_publish_disconnect_decode_with_properties() {
    mosquitto_pub_publish_decodes(ProtocolVersion::V5);
}

#[test]
fn mosquitto_sub_v31_accepts_encoded_connack_suback_publish() {
    mosquitto_sub_accepts_encoded_publish(ProtocolVersion::V31);
}

#[test]
fn mosquitto_sub_v311_accepts_encoded_connack_suback_publish() {
    mosquitto_sub_accepts_encoded_publish(ProtocolVersion::V311);
}

#[test]
fn mosquitto_sub_v5_accepts_encoded_connack_suback_publish_with_properties() {
    mosquitto_sub_accepts_encoded_publish(ProtocolVersion::V5);
}
