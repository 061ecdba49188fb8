//! Topic + payload -> line protocol, for the batcher: the rule a topic's plan names
//! (`rules.rs`; which rule applies, cached per topic in `TopicPlans`, is below), the fields its payload gives (`payload.rs`, with the
//! timestamp from `timestamp.rs`), reconciled with the types the database has
//! (`field_types.rs`), appended to the batch as one line (`line_protocol.rs`).
//!
//! What `map` calls per point from those files is `#[inline]`: rustc gives each module its own
//! codegen units, and these calls could be inlined when they all lived in one file.

use super::line_protocol::{self, FieldValue, Precision};
pub use super::mapped::{Mapped, Skip};
use super::payload;
pub use super::rules::Rule;
use crate::config::ConfigError;
use smallvec::SmallVec;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

pub use super::field_types::FieldTypes;
use super::field_types::Reconciled;
use super::rules::split_levels;
pub use super::rules::{compile_filter, NonNumeric, RuleConfig, DEFAULT_MEASUREMENT};
pub use super::timestamp::{parse_timestamp_str, TimestampUnit};

/// The compiled mapping: exclusions, rules in order, and the default rule.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub(super) exclude: Vec<Rule>,
    pub(super) rules: Vec<Rule>,
    pub(super) default: Rule,
    pub(super) precision: Precision,
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

    /// Line protocol the broker wrote itself (`Sink::submit_lines`): checked and appended as
    /// it is, whatever the rules say.
    pub fn own_lines(
        &self,
        lines: &[u8],
        at_ns: i64,
        types: &mut FieldTypes,
        out: &mut String,
    ) -> Result<Mapped, Skip> {
        let text = std::str::from_utf8(lines).map_err(|_| Skip::NotUtf8)?;
        match payload::passthrough(text, at_ns, self.precision, types, out) {
            Some(m) if m.lines == 0 => Err(Skip::TypeConflict),
            Some(m) => Ok(m),
            None => Err(Skip::UnparsedPayload),
        }
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
            match payload::passthrough(text, received_at_ns, self.precision, types, out) {
                Some(m) if m.lines == 0 => return Err(Skip::TypeConflict),
                Some(m) => return Ok(m),
                None => {}
            }
        }
        // Everything below borrows from the topic, payload, config and plan: one point costs a
        // few small allocations at most (this runs for every publish).
        let measurement = measurement.as_ref();
        let mut fields = payload::Fields::new();
        let payload::Extras { unit, timestamp } = payload::parse(text, cfg, &mut fields)?;
        // A tag the payload adds (a number's unit) besides those of the topic.
        let payload_tag = unit.map(|u| ("unit", u));
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

/// Its helpers (`rule`, `mapping`, `map`) also serve the tests of `rules.rs`.
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
    pub(super) plans: Vec<Option<TopicPlan>>,
    /// Publishes mapped without a plan since the cache filled up.
    not_kept: usize,
}

/// Topics remembered at most.
pub(super) const MAX_TOPIC_PLANS: usize = 10_000;
/// Longer topics are not remembered (an entry holds the topic about three times: key, tag and
/// series key), so the cache stays within a few tens of MB whatever clients publish.
pub(super) const MAX_PLANNED_TOPIC_LEN: usize = 256;

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
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::sink::line_protocol::FieldType;

    pub(in crate::sink) fn rule(topic: &str) -> RuleConfig {
        RuleConfig {
            topic: topic.into(),
            ..RuleConfig::default()
        }
    }

    pub(in crate::sink) fn mapping(rules: Vec<RuleConfig>) -> Mapping {
        Mapping::new(
            &["$SYS/#".to_string()],
            &rules,
            &RuleConfig::default(),
            Precision::Ns,
        )
        .unwrap()
    }

    /// `map` without a plan remembered: what a topic maps to from scratch.
    pub(in crate::sink) fn map(m: &Mapping, topic: &str, payload: &str) -> Result<String, Skip> {
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

/// The topic-plan cache (`TopicPlans`).
#[cfg(test)]
mod topic_plan_tests {
    use super::tests::{map, mapping, rule};
    use super::*;

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
