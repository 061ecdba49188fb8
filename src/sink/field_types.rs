//! Field-type reconciliation: the types the database has for each (measurement, field), and
//! what a value of another type becomes (converted, or left out) so that one point cannot get
//! its whole batch refused.

use super::line_protocol::{FieldType, FieldValue};
use std::collections::HashMap;

/// Field types known to be in the database (learnt from `SHOW FIELD KEYS`, our own writes and
/// write errors), so that a point whose field has another type is converted or loses that field
/// instead of being rejected by InfluxDB together with the rest of its batch.
#[derive(Debug, Default)]
pub struct FieldTypes {
    known: HashMap<String, HashMap<String, FieldType>>,
    entries: usize,
    /// The (measurement, field, type) last found in `known`: a stream of publishes mostly
    /// repeats the same few fields, and this saves two hash lookups per point. The strings are
    /// reused (no allocation once they are long enough); emptied whenever a type changes.
    last: Option<(String, String, FieldType)>,
}

/// What a field's value becomes, given the type the database has for it.
#[derive(Debug, PartialEq)]
pub(super) enum Reconciled {
    /// Written as it is (same type, or the field is new).
    AsIs,
    /// Converted to the stored type.
    Converted(FieldValue),
    /// Cannot be converted: the field is left out.
    Conflict,
}

/// Beyond this many (measurement, field) pairs new ones are not remembered (memory bound; the
/// server still reports conflicts, which only cost the conflicting point).
const MAX_KNOWN_FIELDS: usize = 200_000;

impl FieldTypes {
    pub fn get(&self, measurement: &str, field: &str) -> Option<FieldType> {
        self.known
            .get(measurement)
            .and_then(|f| f.get(field))
            .copied()
    }

    /// Record a type; an existing entry is replaced only when `authoritative` (it came from the DB).
    pub fn learn(&mut self, measurement: &str, field: &str, ty: FieldType, authoritative: bool) {
        if let Some(fields) = self.known.get_mut(measurement) {
            if let Some(t) = fields.get_mut(field) {
                if authoritative && *t != ty {
                    *t = ty;
                    self.last = None;
                }
                return;
            }
        }
        if self.entries >= MAX_KNOWN_FIELDS {
            return;
        }
        self.entries += 1;
        self.known
            .entry(measurement.to_string())
            .or_default()
            .insert(field.to_string(), ty);
    }

    /// The stored type of a field, through the one-entry memo.
    fn lookup(&mut self, measurement: &str, field: &str) -> Option<FieldType> {
        if let Some((m, f, t)) = &self.last {
            if m == measurement && f == field {
                return Some(*t);
            }
        }
        let t = self.get(measurement, field)?;
        let (m, f, ty) = self
            .last
            .get_or_insert_with(|| (String::new(), String::new(), t));
        m.clear();
        m.push_str(measurement);
        f.clear();
        f.push_str(field);
        *ty = t;
        Some(t)
    }

    /// Convert `value` to the type the database has for the field, or None when it cannot be.
    #[inline]
    pub(super) fn reconcile(
        &mut self,
        measurement: &str,
        field: &str,
        value: &FieldValue,
    ) -> Reconciled {
        let ty = value.field_type();
        let Some(known) = self.lookup(measurement, field) else {
            self.learn(measurement, field, ty, false);
            return Reconciled::AsIs;
        };
        if known == ty {
            return Reconciled::AsIs;
        }
        let converted = match (known, value) {
            (FieldType::Str, FieldValue::Float(f)) => Some(FieldValue::Str(f.to_string())),
            (FieldType::Str, FieldValue::Bool(b)) => Some(FieldValue::Str(b.to_string())),
            (FieldType::Str, FieldValue::Integer(i)) => Some(FieldValue::Str(i.to_string())),
            (FieldType::Float, FieldValue::Str(s)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(FieldValue::Float),
            (FieldType::Float, FieldValue::Integer(i)) => Some(FieldValue::Float(*i as f64)),
            (FieldType::Integer, FieldValue::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Some(FieldValue::Integer(*f as i64))
            }
            (FieldType::Bool, FieldValue::Str(s)) => match s.trim() {
                "true" => Some(FieldValue::Bool(true)),
                "false" => Some(FieldValue::Bool(false)),
                _ => None,
            },
            _ => None,
        };
        converted.map_or(Reconciled::Conflict, Reconciled::Converted)
    }
}
