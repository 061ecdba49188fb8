//! Writes the seed corpus: valid packets of every type in MQTT 3.1.1 and 5.0 (plus 3.1 CONNECTs),
//! made with `encode_packet`, a few multi-packet streams, and hand-made invalid packets.
//! Run from fuzz/: `cargo run --example gen_seeds` (rewrites corpus/decode and corpus/roundtrip).
use bytes::Bytes;
use mqflux::protocol::*;
use std::fs;

fn props_full() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        content_type: Some("application/json".into()),
        response_topic: Some("reply/to/me".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02corr")),
        subscription_identifiers: vec![1, 300, 268_435_455],
        session_expiry_interval: Some(u32::MAX),
        assigned_client_identifier: Some("auto-1234".into()),
        server_keep_alive: Some(30),
        authentication_method: Some("SCRAM-SHA-1".into()),
        authentication_data: Some(Bytes::from_static(b"client-first")),
        request_problem_information: Some(0),
        will_delay_interval: Some(10),
        request_response_information: Some(1),
        response_information: Some("resp/".into()),
        server_reference: Some("other.example:1883".into()),
        reason_string: Some("because".into()),
        receive_maximum: Some(20),
        topic_alias_maximum: Some(10),
        topic_alias: Some(3),
        maximum_qos: Some(1),
        retain_available: Some(0),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "ü€".into())],
        maximum_packet_size: Some(65536),
        wildcard_subscription_available: Some(1),
        subscription_identifier_available: Some(0),
        shared_subscription_available: Some(1),
    }
}

fn connect(version: ProtocolVersion, will: bool, auth: bool, props: bool) -> Packet {
    Packet::Connect(Connect {
        version,
        clean_start: !will,
        keep_alive: if will { 0 } else { 60 },
        client_id: if auth {
            "client-ä".into()
        } else {
            String::new()
        },
        will: will.then(|| Will {
            topic: "clients/gone".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if props {
                props_full()
            } else {
                Properties::default()
            },
        }),
        username: auth.then(|| "alice".into()),
        password: auth.then(|| Bytes::from_static(b"s3cret\x00\xff")),
        properties: if props {
            props_full()
        } else {
            Properties::default()
        },
        bridge: false,
    })
}

fn publish(
    qos: QoS,
    retain: bool,
    dup: bool,
    topic: &str,
    payload: &'static [u8],
    props: bool,
) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { 0x1234 },
        payload: Bytes::from_static(payload),
        properties: if props {
            props_full().into()
        } else {
            Properties::default().into()
        },
    })
}

fn packets(version: ProtocolVersion) -> Vec<(&'static str, Packet)> {
    let v5 = version.is_v5();
    let props = |p: bool| {
        if p && v5 {
            props_full()
        } else {
            Properties::default()
        }
    };
    let ack = |id: u16, code: u8, p: bool| Ack {
        packet_id: id,
        reason_code: code,
        properties: props(p),
    };
    let opts = |qos, no_local, rap, rh| SubscriptionOptions {
        qos,
        no_local,
        retain_as_published: rap,
        retain_handling: rh,
    };
    vec![
        ("connect-min", connect(version, false, false, false)),
        ("connect-will", connect(version, true, false, false)),
        ("connect-auth", connect(version, false, true, false)),
        ("connect-all", connect(version, true, true, true)),
        (
            "connack-ok",
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: 0,
                properties: props(true),
            }),
        ),
        (
            "connack-refused",
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: if v5 { 0x87 } else { 5 },
                properties: Properties::default(),
            }),
        ),
        (
            "publish-qos0",
            publish(
                QoS::AtMostOnce,
                false,
                false,
                "sensors/room1/temp",
                b"21.5",
                false,
            ),
        ),
        (
            "publish-qos1-retain",
            publish(QoS::AtLeastOnce, true, false, "a/b", b"{\"t\":1}", v5),
        ),
        (
            "publish-qos2-dup",
            publish(QoS::ExactlyOnce, false, true, "x", b"", false),
        ),
        (
            "publish-utf8",
            publish(
                QoS::AtLeastOnce,
                false,
                false,
                "wetter/zürich/°C",
                &[0u8, 255, 128, 10],
                v5,
            ),
        ),
        ("puback", Packet::PubAck(ack(1, 0, false))),
        (
            "puback-reason",
            Packet::PubAck(ack(2, if v5 { 0x10 } else { 0 }, false)),
        ),
        (
            "puback-props",
            Packet::PubAck(ack(3, if v5 { 0x87 } else { 0 }, true)),
        ),
        (
            "pubrec",
            Packet::PubRec(ack(0xFFFF, if v5 { 0x80 } else { 0 }, false)),
        ),
        ("pubrel", Packet::PubRel(ack(7, 0, false))),
        (
            "pubrel-notfound",
            Packet::PubRel(ack(7, if v5 { 0x92 } else { 0 }, true)),
        ),
        ("pubcomp", Packet::PubComp(ack(8, 0, false))),
        (
            "subscribe-one",
            Packet::Subscribe(Subscribe {
                packet_id: 10,
                filters: vec![SubscribeFilter {
                    filter: "sensors/#".into(),
                    options: opts(QoS::AtLeastOnce, false, false, 0),
                }],
                properties: Properties::default(),
            }),
        ),
        (
            "subscribe-many",
            Packet::Subscribe(Subscribe {
                packet_id: 11,
                filters: vec![
                    SubscribeFilter {
                        filter: "+/+/temp".into(),
                        options: opts(QoS::AtMostOnce, true, false, 1),
                    },
                    SubscribeFilter {
                        filter: "$share/g/a/#".into(),
                        options: opts(QoS::ExactlyOnce, false, true, 2),
                    },
                    SubscribeFilter {
                        filter: "#".into(),
                        options: opts(QoS::AtLeastOnce, true, true, 0),
                    },
                ],
                properties: if v5 {
                    Properties {
                        subscription_identifiers: vec![42],
                        user_properties: vec![("a".into(), "b".into())],
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                },
            }),
        ),
        (
            "suback",
            Packet::SubAck(SubAck {
                packet_id: 10,
                reason_codes: vec![0, 1, 2, 0x80],
                properties: props(true),
            }),
        ),
        (
            "unsubscribe",
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 12,
                filters: vec!["sensors/#".into(), "a/+".into()],
                properties: props(false),
            }),
        ),
        (
            "unsuback",
            Packet::UnsubAck(UnsubAck {
                packet_id: 12,
                reason_codes: if v5 { vec![0, 0x11] } else { vec![] },
                properties: props(true),
            }),
        ),
        ("pingreq", Packet::PingReq),
        ("pingresp", Packet::PingResp),
        ("disconnect", Packet::Disconnect(Disconnect::default())),
        (
            "disconnect-will",
            Packet::Disconnect(Disconnect {
                reason_code: if v5 { 0x04 } else { 0 },
                properties: props(true),
            }),
        ),
        (
            "auth",
            Packet::Auth(Auth {
                reason_code: 0x18,
                properties: Properties {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(Bytes::from_static(b"data")),
                    reason_string: Some("continue".into()),
                    ..Properties::default()
                },
            }),
        ),
        ("auth-empty", Packet::Auth(Auth::default())),
    ]
}

/// Hand-made invalid inputs: each breaks one rule the decoder must reject without panicking.
const INVALID: &[(&str, &[u8])] = &[
    (
        "remaining-length-5-bytes",
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
    ),
    (
        "remaining-length-max-no-body",
        &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
    ),
    ("truncated-header", &[0x10, 0x80]),
    ("truncated-body", &[0x30, 0x0A, 0x00, 0x03, b'a']),
    ("reserved-type-0", &[0x00, 0x00]),
    ("reserved-type-15-v3", &[0xF0, 0x00]),
    (
        "subscribe-bad-flags",
        &[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00],
    ),
    (
        "subscribe-qos3",
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x03],
    ),
    ("subscribe-no-filter", &[0x82, 0x02, 0x00, 0x01]),
    ("publish-qos3", &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01]),
    ("publish-dup-qos0", &[0x38, 0x03, 0x00, 0x01, b'a']),
    ("publish-wildcard", &[0x30, 0x03, 0x00, 0x01, b'#']),
    ("publish-bad-utf8", &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28]),
    (
        "publish-surrogate",
        &[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80],
    ),
    ("publish-nul", &[0x30, 0x04, 0x00, 0x02, b'a', 0x00]),
    (
        "publish-packet-id-0",
        &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
    ),
    ("publish-string-past-end", &[0x30, 0x03, 0xFF, 0xFF, b'a']),
    (
        "connect-reserved-flag",
        b"\x10\x0d\x00\x04MQTT\x04\x01\x00\x3c\x00\x01c",
    ),
    (
        "connect-bad-name",
        b"\x10\x0d\x00\x04MQTX\x04\x02\x00\x3c\x00\x01c",
    ),
    (
        "connect-level-9",
        b"\x10\x0d\x00\x04MQTT\x09\x02\x00\x3c\x00\x01c",
    ),
    (
        "connect-will-qos3",
        b"\x10\x0d\x00\x04MQTT\x04\x1e\x00\x3c\x00\x01c",
    ),
    (
        "connect-v5-prop-len-huge",
        b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\xff\xff\xff\x7f\x00\x01c",
    ),
    (
        "connect-v5-dup-prop",
        b"\x10\x15\x00\x04MQTT\x05\x02\x00\x3c\x06\x21\x00\x01\x21\x00\x01\x00\x01c",
    ),
    (
        "connect-v5-prop-varint-5",
        b"\x10\x12\x00\x04MQTT\x05\x02\x00\x3c\xff\xff\xff\xff\x7f\x00\x01c",
    ),
    ("puback-id-0", &[0x40, 0x02, 0x00, 0x00]),
    ("pingreq-body", &[0xC0, 0x01, 0x00]),
    ("suback-no-codes", &[0x90, 0x02, 0x00, 0x01]),
    ("disconnect-v3-body", &[0xE0, 0x01, 0x8E]),
    (
        "auth-data-no-method",
        &[0xF0, 0x08, 0x18, 0x06, 0x16, 0x00, 0x03, b'a', b'b', b'c'],
    ),
];

fn main() {
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for (version, tag) in [(ProtocolVersion::V311, "v311"), (ProtocolVersion::V5, "v5")] {
        let mut stream = Vec::new();
        for (name, packet) in packets(version) {
            if matches!(packet, Packet::Auth(_)) && !version.is_v5() {
                continue;
            }
            let mut out = Vec::new();
            encode_packet(&packet, version, &mut out);
            assert!(!out.is_empty(), "{tag}-{name} encoded to nothing");
            stream.extend_from_slice(&out);
            seeds.push((format!("{tag}-{name}"), out));
        }
        seeds.push((format!("{tag}-stream-all"), stream));
    }
    for (name, packet) in [
        (
            "v31-connect-min",
            connect(ProtocolVersion::V31, false, true, false),
        ),
        (
            "v31-connect-will",
            connect(ProtocolVersion::V31, true, false, false),
        ),
    ] {
        let mut out = Vec::new();
        encode_packet(&packet, ProtocolVersion::V31, &mut out);
        seeds.push((name.into(), out));
    }
    // A 3.1 client sending SUBSCRIBE with DUP set on a retry (accepted on 3.1 connections only).
    seeds.push((
        "v31-subscribe-dup".into(),
        vec![0x8A, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x00],
    ));
    for (name, bytes) in INVALID {
        seeds.push((format!("invalid-{name}"), bytes.to_vec()));
    }
    for dir in ["corpus/decode", "corpus/roundtrip"] {
        fs::create_dir_all(dir).expect("create corpus dir");
        for (name, bytes) in &seeds {
            fs::write(format!("{dir}/seed-{name}"), bytes).expect("write seed");
        }
    }
    println!(
        "wrote {} seeds to corpus/decode and corpus/roundtrip",
        seeds.len()
    );
}
