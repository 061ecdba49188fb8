//! A raw MQTT client on the library's own codec (`encode_packet`, `read_frame`,
//! `decode_packet`), parameterised by protocol version: `RawClient::open(port, version)`, or
//! `connect_v311` / `connect_v5`; the same typed packets and helpers serve 3.1.1 and 5.0, and
//! the codec leaves out what a version does not have (properties, reason codes). For bytes the
//! codec could not produce, use the byte-level `raw` client. `encode` and `read_packet` speak the
//! same codec over any byte stream (TLS, WebSocket; see `listeners`). Every wait is bounded.
use bytes::Bytes;
use mqflux::protocol::{
    self, Ack, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion, Publish, QoS,
    SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, Will,
};
use std::collections::VecDeque;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Longest wait for a packet that must arrive.
pub const WAIT: Duration = Duration::from_secs(5);

/// What `RawClient::recv` saw instead of a packet.
#[derive(Debug)]
pub enum RecvError {
    Timeout,
    Closed,
    Decode(String),
}

/// A raw MQTT client over one TCP connection, using the crate's codec.
pub struct RawClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub version: ProtocolVersion,
    /// Packets read while waiting for something else (e.g. PUBLISHes before a SUBACK).
    pending: VecDeque<Packet>,
    next_id: u16,
}

/// `packet` as bytes for `version`.
pub fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = Vec::new();
    protocol::encode_packet(packet, version, &mut buf);
    buf
}

/// Read one `version` packet of at most `max_len` bytes from a blocking stream (read timeout
/// set by the caller); panics on anything else.
pub fn read_packet(stream: &mut impl Read, version: ProtocolVersion, max_len: usize) -> Packet {
    let frame = protocol::read_frame(stream, max_len).expect("read MQTT frame");
    protocol::decode_packet(frame, version).expect("decode MQTT packet")
}

/// A v5 CONNECT with clean start, keep-alive 30 s and no properties.
pub fn connect_packet(client_id: &str) -> Connect {
    Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
        bridge: false,
    }
}

pub fn will(topic: &str, payload: &str, properties: Properties) -> Will {
    Will {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    }
}

pub fn sub_options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

impl RawClient {
    /// Open a TCP connection without sending anything.
    pub fn open(port: u16, version: ProtocolVersion) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to broker");
        stream.set_nodelay(true).ok();
        let reader = BufReader::new(stream.try_clone().expect("clone socket"));
        RawClient {
            stream,
            reader,
            version,
            pending: VecDeque::new(),
            next_id: 1,
        }
    }

    /// Connect with `connect` and return the CONNACK (whatever its code).
    pub fn connect_with(port: u16, connect: Connect) -> (RawClient, ConnAck) {
        let mut c = RawClient::open(port, connect.version);
        c.send(&Packet::Connect(connect));
        match c.recv() {
            Packet::ConnAck(ack) => (c, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// v5 connect with clean start and the given properties; asserts success.
    pub fn connect_v5(port: u16, client_id: &str, properties: Properties) -> RawClient {
        let mut connect = connect_packet(client_id);
        connect.properties = properties;
        let (c, ack) = RawClient::connect_with(port, connect);
        assert_eq!(ack.code, 0, "CONNACK refused: {ack:?}");
        c
    }

    /// v3.1.1 connect with clean session; asserts success.
    pub fn connect_v311(port: u16, client_id: &str) -> RawClient {
        let mut connect = connect_packet(client_id);
        connect.version = ProtocolVersion::V311;
        let (c, ack) = RawClient::connect_with(port, connect);
        assert_eq!(ack.code, 0, "CONNACK refused: {ack:?}");
        c
    }

    pub fn send(&mut self, packet: &Packet) {
        self.send_bytes(&encode(packet, self.version));
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    pub fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Next packet within `timeout`.
    pub fn try_recv(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        self.read_one(timeout)
    }

    fn read_one(&mut self, timeout: Duration) -> Result<Packet, RecvError> {
        self.stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .ok();
        let frame = match protocol::read_frame(&mut self.reader, 1 << 28) {
            Ok(f) => f,
            Err(DecodeError::Eof) => return Err(RecvError::Closed),
            Err(e) if e.is_idle_timeout() => return Err(RecvError::Timeout),
            Err(DecodeError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(RecvError::Closed)
            }
            Err(e) => return Err(RecvError::Decode(e.to_string())),
        };
        protocol::decode_packet(frame, self.version).map_err(|e| RecvError::Decode(e.to_string()))
    }

    /// Next packet; panics if none arrives within `WAIT`.
    pub fn recv(&mut self) -> Packet {
        match self.try_recv(WAIT) {
            Ok(p) => p,
            Err(e) => panic!("expected a packet within {WAIT:?}: {e:?}"),
        }
    }

    /// Wait for a packet for which `pick` returns Some, keeping others for later `recv`s.
    pub fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Packet) -> Option<T>) -> T {
        // Look at what is already buffered first.
        if let Some(pos) = self.pending.iter().position(|p| pick(p).is_some()) {
            let p = self.pending.remove(pos).expect("position is valid");
            return pick(&p).expect("matched before");
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_one(left) {
                Ok(p) => match pick(&p) {
                    Some(t) => return t,
                    None => self.pending.push_back(p),
                },
                Err(e) => panic!(
                    "waiting for {what}: {e:?}; other packets received: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Next PUBLISH (other packets are kept).
    pub fn expect_publish(&mut self) -> Publish {
        self.wait_for("PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
    }

    /// Assert that no PUBLISH arrives within `within` (other packets are kept).
    pub fn expect_no_publish(&mut self, within: Duration) {
        if let Some(p) = self
            .pending
            .iter()
            .find(|p| matches!(p, Packet::Publish(_)))
        {
            panic!("expected no PUBLISH, got {p:?}");
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.read_one(left) {
                Ok(Packet::Publish(p)) => panic!("expected no PUBLISH, got {p:?}"),
                Ok(other) => self.pending.push_back(other),
                Err(RecvError::Timeout) => return,
                Err(e) => panic!("connection failed while expecting silence: {e:?}"),
            }
        }
    }

    /// The broker must send DISCONNECT with `reason_code` and then close the connection.
    pub fn expect_disconnect(&mut self, reason_code: u8) -> protocol::Disconnect {
        let d = self.wait_for("DISCONNECT", |p| match p {
            Packet::Disconnect(d) => Some(d.clone()),
            _ => None,
        });
        assert_eq!(
            d.reason_code, reason_code,
            "DISCONNECT reason code: got {:#04x}, want {reason_code:#04x}",
            d.reason_code
        );
        self.expect_closed();
        d
    }

    /// The broker must close the connection (without sending anything else meaningful).
    pub fn expect_closed(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_one(left) {
                Err(RecvError::Closed) => return,
                Err(RecvError::Timeout) => panic!("connection still open after {WAIT:?}"),
                Err(RecvError::Decode(e)) if e.contains("reset") => return,
                Err(e) => panic!("expected the connection to close: {e:?}"),
                Ok(_) => {}
            }
        }
    }

    /// The broker must close the connection without sending any packet first (as for a
    /// v3.1.1 client, which has no server DISCONNECT).
    pub fn expect_closed_without_a_packet(&mut self) {
        match self.read_one(WAIT) {
            Err(RecvError::Closed) => {}
            Err(RecvError::Decode(e)) if e.contains("reset") => {}
            Err(RecvError::Timeout) => panic!("connection still open after {WAIT:?}"),
            Err(e) => panic!("expected the connection to close: {e:?}"),
            Ok(p) => panic!("expected the connection to close without a packet, got {p:?}"),
        }
    }

    pub fn subscribe_with(
        &mut self,
        filters: &[(&str, SubscriptionOptions)],
        properties: Properties,
    ) -> SubAck {
        let packet_id = self.packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|(f, o)| SubscribeFilter {
                    filter: f.to_string(),
                    options: *o,
                })
                .collect(),
            properties,
        }));
        let ack = self.wait_for("SUBACK", |p| match p {
            Packet::SubAck(a) if a.packet_id == packet_id => Some(a.clone()),
            _ => None,
        });
        assert_eq!(ack.reason_codes.len(), filters.len());
        ack
    }

    /// Subscribe to one filter; asserts the granted QoS equals the requested one.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        let ack = self.subscribe_with(&[(filter, sub_options(qos))], Properties::default());
        assert_eq!(ack.reason_codes, vec![qos as u8], "SUBACK for {filter}");
    }

    /// Publish and, for QoS 1/2, complete the handshake. Returns the PUBACK/PUBREC reason code.
    pub fn publish_with(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> u8 {
        let packet_id = if qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id,
            payload: Bytes::copy_from_slice(payload),
            properties: properties.into(),
        }));
        match qos {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => self.wait_for("PUBACK", |p| match p {
                Packet::PubAck(a) if a.packet_id == packet_id => Some(a.reason_code),
                _ => None,
            }),
            QoS::ExactlyOnce => {
                let code = self.wait_for("PUBREC", |p| match p {
                    Packet::PubRec(a) if a.packet_id == packet_id => Some(a.reason_code),
                    _ => None,
                });
                if code < 0x80 {
                    self.send(&Packet::PubRel(Ack::new(packet_id)));
                    self.wait_for("PUBCOMP", |p| match p {
                        Packet::PubComp(a) if a.packet_id == packet_id => Some(()),
                        _ => None,
                    });
                }
                code
            }
        }
    }

    pub fn publish(&mut self, topic: &str, payload: &str, qos: QoS) -> u8 {
        self.publish_with(topic, payload.as_bytes(), qos, false, Properties::default())
    }

    /// Acknowledge a received QoS 1 PUBLISH.
    pub fn puback(&mut self, packet_id: u16) {
        self.send(&Packet::PubAck(Ack::new(packet_id)));
    }

    /// Round trip a PINGREQ: everything the broker sent before the PINGRESP is buffered, so a
    /// later `expect_no_publish` checks only what comes after this point.
    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
        self.wait_for("PINGRESP", |p| matches!(p, Packet::PingResp).then_some(()));
    }

    /// Normal v5/v3 DISCONNECT (reason 0, optional properties), then close the socket.
    pub fn disconnect_with(mut self, reason_code: u8, properties: Properties) {
        self.pending.clear();
        self.send(&Packet::Disconnect(protocol::Disconnect {
            reason_code,
            properties,
        }));
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        // Wait (bounded) for the broker to close its side, so it has processed the DISCONNECT.
        let _ = self.try_recv(WAIT);
    }

    pub fn disconnect(self) {
        self.disconnect_with(0, Properties::default());
    }

    /// Drop the TCP connection without DISCONNECT (a network failure, for the broker).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

pub fn payload_str(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).expect("UTF-8 payload")
}

/// `super::eventually` with the wait of this module, panicking with `what` on timeout.
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    super::eventually(WAIT, f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}
