//! TEMPORARY: the handful of packets the load tool sends, until `mqflux::protocol` has its codec.
//! Replaced by `mqflux::protocol::{encode_packet, decode_packet}` once the codec lands on main.

use mqflux::protocol::*;

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let mut b = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            b |= 0x80;
        }
        out.push(b);
        if v == 0 {
            break;
        }
    }
}

fn put_props(out: &mut Vec<u8>, p: &Properties, v5: bool) {
    if !v5 {
        return;
    }
    let mut b = Vec::new();
    if let Some(x) = p.session_expiry_interval {
        b.push(0x11);
        b.extend_from_slice(&x.to_be_bytes());
    }
    if let Some(x) = p.receive_maximum {
        b.push(0x21);
        b.extend_from_slice(&x.to_be_bytes());
    }
    put_varint(out, b.len());
    out.extend_from_slice(&b);
}

pub fn encode_packet(packet: &Packet, version: ProtocolVersion, out: &mut Vec<u8>) {
    let v5 = version.is_v5();
    let mut body = Vec::new();
    let header: u8 = match packet {
        Packet::Connect(c) => {
            put_str(&mut body, b"MQTT");
            body.push(version.level());
            body.push(if c.clean_start { 0x02 } else { 0 });
            body.extend_from_slice(&c.keep_alive.to_be_bytes());
            put_props(&mut body, &c.properties, v5);
            put_str(&mut body, c.client_id.as_bytes());
            0x10
        }
        Packet::Publish(p) => {
            put_str(&mut body, p.topic.as_bytes());
            if p.qos != QoS::AtMostOnce {
                body.extend_from_slice(&p.packet_id.to_be_bytes());
            }
            put_props(&mut body, &p.properties, v5);
            body.extend_from_slice(&p.payload);
            0x30 | ((p.qos as u8) << 1) | if p.dup { 8 } else { 0 } | p.retain as u8
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            body.extend_from_slice(&a.packet_id.to_be_bytes());
            match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            body.extend_from_slice(&s.packet_id.to_be_bytes());
            put_props(&mut body, &s.properties, v5);
            for f in &s.filters {
                put_str(&mut body, f.filter.as_bytes());
                body.push(f.options.qos as u8);
            }
            0x82
        }
        Packet::PingReq => 0xC0,
        Packet::Disconnect(d) => {
            if v5 {
                body.push(d.reason_code);
            }
            0xE0
        }
        other => unreachable!("the load tool never sends {}", other.name()),
    };
    out.push(header);
    put_varint(out, body.len());
    out.extend_from_slice(&body);
}

pub fn decode_packet(header: u8, body: &[u8], version: ProtocolVersion) -> Result<Packet, String> {
    let v5 = version.is_v5();
    let short = || format!("packet 0x{header:02x} too short");
    match header >> 4 {
        2 => {
            if body.len() < 2 {
                return Err(short());
            }
            let mut properties = Properties::default();
            if v5 && body.len() > 2 {
                // Find Receive Maximum (0x21) among the properties; skip the rest by type.
                let mut i = 3;
                let mut n = 0usize;
                let mut shift = 0;
                let mut j = 2;
                while j < body.len() {
                    n |= ((body[j] & 0x7f) as usize) << shift;
                    shift += 7;
                    j += 1;
                    if body[j - 1] & 0x80 == 0 {
                        break;
                    }
                }
                i = i.max(j);
                let end = (j + n).min(body.len());
                while i < end {
                    let id = body[i];
                    i += 1;
                    let skip = match id {
                        0x21 if i + 2 <= end => {
                            properties.receive_maximum =
                                Some(u16::from_be_bytes([body[i], body[i + 1]]));
                            2
                        }
                        0x13 | 0x21 | 0x22 => 2,
                        0x11 | 0x27 => 4,
                        0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
                        _ => break, // strings etc.: not needed by the tool
                    };
                    i += skip;
                }
            }
            Ok(Packet::ConnAck(ConnAck {
                session_present: body[0] & 1 == 1,
                code: body[1],
                properties,
            }))
        }
        9 => {
            if body.len() < 2 {
                return Err(short());
            }
            let mut i = 2;
            if v5 {
                let mut n = 0usize;
                let mut shift = 0;
                while i < body.len() {
                    n |= ((body[i] & 0x7f) as usize) << shift;
                    shift += 7;
                    i += 1;
                    if body[i - 1] & 0x80 == 0 {
                        break;
                    }
                }
                i += n;
            }
            Ok(Packet::SubAck(SubAck {
                packet_id: u16::from_be_bytes([body[0], body[1]]),
                reason_codes: body.get(i..).unwrap_or(&[]).to_vec(),
                properties: Properties::default(),
            }))
        }
        13 => Ok(Packet::PingResp),
        14 => Ok(Packet::Disconnect(Disconnect {
            reason_code: body.first().copied().unwrap_or(0),
            ..Default::default()
        })),
        _ => Err(format!("unexpected packet 0x{header:02x}")),
    }
}
