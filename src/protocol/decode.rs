//! bytes -> Packet. Placeholder signatures; the codec is implemented in its own change.
use super::*;
use std::io::Read;

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
}

/// Read one frame. `max_packet_size` bounds the whole packet and is checked from the fixed header,
/// before the body is allocated. Returns `Eof` if the peer closed cleanly between packets.
pub fn read_frame(_r: &mut impl Read, _max_packet_size: usize) -> Result<Frame, DecodeError> {
    unimplemented!("codec")
}

/// Decode a frame. `version` is the connection's negotiated version (ignored for CONNECT, which
/// declares its own).
pub fn decode_packet(_frame: &Frame, _version: ProtocolVersion) -> Result<Packet, DecodeError> {
    unimplemented!("codec")
}
