//! A raw MQTT client over a plain `TcpStream`: packets are built byte by byte from the
//! MQTT 3.1.1 spec (section 2 and 3), independent of the broker's own codec, so tests can send
//! exactly the (in)valid bytes they mean and check exactly the bytes that come back.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

// Control packet types (first nibble of the fixed header), section 2.2.1.
pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Default wait for a packet the broker is expected to send.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Encoding (spec-derived byte vectors)
// ---------------------------------------------------------------------------------------------

/// Remaining Length as a variable byte integer (section 2.2.3).
pub fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// A whole packet: fixed-header byte, remaining length, body.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string (section 1.5.3). Takes raw bytes so tests can send invalid UTF-8.
pub fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// Fields of a CONNECT packet (section 3.1). `Default` is a valid MQTT 3.1.1 CONNECT with clean
/// session, keep-alive 60 s and an empty client id.
#[derive(Debug, Clone)]
pub struct Connect {
    pub protocol_name: &'static str,
    pub protocol_level: u8,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: u16,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    /// Bit 0 of the connect flags, which must be 0 [MQTT-3.1.2-3].
    pub reserved_flag: bool,
}

impl Default for Connect {
    fn default() -> Self {
        Connect {
            protocol_name: "MQTT",
            protocol_level: 4,
            client_id: String::new(),
            clean_session: true,
            keep_alive: 60,
            will: None,
            username: None,
            password: None,
            reserved_flag: false,
        }
    }
}

impl Connect {
    pub fn new(client_id: &str) -> Connect {
        Connect {
            client_id: client_id.into(),
            ..Connect::default()
        }
    }

    pub fn persistent(client_id: &str) -> Connect {
        Connect {
            client_id: client_id.into(),
            clean_session: false,
            ..Connect::default()
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = string(self.protocol_name.as_bytes());
        body.push(self.protocol_level);
        let mut flags = 0u8;
        if self.reserved_flag {
            flags |= 0x01;
        }
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(string(self.client_id.as_bytes()));
        if let Some(w) = &self.will {
            body.extend(string(w.topic.as_bytes()));
            body.extend(string(&w.payload));
        }
        if let Some(u) = &self.username {
            body.extend(string(u.as_bytes()));
        }
        if let Some(p) = &self.password {
            body.extend(string(p));
        }
        packet(CONNECT << 4, &body)
    }
}

/// PUBLISH (section 3.3). `packet_id` is only written for QoS > 0 [MQTT-2.3.1-5].
pub fn publish(
    topic: &str,
    payload: &[u8],
    qos: u8,
    packet_id: u16,
    retain: bool,
    dup: bool,
) -> Vec<u8> {
    publish_raw_topic(topic.as_bytes(), payload, qos, packet_id, retain, dup)
}

/// PUBLISH with arbitrary topic bytes (for invalid UTF-8 and U+0000 tests).
pub fn publish_raw_topic(
    topic: &[u8],
    payload: &[u8],
    qos: u8,
    packet_id: u16,
    retain: bool,
    dup: bool,
) -> Vec<u8> {
    let header = (PUBLISH << 4) | ((dup as u8) << 3) | (qos << 1) | retain as u8;
    let mut body = string(topic);
    if qos > 0 {
        body.extend(packet_id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(header, &body)
}

pub fn puback(packet_id: u16) -> Vec<u8> {
    packet(PUBACK << 4, &packet_id.to_be_bytes())
}
pub fn pubrec(packet_id: u16) -> Vec<u8> {
    packet(PUBREC << 4, &packet_id.to_be_bytes())
}
/// PUBREL's fixed-header flags are 0010 [MQTT-3.6.1-1].
pub fn pubrel(packet_id: u16) -> Vec<u8> {
    packet((PUBREL << 4) | 0x02, &packet_id.to_be_bytes())
}
pub fn pubcomp(packet_id: u16) -> Vec<u8> {
    packet(PUBCOMP << 4, &packet_id.to_be_bytes())
}

/// SUBSCRIBE with the mandatory flags 0010 [MQTT-3.8.1-1].
pub fn subscribe(packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    subscribe_with_header((SUBSCRIBE << 4) | 0x02, packet_id, filters)
}

pub fn subscribe_with_header(header: u8, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        body.extend(string(filter.as_bytes()));
        body.push(*qos);
    }
    packet(header, &body)
}

/// UNSUBSCRIBE with the mandatory flags 0010 [MQTT-3.10.1-1].
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    for filter in filters {
        body.extend(string(filter.as_bytes()));
    }
    packet((UNSUBSCRIBE << 4) | 0x02, &body)
}

pub fn pingreq() -> Vec<u8> {
    vec![PINGREQ << 4, 0]
}

pub fn disconnect() -> Vec<u8> {
    vec![DISCONNECT << 4, 0]
}

// ---------------------------------------------------------------------------------------------
// Decoding what the broker sends
// ---------------------------------------------------------------------------------------------

/// One packet as received: fixed-header byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPacket {
    pub header: u8,
    pub body: Vec<u8>,
}

/// A received PUBLISH, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPublish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub packet_id: u16,
    pub payload: Vec<u8>,
}

impl RawPacket {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }

    /// The whole packet as bytes (header, remaining length, body), for exact comparisons.
    pub fn bytes(&self) -> Vec<u8> {
        packet(self.header, &self.body)
    }

    /// Packet identifier of an ack, SUBACK or UNSUBACK (first two body bytes).
    pub fn packet_id(&self) -> u16 {
        assert!(
            self.body.len() >= 2,
            "packet {:02x?} has no packet id",
            self.bytes()
        );
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// Parse as PUBLISH; panics if it is another packet type.
    pub fn publish(&self) -> RawPublish {
        assert_eq!(
            self.kind(),
            PUBLISH,
            "expected PUBLISH, got {:02x?}",
            self.bytes()
        );
        let qos = (self.header >> 1) & 0x03;
        let len = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let topic = String::from_utf8(self.body[2..2 + len].to_vec()).expect("topic is UTF-8");
        let mut at = 2 + len;
        let mut packet_id = 0;
        if qos > 0 {
            packet_id = u16::from_be_bytes([self.body[at], self.body[at + 1]]);
            at += 2;
        }
        RawPublish {
            dup: self.header & 0x08 != 0,
            qos,
            retain: self.header & 0x01 != 0,
            topic,
            packet_id,
            payload: self.body[at..].to_vec(),
        }
    }
}

#[derive(Debug)]
pub enum ReadError {
    /// Nothing (complete) arrived in time.
    Timeout,
    /// The broker closed the connection (EOF or reset).
    Closed,
    Io(std::io::Error),
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

pub struct RawClient {
    pub stream: TcpStream,
    /// Bytes read but not yet returned as a packet.
    buf: Vec<u8>,
    /// Packets read while waiting for a specific reply (e.g. a PUBLISH that arrived before the
    /// PUBREL we waited for); returned first by `read_packet`.
    pending: VecDeque<RawPacket>,
}

impl RawClient {
    /// Open a TCP connection (nothing sent yet).
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("cannot connect to broker at {addr}: {e}"));
        stream.set_nodelay(true).expect("set_nodelay");
        RawClient {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Like `connect_mqtt`, but a broker that is down or closes is `None`, not a panic (for
    /// tests that kill the broker under load).
    pub fn try_connect_mqtt(addr: SocketAddr, connect: &Connect) -> Option<(RawClient, bool)> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_nodelay(true).ok()?;
        let mut c = RawClient {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
        };
        c.try_send(&connect.encode()).ok()?;
        let ack = c.read_packet(REPLY_TIMEOUT).ok()?;
        if ack.kind() != CONNACK || ack.body.len() != 2 || ack.body[1] != 0 {
            return None;
        }
        let present = ack.body[0] & 0x01 != 0;
        Some((c, present))
    }

    /// Open a connection, send `connect` and assert CONNACK with return code 0.
    /// Returns the client and the session-present flag.
    pub fn connect_mqtt(addr: SocketAddr, connect: &Connect) -> (RawClient, bool) {
        let mut c = RawClient::connect(addr);
        c.send(&connect.encode());
        let ack = c.expect_packet();
        assert_eq!(
            ack.kind(),
            CONNACK,
            "expected CONNACK, got {:02x?}",
            ack.bytes()
        );
        assert_eq!(
            ack.body.len(),
            2,
            "CONNACK has a 2-byte body: {:02x?}",
            ack.bytes()
        );
        assert_eq!(
            ack.body[1],
            0,
            "CONNACK return code for {:?}: {:02x?}",
            connect.client_id,
            ack.bytes()
        );
        (c, ack.body[0] & 0x01 != 0)
    }

    /// Shorthand: clean-session connection with this client id.
    pub fn connected(addr: SocketAddr, client_id: &str) -> RawClient {
        RawClient::connect_mqtt(addr, &Connect::new(client_id)).0
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to broker");
    }

    /// Like `send`, but a write error (the broker may already have closed) is returned, not a panic.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Read one packet, waiting at most `timeout`.
    pub fn read_packet(&mut self, timeout: Duration) -> Result<RawPacket, ReadError> {
        if let Some(p) = self.pending.pop_front() {
            return Ok(p);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.take_buffered_packet() {
                return Ok(p);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ReadError::Timeout);
            }
            self.stream
                .set_read_timeout(Some(deadline - now))
                .expect("set_read_timeout");
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ReadError::Timeout)
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Err(ReadError::Closed)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
    }

    fn take_buffered_packet(&mut self) -> Option<RawPacket> {
        let mut len = 0usize;
        let mut multiplier = 1usize;
        let mut i = 1;
        loop {
            let byte = *self.buf.get(i)?;
            len += (byte & 0x7f) as usize * multiplier;
            multiplier *= 128;
            i += 1;
            if byte & 0x80 == 0 {
                break;
            }
            assert!(
                i <= 4,
                "broker sent a remaining length longer than 4 bytes: {:02x?}",
                &self.buf[..i]
            );
        }
        if self.buf.len() < i + len {
            return None;
        }
        let header = self.buf[0];
        let body = self.buf[i..i + len].to_vec();
        self.buf.drain(..i + len);
        Some(RawPacket { header, body })
    }

    /// Read one packet within `REPLY_TIMEOUT`, panicking on timeout or close.
    pub fn expect_packet(&mut self) -> RawPacket {
        match self.read_packet(REPLY_TIMEOUT) {
            Ok(p) => p,
            Err(e) => {
                panic!("expected a packet from the broker within {REPLY_TIMEOUT:?}, got {e:?}")
            }
        }
    }

    /// Read until a packet of type `kind` arrives (within `REPLY_TIMEOUT`) and return it; other
    /// packets read meanwhile (deliveries interleaved with an ack flow) are kept for later reads.
    pub fn expect_reply(&mut self, kind: u8) -> RawPacket {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut other = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_packet(left) {
                Ok(p) if p.kind() == kind => break p,
                Ok(p) => other.push(p),
                Err(e) => panic!("expected packet type {kind} within {REPLY_TIMEOUT:?}, got {e:?} after {other:02x?}"),
            }
        };
        for p in other.into_iter().rev() {
            self.pending.push_front(p);
        }
        found
    }

    /// Read one packet and assert it is a PUBLISH; returns it parsed.
    pub fn expect_publish(&mut self) -> RawPublish {
        self.expect_packet().publish()
    }

    /// Assert the exact bytes of the next packet.
    pub fn expect_bytes(&mut self, expected: &[u8]) {
        let p = self.expect_packet();
        assert_eq!(p.bytes(), expected, "unexpected packet from broker");
    }

    /// Assert that nothing arrives for `quiet` (used only where absence is the behaviour under
    /// test and no later event can be awaited instead).
    pub fn expect_silence(&mut self, quiet: Duration) {
        match self.read_packet(quiet) {
            Err(ReadError::Timeout) => {}
            Ok(p) => panic!("expected no packet for {quiet:?}, got {:02x?}", p.bytes()),
            Err(e) => panic!("expected no packet for {quiet:?}, got {e:?}"),
        }
    }

    /// Assert the broker closes the connection within `timeout`, without sending any packet
    /// first. Returns how long the close took.
    pub fn expect_closed(&mut self, timeout: Duration) -> Duration {
        let start = Instant::now();
        match self.read_packet(timeout) {
            Err(ReadError::Closed) => start.elapsed(),
            Ok(p) => panic!(
                "expected the broker to close the connection, got packet {:02x?}",
                p.bytes()
            ),
            Err(e) => {
                panic!("expected the broker to close the connection within {timeout:?}, got {e:?}")
            }
        }
    }

    /// Read packets until the broker closes the connection (within `timeout`); returns them.
    pub fn read_until_closed(&mut self, timeout: Duration) -> Vec<RawPacket> {
        let deadline = Instant::now() + timeout;
        let mut packets = Vec::new();
        loop {
            match self.read_packet(deadline.saturating_duration_since(Instant::now())) {
                Ok(p) => packets.push(p),
                Err(ReadError::Closed) => return packets,
                Err(e) => panic!("expected the broker to close the connection within {timeout:?}, got {e:?} after {packets:02x?}"),
            }
        }
    }

    /// PINGREQ -> PINGRESP round trip: proves the connection is open and the broker has processed
    /// everything this client sent before [MQTT-3.12.4-1].
    pub fn ping(&mut self) {
        self.send(&pingreq());
        let p = self.expect_reply(PINGRESP);
        assert_eq!(p.bytes(), vec![PINGRESP << 4, 0], "expected PINGRESP");
    }

    /// SUBSCRIBE and return the SUBACK return codes (asserting the packet id matches).
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&subscribe(packet_id, filters));
        let ack = self.expect_reply(SUBACK);
        assert_eq!(
            ack.kind(),
            SUBACK,
            "expected SUBACK, got {:02x?}",
            ack.bytes()
        );
        assert_eq!(
            ack.packet_id(),
            packet_id,
            "SUBACK packet id [MQTT-3.8.4-2]"
        );
        ack.body[2..].to_vec()
    }

    /// Acknowledge a received PUBLISH with the flow its QoS requires (PUBACK, or PUBREC then
    /// PUBREL <- PUBCOMP ->).
    pub fn ack(&mut self, p: &RawPublish) {
        match p.qos {
            0 => {}
            1 => self.send(&puback(p.packet_id)),
            2 => {
                self.send(&pubrec(p.packet_id));
                let rel = self.expect_reply(PUBREL);
                assert_eq!(
                    rel.bytes(),
                    pubrel(p.packet_id),
                    "expected PUBREL for {}",
                    p.packet_id
                );
                self.send(&pubcomp(p.packet_id));
            }
            q => panic!("broker sent QoS {q}"),
        }
    }

    /// Publish with the complete flow for its QoS, asserting the broker's acks.
    pub fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: u8,
        packet_id: u16,
        retain: bool,
    ) {
        self.send(&publish(topic, payload, qos, packet_id, retain, false));
        match qos {
            0 => {}
            1 => assert_eq!(self.expect_reply(PUBACK).bytes(), puback(packet_id)),
            2 => {
                assert_eq!(self.expect_reply(PUBREC).bytes(), pubrec(packet_id));
                self.send(&pubrel(packet_id));
                assert_eq!(self.expect_reply(PUBCOMP).bytes(), pubcomp(packet_id));
            }
            q => panic!("invalid QoS {q}"),
        }
    }

    /// Close the socket abruptly (no DISCONNECT).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
