//! MQTT 5.0 properties (section 2.2.2) on the wire, in both directions: which packets may carry
//! which property ([`property_allowed`]), reading a property list ([`read_properties`]), and
//! sizing and writing one, which both walk [`visit_properties`] so they cannot disagree.
use super::error::{malformed, protocol, DecodeError, V5_CLOSE_RULE};
use super::fields::{clamp_binary, clamp_str, write_binary, write_str, Reader};
use super::framing::{variable_int_len, write_variable_int, MAX_REMAINING_LENGTH};
use super::Properties;

// ---------------------------------------------------------------------------------------------
// Which packets carry which property
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

pub(super) fn read_properties(
    r: &mut Reader<'_>,
    ctx: PropContext,
) -> Result<Properties, DecodeError> {
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

// ---------------------------------------------------------------------------------------------
// Encoding
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
pub(super) fn properties_len(p: &Properties, ctx: PropContext) -> usize {
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
pub(super) fn write_properties(out: &mut Vec<u8>, p: &Properties, ctx: PropContext) {
    write_variable_int(out, properties_len(p, ctx));
    write_property_values(out, p, ctx);
}

pub(super) fn write_property_values(out: &mut Vec<u8>, p: &Properties, ctx: PropContext) {
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
    use crate::protocol::testutil::*;
    use crate::protocol::Packet;

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
}
