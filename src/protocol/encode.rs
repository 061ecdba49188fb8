//! Packet -> bytes. Placeholder signatures; the codec is implemented in its own change.
use super::*;

/// Append the encoding of `packet` for a connection speaking `version` to `out`.
/// v5-only fields (properties, reason codes) are dropped for v3.x peers.
pub fn encode_packet(_packet: &Packet, _version: ProtocolVersion, _out: &mut Vec<u8>) {
    unimplemented!("codec")
}

/// Hot-path PUBLISH encoder: writes straight from borrowed parts, so one shared message can be
/// written to many subscribers without building a `Publish` per subscriber.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish(
    _out: &mut Vec<u8>,
    _version: ProtocolVersion,
    _topic: &str,
    _payload: &[u8],
    _qos: QoS,
    _retain: bool,
    _dup: bool,
    _packet_id: u16,
    _properties: &Properties,
) {
    unimplemented!("codec")
}
