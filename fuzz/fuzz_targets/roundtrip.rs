//! Round trip: every packet the decoder accepts must survive encode -> read_frame -> decode
//! unchanged, in the version it was decoded for, and its encoding must be stable (encoding the
//! re-decoded packet gives the same bytes). Catches encoder/decoder disagreements (field order,
//! short forms, property contexts) and encoder panics on decoder-produced values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqflux::protocol::{
    decode_packet, encode_packet, read_frame, DecodeError, ProtocolVersion, MAX_REMAINING_LENGTH,
};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    for _ in 0..data.len() / 2 + 1 {
        let frame = match read_frame(&mut input, MAX_REMAINING_LENGTH + 5) {
            Ok(frame) => frame,
            Err(DecodeError::Eof) => return,
            Err(_) => return,
        };
        for version in VERSIONS {
            let Ok(packet) = decode_packet(frame.clone(), version) else {
                continue;
            };
            let mut encoded = Vec::new();
            encode_packet(&packet, version, &mut encoded);
            let mut reader = encoded.as_slice();
            let again = read_frame(&mut reader, MAX_REMAINING_LENGTH + 5).unwrap_or_else(|e| {
                panic!("re-encoded {packet:?} ({version}) does not frame: {e}")
            });
            assert!(reader.is_empty(), "encoder wrote bytes after the frame");
            let decoded = decode_packet(again, version).unwrap_or_else(|e| {
                panic!(
                    "re-encoded {packet:?} ({version}) does not decode: {e}\nbytes: {encoded:02x?}"
                )
            });
            assert_eq!(packet, decoded, "{version}: round trip changed the packet");
            let mut encoded_again = Vec::new();
            encode_packet(&decoded, version, &mut encoded_again);
            assert_eq!(encoded, encoded_again, "{version}: encoding is not stable");
        }
    }
});
