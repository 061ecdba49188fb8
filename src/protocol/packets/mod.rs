//! Packets: decode and encode of each packet family, on top of the framing and the property
//! table. One function per family and direction, for all three versions; version differences
//! are `if version.is_v5()` branches inside it, never a copied decoder.
//!
//! | file | packets |
//! | --- | --- |
//! | `connect.rs` | CONNECT, CONNACK |
//! | `publish.rs` | PUBLISH (owned, and in place: [`PublishView`]) |
//! | `ack.rs` | PUBACK, PUBREC, PUBREL, PUBCOMP, DISCONNECT, AUTH: an id or nothing, then a reason code and properties |
//! | `subscribe.rs` | SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK |
//!
//! `dispatch.rs` maps packet types to these files (PINGREQ and PINGRESP, which have no body, are
//! decoded there); `checks.rs` holds the field checks they share.
//!
//! The decoder checks every field against the spec. The encoder trusts its caller (the broker)
//! for protocol state (packet ids, QoS choices) but never writes bytes that would not parse:
//! properties not valid for the packet are left out, strings and binary fields longer than
//! 65,535 bytes are cut (with a logged warning), a packet whose remaining length would exceed
//! 268,435,455 is not written at all (logged as an error). v5 acknowledgements use the shortest
//! form the spec allows.
mod ack;
mod checks;
mod connect;
mod dispatch;
mod publish;
mod subscribe;

pub use dispatch::{decode_packet, encode_packet};
pub use publish::{decode_publish, decode_publish_view, encode_publish, PublishView};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::properties::{property, PropContext};
    use crate::protocol::testutil::*;
    use crate::protocol::*;
    use bytes::Bytes;

    #[test]
    fn pubrel_with_flags_other_than_0010_is_malformed() {
        assert_malformed(decode(&[0x60, 0x02, 0x00, 0x01], V311), "MQTT-2.2.2-2");
        assert_malformed(decode(&[0x42, 0x02, 0x00, 0x01], V311), "MQTT-2.2.2-2");
    }

    #[test]
    fn v31_subscribe_and_pubrel_retries_with_dup_flag_are_accepted() {
        let bytes = [0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00];
        let Packet::Subscribe(s) = decode(&bytes, V31).unwrap() else {
            panic!()
        };
        assert_eq!(s.filters[0].filter, "a");
        assert!(matches!(
            decode(&[0x6A, 0x02, 0x00, 0x01], V31),
            Ok(Packet::PubRel(_))
        ));
        // the same bytes on a 3.1.1 connection break [MQTT-2.2.2-2]
        assert_malformed(decode(&bytes, V311), "MQTT-2.2.2-2");
    }

    #[test]
    fn ping_packets_decode_and_reject_a_body() {
        assert_eq!(decode(&[0xC0, 0x00], V311).unwrap(), Packet::PingReq);
        assert_eq!(decode(&[0xD0, 0x00], V5).unwrap(), Packet::PingResp);
        assert_malformed(
            decode(&[0xC0, 0x01, 0x00], V311),
            "remaining length must be 0",
        );
        assert_malformed(decode(&[0xC1, 0x00], V311), "MQTT-2.2.2-2");
    }

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
    fn reserved_packet_type_0_is_malformed() {
        assert_malformed(decode(&[0x00, 0x00], V5), "reserved control packet type 0");
    }

    /// Every prefix of a valid packet body must fail cleanly (never panic), and random bodies too;
    /// every Malformed/Protocol error cites a spec rule, which the broker logs as the reason.
    #[test]
    fn truncated_and_random_bodies_fail_cleanly_and_cite_a_rule() {
        let samples: &[&[u8]] = &[
            &[
                0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xEE, 0x00, 0x0A, 0x05, 0x11, 0, 0, 0, 1,
                0x00, 0x01, b'c', 0x02, 0x01, 0x01, 0x00, 0x01, b't', 0x00, 0x01, b'p', 0x00, 0x01,
                b'u', 0x00, 0x01, b'p',
            ],
            &[
                0x00, 0x01, b't', 0x00, 0x07, 0x04, 0x0B, 0x81, 0x01, 0x01, b'x',
            ],
            &[
                0x00, 0x01, 0x04, 0x0B, 0x01, 0x26, 0x00, 0x01, b'a', 0x00, 0x01, b'a', 0x01,
            ],
        ];
        let mut errors = 0;
        let mut check_cites_rule = |r: Result<Packet, DecodeError>| {
            if let Err(DecodeError::Malformed(m) | DecodeError::Protocol(m)) = r {
                assert!(m.contains("[MQTT-"), "error cites no rule: {m}");
                errors += 1;
            }
        };
        let headers = [
            0x10u8, 0x20, 0x32, 0x40, 0x62, 0x82, 0x90, 0xA2, 0xB0, 0xE0, 0xF0,
        ];
        for body in samples {
            for cut in 0..=body.len() {
                for &header in &headers {
                    for v in [V31, V311, V5] {
                        let frame = Frame {
                            header,
                            body: Bytes::copy_from_slice(&body[..cut]),
                        };
                        check_cites_rule(decode_packet(frame, v));
                    }
                }
            }
        }
        // Deterministic pseudo-random bodies (xorshift), bounded loop.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 24) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            let header = (x >> 56) as u8;
            for v in [V31, V311, V5] {
                check_cites_rule(decode_packet(
                    Frame {
                        header,
                        body: Bytes::from(body.clone()),
                    },
                    v,
                ));
            }
        }
        assert!(
            errors > 10_000,
            "the loop must exercise error paths, got {errors}"
        );
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
        let ok = |id: u8| property(id).is_some_and(|d| d.allowed.contains(ctx));
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
                bridge: false,
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
                bridge: false,
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
