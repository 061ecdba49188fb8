//! The data representations of section 1.5 (3.1.1 and 5.0): integers, Variable Byte Integers,
//! UTF-8 strings, binary data, in both directions.
//!
//! [`Reader`] is a bounds-checked cursor over a frame body whose errors name the packet and the
//! field; the `write_*` functions append the same representations and never write a field the
//! two-byte length prefix cannot describe (they cut it, logging a warning).
use super::error::{close_rule, malformed, DecodeError};
use super::types::ProtocolVersion;
use bytes::Bytes;

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// Cursor over a frame body. Every read is bounds-checked; running past the end is Malformed.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pub(super) pos: usize,
    packet: &'static str,
    /// Picks the rule cited in errors (CONNECT updates it once the level is known).
    pub(super) version: ProtocolVersion,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8], packet: &'static str, version: ProtocolVersion) -> Self {
        Reader {
            buf,
            pos: 0,
            packet,
            version,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(super) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(malformed(format!(
                "{}: {field} needs {n} bytes but only {} remain {}",
                self.packet,
                self.remaining(),
                close_rule(self.version)
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub(super) fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Variable Byte Integer (section 1.5.5): at most 4 bytes.
    pub(super) fn varint(&mut self, field: &str) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8(field)?;
            value |= ((b & 0x7F) as u32) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed(format!(
            "{}: {field} is a variable byte integer longer than 4 bytes (section 1.5.5) {}",
            self.packet,
            close_rule(self.version)
        )))
    }

    /// A copy of the next `n` bytes (binary fields are small and rare; a slice of the frame
    /// would keep all of it alive).
    pub(super) fn slice(&mut self, n: usize, field: &str) -> Result<Bytes, DecodeError> {
        Ok(Bytes::copy_from_slice(self.take(n, field)?))
    }

    /// Binary Data: two-byte length + bytes (section 1.5.6).
    pub(super) fn binary(&mut self, field: &str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)? as usize;
        self.slice(len, field)
    }

    /// UTF-8 Encoded String (section 1.5.3 / 3.1.1 section 1.5.3).
    pub(super) fn string(&mut self, field: &str) -> Result<String, DecodeError> {
        self.str(field).map(str::to_owned)
    }

    /// `string`, borrowed from the frame body.
    pub(super) fn str(&mut self, field: &str) -> Result<&'a str, DecodeError> {
        let len = self.u16(field)? as usize;
        let raw = self.take(len, field)?;
        // from_utf8 rejects ill-formed UTF-8 and the surrogates U+D800..U+DFFF [MQTT-1.5.3-1].
        let s = std::str::from_utf8(raw).map_err(|e| {
            malformed(format!(
                "{}: {field} is not valid UTF-8 ({e}) [MQTT-1.5.3-1] (5.0: [MQTT-1.5.4-1])",
                self.packet
            ))
        })?;
        if s.contains('\0') {
            return Err(malformed(format!(
                "{}: {field} contains U+0000 [MQTT-1.5.3-2] (5.0: [MQTT-1.5.4-2])",
                self.packet
            )));
        }
        Ok(s)
    }

    /// Rest of the body.
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let b = &self.buf[self.pos..];
        self.pos = self.buf.len();
        b
    }

    pub(super) fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(malformed(format!(
                "{}: {} unexpected bytes after the last field {}",
                self.packet,
                self.remaining(),
                close_rule(self.version)
            )));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/// Longest string/binary field the two-byte length prefix can describe.
pub(super) const MAX_FIELD_LEN: usize = u16::MAX as usize;

/// `s` cut to at most 65,535 bytes on a character boundary (logged when it happens).
pub(super) fn clamp_str<'a>(s: &'a str, field: &str) -> &'a str {
    if s.len() <= MAX_FIELD_LEN {
        return s;
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    log::warn!(
        "{field} of {} bytes cut to {end} bytes to fit the wire format",
        s.len()
    );
    &s[..end]
}

pub(super) fn clamp_binary<'a>(b: &'a [u8], field: &str) -> &'a [u8] {
    if b.len() <= MAX_FIELD_LEN {
        return b;
    }
    log::warn!(
        "{field} of {} bytes cut to {MAX_FIELD_LEN} bytes to fit the wire format",
        b.len()
    );
    &b[..MAX_FIELD_LEN]
}

pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    let s = clamp_str(s, "string field");
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn write_binary(out: &mut Vec<u8>, b: &[u8]) {
    let b = clamp_binary(b, "binary field");
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}
