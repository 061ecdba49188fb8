//! Topic + payload -> line protocol: which rule applies to a topic, what measurement and tags it
//! gives, how the payload becomes fields, and which timestamp the point gets.

use super::line_protocol::{self, FieldType, FieldValue, Precision};
use crate::config::ConfigError;
use serde::Deserialize;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Measurement used when neither the rule nor a `{measurement}` topic level names one.
pub const DEFAULT_MEASUREMENT: &str = "mqtt";

/// How payloads that are neither JSON nor numbers are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonNumeric {
    /// As a string field (`value="on"`).
    #[default]
    String,
    /// Not at all (counted as dropped, reason `unparsed_payload`).
    Skip,
}

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

/// One `[[sink.rules]]` entry, or `[sink.default]` (then without `topic`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Topic filter with named levels: `sensors/{device}/{measurement}`; `+` and a final `#`
    /// work as in MQTT. Named levels become tags, except those used in `measurement`.
    pub topic: String,
    /// Store matching publishes at all (false: the rule excludes them).
    pub store: bool,
    /// Measurement name: fixed (`weather`) or from levels (`{measurement}`, `env_{kind}`).
    /// Default: `{measurement}` when the topic has that level, else "mqtt".
    pub measurement: Option<String>,
    /// Fixed tags added to every point of this rule.
    pub tags: BTreeMap<String, String>,
    /// Add the full topic as tag `topic`.
    pub topic_tag: bool,
    /// Field name for payloads that are a single value (number, number with unit, string).
    pub value_field: String,
    /// Payloads that are valid line protocol are written as they are (lines without a timestamp
    /// get the receive time). Off by default: publishers could otherwise write any measurement.
    pub line_protocol: bool,
    /// What to do with payloads that are not JSON, a number or a number with a unit.
    pub non_numeric: NonNumeric,
    /// Payload field (flattened JSON key, e.g. `ts` or `meta.time`) holding the timestamp; empty:
    /// the broker's receive time. A payload without a usable value also gets the receive time.
    pub timestamp_field: String,
    pub timestamp_unit: TimestampUnit,
}

impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            topic: String::new(),
            store: true,
            measurement: None,
            tags: BTreeMap::new(),
            topic_tag: true,
            value_field: "value".into(),
            line_protocol: false,
            non_numeric: NonNumeric::String,
            timestamp_field: String::new(),
            timestamp_unit: TimestampUnit::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Level {
    Literal(String),
    /// `+` or `{name}`.
    One(Option<String>),
    /// Final `#`.
    Rest,
}

#[derive(Debug, Clone, PartialEq)]
enum TemplatePart {
    Text(String),
    /// Index into the topic levels.
    Level(usize),
}

/// A rule ready to match topics.
#[derive(Debug, Clone)]
pub struct Rule {
    levels: Vec<Level>,
    measurement: Vec<TemplatePart>,
    /// (tag key, topic level index) for named levels that are not part of the measurement.
    level_tags: Vec<(String, usize)>,
    pub config: RuleConfig,
}

fn parse_filter(topic: &str) -> Result<Vec<Level>, String> {
    if topic.is_empty() {
        return Err(
            "expected a topic filter like \"sensors/{device}/{measurement}\", got an empty string"
                .into(),
        );
    }
    let parts: Vec<&str> = topic.split('/').collect();
    let mut levels = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let level = if *part == "#" {
            // [MQTT-4.7.1-2] `#` must be the last level of a filter.
            if i + 1 != parts.len() {
                return Err(format!("`#` must be the last level, got {topic:?}"));
            }
            Level::Rest
        } else if *part == "+" {
            Level::One(None)
        } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if name.is_empty() || name.contains(['{', '}', '+', '#']) {
                return Err(format!(
                    "level {part:?} in {topic:?}: expected `{{name}}` with a non-empty name"
                ));
            }
            Level::One(Some(name.to_string()))
        } else if part.contains(['+', '#', '{', '}']) {
            // [MQTT-4.7.1-2/3] wildcards must occupy an entire level.
            return Err(format!(
                "level {part:?} in {topic:?}: `+`, `#` and `{{name}}` must fill a whole level"
            ));
        } else {
            Level::Literal(part.to_string())
        };
        levels.push(level);
    }
    Ok(levels)
}

fn parse_template(template: &str, levels: &[Level]) -> Result<Vec<TemplatePart>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(TemplatePart::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in {template:?}"))?
            + open;
        let name = &rest[open + 1..close];
        let idx = levels
            .iter()
            .position(|l| matches!(l, Level::One(Some(n)) if n == name))
            .ok_or_else(|| {
                format!("{{{name}}} in {template:?} is not a named level of the rule's topic")
            })?;
        parts.push(TemplatePart::Level(idx));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unmatched `}}` in {template:?}"));
    }
    if !rest.is_empty() {
        parts.push(TemplatePart::Text(rest.to_string()));
    }
    Ok(parts)
}

impl Rule {
    /// Compile a rule; errors are (key suffix, message).
    pub fn compile(config: &RuleConfig, is_default: bool) -> Result<Rule, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let levels = if is_default {
            if !config.topic.is_empty() {
                errors.push((
                    "topic".into(),
                    "the default rule applies to every topic no rule matched; expected no `topic` here".into(),
                ));
            }
            vec![Level::Rest]
        } else {
            parse_filter(&config.topic).unwrap_or_else(|e| {
                errors.push(("topic".into(), e));
                Vec::new()
            })
        };
        let template = match &config.measurement {
            Some(m) => m.clone(),
            None if levels
                .iter()
                .any(|l| matches!(l, Level::One(Some(n)) if n == "measurement")) =>
            {
                "{measurement}".into()
            }
            None => DEFAULT_MEASUREMENT.into(),
        };
        let measurement = if template.trim().is_empty() {
            errors.push((
                "measurement".into(),
                "expected a measurement name or template, got an empty string".into(),
            ));
            Vec::new()
        } else if template.starts_with('#') {
            errors.push((
                "measurement".into(),
                "a measurement starting with `#` reads as a comment line".into(),
            ));
            Vec::new()
        } else {
            parse_template(&template, &levels).unwrap_or_else(|e| {
                errors.push(("measurement".into(), e));
                Vec::new()
            })
        };
        if config.value_field.is_empty() {
            errors.push((
                "value_field".into(),
                "expected a field name, got an empty string".into(),
            ));
        }
        for (k, v) in &config.tags {
            if !line_protocol::name_is_representable(k) || !line_protocol::name_is_representable(v)
            {
                errors.push((
                    format!("tags.{k}"),
                    "expected a non-empty tag key and value".into(),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let used: Vec<usize> = measurement
            .iter()
            .filter_map(|p| match p {
                TemplatePart::Level(i) => Some(*i),
                TemplatePart::Text(_) => None,
            })
            .collect();
        let level_tags = levels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| match l {
                Level::One(Some(name)) if !used.contains(&i) => Some((name.clone(), i)),
                _ => None,
            })
            .collect();
        Ok(Rule {
            levels,
            measurement,
            level_tags,
            config: config.clone(),
        })
    }

    /// Whether the rule's filter matches a topic.
    pub fn is_match(&self, topic: &str) -> bool {
        self.is_match_levels(&split_levels(topic), topic.starts_with('$'))
    }

    /// `is_match` on a topic already split into levels (`dollar`: it starts with `$`). The
    /// mapping splits each topic once and matches every rule against the same levels.
    fn is_match_levels(&self, topic: &[&str], dollar: bool) -> bool {
        // [MQTT-4.7.2-1] filters starting with a wildcard do not match topics starting with `$`.
        if dollar && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return false;
        }
        let mut parts = topic.iter();
        for level in &self.levels {
            match level {
                // [MQTT-4.7.1-2] `#` also matches the parent level (`a/#` matches `a`).
                Level::Rest => return true,
                Level::One(_) => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(l) => {
                    if parts.next() != Some(&l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// Match a topic; on success returns its levels.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        self.is_match(topic).then(|| topic.split('/').collect())
    }

    fn measurement_for<'a>(&'a self, levels: &[&'a str]) -> Cow<'a, str> {
        // One part (a fixed name or one level): no allocation.
        match self.measurement.as_slice() {
            [TemplatePart::Text(t)] => return Cow::Borrowed(t),
            [TemplatePart::Level(i)] => {
                return Cow::Borrowed(levels.get(*i).copied().unwrap_or_default())
            }
            _ => {}
        }
        let mut m = String::new();
        for p in &self.measurement {
            match p {
                TemplatePart::Text(t) => m.push_str(t),
                TemplatePart::Level(i) => m.push_str(levels.get(*i).copied().unwrap_or_default()),
            }
        }
        Cow::Owned(m)
    }
}

impl Rule {
    /// The point's tags, sorted by key: the rule's fixed tags, its named levels, the `topic`
    /// tag, and `extra` (from the payload). On a repeated key the first of these wins.
    fn tags_for<'a>(
        &'a self,
        levels: &[&'a str],
        topic: &'a str,
        extra: Option<(&'a str, &'a str)>,
    ) -> SmallVec<[(&'a str, &'a str); 8]> {
        let cfg = &self.config;
        let mut tags: SmallVec<[(&str, &str); 8]> = SmallVec::new();
        tags.extend(cfg.tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (name, i) in &self.level_tags {
            if let Some(v) = levels.get(*i) {
                tags.push((name.as_str(), v));
            }
        }
        if cfg.topic_tag {
            tags.push(("topic", topic));
        }
        tags.extend(extra);
        // Stable: of tags with the same key the first pushed is kept.
        tags.sort_by(|a, b| a.0.cmp(b.0));
        tags.dedup_by(|later, earlier| later.0 == earlier.0);
        tags
    }
}

/// What a topic maps to whatever the payload: its rule, measurement and series key (escaped
/// measurement and tags; None when the measurement cannot be written).
#[derive(Debug)]
struct TopicPlan {
    rule: usize,
    measurement: String,
    series: Option<String>,
}

/// Topics remembered by the batcher with their `TopicPlan` (None: excluded), so that a device
/// publishing again does not have its topic matched against the rules, split into tags and
/// escaped again for every point. Bounded in count and topic length; once full, other topics
/// are mapped without being remembered, and after as many such publishes as it holds topics it
/// starts over, so a fleet whose topics change gets its new ones remembered.
#[derive(Debug, Default)]
pub struct TopicPlans {
    /// ahash: hashed for every point, on topics clients choose (keyed per process, as std's).
    index: HashMap<Box<str>, usize, ahash::RandomState>,
    plans: Vec<Option<TopicPlan>>,
    /// Publishes mapped without a plan since the cache filled up.
    not_kept: usize,
}

/// Topics remembered at most.
const MAX_TOPIC_PLANS: usize = 10_000;
/// Longer topics are not remembered (an entry holds the topic about three times: key, tag and
/// series key), so the cache stays within a few tens of MB whatever clients publish.
const MAX_PLANNED_TOPIC_LEN: usize = 256;

/// What `TopicPlans` knows of a topic.
enum Lookup<'p> {
    Excluded,
    Plan(&'p TopicPlan),
    /// Not remembered (too long, or the cache is full): map it from scratch.
    NotKept,
}

impl TopicPlans {
    fn get(&mut self, mapping: &Mapping, topic: &str) -> Lookup<'_> {
        let i = match self.index.get(topic) {
            Some(&i) => i,
            None if topic.len() > MAX_PLANNED_TOPIC_LEN => return Lookup::NotKept,
            None if self.plans.len() >= MAX_TOPIC_PLANS => {
                self.not_kept += 1;
                if self.not_kept >= MAX_TOPIC_PLANS {
                    self.index.clear();
                    self.plans.clear();
                    self.not_kept = 0;
                }
                return Lookup::NotKept;
            }
            None => {
                self.plans.push(mapping.plan(topic));
                self.index.insert(topic.into(), self.plans.len() - 1);
                self.plans.len() - 1
            }
        };
        match &self.plans[i] {
            Some(plan) => Lookup::Plan(plan),
            None => Lookup::Excluded,
        }
    }
}

/// A topic's levels (split at `/`); topics rarely have more than 8.
type Levels<'t> = SmallVec<[&'t str; 8]>;

fn split_levels(topic: &str) -> Levels<'_> {
    topic.split('/').collect()
}

/// A plain MQTT topic filter without named levels (for `sink.exclude`).
pub fn compile_filter(filter: &str) -> Result<Rule, String> {
    if filter.contains(['{', '}']) {
        return Err(format!(
            "expected an MQTT topic filter (`+`, `#` allowed), got {filter:?}"
        ));
    }
    let config = RuleConfig {
        topic: filter.to_string(),
        ..RuleConfig::default()
    };
    Rule::compile(&config, false)
        .map_err(|e| e.into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; "))
}

/// Why a publish produced no point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Excluded by `sink.exclude` or a rule with `store = false` (not a loss: configured).
    Excluded,
    EmptyPayload,
    NotUtf8,
    /// Not JSON, number or line protocol, and the rule says `non_numeric = "skip"`.
    UnparsedPayload,
    /// Nothing storable left (e.g. `{}`, JSON null, every field conflicting).
    NoFields,
    /// Every field conflicted with the type the database has.
    TypeConflict,
}

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
enum Reconciled {
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
    fn reconcile(&mut self, measurement: &str, field: &str, value: &FieldValue) -> Reconciled {
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

/// The compiled mapping: exclusions, rules in order, and the default rule.
#[derive(Debug, Clone)]
pub struct Mapping {
    exclude: Vec<Rule>,
    rules: Vec<Rule>,
    default: Rule,
    precision: Precision,
}

/// What mapping one publish appended to the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub lines: usize,
    /// Fields left out or converted because of a type conflict.
    pub conflicting_fields: usize,
    /// Passthrough lines left out because of a type conflict.
    pub dropped_lines: usize,
}

impl Mapping {
    /// Compile the config; errors are (dotted key under `sink.`, message).
    pub fn new(
        exclude: &[String],
        rules: &[RuleConfig],
        default: &RuleConfig,
        precision: Precision,
    ) -> Result<Mapping, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut ex = Vec::new();
        for (i, f) in exclude.iter().enumerate() {
            match compile_filter(f) {
                Ok(r) => ex.push(r),
                Err(e) => errors.push((format!("exclude[{i}]"), e)),
            }
        }
        let mut compiled = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match Rule::compile(r, false) {
                Ok(r) => compiled.push(r),
                Err(es) => {
                    errors.extend(es.into_iter().map(|(k, m)| (format!("rules[{i}].{k}"), m)))
                }
            }
        }
        let default = match Rule::compile(default, true) {
            Ok(r) => Some(r),
            Err(es) => {
                errors.extend(es.into_iter().map(|(k, m)| (format!("default.{k}"), m)));
                None
            }
        };
        match default {
            Some(default) if errors.is_empty() => Ok(Mapping {
                exclude: ex,
                rules: compiled,
                default,
                precision,
            }),
            _ => Err(errors),
        }
    }

    /// Index of the rule for a topic (`rules.len()` for the default rule); None when excluded.
    fn rule_index(&self, levels: &[&str], dollar: bool) -> Option<usize> {
        if self
            .exclude
            .iter()
            .any(|r| r.is_match_levels(levels, dollar))
        {
            return None;
        }
        let i = self
            .rules
            .iter()
            .position(|r| r.is_match_levels(levels, dollar))
            .unwrap_or(self.rules.len());
        self.rule_at(i).config.store.then_some(i)
    }

    /// Whether publishes on `topic` are stored at all (not excluded by `exclude` or a rule with
    /// `store = false`); their payload may still turn out not to be storable.
    pub fn stores_topic(&self, topic: &str) -> bool {
        self.rule_index(&split_levels(topic), topic.starts_with('$'))
            .is_some()
    }

    fn rule_at(&self, index: usize) -> &Rule {
        self.rules.get(index).unwrap_or(&self.default)
    }

    /// What a topic maps to whatever the payload: see `TopicPlans`.
    fn plan(&self, topic: &str) -> Option<TopicPlan> {
        let levels = split_levels(topic);
        let rule = self.rule_index(&levels, topic.starts_with('$'))?;
        let measurement = self.rule_at(rule).measurement_for(&levels).into_owned();
        let tags = self.rule_at(rule).tags_for(&levels, topic, None);
        let mut series = String::new();
        let series = line_protocol::push_series(&mut series, &measurement, &tags).then_some(series);
        Some(TopicPlan {
            rule,
            measurement,
            series,
        })
    }

    /// Map one publish and append its line(s) to `out`.
    pub fn map(
        &self,
        topic: &str,
        payload: &[u8],
        received_at_ns: i64,
        types: &mut FieldTypes,
        plans: &mut TopicPlans,
        out: &mut String,
    ) -> Result<Mapped, Skip> {
        let (rule, measurement, series) = match plans.get(self, topic) {
            Lookup::Excluded => return Err(Skip::Excluded),
            Lookup::Plan(plan) => (
                self.rule_at(plan.rule),
                Cow::Borrowed(plan.measurement.as_str()),
                plan.series.as_deref(),
            ),
            Lookup::NotKept => {
                let levels = split_levels(topic);
                let rule = self
                    .rule_index(&levels, topic.starts_with('$'))
                    .map(|i| self.rule_at(i))
                    .ok_or(Skip::Excluded)?;
                (rule, rule.measurement_for(&levels), None)
            }
        };
        let cfg = &rule.config;
        if payload.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(Skip::EmptyPayload);
        }
        let text = std::str::from_utf8(payload).map_err(|_| Skip::NotUtf8)?;
        if cfg.line_protocol {
            match self.passthrough(text, received_at_ns, types, out) {
                Some(m) if m.lines == 0 => return Err(Skip::TypeConflict),
                Some(m) => return Ok(m),
                None => {}
            }
        }
        // Everything below borrows from the topic, payload, config and plan: one point costs a
        // few small allocations at most (this runs for every publish).
        let measurement = measurement.as_ref();
        // A tag the payload adds (a number's unit) besides those of the topic.
        let mut payload_tag = None;
        let mut fields: SmallVec<[(Cow<'_, str>, FieldValue); 4]> = SmallVec::new();
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
        } else if let Some((v, unit)) = parse_number_with_unit(trimmed) {
            fields.push((Cow::Borrowed(&cfg.value_field), FieldValue::Float(v)));
            payload_tag = Some(("unit", unit));
        } else if cfg.non_numeric == NonNumeric::String {
            fields.push((
                Cow::Borrowed(&cfg.value_field),
                FieldValue::Str(text.to_string()),
            ));
        } else {
            return Err(Skip::UnparsedPayload);
        }
        let before = fields.len();
        let mut converted = 0;
        let mut kept: SmallVec<[(&str, Cow<'_, FieldValue>); 4]> = SmallVec::new();
        for (k, v) in &fields {
            match types.reconcile(measurement, k, v) {
                Reconciled::AsIs => kept.push((k, Cow::Borrowed(v))),
                Reconciled::Converted(r) => {
                    converted += 1;
                    kept.push((k, Cow::Owned(r)));
                }
                Reconciled::Conflict => {}
            }
        }
        if kept.is_empty() {
            return Err(Skip::TypeConflict);
        }
        let conflicting_fields = before - kept.len() + converted;
        let refs: SmallVec<[(&str, &FieldValue); 4]> =
            kept.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        let ts = timestamp.unwrap_or(received_at_ns);
        let written = match (payload_tag, series) {
            // The usual point: the topic's series key as remembered, then fields and time.
            (None, Some(series)) => {
                let start = out.len();
                out.push_str(series);
                let written = line_protocol::push_fields(out, self.precision, &refs, ts);
                if !written {
                    out.truncate(start);
                }
                written
            }
            (extra, _) => {
                let tags = rule.tags_for(&split_levels(topic), topic, extra);
                line_protocol::encode_line(out, self.precision, measurement, &tags, &refs, ts)
            }
        };
        if !written {
            return Err(Skip::NoFields);
        }
        Ok(Mapped {
            lines: 1,
            conflicting_fields,
            dropped_lines: 0,
        })
    }

    /// Write `text` as line protocol when every line parses; lines without a timestamp get the
    /// receive time. None: not line protocol (the caller parses it as an ordinary payload).
    fn passthrough(
        &self,
        text: &str,
        received_at_ns: i64,
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
                out.push_str(&self.precision.from_ns(received_at_ns).to_string());
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

/// A timestamp from a payload value, in ns since the epoch.
fn read_timestamp(v: &serde_json::Value, unit: TimestampUnit) -> Option<i64> {
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

/// Validate the mapping part of the sink config: (key, message) pairs become ConfigErrors.
pub fn validate(
    path: &Path,
    exclude: &[String],
    rules: &[RuleConfig],
    default: &RuleConfig,
    precision: Precision,
) -> Vec<ConfigError> {
    match Mapping::new(exclude, rules, default, precision) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|(key, message)| ConfigError {
                file: path.to_path_buf(),
                key: format!("sink.{key}"),
                message,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(topic: &str) -> RuleConfig {
        RuleConfig {
            topic: topic.into(),
            ..RuleConfig::default()
        }
    }

    fn mapping(rules: Vec<RuleConfig>) -> Mapping {
        Mapping::new(
            &["$SYS/#".to_string()],
            &rules,
            &RuleConfig::default(),
            Precision::Ns,
        )
        .unwrap()
    }

    fn map(m: &Mapping, topic: &str, payload: &str) -> Result<String, Skip> {
        let mut out = String::new();
        m.map(
            topic,
            payload.as_bytes(),
            1_000,
            &mut FieldTypes::default(),
            &mut TopicPlans::default(),
            &mut out,
        )?;
        Ok(out)
    }

    #[test]
    fn named_levels_give_measurement_and_tags_plus_topic_tag() {
        let m = mapping(vec![rule("sensors/{device}/{measurement}")]);
        assert_eq!(
            map(&m, "sensors/kitchen/temperature", "21.5").unwrap(),
            "temperature,device=kitchen,topic=sensors/kitchen/temperature value=21.5 1000\n"
        );
    }

    #[test]
    fn a_remembered_topic_maps_every_payload_as_a_fresh_one() {
        let mut r = rule("sensors/{device}/{measurement}");
        r.tags.insert("zone".into(), "a b".into());
        let m = mapping(vec![r]);
        let mut plans = TopicPlans::default();
        let topics = ["sensors/k,1/temp", "sensors/k2/hum", "$SYS/x", "other"];
        let payloads = ["21.5", "24.3°C", r#"{"a":{"b":1},"ok":true}"#, "on", "45%"];
        for _round in 0..2 {
            for topic in topics {
                for payload in payloads {
                    let mut out = String::new();
                    // Fresh field types: only the plans are carried from one call to the next.
                    let types = &mut FieldTypes::default();
                    let remembered = m
                        .map(
                            topic,
                            payload.as_bytes(),
                            1_000,
                            types,
                            &mut plans,
                            &mut out,
                        )
                        .map(|_| out);
                    assert_eq!(remembered, map(&m, topic, payload), "{topic} {payload}");
                }
            }
        }
        assert_eq!(plans.plans.len(), topics.len(), "one plan per topic");
    }

    #[test]
    fn topic_plans_are_bounded_and_map_the_rest_as_fresh_ones() {
        let m = mapping(vec![]);
        let mut plans = TopicPlans::default();
        let mut out = String::new();
        let mut map_one = |plans: &mut TopicPlans, topic: &str| {
            out.clear();
            m.map(
                topic,
                b"1",
                1_000,
                &mut FieldTypes::default(),
                plans,
                &mut out,
            )
            .unwrap();
            assert_eq!(Ok(out.clone()), map(&m, topic, "1"), "{topic}");
        };
        let long = format!("long/{}", "x".repeat(MAX_PLANNED_TOPIC_LEN));
        map_one(&mut plans, &long);
        assert!(plans.plans.is_empty(), "a long topic is not remembered");
        for i in 0..MAX_TOPIC_PLANS {
            map_one(&mut plans, &format!("t/{i}"));
        }
        assert_eq!(plans.plans.len(), MAX_TOPIC_PLANS);
        // Full: new topics are mapped without being remembered, the old ones stay...
        for i in 0..MAX_TOPIC_PLANS - 1 {
            map_one(&mut plans, &format!("new/{i}"));
        }
        assert_eq!(plans.plans.len(), MAX_TOPIC_PLANS);
        assert!(plans.index.contains_key("t/0"));
        // ... until as many publishes went unplanned as it holds: then it starts over.
        map_one(&mut plans, "new/last");
        assert!(plans.plans.is_empty());
        map_one(&mut plans, "new/0");
        assert_eq!(plans.plans.len(), 1);
    }

    #[test]
    fn fixed_measurement_and_static_tags() {
        let mut r = rule("home/+/{room}");
        r.measurement = Some("env_{room}".into());
        r.tags.insert("site".into(), "berlin".into());
        r.topic_tag = false;
        let m = mapping(vec![r]);
        assert_eq!(
            map(&m, "home/x/attic", "1").unwrap(),
            "env_attic,site=berlin value=1 1000\n"
        );
    }

    #[test]
    fn first_matching_rule_wins_and_default_takes_the_rest() {
        let mut a = rule("a/#");
        a.measurement = Some("first".into());
        let mut b = rule("a/b");
        b.measurement = Some("second".into());
        let m = mapping(vec![a, b]);
        assert!(map(&m, "a/b", "1").unwrap().starts_with("first,"));
        assert!(map(&m, "other/topic", "1")
            .unwrap()
            .starts_with("mqtt,topic=other/topic "));
    }

    #[test]
    fn sys_topics_are_excluded_by_default_and_store_false_excludes() {
        let mut off = rule("private/#");
        off.store = false;
        let m = mapping(vec![off]);
        assert_eq!(map(&m, "$SYS/broker/uptime", "5"), Err(Skip::Excluded));
        assert_eq!(map(&m, "private/x", "5"), Err(Skip::Excluded));
        assert!(map(&m, "public/x", "5").is_ok());
    }

    #[test]
    fn wildcard_first_rules_do_not_match_dollar_topics() {
        // [MQTT-4.7.2-1]
        let m = Mapping::new(
            &[],
            &[rule("#")],
            &RuleConfig {
                store: false,
                ..RuleConfig::default()
            },
            Precision::Ns,
        )
        .unwrap();
        assert_eq!(map(&m, "$internal/x", "1"), Err(Skip::Excluded));
        assert!(map(&m, "x", "1").is_ok());
    }

    #[test]
    fn hash_matches_parent_level() {
        let r = Rule::compile(&rule("a/#"), false).unwrap();
        assert!(r.matches("a").is_some());
        assert!(r.matches("a/b/c").is_some());
        assert!(r.matches("b").is_none());
        let r = Rule::compile(&rule("a/+"), false).unwrap();
        assert!(r.matches("a").is_none());
        assert!(r.matches("a/b").is_some());
        assert!(r.matches("a/b/c").is_none());
    }

    #[test]
    fn json_is_flattened_with_dotted_keys_and_indexed_arrays() {
        let m = mapping(vec![]);
        let out = map(&m, "t", r#"{"a":{"b":1,"c":[true,"x"]},"n":null,"s":"hi"}"#).unwrap();
        assert_eq!(
            out,
            "mqtt,topic=t a.b=1,a.c.0=true,a.c.1=\"x\",s=\"hi\" 1000\n"
        );
        let out = map(&m, "t", "[1,2]").unwrap();
        assert_eq!(out, "mqtt,topic=t value.0=1,value.1=2 1000\n");
        assert_eq!(map(&m, "t", "{}"), Err(Skip::NoFields));
    }

    #[test]
    fn number_with_unit_becomes_value_and_unit_tag() {
        let m = mapping(vec![]);
        assert_eq!(
            map(&m, "t", "24.3°C").unwrap(),
            "mqtt,topic=t,unit=°C value=24.3 1000\n"
        );
        assert_eq!(
            map(&m, "t", "45%").unwrap(),
            "mqtt,topic=t,unit=% value=45 1000\n"
        );
        assert_eq!(
            map(&m, "t", "1013 hPa").unwrap(),
            "mqtt,topic=t,unit=hPa value=1013 1000\n"
        );
        assert_eq!(
            map(&m, "t", "-3e2").unwrap(),
            "mqtt,topic=t value=-300 1000\n"
        );
    }

    #[test]
    fn other_text_is_a_string_field_or_skipped() {
        let m = mapping(vec![]);
        assert_eq!(
            map(&m, "t", "on").unwrap(),
            "mqtt,topic=t value=\"on\" 1000\n"
        );
        assert_eq!(
            map(&m, "t", "NaN").unwrap(),
            "mqtt,topic=t value=\"NaN\" 1000\n"
        );
        assert_eq!(
            map(&m, "t", "12 34").unwrap(),
            "mqtt,topic=t value=\"12 34\" 1000\n"
        );
        assert_eq!(
            map(&m, "t", "true").unwrap(),
            "mqtt,topic=t value=true 1000\n"
        );
        let mut skip = rule("s/#");
        skip.non_numeric = NonNumeric::Skip;
        let m = mapping(vec![skip]);
        assert_eq!(map(&m, "s/1", "on"), Err(Skip::UnparsedPayload));
        assert_eq!(map(&m, "s/1", "  "), Err(Skip::EmptyPayload));
        let mut out = String::new();
        assert_eq!(
            m.map(
                "s/1",
                &[0xff, 0xfe],
                1,
                &mut FieldTypes::default(),
                &mut TopicPlans::default(),
                &mut out
            ),
            Err(Skip::NotUtf8)
        );
    }

    #[test]
    fn timestamp_from_payload_in_each_unit() {
        let cases = [
            (
                TimestampUnit::S,
                r#"{"v":1,"ts":1700000000}"#,
                1_700_000_000_000_000_000i64,
            ),
            (
                TimestampUnit::Ms,
                r#"{"v":1,"ts":1700000000123}"#,
                1_700_000_000_123_000_000,
            ),
            (
                TimestampUnit::Us,
                r#"{"v":1,"ts":1700000000123456}"#,
                1_700_000_000_123_456_000,
            ),
            (
                TimestampUnit::Ns,
                r#"{"v":1,"ts":1700000000123456789}"#,
                1_700_000_000_123_456_789,
            ),
            (
                TimestampUnit::Auto,
                r#"{"v":1,"ts":1700000000123}"#,
                1_700_000_000_123_000_000,
            ),
            (
                TimestampUnit::Auto,
                r#"{"v":1,"ts":1700000000.5}"#,
                1_700_000_000_500_000_000,
            ),
            (
                TimestampUnit::Rfc3339,
                r#"{"v":1,"ts":"2023-11-14T22:13:20.25+01:00"}"#,
                1_699_996_400_250_000_000,
            ),
            (
                TimestampUnit::Auto,
                r#"{"v":1,"ts":"2023-11-14T22:13:20Z"}"#,
                1_700_000_000_000_000_000,
            ),
        ];
        for (unit, payload, want) in cases {
            let mut r = rule("#");
            r.timestamp_field = "ts".into();
            r.timestamp_unit = unit;
            let m = mapping(vec![r]);
            assert_eq!(
                map(&m, "t", payload).unwrap(),
                format!("mqtt,topic=t v=1 {want}\n"),
                "{unit:?} {payload}"
            );
        }
    }

    #[test]
    fn unusable_payload_timestamp_falls_back_to_receive_time() {
        let mut r = rule("#");
        r.timestamp_field = "meta.ts".into();
        r.timestamp_unit = TimestampUnit::Rfc3339;
        let m = mapping(vec![r]);
        assert_eq!(
            map(&m, "t", r#"{"v":2,"meta":{"ts":"yesterday"}}"#).unwrap(),
            "mqtt,topic=t v=2 1000\n"
        );
    }

    #[test]
    fn line_protocol_passthrough_only_when_opted_in() {
        let mut lp = rule("lp/#");
        lp.line_protocol = true;
        let m = mapping(vec![lp]);
        assert_eq!(
            map(&m, "lp/x", "cpu,host=a usage=0.5 7\ncpu usage=1").unwrap(),
            "cpu,host=a usage=0.5 7\ncpu usage=1 1000\n"
        );
        // Not line protocol: parsed as an ordinary payload.
        assert_eq!(
            map(&m, "lp/x", "42").unwrap(),
            "mqtt,topic=lp/x value=42 1000\n"
        );
        assert_eq!(
            map(&m, "other", "cpu usage=1").unwrap(),
            "mqtt,topic=other value=\"cpu usage=1\" 1000\n"
        );
    }

    #[test]
    fn field_type_conflicts_are_converted_or_left_out() {
        let m = mapping(vec![]);
        let mut types = FieldTypes::default();
        types.learn("mqtt", "value", FieldType::Float, true);
        types.learn("mqtt", "s", FieldType::Str, true);
        let mut plans = TopicPlans::default();
        let mut out = String::new();
        // "on" cannot become a float: the only field conflicts, the point is skipped.
        assert_eq!(
            m.map("t", b"on", 1, &mut types, &mut plans, &mut out),
            Err(Skip::TypeConflict)
        );
        // Numbers for a string field become strings; a conflicting field is left out.
        let r = m
            .map(
                "t",
                br#"{"s":5,"value":"x","ok":true}"#,
                1,
                &mut types,
                &mut plans,
                &mut out,
            )
            .unwrap();
        // (serde_json orders object keys.)
        assert_eq!(out, "mqtt,topic=t ok=true,s=\"5\" 1\n");
        assert_eq!(r.conflicting_fields, 2);
        // The first type seen is remembered for later points.
        out.clear();
        let _ = m.map("t", br#"{"ok":1}"#, 1, &mut types, &mut plans, &mut out);
        assert_eq!(out, "");
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut bad = rule("a/{x}/b#");
        bad.measurement = Some("{nope}".into());
        let default = RuleConfig {
            topic: "x".into(),
            ..RuleConfig::default()
        };
        let errs = validate(
            Path::new("c.toml"),
            &["a/#/b".into()],
            &[rule("ok"), bad],
            &default,
            Precision::Ns,
        );
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "sink.exclude[0]",
                "sink.rules[1].topic",
                "sink.rules[1].measurement",
                "sink.default.topic"
            ]
        );
        assert!(
            errs[1].message.contains("must fill a whole level"),
            "{}",
            errs[1].message
        );
    }
}
