//! MQTT 5.0 properties (section 2.2.2) on the wire: one table, [`PROPERTIES`], that says for
//! each property identifier its name, its wire type and which packets may carry it (section
//! 2.2.2.2), as mosquitto's `mqtt_protocol.h` + `property_mosq.c` do. The decoder ([`read_properties`]), the encoder ([`visit_properties`])
//! and every error message take those facts from the table; what remains per property is the
//! one line that maps it to its `Properties` field in each direction (and a value check where
//! the spec has one).
//!
//! To add a property: a field of `Properties` (`types.rs`), a row in [`PROPERTIES`], its arm in
//! `store_property` and its entry in [`visit_properties`]. The unit test
//! `every_property_in_the_table_round_trips_where_allowed_and_is_refused_elsewhere` checks the
//! four agree.
use super::error::{malformed, protocol, DecodeError, V5_CLOSE_RULE};
use super::fields::{clamp_binary, clamp_str, write_binary, write_str, Reader};
use super::framing::{variable_int_len, write_variable_int, MAX_REMAINING_LENGTH};
use super::types::Properties;
use bytes::Bytes;

// ---------------------------------------------------------------------------------------------
// The table
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
    /// Name for error messages.
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

    /// This position as one bit of a [`Contexts`] set.
    const fn bit(self) -> u16 {
        1 << self as u16
    }
}

/// A set of [`PropContext`]s, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Contexts(u16);

impl Contexts {
    const ALL: Contexts = Contexts(u16::MAX);
    const NONE: Contexts = Contexts(0);

    const fn of(list: &[PropContext]) -> Contexts {
        let mut bits = 0;
        let mut i = 0;
        while i < list.len() {
            bits |= list[i].bit();
            i += 1;
        }
        Contexts(bits)
    }

    pub(crate) fn contains(self, ctx: PropContext) -> bool {
        self.0 & ctx.bit() != 0
    }
}

/// The data type of a property value (section 2.2.2.2, "Type" column; section 1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropType {
    Byte,
    TwoByteInteger,
    FourByteInteger,
    VariableByteInteger,
    Utf8String,
    BinaryData,
    Utf8StringPair,
}

/// What the spec says about one property identifier.
#[derive(Debug)]
pub(crate) struct PropertyDef {
    pub(crate) id: u8,
    /// As the spec names it; error messages use it.
    pub(crate) name: &'static str,
    pub(crate) ty: PropType,
    /// The property lists it may appear in; anywhere else it is a Malformed Packet.
    pub(crate) allowed: Contexts,
    /// Where it may appear more than once (otherwise a repeat is a Protocol Error, section 3).
    pub(crate) repeatable: Contexts,
}

const fn def(
    id: u8,
    name: &'static str,
    ty: PropType,
    allowed: &[PropContext],
    repeatable: Contexts,
) -> PropertyDef {
    PropertyDef {
        id,
        name,
        ty,
        allowed: Contexts::of(allowed),
        repeatable,
    }
}

/// Every MQTT 5.0 property, in identifier order (table in section 2.2.2.2).
// One row a line, like the spec's table: rustfmt would spread each over five.
#[rustfmt::skip]
pub(crate) const PROPERTIES: [PropertyDef; 27] = {
    use PropContext::*;
    use PropType::*;
    const ONCE: Contexts = Contexts::NONE;
    const REPEAT_IN_PUBLISH: Contexts = Contexts::of(&[Publish]);
    [
        def(0x01, "payload format indicator", Byte, &[Publish, Will], ONCE),
        def(0x02, "message expiry interval", FourByteInteger, &[Publish, Will], ONCE),
        def(0x03, "content type", Utf8String, &[Publish, Will], ONCE),
        def(0x08, "response topic", Utf8String, &[Publish, Will], ONCE),
        def(0x09, "correlation data", BinaryData, &[Publish, Will], ONCE),
        // Repeatable in PUBLISH only; SUBSCRIBE carries at most one (section 3.8.2.1.2).
        def(0x0B, "subscription identifier", VariableByteInteger, &[Publish, Subscribe], REPEAT_IN_PUBLISH),
        def(0x11, "session expiry interval", FourByteInteger, &[Connect, ConnAck, Disconnect], ONCE),
        def(0x12, "assigned client identifier", Utf8String, &[ConnAck], ONCE),
        def(0x13, "server keep alive", TwoByteInteger, &[ConnAck], ONCE),
        def(0x15, "authentication method", Utf8String, &[Connect, ConnAck, Auth], ONCE),
        def(0x16, "authentication data", BinaryData, &[Connect, ConnAck, Auth], ONCE),
        def(0x17, "request problem information", Byte, &[Connect], ONCE),
        def(0x18, "will delay interval", FourByteInteger, &[Will], ONCE),
        def(0x19, "request response information", Byte, &[Connect], ONCE),
        def(0x1A, "response information", Utf8String, &[ConnAck], ONCE),
        def(0x1C, "server reference", Utf8String, &[ConnAck, Disconnect], ONCE),
        def(0x1F, "reason string", Utf8String, &[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth], ONCE),
        def(0x21, "receive maximum", TwoByteInteger, &[Connect, ConnAck], ONCE),
        def(0x22, "topic alias maximum", TwoByteInteger, &[Connect, ConnAck], ONCE),
        def(0x23, "topic alias", TwoByteInteger, &[Publish], ONCE),
        def(0x24, "maximum QoS", Byte, &[ConnAck], ONCE),
        def(0x25, "retain available", Byte, &[ConnAck], ONCE),
        // Allowed in every packet that has properties, any number of times, order kept.
        PropertyDef {
            id: 0x26,
            name: "user property",
            ty: Utf8StringPair,
            allowed: Contexts::ALL,
            repeatable: Contexts::ALL,
        },
        def(0x27, "maximum packet size", FourByteInteger, &[Connect, ConnAck], ONCE),
        def(0x28, "wildcard subscription available", Byte, &[ConnAck], ONCE),
        def(0x29, "subscription identifier available", Byte, &[ConnAck], ONCE),
        def(0x2A, "shared subscription available", Byte, &[ConnAck], ONCE),
    ]
};

/// Identifier -> index into [`PROPERTIES`] (`NO_PROPERTY` for unassigned identifiers), built
/// from the table at compile time so a lookup is one array read on the decode path.
const NO_PROPERTY: u8 = u8::MAX;
static INDEX: [u8; 0x2B] = {
    let mut index = [NO_PROPERTY; 0x2B];
    let mut i = 0;
    while i < PROPERTIES.len() {
        index[PROPERTIES[i].id as usize] = i as u8;
        i += 1;
    }
    index
};

/// The table in one place in memory (a `const` is copied to each place that uses it).
static ROWS: [PropertyDef; PROPERTIES.len()] = PROPERTIES;

/// The table's row for identifier `id`, if the spec assigns it.
pub(crate) fn property(id: u8) -> Option<&'static PropertyDef> {
    match INDEX.get(id as usize) {
        Some(&i) if i != NO_PROPERTY => ROWS.get(i as usize),
        _ => None,
    }
}

/// One property value as it is on the wire, borrowed. Decoding reads one by the table's type;
/// sizing and writing both walk [`visit_properties`], so they cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropValue<'a> {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(u32),
    Str(&'a str),
    Binary(&'a [u8]),
    Pair(&'a str, &'a str),
}

impl PropValue<'_> {
    fn ty(&self) -> PropType {
        match self {
            PropValue::Byte(_) => PropType::Byte,
            PropValue::U16(_) => PropType::TwoByteInteger,
            PropValue::U32(_) => PropType::FourByteInteger,
            PropValue::VarInt(_) => PropType::VariableByteInteger,
            PropValue::Str(_) => PropType::Utf8String,
            PropValue::Binary(_) => PropType::BinaryData,
            PropValue::Pair(..) => PropType::Utf8StringPair,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Read a property list (length prefix + properties) for position `ctx`.
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
        let Some(def) = property(id).filter(|d| d.allowed.contains(ctx)) else {
            // Section 2.2.2.2: an identifier not valid for the packet type is a Malformed Packet.
            return Err(malformed(format!(
                "{where_}: property {id:#04x} is unknown or not allowed here (section 2.2.2.2) {V5_CLOSE_RULE}"
            )));
        };
        if !def.repeatable.contains(ctx) {
            if seen & (1u64 << id) != 0 {
                return Err(protocol(format!(
                    "{where_}: property {id:#04x} included more than once (section 3) {V5_CLOSE_RULE}"
                )));
            }
            seen |= 1u64 << id;
        }
        let value = read_value(r, def)?;
        store_property(&mut p, id, value, def.name, where_)?;
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

/// One value of the table's type for `def`, borrowed from the frame.
fn read_value<'a>(r: &mut Reader<'a>, def: &PropertyDef) -> Result<PropValue<'a>, DecodeError> {
    let field = def.name;
    Ok(match def.ty {
        PropType::Byte => PropValue::Byte(r.u8(field)?),
        PropType::TwoByteInteger => PropValue::U16(r.u16(field)?),
        PropType::FourByteInteger => PropValue::U32(r.u32(field)?),
        PropType::VariableByteInteger => PropValue::VarInt(r.varint(field)?),
        PropType::Utf8String => PropValue::Str(r.str(field)?),
        PropType::BinaryData => {
            let len = r.u16(field)? as usize;
            PropValue::Binary(r.take(len, field)?)
        }
        PropType::Utf8StringPair => {
            PropValue::Pair(r.str("user property name")?, r.str("user property value")?)
        }
    })
}

/// Put one decoded value into its field of `p`, with the value checks the spec makes.
fn store_property(
    p: &mut Properties,
    id: u8,
    value: PropValue<'_>,
    field: &str,
    where_: &str,
) -> Result<(), DecodeError> {
    use PropValue::*;
    let flag = |v: u8| {
        // A byte property whose only valid values are 0 and 1 (payload format indicator,
        // request problem/response information, maximum QoS, the "available" flags).
        if v > 1 {
            return Err(protocol(format!(
                "{where_}: {field} must be 0 or 1, got {v} {V5_CLOSE_RULE}"
            )));
        }
        Ok(v)
    };
    match (id, value) {
        (0x01, Byte(v)) => p.payload_format_indicator = Some(flag(v)?),
        (0x02, U32(v)) => p.message_expiry_interval = Some(v),
        (0x03, Str(v)) => p.content_type = Some(v.to_owned()),
        (0x08, Str(topic)) => {
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
            p.response_topic = Some(topic.to_owned());
        }
        (0x09, Binary(v)) => p.correlation_data = Some(Bytes::copy_from_slice(v)),
        (0x0B, VarInt(v)) => {
            if v == 0 {
                return Err(protocol(format!(
                    "{where_}: subscription identifier 0 (section 3.3.2.3.8) {V5_CLOSE_RULE}"
                )));
            }
            p.subscription_identifiers.push(v);
        }
        (0x11, U32(v)) => p.session_expiry_interval = Some(v),
        (0x12, Str(v)) => p.assigned_client_identifier = Some(v.to_owned()),
        (0x13, U16(v)) => p.server_keep_alive = Some(v),
        (0x15, Str(v)) => p.authentication_method = Some(v.to_owned()),
        (0x16, Binary(v)) => p.authentication_data = Some(Bytes::copy_from_slice(v)),
        (0x17, Byte(v)) => p.request_problem_information = Some(flag(v)?),
        (0x18, U32(v)) => p.will_delay_interval = Some(v),
        (0x19, Byte(v)) => p.request_response_information = Some(flag(v)?),
        (0x1A, Str(v)) => p.response_information = Some(v.to_owned()),
        (0x1C, Str(v)) => p.server_reference = Some(v.to_owned()),
        (0x1F, Str(v)) => p.reason_string = Some(v.to_owned()),
        (0x21, U16(v)) => {
            if v == 0 {
                return Err(protocol(format!(
                    "{where_}: {field} must not be 0 {V5_CLOSE_RULE}"
                )));
            }
            p.receive_maximum = Some(v);
        }
        (0x22, U16(v)) => p.topic_alias_maximum = Some(v),
        // Alias 0 / above the maximum is the broker's call (DISCONNECT 0x94) [MQTT-3.3.2-8].
        (0x23, U16(v)) => p.topic_alias = Some(v),
        (0x24, Byte(v)) => p.maximum_qos = Some(flag(v)?),
        (0x25, Byte(v)) => p.retain_available = Some(flag(v)?),
        (0x26, Pair(k, v)) => p.user_properties.push((k.to_owned(), v.to_owned())),
        (0x27, U32(v)) => {
            if v == 0 {
                return Err(protocol(format!(
                    "{where_}: maximum packet size 0 (section 3.1.2.11.4) {V5_CLOSE_RULE}"
                )));
            }
            p.maximum_packet_size = Some(v);
        }
        (0x28, Byte(v)) => p.wildcard_subscription_available = Some(flag(v)?),
        (0x29, Byte(v)) => p.subscription_identifier_available = Some(flag(v)?),
        (0x2A, Byte(v)) => p.shared_subscription_available = Some(flag(v)?),
        // A row in PROPERTIES without an arm here (the unit test catches it): an error, not a
        // panic.
        _ => {
            return Err(malformed(format!(
                "{where_}: unknown property {id:#04x} {V5_CLOSE_RULE}"
            )))
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Calls `f(id, value)` for every property set in `p` that is valid in `ctx`, in identifier
/// order. Sizing ([`properties_len`]) and writing ([`write_property_values`]) both walk this,
/// so they cannot disagree.
pub(super) fn visit_properties<'a>(
    p: &'a Properties,
    ctx: PropContext,
    mut f: impl FnMut(u8, PropValue<'a>),
) {
    use PropValue::*;
    let mut emit = |id: u8, v: PropValue<'a>| {
        if let Some(def) = property(id).filter(|d| d.allowed.contains(ctx)) {
            debug_assert_eq!(
                v.ty(),
                def.ty,
                "property {id:#04x} written as the wrong type"
            );
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
    let max_ids = if property(0x0B).is_some_and(|d| d.repeatable.contains(ctx)) {
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
    use super::*;
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

    const EVERY_CONTEXT: [PropContext; 11] = [
        PropContext::Connect,
        PropContext::ConnAck,
        PropContext::Publish,
        PropContext::Will,
        PropContext::Ack,
        PropContext::Subscribe,
        PropContext::SubAck,
        PropContext::Unsubscribe,
        PropContext::UnsubAck,
        PropContext::Disconnect,
        PropContext::Auth,
    ];

    /// A property list holding `def` with a valid value of the table's type (authentication
    /// data comes with the method it needs).
    fn list_with(def: &PropertyDef) -> Vec<u8> {
        let mut props = Vec::new();
        if def.id == 0x16 {
            props.extend_from_slice(&[0x15, 0, 1, b'm']);
        }
        props.push(def.id);
        props.extend_from_slice(match def.ty {
            PropType::Byte => &[1][..],
            PropType::TwoByteInteger => &[0, 1],
            PropType::FourByteInteger => &[0, 0, 0, 1],
            PropType::VariableByteInteger => &[0x81, 0x01],
            PropType::Utf8String => &[0, 1, b'a'],
            PropType::BinaryData => &[0, 2, 0xAB, 0xCD],
            PropType::Utf8StringPair => &[0, 1, b'k', 0, 2, b'v', b'w'],
        });
        let mut list = Vec::new();
        write_variable_int(&mut list, props.len());
        list.extend(props);
        list
    }

    /// The table, the decoder (`store_property`) and the encoder (`visit_properties`) agree on
    /// every property: where the table allows it, it decodes as the table's type into a field
    /// and is written back to the same bytes; anywhere else the decoder refuses it as malformed
    /// and the encoder leaves it out.
    #[test]
    fn every_property_in_the_table_round_trips_where_allowed_and_is_refused_elsewhere() {
        for def in &PROPERTIES {
            assert_eq!(
                property(def.id).map(|d| d.id),
                Some(def.id),
                "index of {}",
                def.name
            );
            let list = list_with(def);
            let decoded = EVERY_CONTEXT.iter().find_map(|&ctx| {
                let decoded = read_properties(&mut Reader::new(&list, "test", V5), ctx);
                if def.allowed.contains(ctx) {
                    let p = decoded.unwrap_or_else(|e| panic!("{}: {e}", def.name));
                    assert!(!p.is_empty(), "{} decoded into no field", def.name);
                    let mut written = Vec::new();
                    write_properties(&mut written, &p, ctx);
                    assert_eq!(written, list, "{} in {}", def.name, ctx.name());
                    return Some(p);
                }
                match decoded {
                    Err(DecodeError::Malformed(m)) => {
                        assert!(m.contains(&format!("{:#04x}", def.id)), "{m}")
                    }
                    other => panic!("{} in {}: {other:?}", def.name, ctx.name()),
                }
                None
            });
            let p = decoded.unwrap_or_else(|| panic!("{} is allowed nowhere", def.name));
            for ctx in EVERY_CONTEXT {
                let mut ids = Vec::new();
                visit_properties(&p, ctx, |id, v| {
                    assert_eq!(v.ty(), property(id).map_or(v.ty(), |d| d.ty));
                    ids.push(id);
                });
                let expected = def.allowed.contains(ctx);
                assert_eq!(
                    ids.contains(&def.id),
                    expected,
                    "{} in {}",
                    def.name,
                    ctx.name()
                );
            }
        }
    }

    #[test]
    fn error_text_names_the_property_from_the_table() {
        // receive maximum 0 in a CONNECT names the property as the table does
        let bytes = connect_v5_with_props(&[0x21, 0x00, 0x00]);
        assert_protocol(decode(&bytes, V5), "CONNECT: receive maximum must not be 0");
        let bytes = connect_v5_with_props(&[0x24, 0x01]);
        assert_malformed(
            decode(&bytes, V5),
            "CONNECT: property 0x24 is unknown or not allowed",
        );
    }
}
