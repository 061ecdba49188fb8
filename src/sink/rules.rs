//! Mapping rules: a `[[sink.rules]]` entry compiled (`Rule`), what measurement and tags a
//! topic's levels give under it. Which rule applies to a topic (`sink.exclude`, the rules in
//! order, `[sink.default]`) and the topic-plan cache are `Mapping`'s (`mapping.rs`).

use super::line_protocol;
use super::timestamp::TimestampUnit;
use serde::Deserialize;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::BTreeMap;

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
    pub(super) fn is_match_levels(&self, topic: &[&str], dollar: bool) -> bool {
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

    pub(super) fn measurement_for<'a>(&'a self, levels: &[&'a str]) -> Cow<'a, str> {
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
    pub(super) fn tags_for<'a>(
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

/// A topic's levels (split at `/`); topics rarely have more than 8.
pub(super) type Levels<'t> = SmallVec<[&'t str; 8]>;

#[inline]
pub(super) fn split_levels(topic: &str) -> Levels<'_> {
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
