//! Connection set-up: CONNECT/CONNACK and SUBSCRIBE/SUBACK, each with a deadline.

use crate::wire::{self, FrameReader, Incoming};
use mqflux::protocol::{
    Connect, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connected client: the socket and the reader holding whatever arrived after CONNACK.
pub struct Client {
    pub stream: TcpStream,
    pub reader: FrameReader,
    pub version: ProtocolVersion,
    /// v5 CONNACK Receive Maximum: how many QoS 1/2 publishes may be unacknowledged towards the
    /// broker [MQTT-3.3.4-7]. 65535 when absent or for v3.1.1.
    pub receive_maximum: u16,
}

/// Open a TCP connection and complete the MQTT handshake (clean start).
pub fn connect(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    read_buffer: usize,
    timeout: Duration,
) -> Result<Client, String> {
    connect_session(
        addr,
        version,
        client_id,
        keep_alive,
        read_buffer,
        timeout,
        false,
    )
}

/// `connect`, optionally asking for a persistent session (3.1.1 clean session 0; v5 clean start
/// 0 with a Session Expiry Interval of 300 s), which a broker with persistence stores.
pub fn connect_session(
    addr: SocketAddr,
    version: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    read_buffer: usize,
    timeout: Duration,
    persistent: bool,
) -> Result<Client, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("{client_id}: connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("{client_id}: set_nodelay: {e}"))?;
    let mut properties = Properties::default();
    if version.is_v5() {
        // Let the broker keep as many QoS 1/2 deliveries in flight towards us as it likes; the
        // closed loop bounds them anyway.
        properties.receive_maximum = Some(u16::MAX);
        if persistent {
            properties.session_expiry_interval = Some(300);
        }
    }
    let connect = Packet::Connect(Connect {
        version,
        clean_start: !persistent,
        keep_alive,
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
        properties,
        bridge: false,
    });
    let mut out = Vec::with_capacity(64);
    wire::encode(&connect, version, &mut out);
    stream
        .write_all(&out)
        .map_err(|e| format!("{client_id}: write CONNECT: {e}"))?;
    let mut reader = FrameReader::new(read_buffer, version);
    let packet = read_handshake(&mut stream, &mut reader, version, Instant::now() + timeout)
        .map_err(|e| format!("{client_id}: waiting for CONNACK: {e}"))?;
    match packet {
        Packet::ConnAck(ack) if ack.code == 0 => Ok(Client {
            stream,
            reader,
            version,
            receive_maximum: ack.properties.receive_maximum.unwrap_or(u16::MAX),
        }),
        Packet::ConnAck(ack) => Err(format!(
            "{client_id}: CONNACK refused with code 0x{:02x}",
            ack.code
        )),
        other => Err(format!(
            "{client_id}: expected CONNACK, got {}",
            other.name()
        )),
    }
}

impl Client {
    /// Subscribe to one filter and wait for its SUBACK; fails if the broker grants less than asked.
    pub fn subscribe(&mut self, filter: &str, qos: QoS, timeout: Duration) -> Result<(), String> {
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.to_string(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            }],
            properties: Properties::default(),
        });
        let mut out = Vec::new();
        wire::encode(&sub, self.version, &mut out);
        self.stream
            .write_all(&out)
            .map_err(|e| format!("SUBSCRIBE {filter}: {e}"))?;
        let deadline = Instant::now() + timeout;
        match read_handshake(&mut self.stream, &mut self.reader, self.version, deadline)
            .map_err(|e| format!("waiting for SUBACK to {filter}: {e}"))?
        {
            Packet::SubAck(ack) => match ack.reason_codes.first() {
                Some(&c) if c == qos as u8 => Ok(()),
                Some(&c) => Err(format!(
                    "SUBACK for {filter}: broker answered 0x{c:02x}, asked for QoS {}",
                    qos as u8
                )),
                None => Err(format!("SUBACK for {filter} without a return code")),
            },
            other => Err(format!(
                "expected SUBACK for {filter}, got {}",
                other.name()
            )),
        }
    }
}

/// Read until one non-PUBLISH packet arrives (CONNACK, SUBACK, PINGRESP), or the deadline passes.
pub fn read_handshake(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    version: ProtocolVersion,
    deadline: Instant,
) -> Result<Packet, String> {
    loop {
        if let Some(p) = reader.next_packet().map_err(|e| e.to_string())? {
            match p {
                Incoming::Other { header, body } => {
                    return wire::decode_other(header, body, version)
                }
                other => return Err(format!("unexpected packet during handshake: {other:?}")),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        reader.fill(stream).map_err(|e| e.to_string())?;
    }
}

/// Best-effort DISCONNECT (normal disconnection) and close.
pub fn disconnect(stream: &mut TcpStream, version: ProtocolVersion) {
    let mut out = Vec::new();
    wire::encode(&Packet::Disconnect(Default::default()), version, &mut out);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(&out);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
