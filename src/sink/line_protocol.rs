//! InfluxDB line protocol: encoding with exact escaping, and the small amount of parsing the
//! sink needs (splitting a batch into lines the way influxd does, checking passthrough lines,
//! reading a line's measurement and field types).
//!
//! Escaping, as influxd 1.x parses it (`models/points.go`):
//! - measurement: `,` and space are escaped with a backslash;
//! - tag keys, tag values, field keys: `,`, `=` and space;
//! - string field values: inside double quotes, `"` and `\` are escaped.
//!
//! A special character counts as escaped when the byte before it is a backslash, and unescaping
//! only removes the backslash before a special character, so a backslash anywhere else is written
//! as is (`a\b` stays `a\b`, `a\ b` is written `a\\ b`). Two things cannot be represented and are
//! replaced: a trailing backslash in a name (it would escape the separator after it) is dropped, and
//! a line break in a name (it would end the line) becomes a space.

use std::fmt::Write as _;

/// A field value. Numbers from payloads are floats (so one field never flips between integer and
/// float); integers only appear when the database already has the field as an integer.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Float(f64),
    Integer(i64),
    Bool(bool),
    Str(String),
}

/// The InfluxDB type of a field, as `SHOW FIELD KEYS` and write errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    Float,
    Integer,
    Unsigned,
    Bool,
    Str,
}

impl FieldType {
    /// Parse InfluxDB's own name for a type ("float", "integer", "string", "boolean", "unsigned").
    pub fn from_influx_name(name: &str) -> Option<FieldType> {
        match name {
            "float" => Some(FieldType::Float),
            "integer" => Some(FieldType::Integer),
            "unsigned" => Some(FieldType::Unsigned),
            "boolean" => Some(FieldType::Bool),
            "string" => Some(FieldType::Str),
            _ => None,
        }
    }
}

impl FieldValue {
    pub fn field_type(&self) -> FieldType {
        match self {
            FieldValue::Float(_) => FieldType::Float,
            FieldValue::Integer(_) => FieldType::Integer,
            FieldValue::Bool(_) => FieldType::Bool,
            FieldValue::Str(_) => FieldType::Str,
        }
    }
}

/// Timestamp precision of a write (`precision=` on /write).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Ns,
    Us,
    Ms,
    S,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "u",
            Precision::Ms => "ms",
            Precision::S => "s",
        }
    }

    /// Convert nanoseconds since the epoch to this precision (rounding toward the past).
    pub fn from_ns(self, ns: i64) -> i64 {
        match self {
            Precision::Ns => ns,
            Precision::Us => ns.div_euclid(1_000),
            Precision::Ms => ns.div_euclid(1_000_000),
            Precision::S => ns.div_euclid(1_000_000_000),
        }
    }
}

/// One point ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub measurement: String,
    /// Written in this order; callers sort by key (InfluxDB's preferred order) and drop empty
    /// values (InfluxDB rejects an empty tag value).
    pub tags: Vec<(String, String)>,
    pub fields: Vec<(String, FieldValue)>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
}

fn push_name(out: &mut String, s: &str, specials: &[char]) {
    // Fast path: nothing to escape (the common case: plain topic levels and keys).
    if !s
        .bytes()
        .any(|b| matches!(b, b',' | b'=' | b' ' | b'\\' | b'\n' | b'\r'))
    {
        out.push_str(s);
        return;
    }
    let trimmed = s.trim_end_matches('\\');
    for c in trimmed.chars() {
        match c {
            '\n' | '\r' => out.push_str("\\ "),
            c if specials.contains(&c) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

/// Escape a measurement name: `,` and space.
pub fn escape_measurement(out: &mut String, s: &str) {
    push_name(out, s, &[',', ' '])
}

/// Escape a tag key, tag value or field key: `,`, `=` and space.
pub fn escape_key(out: &mut String, s: &str) {
    push_name(out, s, &[',', '=', ' '])
}

/// Write a string field value with its quotes: `"` and `\` escaped.
pub fn escape_string_value(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// What an escaped name is left with (empty names are invalid in line protocol).
pub fn name_is_representable(s: &str) -> bool {
    !s.trim_end_matches('\\').is_empty()
}

impl Point {
    /// Append this point as one line (with its trailing `\n`). Returns false (and writes nothing)
    /// when the point cannot be written: empty measurement or no fields.
    pub fn encode(&self, precision: Precision, out: &mut String) -> bool {
        let tags: Vec<(&str, &str)> = self
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let fields: Vec<(&str, &FieldValue)> =
            self.fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        encode_line(
            out,
            precision,
            &self.measurement,
            &tags,
            &fields,
            self.timestamp_ns,
        )
    }
}

/// Append one point as a line (with its trailing `\n`) from borrowed parts. Returns false (and
/// writes nothing) when the point cannot be written: empty measurement or no fields.
pub fn encode_line(
    out: &mut String,
    precision: Precision,
    measurement: &str,
    tags: &[(&str, &str)],
    fields: &[(&str, &FieldValue)],
    timestamp_ns: i64,
) -> bool {
    let start = out.len();
    if fields.is_empty() || !push_series(out, measurement, tags) {
        return false;
    }
    if !push_fields(out, precision, fields, timestamp_ns) {
        out.truncate(start);
        return false;
    }
    true
}

/// Append a point's series key: the escaped measurement and tags (`weather,site=a\ b`). Tags
/// whose key or value cannot be written are left out. Returns false (and writes nothing) when
/// the measurement cannot be written.
pub fn push_series(out: &mut String, measurement: &str, tags: &[(&str, &str)]) -> bool {
    if !name_is_representable(measurement) {
        return false;
    }
    escape_measurement(out, measurement);
    for (k, v) in tags {
        if !name_is_representable(k) || !name_is_representable(v) {
            continue;
        }
        out.push(',');
        escape_key(out, k);
        out.push('=');
        escape_key(out, v);
    }
    true
}

/// Append the rest of a line after its series key: ` fields timestamp\n`. Returns false (and
/// writes nothing) when no field can be written.
pub fn push_fields(
    out: &mut String,
    precision: Precision,
    fields: &[(&str, &FieldValue)],
    timestamp_ns: i64,
) -> bool {
    let start = out.len();
    let mut sep = ' ';
    for (k, v) in fields {
        if !name_is_representable(k) {
            continue;
        }
        out.push(sep);
        sep = ',';
        escape_key(out, k);
        out.push('=');
        match v {
            FieldValue::Float(f) => push_float(out, *f),
            FieldValue::Integer(i) => {
                out.push_str(itoa::Buffer::new().format(*i));
                out.push('i');
            }
            FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            FieldValue::Str(s) => escape_string_value(out, s),
        }
    }
    if sep == ' ' {
        out.truncate(start);
        return false;
    }
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(precision.from_ns(timestamp_ns)));
    out.push('\n');
    true
}

/// Append a float as `{}` (Display) writes it: the shortest text that reads back as the same
/// number, never with an exponent (which line protocol would also accept). Display goes through
/// `core::fmt` and was the largest single item of the sink's profile; the `itoa` and `zmij`
/// crates write the same text several times faster. Integral values (counters, most sensor
/// readings) are written as integers; `zmij` writes the shortest digits as Display does (on an
/// exact tie it may round the last digit the other way: the same number either way) but
/// switches to an exponent for very large or small values, which are left to Display.
fn push_float(out: &mut String, f: f64) {
    if f.fract() == 0.0 {
        // Below 2^53 every integral f64 is an exact i64; -0.0 keeps its sign through Display.
        if f.abs() < 9.0e15 && !(f == 0.0 && f.is_sign_negative()) {
            out.push_str(itoa::Buffer::new().format(f as i64));
        } else {
            let _ = write!(out, "{f}");
        }
        return;
    }
    let mut buf = zmij::Buffer::new();
    let text = buf.format(f);
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        out.push_str(text);
    } else {
        let _ = write!(out, "{f}");
    }
}

/// End (exclusive) of the line starting at `start`: the next newline that is not inside a quoted
/// string field value. A port of influxd's `scanLine`, so that the sink splits a batch exactly
/// where the server does.
pub fn scan_line(buf: &[u8], start: usize) -> usize {
    let mut i = start;
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

/// The non-empty, non-comment lines of a batch, without their newlines.
pub fn lines(buf: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() {
        let end = scan_line(buf, i);
        let line = trim_ascii(&buf[i..end]);
        if !line.is_empty() && line[0] != b'#' {
            out.push(line);
        }
        i = end + 1;
    }
    out
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// What the sink needs to know about one line of line protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedLine {
    /// Measurement name, unescaped.
    pub measurement: String,
    /// Field keys (unescaped) and the type each value has.
    pub fields: Vec<(String, FieldType)>,
    /// Whether the line ends with a timestamp.
    pub has_timestamp: bool,
}

/// Find the next byte in `set` at or after `i` that is not preceded by a backslash (influxd's
/// rule for an escaped separator) and, when `quotes` is set, not inside a quoted string.
fn find_unescaped(s: &[u8], mut i: usize, set: &[u8], quotes: bool) -> Option<usize> {
    let mut quoted = false;
    while i < s.len() {
        let c = s[i];
        if quoted && c == b'\\' {
            // Inside a string value escapes are pairs (`\\`, `\"`), consumed whole.
            i += 2;
            continue;
        }
        let escaped = i > 0 && s[i - 1] == b'\\';
        if quotes && c == b'"' && (quoted || !escaped) {
            quoted = !quoted;
        } else if !quoted && !escaped && set.contains(&c) {
            return Some(i);
        }
        i += 1;
    }
    None
}

fn unescape(s: &[u8], specials: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 1 < s.len() && specials.contains(&s[i + 1]) {
            out.push(s[i + 1]);
            i += 2;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn field_type_of(v: &[u8]) -> Option<FieldType> {
    let text = std::str::from_utf8(v).ok()?;
    if text.len() >= 2 && text.starts_with('"') && text.ends_with('"') {
        return Some(FieldType::Str);
    }
    match text {
        "t" | "T" | "true" | "True" | "TRUE" | "f" | "F" | "false" | "False" | "FALSE" => {
            return Some(FieldType::Bool)
        }
        _ => {}
    }
    if let Some(n) = text.strip_suffix('i') {
        return n.parse::<i64>().ok().map(|_| FieldType::Integer);
    }
    if let Some(n) = text.strip_suffix('u') {
        return n.parse::<u64>().ok().map(|_| FieldType::Unsigned);
    }
    let f = text.parse::<f64>().ok()?;
    f.is_finite().then_some(FieldType::Float)
}

/// Check one line of line protocol (no newline) and read its measurement, field types and whether
/// it has a timestamp. Strict enough that a line accepted here is accepted by influxd (barring
/// type conflicts with stored data).
pub fn parse_line(line: &[u8]) -> Result<ParsedLine, String> {
    let line = trim_ascii(line);
    if line.is_empty() {
        return Err("empty line".into());
    }
    let key_end = find_unescaped(line, 0, b" ", false).ok_or("missing fields")?;
    let key = &line[..key_end];
    let m_end = find_unescaped(key, 0, b",", false).unwrap_or(key.len());
    if m_end == 0 {
        return Err("missing measurement".into());
    }
    let measurement = unescape(&key[..m_end], b", ");
    // Tags: k=v pairs separated by unescaped commas; both sides non-empty.
    let mut i = m_end;
    while i < key.len() {
        let start = i + 1;
        let end = find_unescaped(key, start, b",", false).unwrap_or(key.len());
        let pair = &key[start..end];
        let eq = find_unescaped(pair, 0, b"=", false).ok_or("invalid tag format")?;
        if eq == 0 || eq + 1 >= pair.len() {
            return Err("missing tag key or value".into());
        }
        i = end;
    }
    let fields_start = key_end + 1;
    let fields_end = find_unescaped(line, fields_start, b" ", true).unwrap_or(line.len());
    let fields_part = &line[fields_start..fields_end];
    if fields_part.is_empty() {
        return Err("missing fields".into());
    }
    let mut fields = Vec::new();
    let mut j = 0;
    while j <= fields_part.len() {
        let end = find_unescaped(fields_part, j, b",", true).unwrap_or(fields_part.len());
        let pair = &fields_part[j..end];
        let eq = find_unescaped(pair, 0, b"=", false).ok_or("invalid field format")?;
        if eq == 0 {
            return Err("missing field key".into());
        }
        let ty = field_type_of(&pair[eq + 1..]).ok_or("invalid field value")?;
        fields.push((unescape(&pair[..eq], b",= "), ty));
        j = end + 1;
    }
    let rest = trim_ascii(&line[fields_end.min(line.len())..]);
    let has_timestamp = !rest.is_empty();
    if has_timestamp {
        std::str::from_utf8(rest)
            .ok()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or("bad timestamp")?;
    }
    Ok(ParsedLine {
        measurement,
        fields,
        has_timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_written_in_shortest_form_without_exponent() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            0.3,
            0.1 + 0.2,
            1e-5,
            1e-7,
            123.456,
            -17.25,
            9.0e15 - 1.0,
            9.0e15,
            9_007_199_254_740_993.0,
            1e16,
            1.5e20,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::EPSILON,
        ];
        // Decimals as sensors send them, and arbitrary bit patterns (xorshift64).
        values.extend((0..20_000).map(|i| i as f64 / 100.0 - 50.0));
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                values.push(f);
            }
        }
        let mut ties = 0;
        for f in values {
            let mut out = String::new();
            push_float(&mut out, f);
            let display = format!("{f}");
            // Same number, as short, no exponent; the last digit may differ from Display's only
            // when the value lies exactly halfway (1658206780088562.25: .2 here, .3 there).
            let back: f64 = out.parse().expect("a float");
            assert_eq!(back.to_bits(), f.to_bits(), "{out} for {display}");
            assert_eq!(out.len(), display.len(), "{out} for {display}");
            assert!(!out.contains(['e', 'E']), "{out}");
            if out != display {
                ties += 1;
                assert_eq!(out[..out.len() - 1], display[..display.len() - 1]);
            }
        }
        assert!(ties < 100, "{ties} values written unlike Display");
    }

    fn point(m: &str, tags: &[(&str, &str)], fields: Vec<(&str, FieldValue)>, ts: i64) -> Point {
        Point {
            measurement: m.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            timestamp_ns: ts,
        }
    }

    fn enc(p: &Point) -> String {
        let mut s = String::new();
        assert!(p.encode(Precision::Ns, &mut s));
        s
    }

    #[test]
    fn plain_point_encodes_measurement_tags_fields_timestamp() {
        let p = point(
            "temp",
            &[("device", "d1")],
            vec![("value", FieldValue::Float(21.5))],
            1_700_000_000_123_456_789,
        );
        assert_eq!(enc(&p), "temp,device=d1 value=21.5 1700000000123456789\n");
    }

    #[test]
    fn measurement_escapes_comma_and_space_only() {
        let p = point("a b,c=d", &[], vec![("v", FieldValue::Float(1.0))], 1);
        assert_eq!(enc(&p), "a\\ b\\,c=d v=1 1\n");
    }

    #[test]
    fn keys_and_tag_values_escape_comma_equals_space() {
        let p = point(
            "m",
            &[("k ,=", "v ,=")],
            vec![("f ,=", FieldValue::Bool(true))],
            1,
        );
        assert_eq!(enc(&p), "m,k\\ \\,\\==v\\ \\,\\= f\\ \\,\\==true 1\n");
    }

    #[test]
    fn string_values_escape_quote_and_backslash_and_keep_unicode() {
        let p = point(
            "m",
            &[],
            vec![("s", FieldValue::Str("say \"hi\" \\ °C ✓".into()))],
            1,
        );
        assert_eq!(enc(&p), "m s=\"say \\\"hi\\\" \\\\ °C ✓\" 1\n");
    }

    #[test]
    fn backslash_is_literal_except_trailing_which_is_dropped() {
        let p = point(
            "m\\x",
            &[("t", "a\\b\\")],
            vec![("f", FieldValue::Integer(-3))],
            1,
        );
        assert_eq!(enc(&p), "m\\x,t=a\\b f=-3i 1\n");
    }

    #[test]
    fn empty_tag_values_are_left_out_and_point_without_fields_is_not_encoded() {
        let p = point(
            "m",
            &[("a", ""), ("b", "x")],
            vec![("v", FieldValue::Float(0.25))],
            5,
        );
        assert_eq!(enc(&p), "m,b=x v=0.25 5\n");
        let mut s = String::new();
        assert!(!point("m", &[], vec![], 1).encode(Precision::Ns, &mut s));
        assert!(
            !point("", &[], vec![("v", FieldValue::Float(1.0))], 1).encode(Precision::Ns, &mut s)
        );
        assert!(s.is_empty());
    }

    #[test]
    fn precision_divides_toward_the_past() {
        let p = point("m", &[], vec![("v", FieldValue::Float(1.0))], 1_999_999_999);
        let mut s = String::new();
        p.encode(Precision::S, &mut s);
        assert_eq!(s, "m v=1 1\n");
        assert_eq!(Precision::Ms.from_ns(-1), -1);
    }

    #[test]
    fn large_and_small_floats_round_trip() {
        for f in [1e21, 1e-7, 123456789.12345679, -0.0] {
            let p = point("m", &[], vec![("v", FieldValue::Float(f))], 1);
            let line = enc(&p);
            let text = line.split(' ').nth(1).unwrap().strip_prefix("v=").unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), f, "{line}");
        }
    }

    #[test]
    fn scan_line_keeps_newlines_inside_quoted_strings() {
        let buf = b"m s=\"a\nb\" 1\nm v=2 2\n";
        let l = lines(buf);
        assert_eq!(l, vec![&b"m s=\"a\nb\" 1"[..], &b"m v=2 2"[..]]);
    }

    #[test]
    fn lines_skips_blank_and_comment_lines() {
        assert_eq!(lines(b"\n# c\n  m v=1\n\n"), vec![&b"m v=1"[..]]);
    }

    #[test]
    fn parse_line_reads_measurement_field_types_and_timestamp() {
        let p = parse_line(b"my\\ m,t=1 a=1,b=2i,c=\"x y, z\",d=true,e=3u 123").unwrap();
        assert_eq!(p.measurement, "my m");
        let types: Vec<_> = p.fields.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        assert_eq!(
            types,
            vec![
                ("a", FieldType::Float),
                ("b", FieldType::Integer),
                ("c", FieldType::Str),
                ("d", FieldType::Bool),
                ("e", FieldType::Unsigned)
            ]
        );
        assert!(p.has_timestamp);
        assert!(!parse_line(b"m v=1").unwrap().has_timestamp);
    }

    #[test]
    fn parse_line_rejects_what_influxd_rejects() {
        for bad in [
            &b"m"[..],
            b"m,t= v=1",
            b"m v=",
            b"m v=abc",
            b"m v=1 notatime",
            b"m,t v=1",
            b",t=1 v=1",
            b"m =1",
        ] {
            assert!(
                parse_line(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn encoded_points_parse_back() {
        let p = point(
            "a b",
            &[("k=", "v,")],
            vec![("f x", FieldValue::Str("q\"\\".into()))],
            9,
        );
        let line = enc(&p);
        let parsed = parse_line(line.trim_end().as_bytes()).unwrap();
        assert_eq!(parsed.measurement, "a b");
        assert_eq!(parsed.fields, vec![("f x".to_string(), FieldType::Str)]);
    }
}
