//! What the load tool puts on and takes off the wire.
//!
//! Outgoing packets are encoded once (CONNECT, SUBSCRIBE, one PUBLISH template per publisher) and
//! then copied and patched per message, so the client side costs a memcpy and three stores per
//! PUBLISH. Incoming bytes are split into frames in place by `FrameReader`: the hot path only needs
//! the packet type, the packet id and the payload of a PUBLISH, never an owned `Packet`.

use mqflux::protocol::{self as codec, Ack, Frame, Packet, ProtocolVersion, Publish, QoS};
use std::io::{self, Read};

/// Encode a whole packet for a connection speaking `version`.
pub fn encode(packet: &Packet, version: ProtocolVersion, out: &mut Vec<u8>) {
    codec::encode_packet(packet, version, out);
}

/// Bytes of an encoded PUBACK/PUBREC/PUBREL/PUBCOMP (`kind` picks which).
pub fn encode_ack(kind: AckKind, packet_id: u16, version: ProtocolVersion, out: &mut Vec<u8>) {
    let ack = Ack::new(packet_id);
    let p = match kind {
        AckKind::PubAck => Packet::PubAck(ack),
        AckKind::PubRec => Packet::PubRec(ack),
        AckKind::PubRel => Packet::PubRel(ack),
        AckKind::PubComp => Packet::PubComp(ack),
    };
    encode(&p, version, out);
}

/// Named after the MQTT packets they stand for.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// A pre-encoded ack: the bytes of one ack packet with the offset of its packet id, so acks are
/// appended with a copy and a patch (no encoder call per message).
#[derive(Clone)]
pub struct AckTemplate {
    bytes: Vec<u8>,
    pid_off: usize,
}

impl AckTemplate {
    pub fn new(kind: AckKind, version: ProtocolVersion) -> AckTemplate {
        let mut bytes = Vec::new();
        // A marker id that cannot collide with the fixed header byte or the length.
        encode_ack(kind, 0xA55A, version, &mut bytes);
        let pid_off = bytes
            .windows(2)
            .position(|w| w == [0xA5, 0x5A])
            .unwrap_or(2);
        AckTemplate { bytes, pid_off }
    }

    #[inline]
    pub fn append(&self, out: &mut Vec<u8>, packet_id: u16) {
        let at = out.len() + self.pid_off;
        out.extend_from_slice(&self.bytes);
        out[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
    }
}

/// Bytes at the start of every benchmark payload: publisher id, sequence number, send time.
pub const PAYLOAD_HEADER: usize = 20;

/// What a benchmark payload carries (little-endian, at the start of the payload; the rest is
/// padding up to `--size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    /// Nanoseconds since the tool's clock origin (`clock::now_ns`).
    pub sent_ns: u64,
}

impl Stamp {
    pub fn parse(payload: &[u8]) -> Option<Stamp> {
        if payload.len() < PAYLOAD_HEADER {
            return None;
        }
        let u32_at = |i: usize| {
            u32::from_le_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
        };
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Some(Stamp {
            publisher: u32_at(0),
            seq: u64_at(4),
            sent_ns: u64_at(12),
        })
    }
}

/// One PUBLISH encoded once; each message is a copy with the packet id, sequence number and
/// send time patched in.
pub struct PublishTemplate {
    bytes: Vec<u8>,
    /// Offset of the 2-byte packet id (QoS > 0 only).
    pid_off: Option<usize>,
    payload_off: usize,
}

impl PublishTemplate {
    pub fn new(
        version: ProtocolVersion,
        topic: &str,
        qos: QoS,
        payload_len: usize,
        publisher: u32,
    ) -> PublishTemplate {
        let payload_len = payload_len.max(PAYLOAD_HEADER);
        let mut payload = vec![b'x'; payload_len];
        payload[..4].copy_from_slice(&publisher.to_le_bytes());
        let packet = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            payload: payload.into(),
            properties: Default::default(),
        });
        let mut bytes = Vec::new();
        encode(&packet, version, &mut bytes);
        let payload_off = bytes.len() - payload_len;
        // Fixed header (1 byte + remaining-length varint), then topic (2-byte length + bytes),
        // then the packet id for QoS > 0 [MQTT-3.3.2-2]; v5 properties come after it.
        let header_len = 1 + read_varint(&bytes[1..]).map(|(_, n)| n).unwrap_or(1);
        let pid_off = (qos != QoS::AtMostOnce).then_some(header_len + 2 + topic.len());
        PublishTemplate {
            bytes,
            pid_off,
            payload_off,
        }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Append one message to `out`.
    #[inline]
    pub fn append(&self, out: &mut Vec<u8>, packet_id: u16, seq: u64, sent_ns: u64) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(off) = self.pid_off {
            out[base + off..base + off + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        let p = base + self.payload_off;
        out[p + 4..p + 12].copy_from_slice(&seq.to_le_bytes());
        out[p + 12..p + 20].copy_from_slice(&sent_ns.to_le_bytes());
    }
}

/// One incoming packet, borrowed from the reader's buffer.
#[derive(Debug)]
pub enum Incoming<'a> {
    Publish {
        qos: u8,
        packet_id: u16,
        payload: &'a [u8],
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    /// Any other packet: first header byte and body (CONNACK, SUBACK, PINGRESP, DISCONNECT...).
    Other {
        header: u8,
        body: &'a [u8],
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the broker")]
    Closed,
    #[error("malformed packet from the broker: {0}")]
    Malformed(&'static str),
}

/// Splits a byte stream into MQTT frames without copying them out of its buffer.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    v5: bool,
}

/// Frames larger than this are refused (the benchmark never sends such payloads).
const MAX_FRAME: usize = 64 << 20;

impl FrameReader {
    pub fn new(capacity: usize, version: ProtocolVersion) -> FrameReader {
        FrameReader {
            buf: vec![0; capacity.max(1024)],
            start: 0,
            end: 0,
            v5: version.is_v5(),
        }
    }

    /// Read more bytes (one `read` call). Returns the number read; `Closed` at end of stream.
    pub fn fill(&mut self, r: &mut impl Read) -> Result<usize, WireError> {
        if self.start > 0 && (self.start == self.end || self.end == self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let n = self.buf.len() * 2;
            self.buf.resize(n, 0);
        }
        let n = r.read(&mut self.buf[self.end..])?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        self.end += n;
        Ok(n)
    }

    /// The next complete frame in the buffer, if any.
    pub fn next_packet(&mut self) -> Result<Option<Incoming<'_>>, WireError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 2 {
            return Ok(None);
        }
        let mut len: usize = 0;
        let mut shift = 0;
        let mut i = 1;
        loop {
            if i >= avail.len() {
                return Ok(None);
            }
            if i > 4 {
                return Err(WireError::Malformed("remaining length longer than 4 bytes"));
            }
            let b = avail[i];
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_FRAME {
            return Err(WireError::Malformed("frame larger than 64 MiB"));
        }
        let total = i + len;
        if avail.len() < total {
            if total > self.buf.len() {
                // Make room for a frame bigger than the buffer.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                self.buf.resize(total, 0);
            }
            return Ok(None);
        }
        let header = avail[0];
        let frame_start = self.start + i;
        self.start += total;
        let body = &self.buf[frame_start..frame_start + len];
        let pid = |body: &[u8]| -> Result<u16, WireError> {
            if body.len() < 2 {
                return Err(WireError::Malformed("ack without a packet id"));
            }
            Ok(u16::from_be_bytes([body[0], body[1]]))
        };
        Ok(Some(match header >> 4 {
            3 => {
                let qos = (header >> 1) & 3;
                if body.len() < 2 {
                    return Err(WireError::Malformed("PUBLISH without a topic"));
                }
                let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                let mut p = 2 + tlen;
                let mut packet_id = 0;
                if qos > 0 {
                    if body.len() < p + 2 {
                        return Err(WireError::Malformed("PUBLISH without a packet id"));
                    }
                    packet_id = u16::from_be_bytes([body[p], body[p + 1]]);
                    p += 2;
                }
                if self.v5 {
                    let (plen, n) = read_varint(body.get(p..).unwrap_or(&[]))?;
                    p += n + plen;
                }
                if p > body.len() {
                    return Err(WireError::Malformed("PUBLISH shorter than its header"));
                }
                Incoming::Publish {
                    qos,
                    packet_id,
                    payload: &body[p..],
                }
            }
            4 => Incoming::PubAck(pid(body)?),
            5 => Incoming::PubRec(pid(body)?),
            6 => Incoming::PubRel(pid(body)?),
            7 => Incoming::PubComp(pid(body)?),
            _ => Incoming::Other { header, body },
        }))
    }
}

fn read_varint(b: &[u8]) -> Result<(usize, usize), WireError> {
    let mut v = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        v |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(WireError::Malformed("bad variable byte integer"))
}

/// Decode a handshake packet (CONNACK, SUBACK) fully, with the project's codec.
pub fn decode_other(header: u8, body: &[u8], version: ProtocolVersion) -> Result<Packet, String> {
    let frame = Frame {
        header,
        body: bytes::Bytes::copy_from_slice(body),
    };
    codec::decode_packet(frame, version).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_template_patches_packet_id_and_stamp() {
        for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let t = PublishTemplate::new(version, "a/b", QoS::AtLeastOnce, 32, 7);
            let mut out = Vec::new();
            t.append(&mut out, 0x1234, 99, 5555);
            let mut r = FrameReader::new(1024, version);
            r.fill(&mut &out[..]).unwrap();
            match r.next_packet().unwrap().unwrap() {
                Incoming::Publish {
                    qos,
                    packet_id,
                    payload,
                } => {
                    assert_eq!((qos, packet_id, payload.len()), (1, 0x1234, 32));
                    assert_eq!(
                        Stamp::parse(payload),
                        Some(Stamp {
                            publisher: 7,
                            seq: 99,
                            sent_ns: 5555
                        })
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn frame_reader_waits_for_split_frames_and_grows_for_big_ones() {
        let t = PublishTemplate::new(ProtocolVersion::V311, "t", QoS::AtMostOnce, 5000, 1);
        let mut out = Vec::new();
        t.append(&mut out, 0, 1, 2);
        let mut r = FrameReader::new(1024, ProtocolVersion::V311);
        let mut src = &out[..];
        let mut got = None;
        for _ in 0..20 {
            r.fill(&mut src).unwrap();
            if let Some(Incoming::Publish { payload, .. }) = r.next_packet().unwrap() {
                got = Some(payload.len());
                break;
            }
        }
        assert_eq!(got, Some(5000));
    }

    #[test]
    fn ack_template_patches_packet_id() {
        let t = AckTemplate::new(AckKind::PubRel, ProtocolVersion::V311);
        let mut out = Vec::new();
        t.append(&mut out, 0x0102);
        assert_eq!(out, [0x62, 0x02, 0x01, 0x02]);
    }
}
