//! The packets that are a packet identifier (or nothing) followed by a v5 reason code and
//! properties, each of which may be left off: PUBACK, PUBREC, PUBREL, PUBCOMP (sections
//! 3.4-3.7), DISCONNECT (3.14) and AUTH (3.15). v3.x carries the identifier only.
use super::checks::{check_packet_id, check_reason};
use crate::protocol::error::DecodeError;
use crate::protocol::fields::Reader;
use crate::protocol::framing::write_variable_int;
use crate::protocol::properties::{
    properties_len, read_properties, write_properties, write_property_values, PropContext,
};
use crate::protocol::types::{Ack, Auth, Disconnect, Properties, ProtocolVersion};
use bytes::Bytes;

// Reason codes each packet may carry (v5 sections 3.4.2.1, 3.6.2.1, 3.14.2.1, 3.15.2.1).
pub(super) const PUBACK_REASONS: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub(super) const PUBREL_REASONS: &[u8] = &[0x00, 0x92];
const DISCONNECT_REASONS: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_REASONS: &[u8] = &[0x00, 0x18, 0x19];

/// PUBACK, PUBREC, PUBREL, PUBCOMP. v5 short forms: remaining length 2 means reason 0 and no
/// properties, 3 means a reason code and no properties (sections 3.4.2.1, 3.4.2.2.1).
pub(super) fn decode_ack(
    body: &Bytes,
    version: ProtocolVersion,
    name: &'static str,
    reasons: &[u8],
) -> Result<Ack, DecodeError> {
    let mut r = Reader::new(body, name, version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, name)?;
    let mut ack = Ack::new(packet_id);
    if version.is_v5() {
        if r.remaining() > 0 {
            ack.reason_code = check_reason(r.u8("reason code")?, reasons, name, version)?;
        }
        if r.remaining() > 0 {
            ack.properties = read_properties(&mut r, PropContext::Ack)?;
        }
    }
    r.finish()?;
    Ok(ack)
}

/// v3.x: empty body. v5: remaining length 0 means reason 0 and no properties, 1 means a reason code
/// without properties (section 3.14.2).
pub(super) fn decode_disconnect(
    body: &Bytes,
    version: ProtocolVersion,
) -> Result<Disconnect, DecodeError> {
    let mut r = Reader::new(body, "DISCONNECT", version);
    let mut d = Disconnect::default();
    if version.is_v5() {
        if r.remaining() > 0 {
            d.reason_code = check_reason(
                r.u8("reason code")?,
                DISCONNECT_REASONS,
                "DISCONNECT",
                version,
            )?;
        }
        if r.remaining() > 0 {
            d.properties = read_properties(&mut r, PropContext::Disconnect)?;
        }
    }
    r.finish()?;
    Ok(d)
}

/// v5 only. Remaining length 0 means reason 0 (success) and no properties (section 3.15.2).
pub(super) fn decode_auth(body: &Bytes) -> Result<Auth, DecodeError> {
    let mut r = Reader::new(body, "AUTH", ProtocolVersion::V5);
    let mut a = Auth::default();
    if r.remaining() > 0 {
        a.reason_code = check_reason(
            r.u8("reason code")?,
            AUTH_REASONS,
            "AUTH",
            ProtocolVersion::V5,
        )?;
    }
    if r.remaining() > 0 {
        a.properties = read_properties(&mut r, PropContext::Auth)?;
    }
    r.finish()?;
    Ok(a)
}

pub(super) fn write_ack(out: &mut Vec<u8>, header: u8, a: &Ack, v5: bool) {
    out.push(header);
    out.extend_from_slice(&a.packet_id.to_be_bytes());
    if v5 {
        write_reason_and_properties(out, a.reason_code, &a.properties, PropContext::Ack);
    }
}

pub(super) fn write_disconnect(out: &mut Vec<u8>, d: &Disconnect, v5: bool) {
    out.push(0xE0);
    if v5 {
        write_reason_and_properties(out, d.reason_code, &d.properties, PropContext::Disconnect);
    }
}

pub(super) fn write_auth(out: &mut Vec<u8>, a: &Auth, version: ProtocolVersion) {
    if !version.is_v5() {
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

#[cfg(test)]
mod tests {
    use crate::protocol::testutil::*;
    use crate::protocol::*;

    #[test]
    fn acks_v311_decode_packet_id() {
        for (header, name) in [
            (0x40u8, "PUBACK"),
            (0x50, "PUBREC"),
            (0x62, "PUBREL"),
            (0x70, "PUBCOMP"),
        ] {
            let p = decode(&[header, 0x02, 0x00, 0x2A], V311).unwrap();
            assert_eq!(p.name(), name);
            let (Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a)) =
                p
            else {
                panic!()
            };
            assert_eq!(a, Ack::new(42));
            assert_malformed(
                decode(&[header, 0x03, 0x00, 0x2A, 0x00], V311),
                "unexpected bytes",
            );
            assert_protocol(decode(&[header, 0x02, 0x00, 0x00], V311), "MQTT-2.3.1-1");
        }
    }

    #[test]
    fn acks_v5_short_and_long_forms_decode() {
        let Packet::PubAck(a) = decode(&[0x40, 0x02, 0x00, 0x01], V5).unwrap() else {
            panic!()
        };
        assert_eq!(a, Ack::new(1));
        let Packet::PubRec(a) = decode(&[0x50, 0x03, 0x00, 0x01, 0x10], V5).unwrap() else {
            panic!()
        };
        assert_eq!((a.reason_code, a.properties.is_empty()), (0x10, true));
        let bytes = [
            0x70, 0x0A, 0x00, 0x01, 0x92, 0x06, 0x1F, 0x00, 0x03, b'w', b'h', b'y',
        ];
        let Packet::PubComp(a) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(
            (a.reason_code, a.properties.reason_string.as_deref()),
            (0x92, Some("why"))
        );
        // PUBREL cannot carry PUBACK's 0x10 (no matching subscribers)
        assert_protocol(decode(&[0x62, 0x03, 0x00, 0x01, 0x10], V5), "reason code");
    }

    #[test]
    fn disconnect_v5_short_forms_and_properties_decode() {
        assert_eq!(
            decode(&[0xE0, 0x00], V5).unwrap(),
            Packet::Disconnect(Disconnect::default())
        );
        let Packet::Disconnect(d) = decode(&[0xE0, 0x01, 0x04], V5).unwrap() else {
            panic!()
        };
        assert_eq!(d.reason_code, reason::DISCONNECT_WITH_WILL);
        let Packet::Disconnect(d) =
            decode(&[0xE0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 9], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(d.properties.session_expiry_interval, Some(9));
        // v3.1.1 DISCONNECT has no body
        assert_malformed(decode(&[0xE0, 0x01, 0x00], V311), "unexpected bytes");
    }

    #[test]
    fn auth_is_v5_only() {
        assert_eq!(
            decode(&[0xF0, 0x00], V5).unwrap(),
            Packet::Auth(Auth::default())
        );
        let bytes = [
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x01, b'm', 0x16, 0x00, 0x01, 0x07,
        ];
        let Packet::Auth(a) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(a.reason_code, reason::CONTINUE_AUTHENTICATION);
        assert_eq!(a.properties.authentication_method.as_deref(), Some("m"));
        assert_malformed(
            decode(&[0xF0, 0x00], V311),
            "reserved control packet type 15",
        );
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
    fn auth_is_not_written_for_v3() {
        let a = Auth {
            reason_code: reason::CONTINUE_AUTHENTICATION,
            properties: Properties::default(),
        };
        assert!(encode(&Packet::Auth(a.clone()), V311).is_empty());
        assert_eq!(encode(&Packet::Auth(Auth::default()), V5), [0xF0, 0x00]);
        assert_eq!(encode(&Packet::Auth(a), V5), [0xF0, 0x02, 0x18, 0x00]);
    }
}
