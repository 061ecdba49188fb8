//! Packet -> bytes for MQTT 3.1, 3.1.1 and 5.0.
//!
//! One encoder for all versions: v5-only parts (properties, reason codes) are written only when
//! `version.is_v5()`. v5 acknowledgements use the shortest form the spec allows (PUBACK & co with
//! remaining length 2, DISCONNECT/AUTH with remaining length 0 when the reason is success and there
//! are no properties).
//!
//! The encoder trusts its caller (the broker) for protocol state (packet ids, QoS choices) but never
//! writes bytes that would not parse: properties not valid for the packet are left out, strings and
//! binary fields longer than 65,535 bytes are cut (with a logged warning), a packet whose remaining
//! length would exceed 268,435,455 is not written at all (logged as an error).
use super::decode::{property_allowed, PropContext};
use super::*;

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
        Packet::Connect(c) => {
            out.push(0x10);
            let v5 = c.version.is_v5();
            write_str(
                out,
                if c.version == ProtocolVersion::V31 {
                    "MQIsdp"
                } else {
                    "MQTT"
                },
            );
            out.push(c.version.level());
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 0x02;
            }
            if let Some(w) = &c.will {
                flags |= 0x04 | ((w.qos as u8) << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            out.push(flags);
            out.extend_from_slice(&c.keep_alive.to_be_bytes());
            if v5 {
                write_properties(out, &c.properties, PropContext::Connect);
            }
            write_str(out, &c.client_id);
            if let Some(w) = &c.will {
                if v5 {
                    write_properties(out, &w.properties, PropContext::Will);
                }
                write_str(out, &w.topic);
                write_binary(out, &w.payload);
            }
            if let Some(u) = &c.username {
                write_str(out, u);
            }
            if let Some(p) = &c.password {
                write_binary(out, p);
            }
        }
        Packet::ConnAck(c) => {
            out.push(0x20);
            // 3.1 has no session-present flag.
            let session_present = c.session_present && version != ProtocolVersion::V31;
            out.push(session_present as u8);
            out.push(c.code);
            if v5 {
                write_properties(out, &c.properties, PropContext::ConnAck);
            }
        }
        Packet::PubAck(a) => write_ack(out, 0x40, a, v5),
        Packet::PubRec(a) => write_ack(out, 0x50, a, v5),
        Packet::PubRel(a) => write_ack(out, 0x62, a, v5),
        Packet::PubComp(a) => write_ack(out, 0x70, a, v5),
        Packet::Subscribe(s) => {
            out.push(0x82);
            out.extend_from_slice(&s.packet_id.to_be_bytes());
            if v5 {
                write_properties(out, &s.properties, PropContext::Subscribe);
            }
            for f in &s.filters {
                write_str(out, &f.filter);
                let o = &f.options;
                let mut opts = o.qos as u8;
                if v5 {
                    opts |= (o.no_local as u8) << 2
                        | (o.retain_as_published as u8) << 3
                        | (o.retain_handling.min(2) << 4);
                }
                out.push(opts);
            }
        }
        Packet::SubAck(s) => {
            out.push(0x90);
            out.extend_from_slice(&s.packet_id.to_be_bytes());
            if v5 {
                write_properties(out, &s.properties, PropContext::SubAck);
                out.extend_from_slice(&s.reason_codes);
            } else {
                // 3.1.1 knows granted QoS 0-2 and 0x80 (failure) only [MQTT-3.9.3-2].
                out.extend(
                    s.reason_codes
                        .iter()
                        .map(|&c| if c <= 2 { c } else { 0x80 }),
                );
            }
        }
        Packet::Unsubscribe(u) => {
            out.push(0xA2);
            out.extend_from_slice(&u.packet_id.to_be_bytes());
            if v5 {
                write_properties(out, &u.properties, PropContext::Unsubscribe);
            }
            for f in &u.filters {
                write_str(out, f);
            }
        }
        Packet::UnsubAck(u) => {
            out.push(0xB0);
            out.extend_from_slice(&u.packet_id.to_be_bytes());
            if v5 {
                write_properties(out, &u.properties, PropContext::UnsubAck);
                out.extend_from_slice(&u.reason_codes);
            }
        }
        Packet::PingReq => out.push(0xC0),
        Packet::PingResp => out.push(0xD0),
        Packet::Disconnect(d) => {
            out.push(0xE0);
            if v5 {
                write_reason_and_properties(
                    out,
                    d.reason_code,
                    &d.properties,
                    PropContext::Disconnect,
                );
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                log::error!("AUTH packet not written: it does not exist in MQTT {version}");
                return;
            }
            out.push(0xF0);
            // Section 3.15.2: the tail may be left out only as a whole (success, no properties);
            // unlike acks and DISCONNECT there is no reason-code-only form.
            if a.reason_code != 0 || properties_len(&a.properties, PropContext::Auth) > 0 {
                out.push(a.reason_code);
                write_properties(out, &a.properties, PropContext::Auth);
            }
        }
    }
    frame.finish(out, packet.name());
}

/// Hot-path PUBLISH encoder: writes straight from borrowed parts, so one shared message can be
/// written to many subscribers without building a `Publish` per subscriber.
///
/// `packet_id` is written only for QoS 1/2; `dup` is forced off for QoS 0 [MQTT-3.3.1-2]. For v3.x
/// `properties` are ignored. The exact size is computed first, so `out` grows at most once.
#[allow(clippy::too_many_arguments)]
pub fn encode_publish(
    out: &mut Vec<u8>,
    version: ProtocolVersion,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
    dup: bool,
    packet_id: u16,
    properties: &Properties,
) {
    let topic = clamp_str(topic, "PUBLISH topic name");
    let props_len = if version.is_v5() {
        properties_len(properties, PropContext::Publish)
    } else {
        0
    };
    let mut remaining = 2 + topic.len() + payload.len();
    if qos != QoS::AtMostOnce {
        remaining += 2;
    }
    if version.is_v5() {
        remaining += variable_int_len(props_len) + props_len;
    }
    if remaining > MAX_REMAINING_LENGTH {
        log::error!(
            "PUBLISH to {topic:?} not written: remaining length {remaining} exceeds {MAX_REMAINING_LENGTH}"
        );
        return;
    }
    let dup = dup && qos != QoS::AtMostOnce;
    let header = 0x30 | ((dup as u8) << 3) | ((qos as u8) << 1) | retain as u8;
    out.reserve(1 + variable_int_len(remaining) + remaining);
    out.push(header);
    write_variable_int(out, remaining);
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    if qos != QoS::AtMostOnce {
        out.extend_from_slice(&packet_id.to_be_bytes());
    }
    if version.is_v5() {
        write_variable_int(out, props_len);
        write_property_values(out, properties, PropContext::Publish);
    }
    out.extend_from_slice(payload);
}

/// Number of bytes `value` takes as a Variable Byte Integer (section 1.5.5 / 2.2.3).
pub fn variable_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Append `value` as a Variable Byte Integer (the Remaining Length encoding) using the minimum
/// number of bytes [MQTT-1.5.5-1]. Values above 268,435,455 cannot be represented; callers check.
pub fn write_variable_int(out: &mut Vec<u8>, mut value: usize) {
    debug_assert!(value <= MAX_REMAINING_LENGTH);
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes the fixed header byte + body, then inserts the Remaining Length after the header byte
/// once the body length is known. Control packets are small, so the one memmove is negligible;
/// PUBLISH, the hot path, sizes itself up front instead.
struct FrameWriter {
    start: usize,
}

impl FrameWriter {
    fn start(out: &[u8]) -> Self {
        FrameWriter { start: out.len() }
    }

    fn finish(self, out: &mut Vec<u8>, name: &str) {
        if out.len() == self.start {
            return; // nothing written (AUTH for v3.x)
        }
        let body_start = self.start + 1;
        let remaining = out.len() - body_start;
        if remaining > MAX_REMAINING_LENGTH {
            log::error!(
                "{name} not written: remaining length {remaining} exceeds {MAX_REMAINING_LENGTH}"
            );
            out.truncate(self.start);
            return;
        }
        let mut len = Vec::with_capacity(4);
        write_variable_int(&mut len, remaining);
        out.splice(body_start..body_start, len);
    }
}

fn write_ack(out: &mut Vec<u8>, header: u8, a: &Ack, v5: bool) {
    out.push(header);
    out.extend_from_slice(&a.packet_id.to_be_bytes());
    if v5 {
        write_reason_and_properties(out, a.reason_code, &a.properties, PropContext::Ack);
    }
}

/// v5 tail of acks, DISCONNECT and AUTH in its shortest form: nothing when the reason is success
/// and there are no properties, the reason code alone when there are no properties.
fn write_reason_and_properties(out: &mut Vec<u8>, code: u8, props: &Properties, ctx: PropContext) {
    let props_len = properties_len(props, ctx);
    if props_len == 0 {
        if code != 0 {
            out.push(code);
        }
        return;
    }
    out.push(code);
    write_variable_int(out, props_len);
    write_property_values(out, props, ctx);
}

/// Longest string/binary field the two-byte length prefix can describe.
const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// `s` cut to at most 65,535 bytes on a character boundary (logged when it happens).
fn clamp_str<'a>(s: &'a str, field: &str) -> &'a str {
    if s.len() <= MAX_FIELD_LEN {
        return s;
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    log::warn!(
        "{field} of {} bytes cut to {end} bytes to fit the wire format",
        s.len()
    );
    &s[..end]
}

fn clamp_binary<'a>(b: &'a [u8], field: &str) -> &'a [u8] {
    if b.len() <= MAX_FIELD_LEN {
        return b;
    }
    log::warn!(
        "{field} of {} bytes cut to {MAX_FIELD_LEN} bytes to fit the wire format",
        b.len()
    );
    &b[..MAX_FIELD_LEN]
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    let s = clamp_str(s, "string field");
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_binary(out: &mut Vec<u8>, b: &[u8]) {
    let b = clamp_binary(b, "binary field");
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

// ---------------------------------------------------------------------------------------------
// v5 properties
// ---------------------------------------------------------------------------------------------

/// One property as it goes on the wire. Sizing and writing both walk [`visit_properties`], so
/// they cannot disagree.
enum PropValue<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(&'a str),
    Binary(&'a [u8]),
    Pair(&'a str, &'a str),
}

/// Calls `f(id, value)` for every property set in `p` that is valid in `ctx`, in identifier order.
fn visit_properties<'a>(p: &'a Properties, ctx: PropContext, mut f: impl FnMut(u8, PropValue<'a>)) {
    use PropValue::*;
    let mut emit = |id: u8, v: PropValue<'a>| {
        if property_allowed(id, ctx) {
            f(id, v)
        }
    };
    if let Some(v) = p.payload_format_indicator {
        emit(0x01, Byte(v));
    }
    if let Some(v) = p.message_expiry_interval {
        emit(0x02, U32(v));
    }
    if let Some(v) = &p.content_type {
        emit(0x03, Str(v));
    }
    if let Some(v) = &p.response_topic {
        emit(0x08, Str(v));
    }
    if let Some(v) = &p.correlation_data {
        emit(0x09, Binary(v));
    }
    // Repeatable in PUBLISH only; SUBSCRIBE carries at most one (section 3.8.2.1.2). 0 and values
    // above the variable byte integer range are not valid identifiers and are left out.
    let max_ids = if ctx == PropContext::Publish {
        usize::MAX
    } else {
        1
    };
    for &v in p
        .subscription_identifiers
        .iter()
        .filter(|&&v| v != 0 && v as usize <= MAX_REMAINING_LENGTH)
        .take(max_ids)
    {
        emit(0x0B, VarInt(v));
    }
    if let Some(v) = p.session_expiry_interval {
        emit(0x11, U32(v));
    }
    if let Some(v) = &p.assigned_client_identifier {
        emit(0x12, Str(v));
    }
    if let Some(v) = p.server_keep_alive {
        emit(0x13, U16(v));
    }
    if let Some(v) = &p.authentication_method {
        emit(0x15, Str(v));
    }
    if let Some(v) = &p.authentication_data {
        emit(0x16, Binary(v));
    }
    if let Some(v) = p.request_problem_information {
        emit(0x17, Byte(v));
    }
    if let Some(v) = p.will_delay_interval {
        emit(0x18, U32(v));
    }
    if let Some(v) = p.request_response_information {
        emit(0x19, Byte(v));
    }
    if let Some(v) = &p.response_information {
        emit(0x1A, Str(v));
    }
    if let Some(v) = &p.server_reference {
        emit(0x1C, Str(v));
    }
    if let Some(v) = &p.reason_string {
        emit(0x1F, Str(v));
    }
    if let Some(v) = p.receive_maximum {
        emit(0x21, U16(v));
    }
    if let Some(v) = p.topic_alias_maximum {
        emit(0x22, U16(v));
    }
    if let Some(v) = p.topic_alias {
        emit(0x23, U16(v));
    }
    if let Some(v) = p.maximum_qos {
        emit(0x24, Byte(v));
    }
    if let Some(v) = p.retain_available {
        emit(0x25, Byte(v));
    }
    for (k, v) in &p.user_properties {
        emit(0x26, Pair(k, v));
    }
    if let Some(v) = p.maximum_packet_size {
        emit(0x27, U32(v));
    }
    if let Some(v) = p.wildcard_subscription_available {
        emit(0x28, Byte(v));
    }
    if let Some(v) = p.subscription_identifier_available {
        emit(0x29, Byte(v));
    }
    if let Some(v) = p.shared_subscription_available {
        emit(0x2A, Byte(v));
    }
}

/// Encoded size of the property list (without its own length prefix).
fn properties_len(p: &Properties, ctx: PropContext) -> usize {
    let mut len = 0;
    visit_properties(p, ctx, |_, v| {
        len += 1 + match v {
            PropValue::Byte(_) => 1,
            PropValue::U16(_) => 2,
            PropValue::U32(_) => 4,
            PropValue::VarInt(v) => variable_int_len(v as usize),
            PropValue::Str(s) => 2 + clamp_str(s, "property").len(),
            PropValue::Binary(b) => 2 + clamp_binary(b, "property").len(),
            PropValue::Pair(k, v) => {
                4 + clamp_str(k, "user property name").len()
                    + clamp_str(v, "user property value").len()
            }
        }
    });
    len
}

/// Property length prefix + properties.
fn write_properties(out: &mut Vec<u8>, p: &Properties, ctx: PropContext) {
    write_variable_int(out, properties_len(p, ctx));
    write_property_values(out, p, ctx);
}

fn write_property_values(out: &mut Vec<u8>, p: &Properties, ctx: PropContext) {
    visit_properties(p, ctx, |id, v| {
        out.push(id);
        match v {
            PropValue::Byte(b) => out.push(b),
            PropValue::U16(n) => out.extend_from_slice(&n.to_be_bytes()),
            PropValue::U32(n) => out.extend_from_slice(&n.to_be_bytes()),
            PropValue::VarInt(n) => write_variable_int(out, n as usize),
            PropValue::Str(s) => write_str(out, s),
            PropValue::Binary(b) => write_binary(out, b),
            PropValue::Pair(k, v) => {
                write_str(out, k);
                write_str(out, v);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode::{decode_packet, read_frame};
    use std::io::Cursor;

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn encode(p: &Packet, v: ProtocolVersion) -> Vec<u8> {
        let mut out = Vec::new();
        encode_packet(p, v, &mut out);
        out
    }

    /// Encode, then frame and decode the bytes again; the whole output must be one frame.
    fn round_trip(p: &Packet, v: ProtocolVersion) -> Packet {
        let bytes = encode(p, v);
        let mut cur = Cursor::new(bytes.clone());
        let frame =
            read_frame(&mut cur, usize::MAX).unwrap_or_else(|e| panic!("{e} for {bytes:02x?}"));
        assert_eq!(
            cur.position() as usize,
            bytes.len(),
            "trailing bytes after frame: {bytes:02x?}"
        );
        decode_packet(frame, v).unwrap_or_else(|e| panic!("{e} decoding {p:?} as {bytes:02x?}"))
    }

    fn assert_round_trip(p: Packet, v: ProtocolVersion) {
        assert_eq!(round_trip(&p, v), p, "MQTT {v}");
    }

    fn props_with_reason(s: &str) -> Properties {
        Properties {
            reason_string: Some(s.into()),
            ..Properties::default()
        }
    }

    // ---- remaining length ----

    #[test]
    fn variable_int_uses_the_minimum_number_of_bytes_at_every_boundary() {
        // Table 2.4 of 3.1.1 / section 1.5.5 of 5.0.
        for (value, bytes) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            write_variable_int(&mut out, value);
            assert_eq!(out, bytes, "value {value}");
            assert_eq!(variable_int_len(value), bytes.len(), "value {value}");
        }
    }

    // ---- spec byte vectors ----

    #[test]
    fn ping_and_v311_disconnect_are_two_bytes() {
        assert_eq!(encode(&Packet::PingReq, V311), [0xC0, 0x00]);
        assert_eq!(encode(&Packet::PingResp, V5), [0xD0, 0x00]);
        assert_eq!(
            encode(&Packet::Disconnect(Disconnect::default()), V311),
            [0xE0, 0x00]
        );
        // v3 drops the reason code and properties
        let d = Disconnect {
            reason_code: 0x8E,
            properties: props_with_reason("x"),
        };
        assert_eq!(encode(&Packet::Disconnect(d), V311), [0xE0, 0x00]);
    }

    #[test]
    fn v5_disconnect_uses_the_shortest_form() {
        assert_eq!(
            encode(&Packet::Disconnect(Disconnect::default()), V5),
            [0xE0, 0x00]
        );
        let d = Disconnect {
            reason_code: reason::SESSION_TAKEN_OVER,
            properties: Properties::default(),
        };
        assert_eq!(encode(&Packet::Disconnect(d), V5), [0xE0, 0x01, 0x8E]);
        let d = Disconnect {
            reason_code: 0,
            properties: props_with_reason("a"),
        };
        assert_eq!(
            encode(&Packet::Disconnect(d), V5),
            [0xE0, 0x06, 0x00, 0x04, 0x1F, 0x00, 0x01, b'a']
        );
    }

    #[test]
    fn v5_acks_use_the_shortest_form() {
        assert_eq!(
            encode(&Packet::PubAck(Ack::new(1)), V5),
            [0x40, 0x02, 0x00, 0x01]
        );
        let a = Ack {
            packet_id: 1,
            reason_code: reason::NO_MATCHING_SUBSCRIBERS,
            properties: Properties::default(),
        };
        assert_eq!(
            encode(&Packet::PubRec(a), V5),
            [0x50, 0x03, 0x00, 0x01, 0x10]
        );
        let a = Ack {
            packet_id: 2,
            reason_code: 0,
            properties: props_with_reason("r"),
        };
        assert_eq!(
            encode(&Packet::PubComp(a), V5),
            [0x70, 0x08, 0x00, 0x02, 0x00, 0x04, 0x1F, 0x00, 0x01, b'r']
        );
    }

    #[test]
    fn pubrel_is_written_with_flags_0010_and_v311_acks_drop_reason_codes() {
        let a = Ack {
            packet_id: 0x0102,
            reason_code: 0x92,
            properties: props_with_reason("r"),
        };
        assert_eq!(
            encode(&Packet::PubRel(a.clone()), V311),
            [0x62, 0x02, 0x01, 0x02]
        );
        assert_eq!(encode(&Packet::PubAck(a), V31), [0x40, 0x02, 0x01, 0x02]);
    }

    #[test]
    fn connect_v311_matches_the_spec_layout() {
        let c = Connect {
            version: V311,
            clean_start: true,
            keep_alive: 60,
            client_id: "abc".into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        };
        assert_eq!(
            encode(&Packet::Connect(c.clone()), V311),
            [
                0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03,
                b'a', b'b', b'c'
            ]
        );
        let c31 = Connect { version: V31, ..c };
        assert_eq!(
            encode(&Packet::Connect(c31), V311)[..11],
            [0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03]
        );
    }

    #[test]
    fn connack_session_present_is_dropped_for_v31_only() {
        let c = ConnAck {
            session_present: true,
            code: 0,
            properties: Properties::default(),
        };
        assert_eq!(
            encode(&Packet::ConnAck(c.clone()), V311),
            [0x20, 0x02, 0x01, 0x00]
        );
        assert_eq!(
            encode(&Packet::ConnAck(c.clone()), V31),
            [0x20, 0x02, 0x00, 0x00]
        );
        assert_eq!(
            encode(&Packet::ConnAck(c), V5),
            [0x20, 0x03, 0x01, 0x00, 0x00]
        );
    }

    #[test]
    fn suback_v311_maps_v5_failure_codes_to_0x80() {
        let s = SubAck {
            packet_id: 7,
            reason_codes: vec![0, 1, 2, 0x80, 0x87, 0xA2],
            properties: Properties::default(),
        };
        assert_eq!(
            encode(&Packet::SubAck(s.clone()), V311),
            [0x90, 0x08, 0x00, 0x07, 0, 1, 2, 0x80, 0x80, 0x80]
        );
        assert_eq!(
            encode(&Packet::SubAck(s), V5),
            [0x90, 0x09, 0x00, 0x07, 0x00, 0, 1, 2, 0x80, 0x87, 0xA2]
        );
    }

    #[test]
    fn unsuback_v311_drops_reason_codes() {
        let u = UnsubAck {
            packet_id: 5,
            reason_codes: vec![0x00, 0x11],
            properties: Properties::default(),
        };
        assert_eq!(
            encode(&Packet::UnsubAck(u.clone()), V311),
            [0xB0, 0x02, 0x00, 0x05]
        );
        assert_eq!(
            encode(&Packet::UnsubAck(u), V5),
            [0xB0, 0x05, 0x00, 0x05, 0x00, 0x00, 0x11]
        );
    }

    #[test]
    fn subscribe_v5_packs_subscription_options() {
        let s = Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: "a".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                },
            }],
            properties: Properties::default(),
        };
        assert_eq!(
            encode(&Packet::Subscribe(s.clone()), V5),
            [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x2D]
        );
        // v3 carries the QoS only
        assert_eq!(
            encode(&Packet::Subscribe(s), V311),
            [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x01]
        );
    }

    #[test]
    fn auth_is_not_written_for_v3() {
        let a = Auth {
            reason_code: reason::CONTINUE_AUTHENTICATION,
            properties: Properties::default(),
        };
        assert!(encode(&Packet::Auth(a.clone()), V311).is_empty());
        assert_eq!(encode(&Packet::Auth(Auth::default()), V5), [0xF0, 0x00]);
        assert_eq!(encode(&Packet::Auth(a), V5), [0xF0, 0x02, 0x18, 0x00]);
    }

    #[test]
    fn publish_vectors_for_v311_and_v5() {
        let mut out = Vec::new();
        encode_publish(
            &mut out,
            V311,
            "a/b",
            b"hey",
            QoS::AtMostOnce,
            true,
            false,
            0,
            &Properties::default(),
        );
        assert_eq!(
            out,
            [0x31, 0x08, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'y']
        );
        out.clear();
        let props = Properties {
            message_expiry_interval: Some(60),
            ..Properties::default()
        };
        encode_publish(
            &mut out,
            V5,
            "t",
            b"x",
            QoS::AtLeastOnce,
            false,
            true,
            9,
            &props,
        );
        assert_eq!(
            out,
            [0x3A, 0x0C, 0x00, 0x01, b't', 0x00, 0x09, 0x05, 0x02, 0x00, 0x00, 0x00, 0x3C, b'x']
        );
        // same call for v3.1.1 drops the properties
        out.clear();
        encode_publish(
            &mut out,
            V311,
            "t",
            b"x",
            QoS::AtLeastOnce,
            false,
            true,
            9,
            &props,
        );
        assert_eq!(out, [0x3A, 0x06, 0x00, 0x01, b't', 0x00, 0x09, b'x']);
    }

    #[test]
    fn encode_publish_appends_and_forces_dup_off_for_qos0() {
        let mut out = vec![0xAA];
        encode_publish(
            &mut out,
            V311,
            "t",
            b"",
            QoS::AtMostOnce,
            false,
            true,
            77,
            &Properties::default(),
        );
        // [MQTT-3.3.1-2] DUP 0 for QoS 0; no packet id for QoS 0
        assert_eq!(out, [0xAA, 0x30, 0x03, 0x00, 0x01, b't']);
    }

    #[test]
    fn publish_drops_properties_that_are_not_valid_in_publish() {
        // A will's properties forwarded as a PUBLISH: will delay (0x18) must not go on the wire.
        let props = Properties {
            will_delay_interval: Some(5),
            content_type: Some("c".into()),
            ..Properties::default()
        };
        let mut out = Vec::new();
        encode_publish(
            &mut out,
            V5,
            "t",
            b"",
            QoS::AtMostOnce,
            false,
            false,
            0,
            &props,
        );
        assert_eq!(
            out,
            [0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x03, 0x00, 0x01, b'c']
        );
    }

    #[test]
    fn encode_packet_publish_equals_encode_publish() {
        let p = Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "s/1".into(),
            packet_id: 3,
            payload: Bytes::from_static(b"22.5"),
            properties: Properties {
                payload_format_indicator: Some(1),
                ..Properties::default()
            }
            .into(),
        };
        for v in [V31, V311, V5] {
            let mut direct = Vec::new();
            encode_publish(
                &mut direct,
                v,
                &p.topic,
                &p.payload,
                p.qos,
                p.retain,
                p.dup,
                p.packet_id,
                &p.properties,
            );
            assert_eq!(encode(&Packet::Publish(p.clone()), v), direct);
        }
    }

    #[test]
    fn large_packets_get_multi_byte_remaining_lengths() {
        let payload = vec![7u8; 20_000];
        let p = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "big".into(),
            packet_id: 1,
            payload: Bytes::from(payload),
            properties: Default::default(),
        };
        let bytes = encode(&Packet::Publish(p.clone()), V311);
        assert_eq!(&bytes[..4], [0x32, 0xA7, 0x9C, 0x01]); // 20,007 = 0x4E27
        assert_round_trip(Packet::Publish(p), V311);
        // a control packet whose length is inserted after the body (SUBSCRIBE with 100 filters)
        let s = Subscribe {
            packet_id: 2,
            filters: (0..100)
                .map(|i| SubscribeFilter {
                    filter: format!("sensors/{i}/#"),
                    options: SubscriptionOptions::default(),
                })
                .collect(),
            properties: Properties::default(),
        };
        assert_round_trip(Packet::Subscribe(s), V311);
    }

    #[test]
    fn overlong_strings_are_cut_to_65535_bytes_on_a_char_boundary() {
        let topic = "é".repeat(40_000); // 80,000 bytes
        let mut out = Vec::new();
        encode_publish(
            &mut out,
            V311,
            &topic,
            b"p",
            QoS::AtMostOnce,
            false,
            false,
            0,
            &Properties::default(),
        );
        let frame = read_frame(&mut Cursor::new(out), usize::MAX).unwrap();
        let Packet::Publish(p) = decode_packet(frame, V311).unwrap() else {
            panic!()
        };
        assert_eq!(p.topic.len(), 65_534);
        assert_eq!(&p.payload[..], b"p");
    }

    // ---- round trips ----

    /// Every property set to a valid, non-default value.
    fn all_properties() -> Properties {
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(3600),
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
            subscription_identifiers: vec![1, 268_435_455],
            session_expiry_interval: Some(0xFFFF_FFFF),
            assigned_client_identifier: Some("auto-1".into()),
            server_keep_alive: Some(30),
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"data")),
            request_problem_information: Some(0),
            will_delay_interval: Some(10),
            request_response_information: Some(1),
            response_information: Some("resp".into()),
            server_reference: Some("other:1883".into()),
            reason_string: Some("because".into()),
            receive_maximum: Some(100),
            topic_alias_maximum: Some(10),
            topic_alias: Some(3),
            maximum_qos: Some(1),
            retain_available: Some(1),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "ü".into())],
            maximum_packet_size: Some(1 << 20),
            wildcard_subscription_available: Some(0),
            subscription_identifier_available: Some(1),
            shared_subscription_available: Some(0),
        }
    }

    /// What survives encoding `p` in `ctx`: only properties valid there (table in section 2.2.2.2).
    fn only_allowed(p: &Properties, ctx: PropContext) -> Properties {
        let ok = |id: u8| property_allowed(id, ctx);
        Properties {
            payload_format_indicator: p.payload_format_indicator.filter(|_| ok(0x01)),
            message_expiry_interval: p.message_expiry_interval.filter(|_| ok(0x02)),
            content_type: p.content_type.clone().filter(|_| ok(0x03)),
            response_topic: p.response_topic.clone().filter(|_| ok(0x08)),
            correlation_data: p.correlation_data.clone().filter(|_| ok(0x09)),
            subscription_identifiers: match ctx {
                PropContext::Publish => p.subscription_identifiers.clone(),
                PropContext::Subscribe => {
                    p.subscription_identifiers.iter().take(1).copied().collect()
                }
                _ => Vec::new(),
            },
            session_expiry_interval: p.session_expiry_interval.filter(|_| ok(0x11)),
            assigned_client_identifier: p.assigned_client_identifier.clone().filter(|_| ok(0x12)),
            server_keep_alive: p.server_keep_alive.filter(|_| ok(0x13)),
            authentication_method: p.authentication_method.clone().filter(|_| ok(0x15)),
            authentication_data: p.authentication_data.clone().filter(|_| ok(0x16)),
            request_problem_information: p.request_problem_information.filter(|_| ok(0x17)),
            will_delay_interval: p.will_delay_interval.filter(|_| ok(0x18)),
            request_response_information: p.request_response_information.filter(|_| ok(0x19)),
            response_information: p.response_information.clone().filter(|_| ok(0x1A)),
            server_reference: p.server_reference.clone().filter(|_| ok(0x1C)),
            reason_string: p.reason_string.clone().filter(|_| ok(0x1F)),
            receive_maximum: p.receive_maximum.filter(|_| ok(0x21)),
            topic_alias_maximum: p.topic_alias_maximum.filter(|_| ok(0x22)),
            topic_alias: p.topic_alias.filter(|_| ok(0x23)),
            maximum_qos: p.maximum_qos.filter(|_| ok(0x24)),
            retain_available: p.retain_available.filter(|_| ok(0x25)),
            user_properties: p.user_properties.clone(),
            maximum_packet_size: p.maximum_packet_size.filter(|_| ok(0x27)),
            wildcard_subscription_available: p.wildcard_subscription_available.filter(|_| ok(0x28)),
            subscription_identifier_available: p
                .subscription_identifier_available
                .filter(|_| ok(0x29)),
            shared_subscription_available: p.shared_subscription_available.filter(|_| ok(0x2A)),
        }
    }

    /// One packet of every type; `props(ctx)` supplies the properties for each position.
    fn every_packet(
        version: ProtocolVersion,
        props: &dyn Fn(PropContext) -> Properties,
    ) -> Vec<Packet> {
        let ack = |id, code| Ack {
            packet_id: id,
            reason_code: code,
            properties: props(PropContext::Ack),
        };
        let (ack_code, rel_code) = if version.is_v5() {
            (0x10, 0x92)
        } else {
            (0, 0)
        };
        let mut packets = vec![
            Packet::Connect(Connect {
                version,
                clean_start: false,
                keep_alive: 65_535,
                client_id: "client-ü".into(),
                will: Some(Will {
                    topic: "last/will".into(),
                    payload: Bytes::from_static(b"gone"),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    properties: props(PropContext::Will),
                }),
                username: Some("user".into()),
                password: Some(Bytes::from_static(&[0, 255, 10])),
                properties: props(PropContext::Connect),
            }),
            Packet::Connect(Connect {
                version,
                clean_start: true,
                keep_alive: 0,
                client_id: String::new(),
                will: None,
                username: None,
                password: None,
                properties: props(PropContext::Connect),
            }),
            Packet::ConnAck(ConnAck {
                session_present: version != V31,
                code: if version.is_v5() {
                    reason::NOT_AUTHORIZED
                } else {
                    connack_v3::NOT_AUTHORIZED
                },
                properties: props(PropContext::ConnAck),
            }),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "a/b/c".into(),
                packet_id: 0,
                payload: Bytes::new(),
                properties: props(PropContext::Publish).into(),
            }),
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "温度/1".into(),
                packet_id: 65_535,
                payload: Bytes::from_static(b"\x00\x01binary"),
                properties: props(PropContext::Publish).into(),
            }),
            Packet::PubAck(ack(1, ack_code)),
            Packet::PubRec(ack(2, 0)),
            Packet::PubRel(ack(3, rel_code)),
            Packet::PubComp(ack(4, 0)),
            Packet::Subscribe(Subscribe {
                packet_id: 5,
                filters: vec![
                    SubscribeFilter {
                        filter: "+/x/#".into(),
                        options: SubscriptionOptions {
                            qos: QoS::ExactlyOnce,
                            ..SubscriptionOptions::default()
                        },
                    },
                    SubscribeFilter {
                        filter: "$share/g/t".into(),
                        options: if version.is_v5() {
                            SubscriptionOptions {
                                qos: QoS::AtLeastOnce,
                                no_local: true,
                                retain_as_published: true,
                                retain_handling: 1,
                            }
                        } else {
                            SubscriptionOptions::default()
                        },
                    },
                ],
                properties: props(PropContext::Subscribe),
            }),
            Packet::SubAck(SubAck {
                packet_id: 6,
                reason_codes: if version.is_v5() {
                    vec![0, 1, 2, 0x80, 0x9E]
                } else {
                    vec![0, 1, 2, 0x80]
                },
                properties: props(PropContext::SubAck),
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 7,
                filters: vec!["a/#".into(), "b".into()],
                properties: props(PropContext::Unsubscribe),
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: 8,
                reason_codes: if version.is_v5() {
                    vec![0x00, 0x11]
                } else {
                    Vec::new()
                },
                properties: props(PropContext::UnsubAck),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect {
                reason_code: if version.is_v5() {
                    reason::SERVER_SHUTTING_DOWN
                } else {
                    0
                },
                properties: props(PropContext::Disconnect),
            }),
        ];
        if version.is_v5() {
            packets.push(Packet::Auth(Auth {
                reason_code: reason::CONTINUE_AUTHENTICATION,
                properties: props(PropContext::Auth),
            }));
        }
        packets
    }

    #[test]
    fn every_packet_type_round_trips_in_v31_and_v311() {
        for v in [V31, V311] {
            for p in every_packet(v, &|_| Properties::default()) {
                assert_round_trip(p, v);
            }
        }
    }

    #[test]
    fn every_packet_type_round_trips_in_v5_without_properties() {
        for p in every_packet(V5, &|_| Properties::default()) {
            assert_round_trip(p, V5);
        }
    }

    #[test]
    fn every_packet_type_round_trips_in_v5_with_every_property_valid_for_it() {
        let all = all_properties();
        let sent = every_packet(V5, &|_| all.clone());
        let expected = every_packet(V5, &|ctx| only_allowed(&all, ctx));
        for (s, e) in sent.iter().zip(expected) {
            assert_eq!(round_trip(s, V5), e);
        }
    }

    #[test]
    fn v5_properties_are_dropped_for_v3_peers() {
        let all = all_properties();
        let sent = every_packet(V311, &|_| all.clone());
        let expected = every_packet(V311, &|_| Properties::default());
        for (s, e) in sent.iter().zip(expected) {
            assert_eq!(round_trip(s, V311), e);
        }
    }

    /// Property-style loop: pseudo-random PUBLISH/SUBSCRIBE packets (bounded count, fixed seed)
    /// survive encode -> decode unchanged in every version.
    #[test]
    fn random_publish_and_subscribe_packets_round_trip() {
        struct XorShift(u64);
        impl XorShift {
            fn next(&mut self) -> u64 {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0
            }
            /// 1..=12 pieces of topic-ish text, multi-byte characters included.
            fn word(&mut self) -> String {
                const ALPHABET: &[&str] = &["a", "b", "/", "ü", "温", "$", " ", "x1"];
                let n = 1 + self.next() % 12;
                (0..n)
                    .map(|_| ALPHABET[(self.next() % ALPHABET.len() as u64) as usize])
                    .collect()
            }
        }
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        for _ in 0..2_000 {
            let topic = rng.word();
            let filter = rng.word();
            let key = rng.word();
            let r = rng.next();
            let qos = QoS::from_u8((r % 3) as u8).unwrap_or_default();
            let v = [V31, V311, V5][((r >> 8) % 3) as usize];
            let payload: Vec<u8> = (0..(r >> 16) % 300)
                .map(|i| (i as u8).wrapping_mul(31))
                .collect();
            let properties = if v.is_v5() && r & (1 << 40) != 0 {
                Properties {
                    message_expiry_interval: Some((r >> 20) as u32),
                    subscription_identifiers: vec![1 + ((r >> 24) % 268_435_455) as u32],
                    user_properties: vec![(key, topic.clone())],
                    ..Properties::default()
                }
            } else {
                Properties::default()
            };
            let publish = Packet::Publish(Publish {
                dup: qos != QoS::AtMostOnce && r & (1 << 41) != 0,
                qos,
                retain: r & (1 << 42) != 0,
                topic: topic.into(),
                packet_id: if qos == QoS::AtMostOnce {
                    0
                } else {
                    1 + (r >> 44) as u16 % 65_535
                },
                payload: Bytes::from(payload),
                properties: properties.clone().into(),
            });
            assert_round_trip(publish, v);
            let subscribe = Packet::Subscribe(Subscribe {
                packet_id: 1 + (r >> 48) as u16 % 65_535,
                filters: vec![SubscribeFilter {
                    filter,
                    options: SubscriptionOptions {
                        qos,
                        no_local: v.is_v5() && r & (1 << 43) != 0,
                        retain_as_published: v.is_v5() && r & (1 << 45) != 0,
                        retain_handling: if v.is_v5() { ((r >> 50) % 3) as u8 } else { 0 },
                    },
                }],
                properties: Properties {
                    subscription_identifiers: properties.subscription_identifiers,
                    user_properties: properties.user_properties,
                    ..Properties::default()
                },
            });
            assert_round_trip(subscribe, v);
        }
    }
}
