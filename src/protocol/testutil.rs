//! Helpers for the codec's unit tests: decode a packet's bytes, encode a packet, round trips,
//! and assertions on the error class and the rule it cites.
use super::*;
use std::io::Cursor;

pub(crate) const V31: ProtocolVersion = ProtocolVersion::V31;
pub(crate) const V311: ProtocolVersion = ProtocolVersion::V311;
pub(crate) const V5: ProtocolVersion = ProtocolVersion::V5;

/// Frames `bytes` (a complete packet) and decodes it.
pub(crate) fn decode(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut cur = Cursor::new(bytes.to_vec());
    let frame = read_frame(&mut cur, 1 << 20)?;
    assert_eq!(
        cur.position() as usize,
        bytes.len(),
        "frame must consume the whole packet"
    );
    decode_packet(frame, version)
}

pub(crate) fn assert_malformed(r: Result<Packet, DecodeError>, needle: &str) {
    match r {
        Err(DecodeError::Malformed(m)) => {
            assert!(m.contains(needle), "message {m:?} lacks {needle:?}")
        }
        other => panic!("expected Malformed({needle}), got {other:?}"),
    }
}

pub(crate) fn assert_protocol(r: Result<Packet, DecodeError>, needle: &str) {
    match r {
        Err(DecodeError::Protocol(m)) => {
            assert!(m.contains(needle), "message {m:?} lacks {needle:?}")
        }
        other => panic!("expected Protocol({needle}), got {other:?}"),
    }
}

pub(crate) fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
    let mut out = Vec::new();
    encode_packet(p, v, &mut out);
    out
}

/// Encode, then frame and decode the bytes again; the whole output must be one frame.
pub(crate) fn round_trip(p: &Packet, v: ProtocolVersion) -> Packet {
    let bytes = encode(p, v);
    let mut cur = Cursor::new(bytes.clone());
    let frame = read_frame(&mut cur, usize::MAX).unwrap_or_else(|e| panic!("{e} for {bytes:02x?}"));
    assert_eq!(
        cur.position() as usize,
        bytes.len(),
        "trailing bytes after frame: {bytes:02x?}"
    );
    decode_packet(frame, v).unwrap_or_else(|e| panic!("{e} decoding {p:?} as {bytes:02x?}"))
}

pub(crate) fn assert_round_trip(p: Packet, v: ProtocolVersion) {
    assert_eq!(round_trip(&p, v), p, "MQTT {v}");
}

pub(crate) fn props_with_reason(s: &str) -> Properties {
    Properties {
        reason_string: Some(s.into()),
        ..Properties::default()
    }
}
