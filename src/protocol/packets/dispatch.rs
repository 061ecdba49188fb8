//! The dispatch on one screen: packet type -> the family file that decodes it, `Packet` variant
//! -> the family file that encodes it. PINGREQ and PINGRESP have no body and live here.

use super::publish::{decode_publish, encode_publish};
use super::{ack, connect, subscribe};
use crate::protocol::error::{close_rule, malformed, DecodeError};
use crate::protocol::framing::{Frame, FrameWriter};
use crate::protocol::types::{Packet, ProtocolVersion};

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
        1 => connect::decode_connect(body).map(Packet::Connect),
        2 => connect::decode_connack(body, version).map(Packet::ConnAck),
        4 => ack::decode_ack(body, version, "PUBACK", ack::PUBACK_REASONS).map(Packet::PubAck),
        5 => ack::decode_ack(body, version, "PUBREC", ack::PUBACK_REASONS).map(Packet::PubRec),
        6 => ack::decode_ack(body, version, "PUBREL", ack::PUBREL_REASONS).map(Packet::PubRel),
        7 => ack::decode_ack(body, version, "PUBCOMP", ack::PUBREL_REASONS).map(Packet::PubComp),
        8 => subscribe::decode_subscribe(body, version).map(Packet::Subscribe),
        9 => subscribe::decode_suback(body, version).map(Packet::SubAck),
        10 => subscribe::decode_unsubscribe(body, version).map(Packet::Unsubscribe),
        11 => subscribe::decode_unsuback(body, version).map(Packet::UnsubAck),
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
        14 => ack::decode_disconnect(body, version).map(Packet::Disconnect),
        15 if version.is_v5() => ack::decode_auth(body).map(Packet::Auth),
        _ => Err(malformed(format!(
            "reserved control packet type {packet_type} for MQTT {version} (section 2.1.2) {}",
            close_rule(version)
        ))),
    }
}

/// Append the encoding of `packet` for a connection speaking `version` to `out`.
/// v5-only fields (properties, reason codes) are dropped for v3.x peers.
///
/// CONNECT is written in the version it declares (`Connect::version`), not `version`.
/// AUTH does not exist before v5: for a v3.x `version` nothing is written (logged as an error).
pub fn encode_packet(packet: &Packet, version: ProtocolVersion, out: &mut Vec<u8>) {
    if let Packet::Publish(p) = packet {
        encode_publish(
            out,
            version,
            &p.topic,
            &p.payload,
            p.qos,
            p.retain,
            p.dup,
            p.packet_id,
            &p.properties,
        );
        return;
    }
    let v5 = version.is_v5();
    let frame = FrameWriter::start(out);
    match packet {
        Packet::Publish(_) => {} // written above
        Packet::Connect(c) => connect::write_connect(out, c),
        Packet::ConnAck(c) => connect::write_connack(out, c, version),
        Packet::PubAck(a) => ack::write_ack(out, 0x40, a, v5),
        Packet::PubRec(a) => ack::write_ack(out, 0x50, a, v5),
        Packet::PubRel(a) => ack::write_ack(out, 0x62, a, v5),
        Packet::PubComp(a) => ack::write_ack(out, 0x70, a, v5),
        Packet::Subscribe(s) => subscribe::write_subscribe(out, s, v5),
        Packet::SubAck(s) => subscribe::write_suback(out, s, v5),
        Packet::Unsubscribe(u) => subscribe::write_unsubscribe(out, u, v5),
        Packet::UnsubAck(u) => subscribe::write_unsuback(out, u, v5),
        Packet::PingReq => out.push(0xC0),
        Packet::PingResp => out.push(0xD0),
        Packet::Disconnect(d) => ack::write_disconnect(out, d, v5),
        Packet::Auth(a) => ack::write_auth(out, a, version),
    }
    frame.finish(out, packet.name());
}
