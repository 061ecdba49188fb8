//! bytes -> Packet for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Two steps: [`read_frame`] cuts one packet off a byte stream (fixed header + body, size checked
//! before the body is allocated), [`decode_packet`] turns a frame into a [`Packet`], validating every
//! field. Version differences are small `if version.is_v5()` branches inside one decoder.
//!
//! Error classes follow the v5 spec (section 4.13), also used for v3.x where that spec only says
//! "close the connection": a packet that cannot be parsed or breaks a data-type rule is
//! [`DecodeError::Malformed`], a well-formed packet that breaks a protocol rule is
//! [`DecodeError::Protocol`]. Every message names the packet, the field and, where one exists, the
//! spec rule.
use super::*;
use bytes::Buf;
use std::io::{self, Read};
use std::sync::Arc;

/// One MQTT frame: the first fixed-header byte and the body (variable header + payload).
#[derive(Debug, Clone)]
pub struct Frame {
    pub header: u8,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by peer")]
    Eof,
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("unsupported protocol name {name:?} level {level}")]
    UnsupportedProtocol { name: String, level: u8 },
}

impl DecodeError {
    /// The v5 reason code a DISCONNECT/CONNACK should carry for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::UnsupportedProtocol { .. } => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::Io(_) | DecodeError::Eof => reason::UNSPECIFIED_ERROR,
        }
    }

    /// True when [`read_frame`] gave up because the socket's read timeout expired *between*
    /// packets (no byte of the next packet had been read). The stream is intact: the caller may
    /// check keep-alive / shutdown and call `read_frame` again. Every other error is fatal for the
    /// connection.
    pub fn is_idle_timeout(&self) -> bool {
        matches!(self, DecodeError::Io(e)
            if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// The rule every decode error ultimately breaks when no more specific one exists: a protocol
/// violation closes the connection (3.1.1 [MQTT-4.8.0-1]; 5.0 [MQTT-4.13.1-1] for Malformed
/// Packet and Protocol Error). Every error message cites a rule so the broker's log line does.
fn close_rule(version: ProtocolVersion) -> &'static str {
    if version.is_v5() {
        "[MQTT-4.13.1-1]"
    } else {
        "[MQTT-4.8.0-1]"
    }
}

/// Properties exist only in 5.0.
const V5_CLOSE_RULE: &str = "[MQTT-4.13.1-1]";

fn malformed(msg: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(msg.into())
}

fn protocol(msg: impl Into<String>) -> DecodeError {
    DecodeError::Protocol(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Read one frame. `max_packet_size` bounds the whole packet and is checked from the fixed header,
/// before the body is allocated. Returns `Eof` if the peer closed cleanly between packets.
///
/// Read timeouts: a timeout (`WouldBlock`/`TimedOut`) before the first byte of a packet is returned
/// unchanged as `Io` and nothing has been consumed, so the caller can use socket read timeouts for
/// keep-alive and shutdown polling (see [`DecodeError::is_idle_timeout`]). A timeout *inside* a
/// packet cannot be resumed (the bytes already read are gone), so it is turned into a fatal `Io`
/// error of kind `Other` ("read timed out inside a packet"): a peer that stalls mid-packet is
/// treated like one that broke the connection. The peer closing mid-packet is `Io(UnexpectedEof)`.
///
/// After `TooLarge` the body is still unread, so the stream is out of sync: close the connection
/// (v5: after a DISCONNECT 0x95).
///
/// Bodies above 64 KiB are not pre-allocated to the announced size: the buffer grows with the bytes
/// actually received, so a peer announcing a large packet and sending nothing costs little memory.
///
/// Each call reads the fixed header a byte at a time (it must not read past the packet), so wrap
/// a `TcpStream` in a `BufReader`; that is safe with read timeouts, since a `BufReader` keeps its
/// buffered bytes when the inner read fails.
pub fn read_frame(r: &mut impl Read, max_packet_size: usize) -> Result<Frame, DecodeError> {
    let mut first = [0u8; 1];
    loop {
        match r.read(&mut first) {
            Ok(0) => return Err(DecodeError::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DecodeError::Io(e)),
        }
    }
    let header = first[0];
    let (remaining, length_bytes) = remaining_length(|i| {
        let mut b = [0u8; 1];
        read_exact_in_frame(r, &mut b, 1 + i)?;
        Ok(Some(b[0]))
    })?
    .expect("a reader yields every byte or fails");
    let size = check_size(length_bytes, remaining, max_packet_size)?;

    let body = if remaining <= INITIAL_BODY_CAPACITY {
        // Common case: one exact allocation, filled by plain reads.
        let mut body = vec![0u8; remaining];
        read_exact_in_frame(r, &mut body, 1 + length_bytes)?;
        body
    } else {
        // Large packet: let the buffer grow with the bytes that actually arrive.
        let mut body = Vec::with_capacity(INITIAL_BODY_CAPACITY);
        let mut limited = r.take(remaining as u64);
        loop {
            match limited.read_to_end(&mut body) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(mid_frame_error(e, 1 + length_bytes + body.len())),
            }
        }
        if body.len() < remaining {
            return Err(DecodeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} of {} bytes of a packet",
                    1 + length_bytes + body.len(),
                    size
                ),
            )));
        }
        body
    };
    Ok(Frame {
        header,
        body: Bytes::from(body),
    })
}

/// The frame at the start of `buf` when `buf` holds all of it, with the bytes it takes; None
/// when more bytes are needed. Errors and limits as `read_frame`. A reader with a buffer takes
/// its frames this way in one copy, and uses `read_frame` for the rest.
pub fn frame_in(buf: &[u8], max_packet_size: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    Ok(frame_in_place(buf, max_packet_size)?.map(|(frame, size)| {
        let (header, body) = (frame.header, Bytes::copy_from_slice(frame.body));
        (Frame { header, body }, size)
    }))
}

/// A frame where it lies in a buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// The fixed header's first byte: packet type and flags.
    pub header: u8,
    pub body: &'a [u8],
}

/// `frame_in` without the copy.
pub fn frame_in_place(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<(FrameRef<'_>, usize)>, DecodeError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining, length_bytes)) = remaining_length(|i| Ok(buf.get(1 + i).copied()))? else {
        return Ok(None);
    };
    let size = check_size(length_bytes, remaining, max_packet_size)?;
    let Some(body) = buf.get(1 + length_bytes..size) else {
        return Ok(None);
    };
    Ok(Some((FrameRef { header, body }, size)))
}

/// Remaining Length: up to 4 bytes, 7 bits each, high bit = "more bytes follow" [MQTT-2.2.3].
/// `byte(i)` yields its i-th byte, None when not there yet. Returns (value, bytes it took).
fn remaining_length(
    mut byte: impl FnMut(usize) -> Result<Option<u8>, DecodeError>,
) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(b) = byte(i)? else {
            return Ok(None);
        };
        remaining |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((remaining, i + 1)));
        }
    }
    Err(malformed(
        "remaining length uses more than 4 bytes (3.1.1 section 2.2.3, 5.0 section 2.1.4) \
         [MQTT-4.8.0-1] [MQTT-4.13.1-1]",
    ))
}

/// The whole packet's size, refused above `max_packet_size` (checked before any body is read).
fn check_size(
    length_bytes: usize,
    remaining: usize,
    max_packet_size: usize,
) -> Result<usize, DecodeError> {
    let size = 1 + length_bytes + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(size)
}

/// Bodies up to this size get their buffer in one allocation; larger ones grow as data arrives
/// (so announcing a huge packet and sending nothing costs at most this much memory).
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

fn read_exact_in_frame(
    r: &mut impl Read,
    buf: &mut [u8],
    already: usize,
) -> Result<(), DecodeError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(DecodeError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} bytes of a packet header",
                        already + filled
                    ),
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(mid_frame_error(e, already + filled)),
        }
    }
    Ok(())
}

fn mid_frame_error(e: io::Error, read_so_far: usize) -> DecodeError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        // Not resumable: must not look like an idle timeout to the caller.
        DecodeError::Io(io::Error::other(format!(
            "read timed out inside a packet after {read_so_far} bytes: {e}"
        )))
    } else {
        DecodeError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Field reader
// ---------------------------------------------------------------------------------------------

/// Cursor over a frame body. Every read is bounds-checked; running past the end is Malformed.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    packet: &'static str,
    /// Picks the rule cited in errors (CONNECT updates it once the level is known).
    version: ProtocolVersion,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], packet: &'static str, version: ProtocolVersion) -> Self {
        Reader {
            buf,
            pos: 0,
            packet,
            version,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(malformed(format!(
                "{}: {field} needs {n} bytes but only {} remain {}",
                self.packet,
                self.remaining(),
                close_rule(self.version)
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Variable Byte Integer (section 1.5.5): at most 4 bytes.
    fn varint(&mut self, field: &str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8(field)?;
            value |= ((b & 0x7F) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(format!(
            "{}: {field} is a variable byte integer longer than 4 bytes (section 1.5.5) {}",
            self.packet,
            close_rule(self.version)
        )))
    }

    /// A copy of the next `n` bytes (binary fields are small and rare; a slice of the frame
    /// would keep all of it alive).
    fn slice(&mut self, n: usize, field: &str) -> Result<Bytes, DecodeError> {
        Ok(Bytes::copy_from_slice(self.take(n, field)?))
    }

    /// Binary Data: two-byte length + bytes (section 1.5.6).
    fn binary(&mut self, field: &str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)? as usize;
        self.slice(len, field)
    }

    /// UTF-8 Encoded String (section 1.5.3 / 3.1.1 section 1.5.3).
    fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    /// `string`, borrowed from the frame body.
    fn str(&mut self, field: &str) -> Result<&'a str, DecodeError> {
        let len = self.u16(field)? as usize;
        let raw = self.take(len, field)?;
        // from_utf8 rejects ill-formed UTF-8 and the surrogates U+D800..U+DFFF [MQTT-1.5.3-1].
        let s = std::str::from_utf8(raw).map_err(|e| {
            malformed(format!(
                "{}: {field} is not valid UTF-8 ({e}) [MQTT-1.5.3-1] (5.0: [MQTT-1.5.4-1])",
                self.packet
            ))
        })?;
        if s.contains('\0') {
            return Err(malformed(format!(
                "{}: {field} contains U+0000 [MQTT-1.5.3-2] (5.0: [MQTT-1.5.4-2])",
                self.packet
            )));
        }
        Ok(s)
    }

    /// Rest of the body.
    fn rest(&mut self) -> &'a [u8] {
        let b = &self.buf[self.pos..];
        self.pos = self.buf.len();
        b
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(malformed(format!(
                "{}: {} unexpected bytes after the last field {}",
                self.packet,
                self.remaining(),
                close_rule(self.version)
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Packets
// ---------------------------------------------------------------------------------------------

/// Decode a frame. `version` is the connection's negotiated version (ignored for CONNECT, which
/// declares its own).
///
/// Not checked here (they need connection state and belong to the broker): topic alias ranges
/// (including alias 0), subscription identifiers in client-to-server PUBLISH, topic filter syntax,
/// client identifier rules.
///
/// Takes the frame by value: a PUBLISH payload becomes the tail of the frame's own buffer (no
/// copy and no shared-buffer allocation, see `decode_publish`).
pub fn decode_packet(frame: Frame, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let packet_type = frame.header >> 4;
    let flags = frame.header & 0x0F;
    // [MQTT-2.2.2-1/2] (3.1.1) / section 2.1.3 (5.0): reserved flag values; anything else is
    // malformed. PUBLISH carries DUP/QoS/RETAIN in its flags.
    // MQTT 3.1 defines no such rule: its SUBSCRIBE/UNSUBSCRIBE/PUBREL may carry DUP on a retry
    // (0x8A, 0xAA, 0x6A), so 3.1 connections skip the check (as mosquitto does).
    let expected_flags = match packet_type {
        3 => None,
        _ if version == ProtocolVersion::V31 && packet_type != 1 => None,
        6 | 8 | 10 => Some(0b0010),
        _ => Some(0),
    };
    if let Some(expected) = expected_flags {
        if flags != expected {
            return Err(malformed(format!(
                "packet type {packet_type}: fixed header flags {flags:#06b}, must be {expected:#06b} [MQTT-2.2.2-2]"
            )));
        }
    }
    if packet_type == 3 {
        return decode_publish(frame, version).map(Packet::Publish);
    }
    let body = &frame.body;
    match packet_type {
        1 => decode_connect(body).map(Packet::Connect),
        2 => decode_connack(body, version).map(Packet::ConnAck),
        4 => decode_ack(body, version, "PUBACK", PUBACK_REASONS).map(Packet::PubAck),
        5 => decode_ack(body, version, "PUBREC", PUBACK_REASONS).map(Packet::PubRec),
        6 => decode_ack(body, version, "PUBREL", PUBREL_REASONS).map(Packet::PubRel),
        7 => decode_ack(body, version, "PUBCOMP", PUBREL_REASONS).map(Packet::PubComp),
        8 => decode_subscribe(body, version).map(Packet::Subscribe),
        9 => decode_suback(body, version).map(Packet::SubAck),
        10 => decode_unsubscribe(body, version).map(Packet::Unsubscribe),
        11 => decode_unsuback(body, version).map(Packet::UnsubAck),
        12 | 13 => {
            if !body.is_empty() {
                return Err(malformed(format!(
                    "{}: remaining length must be 0, got {} (section 3.12/3.13) {}",
                    if packet_type == 12 {
                        "PINGREQ"
                    } else {
                        "PINGRESP"
                    },
                    body.len(),
                    close_rule(version)
                )));
            }
            Ok(if packet_type == 12 {
                Packet::PingReq
            } else {
                Packet::PingResp
            })
        }
        14 => decode_disconnect(body, version).map(Packet::Disconnect),
        15 if version.is_v5() => decode_auth(body).map(Packet::Auth),
        _ => Err(malformed(format!(
            "reserved control packet type {packet_type} for MQTT {version} (section 2.1.2) {}",
            close_rule(version)
        ))),
    }
}

fn check_packet_id(id: u16, packet: &str) -> Result<u16, DecodeError> {
    if id == 0 {
        return Err(protocol(format!(
            "{packet}: packet identifier 0 [MQTT-2.3.1-1]"
        )));
    }
    Ok(id)
}

/// Topic Name of a PUBLISH or Will: no wildcards [MQTT-3.3.2-2]. Emptiness is checked by callers
/// (allowed in a v5 PUBLISH that uses a topic alias).
fn check_topic_name(topic: &str, packet: &str, field: &str) -> Result<(), DecodeError> {
    if topic.contains(['+', '#']) {
        return Err(protocol(format!(
            "{packet}: {field} {topic:?} contains a wildcard [MQTT-3.3.2-2]"
        )));
    }
    Ok(())
}

fn check_reason(
    code: u8,
    allowed: &[u8],
    packet: &str,
    version: ProtocolVersion,
) -> Result<u8, DecodeError> {
    if !allowed.contains(&code) {
        return Err(protocol(format!(
            "{packet}: invalid reason code {code:#04x} (section 2.4) {}",
            close_rule(version)
        )));
    }
    Ok(code)
}

// Reason codes each packet may carry (v5 sections 3.2.2.2, 3.4.2.1, 3.6.2.1, 3.9.3, 3.11.3,
// 3.14.2.1, 3.15.2.1).
const CONNACK_REASONS: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_REASONS: &[u8] = &[0x00, 0x92];
const SUBACK_REASONS: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_RETURN_CODES_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_REASONS: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_REASONS: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_REASONS: &[u8] = &[0x00, 0x18, 0x19];

fn decode_connect(body: &Bytes) -> Result<Connect, DecodeError> {
    // Until the protocol level is read, errors cite the 3.1.1 rule.
    let mut r = Reader::new(body, "CONNECT", ProtocolVersion::V311);
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V31,
        ("MQTT", _) | ("MQIsdp", _) => {
            // [MQTT-3.1.2-2]: answer CONNACK 0x01 (v3) / 0x84 (v5), then close.
            return Err(DecodeError::UnsupportedProtocol { name, level });
        }
        _ => {
            // [MQTT-3.1.2-1]: not MQTT at all; the server may just close the connection.
            return Err(protocol(format!(
                "CONNECT: unknown protocol name {name:?} (level {level}) [MQTT-3.1.2-1]"
            )));
        }
    };

    r.version = version;
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(malformed(
            "CONNECT: reserved connect flag bit 0 is set [MQTT-3.1.2-3]",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos_bits != 0 {
        return Err(malformed(
            "CONNECT: will QoS set without will flag [MQTT-3.1.2-13]",
        ));
    }
    if !will_flag && will_retain {
        return Err(malformed(
            "CONNECT: will retain set without will flag [MQTT-3.1.2-15]",
        ));
    }
    let will_qos = QoS::from_u8(will_qos_bits)
        .ok_or_else(|| malformed("CONNECT: will QoS 3 [MQTT-3.1.2-14]"))?;
    if password_flag && !username_flag && !version.is_v5() {
        // 3.1.1 forbids a password without a user name; 5.0 allows it.
        return Err(malformed(
            "CONNECT: password flag without user name flag [MQTT-3.1.2-22]",
        ));
    }

    let keep_alive = r.u16("keep alive")?;
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Connect)?
    } else {
        Properties::default()
    };

    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if version.is_v5() {
            read_properties(&mut r, PropContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string("will topic")?;
        if topic.is_empty() {
            return Err(protocol("CONNECT: empty will topic [MQTT-4.7.3-1]"));
        }
        check_topic_name(&topic, "CONNECT", "will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        if version == ProtocolVersion::V31 && r.remaining() == 0 {
            // Some 3.1 clients set the password flag without sending a password (mosquitto
            // tolerates this too); treat it as absent.
            None
        } else {
            Some(r.binary("password")?)
        }
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(body: &Bytes, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let mut r = Reader::new(body, "CONNACK", version);
    let ack_flags = r.u8("acknowledge flags")?;
    // 3.1 has no session-present flag: the whole byte is reserved.
    let reserved_mask = if version == ProtocolVersion::V31 {
        0xFF
    } else {
        0xFE
    };
    if ack_flags & reserved_mask != 0 {
        return Err(malformed(format!(
            "CONNACK: reserved acknowledge flags set ({ack_flags:#04x}) [MQTT-3.2.2-1]"
        )));
    }
    let session_present = ack_flags & 0x01 != 0;
    let code = r.u8("return code")?;
    let properties = if version.is_v5() {
        check_reason(code, CONNACK_REASONS, "CONNACK", version)?;
        read_properties(&mut r, PropContext::ConnAck)?
    } else {
        if code > 5 {
            return Err(protocol(format!(
                "CONNACK: invalid return code {code} (section 3.2.2.3) {}",
                close_rule(version)
            )));
        }
        Properties::default()
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

/// Decode a PUBLISH frame (`frame.header >> 4 == 3`; anything else is a bug of the caller).
/// The broker calls this directly for a PUBLISH that was not whole in its read buffer (the
/// others it decodes in place, `decode_publish_view`): a `Packet` is much larger than a
/// `Publish`, and every move of it is a copy.
pub fn decode_publish(frame: Frame, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let view = decode_publish_view(frame.header, &frame.body, version)?;
    // The payload is the rest of the frame: advancing the frame's own `Bytes` keeps its single
    // owner (a slice would allocate a shared reference count for every PUBLISH).
    let header_len = frame.body.len() - view.payload.len();
    let PublishView {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        ..
    } = view;
    let topic: Arc<str> = topic.into();
    let mut body = frame.body;
    body.advance(header_len);
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: body,
        properties,
    })
}

/// A PUBLISH decoded where it lies: topic and payload borrowed from the frame's body. The
/// broker routes a publish that only the sink takes from here, without copying it.
#[derive(Debug)]
pub struct PublishView<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: u16,
    pub payload: &'a [u8],
    pub properties: PublishProperties,
}

impl PublishView<'_> {
    pub fn into_owned(self) -> Publish {
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.into(),
            packet_id: self.packet_id,
            payload: Bytes::copy_from_slice(self.payload),
            properties: self.properties,
        }
    }
}

/// Decode a PUBLISH's body (`header`: its fixed header byte), with every check of `decode_publish`.
pub fn decode_publish_view(
    header: u8,
    body: &[u8],
    version: ProtocolVersion,
) -> Result<PublishView<'_>, DecodeError> {
    debug_assert_eq!(header >> 4, 3, "not a PUBLISH frame");
    let flags = header & 0x0F;
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03)
        .ok_or_else(|| malformed("PUBLISH: QoS 3 [MQTT-3.3.1-4]"))?;
    if dup && qos == QoS::AtMostOnce {
        return Err(protocol(
            "PUBLISH: DUP flag set on a QoS 0 message [MQTT-3.3.1-2]",
        ));
    }
    let mut r = Reader::new(body, "PUBLISH", version);
    let topic = r.str("topic name")?;
    // v5 allows an empty topic name when a topic alias is present (checked by the broker, which
    // owns the alias table); 3.x never does [MQTT-4.7.3-1].
    if topic.is_empty() && !version.is_v5() {
        return Err(protocol("PUBLISH: empty topic name [MQTT-4.7.3-1]"));
    }
    check_topic_name(topic, "PUBLISH", "topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        check_packet_id(r.u16("packet identifier")?, "PUBLISH")?
    };
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Publish)?.into()
    } else {
        PublishProperties::default()
    };
    Ok(PublishView {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. v5 short forms: remaining length 2 means reason 0 and no
/// properties, 3 means a reason code and no properties (sections 3.4.2.1, 3.4.2.2.1).
fn decode_ack(
    body: &Bytes,
    version: ProtocolVersion,
    name: &'static str,
    reasons: &[u8],
) -> Result<Ack, DecodeError> {
    let mut r = Reader::new(body, name, version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, name)?;
    let mut ack = Ack::new(packet_id);
    if version.is_v5() {
        if r.remaining() > 0 {
            ack.reason_code = check_reason(r.u8("reason code")?, reasons, name, version)?;
        }
        if r.remaining() > 0 {
            ack.properties = read_properties(&mut r, PropContext::Ack)?;
        }
    }
    r.finish()?;
    Ok(ack)
}

fn decode_subscribe(body: &Bytes, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let mut r = Reader::new(body, "SUBSCRIBE", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "SUBSCRIBE")?;
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        let opts = r.u8("subscription options")?;
        let qos = QoS::from_u8(opts & 0x03).ok_or_else(|| {
            malformed(format!(
                "SUBSCRIBE: requested QoS 3 for {filter:?} [MQTT-3.8.3-4]"
            ))
        })?;
        let options = if version.is_v5() {
            if opts & 0xC0 != 0 {
                return Err(malformed(format!(
                    "SUBSCRIBE: reserved subscription option bits set for {filter:?} [MQTT-3.8.3-5]"
                )));
            }
            let retain_handling = (opts >> 4) & 0x03;
            if retain_handling == 3 {
                return Err(protocol(format!(
                    "SUBSCRIBE: retain handling 3 for {filter:?} (section 3.8.3.1) {V5_CLOSE_RULE}"
                )));
            }
            SubscriptionOptions {
                qos,
                no_local: opts & 0x04 != 0,
                retain_as_published: opts & 0x08 != 0,
                retain_handling,
            }
        } else {
            if opts & 0xFC != 0 {
                return Err(malformed(format!(
                    "SUBSCRIBE: reserved bits of requested QoS set for {filter:?} [MQTT-3-8.3-4]"
                )));
            }
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(protocol("SUBSCRIBE: no topic filter [MQTT-3.8.3-3]"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(body: &Bytes, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let mut r = Reader::new(body, "SUBACK", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "SUBACK")?;
    let (properties, allowed) = if version.is_v5() {
        (
            read_properties(&mut r, PropContext::SubAck)?,
            SUBACK_REASONS,
        )
    } else {
        (Properties::default(), SUBACK_RETURN_CODES_V3)
    };
    let reason_codes = r.rest().to_vec();
    if reason_codes.is_empty() {
        return Err(protocol(format!(
            "SUBACK: no return codes (section 3.9.3) {}",
            close_rule(version)
        )));
    }
    for &code in &reason_codes {
        check_reason(code, allowed, "SUBACK", version)?;
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

fn decode_unsubscribe(body: &Bytes, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let mut r = Reader::new(body, "UNSUBSCRIBE", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "UNSUBSCRIBE")?;
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(protocol("UNSUBSCRIBE: no topic filter [MQTT-3.10.3-2]"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(body: &Bytes, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let mut r = Reader::new(body, "UNSUBACK", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "UNSUBACK")?;
    let mut ack = UnsubAck {
        packet_id,
        reason_codes: Vec::new(),
        properties: Properties::default(),
    };
    if version.is_v5() {
        ack.properties = read_properties(&mut r, PropContext::UnsubAck)?;
        ack.reason_codes = r.rest().to_vec();
        if ack.reason_codes.is_empty() {
            return Err(protocol(format!(
                "UNSUBACK: no reason codes (section 3.11.3) {V5_CLOSE_RULE}"
            )));
        }
        for &code in &ack.reason_codes {
            check_reason(code, UNSUBACK_REASONS, "UNSUBACK", version)?;
        }
    }
    r.finish()?;
    Ok(ack)
}

/// v3.x: empty body. v5: remaining length 0 means reason 0 and no properties, 1 means a reason code
/// without properties (section 3.14.2).
fn decode_disconnect(body: &Bytes, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut r = Reader::new(body, "DISCONNECT", version);
    let mut d = Disconnect::default();
    if version.is_v5() {
        if r.remaining() > 0 {
            d.reason_code = check_reason(
                r.u8("reason code")?,
                DISCONNECT_REASONS,
                "DISCONNECT",
                version,
            )?;
        }
        if r.remaining() > 0 {
            d.properties = read_properties(&mut r, PropContext::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// v5 only. Remaining length 0 means reason 0 (success) and no properties (section 3.15.2).
fn decode_auth(body: &Bytes) -> Result<Auth, DecodeError> {
    let mut r = Reader::new(body, "AUTH", ProtocolVersion::V5);
    let mut a = Auth::default();
    if r.remaining() > 0 {
        a.reason_code = check_reason(
            r.u8("reason code")?,
            AUTH_REASONS,
            "AUTH",
            ProtocolVersion::V5,
        )?;
    }
    if r.remaining() > 0 {
        a.properties = read_properties(&mut r, PropContext::Auth)?;
    }
    r.finish()?;
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// v5 properties (section 2.2.2)
// ---------------------------------------------------------------------------------------------

/// Where a property list sits; decides which property identifiers are valid there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropContext {
    pub(crate) fn name(self) -> &'static str {
        match self {
            PropContext::Connect => "CONNECT",
            PropContext::ConnAck => "CONNACK",
            PropContext::Publish => "PUBLISH",
            PropContext::Will => "CONNECT will properties",
            PropContext::Ack => "PUBACK/PUBREC/PUBREL/PUBCOMP",
            PropContext::Subscribe => "SUBSCRIBE",
            PropContext::SubAck => "SUBACK",
            PropContext::Unsubscribe => "UNSUBSCRIBE",
            PropContext::UnsubAck => "UNSUBACK",
            PropContext::Disconnect => "DISCONNECT",
            PropContext::Auth => "AUTH",
        }
    }
}

/// Whether property `id` may appear in `ctx` (table in section 2.2.2.2). Shared with the encoder,
/// which leaves out properties that are not valid for the packet it writes.
pub(crate) fn property_allowed(id: u8, ctx: PropContext) -> bool {
    use PropContext::*;
    let allowed: &[PropContext] = match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => &[Publish, Will],
        0x0B => &[Publish, Subscribe],
        0x11 => &[Connect, ConnAck, Disconnect],
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => &[ConnAck],
        0x15 | 0x16 => &[Connect, ConnAck, Auth],
        0x17 | 0x19 => &[Connect],
        0x18 => &[Will],
        0x1C => &[ConnAck, Disconnect],
        0x1F => &[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth],
        0x21 | 0x22 | 0x27 => &[Connect, ConnAck],
        0x23 => &[Publish],
        0x26 => return true,
        _ => return false,
    };
    allowed.contains(&ctx)
}

fn read_properties(r: &mut Reader<'_>, ctx: PropContext) -> Result<Properties, DecodeError> {
    let len = r.varint("property length")? as usize;
    if len > r.remaining() {
        return Err(malformed(format!(
            "{}: property length {len} exceeds the {} remaining bytes (section 2.2.2.1) {V5_CLOSE_RULE}",
            ctx.name(),
            r.remaining()
        )));
    }
    let end = r.pos + len;
    let mut p = Properties::default();
    let mut seen: u64 = 0; // bit per property identifier (all are < 64)
    let where_ = ctx.name();
    while r.pos < end {
        // Identifiers are variable byte integers, but every defined one fits in one byte; a
        // multi-byte identifier starts with a byte >= 0x80, which is unknown anyway.
        let id = r.u8("property identifier")?;
        if !property_allowed(id, ctx) {
            // Section 2.2.2.2: an identifier not valid for the packet type is a Malformed Packet.
            return Err(malformed(format!(
                "{where_}: property {id:#04x} is unknown or not allowed here (section 2.2.2.2) {V5_CLOSE_RULE}"
            )));
        }
        let repeatable = id == 0x26 || (id == 0x0B && ctx == PropContext::Publish);
        if !repeatable {
            if seen & (1u64 << id) != 0 {
                return Err(protocol(format!(
                    "{where_}: property {id:#04x} included more than once (section 3) {V5_CLOSE_RULE}"
                )));
            }
            seen |= 1u64 << id;
        }
        let field = property_name(id);
        match id {
            0x01 => p.payload_format_indicator = Some(read_flag(r, field, where_)?),
            0x02 => p.message_expiry_interval = Some(r.u32(field)?),
            0x03 => p.content_type = Some(r.string(field)?),
            0x08 => {
                let topic = r.string(field)?;
                if topic.is_empty() {
                    return Err(protocol(format!(
                        "{where_}: empty response topic [MQTT-4.7.3-1]"
                    )));
                }
                if topic.contains(['+', '#']) {
                    return Err(protocol(format!(
                        "{where_}: response topic {topic:?} contains a wildcard [MQTT-3.3.2-14]"
                    )));
                }
                p.response_topic = Some(topic);
            }
            0x09 => p.correlation_data = Some(r.binary(field)?),
            0x0B => {
                let v = r.varint(field)?;
                if v == 0 {
                    return Err(protocol(format!(
                        "{where_}: subscription identifier 0 (section 3.3.2.3.8) {V5_CLOSE_RULE}"
                    )));
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => p.session_expiry_interval = Some(r.u32(field)?),
            0x12 => p.assigned_client_identifier = Some(r.string(field)?),
            0x13 => p.server_keep_alive = Some(r.u16(field)?),
            0x15 => p.authentication_method = Some(r.string(field)?),
            0x16 => p.authentication_data = Some(r.binary(field)?),
            0x17 => p.request_problem_information = Some(read_flag(r, field, where_)?),
            0x18 => p.will_delay_interval = Some(r.u32(field)?),
            0x19 => p.request_response_information = Some(read_flag(r, field, where_)?),
            0x1A => p.response_information = Some(r.string(field)?),
            0x1C => p.server_reference = Some(r.string(field)?),
            0x1F => p.reason_string = Some(r.string(field)?),
            0x21 => p.receive_maximum = Some(read_nonzero_u16(r, field, where_)?),
            0x22 => p.topic_alias_maximum = Some(r.u16(field)?),
            // Alias 0 / above the maximum is the broker's call (DISCONNECT 0x94) [MQTT-3.3.2-8].
            0x23 => p.topic_alias = Some(r.u16(field)?),
            0x24 => p.maximum_qos = Some(read_flag(r, field, where_)?),
            0x25 => p.retain_available = Some(read_flag(r, field, where_)?),
            0x26 => {
                let k = r.string("user property name")?;
                let v = r.string("user property value")?;
                p.user_properties.push((k, v));
            }
            0x27 => {
                let v = r.u32(field)?;
                if v == 0 {
                    return Err(protocol(format!(
                        "{where_}: maximum packet size 0 (section 3.1.2.11.4) {V5_CLOSE_RULE}"
                    )));
                }
                p.maximum_packet_size = Some(v);
            }
            0x28 => p.wildcard_subscription_available = Some(read_flag(r, field, where_)?),
            0x29 => p.subscription_identifier_available = Some(read_flag(r, field, where_)?),
            0x2A => p.shared_subscription_available = Some(read_flag(r, field, where_)?),
            // property_allowed() is false for every other identifier; kept as an error, not a panic.
            _ => {
                return Err(malformed(format!(
                    "{where_}: unknown property {id:#04x} {V5_CLOSE_RULE}"
                )))
            }
        }
        if r.pos > end {
            return Err(malformed(format!(
                "{where_}: property {id:#04x} runs past the property length {V5_CLOSE_RULE}"
            )));
        }
    }
    if p.authentication_data.is_some() && p.authentication_method.is_none() {
        return Err(protocol(format!(
            "{where_}: authentication data without authentication method (section 3.1.2.11.10) {V5_CLOSE_RULE}"
        )));
    }
    Ok(p)
}

/// A byte property whose only valid values are 0 and 1 (payload format indicator, request
/// problem/response information, maximum QoS, the "available" flags).
fn read_flag(r: &mut Reader<'_>, field: &str, where_: &str) -> Result<u8, DecodeError> {
    let v = r.u8(field)?;
    if v > 1 {
        return Err(protocol(format!(
            "{where_}: {field} must be 0 or 1, got {v} {V5_CLOSE_RULE}"
        )));
    }
    Ok(v)
}

fn read_nonzero_u16(r: &mut Reader<'_>, field: &str, where_: &str) -> Result<u16, DecodeError> {
    let v = r.u16(field)?;
    if v == 0 {
        return Err(protocol(format!(
            "{where_}: {field} must not be 0 {V5_CLOSE_RULE}"
        )));
    }
    Ok(v)
}

fn property_name(id: u8) -> &'static str {
    match id {
        0x01 => "payload format indicator",
        0x02 => "message expiry interval",
        0x03 => "content type",
        0x08 => "response topic",
        0x09 => "correlation data",
        0x0B => "subscription identifier",
        0x11 => "session expiry interval",
        0x12 => "assigned client identifier",
        0x13 => "server keep alive",
        0x15 => "authentication method",
        0x16 => "authentication data",
        0x17 => "request problem information",
        0x18 => "will delay interval",
        0x19 => "request response information",
        0x1A => "response information",
        0x1C => "server reference",
        0x1F => "reason string",
        0x21 => "receive maximum",
        0x22 => "topic alias maximum",
        0x23 => "topic alias",
        0x24 => "maximum QoS",
        0x25 => "retain available",
        0x26 => "user property",
        0x27 => "maximum packet size",
        0x28 => "wildcard subscription available",
        0x29 => "subscription identifier available",
        0x2A => "shared subscription available",
        _ => "property",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    /// Frames `bytes` (a complete packet) and decodes it.
    fn decode(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
        let mut cur = Cursor::new(bytes.to_vec());
        let frame = read_frame(&mut cur, 1 << 20)?;
        assert_eq!(
            cur.position() as usize,
            bytes.len(),
            "frame must consume the whole packet"
        );
        decode_packet(frame, version)
    }

    fn assert_malformed(r: Result<Packet, DecodeError>, needle: &str) {
        match r {
            Err(DecodeError::Malformed(m)) => {
                assert!(m.contains(needle), "message {m:?} lacks {needle:?}")
            }
            other => panic!("expected Malformed({needle}), got {other:?}"),
        }
    }

    fn assert_protocol(r: Result<Packet, DecodeError>, needle: &str) {
        match r {
            Err(DecodeError::Protocol(m)) => {
                assert!(m.contains(needle), "message {m:?} lacks {needle:?}")
            }
            other => panic!("expected Protocol({needle}), got {other:?}"),
        }
    }

    // ---- framing ----

    #[test]
    fn read_frame_returns_eof_when_peer_closes_between_packets() {
        let mut cur = Cursor::new(Vec::new());
        assert!(matches!(read_frame(&mut cur, 100), Err(DecodeError::Eof)));
    }

    #[test]
    fn read_frame_reads_consecutive_frames_from_one_stream() {
        let mut cur = Cursor::new(vec![0xC0, 0x00, 0xE0, 0x00, 0x30, 0x03, 0x00, 0x01, b'a']);
        assert_eq!(read_frame(&mut cur, 100).unwrap().header, 0xC0);
        assert_eq!(read_frame(&mut cur, 100).unwrap().header, 0xE0);
        let f = read_frame(&mut cur, 100).unwrap();
        assert_eq!((f.header, &f.body[..]), (0x30, &[0x00, 0x01, b'a'][..]));
        assert!(matches!(read_frame(&mut cur, 100), Err(DecodeError::Eof)));
    }

    #[test]
    fn frame_in_takes_whole_frames_from_a_buffer_and_waits_for_partial_ones() {
        let stream = [0xC0, 0x00, 0x30, 0x03, 0x00, 0x01, b'a', 0x30, 0x83, 0x01];
        let (f, used) = frame_in(&stream, 100).unwrap().unwrap();
        assert_eq!((f.header, f.body.len(), used), (0xC0, 0, 2));
        let (f, used) = frame_in(&stream[2..], 100).unwrap().unwrap();
        assert_eq!(
            (f.header, &f.body[..], used),
            (0x30, &[0x00, 0x01, b'a'][..], 5)
        );
        // Remaining length 131 announced, body not there yet; and a cut inside the length.
        assert!(frame_in(&stream[7..], 200).unwrap().is_none());
        assert!(frame_in(&stream[7..9], 200).unwrap().is_none());
        assert!(frame_in(&[], 200).unwrap().is_none());
        // Limits are checked from the header alone, as read_frame does.
        assert!(matches!(
            frame_in(&stream[7..], 100),
            Err(DecodeError::TooLarge {
                size: 134,
                max: 100
            })
        ));
        assert!(matches!(
            frame_in(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
        // Every prefix of a stream gives what read_frame gives for the frames it holds.
        let mut cur = Cursor::new(stream.to_vec());
        let (mut at, mut n) = (0, 0);
        while let Some((f, used)) = frame_in(&stream[at..], 200).unwrap() {
            let r = read_frame(&mut cur, 200).unwrap();
            assert_eq!((f.header, &f.body[..]), (r.header, &r.body[..]));
            at += used;
            n += 1;
        }
        assert_eq!((n, at), (2, 7));
    }

    #[test]
    fn publish_decoded_in_place_is_the_publish_decoded_from_its_frame() {
        let v5_props = [0x02, 0x01, 0x01]; // properties length 2: payload format indicator 1
        let cases: Vec<(u8, Vec<u8>, ProtocolVersion)> = vec![
            // QoS 0, topic "a/b", payload "21.5"
            (0x30, [&[0, 3][..], b"a/b", b"21.5"].concat(), V311),
            // QoS 1 retained, packet id 7, empty payload
            (0x33, [&[0, 1][..], b"t", &[0, 7]].concat(), V311),
            // v5 QoS 2 DUP with a property
            (
                0x3C,
                [&[0, 1][..], b"t", &[0, 9], &v5_props, b"x"].concat(),
                V5,
            ),
            // errors: QoS 3, DUP on QoS 0, a wildcard topic, a topic that is not UTF-8
            (0x36, [&[0, 1][..], b"t", &[0, 1]].concat(), V311),
            (0x38, [&[0, 1][..], b"t"].concat(), V311),
            (0x30, [&[0, 3][..], b"a/#"].concat(), V311),
            (0x30, vec![0, 2, 0xC3, 0x28], V311),
        ];
        for (header, body, version) in cases {
            let view = decode_publish_view(header, &body, version);
            let frame = Frame {
                header,
                body: Bytes::from(body.clone()),
            };
            match (view, decode_publish(frame, version)) {
                (Ok(v), Ok(p)) => assert_eq!(v.into_owned(), p, "header {header:#x}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("header {header:#x}: in place {a:?}, from the frame {b:?}"),
            }
        }
    }

    #[test]
    fn remaining_length_with_five_bytes_is_malformed() {
        let mut cur = Cursor::new(vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(matches!(
            read_frame(&mut cur, usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn remaining_length_of_four_bytes_decodes_the_maximum() {
        // 0xFF 0xFF 0xFF 0x7F = 268,435,455 (section 2.2.3); refused as too large, with the size.
        let mut cur = Cursor::new(vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
        match read_frame(&mut cur, 1000) {
            Err(DecodeError::TooLarge { size, max }) => {
                assert_eq!(size, 1 + 4 + MAX_REMAINING_LENGTH);
                assert_eq!(max, 1000);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    /// A reader that announces a 268 MB packet and then would stream zeros forever; it counts the
    /// bytes handed out, so the test proves the body was never read (or allocated).
    struct HugePacket {
        served: usize,
    }
    impl Read for HugePacket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const HEADER: [u8; 5] = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
            let n = if self.served < HEADER.len() {
                buf[0] = HEADER[self.served];
                1
            } else {
                buf.fill(0);
                buf.len()
            };
            self.served += n;
            Ok(n)
        }
    }

    #[test]
    fn too_large_packet_is_refused_before_reading_the_body() {
        let mut r = HugePacket { served: 0 };
        assert!(matches!(
            read_frame(&mut r, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(r.served, 5, "only the fixed header may be read");
    }

    #[test]
    fn packet_of_exactly_max_packet_size_is_accepted() {
        let bytes = [0x30, 0x03, 0x00, 0x01, b'a'];
        assert!(read_frame(&mut Cursor::new(bytes.to_vec()), 5).is_ok());
        assert!(matches!(
            read_frame(&mut Cursor::new(bytes.to_vec()), 4),
            Err(DecodeError::TooLarge { size: 5, max: 4 })
        ));
    }

    #[test]
    fn truncated_body_is_an_unexpected_eof() {
        let mut cur = Cursor::new(vec![0x30, 0x05, 0x00, 0x01]);
        match read_frame(&mut cur, 100) {
            Err(DecodeError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected Io(UnexpectedEof), got {other:?}"),
        }
        let mut cur = Cursor::new(vec![0x30, 0x80]);
        assert!(matches!(read_frame(&mut cur, 100), Err(DecodeError::Io(_))));
    }

    /// PUBLISH of 100,000 body bytes (above the 64 KiB single-allocation size): topic "t" + payload.
    fn large_publish() -> Vec<u8> {
        let mut bytes = vec![0x30, 0xA0, 0x8D, 0x06, 0x00, 0x01, b't']; // remaining 100,000
        bytes.resize(3 + 1 + 100_000, b'p');
        bytes
    }

    #[test]
    fn large_body_is_read_completely() {
        let frame = read_frame(&mut Cursor::new(large_publish()), 1 << 20).unwrap();
        assert_eq!(frame.body.len(), 100_000);
        let Packet::Publish(p) = decode_packet(frame, V311).unwrap() else {
            panic!()
        };
        assert_eq!(p.payload.len(), 100_000 - 3);
    }

    #[test]
    fn truncated_large_body_is_an_unexpected_eof() {
        let mut bytes = large_publish();
        bytes.truncate(70_000);
        match read_frame(&mut Cursor::new(bytes), 1 << 20) {
            Err(DecodeError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected Io(UnexpectedEof), got {other:?}"),
        }
    }

    /// Yields its chunks one per read call; `None` is a read timeout.
    struct Scripted(Vec<Option<Vec<u8>>>);
    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            match self.0.remove(0) {
                None => Err(io::Error::new(io::ErrorKind::WouldBlock, "timeout")),
                Some(mut chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.insert(0, Some(chunk.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    #[test]
    fn timeout_between_packets_is_an_idle_timeout_and_the_stream_continues() {
        let mut r = Scripted(vec![None, Some(vec![0xC0, 0x00])]);
        let err = read_frame(&mut r, 100).unwrap_err();
        assert!(err.is_idle_timeout(), "{err:?}");
        assert_eq!(read_frame(&mut r, 100).unwrap().header, 0xC0);
    }

    #[test]
    fn timeout_inside_a_packet_is_fatal_not_idle() {
        let mut r = Scripted(vec![
            Some(vec![0x30, 0x05, 0x00]),
            None,
            Some(vec![0x01, b'a', b'b']),
        ]);
        let err = read_frame(&mut r, 100).unwrap_err();
        assert!(matches!(err, DecodeError::Io(_)), "{err:?}");
        assert!(
            !err.is_idle_timeout(),
            "a mid-packet timeout must not look resumable"
        );
    }

    #[test]
    fn frame_split_over_many_reads_is_reassembled() {
        let chunks = [0x30u8, 0x06, 0x00, 0x01, b't', b'x', b'y', b'z']
            .iter()
            .map(|&b| Some(vec![b]))
            .collect();
        let f = read_frame(&mut Scripted(chunks), 100).unwrap();
        assert_eq!(&f.body[..], &[0x00, 0x01, b't', b'x', b'y', b'z']);
    }

    // ---- CONNECT ----

    /// 3.1.1 CONNECT: clean session, keep alive 60, client id "abc" (spec 3.1 example layout).
    const CONNECT_V311: &[u8] = &[
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c',
    ];

    #[test]
    fn connect_v311_minimal_decodes() {
        let Packet::Connect(c) = decode(CONNECT_V311, V311).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V311);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.client_id, "abc");
        assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());
    }

    #[test]
    fn connect_declares_its_own_version_regardless_of_connection_version() {
        let Packet::Connect(c) = decode(CONNECT_V311, V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V311);
    }

    #[test]
    fn connect_mqisdp_level_3_is_accepted_as_v31() {
        let bytes = [
            0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A,
            0x00, 0x03, b'c', b'i', b'd',
        ];
        let Packet::Connect(c) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V31);
        assert_eq!(c.client_id, "cid");
    }

    #[test]
    fn connect_v31_password_flag_without_password_bytes_means_no_password() {
        // user name "u", password flag set, no password field (tolerated for 3.1 like mosquitto)
        let bytes = [
            0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0xC2, 0x00, 0x0A,
            0x00, 0x01, b'c', 0x00, 0x01, b'u',
        ];
        let Packet::Connect(c) = decode(&bytes, V31).unwrap() else {
            panic!()
        };
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password, None);
    }

    #[test]
    fn connect_unknown_protocol_level_is_unsupported_protocol() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[8] = 6;
        match decode(&bytes, V311) {
            Err(e @ DecodeError::UnsupportedProtocol { .. }) => {
                assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
                let DecodeError::UnsupportedProtocol { name, level } = e else {
                    unreachable!()
                };
                assert_eq!((name.as_str(), level), ("MQTT", 6));
            }
            other => panic!("expected UnsupportedProtocol, got {other:?}"),
        }
        // "MQTT" with level 3 is also unsupported (3 belongs to "MQIsdp") [MQTT-3.1.2-2]
        bytes[8] = 3;
        assert!(matches!(
            decode(&bytes, V311),
            Err(DecodeError::UnsupportedProtocol { level: 3, .. })
        ));
    }

    #[test]
    fn connect_unknown_protocol_name_is_a_protocol_error() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[4..8].copy_from_slice(b"MQTX");
        assert_protocol(decode(&bytes, V311), "MQTT-3.1.2-1");
    }

    #[test]
    fn connect_reserved_flag_bit_is_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[9] |= 0x01;
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-3");
    }

    #[test]
    fn connect_will_qos_or_retain_without_will_flag_is_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[9] = 0x02 | 0x08; // will QoS 1, no will flag
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-13");
        bytes[9] = 0x02 | 0x20; // will retain, no will flag
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-15");
    }

    #[test]
    fn connect_will_qos_3_is_malformed() {
        let bytes = [
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1E, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b't', 0x00, 0x00,
        ];
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-14");
    }

    #[test]
    fn connect_v311_with_will_user_and_password_decodes() {
        // flags: user, password, will retain, will QoS 1, will, clean
        let bytes = [
            0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x03, b'w', b'/', b't', 0x00, 0x02, b'h', b'i', 0x00, 0x01, b'u', 0x00,
            0x02, 0x00, 0xFF,
        ];
        let Packet::Connect(c) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        let w = c.will.unwrap();
        assert_eq!(
            (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
            ("w/t", &b"hi"[..], QoS::AtLeastOnce, true)
        );
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&[0x00, 0xFF][..]));
    }

    #[test]
    fn connect_will_topic_with_wildcard_is_a_protocol_error() {
        let bytes = [
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b'#', 0x00, 0x00,
        ];
        assert_protocol(decode(&bytes, V311), "wildcard");
    }

    #[test]
    fn connect_password_without_user_name_is_malformed_in_v311_but_allowed_in_v5() {
        let v311 = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b'p',
        ];
        assert_malformed(decode(&v311, V311), "MQTT-3.1.2-22");
        let v5 = [
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'c', 0x00, 0x01, b'p',
        ];
        let Packet::Connect(c) = decode(&v5, V5).unwrap() else {
            panic!()
        };
        assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"p"[..])));
    }

    #[test]
    fn connect_trailing_bytes_are_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[1] += 1;
        bytes.push(0x00);
        assert_malformed(decode(&bytes, V311), "unexpected bytes");
    }

    #[test]
    fn connect_string_length_past_the_body_is_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[13] = 0x09; // client id claims 9 bytes, 3 present
        assert_malformed(decode(&bytes, V311), "client identifier");
    }

    #[test]
    fn connect_v5_with_properties_and_will_properties_decodes() {
        let bytes = [
            0x10, 0x2A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00,
            0x0A, // will + clean
            0x0F, // properties: 15 bytes
            0x11, 0x00, 0x00, 0x00, 0x78, // session expiry 120
            0x21, 0x00, 0x14, // receive maximum 20
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
            0x00, 0x01, b'c', // client id
            0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will properties: will delay 5
            0x00, 0x01, b't', // will topic
            0x00, 0x02, b'b', b'y', // will payload
        ];
        let Packet::Connect(c) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V5);
        assert_eq!(c.properties.session_expiry_interval, Some(120));
        assert_eq!(c.properties.receive_maximum, Some(20));
        assert_eq!(
            c.properties.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        let w = c.will.unwrap();
        assert_eq!(w.properties.will_delay_interval, Some(5));
        assert_eq!((w.topic.as_str(), &w.payload[..]), ("t", &b"by"[..]));
    }

    /// CONNECT v5 with the given property bytes, client id "c".
    fn connect_v5_with_props(props: &[u8]) -> Vec<u8> {
        let mut body = vec![
            0x00,
            0x04,
            b'M',
            b'Q',
            b'T',
            b'T',
            0x05,
            0x02,
            0x00,
            0x0A,
            props.len() as u8,
        ];
        body.extend_from_slice(props);
        body.extend_from_slice(&[0x00, 0x01, b'c']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        bytes
    }

    #[test]
    fn v5_duplicate_property_is_a_protocol_error() {
        let bytes = connect_v5_with_props(&[0x21, 0x00, 0x01, 0x21, 0x00, 0x02]);
        assert_protocol(decode(&bytes, V5), "more than once");
    }

    #[test]
    fn v5_repeated_user_property_is_kept_in_order() {
        let bytes =
            connect_v5_with_props(&[0x26, 0, 1, b'a', 0, 1, b'1', 0x26, 0, 1, b'a', 0, 1, b'2']);
        let Packet::Connect(c) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(
            c.properties.user_properties,
            vec![("a".into(), "1".into()), ("a".into(), "2".into())]
        );
    }

    #[test]
    fn v5_property_not_allowed_for_the_packet_is_malformed() {
        // topic alias (0x23) belongs to PUBLISH only; section 2.2.2.2 makes this a Malformed Packet
        let bytes = connect_v5_with_props(&[0x23, 0x00, 0x01]);
        assert_malformed(decode(&bytes, V5), "0x23");
    }

    #[test]
    fn v5_unknown_property_identifier_is_malformed() {
        let bytes = connect_v5_with_props(&[0x7F, 0x00]);
        assert_malformed(decode(&bytes, V5), "0x7f");
    }

    #[test]
    fn v5_invalid_property_values_are_protocol_errors() {
        for (props, needle) in [
            (&[0x21, 0x00, 0x00][..], "receive maximum"),
            (&[0x27, 0x00, 0x00, 0x00, 0x00][..], "maximum packet size"),
            (&[0x17, 0x02][..], "request problem information"),
            (&[0x19, 0x02][..], "request response information"),
            (
                &[0x16, 0x00, 0x00][..],
                "authentication data without authentication method",
            ),
        ] {
            assert_protocol(decode(&connect_v5_with_props(props), V5), needle);
        }
    }

    #[test]
    fn v5_truncated_property_is_malformed() {
        // session expiry needs 4 bytes, property length only covers 2 of them
        let mut body = vec![
            0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, 0x03, 0x11, 0x00, 0x00,
        ];
        body.extend_from_slice(&[0x00, 0x00, 0x01, b'c']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        assert_malformed(decode(&bytes, V5), "runs past the property length");
    }

    #[test]
    fn v5_property_length_beyond_the_body_is_malformed() {
        let bytes = [
            0x10, 0x0C, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x0A, 0x40, 0x00,
        ];
        assert_malformed(decode(&bytes, V5), "property length");
    }

    // ---- CONNACK ----

    #[test]
    fn connack_v311_decodes_session_present_and_return_code() {
        let Packet::ConnAck(c) = decode(&[0x20, 0x02, 0x01, 0x00], V311).unwrap() else {
            panic!()
        };
        assert_eq!((c.session_present, c.code), (true, 0));
        assert_malformed(decode(&[0x20, 0x02, 0x02, 0x00], V311), "MQTT-3.2.2-1");
        assert_protocol(decode(&[0x20, 0x02, 0x00, 0x06], V311), "return code");
    }

    #[test]
    fn connack_v5_decodes_properties() {
        let bytes = [0x20, 0x07, 0x00, 0x00, 0x04, 0x24, 0x01, 0x25, 0x00];
        let Packet::ConnAck(c) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.properties.maximum_qos, Some(1));
        assert_eq!(c.properties.retain_available, Some(0));
        let bad_max_qos = [0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02];
        assert_protocol(decode(&bad_max_qos, V5), "maximum QoS");
    }

    // ---- PUBLISH ----

    #[test]
    fn publish_qos0_v311_decodes_with_zero_copy_payload() {
        let bytes = [0x31, 0x08, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'y'];
        let mut cur = Cursor::new(bytes.to_vec());
        let frame = read_frame(&mut cur, 100).unwrap();
        let payload_at = frame.body[5..].as_ptr();
        let Packet::Publish(p) = decode_packet(frame, V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*p.topic, p.qos, p.retain, p.dup, p.packet_id),
            ("a/b", QoS::AtMostOnce, true, false, 0)
        );
        assert_eq!(&p.payload[..], b"hey");
        // The payload points into the frame body: no copy.
        assert_eq!(p.payload.as_ptr(), payload_at);
    }

    #[test]
    fn publish_qos2_dup_with_packet_id_decodes() {
        let bytes = [0x3C, 0x06, 0x00, 0x01, b't', 0x12, 0x34, b'x'];
        let Packet::Publish(p) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.qos, p.dup, p.packet_id, &p.payload[..]),
            (QoS::ExactlyOnce, true, 0x1234, &b"x"[..])
        );
    }

    #[test]
    fn publish_qos3_is_malformed() {
        assert_malformed(
            decode(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], V311),
            "MQTT-3.3.1-4",
        );
    }

    #[test]
    fn publish_dup_with_qos0_is_a_protocol_error() {
        assert_protocol(
            decode(&[0x38, 0x03, 0x00, 0x01, b't'], V311),
            "MQTT-3.3.1-2",
        );
    }

    #[test]
    fn publish_packet_id_0_is_a_protocol_error() {
        assert_protocol(
            decode(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], V311),
            "MQTT-2.3.1-1",
        );
    }

    #[test]
    fn publish_topic_with_wildcard_is_a_protocol_error() {
        assert_protocol(
            decode(&[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'], V311),
            "MQTT-3.3.2-2",
        );
        assert_protocol(decode(&[0x30, 0x03, 0x00, 0x01, b'#'], V5), "MQTT-3.3.2-2");
    }

    #[test]
    fn publish_topic_with_u0000_is_malformed() {
        assert_malformed(
            decode(&[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'], V311),
            "MQTT-1.5.3-2",
        );
    }

    #[test]
    fn publish_topic_with_invalid_utf8_or_surrogate_is_malformed() {
        assert_malformed(
            decode(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], V311),
            "MQTT-1.5.3-1",
        );
        // U+D800 encoded as ED A0 80 [MQTT-1.5.3-1]
        assert_malformed(
            decode(&[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], V311),
            "MQTT-1.5.3-1",
        );
    }

    #[test]
    fn publish_empty_topic_is_an_error_in_v311_but_allowed_in_v5_for_topic_aliases() {
        assert_protocol(decode(&[0x30, 0x02, 0x00, 0x00], V311), "MQTT-4.7.3-1");
        let Packet::Publish(p) =
            decode(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!((&*p.topic, p.properties.topic_alias), ("", Some(7)));
    }

    #[test]
    fn publish_v5_decodes_properties_and_repeated_subscription_identifiers() {
        let bytes = [
            0x32, 0x19, 0x00, 0x01, b't', 0x00, 0x07, // topic, packet id 7
            0x11, // properties: 17 bytes
            0x01, 0x01, // payload format: UTF-8
            0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry 60
            0x0B, 0x81, 0x01, // subscription identifier 129 (two-byte varint)
            0x0B, 0x02, // subscription identifier 2
            0x09, 0x00, 0x02, 0xAB, 0xCD, // correlation data
            b'o', b'k',
        ];
        let Packet::Publish(p) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(p.packet_id, 7);
        assert_eq!(p.properties.payload_format_indicator, Some(1));
        assert_eq!(p.properties.message_expiry_interval, Some(60));
        assert_eq!(p.properties.subscription_identifiers, vec![129, 2]);
        assert_eq!(
            p.properties.correlation_data.as_deref(),
            Some(&[0xAB, 0xCD][..])
        );
        assert_eq!(&p.payload[..], b"ok");
    }

    #[test]
    fn publish_v5_bad_property_values_are_rejected() {
        // payload format indicator 2
        assert_protocol(
            decode(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02], V5),
            "payload format",
        );
        // subscription identifier 0
        assert_protocol(
            decode(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00], V5),
            "subscription identifier 0",
        );
        // response topic with wildcard [MQTT-3.3.2-14]
        assert_protocol(
            decode(
                &[
                    0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x08, 0x00, 0x02, b'a', b'#',
                ],
                V5,
            ),
            "MQTT-3.3.2-14",
        );
        // topic alias 0 decodes (the broker answers 0x94), it must not panic
        assert!(decode(&[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00], V5).is_ok());
        // session expiry belongs to CONNECT/CONNACK/DISCONNECT
        assert_malformed(
            decode(&[0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0, 0, 0, 1], V5),
            "0x11",
        );
    }

    // ---- acknowledgements ----

    #[test]
    fn acks_v311_decode_packet_id() {
        for (header, name) in [
            (0x40u8, "PUBACK"),
            (0x50, "PUBREC"),
            (0x62, "PUBREL"),
            (0x70, "PUBCOMP"),
        ] {
            let p = decode(&[header, 0x02, 0x00, 0x2A], V311).unwrap();
            assert_eq!(p.name(), name);
            let (Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) =
                p
            else {
                panic!()
            };
            assert_eq!(a, Ack::new(42));
            assert_malformed(
                decode(&[header, 0x03, 0x00, 0x2A, 0x00], V311),
                "unexpected bytes",
            );
            assert_protocol(decode(&[header, 0x02, 0x00, 0x00], V311), "MQTT-2.3.1-1");
        }
    }

    #[test]
    fn pubrel_with_flags_other_than_0010_is_malformed() {
        assert_malformed(decode(&[0x60, 0x02, 0x00, 0x01], V311), "MQTT-2.2.2-2");
        assert_malformed(decode(&[0x42, 0x02, 0x00, 0x01], V311), "MQTT-2.2.2-2");
    }

    #[test]
    fn v31_subscribe_and_pubrel_retries_with_dup_flag_are_accepted() {
        let bytes = [0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00];
        let Packet::Subscribe(s) = decode(&bytes, V31).unwrap() else {
            panic!()
        };
        assert_eq!(s.filters[0].filter, "a");
        assert!(matches!(
            decode(&[0x6A, 0x02, 0x00, 0x01], V31),
            Ok(Packet::PubRel(_))
        ));
        // the same bytes on a 3.1.1 connection break [MQTT-2.2.2-2]
        assert_malformed(decode(&bytes, V311), "MQTT-2.2.2-2");
    }

    #[test]
    fn acks_v5_short_and_long_forms_decode() {
        let Packet::PubAck(a) = decode(&[0x40, 0x02, 0x00, 0x01], V5).unwrap() else {
            panic!()
        };
        assert_eq!(a, Ack::new(1));
        let Packet::PubRec(a) = decode(&[0x50, 0x03, 0x00, 0x01, 0x10], V5).unwrap() else {
            panic!()
        };
        assert_eq!((a.reason_code, a.properties.is_empty()), (0x10, true));
        let bytes = [
            0x70, 0x0A, 0x00, 0x01, 0x92, 0x06, 0x1F, 0x00, 0x03, b'w', b'h', b'y',
        ];
        let Packet::PubComp(a) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(
            (a.reason_code, a.properties.reason_string.as_deref()),
            (0x92, Some("why"))
        );
        // PUBREL cannot carry PUBACK's 0x10 (no matching subscribers)
        assert_protocol(decode(&[0x62, 0x03, 0x00, 0x01, 0x10], V5), "reason code");
    }

    // ---- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK ----

    #[test]
    fn subscribe_v311_decodes_filters_and_qos() {
        let bytes = [
            0x82, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'+', 0x01, 0x00, 0x01, b'#', 0x02,
        ];
        let Packet::Subscribe(s) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(s.packet_id, 10);
        assert_eq!(s.filters.len(), 2);
        assert_eq!(
            (s.filters[0].filter.as_str(), s.filters[0].options.qos),
            ("a/+", QoS::AtLeastOnce)
        );
        assert_eq!(
            (s.filters[1].filter.as_str(), s.filters[1].options.qos),
            ("#", QoS::ExactlyOnce)
        );
    }

    #[test]
    fn subscribe_invalid_vectors_are_rejected() {
        // flags 0000 instead of 0010
        assert_malformed(
            decode(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], V311),
            "MQTT-2.2.2-2",
        );
        // no filters [MQTT-3.8.3-3]
        assert_protocol(decode(&[0x82, 0x02, 0x00, 0x01], V311), "MQTT-3.8.3-3");
        // packet id 0
        assert_protocol(
            decode(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], V311),
            "MQTT-2.3.1-1",
        );
        // v3: upper bits of requested QoS set (v5 no-local bit) [MQTT-3-8.3-4]
        assert_malformed(
            decode(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], V311),
            "MQTT-3-8.3-4",
        );
        // requested QoS 3
        assert_malformed(
            decode(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], V311),
            "QoS 3",
        );
        // filter without its options byte
        assert_malformed(
            decode(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V311),
            "subscription options",
        );
    }

    #[test]
    fn subscribe_v5_decodes_options_and_subscription_identifier() {
        let bytes = [
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x01, b'a', 0x2D,
        ];
        let Packet::Subscribe(s) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(s.properties.subscription_identifiers, vec![5]);
        let o = s.filters[0].options;
        assert_eq!(
            (o.qos, o.no_local, o.retain_as_published, o.retain_handling),
            (QoS::AtLeastOnce, true, true, 2)
        );
    }

    #[test]
    fn subscribe_v5_invalid_options_are_rejected() {
        assert_malformed(
            decode(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40], V5),
            "MQTT-3.8.3-5",
        );
        assert_protocol(
            decode(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], V5),
            "retain handling 3",
        );
        // two subscription identifiers in SUBSCRIBE
        let bytes = [
            0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
        ];
        assert_protocol(decode(&bytes, V5), "more than once");
    }

    #[test]
    fn suback_decodes_return_codes() {
        let Packet::SubAck(s) = decode(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x02, 0x80], V311).unwrap()
        else {
            panic!()
        };
        assert_eq!((s.packet_id, s.reason_codes), (1, vec![0, 2, 0x80]));
        assert_protocol(decode(&[0x90, 0x03, 0x00, 0x01, 0x8F], V311), "reason code");
        let Packet::SubAck(s) = decode(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x8F, 0xA2], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.reason_codes, vec![0x8F, 0xA2]);
    }

    #[test]
    fn unsubscribe_decodes_and_requires_a_filter() {
        let bytes = [
            0xA2, 0x09, 0x00, 0x03, 0x00, 0x01, b'a', 0x00, 0x02, b'b', b'/',
        ];
        let Packet::Unsubscribe(u) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (u.packet_id, u.filters),
            (3, vec!["a".to_string(), "b/".to_string()])
        );
        assert_protocol(decode(&[0xA2, 0x02, 0x00, 0x01], V311), "MQTT-3.10.3-2");
        assert_protocol(decode(&[0xA2, 0x03, 0x00, 0x01, 0x00], V5), "MQTT-3.10.3-2");
        assert_malformed(
            decode(&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V311),
            "MQTT-2.2.2-2",
        );
    }

    #[test]
    fn unsuback_v311_has_no_reason_codes_and_v5_has_one_per_filter() {
        let Packet::UnsubAck(u) = decode(&[0xB0, 0x02, 0x00, 0x05], V311).unwrap() else {
            panic!()
        };
        assert_eq!((u.packet_id, u.reason_codes.is_empty()), (5, true));
        let Packet::UnsubAck(u) = decode(&[0xB0, 0x05, 0x00, 0x05, 0x00, 0x00, 0x11], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.reason_codes, vec![0x00, 0x11]);
    }

    // ---- PINGREQ / PINGRESP / DISCONNECT / AUTH ----

    #[test]
    fn ping_packets_decode_and_reject_a_body() {
        assert_eq!(decode(&[0xC0, 0x00], V311).unwrap(), Packet::PingReq);
        assert_eq!(decode(&[0xD0, 0x00], V5).unwrap(), Packet::PingResp);
        assert_malformed(
            decode(&[0xC0, 0x01, 0x00], V311),
            "remaining length must be 0",
        );
        assert_malformed(decode(&[0xC1, 0x00], V311), "MQTT-2.2.2-2");
    }

    #[test]
    fn disconnect_v5_short_forms_and_properties_decode() {
        assert_eq!(
            decode(&[0xE0, 0x00], V5).unwrap(),
            Packet::Disconnect(Disconnect::default())
        );
        let Packet::Disconnect(d) = decode(&[0xE0, 0x01, 0x04], V5).unwrap() else {
            panic!()
        };
        assert_eq!(d.reason_code, reason::DISCONNECT_WITH_WILL);
        let Packet::Disconnect(d) =
            decode(&[0xE0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 9], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.properties.session_expiry_interval, Some(9));
        // v3.1.1 DISCONNECT has no body
        assert_malformed(decode(&[0xE0, 0x01, 0x00], V311), "unexpected bytes");
    }

    #[test]
    fn auth_is_v5_only() {
        assert_eq!(
            decode(&[0xF0, 0x00], V5).unwrap(),
            Packet::Auth(Auth::default())
        );
        let bytes = [
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, 0x07,
        ];
        let Packet::Auth(a) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(a.reason_code, reason::CONTINUE_AUTHENTICATION);
        assert_eq!(a.properties.authentication_method.as_deref(), Some("m"));
        assert_malformed(
            decode(&[0xF0, 0x00], V311),
            "reserved control packet type 15",
        );
    }

    #[test]
    fn reserved_packet_type_0_is_malformed() {
        assert_malformed(decode(&[0x00, 0x00], V5), "reserved control packet type 0");
    }

    /// Every prefix of a valid packet body must fail cleanly (never panic), and random bodies too;
    /// every Malformed/Protocol error cites a spec rule, which the broker logs as the reason.
    #[test]
    fn truncated_and_random_bodies_fail_cleanly_and_cite_a_rule() {
        let samples: &[&[u8]] = &[
            &[
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xEE, 0x00, 0x0A, 0x05, 0x11, 0, 0, 0, 1,
                0x00, 0x01, b'c', 0x02, 0x01, 0x01, 0x00, 0x01, b't', 0x00, 0x01, b'p', 0x00, 0x01,
                b'u', 0x00, 0x01, b'p',
            ],
            &[
                0x00, 0x01, b't', 0x00, 0x07, 0x04, 0x0B, 0x81, 0x01, 0x01, b'x',
            ],
            &[
                0x00, 0x01, 0x04, 0x0B, 0x01, 0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'a', 0x01,
            ],
        ];
        let mut errors = 0;
        let mut check_cites_rule = |r: Result<Packet, DecodeError>| {
            if let Err(DecodeError::Malformed(m) | DecodeError::Protocol(m)) = r {
                assert!(m.contains("[MQTT-"), "error cites no rule: {m}");
                errors += 1;
            }
        };
        let headers = [
            0x10u8, 0x20, 0x32, 0x40, 0x62, 0x82, 0x90, 0xA2, 0xB0, 0xE0, 0xF0,
        ];
        for body in samples {
            for cut in 0..=body.len() {
                for &header in &headers {
                    for v in [V31, V311, V5] {
                        let frame = Frame {
                            header,
                            body: Bytes::copy_from_slice(&body[..cut]),
                        };
                        check_cites_rule(decode_packet(frame, v));
                    }
                }
            }
        }
        // Deterministic pseudo-random bodies (xorshift), bounded loop.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let header = (x >> 56) as u8;
            for v in [V31, V311, V5] {
                check_cites_rule(decode_packet(
                    Frame {
                        header,
                        body: Bytes::from(body.clone()),
                    },
                    v,
                ));
            }
        }
        assert!(
            errors > 10_000,
            "the loop must exercise error paths, got {errors}"
        );
    }
}
