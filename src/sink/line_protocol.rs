//! InfluxDB line protocol: encoding with exact escaping, and the small amount of parsing the
//! sink needs (splitting a batch into lines the way influxd does, checking passthrough lines,
//! reading a line's measurement and field types; the reading itself is `line_scan`, a port of
//! influxd's scanner).
//!
//! Guarantee: every line the encoder writes is read by influxd 1.x as exactly one line, with the
//! measurement, tags, fields and timestamp given to it, after the replacements below: no
//! character of a name or a string value can end the line, start a new one or move a separator
//! (`line_protocol_fuzz` in tests/suite/sink_injection.rs checks it against the port, and the port is
//! checked against a real influxd there too).
//!
//! Escaping, as influxd 1.x reads it (`models/points.go`, `pkg/escape`; see `line_scan`):
//! - separators are escaped with a backslash: `,` and space in the measurement, `,` `=` space in
//!   tag keys, tag values and field keys;
//! - string field values are quoted, with `"` and `\` escaped; newlines in them are kept (inside
//!   the quotes influxd does not end the line at them);
//! - a backslash in a name is written as it is (`C:\temp` stays `C:\temp`), except a run of
//!   backslashes directly before `,` `=` `"` or a space, or at the end of the name, which is
//!   dropped. influxd cannot store those: its line scanner takes `\\` as a pair while its key
//!   scanners take any byte after a backslash as escaped (an even run before a separator made
//!   them disagree on where a name ends: the injection of issue 23), a run at the end escapes
//!   the separator after it, and it unescapes a measurement twice (`a\\\,b` is stored as
//!   `a\,b`, a name no query finds).
//!
//! Other replacements: newline, carriage return, tab and NUL in a name become a space (influxd
//! ends a line at a newline and skips tabs and NULs where a measurement or field set starts); a
//! measurement starting with `#` is not written (influxd skips the line as a comment); of tags or
//! fields whose keys are equal once escaped only the first is written. Empty names are invalid:
//! a point without a measurement or fields is not written, an empty tag is left out.

use super::line_scan;
use smallvec::SmallVec;
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

/// Which part of a line a name is written into, for what influxd takes as a separator there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameKind {
    /// Separators `,` and space.
    Measurement,
    /// Tag keys, tag values and field keys: separators `,` `=` and space.
    Key,
}

impl NameKind {
    fn is_separator(self, c: char) -> bool {
        match self {
            NameKind::Measurement => matches!(c, ',' | ' '),
            NameKind::Key => matches!(c, ',' | '=' | ' '),
        }
    }
}

/// Characters a name cannot hold as they are: influxd ends a line at a newline, skips tabs and
/// NULs where a measurement or field set starts; each becomes a space.
fn is_blanked(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\t' | '\0')
}

/// A backslash directly before one of these is taken off by one of influxd's unescapings (the
/// measurement is even unescaped twice, and then cannot be queried): see the module doc.
fn is_unescapable(c: char) -> bool {
    matches!(c, ',' | '=' | '"' | ' ')
}

fn push_name(out: &mut String, s: &str, kind: NameKind) {
    // Fast path: nothing to escape or replace (the common case: plain topic levels and keys).
    if !s
        .bytes()
        .any(|b| matches!(b, b',' | b'=' | b' ' | b'\\' | b'\n' | b'\r' | b'\t' | 0))
    {
        out.push_str(s);
        return;
    }
    let mut chars = s
        .chars()
        .map(|c| if is_blanked(c) { ' ' } else { c })
        .peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let mut run = 1;
            while chars.next_if_eq(&'\\').is_some() {
                run += 1;
            }
            // Kept only before a character no unescaping touches; at the end of the name it
            // would escape the separator after it.
            if chars.peek().is_some_and(|&next| !is_unescapable(next)) {
                for _ in 0..run {
                    out.push('\\');
                }
            }
            continue;
        }
        if kind.is_separator(c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Escape a measurement name: `,` and space.
pub fn escape_measurement(out: &mut String, s: &str) {
    push_name(out, s, NameKind::Measurement)
}

/// Escape a tag key or tag value: `,`, `=` and space.
pub fn escape_key(out: &mut String, s: &str) {
    push_name(out, s, NameKind::Key)
}

/// Escape a field key: `,`, `=` and space.
pub fn escape_field_key(out: &mut String, s: &str) {
    push_name(out, s, NameKind::Key)
}

/// Write a string field value with its quotes: `"` and `\` escaped. Newlines stay as they are:
/// inside the quotes influxd's scanLine does not end the line at them.
pub fn escape_string_value(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\') {
        out.push_str(s);
    } else {
        for c in s.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out.push('"');
}

/// What an escaped name is left with (empty names are invalid in line protocol): a name of
/// backslashes only is left with nothing.
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

/// Whether the name just written at `at` repeats one written before at `seen`: escaped names are
/// equal exactly when the names influxd reads back are, so the text is compared.
fn repeats(out: &str, seen: &[(usize, usize)], at: (usize, usize)) -> bool {
    let name = &out[at.0..at.1];
    seen.iter().any(|&(s, e)| &out[s..e] == name)
}

/// Append a point's series key: the escaped measurement and tags (`weather,site=a\ b`). Tags
/// whose key or value cannot be written are left out, and so is a tag whose key, once escaped,
/// repeats an earlier one (influxd refuses a line with duplicate tags). Returns false (and
/// writes nothing) when the measurement cannot be written: empty, or starting with `#` (influxd
/// skips such a line as a comment, and a backslash before the `#` would be kept in the name).
pub fn push_series(out: &mut String, measurement: &str, tags: &[(&str, &str)]) -> bool {
    if !name_is_representable(measurement) || measurement.starts_with('#') {
        return false;
    }
    escape_measurement(out, measurement);
    let mut seen: SmallVec<[(usize, usize); 8]> = SmallVec::new();
    for (k, v) in tags {
        if !name_is_representable(k) || !name_is_representable(v) {
            continue;
        }
        let start = out.len();
        out.push(',');
        escape_key(out, k);
        let key = (start + 1, out.len());
        if repeats(out, &seen, key) {
            out.truncate(start);
            continue;
        }
        seen.push(key);
        out.push('=');
        escape_key(out, v);
    }
    true
}

/// Append the rest of a line after its series key: ` fields timestamp\n`. A field whose key,
/// once escaped, repeats an earlier one is left out (the first is kept). Returns false (and
/// writes nothing) when no field can be written.
pub fn push_fields(
    out: &mut String,
    precision: Precision,
    fields: &[(&str, &FieldValue)],
    timestamp_ns: i64,
) -> bool {
    let start = out.len();
    let mut sep = ' ';
    let mut seen: SmallVec<[(usize, usize); 8]> = SmallVec::new();
    for (k, v) in fields {
        if !name_is_representable(k) {
            continue;
        }
        let field_start = out.len();
        out.push(sep);
        escape_field_key(out, k);
        let key = (field_start + 1, out.len());
        if fields.len() > 1 {
            if repeats(out, &seen, key) {
                out.truncate(field_start);
                continue;
            }
            seen.push(key);
        }
        sep = ',';
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

/// The non-empty, non-comment lines of a batch as influxd splits it (`line_scan::blocks`),
/// without their newlines and trailing blanks.
pub fn lines(buf: &[u8]) -> Vec<&[u8]> {
    line_scan::blocks(buf)
        .into_iter()
        .map(trim_end_ascii)
        .filter(|l| !l.is_empty())
        .collect()
}

fn trim_end_ascii(mut s: &[u8]) -> &[u8] {
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

/// Check one line of line protocol (no newline) as influxd reads it (`line_scan::scan_point`)
/// and give its measurement, field types and whether it has a timestamp. A line accepted here
/// is accepted by influxd, barring type conflicts with stored data.
pub fn parse_line(line: &[u8]) -> Result<ParsedLine, String> {
    let p = line_scan::scan_point(line)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(ParsedLine {
        measurement: text(&p.measurement),
        fields: p
            .fields
            .iter()
            .map(|(k, v)| {
                let ty = match v {
                    line_scan::ScannedValue::Float(_) => FieldType::Float,
                    line_scan::ScannedValue::Integer(_) => FieldType::Integer,
                    line_scan::ScannedValue::Bool(_) => FieldType::Bool,
                    line_scan::ScannedValue::Str(_) => FieldType::Str,
                };
                (text(k), ty)
            })
            .collect(),
        has_timestamp: p.timestamp.is_some(),
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
    fn backslash_is_literal_except_before_what_influxd_unescapes_or_at_the_end() {
        let p = point(
            "m\\x\\=\\\\ \\\\",
            &[("t", "a\\b\\"), ("u", "c\\\\,d\\\"e")],
            vec![("f\\\\g\\\"", FieldValue::Integer(-3))],
            1,
        );
        assert_eq!(enc(&p), "m\\x=\\ ,t=a\\b,u=c\\,d\"e f\\\\g\"=-3i 1\n");
    }

    #[test]
    fn line_breaks_and_blanks_in_names_become_spaces() {
        let p = point(
            "\tm\nx",
            &[("t", "a\r\nb")],
            vec![("\0f", FieldValue::Str("keep\nnewline".into()))],
            1,
        );
        assert_eq!(enc(&p), "\\ m\\ x,t=a\\ \\ b \\ f=\"keep\nnewline\" 1\n");
    }

    #[test]
    fn repeated_keys_keep_the_first_and_comment_measurement_is_not_written() {
        let p = point(
            "m",
            &[("a", "1"), ("a\\", "2")],
            vec![
                ("v", FieldValue::Float(1.0)),
                ("v\\", FieldValue::Float(2.0)),
            ],
            1,
        );
        assert_eq!(enc(&p), "m,a=1 v=1 1\n");
        let mut s = String::new();
        assert!(
            !point("#m", &[], vec![("v", FieldValue::Float(1.0))], 1).encode(Precision::Ns, &mut s)
        );
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
    fn lines_keep_newlines_inside_quoted_strings() {
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
        let p = parse_line(b"my\\ m,t=1 a=1,b=2i,c=\"x y, z\",d=true 123").unwrap();
        assert_eq!(p.measurement, "my m");
        let types: Vec<_> = p.fields.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        assert_eq!(
            types,
            vec![
                ("a", FieldType::Float),
                ("b", FieldType::Integer),
                ("c", FieldType::Str),
                ("d", FieldType::Bool),
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
