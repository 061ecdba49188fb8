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
            write_reason_and_properties(out, a.reason_code, &a.properties, PropContext::Auth);
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
