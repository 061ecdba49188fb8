//! Payload parsing: what fields (and unit tag, and timestamp) a publish's text gives under its
//! rule: JSON flattened to dotted keys, a number, a boolean, a number with a unit, text as a
//! string field, or, when the rule allows it, line protocol passed through as it is.

use super::field_types::FieldTypes;
use super::line_protocol::{self, FieldValue, Precision};
use super::mapped::{Mapped, Skip};
use super::rules::{NonNumeric, RuleConfig};
use super::timestamp::read_timestamp;
use smallvec::SmallVec;
use std::borrow::Cow;

/// The fields an ordinary (not line protocol) payload gives: borrowed from the payload and the
/// rule where they can be, as this runs for every publish.
pub(super) type Fields<'a> = SmallVec<[(Cow<'a, str>, FieldValue); 4]>;

/// What else the payload gives besides its fields.
pub(super) struct Extras<'a> {
    /// A tag the payload adds (a number's unit) besides those of the topic.
    pub(super) unit: Option<&'a str>,
    /// From `timestamp_field`, when the payload has a usable one.
    pub(super) timestamp: Option<i64>,
}

/// Parse `text` (the whole payload, valid UTF-8) as JSON, a number, a boolean, a number with a
/// unit, or else as the rule's `non_numeric` says; the fields are added to `fields` (the
/// caller's, so that they are not moved on return).
#[inline]
pub(super) fn parse<'a>(
    text: &'a str,
    cfg: &'a RuleConfig,
    fields: &mut Fields<'a>,
) -> Result<Extras<'a>, Skip> {
    let mut unit = None;
    let mut timestamp = None;
    let trimmed = text.trim();
    if let Some(json) = parse_json_container(trimmed) {
        let mut flat = Vec::new();
        let mut ts_value = None;
        flatten(
            &json,
            String::new(),
            &cfg.timestamp_field,
            &mut flat,
            &mut ts_value,
        );
        timestamp = ts_value.and_then(|ts| read_timestamp(&ts, cfg.timestamp_unit));
        // A top-level array flattens to `0`, `1`, ...: prefix with the value field name.
        let array = trimmed.starts_with('[');
        fields.extend(flat.into_iter().map(|(k, v)| {
            let k = if array {
                format!("{}.{k}", cfg.value_field)
            } else {
                k
            };
            (Cow::Owned(k), v)
        }));
        if fields.is_empty() {
            return Err(Skip::NoFields);
        }
    } else if let Some(v) = parse_number(trimmed) {
        fields.push((Cow::Borrowed(&cfg.value_field), FieldValue::Float(v)));
    } else if let Some(b) = parse_bool(trimmed) {
        fields.push((Cow::Borrowed(&cfg.value_field), FieldValue::Bool(b)));
    } else if let Some((v, u)) = parse_number_with_unit(trimmed) {
        fields.push((Cow::Borrowed(&cfg.value_field), FieldValue::Float(v)));
        unit = Some(u);
    } else if cfg.non_numeric == NonNumeric::String {
        fields.push((
            Cow::Borrowed(&cfg.value_field),
            FieldValue::Str(text.to_string()),
        ));
    } else {
        return Err(Skip::UnparsedPayload);
    }
    Ok(Extras { unit, timestamp })
}

/// Write `text` as line protocol when every line parses; lines without a timestamp get the
/// receive time. None: not line protocol (the caller parses it as an ordinary payload).
pub(super) fn passthrough(
    text: &str,
    received_at_ns: i64,
    precision: Precision,
    types: &mut FieldTypes,
    out: &mut String,
) -> Option<Mapped> {
    let lines = line_protocol::lines(text.as_bytes());
    let mut parsed = Vec::with_capacity(lines.len());
    for l in &lines {
        parsed.push(line_protocol::parse_line(l).ok()?);
    }
    if lines.is_empty() {
        return None;
    }
    let mut written = 0;
    let mut conflicting = 0;
    for (line, p) in lines.iter().zip(&parsed) {
        // A raw line cannot lose one field: a conflicting line is left out as a whole.
        let conflict = p
            .fields
            .iter()
            .any(|(k, t)| matches!(types.get(&p.measurement, k), Some(known) if known != *t));
        if conflict {
            conflicting += 1;
            continue;
        }
        for (k, t) in &p.fields {
            types.learn(&p.measurement, k, *t, false);
        }
        // `lines` came from valid UTF-8 split at ASCII bytes.
        out.push_str(&String::from_utf8_lossy(line));
        if !p.has_timestamp {
            out.push(' ');
            out.push_str(&precision.from_ns(received_at_ns).to_string());
        }
        out.push('\n');
        written += 1;
    }
    Some(Mapped {
        lines: written,
        conflicting_fields: 0,
        dropped_lines: conflicting,
    })
}

fn parse_json_container(text: &str) -> Option<serde_json::Value> {
    if !(text.starts_with('{') || text.starts_with('[')) {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// Flatten JSON into fields: nested keys joined with `.`, array elements indexed (`a.0`), numbers
/// as floats, null left out. The value at `timestamp_field` is taken out as the timestamp.
fn flatten(
    v: &serde_json::Value,
    key: String,
    timestamp_field: &str,
    fields: &mut Vec<(String, FieldValue)>,
    timestamp: &mut Option<serde_json::Value>,
) {
    use serde_json::Value;
    if !key.is_empty() && key == timestamp_field {
        *timestamp = Some(v.clone());
        return;
    }
    let join = |k: &str| {
        if key.is_empty() {
            k.to_string()
        } else {
            format!("{key}.{k}")
        }
    };
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(v, join(k), timestamp_field, fields, timestamp);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, join(&i.to_string()), timestamp_field, fields, timestamp);
            }
        }
        Value::Null => {}
        Value::Bool(b) => fields.push((key, FieldValue::Bool(*b))),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                fields.push((key, FieldValue::Float(f)));
            }
        }
        Value::String(s) => fields.push((key, FieldValue::Str(s.clone()))),
    }
}
fn parse_number(s: &str) -> Option<f64> {
    // Only plain decimal notation: Rust would also accept "inf", "NaN" and "infinity".
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// `24.3°C`, `45%`, `1013 hPa`: a number followed by a short unit (no digits, no inner spaces).
fn parse_number_with_unit(s: &str) -> Option<(f64, &str)> {
    let bytes = s.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'-' | b'+')) {
        end = 1;
    }
    let digits_start = end;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
        end += 1;
    }
    if end == digits_start {
        return None;
    }
    let value = parse_number(&s[..end])?;
    let unit = s[end..].trim_start();
    let ok = !unit.is_empty()
        && unit.chars().count() <= 16
        && !unit
            .chars()
            .any(|c| c.is_whitespace() || c.is_ascii_digit() || c.is_control());
    ok.then_some((value, unit))
}
