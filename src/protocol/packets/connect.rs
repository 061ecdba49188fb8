//! CONNECT and CONNACK (sections 3.1 and 3.2), both directions. CONNECT declares its own
//! protocol version, so its decoder picks the version the rest of the connection speaks.
use super::checks::{check_reason, check_topic_name};
use crate::protocol::error::{close_rule, malformed, protocol, DecodeError};
use crate::protocol::fields::{write_binary, write_str, Reader};
use crate::protocol::properties::{read_properties, write_properties, PropContext};
use crate::protocol::types::{ConnAck, Connect, Properties, ProtocolVersion, QoS, Will};
use bytes::Bytes;

// Reason codes a CONNACK may carry (v5 section 3.2.2.2).
const CONNACK_REASONS: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];

pub(super) fn decode_connect(body: &Bytes) -> Result<Connect, DecodeError> {
    // Until the protocol level is read, errors cite the 3.1.1 rule.
    let mut r = Reader::new(body, "CONNECT", ProtocolVersion::V311);
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    // Bit 7 of the level is the bridge bit (mosquitto's `try_private`), defined for 3.1 and
    // 3.1.1 only: a 5.0 bridge asks for No Local and Retain As Published per subscription.
    let bridge = level & 0x80 != 0;
    let version = match (name.as_str(), level & 0x7F) {
        ("MQTT", 4) => ProtocolVersion::V311,
        ("MQTT", 5) if !bridge => ProtocolVersion::V5,
        ("MQIsdp", 3) => ProtocolVersion::V31,
        ("MQTT", _) | ("MQIsdp", _) => {
            // [MQTT-3.1.2-2]: answer CONNACK 0x01 (v3) / 0x84 (v5), then close.
            return Err(DecodeError::UnsupportedProtocol { name, level });
        }
        _ => {
            // [MQTT-3.1.2-1]: not MQTT at all; the server may just close the connection.
            return Err(protocol(format!(
                "CONNECT: unknown protocol name {name:?} (level {level}) [MQTT-3.1.2-1]"
            )));
        }
    };

    r.version = version;
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(malformed(
            "CONNECT: reserved connect flag bit 0 is set [MQTT-3.1.2-3]",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    if !will_flag && will_qos_bits != 0 {
        return Err(malformed(
            "CONNECT: will QoS set without will flag [MQTT-3.1.2-13]",
        ));
    }
    if !will_flag && will_retain {
        return Err(malformed(
            "CONNECT: will retain set without will flag [MQTT-3.1.2-15]",
        ));
    }
    let will_qos = QoS::from_u8(will_qos_bits)
        .ok_or_else(|| malformed("CONNECT: will QoS 3 [MQTT-3.1.2-14]"))?;
    if password_flag && !username_flag && !version.is_v5() {
        // 3.1.1 forbids a password without a user name; 5.0 allows it.
        return Err(malformed(
            "CONNECT: password flag without user name flag [MQTT-3.1.2-22]",
        ));
    }

    let keep_alive = r.u16("keep alive")?;
    let properties = if version.is_v5() {
        read_properties(&mut r, PropContext::Connect)?
    } else {
        Properties::default()
    };

    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let properties = if version.is_v5() {
            read_properties(&mut r, PropContext::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string("will topic")?;
        if topic.is_empty() {
            return Err(protocol("CONNECT: empty will topic [MQTT-4.7.3-1]"));
        }
        check_topic_name(&topic, "CONNECT", "will topic")?;
        let payload = r.binary("will payload")?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        if version == ProtocolVersion::V31 && r.remaining() == 0 {
            // Some 3.1 clients set the password flag without sending a password (mosquitto
            // tolerates this too); treat it as absent.
            None
        } else {
            Some(r.binary("password")?)
        }
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        bridge,
    })
}

pub(super) fn decode_connack(
    body: &Bytes,
    version: ProtocolVersion,
) -> Result<ConnAck, DecodeError> {
    let mut r = Reader::new(body, "CONNACK", version);
    let ack_flags = r.u8("acknowledge flags")?;
    // 3.1 has no session-present flag: the whole byte is reserved.
    let reserved_mask = if version == ProtocolVersion::V31 {
        0xFF
    } else {
        0xFE
    };
    if ack_flags & reserved_mask != 0 {
        return Err(malformed(format!(
            "CONNACK: reserved acknowledge flags set ({ack_flags:#04x}) [MQTT-3.2.2-1]"
        )));
    }
    let session_present = ack_flags & 0x01 != 0;
    let code = r.u8("return code")?;
    let properties = if version.is_v5() {
        check_reason(code, CONNACK_REASONS, "CONNACK", version)?;
        read_properties(&mut r, PropContext::ConnAck)?
    } else {
        if code > 5 {
            return Err(protocol(format!(
                "CONNACK: invalid return code {code} (section 3.2.2.3) {}",
                close_rule(version)
            )));
        }
        Properties::default()
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

pub(super) fn write_connect(out: &mut Vec<u8>, c: &Connect) {
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
    let bridge_bit = if c.bridge && !v5 { 0x80 } else { 0 };
    out.push(c.version.level() | bridge_bit);
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

pub(super) fn write_connack(out: &mut Vec<u8>, c: &ConnAck, version: ProtocolVersion) {
    out.push(0x20);
    // 3.1 has no session-present flag.
    let session_present = c.session_present && version != ProtocolVersion::V31;
    out.push(session_present as u8);
    out.push(c.code);
    if version.is_v5() {
        write_properties(out, &c.properties, PropContext::ConnAck);
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::testutil::*;
    use crate::protocol::*;

    /// 3.1.1 CONNECT: clean session, keep alive 60, client id "abc" (spec 3.1 example layout).
    const CONNECT_V311: &[u8] = &[
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c',
    ];

    #[test]
    fn connect_v311_minimal_decodes() {
        let Packet::Connect(c) = decode(CONNECT_V311, V311).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V311);
        assert!(c.clean_start);
        assert_eq!(c.keep_alive, 60);
        assert_eq!(c.client_id, "abc");
        assert!(c.will.is_none() && c.username.is_none() && c.password.is_none());
    }

    #[test]
    fn connect_declares_its_own_version_regardless_of_connection_version() {
        let Packet::Connect(c) = decode(CONNECT_V311, V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V311);
    }

    #[test]
    fn connect_mqisdp_level_3_is_accepted_as_v31() {
        let bytes = [
            0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x0A,
            0x00, 0x03, b'c', b'i', b'd',
        ];
        let Packet::Connect(c) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V31);
        assert_eq!(c.client_id, "cid");
    }

    #[test]
    fn connect_v31_password_flag_without_password_bytes_means_no_password() {
        // user name "u", password flag set, no password field (tolerated for 3.1 like mosquitto)
        let bytes = [
            0x10, 0x12, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0xC2, 0x00, 0x0A,
            0x00, 0x01, b'c', 0x00, 0x01, b'u',
        ];
        let Packet::Connect(c) = decode(&bytes, V31).unwrap() else {
            panic!()
        };
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password, None);
    }

    #[test]
    fn connect_unknown_protocol_level_is_unsupported_protocol() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[8] = 6;
        match decode(&bytes, V311) {
            Err(e @ DecodeError::UnsupportedProtocol { .. }) => {
                assert_eq!(e.reason_code(), reason::UNSUPPORTED_PROTOCOL_VERSION);
                let DecodeError::UnsupportedProtocol { name, level } = e else {
                    unreachable!()
                };
                assert_eq!((name.as_str(), level), ("MQTT", 6));
            }
            other => panic!("expected UnsupportedProtocol, got {other:?}"),
        }
        // "MQTT" with level 3 is also unsupported (3 belongs to "MQIsdp") [MQTT-3.1.2-2]
        bytes[8] = 3;
        assert!(matches!(
            decode(&bytes, V311),
            Err(DecodeError::UnsupportedProtocol { level: 3, .. })
        ));
    }

    #[test]
    fn connect_level_0x84_is_a_v311_bridge() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[8] = 0x84;
        let Packet::Connect(c) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!((c.version, c.bridge), (V311, true));
        let Packet::Connect(plain) = decode(CONNECT_V311, V311).unwrap() else {
            panic!()
        };
        assert!(!plain.bridge);
        // Encoding writes the bit back: the bytes round-trip.
        assert_eq!(encode(&Packet::Connect(c), V311), bytes);
    }

    #[test]
    fn connect_mqisdp_level_0x83_is_a_v31_bridge() {
        let bytes = [
            0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x83, 0x02, 0x00, 0x0A,
            0x00, 0x03, b'c', b'i', b'd',
        ];
        let Packet::Connect(c) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        assert_eq!((c.version, c.bridge), (V31, true));
        assert_eq!(encode(&Packet::Connect(c), V31), bytes);
    }

    #[test]
    fn connect_bridge_bit_on_other_levels_is_unsupported_protocol() {
        // 5.0 has no bridge bit; 0x86 and "MQTT" 0x83 are no version at all [MQTT-3.1.2-2].
        for level in [0x85, 0x86, 0x83, 0x80, 0xFF] {
            let mut bytes = CONNECT_V311.to_vec();
            bytes[8] = level;
            assert!(
                matches!(
                    decode(&bytes, V311),
                    Err(DecodeError::UnsupportedProtocol { level: l, .. }) if l == level
                ),
                "level {level:#04x}"
            );
        }
    }

    #[test]
    fn connect_unknown_protocol_name_is_a_protocol_error() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[4..8].copy_from_slice(b"MQTX");
        assert_protocol(decode(&bytes, V311), "MQTT-3.1.2-1");
    }

    #[test]
    fn connect_reserved_flag_bit_is_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[9] |= 0x01;
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-3");
    }

    #[test]
    fn connect_will_qos_or_retain_without_will_flag_is_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[9] = 0x02 | 0x08; // will QoS 1, no will flag
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-13");
        bytes[9] = 0x02 | 0x20; // will retain, no will flag
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-15");
    }

    #[test]
    fn connect_will_qos_3_is_malformed() {
        let bytes = [
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x1E, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b't', 0x00, 0x00,
        ];
        assert_malformed(decode(&bytes, V311), "MQTT-3.1.2-14");
    }

    #[test]
    fn connect_v311_with_will_user_and_password_decodes() {
        // flags: user, password, will retain, will QoS 1, will, clean
        let bytes = [
            0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x03, b'w', b'/', b't', 0x00, 0x02, b'h', b'i', 0x00, 0x01, b'u', 0x00,
            0x02, 0x00, 0xFF,
        ];
        let Packet::Connect(c) = decode(&bytes, V311).unwrap() else {
            panic!()
        };
        let w = c.will.unwrap();
        assert_eq!(
            (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
            ("w/t", &b"hi"[..], QoS::AtLeastOnce, true)
        );
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some(&[0x00, 0xFF][..]));
    }

    #[test]
    fn connect_will_topic_with_wildcard_is_a_protocol_error() {
        let bytes = [
            0x10, 0x12, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b'#', 0x00, 0x00,
        ];
        assert_protocol(decode(&bytes, V311), "wildcard");
    }

    #[test]
    fn connect_password_without_user_name_is_malformed_in_v311_but_allowed_in_v5() {
        let v311 = [
            0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3C, 0x00, 0x01,
            b'c', 0x00, 0x01, b'p',
        ];
        assert_malformed(decode(&v311, V311), "MQTT-3.1.2-22");
        let v5 = [
            0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3C, 0x00, 0x00,
            0x01, b'c', 0x00, 0x01, b'p',
        ];
        let Packet::Connect(c) = decode(&v5, V5).unwrap() else {
            panic!()
        };
        assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"p"[..])));
    }

    #[test]
    fn connect_trailing_bytes_are_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[1] += 1;
        bytes.push(0x00);
        assert_malformed(decode(&bytes, V311), "unexpected bytes");
    }

    #[test]
    fn connect_string_length_past_the_body_is_malformed() {
        let mut bytes = CONNECT_V311.to_vec();
        bytes[13] = 0x09; // client id claims 9 bytes, 3 present
        assert_malformed(decode(&bytes, V311), "client identifier");
    }

    #[test]
    fn connect_v5_with_properties_and_will_properties_decodes() {
        let bytes = [
            0x10, 0x2A, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x06, 0x00,
            0x0A, // will + clean
            0x0F, // properties: 15 bytes
            0x11, 0x00, 0x00, 0x00, 0x78, // session expiry 120
            0x21, 0x00, 0x14, // receive maximum 20
            0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', // user property k=v
            0x00, 0x01, b'c', // client id
            0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will properties: will delay 5
            0x00, 0x01, b't', // will topic
            0x00, 0x02, b'b', b'y', // will payload
        ];
        let Packet::Connect(c) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.version, V5);
        assert_eq!(c.properties.session_expiry_interval, Some(120));
        assert_eq!(c.properties.receive_maximum, Some(20));
        assert_eq!(
            c.properties.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        let w = c.will.unwrap();
        assert_eq!(w.properties.will_delay_interval, Some(5));
        assert_eq!((w.topic.as_str(), &w.payload[..]), ("t", &b"by"[..]));
    }

    #[test]
    fn connack_v311_decodes_session_present_and_return_code() {
        let Packet::ConnAck(c) = decode(&[0x20, 0x02, 0x01, 0x00], V311).unwrap() else {
            panic!()
        };
        assert_eq!((c.session_present, c.code), (true, 0));
        assert_malformed(decode(&[0x20, 0x02, 0x02, 0x00], V311), "MQTT-3.2.2-1");
        assert_protocol(decode(&[0x20, 0x02, 0x00, 0x06], V311), "return code");
    }

    #[test]
    fn connack_v5_decodes_properties() {
        let bytes = [0x20, 0x07, 0x00, 0x00, 0x04, 0x24, 0x01, 0x25, 0x00];
        let Packet::ConnAck(c) = decode(&bytes, V5).unwrap() else {
            panic!()
        };
        assert_eq!(c.properties.maximum_qos, Some(1));
        assert_eq!(c.properties.retain_available, Some(0));
        let bad_max_qos = [0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02];
        assert_protocol(decode(&bad_max_qos, V5), "maximum QoS");
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
            bridge: false,
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
}
