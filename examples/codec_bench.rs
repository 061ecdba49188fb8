//! Codec throughput on one core, in memory (no sockets):
//! `cargo run --release --example codec_bench`
//!
//! Measures the hot path: encoding a PUBLISH from borrowed parts, and framing + decoding PUBLISH
//! packets from a byte stream (as a connection reader does through a `BufReader`).

use mqflux::protocol::*;
use std::io::{BufReader, Cursor};
use std::time::Instant;

const N: usize = 1_000_000;

fn report(what: &str, start: Instant, bytes: usize) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{what:<48} {:>7.0} ns/packet  {:>6.2} M packets/s  {:>7.1} MB/s",
        secs * 1e9 / N as f64,
        N as f64 / secs / 1e6,
        bytes as f64 / secs / 1e6
    );
}

fn main() {
    let payload = vec![b'7'; 100];
    let topic = "sensors/building-1/floor-2/room-17/temperature";
    let props = Properties {
        message_expiry_interval: Some(60),
        user_properties: vec![("unit".into(), "C".into())],
        ..Properties::default()
    };

    for (name, version, props) in [
        ("3.1.1", ProtocolVersion::V311, Properties::default()),
        ("5.0 + 2 properties", ProtocolVersion::V5, props),
    ] {
        // Encode: one output buffer reused, as a connection writer would.
        let mut out = Vec::with_capacity(256);
        let mut total = 0;
        let start = Instant::now();
        for i in 0..N {
            out.clear();
            let id = (i % 65_535) as u16 + 1;
            encode_publish(
                &mut out,
                version,
                topic,
                &payload,
                QoS::AtLeastOnce,
                false,
                false,
                id,
                &props,
            );
            total += out.len();
        }
        report(
            &format!("encode_publish QoS1 100 B payload, {name}"),
            start,
            total,
        );

        // Decode: N packets back to back in one stream.
        let mut stream = Vec::with_capacity(N * (out.len() + 4));
        for i in 0..N {
            let id = (i % 65_535) as u16 + 1;
            encode_publish(
                &mut stream,
                version,
                topic,
                &payload,
                QoS::AtLeastOnce,
                false,
                false,
                id,
                &props,
            );
        }
        let bytes = stream.len();
        let mut reader = BufReader::new(Cursor::new(stream));
        let start = Instant::now();
        let mut checksum = 0usize;
        for _ in 0..N {
            let frame = read_frame(&mut reader, 1 << 20).expect("frame");
            match decode_packet(frame, version).expect("decode") {
                Packet::Publish(p) => checksum += p.payload.len() + p.packet_id as usize,
                other => panic!("unexpected {}", other.name()),
            }
        }
        report(
            &format!("read_frame+decode_packet QoS1 100 B, {name}"),
            start,
            bytes,
        );
        assert!(checksum > 0);
    }
}
