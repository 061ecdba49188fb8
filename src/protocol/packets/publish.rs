//! PUBLISH (section 3.3), the hot path in both directions: decoded where it lies in the read
//! buffer ([`decode_publish_view`]) or from its own frame without copying the payload
//! ([`decode_publish`]), and encoded from borrowed parts, sized up front ([`encode_publish`]).
use super::checks::{check_packet_id, check_topic_name};
use crate::protocol::error::{malformed, protocol, DecodeError};
use crate::protocol::fields::{clamp_str, Reader};
use crate::protocol::framing::{variable_int_len, write_variable_int, Frame, MAX_REMAINING_LENGTH};
use crate::protocol::properties::{
    properties_len, read_properties, write_property_values, PropContext,
};
use crate::protocol::types::{Properties, ProtocolVersion, Publish, PublishProperties, QoS};
use bytes::{Buf, Bytes};
use std::sync::Arc;

/// Decode a PUBLISH frame (`frame.header >> 4 == 3`; anything else is a bug of the caller).
/// The broker calls this directly for a PUBLISH that was not whole in its read buffer (the
/// others it decodes in place, `decode_publish_view`): a `Packet` is much larger than a
/// `Publish`, and every move of it is a copy.
pub fn decode_publish(frame: Frame, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let view = decode_publish_view(frame.header, &frame.body, version)?;
    // The payload is the rest of the frame: advancing the frame's own `Bytes` keeps its single
    // owner (a slice would allocate a shared reference count for every PUBLISH).
    let header_len = frame.body.len() - view.payload.len();
    let PublishView {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        properties,
        ..
    } = view;
    let topic: Arc<str> = topic.into();
    let mut body = frame.body;
    body.advance(header_len);
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: body,
        properties,
    })
}

/// A PUBLISH decoded where it lies: topic and payload borrowed from the frame's body. The
/// broker routes a publish that only the sink takes from here, without copying it.
#[derive(Debug)]
pub struct PublishView<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    pub packet_id: u16,
    pub payload: &'a [u8],
    pub properties: PublishProperties,
}

impl PublishView<'_> {
    pub fn into_owned(self) -> Publish {
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.into(),
            packet_id: self.packet_id,
            payload: Bytes::copy_from_slice(self.payload),
            properties: self.properties,
        }
    }
}

/// Decode a PUBLISH's body (`header`: its fixed header byte), with every check of `decode_publish`.
pub fn decode_publish_view(
    header: u8,
    body: &[u8],
    version: ProtocolVersion,
) -> Result<PublishView<'_>, DecodeError> {
    debug_assert_eq!(header >> 4, 3, "not a PUBLISH frame");
    let flags = header & 0x0F;
    let dup = flags & 0x08 != 0;
    let retain = flags & 0x01 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0x03)
        .ok_or_else(|| malformed("PUBLISH: QoS 3 [MQTT-3.3.1-4]"))?;
    if dup && qos == QoS::AtMostOnce {
        return Err(protocol(
            "PUBLISH: DUP flag set on a QoS 0 message [MQTT-3.3.1-2]",
        ));
    }
    let mut r = Reader::new(body, "PUBLISH", version);
    let topic = r.str("topic name")?;
    // v5 allows an empty topic name when a topic alias is present (checked by the broker, which
    // owns the alias table); 3.x never does [MQTT-4.7.3-1].
    if topic.is_empty() && !version.is_v5() {
        return Err(protocol("PUBLISH: empty topic name [MQTT-4.7.3-1]"));
    }
    check_topic_name(topic, "PUBLISH", "topic name")?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        check_packet_id(r.u16("packet identifier")?, "PUBLISH")?
    };
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Publish)?.into()
    } else {
        PublishProperties::default()
    };
    Ok(PublishView {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testutil::*;
    use crate::protocol::*;
    use std::io::Cursor;

    #[test]
    fn publish_decoded_in_place_is_the_publish_decoded_from_its_frame() {
        let v5_props = [0x02, 0x01, 0x01]; // properties length 2: payload format indicator 1
        let cases: Vec<(u8, Vec<u8>, ProtocolVersion)> = vec![
            // QoS 0, topic "a/b", payload "21.5"
            (0x30, [&[0, 3][..], b"a/b", b"21.5"].concat(), V311),
            // QoS 1 retained, packet id 7, empty payload
            (0x33, [&[0, 1][..], b"t", &[0, 7]].concat(), V311),
            // v5 QoS 2 DUP with a property
            (
                0x3C,
                [&[0, 1][..], b"t", &[0, 9], &v5_props, b"x"].concat(),
                V5,
            ),
            // errors: QoS 3, DUP on QoS 0, a wildcard topic, a topic that is not UTF-8
            (0x36, [&[0, 1][..], b"t", &[0, 1]].concat(), V311),
            (0x38, [&[0, 1][..], b"t"].concat(), V311),
            (0x30, [&[0, 3][..], b"a/#"].concat(), V311),
            (0x30, vec![0, 2, 0xC3, 0x28], V311),
        ];
        for (header, body, version) in cases {
            let view = decode_publish_view(header, &body, version);
            let frame = Frame {
                header,
                body: Bytes::from(body.clone()),
            };
            match (view, decode_publish(frame, version)) {
                (Ok(v), Ok(p)) => assert_eq!(v.into_owned(), p, "header {header:#x}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("header {header:#x}: in place {a:?}, from the frame {b:?}"),
            }
        }
    }

    #[test]
    fn publish_qos0_v311_decodes_with_zero_copy_payload() {
        let bytes = [0x31, 0x08, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'y'];
        let mut cur = Cursor::new(bytes.to_vec());
        let frame = read_frame(&mut cur, 100).unwrap();
        let payload_at = frame.body[5..].as_ptr();
        let Packet::Publish(p) = decode_packet(frame, V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (&*p.topic, p.qos, p.retain, p.dup, p.packet_id),
            ("a/b", QoS::AtMostOnce, true, false, 0)
        );
        assert_eq!(&p.payload[..], b"hey");
        // The payload points into the frame body: no copy.
        assert_eq!(p.payload.as_ptr(), payload_at);
    }

    #[test]
    fn publish_qos2_dup_with_packet_id_decodes() {
        let bytes = [0x3C, 0x06, 0x00, 0x01, b't', 0x12, 0x34, b'x'];
        let Packet::Publish(p) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.qos, p.dup, p.packet_id, &p.payload[..]),
            (QoS::ExactlyOnce, true, 0x1234, &b"x"[..])
        );
    }

    #[test]
    fn publish_qos3_is_malformed() {
        assert_malformed(
            decode(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], V311),
            "MQTT-3.3.1-4",
        );
    }

    #[test]
    fn publish_dup_with_qos0_is_a_protocol_error() {
        assert_protocol(
            decode(&[0x38, 0x03, 0x00, 0x01, b't'], V311),
            "MQTT-3.3.1-2",
        );
    }

    #[test]
    fn publish_packet_id_0_is_a_protocol_error() {
        assert_protocol(
            decode(&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], V311),
            "MQTT-2.3.1-1",
        );
    }

    #[test]
    fn publish_topic_with_wildcard_is_a_protocol_error() {
        assert_protocol(
            decode(&[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'], V311),
            "MQTT-3.3.2-2",
        );
        assert_protocol(decode(&[0x30, 0x03, 0x00, 0x01, b'#'], V5), "MQTT-3.3.2-2");
    }

    #[test]
    fn publish_topic_with_u0000_is_malformed() {
        assert_malformed(
            decode(&[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'], V311),
            "MQTT-1.5.3-2",
        );
    }

    #[test]
    fn publish_topic_with_invalid_utf8_or_surrogate_is_malformed() {
        assert_malformed(
            decode(&[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28], V311),
            "MQTT-1.5.3-1",
        );
        // U+D800 encoded as ED A0 80 [MQTT-1.5.3-1]
        assert_malformed(
            decode(&[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], V311),
            "MQTT-1.5.3-1",
        );
    }

    #[test]
    fn publish_empty_topic_is_an_error_in_v311_but_allowed_in_v5_for_topic_aliases() {
        assert_protocol(decode(&[0x30, 0x02, 0x00, 0x00], V311), "MQTT-4.7.3-1");
        let Packet::Publish(p) =
            decode(&[0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x07], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!((&*p.topic, p.properties.topic_alias), ("", Some(7)));
    }

    #[test]
    fn publish_v5_decodes_properties_and_repeated_subscription_identifiers() {
        let bytes = [
            0x32, 0x19, 0x00, 0x01, b't', 0x00, 0x07, // topic, packet id 7
            0x11, // properties: 17 bytes
            0x01, 0x01, // payload format: UTF-8
            0x02, 0x00, 0x00, 0x00, 0x3C, // message expiry 60
            0x0B, 0x81, 0x01, // subscription identifier 129 (two-byte varint)
            0x0B, 0x02, // subscription identifier 2
            0x09, 0x00, 0x02, 0xAB, 0xCD, // correlation data
            b'o', b'k',
        ];
        let Packet::Publish(p) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(p.packet_id, 7);
        assert_eq!(p.properties.payload_format_indicator, Some(1));
        assert_eq!(p.properties.message_expiry_interval, Some(60));
        assert_eq!(p.properties.subscription_identifiers, vec![129, 2]);
        assert_eq!(
            p.properties.correlation_data.as_deref(),
            Some(&[0xAB, 0xCD][..])
        );
        assert_eq!(&p.payload[..], b"ok");
    }

    #[test]
    fn publish_v5_bad_property_values_are_rejected() {
        // payload format indicator 2
        assert_protocol(
            decode(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x01, 0x02], V5),
            "payload format",
        );
        // subscription identifier 0
        assert_protocol(
            decode(&[0x30, 0x06, 0x00, 0x01, b't', 0x02, 0x0B, 0x00], V5),
            "subscription identifier 0",
        );
        // response topic with wildcard [MQTT-3.3.2-14]
        assert_protocol(
            decode(
                &[
                    0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x08, 0x00, 0x02, b'a', b'#',
                ],
                V5,
            ),
            "MQTT-3.3.2-14",
        );
        // topic alias 0 decodes (the broker answers 0x94), it must not panic
        assert!(decode(&[0x30, 0x07, 0x00, 0x01, b't', 0x03, 0x23, 0x00, 0x00], V5).is_ok());
        // session expiry belongs to CONNECT/CONNACK/DISCONNECT
        assert_malformed(
            decode(&[0x30, 0x09, 0x00, 0x01, b't', 0x05, 0x11, 0, 0, 0, 1], V5),
            "0x11",
        );
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
}
