//! Fuzz the packet decoder: arbitrary bytes through `read_frame` and `decode_packet` for MQTT 3.1,
//! 3.1.1 and 5.0. Any panic, hang (libFuzzer `-timeout`) or oversized allocation (`-malloc_limit_mb`)
//! is a bug: the decoder faces untrusted clients.
//!
//! Three passes over each input:
//! 1. one frame with an effectively unlimited maximum packet size, so a header announcing a
//!    256 MB body must not allocate it up front;
//! 2. the input as a stream of frames with a small maximum packet size (the `TooLarge` path), each
//!    frame decoded in every version;
//! 3. the same stream through a reader that hands out a few bytes per call and reports
//!    `Interrupted` now and then, like a socket: it must cut exactly the same frames;
//! 4. the same stream cut by `frame_in` (the broker's buffered fast path): the same frames again,
//!    up to where it needs more bytes than the input has.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqflux::protocol::MAX_REMAINING_LENGTH;
use mqflux::protocol::decode::frame_in;
use mqflux::protocol::{decode_packet, read_frame, DecodeError, Frame, ProtocolVersion};
use std::io::{self, Read};

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V31,
    ProtocolVersion::V311,
    ProtocolVersion::V5,
];

/// Small enough that libFuzzer inputs (`-max_len`, see scripts/fuzz.sh) regularly exceed it.
const STREAM_MAX_PACKET_SIZE: usize = 1024;

/// Each frame costs at least two input bytes, so a stream never has more frames than this.
fn frame_budget(data: &[u8]) -> usize {
    data.len() / 2 + 1
}

/// A reader that returns 1..=7 bytes per call and `Interrupted` on every fifth call.
struct Trickle<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(5) {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        let n = buf.len().min(self.calls % 7 + 1).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn decode_all_versions(frame: &Frame) {
    for version in VERSIONS {
        if let Err(e) = decode_packet(frame.clone(), version) {
            // The reason code mapping and the message must not panic either.
            let _ = e.reason_code();
            let _ = e.to_string();
        }
    }
}

/// Frames (or the error that ended the stream) as comparable text.
fn read_stream(r: &mut impl Read, budget: usize) -> Vec<Result<(u8, Vec<u8>), String>> {
    let mut out = Vec::new();
    for _ in 0..budget {
        match read_frame(r, STREAM_MAX_PACKET_SIZE) {
            Ok(frame) => {
                decode_all_versions(&frame);
                out.push(Ok((frame.header, frame.body.to_vec())));
            }
            Err(DecodeError::Eof) => return out,
            Err(e) => {
                out.push(Err(e.to_string()));
                return out;
            }
        }
    }
    panic!("read_frame returned more frames than the input can hold");
}

fuzz_target!(|data: &[u8]| {
    // 1. One frame, no practical size limit.
    let mut one = data;
    if let Ok(frame) = read_frame(&mut one, MAX_REMAINING_LENGTH + 5) {
        assert!(frame.body.len() <= data.len());
        decode_all_versions(&frame);
    }

    // 2. A stream of frames from a slice (reads return everything available).
    let mut slice = data;
    let from_slice = read_stream(&mut slice, frame_budget(data));

    // 3. The same stream, a few bytes at a time with interruptions.
    let mut trickle = Trickle { data, calls: 0 };
    let from_trickle = read_stream(&mut trickle, frame_budget(data));
    assert_eq!(
        from_slice, from_trickle,
        "read_frame cut the stream differently when reads are short"
    );

    // 4. The buffered fast path: whole frames only; an incomplete last frame is left for
    //    read_frame, which then reports the same end of stream.
    let mut from_buffer = Vec::new();
    let mut at = 0;
    loop {
        match frame_in(&data[at..], STREAM_MAX_PACKET_SIZE) {
            Ok(Some((frame, used))) => {
                assert!(used > 0 && at + used <= data.len());
                from_buffer.push(Ok((frame.header, frame.body.to_vec())));
                at += used;
            }
            Ok(None) => {
                let mut rest = &data[at..];
                from_buffer.extend(read_stream(&mut rest, frame_budget(data)));
                break;
            }
            Err(e) => {
                from_buffer.push(Err(e.to_string()));
                break;
            }
        }
    }
    assert_eq!(
        from_slice, from_buffer,
        "frame_in cut the stream differently from read_frame"
    );
});
