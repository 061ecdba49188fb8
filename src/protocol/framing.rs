//! Framing: the fixed header and the Remaining Length (3.1.1 section 2.2, 5.0 section 2.1).
//!
//! Cutting frames off a byte stream ([`read_frame`]) or out of a buffer ([`frame_in`],
//! [`frame_in_place`]), with the packet size checked from the fixed header before any body is
//! allocated; and the other direction: the Variable Byte Integer writer and `FrameWriter`,
//! which puts the Remaining Length in front of a body once its length is known. Nothing here
//! looks inside a body.
use super::error::{malformed, DecodeError};
use bytes::Bytes;
use std::io::{self, Read};

/// Largest value the variable-length "Remaining Length" can carry (4 bytes of 7 bits). [MQTT-2.2.3]
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// One MQTT frame: the first fixed-header byte and the body (variable header + payload).
#[derive(Debug, Clone)]
pub struct Frame {
    pub header: u8,
    pub body: Bytes,
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Read one frame. `max_packet_size` bounds the whole packet and is checked from the fixed header,
/// before the body is allocated. Returns `Eof` if the peer closed cleanly between packets.
///
/// Read timeouts: a timeout (`WouldBlock`/`TimedOut`) before the first byte of a packet is returned
/// unchanged as `Io` and nothing has been consumed, so the caller can use socket read timeouts for
/// keep-alive and shutdown polling (see [`DecodeError::is_idle_timeout`]). A timeout *inside* a
/// packet cannot be resumed (the bytes already read are gone), so it is turned into a fatal `Io`
/// error of kind `Other` ("read timed out inside a packet"): a peer that stalls mid-packet is
/// treated like one that broke the connection. The peer closing mid-packet is `Io(UnexpectedEof)`.
///
/// After `TooLarge` the body is still unread, so the stream is out of sync: close the connection
/// (v5: after a DISCONNECT 0x95).
///
/// Bodies above 64 KiB are not pre-allocated to the announced size: the buffer grows with the bytes
/// actually received, so a peer announcing a large packet and sending nothing costs little memory.
///
/// Each call reads the fixed header a byte at a time (it must not read past the packet), so wrap
/// a `TcpStream` in a `BufReader`; that is safe with read timeouts, since a `BufReader` keeps its
/// buffered bytes when the inner read fails.
pub fn read_frame(r: &mut impl Read, max_packet_size: usize) -> Result<Frame, DecodeError> {
    let mut first = [0u8; 1];
    loop {
        match r.read(&mut first) {
            Ok(0) => return Err(DecodeError::Eof),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DecodeError::Io(e)),
        }
    }
    let header = first[0];
    let (remaining, length_bytes) = remaining_length(|i| {
        let mut b = [0u8; 1];
        read_exact_in_frame(r, &mut b, 1 + i)?;
        Ok(Some(b[0]))
    })?
    .expect("a reader yields every byte or fails");
    let size = check_size(length_bytes, remaining, max_packet_size)?;

    let body = if remaining <= INITIAL_BODY_CAPACITY {
        // Common case: one exact allocation, filled by plain reads.
        let mut body = vec![0u8; remaining];
        read_exact_in_frame(r, &mut body, 1 + length_bytes)?;
        body
    } else {
        // Large packet: let the buffer grow with the bytes that actually arrive.
        let mut body = Vec::with_capacity(INITIAL_BODY_CAPACITY);
        let mut limited = r.take(remaining as u64);
        loop {
            match limited.read_to_end(&mut body) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(mid_frame_error(e, 1 + length_bytes + body.len())),
            }
        }
        if body.len() < remaining {
            return Err(DecodeError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed after {} of {} bytes of a packet",
                    1 + length_bytes + body.len(),
                    size
                ),
            )));
        }
        body
    };
    Ok(Frame {
        header,
        body: Bytes::from(body),
    })
}

/// The frame at the start of `buf` when `buf` holds all of it, with the bytes it takes; None
/// when more bytes are needed. Errors and limits as `read_frame`. A reader with a buffer takes
/// its frames this way in one copy, and uses `read_frame` for the rest.
pub fn frame_in(buf: &[u8], max_packet_size: usize) -> Result<Option<(Frame, usize)>, DecodeError> {
    Ok(frame_in_place(buf, max_packet_size)?.map(|(frame, size)| {
        let (header, body) = (frame.header, Bytes::copy_from_slice(frame.body));
        (Frame { header, body }, size)
    }))
}

/// A frame where it lies in a buffer.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    /// The fixed header's first byte: packet type and flags.
    pub header: u8,
    pub body: &'a [u8],
}

/// `frame_in` without the copy.
pub fn frame_in_place(
    buf: &[u8],
    max_packet_size: usize,
) -> Result<Option<(FrameRef<'_>, usize)>, DecodeError> {
    let Some(&header) = buf.first() else {
        return Ok(None);
    };
    let Some((remaining, length_bytes)) = remaining_length(|i| Ok(buf.get(1 + i).copied()))? else {
        return Ok(None);
    };
    let size = check_size(length_bytes, remaining, max_packet_size)?;
    let Some(body) = buf.get(1 + length_bytes..size) else {
        return Ok(None);
    };
    Ok(Some((FrameRef { header, body }, size)))
}

/// Remaining Length: up to 4 bytes, 7 bits each, high bit = "more bytes follow" [MQTT-2.2.3].
/// `byte(i)` yields its i-th byte, None when not there yet. Returns (value, bytes it took).
fn remaining_length(
    mut byte: impl FnMut(usize) -> Result<Option<u8>, DecodeError>,
) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut remaining: usize = 0;
    for i in 0..4 {
        let Some(b) = byte(i)? else {
            return Ok(None);
        };
        remaining |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((remaining, i + 1)));
        }
    }
    Err(malformed(
        "remaining length uses more than 4 bytes (3.1.1 section 2.2.3, 5.0 section 2.1.4) \
         [MQTT-4.8.0-1] [MQTT-4.13.1-1]",
    ))
}

/// The whole packet's size, refused above `max_packet_size` (checked before any body is read).
fn check_size(
    length_bytes: usize,
    remaining: usize,
    max_packet_size: usize,
) -> Result<usize, DecodeError> {
    let size = 1 + length_bytes + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok(size)
}

/// Bodies up to this size get their buffer in one allocation; larger ones grow as data arrives
/// (so announcing a huge packet and sending nothing costs at most this much memory).
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

fn read_exact_in_frame(
    r: &mut impl Read,
    buf: &mut [u8],
    already: usize,
) -> Result<(), DecodeError> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(DecodeError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {} bytes of a packet header",
                        already + filled
                    ),
                )))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(mid_frame_error(e, already + filled)),
        }
    }
    Ok(())
}

fn mid_frame_error(e: io::Error, read_so_far: usize) -> DecodeError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        // Not resumable: must not look like an idle timeout to the caller.
        DecodeError::Io(io::Error::other(format!(
            "read timed out inside a packet after {read_so_far} bytes: {e}"
        )))
    } else {
        DecodeError::Io(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Number of bytes `value` takes as a Variable Byte Integer (section 1.5.5 / 2.2.3).
pub fn variable_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Append `value` as a Variable Byte Integer (the Remaining Length encoding) using the minimum
/// number of bytes [MQTT-1.5.5-1]. Values above 268,435,455 cannot be represented; callers check.
pub fn write_variable_int(out: &mut Vec<u8>, mut value: usize) {
    debug_assert!(value <= MAX_REMAINING_LENGTH);
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Writes the fixed header byte + body, then inserts the Remaining Length after the header byte
/// once the body length is known. Control packets are small, so the one memmove is negligible;
/// PUBLISH, the hot path, sizes itself up front instead.
pub(super) struct FrameWriter {
    start: usize,
}

impl FrameWriter {
    pub(super) fn start(out: &[u8]) -> Self {
        FrameWriter { start: out.len() }
    }

    pub(super) fn finish(self, out: &mut Vec<u8>, name: &str) {
        if out.len() == self.start {
            return; // nothing written (AUTH for v3.x)
        }
        let body_start = self.start + 1;
        let remaining = out.len() - body_start;
        if remaining > MAX_REMAINING_LENGTH {
            log::error!(
                "{name} not written: remaining length {remaining} exceeds {MAX_REMAINING_LENGTH}"
            );
            out.truncate(self.start);
            return;
        }
        let mut len = Vec::with_capacity(4);
        write_variable_int(&mut len, remaining);
        out.splice(body_start..body_start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_packet, Packet, ProtocolVersion::V311};
    use std::io::Cursor;

    #[test]
    fn read_frame_returns_eof_when_peer_closes_between_packets() {
        let mut cur = Cursor::new(Vec::new());
        assert!(matches!(read_frame(&mut cur, 100), Err(DecodeError::Eof)));
    }

    #[test]
    fn read_frame_reads_consecutive_frames_from_one_stream() {
        let mut cur = Cursor::new(vec![0xC0, 0x00, 0xE0, 0x00, 0x30, 0x03, 0x00, 0x01, b'a']);
        assert_eq!(read_frame(&mut cur, 100).unwrap().header, 0xC0);
        assert_eq!(read_frame(&mut cur, 100).unwrap().header, 0xE0);
        let f = read_frame(&mut cur, 100).unwrap();
        assert_eq!((f.header, &f.body[..]), (0x30, &[0x00, 0x01, b'a'][..]));
        assert!(matches!(read_frame(&mut cur, 100), Err(DecodeError::Eof)));
    }

    #[test]
    fn frame_in_takes_whole_frames_from_a_buffer_and_waits_for_partial_ones() {
        let stream = [0xC0, 0x00, 0x30, 0x03, 0x00, 0x01, b'a', 0x30, 0x83, 0x01];
        let (f, used) = frame_in(&stream, 100).unwrap().unwrap();
        assert_eq!((f.header, f.body.len(), used), (0xC0, 0, 2));
        let (f, used) = frame_in(&stream[2..], 100).unwrap().unwrap();
        assert_eq!(
            (f.header, &f.body[..], used),
            (0x30, &[0x00, 0x01, b'a'][..], 5)
        );
        // Remaining length 131 announced, body not there yet; and a cut inside the length.
        assert!(frame_in(&stream[7..], 200).unwrap().is_none());
        assert!(frame_in(&stream[7..9], 200).unwrap().is_none());
        assert!(frame_in(&[], 200).unwrap().is_none());
        // Limits are checked from the header alone, as read_frame does.
        assert!(matches!(
            frame_in(&stream[7..], 100),
            Err(DecodeError::TooLarge {
                size: 134,
                max: 100
            })
        ));
        assert!(matches!(
            frame_in(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
        // Every prefix of a stream gives what read_frame gives for the frames it holds.
        let mut cur = Cursor::new(stream.to_vec());
        let (mut at, mut n) = (0, 0);
        while let Some((f, used)) = frame_in(&stream[at..], 200).unwrap() {
            let r = read_frame(&mut cur, 200).unwrap();
            assert_eq!((f.header, &f.body[..]), (r.header, &r.body[..]));
            at += used;
            n += 1;
        }
        assert_eq!((n, at), (2, 7));
    }

    #[test]
    fn remaining_length_with_five_bytes_is_malformed() {
        let mut cur = Cursor::new(vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(matches!(
            read_frame(&mut cur, usize::MAX),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn remaining_length_of_four_bytes_decodes_the_maximum() {
        // 0xFF 0xFF 0xFF 0x7F = 268,435,455 (section 2.2.3); refused as too large, with the size.
        let mut cur = Cursor::new(vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
        match read_frame(&mut cur, 1000) {
            Err(DecodeError::TooLarge { size, max }) => {
                assert_eq!(size, 1 + 4 + MAX_REMAINING_LENGTH);
                assert_eq!(max, 1000);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    /// A reader that announces a 268 MB packet and then would stream zeros forever; it counts the
    /// bytes handed out, so the test proves the body was never read (or allocated).
    struct HugePacket {
        served: usize,
    }

    impl Read for HugePacket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const HEADER: [u8; 5] = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
            let n = if self.served < HEADER.len() {
                buf[0] = HEADER[self.served];
                1
            } else {
                buf.fill(0);
                buf.len()
            };
            self.served += n;
            Ok(n)
        }
    }

    #[test]
    fn too_large_packet_is_refused_before_reading_the_body() {
        let mut r = HugePacket { served: 0 };
        assert!(matches!(
            read_frame(&mut r, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
        assert_eq!(r.served, 5, "only the fixed header may be read");
    }

    #[test]
    fn packet_of_exactly_max_packet_size_is_accepted() {
        let bytes = [0x30, 0x03, 0x00, 0x01, b'a'];
        assert!(read_frame(&mut Cursor::new(bytes.to_vec()), 5).is_ok());
        assert!(matches!(
            read_frame(&mut Cursor::new(bytes.to_vec()), 4),
            Err(DecodeError::TooLarge { size: 5, max: 4 })
        ));
    }

    #[test]
    fn truncated_body_is_an_unexpected_eof() {
        let mut cur = Cursor::new(vec![0x30, 0x05, 0x00, 0x01]);
        match read_frame(&mut cur, 100) {
            Err(DecodeError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected Io(UnexpectedEof), got {other:?}"),
        }
        let mut cur = Cursor::new(vec![0x30, 0x80]);
        assert!(matches!(read_frame(&mut cur, 100), Err(DecodeError::Io(_))));
    }

    /// PUBLISH of 100,000 body bytes (above the 64 KiB single-allocation size): topic "t" + payload.
    fn large_publish() -> Vec<u8> {
        let mut bytes = vec![0x30, 0xA0, 0x8D, 0x06, 0x00, 0x01, b't']; // remaining 100,000
        bytes.resize(3 + 1 + 100_000, b'p');
        bytes
    }

    #[test]
    fn large_body_is_read_completely() {
        let frame = read_frame(&mut Cursor::new(large_publish()), 1 << 20).unwrap();
        assert_eq!(frame.body.len(), 100_000);
        let Packet::Publish(p) = decode_packet(frame, V311).unwrap() else {
            panic!()
        };
        assert_eq!(p.payload.len(), 100_000 - 3);
    }

    #[test]
    fn truncated_large_body_is_an_unexpected_eof() {
        let mut bytes = large_publish();
        bytes.truncate(70_000);
        match read_frame(&mut Cursor::new(bytes), 1 << 20) {
            Err(DecodeError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            other => panic!("expected Io(UnexpectedEof), got {other:?}"),
        }
    }

    /// Yields its chunks one per read call; `None` is a read timeout.
    struct Scripted(Vec<Option<Vec<u8>>>);

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            match self.0.remove(0) {
                None => Err(io::Error::new(io::ErrorKind::WouldBlock, "timeout")),
                Some(mut chunk) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.0.insert(0, Some(chunk.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    #[test]
    fn timeout_between_packets_is_an_idle_timeout_and_the_stream_continues() {
        let mut r = Scripted(vec![None, Some(vec![0xC0, 0x00])]);
        let err = read_frame(&mut r, 100).unwrap_err();
        assert!(err.is_idle_timeout(), "{err:?}");
        assert_eq!(read_frame(&mut r, 100).unwrap().header, 0xC0);
    }

    #[test]
    fn timeout_inside_a_packet_is_fatal_not_idle() {
        let mut r = Scripted(vec![
            Some(vec![0x30, 0x05, 0x00]),
            None,
            Some(vec![0x01, b'a', b'b']),
        ]);
        let err = read_frame(&mut r, 100).unwrap_err();
        assert!(matches!(err, DecodeError::Io(_)), "{err:?}");
        assert!(
            !err.is_idle_timeout(),
            "a mid-packet timeout must not look resumable"
        );
    }

    #[test]
    fn frame_split_over_many_reads_is_reassembled() {
        let chunks = [0x30u8, 0x06, 0x00, 0x01, b't', b'x', b'y', b'z']
            .iter()
            .map(|&b| Some(vec![b]))
            .collect();
        let f = read_frame(&mut Scripted(chunks), 100).unwrap();
        assert_eq!(&f.body[..], &[0x00, 0x01, b't', b'x', b'y', b'z']);
    }

    #[test]
    fn variable_int_uses_the_minimum_number_of_bytes_at_every_boundary() {
        // Table 2.4 of 3.1.1 / section 1.5.5 of 5.0.
        for (value, bytes) in [
            (0usize, &[0x00][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            let mut out = Vec::new();
            write_variable_int(&mut out, value);
            assert_eq!(out, bytes, "value {value}");
            assert_eq!(variable_int_len(value), bytes.len(), "value {value}");
        }
    }
}
