//! Timestamps taken from a payload (`timestamp_field`, `timestamp_unit`): numbers in a unit or
//! by magnitude, RFC 3339 text; all in ns since the epoch.

use serde::Deserialize;

/// How a timestamp taken from the payload is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampUnit {
    /// Numbers by magnitude (s, ms, µs or ns since the epoch), strings as RFC 3339.
    #[default]
    Auto,
    S,
    Ms,
    Us,
    Ns,
    Rfc3339,
}
/// A timestamp from a payload value, in ns since the epoch.
pub(super) fn read_timestamp(v: &serde_json::Value, unit: TimestampUnit) -> Option<i64> {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return int_timestamp(i, unit);
            }
            let f = n.as_f64()?;
            let scale = match unit {
                TimestampUnit::S => 1e9,
                TimestampUnit::Ms => 1e6,
                TimestampUnit::Us => 1e3,
                TimestampUnit::Ns => 1.0,
                TimestampUnit::Rfc3339 => return None,
                TimestampUnit::Auto => auto_scale(f.abs()) as f64,
            };
            let ns = f * scale;
            (ns.is_finite() && ns.abs() < 9.2e18).then_some(ns as i64)
        }
        Value::String(s) => parse_timestamp_str(s, unit),
        _ => None,
    }
}

/// Parse a timestamp given as text (payload value or JSON string).
pub fn parse_timestamp_str(s: &str, unit: TimestampUnit) -> Option<i64> {
    let s = s.trim();
    if matches!(unit, TimestampUnit::Rfc3339 | TimestampUnit::Auto) {
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return t.timestamp_nanos_opt();
        }
        if unit == TimestampUnit::Rfc3339 {
            return None;
        }
    }
    if let Ok(i) = s.parse::<i64>() {
        return int_timestamp(i, unit);
    }
    read_timestamp(&serde_json::Value::from(s.parse::<f64>().ok()?), unit)
}

/// ns per unit for a number of this magnitude: below 1e11 seconds (until year 5138), below 1e14
/// milliseconds, below 1e17 microseconds, else nanoseconds.
fn auto_scale(abs: f64) -> i64 {
    if abs < 1e11 {
        1_000_000_000
    } else if abs < 1e14 {
        1_000_000
    } else if abs < 1e17 {
        1_000
    } else {
        1
    }
}

fn int_timestamp(i: i64, unit: TimestampUnit) -> Option<i64> {
    let scale = match unit {
        TimestampUnit::S => 1_000_000_000,
        TimestampUnit::Ms => 1_000_000,
        TimestampUnit::Us => 1_000,
        TimestampUnit::Ns => 1,
        TimestampUnit::Rfc3339 => return None,
        TimestampUnit::Auto => auto_scale((i as f64).abs()),
    };
    i.checked_mul(scale)
}
