//! Field checks shared by the packet families: packet identifiers, topic names, reason codes.

use crate::protocol::error::{close_rule, protocol, DecodeError};
use crate::protocol::types::ProtocolVersion;

pub(super) fn check_packet_id(id: u16, packet: &str) -> Result<u16, DecodeError> {
    if id == 0 {
        return Err(protocol(format!(
            "{packet}: packet identifier 0 [MQTT-2.3.1-1]"
        )));
    }
    Ok(id)
}

/// Topic Name of a PUBLISH or Will: no wildcards [MQTT-3.3.2-2]. Emptiness is checked by callers
/// (allowed in a v5 PUBLISH that uses a topic alias).
pub(super) fn check_topic_name(topic: &str, packet: &str, field: &str) -> Result<(), DecodeError> {
    if topic.contains(['+', '#']) {
        return Err(protocol(format!(
            "{packet}: {field} {topic:?} contains a wildcard [MQTT-3.3.2-2]"
        )));
    }
    Ok(())
}

pub(super) fn check_reason(
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
