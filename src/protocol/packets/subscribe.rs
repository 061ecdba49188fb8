//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK (sections 3.8-3.11), both directions.
use super::checks::{check_packet_id, check_reason};
use crate::protocol::error::{close_rule, malformed, protocol, DecodeError, V5_CLOSE_RULE};
use crate::protocol::fields::{write_str, Reader};
use crate::protocol::properties::{read_properties, write_properties, PropContext};
use crate::protocol::types::{
    Properties, ProtocolVersion, QoS, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions,
    UnsubAck, Unsubscribe,
};
use bytes::Bytes;

// Reason codes each packet may carry (v5 sections 3.9.3, 3.11.3; 3.1.1 section 3.9.3).
const SUBACK_REASONS: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_RETURN_CODES_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK_REASONS: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];

pub(super) fn decode_subscribe(
    body: &Bytes,
    version: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let mut r = Reader::new(body, "SUBSCRIBE", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "SUBSCRIBE")?;
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        let filter = r.string("topic filter")?;
        let opts = r.u8("subscription options")?;
        let qos = QoS::from_u8(opts & 0x03).ok_or_else(|| {
            malformed(format!(
                "SUBSCRIBE: requested QoS 3 for {filter:?} [MQTT-3.8.3-4]"
            ))
        })?;
        let options = if version.is_v5() {
            if opts & 0xC0 != 0 {
                return Err(malformed(format!(
                    "SUBSCRIBE: reserved subscription option bits set for {filter:?} [MQTT-3.8.3-5]"
                )));
            }
            let retain_handling = (opts >> 4) & 0x03;
            if retain_handling == 3 {
                return Err(protocol(format!(
                    "SUBSCRIBE: retain handling 3 for {filter:?} (section 3.8.3.1) {V5_CLOSE_RULE}"
                )));
            }
            SubscriptionOptions {
                qos,
                no_local: opts & 0x04 != 0,
                retain_as_published: opts & 0x08 != 0,
                retain_handling,
            }
        } else {
            if opts & 0xFC != 0 {
                return Err(malformed(format!(
                    "SUBSCRIBE: reserved bits of requested QoS set for {filter:?} [MQTT-3-8.3-4]"
                )));
            }
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        };
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(protocol("SUBSCRIBE: no topic filter [MQTT-3.8.3-3]"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(super) fn decode_suback(body: &Bytes, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let mut r = Reader::new(body, "SUBACK", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "SUBACK")?;
    let (properties, allowed) = if version.is_v5() {
        (
            read_properties(&mut r, PropContext::SubAck)?,
            SUBACK_REASONS,
        )
    } else {
        (Properties::default(), SUBACK_RETURN_CODES_V3)
    };
    let reason_codes = r.rest().to_vec();
    if reason_codes.is_empty() {
        return Err(protocol(format!(
            "SUBACK: no return codes (section 3.9.3) {}",
            close_rule(version)
        )));
    }
    for &code in &reason_codes {
        check_reason(code, allowed, "SUBACK", version)?;
    }
    Ok(SubAck {
        packet_id,
        reason_codes,
        properties,
    })
}

pub(super) fn decode_unsubscribe(
    body: &Bytes,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let mut r = Reader::new(body, "UNSUBSCRIBE", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "UNSUBSCRIBE")?;
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while r.remaining() > 0 {
        filters.push(r.string("topic filter")?);
    }
    if filters.is_empty() {
        return Err(protocol("UNSUBSCRIBE: no topic filter [MQTT-3.10.3-2]"));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

pub(super) fn decode_unsuback(
    body: &Bytes,
    version: ProtocolVersion,
) -> Result<UnsubAck, DecodeError> {
    let mut r = Reader::new(body, "UNSUBACK", version);
    let packet_id = check_packet_id(r.u16("packet identifier")?, "UNSUBACK")?;
    let mut ack = UnsubAck {
        packet_id,
        reason_codes: Vec::new(),
        properties: Properties::default(),
    };
    if version.is_v5() {
        ack.properties = read_properties(&mut r, PropContext::UnsubAck)?;
        ack.reason_codes = r.rest().to_vec();
        if ack.reason_codes.is_empty() {
            return Err(protocol(format!(
                "UNSUBACK: no reason codes (section 3.11.3) {V5_CLOSE_RULE}"
            )));
        }
        for &code in &ack.reason_codes {
            check_reason(code, UNSUBACK_REASONS, "UNSUBACK", version)?;
        }
    }
    r.finish()?;
    Ok(ack)
}

pub(super) fn write_subscribe(out: &mut Vec<u8>, s: &Subscribe, v5: bool) {
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

pub(super) fn write_suback(out: &mut Vec<u8>, s: &SubAck, v5: bool) {
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

pub(super) fn write_unsubscribe(out: &mut Vec<u8>, u: &Unsubscribe, v5: bool) {
    out.push(0xA2);
    out.extend_from_slice(&u.packet_id.to_be_bytes());
    if v5 {
        write_properties(out, &u.properties, PropContext::Unsubscribe);
    }
    for f in &u.filters {
        write_str(out, f);
    }
}

pub(super) fn write_unsuback(out: &mut Vec<u8>, u: &UnsubAck, v5: bool) {
    out.push(0xB0);
    out.extend_from_slice(&u.packet_id.to_be_bytes());
    if v5 {
        write_properties(out, &u.properties, PropContext::UnsubAck);
        out.extend_from_slice(&u.reason_codes);
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::testutil::*;
    use crate::protocol::*;

    #[test]
    fn subscribe_v311_decodes_filters_and_qos() {
        let bytes = [
            0x82, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'+', 0x01, 0x00, 0x01, b'#', 0x02,
        ];
        let Packet::Subscribe(s) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(s.packet_id, 10);
        assert_eq!(s.filters.len(), 2);
        assert_eq!(
            (s.filters[0].filter.as_str(), s.filters[0].options.qos),
            ("a/+", QoS::AtLeastOnce)
        );
        assert_eq!(
            (s.filters[1].filter.as_str(), s.filters[1].options.qos),
            ("#", QoS::ExactlyOnce)
        );
    }

    #[test]
    fn subscribe_invalid_vectors_are_rejected() {
        // flags 0000 instead of 0010
        assert_malformed(
            decode(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00], V311),
            "MQTT-2.2.2-2",
        );
        // no filters [MQTT-3.8.3-3]
        assert_protocol(decode(&[0x82, 0x02, 0x00, 0x01], V311), "MQTT-3.8.3-3");
        // packet id 0
        assert_protocol(
            decode(&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], V311),
            "MQTT-2.3.1-1",
        );
        // v3: upper bits of requested QoS set (v5 no-local bit) [MQTT-3-8.3-4]
        assert_malformed(
            decode(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04], V311),
            "MQTT-3-8.3-4",
        );
        // requested QoS 3
        assert_malformed(
            decode(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03], V311),
            "QoS 3",
        );
        // filter without its options byte
        assert_malformed(
            decode(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V311),
            "subscription options",
        );
    }

    #[test]
    fn subscribe_v5_decodes_options_and_subscription_identifier() {
        let bytes = [
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x01, b'a', 0x2D,
        ];
        let Packet::Subscribe(s) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(s.properties.subscription_identifiers, vec![5]);
        let o = s.filters[0].options;
        assert_eq!(
            (o.qos, o.no_local, o.retain_as_published, o.retain_handling),
            (QoS::AtLeastOnce, true, true, 2)
        );
    }

    #[test]
    fn subscribe_v5_invalid_options_are_rejected() {
        assert_malformed(
            decode(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x40], V5),
            "MQTT-3.8.3-5",
        );
        assert_protocol(
            decode(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30], V5),
            "retain handling 3",
        );
        // two subscription identifiers in SUBSCRIBE
        let bytes = [
            0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00,
        ];
        assert_protocol(decode(&bytes, V5), "more than once");
    }

    #[test]
    fn suback_decodes_return_codes() {
        let Packet::SubAck(s) = decode(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x02, 0x80], V311).unwrap()
        else {
            panic!()
        };
        assert_eq!((s.packet_id, s.reason_codes), (1, vec![0, 2, 0x80]));
        assert_protocol(decode(&[0x90, 0x03, 0x00, 0x01, 0x8F], V311), "reason code");
        let Packet::SubAck(s) = decode(&[0x90, 0x05, 0x00, 0x01, 0x00, 0x8F, 0xA2], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.reason_codes, vec![0x8F, 0xA2]);
    }

    #[test]
    fn unsubscribe_decodes_and_requires_a_filter() {
        let bytes = [
            0xA2, 0x09, 0x00, 0x03, 0x00, 0x01, b'a', 0x00, 0x02, b'b', b'/',
        ];
        let Packet::Unsubscribe(u) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(
            (u.packet_id, u.filters),
            (3, vec!["a".to_string(), "b/".to_string()])
        );
        assert_protocol(decode(&[0xA2, 0x02, 0x00, 0x01], V311), "MQTT-3.10.3-2");
        assert_protocol(decode(&[0xA2, 0x03, 0x00, 0x01, 0x00], V5), "MQTT-3.10.3-2");
        assert_malformed(
            decode(&[0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V311),
            "MQTT-2.2.2-2",
        );
    }

    #[test]
    fn unsuback_v311_has_no_reason_codes_and_v5_has_one_per_filter() {
        let Packet::UnsubAck(u) = decode(&[0xB0, 0x02, 0x00, 0x05], V311).unwrap() else {
            panic!()
        };
        assert_eq!((u.packet_id, u.reason_codes.is_empty()), (5, true));
        let Packet::UnsubAck(u) = decode(&[0xB0, 0x05, 0x00, 0x05, 0x00, 0x00, 0x11], V5).unwrap()
        else {
            panic!()
        };
        assert_eq!(u.reason_codes, vec![0x00, 0x11]);
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
}
