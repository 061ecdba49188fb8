//! Decode errors and the spec rule each one cites.
//!
//! Error classes follow the v5 spec (section 4.13), also used for v3.x where that spec only says
//! "close the connection": a packet that cannot be parsed or breaks a data-type rule is
//! [`DecodeError::Malformed`], a well-formed packet that breaks a protocol rule is
//! [`DecodeError::Protocol`]. Every message names the packet, the field and, where one exists, the
//! spec rule.
use super::types::{reason, ProtocolVersion};
use std::io;

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

    /// True when [`read_frame`](super::read_frame) gave up because the socket's read timeout expired *between*
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
pub(super) fn close_rule(version: ProtocolVersion) -> &'static str {
    if version.is_v5() {
        "[MQTT-4.13.1-1]"
    } else {
        "[MQTT-4.8.0-1]"
    }
}

/// Properties exist only in 5.0.
pub(super) const V5_CLOSE_RULE: &str = "[MQTT-4.13.1-1]";

pub(super) fn malformed(msg: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(msg.into())
}

pub(super) fn protocol(msg: impl Into<String>) -> DecodeError {
    DecodeError::Protocol(msg.into())
}
