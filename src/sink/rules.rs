//! Mapping rules and the topic-plan cache: which rule applies to a topic (`sink.exclude`,
//! `[[sink.rules]]` in order, `[sink.default]`), what measurement and tags its levels give, and
//! `TopicPlans`, the batcher's memory of what each topic maps to whatever the payload.

use super::line_protocol;
use super::mapping::Mapping;
use super::timestamp::TimestampUnit;
use serde::Deserialize;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

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

/// What a topic maps to whatever the payload: its rule, measurement and series key (escaped
/// measurement and tags; None when the measurement cannot be written).
#[derive(Debug)]
pub(super) struct TopicPlan {
    pub(super) rule: usize,
    pub(super) measurement: String,
    pub(super) series: Option<String>,
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
pub(super) enum Lookup<'p> {
    Excluded,
    Plan(&'p TopicPlan),
    /// Not remembered (too long, or the cache is full): map it from scratch.
    NotKept,
}

impl TopicPlans {
    #[inline]
    pub(super) fn get(&mut self, mapping: &Mapping, topic: &str) -> Lookup<'_> {
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

impl Mapping {
    /// Index of the rule for a topic (`rules.len()` for the default rule); None when excluded.
    #[inline]
    pub(super) fn rule_index(&self, levels: &[&str], dollar: bool) -> Option<usize> {
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

    #[inline]
    pub(super) fn rule_at(&self, index: usize) -> &Rule {
        self.rules.get(index).unwrap_or(&self.default)
    }

    /// What a topic maps to whatever the payload: see `TopicPlans`.
    pub(super) fn plan(&self, topic: &str) -> Option<TopicPlan> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::mapping::tests::{map, mapping, rule};
    use crate::sink::mapping::FieldTypes;

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
}
