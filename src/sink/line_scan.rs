//! How influxd 1.x reads a batch of line protocol, ported step for step from its
//! `models/points.go` and `pkg/escape/bytes.go` (v1.6.7): the sink uses it to check passthrough
//! lines and to find which of its lines a refused write names, and the encoder's tests use it to
//! prove that every line the sink writes is read back as exactly the point that was encoded.
//!
//! influxd reads a line with two different notions of "escaped", and the port keeps both:
//! - `scanLine` (where a line ends), `scanFields` and the field-value scan treat a backslash as
//!   taking the next byte with it (`\\` is a pair; the byte after the pair is not escaped);
//! - the measurement, tag and field-key scans look only at the byte before (a separator counts as
//!   escaped whenever the byte before it is a backslash, whatever came before that one).
//!
//! They agree when every run of backslashes before a separator has odd length and no name ends
//! in a backslash. Names are then unescaped by different functions: field keys lose a backslash
//! before `,` `"` space `=`, tag keys and values before `,` space `=`, the measurement twice
//! before `,` `"` space `=` (found with a real influxd 1.6.7: `e\\\,x` is stored as `e\,x`),
//! string values before `\` and `"`. `line_protocol` writes no backslash before any of
//! `,` `"` space `=` but the one escaping a separator, so that all of them agree.
//!
//! The port checks everything `parsePoint` checks except the time range of precisions other than
//! ns, and reads `u` integers as influxd 1.6 does by default: as invalid.

/// A value as influxd reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum ScannedValue {
    Float(f64),
    Integer(i64),
    Bool(bool),
    Str(Vec<u8>),
}

/// One point as influxd reads it: names unescaped, tags in influxd's (sorted) order.
#[derive(Debug, Clone, PartialEq)]
pub struct ScannedPoint {
    pub measurement: Vec<u8>,
    pub tags: Vec<(Vec<u8>, Vec<u8>)>,
    pub fields: Vec<(Vec<u8>, ScannedValue)>,
    pub timestamp: Option<i64>,
}

/// influxd's `MaxKeyLength`: the longest measurement-and-tags key (and key plus field key).
pub const MAX_KEY_LENGTH: usize = 65535;
const MIN_NANO_TIME: i64 = i64::MIN + 2;
const MAX_NANO_TIME: i64 = i64::MAX - 1;

/// The blocks `ParsePointsWithPrecision` parses: split with `scanLine`, blank and comment lines
/// skipped, leading blanks (space, tab, NUL) and the newline taken off.
pub fn blocks(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let end = scan_line(buf, pos);
        let mut block = &buf[pos..end.min(buf.len())];
        pos = end + 1;
        if block.is_empty() {
            continue;
        }
        let start = skip_whitespace(block, 0);
        if start >= block.len() || block[start] == b'#' {
            continue;
        }
        if block.last() == Some(&b'\n') {
            block = &block[..block.len() - 1];
        }
        out.push(&block[start..]);
    }
    out
}

/// End (exclusive) of the line starting at `i`: influxd's `scanLine`.
pub fn scan_line(buf: &[u8], mut i: usize) -> usize {
    let mut quoted = false;
    let mut fields = false;
    let mut equals = 0usize;
    let mut commas = 0usize;
    while i < buf.len() {
        if buf[i] == b'\\' && i + 2 < buf.len() {
            i += 2;
            continue;
        }
        if buf[i] == b' ' {
            fields = true;
        }
        if fields {
            if !quoted && buf[i] == b'=' {
                i += 1;
                equals += 1;
                continue;
            } else if !quoted && buf[i] == b',' {
                i += 1;
                commas += 1;
                continue;
            } else if buf[i] == b'"' && equals > commas {
                i += 1;
                quoted = !quoted;
                continue;
            }
        }
        if buf[i] == b'\n' && !quoted {
            break;
        }
        i += 1;
    }
    i
}

fn skip_whitespace(buf: &[u8], mut i: usize) -> usize {
    while i < buf.len() && matches!(buf[i], b' ' | b'\t' | 0) {
        i += 1;
    }
    i
}

/// `scanTo`: up to `stop` when the byte before it is not a backslash.
fn scan_to(buf: &[u8], mut i: usize, stop: u8) -> usize {
    while i < buf.len() {
        if buf[i] == stop && (i == 0 || buf[i - 1] != b'\\') {
            break;
        }
        i += 1;
    }
    i
}

enum KeyState {
    Tags,
    Fields,
}

fn scan_measurement(buf: &[u8], mut i: usize) -> Result<(KeyState, usize), String> {
    if i >= buf.len() || buf[i] == b',' {
        return Err("missing measurement".into());
    }
    loop {
        i += 1;
        if i >= buf.len() {
            return Err("missing fields".into());
        }
        if buf[i - 1] == b'\\' {
            continue;
        }
        if buf[i] == b',' {
            return Ok((KeyState::Tags, i + 1));
        }
        if buf[i] == b' ' {
            return Ok((KeyState::Fields, i));
        }
    }
}

fn scan_tags_key(buf: &[u8], mut i: usize) -> Result<usize, String> {
    if i >= buf.len() || matches!(buf[i], b' ' | b',' | b'=') {
        return Err("missing tag key".into());
    }
    loop {
        i += 1;
        if i >= buf.len() || (matches!(buf[i], b' ' | b',') && buf[i - 1] != b'\\') {
            return Err("missing tag value".into());
        }
        if buf[i] == b'=' && buf[i - 1] != b'\\' {
            return Ok(i + 1);
        }
    }
}

fn scan_tags_value(buf: &[u8], mut i: usize) -> Result<(KeyState, usize), String> {
    if i >= buf.len() || matches!(buf[i], b',' | b' ') {
        return Err("missing tag value".into());
    }
    loop {
        i += 1;
        if i >= buf.len() {
            return Err("missing fields".into());
        }
        if buf[i] == b'=' && buf[i - 1] != b'\\' {
            return Err("invalid tag format".into());
        }
        if buf[i] == b',' && buf[i - 1] != b'\\' {
            return Ok((KeyState::Tags, i + 1));
        }
        if buf[i] == b' ' && buf[i - 1] != b'\\' {
            return Ok((KeyState::Fields, i));
        }
    }
}

/// `scanKey`: the key (measurement and tags, tags sorted by key as influxd stores them) and
/// where the fields start.
fn scan_key(buf: &[u8]) -> Result<(usize, Vec<u8>), String> {
    let start = skip_whitespace(buf, 0);
    let (state, mut i) = scan_measurement(buf, start)?;
    // Start of each tag (just after its comma).
    let mut tag_starts = Vec::new();
    if let KeyState::Tags = state {
        loop {
            tag_starts.push(i);
            i = scan_tags_key(buf, i)?;
            match scan_tags_value(buf, i)? {
                (KeyState::Tags, next) => i = next,
                (KeyState::Fields, end) => {
                    i = end;
                    break;
                }
            }
        }
    }
    if tag_starts.is_empty() {
        return Ok((i, buf[start..i].to_vec()));
    }
    let measurement_end = tag_starts[0] - 1;
    let mut tags: Vec<&[u8]> = tag_starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            let end = tag_starts.get(n + 1).map_or(i, |next| next - 1);
            &buf[s..end]
        })
        .collect();
    let tag_key = |t: &[u8]| t[..scan_to(t, 0, b'=')].to_vec();
    // Stable, as influxd's insertion sort.
    tags.sort_by_key(|t| tag_key(t));
    if tags.windows(2).any(|w| tag_key(w[0]) == tag_key(w[1])) {
        return Err("duplicate tags".into());
    }
    let mut key = buf[start..measurement_end].to_vec();
    for t in tags {
        key.push(b',');
        key.extend_from_slice(t);
    }
    Ok((i, key))
}

fn is_numeric(b: u8) -> bool {
    b.is_ascii_digit() || b == b'.'
}

/// `scanNumber` (unsigned integers off, as in influxd 1.6's default build).
fn scan_number(buf: &[u8], mut i: usize) -> Result<usize, String> {
    let invalid = || Err("invalid number".to_string());
    let start = i;
    let mut is_int = false;
    let mut is_unsigned = false;
    if i < buf.len() && buf[i] == b'-' {
        i += 1;
        if i == buf.len() {
            return invalid();
        }
    }
    let mut decimal = false;
    let mut scientific = false;
    while i < buf.len() {
        let c = buf[i];
        if c == b',' || c == b' ' {
            break;
        }
        if c == b'i' && i > start && !(is_int || is_unsigned) {
            is_int = true;
            i += 1;
            continue;
        } else if c == b'u' && i > start && !(is_int || is_unsigned) {
            is_unsigned = true;
            i += 1;
            continue;
        }
        if c == b'.' {
            if decimal {
                return invalid();
            }
            decimal = true;
        }
        if i > start && (c == b'e' || c == b'E') {
            scientific = true;
            i += 1;
            continue;
        }
        if (c == b'+' || c == b'-') && matches!(buf[i - 1], b'e' | b'E') {
            i += 1;
            continue;
        }
        if i + 2 < buf.len() && (c == b'N' || c == b'n') {
            return invalid();
        }
        if !is_numeric(c) {
            return invalid();
        }
        i += 1;
    }
    if (is_int || is_unsigned) && (decimal || scientific) {
        return invalid();
    }
    let mut digits = i - start;
    if is_int {
        digits -= 1;
    }
    if decimal {
        digits -= 1;
    }
    if buf[start] == b'-' {
        digits -= 1;
    }
    if digits == 0 {
        return invalid();
    }
    if is_int {
        if buf[i - 1] != b'i' {
            return invalid();
        }
        parse_i64(&buf[start..i - 1]).ok_or("unable to parse integer")?;
    } else if is_unsigned {
        // influxd 1.6 is built without unsigned support.
        return invalid();
    } else {
        parse_f64(&buf[start..i]).ok_or("invalid float")?;
    }
    Ok(i)
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn parse_f64(b: &[u8]) -> Option<f64> {
    // Go's ParseFloat takes what scanNumber lets through (digits, one `.`, an exponent); Rust
    // would also take "inf" and "nan", which scanNumber never passes.
    let f: f64 = std::str::from_utf8(b).ok()?.parse().ok()?;
    f.is_finite().then_some(f)
}

fn scan_boolean(buf: &[u8], mut i: usize) -> Result<usize, String> {
    let start = i;
    if i < buf.len() && !matches!(buf[i], b't' | b'f' | b'T' | b'F') {
        return Err("invalid boolean".into());
    }
    i += 1;
    while i < buf.len() && buf[i] != b',' && buf[i] != b' ' {
        i += 1;
    }
    if i - start == 1 {
        return Ok(i);
    }
    if parse_bool(&buf[start..i.min(buf.len())]).is_none() {
        return Err("invalid boolean".into());
    }
    Ok(i)
}

fn parse_bool(b: &[u8]) -> Option<bool> {
    match b {
        b"t" | b"T" | b"true" | b"True" | b"TRUE" => Some(true),
        b"f" | b"F" | b"false" | b"False" | b"FALSE" => Some(false),
        _ => None,
    }
}

/// `scanFields`: the fields block and where it ends.
fn scan_fields(buf: &[u8], i: usize) -> Result<(usize, &[u8]), String> {
    let start = skip_whitespace(buf, i);
    let mut i = start;
    let mut quoted = false;
    let mut equals = 0usize;
    let mut commas = 0usize;
    while i < buf.len() {
        if buf[i] == b'\\' && i + 1 < buf.len() {
            i += 2;
            continue;
        }
        if buf[i] == b'"' && equals > commas {
            quoted = !quoted;
            i += 1;
            continue;
        }
        if buf[i] == b'=' && !quoted {
            equals += 1;
            let before = |n: usize| i.checked_sub(n).map(|j| buf[j]);
            if before(1) == Some(b' ') && before(2) != Some(b'\\') {
                return Err("missing field key".into());
            }
            if before(1) == Some(b',') && before(2) != Some(b'\\') {
                return Err("missing field key".into());
            }
            if i + 1 >= buf.len() {
                return Err("missing field value".into());
            }
            let next = buf[i + 1];
            if next == b',' || next == b' ' {
                return Err("missing field value".into());
            }
            if is_numeric(next) || matches!(next, b'-' | b'N' | b'n') {
                i = scan_number(buf, i + 1)?;
                continue;
            }
            if next != b'"' {
                i = scan_boolean(buf, i + 1)?;
                continue;
            }
        }
        if buf[i] == b',' && !quoted {
            commas += 1;
        }
        if buf[i] == b' ' && !quoted {
            break;
        }
        i += 1;
    }
    if quoted {
        return Err("unbalanced quotes".into());
    }
    if equals == 0 || commas + 1 != equals {
        return Err("invalid field format".into());
    }
    Ok((i, &buf[start..i]))
}

fn scan_time(buf: &[u8], i: usize) -> Result<(usize, &[u8]), String> {
    let start = skip_whitespace(buf, i);
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' || buf[i] == b' ' {
            break;
        }
        if i == start && buf[i] == b'-' {
            i += 1;
            continue;
        }
        if !buf[i].is_ascii_digit() {
            return Err("bad timestamp".into());
        }
        i += 1;
    }
    Ok((i, &buf[start..i]))
}

/// `scanFieldValue`: a field value up to the next comma outside quotes.
fn scan_field_value(buf: &[u8], mut i: usize) -> usize {
    let mut quoted = false;
    while i < buf.len() {
        if buf[i] == b'\\' && i + 1 < buf.len() && matches!(buf[i + 1], b'"' | b'\\') {
            i += 2;
            continue;
        }
        if buf[i] == b'"' {
            i += 1;
            quoted = !quoted;
            continue;
        }
        if buf[i] == b',' && !quoted {
            break;
        }
        i += 1;
    }
    i
}

/// Drop each backslash directly before one of `specials`: influxd's `escape.Unescape` (`,` `"`
/// space `=`, for measurements and field keys) and `unescapeTag` (`,` space `=`).
pub fn unescape(s: &[u8], specials: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() && specials.contains(&s[i + 1]) {
            i += 1;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// `unescapeStringField`: `\\` and `\"` left to right.
fn unescape_string(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() && matches!(s[i + 1], b'\\' | b'"') {
            out.push(s[i + 1]);
            i += 2;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

const NAME_SPECIALS: &[u8] = b",\" =";
const TAG_SPECIALS: &[u8] = b", =";

/// Read one block (a line without its newline) as influxd's `parsePoint` does, then its name,
/// tags and fields as `Name()`, `Tags()` and the field iterator give them to the storage.
pub fn scan_point(buf: &[u8]) -> Result<ScannedPoint, String> {
    let (pos, key) = scan_key(buf)?;
    if key.is_empty() {
        return Err("missing measurement".into());
    }
    if key.len() > MAX_KEY_LENGTH {
        return Err(format!(
            "max key length exceeded: {} > {MAX_KEY_LENGTH}",
            key.len()
        ));
    }
    let (pos, fields) = scan_fields(buf, pos)?;
    if fields.is_empty() {
        return Err("missing fields".into());
    }
    // walkFields: keys up to `=` (byte-before rule), values by scanFieldValue.
    let mut raw_fields = Vec::new();
    let mut rest = fields;
    while !rest.is_empty() {
        let i = scan_to(rest, 0, b'=');
        if i + 2 > rest.len() {
            return Err(format!(
                "invalid value: field-key={}",
                String::from_utf8_lossy(&rest[..i.min(rest.len())])
            ));
        }
        let k = &rest[..i];
        if key.len() + 4 + k.len() > MAX_KEY_LENGTH {
            return Err(format!(
                "max key length exceeded: {} > {MAX_KEY_LENGTH}",
                key.len() + 4 + k.len()
            ));
        }
        rest = &rest[i + 1..];
        let end = scan_field_value(rest, 0);
        raw_fields.push((k, &rest[..end]));
        rest = &rest[end..];
        if !rest.is_empty() {
            rest = &rest[1..];
        }
    }
    let (mut pos, ts) = scan_time(buf, pos)?;
    let timestamp = if ts.is_empty() {
        None
    } else {
        let t = parse_i64(ts).ok_or("bad timestamp")?;
        if !(MIN_NANO_TIME..=MAX_NANO_TIME).contains(&t) {
            return Err("time outside range".into());
        }
        while pos < buf.len() {
            if buf[pos] != b' ' {
                return Err("point is invalid".into());
            }
            pos += 1;
        }
        Some(t)
    };
    // Name(): up to the first comma not after a backslash, then escape.Unescape; the storage
    // unescapes it once more (influxd 1.6.7 stores `a\\\,b` as measurement `a\,b`).
    let name_end = scan_to(&key, 0, b',');
    let measurement = unescape(&unescape(&key[..name_end], NAME_SPECIALS), NAME_SPECIALS);
    // walkTags: key up to `=`, value up to `,` (byte-before rule), unescapeTag.
    let mut tags = Vec::new();
    let mut i = name_end + 1;
    while i < key.len() {
        let k_end = scan_to(&key, i, b'=');
        let mut v_end = k_end + 1;
        while v_end < key.len() && !(key[v_end] == b',' && key[v_end - 1] != b'\\') {
            v_end += 1;
        }
        let k = &key[i..k_end];
        let v = &key[(k_end + 1).min(key.len())..v_end.min(key.len())];
        tags.push((unescape(k, TAG_SPECIALS), unescape(v, TAG_SPECIALS)));
        i = v_end + 1;
    }
    let mut out_fields = Vec::with_capacity(raw_fields.len());
    for (k, v) in raw_fields {
        let value = field_value(v).ok_or_else(|| {
            format!(
                "unable to read field value {:?}",
                String::from_utf8_lossy(v)
            )
        })?;
        out_fields.push((unescape(k, NAME_SPECIALS), value));
    }
    Ok(ScannedPoint {
        measurement,
        tags,
        fields: out_fields,
        timestamp,
    })
}

/// The field iterator's typing (`Next`) and value parsing.
fn field_value(v: &[u8]) -> Option<ScannedValue> {
    let &c = v.first()?;
    if c == b'"' {
        // scanFields has checked the quotes; a lone `"` here would be a scanner mismatch.
        let inner = v.get(1..v.len().checked_sub(1)?)?;
        return Some(ScannedValue::Str(unescape_string(inner)));
    }
    if b"0123456789-.nNiIu".contains(&c) {
        return if let Some(n) = v.strip_suffix(b"i") {
            parse_i64(n).map(ScannedValue::Integer)
        } else {
            parse_f64(v).map(ScannedValue::Float)
        };
    }
    parse_bool(v).map(ScannedValue::Bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn plain_line_reads_measurement_tags_fields_time() {
        let p = scan_point(b"m,b=2,a=1 v=1.5,n=3i,s=\"x\\\"y\",t=T 42").unwrap();
        assert_eq!(p.measurement, b"m");
        let tags: Vec<_> = p.tags.iter().map(|(k, v)| (s(k), s(v))).collect();
        assert_eq!(
            tags,
            vec![("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(
            p.fields,
            vec![
                (b"v".to_vec(), ScannedValue::Float(1.5)),
                (b"n".to_vec(), ScannedValue::Integer(3)),
                (b"s".to_vec(), ScannedValue::Str(b"x\"y".to_vec())),
                (b"t".to_vec(), ScannedValue::Bool(true)),
            ]
        );
        assert_eq!(p.timestamp, Some(42));
    }

    #[test]
    fn the_two_notions_of_escaped_disagree_on_even_backslash_runs() {
        // Issue 23's second vector as the old encoder wrote it: tag value `a\ \="`. scanLine
        // takes `\\` as a pair, so the space starts the fields for it, the `=` counts and the
        // quote in the tag opens a string: the newline in the real string ends the line.
        let buf = b"m,t=a\\\\ \\\\=\" s=\"x\nevil v=666\n\" 1\n";
        assert_eq!(blocks(buf)[1], b"evil v=666");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Passthrough payloads are client data: the port must answer, not panic.
        const ALPHABET: &[u8] = b"\\\\,= \"\n\t#0123456789.-+eEiutfTFaNn\xc3\xa9";
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let len = (next() % 24) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            for block in blocks(&buf) {
                let _ = scan_point(block);
            }
            let _ = scan_point(&buf);
        }
    }

    #[test]
    fn errors_match_influxd() {
        for (line, err) in [
            (&b"m"[..], "missing fields"),
            (b",t=1 v=1", "missing measurement"),
            (b"m,t= v=1", "missing tag value"),
            (b"m,t=1,t=2 v=1", "duplicate tags"),
            (b"m v=", "missing field value"),
            (b"m v=1u", "invalid number"),
            (b"m v=abc", "invalid boolean"),
            (b"m v=\"abc", "unbalanced quotes"),
            (b"m v=1 1x", "bad timestamp"),
        ] {
            assert_eq!(scan_point(line).unwrap_err(), err, "{}", s(line));
        }
    }
}
