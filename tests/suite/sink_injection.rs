//! No publisher can inject into or poison the InfluxDB sink (issue 23, findings 1 and 2).
//!
//! - `line_protocol_fuzz` / `mapping_fuzz`: every line the encoder writes, from arbitrary
//!   names, topics, JSON keys, string values and units, is read by influxd's scanner (the port in
//!   `sink::line_scan`) as exactly one line with the measurement, tags and fields given to it,
//!   after the documented replacements (`expected_name` below states them independently).
//! - `line_scan_reads_lines_as_real_influxd_does`: the port against a real influxd 1.6, on
//!   hostile encoder output and on the old encoder's injected batch.
//! - the MQTT tests: the issue's three injection vectors and its poisoned batch, end to end
//!   through the real broker into a real influxd; and a point influxd refuses inside a batch is
//!   counted, named in the log, and costs no other point.

use crate::common;
use crate::common::influx;
use crate::common::ops as ops_support;

use common::client::MqttClient;
use common::Broker;
use influx::Influx;
use mqflux::sink::line_protocol::{encode_line, FieldValue, Precision};
use mqflux::sink::line_scan::{blocks, scan_point, ScannedPoint, ScannedValue};
use mqflux::sink::mapping::{FieldTypes, Mapping, TopicPlans};
use mqflux::sink::RuleConfig;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// xorshift64: a fixed seed, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A short string, mostly of the characters line protocol treats specially.
    fn text(&mut self, max_len: usize) -> String {
        const ALPHABET: &[char] = &[
            '\\', '\\', '\\', ',', '=', ' ', '"', '\n', '\r', '\t', '\0', '#', '\'', 'a', 'b', 'é',
            '✓', '/', '{', '}',
        ];
        let len = self.below(max_len + 1);
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())])
            .collect()
    }

    fn value(&mut self) -> FieldValue {
        match self.below(4) {
            0 => FieldValue::Float((self.next() % 2001) as f64 / 8.0 - 125.0),
            1 => FieldValue::Integer(self.next() as i64 >> 8),
            2 => FieldValue::Bool(self.below(2) == 0),
            _ => FieldValue::Str(self.text(12)),
        }
    }
}

/// The name influxd stores for `s`, by the rule the README and `line_protocol`'s doc state:
/// newline, CR, tab and NUL become spaces; a run of backslashes directly before `,` `=` `"` or
/// a space, or at the end, is dropped; everything else is kept.
fn expected_name(s: &str) -> String {
    let chars: Vec<char> = s
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t' | '\0') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '\\' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j] == '\\' {
            j += 1;
        }
        if chars
            .get(j)
            .is_some_and(|c| !matches!(c, ',' | '=' | '"' | ' '))
        {
            out.extend(std::iter::repeat_n('\\', j - i));
        }
        i = j;
    }
    out
}

fn scanned(v: &FieldValue) -> ScannedValue {
    match v {
        FieldValue::Float(f) => ScannedValue::Float(*f),
        FieldValue::Integer(i) => ScannedValue::Integer(*i),
        FieldValue::Bool(b) => ScannedValue::Bool(*b),
        FieldValue::Str(s) => ScannedValue::Str(s.as_bytes().to_vec()),
    }
}

/// The point influxd must read for these parts: None when the encoder must not write it.
fn expected_point(
    measurement: &str,
    tags: &[(String, String)],
    fields: &[(String, FieldValue)],
    ts: i64,
) -> Option<ScannedPoint> {
    let m = expected_name(measurement);
    if m.is_empty() || m.starts_with('#') {
        return None;
    }
    let mut out_tags: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (k, v) in tags {
        let (k, v) = (expected_name(k), expected_name(v));
        if k.is_empty() || v.is_empty() || out_tags.iter().any(|(ok, _)| ok == k.as_bytes()) {
            continue;
        }
        out_tags.push((k.into_bytes(), v.into_bytes()));
    }
    out_tags.sort();
    let mut out_fields: Vec<(Vec<u8>, ScannedValue)> = Vec::new();
    for (k, v) in fields {
        let k = expected_name(k);
        if k.is_empty() || out_fields.iter().any(|(ok, _)| ok == k.as_bytes()) {
            continue;
        }
        out_fields.push((k.into_bytes(), scanned(v)));
    }
    if out_fields.is_empty() {
        return None;
    }
    Some(ScannedPoint {
        measurement: m.into_bytes(),
        tags: out_tags,
        fields: out_fields,
        timestamp: Some(ts),
    })
}

fn sorted_tags(mut p: ScannedPoint) -> ScannedPoint {
    p.tags.sort();
    p
}

/// Check that `line` (one encoded line with its newline) reads back as `want`.
fn assert_reads_as(line: &str, want: &ScannedPoint) {
    let b = blocks(line.as_bytes());
    assert_eq!(b.len(), 1, "not one line: {line:?} -> {b:?}");
    assert_eq!(b[0], line.trim_end_matches('\n').as_bytes(), "{line:?}");
    let got = scan_point(b[0]).unwrap_or_else(|e| panic!("{line:?} does not parse: {e}"));
    assert_eq!(&sorted_tags(got), want, "{line:?}");
}

#[test]
fn line_protocol_fuzz() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut batch = String::new();
    let mut lines = 0;
    for n in 0..200_000 {
        let measurement = rng.text(6);
        let tags: Vec<(String, String)> = (0..rng.below(4))
            .map(|_| (rng.text(5), rng.text(5)))
            .collect();
        let fields: Vec<(String, FieldValue)> = (0..1 + rng.below(3))
            .map(|_| (rng.text(5), rng.value()))
            .collect();
        let ts = n as i64 * 1_000 - 7;
        let tag_refs: Vec<(&str, &str)> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let field_refs: Vec<(&str, &FieldValue)> =
            fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut line = String::new();
        let written = encode_line(
            &mut line,
            Precision::Ns,
            &measurement,
            &tag_refs,
            &field_refs,
            ts,
        );
        match expected_point(&measurement, &tags, &fields, ts) {
            None => assert!(!written, "wrote {line:?} for {measurement:?} {fields:?}"),
            Some(want) => {
                assert!(
                    written,
                    "nothing written for {measurement:?} {tags:?} {fields:?}"
                );
                assert_reads_as(&line, &want);
                if n % 50 == 0 {
                    batch.push_str(&line);
                    lines += 1;
                }
            }
        }
    }
    // Lines joined into one batch stay apart.
    assert_eq!(blocks(batch.as_bytes()).len(), lines);
}

#[test]
fn mapping_fuzz() {
    let rule = RuleConfig {
        topic: "sensors/{device}/{measurement}".into(),
        ..RuleConfig::default()
    };
    let mapping =
        Mapping::new(&[], &[rule], &RuleConfig::default(), Precision::Ns).expect("mapping");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut plans = TopicPlans::default();
    for n in 0..50_000 {
        // Fresh each time: a field's type learnt from an earlier point would convert the value.
        let mut types = FieldTypes::default();
        // MQTT topics hold no `+`, `#` or NUL [MQTT-4.7.1-1, MQTT-1.5.4-2].
        let level = |rng: &mut Rng| -> String {
            let t = rng.text(5);
            let t = t.replace(['#', '\0', '/'], "x");
            if t.is_empty() {
                "e".into()
            } else {
                t
            }
        };
        let (topic, measurement, mut tags) = if rng.below(2) == 0 {
            let (device, m) = (level(&mut rng), level(&mut rng));
            let topic = format!("sensors/{device}/{m}");
            let tags = vec![
                ("device".to_string(), device),
                ("topic".into(), topic.clone()),
            ];
            (topic, m, tags)
        } else {
            let topic = format!("x/{}", level(&mut rng));
            (
                topic.clone(),
                "mqtt".to_string(),
                vec![("topic".into(), topic)],
            )
        };
        let ts = 1_700_000_000_000_000_000 + n;
        let (payload, fields): (String, Vec<(String, FieldValue)>) = match rng.below(3) {
            0 => {
                // JSON object: arbitrary keys and string values.
                let mut obj = serde_json::Map::new();
                let mut fields = Vec::new();
                for _ in 0..1 + rng.below(3) {
                    let k = rng.text(5);
                    if k.is_empty() || k.contains('.') || obj.contains_key(&k) {
                        continue;
                    }
                    let v = rng.text(10);
                    obj.insert(k.clone(), Value::String(v.clone()));
                    fields.push((k, FieldValue::Str(v)));
                }
                if fields.is_empty() {
                    continue;
                }
                // serde_json's map is sorted by key: the fields come out in that order.
                fields.sort_by(|a, b| a.0.cmp(&b.0));
                (Value::Object(obj).to_string(), fields)
            }
            1 => {
                // A number with a unit: the unit becomes a tag.
                let unit: String = rng
                    .text(6)
                    .chars()
                    .filter(|c| !c.is_whitespace() && !c.is_control())
                    .collect();
                if unit.is_empty() || unit.starts_with(['.', 'e', 'E']) {
                    continue;
                }
                tags.push(("unit".into(), unit.clone()));
                (
                    format!("21.5{unit}"),
                    vec![("value".into(), FieldValue::Float(21.5))],
                )
            }
            _ => {
                // Any other text: a string field, newlines included.
                let t = format!("t{}", rng.text(12));
                (t.clone(), vec![("value".into(), FieldValue::Str(t))])
            }
        };
        let mut out = String::new();
        let mapped = mapping.map(
            &topic,
            payload.as_bytes(),
            ts,
            &mut types,
            &mut plans,
            &mut out,
        );
        match expected_point(&measurement, &tags, &fields, ts) {
            None => assert!(
                mapped.is_err() || out.is_empty(),
                "wrote {out:?} for {topic:?} {payload:?}"
            ),
            Some(want) => {
                assert!(mapped.is_ok(), "{topic:?} {payload:?}: {mapped:?}");
                assert_reads_as(&out, &want);
            }
        }
    }
}

/// Every point of a database: (measurement, tags, fields without nulls, time).
type StoredPoint = (
    String,
    BTreeMap<String, String>,
    BTreeMap<String, Value>,
    i64,
);

/// A regex matching exactly `name`, for `FROM /.../` (a quoted identifier would need its own
/// escaping; `SELECT * FROM /.*/` misses some measurements, e.g. `m "=`, in influxd 1.6.7).
fn name_regex(name: &str) -> String {
    let mut r = String::from("^");
    for c in name.chars() {
        match c {
            ' ' => r.push_str("[ ]"),
            '/' => r.push_str("\\/"),
            c if c.is_ascii_punctuation() => {
                r.push('\\');
                r.push(c);
            }
            c => r.push(c),
        }
    }
    r.push('$');
    r
}

fn all_points(influx: &Influx, db: &str) -> Vec<StoredPoint> {
    let mut out = Vec::new();
    for m in influx.measurements(db) {
        out.extend(points_of(influx, db, &m));
    }
    out.sort_by_key(|p| p.3);
    out
}

fn points_of(influx: &Influx, db: &str, measurement: &str) -> Vec<StoredPoint> {
    let q = format!("SELECT * FROM /{}/ GROUP BY *", name_regex(measurement));
    let v = influx.query(db, &q);
    let mut out = Vec::new();
    for s in v["results"][0]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        let tags: BTreeMap<String, String> = s["tags"]
            .as_object()
            .map(|t| {
                t.iter()
                    .filter(|(_, v)| v.as_str().is_some_and(|v| !v.is_empty()))
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let columns: Vec<String> = s["columns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| c.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        for row in s["values"].as_array().cloned().unwrap_or_default() {
            let row = row.as_array().cloned().unwrap_or_default();
            let time = row.first().and_then(Value::as_i64).unwrap_or_default();
            let fields = columns
                .iter()
                .zip(&row)
                .skip(1)
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), number_as_f64(v)))
                .collect();
            out.push((name.clone(), tags.clone(), fields, time));
        }
    }
    out
}

/// JSON numbers as f64: influxd answers 3 for the float 3.0.
fn number_as_f64(v: &Value) -> Value {
    v.as_f64()
        .map_or_else(|| v.clone(), |f| serde_json::json!(f))
}

fn stored(p: &ScannedPoint) -> StoredPoint {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8");
    (
        text(&p.measurement),
        p.tags.iter().map(|(k, v)| (text(k), text(v))).collect(),
        p.fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ScannedValue::Float(f) => serde_json::json!(f),
                    ScannedValue::Integer(i) => serde_json::json!(*i as f64),
                    ScannedValue::Bool(b) => serde_json::json!(b),
                    ScannedValue::Str(s) => serde_json::json!(text(s)),
                };
                (text(k), v)
            })
            .collect(),
        p.timestamp.unwrap_or_default(),
    )
}

#[test]
fn line_scan_reads_lines_as_real_influxd_does() {
    let influx = Influx::start();
    influx.create_database("scan");
    // Hostile encoder output: each point has its own time and field keys (no type conflicts,
    // and InfluxQL's column names stay apart from the tag keys).
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut batch = String::new();
    let mut want = Vec::new();
    while want.len() < 300 {
        let i = want.len();
        let measurement = rng.text(6);
        let tags: Vec<(String, String)> = (0..rng.below(3))
            .map(|_| (format!("t{}", rng.text(4)), rng.text(5)))
            .collect();
        let fields: Vec<(String, FieldValue)> = (0..1 + rng.below(2))
            .map(|_| (format!("f{i}{}", rng.text(4)), rng.value()))
            .map(|(k, v)| match v {
                // JSON carries floats as they are; keep integers apart from them in the check.
                FieldValue::Integer(n) => (k, FieldValue::Integer(n >> 12)),
                v => (k, v),
            })
            .collect();
        let ts = 1_000 + i as i64;
        let tag_refs: Vec<(&str, &str)> =
            tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let field_refs: Vec<(&str, &FieldValue)> =
            fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut line = String::new();
        if !encode_line(
            &mut line,
            Precision::Ns,
            &measurement,
            &tag_refs,
            &field_refs,
            ts,
        ) {
            continue;
        }
        let block = blocks(line.as_bytes());
        assert_eq!(block.len(), 1, "{line:?}");
        want.push(stored(&sorted_tags(scan_point(block[0]).expect("parses"))));
        batch.push_str(&line);
    }
    let (status, body) = influx.write("scan", &batch);
    assert_eq!(
        status, 204,
        "influxd refused hostile encoder output: {body}"
    );
    let got = all_points(&influx, "scan");
    if got.len() != want.len() {
        for w in &want {
            if !got.contains(w) {
                eprintln!("MISSING {w:?}");
            }
        }
        eprintln!("MEASUREMENTS {:?}", influx.measurements("scan"));
    }
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "influxd stored another point than line_scan reads");
    }

    // Lines the encoder does not write (backslash runs, quotes in names, number forms, bad
    // values): influxd refuses what the port refuses and stores what the port reads.
    influx.create_database("hand");
    let hand = [
        "h1,t=a\\\\\\ b,u=x\\\"y f\\\\\\,k=1,g\\\"h=\"s\\\\\\\"q\" 1",
        "h2,t=a\\b c=1i,d=T,e=-1.5e3 2",
        "h3 s=\"a\\\\b\\\"c\nd\" 3",
        "h4 k\\\\\\\\=1 4",
        "h5,t=a\\\\ v=1 5",
        "h6 v=1u 6",
        "h8 \"a\"=1 8",
        "h9,t=\"x\" v=\"a b\",w=FALSE 9",
        "h10,t=a\\\\\\,b\\=c v=1 10",
        "h11 v=1 -5",
    ];
    let mut want = Vec::new();
    for line in hand {
        let (status, body) = influx.write("hand", line);
        match scan_point(line.as_bytes()) {
            Ok(p) => {
                assert_eq!(status, 204, "{line:?}: {body}");
                want.push(stored(&sorted_tags(p)));
            }
            Err(e) => assert_eq!(status, 400, "{line:?} ({e}) was taken: {body}"),
        }
    }
    want.sort_by_key(|p| p.3);
    assert_eq!(all_points(&influx, "hand"), want);

    // The old encoder's output for the issue's second vector (tag value `inj/\ \="`): influxd
    // splits it where the port does and stores what the port reads from each piece.
    influx.create_database("old");
    let old = "mqtt,topic=inj/\\\\ \\\\=\" note=\"x\nevil2 value=666 5\n\" 5\nok v=1 6\n";
    let pieces = blocks(old.as_bytes());
    assert_eq!(pieces.len(), 4, "{pieces:?}");
    let readable: Vec<StoredPoint> = pieces
        .iter()
        .filter_map(|b| scan_point(b).ok())
        .map(|p| stored(&sorted_tags(p)))
        .collect();
    assert_eq!(
        readable.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["evil2", "ok"]
    );
    let (status, body) = influx.write("old", old);
    assert_eq!(status, 400, "{body}");
    assert_eq!(all_points(&influx, "old"), readable);
}

fn sink_config(influx: &Influx, db: &str, spool: &Path, extra: &str) -> String {
    let head = ops_support::sink_config_head(&influx.url(), db, spool);
    format!(
        r#"{head}retry_initial_ms = 20
retry_max_ms = 300
timeout_secs = 5
{extra}

[[sink.rules]]
topic = "sensors/{{device}}/{{measurement}}"
"#
    )
}

#[test]
fn injection_vectors_store_one_point_each_with_the_hostile_text_as_data() {
    let influx = Influx::start();
    influx.create_database("inj");
    // The victim series the payloads try to overwrite.
    let victim_ts = 1_600_000_000_000_000_000i64;
    let (status, body) = influx.write("inj", &format!("victim,topic=v value=21.5 {victim_ts}\n"));
    assert_eq!(status, 204, "{body}");
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&sink_config(
        &influx,
        "inj",
        spool.path(),
        "flush_interval_ms = 50",
    ));
    let mut c = MqttClient::connect(&broker, "inj-pub");

    let note1 = format!("x\nevil,src=json value=666\nvictim,topic=v value=666 {victim_ts}\n");
    let payload1 = serde_json::json!({"a\\=": 1, "b\"c": note1}).to_string();
    c.publish("inj/json", 1, false, payload1.as_bytes());
    c.publish(
        "inj/\\ \\=\"",
        1,
        false,
        br#"{"note":"x\nevil2 value=666\n"}"#,
    );
    c.publish("sensors/dev/m\\ \"=", 1, false, b"x\nevil3 value=666\n");
    // Backslashes before ordinary characters are kept exactly.
    c.publish(
        "rt/C:\\temp\\x",
        1,
        false,
        b"{\"k\\\\ey\": \"C:\\\\t \\\"q\\\"\"}",
    );

    assert!(
        influx.wait_until(WAIT, || all_points(&influx, "inj").len() >= 5),
        "points missing: {:?}",
        all_points(&influx, "inj"),
    );
    let points = all_points(&influx, "inj");
    let mut names: Vec<&str> = points.iter().map(|p| p.0.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names, ["m \"=", "mqtt", "victim"], "{points:#?}");
    assert_eq!(points.len(), 5, "{points:#?}");
    let find = |topic: &str| {
        points
            .iter()
            .find(|p| p.1.get("topic").map(String::as_str) == Some(topic))
            .unwrap_or_else(|| panic!("no point with topic {topic:?}: {points:#?}"))
    };
    // Vector 1: JSON keys `a\=` (the odd backslash before `=` is dropped) and `b"c`.
    let p = find("inj/json");
    assert_eq!(p.0, "mqtt");
    assert_eq!(p.2["a="], serde_json::json!(1.0));
    assert_eq!(p.2["b\"c"], serde_json::json!(note1));
    // Vector 2: the topic tag keeps the text, less the backslashes before the separators.
    let p = find("inj/ =\"");
    assert_eq!(p.2["note"], serde_json::json!("x\nevil2 value=666\n"));
    // Vector 3: measurement from the topic level; the payload is a string value as published.
    let p = find("sensors/dev/m \"=");
    assert_eq!((p.0.as_str(), p.1["device"].as_str()), ("m \"=", "dev"));
    assert_eq!(p.2["value"], serde_json::json!("x\nevil3 value=666\n"));
    // Round trip: tags and fields as published.
    let p = find("rt/C:\\temp\\x");
    assert_eq!(p.2["k\\ey"], serde_json::json!("C:\\t \"q\""));
    // The victim series keeps its value.
    let v = points.iter().find(|p| p.0 == "victim").unwrap();
    assert_eq!(
        (v.2["value"].clone(), v.3),
        (serde_json::json!(21.5), victim_ts)
    );
}

/// Config for tests that need all their publishes in one write: the batch ends at `n` points.
fn one_batch(n: usize) -> String {
    format!("batch_size = {n}\nflush_interval_ms = 10000\nidle_flush_ms = 0")
}

#[test]
fn poisoned_topic_in_a_batch_costs_no_other_point() {
    // Issue 23 finding 2: 200 good points and one on `poison/\ \="` in one write.
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&sink_config(
        &influx,
        "poison",
        spool.path(),
        &one_batch(201),
    ));
    let mut c = MqttClient::connect(&broker, "poison-pub");
    for i in 0..100 {
        c.publish(&format!("good/{i}"), 0, false, b"1");
    }
    c.publish("poison/\\ \\=\"", 0, false, b"5");
    for i in 100..200 {
        c.publish(&format!("good/{i}"), 0, false, b"1");
    }
    assert!(
        influx.wait_until(WAIT, || influx.count("poison", "mqtt", "value") == 201),
        "stored {} of 201 points",
        influx.count("poison", "mqtt", "value")
    );
    let points = all_points(&influx, "poison");
    assert!(
        points.iter().any(|p| p.1["topic"] == "poison/ =\""),
        "{points:?}"
    );
}

#[test]
fn points_influxd_refuses_in_a_batch_are_counted_and_named_and_the_rest_stored() {
    // Two points influxd 1.6 refuses: one whose only field is `time` (the storage drops it and
    // answers `partial write: ... dropped=1` without saying which line it was), and one whose
    // series key is longer than 65535 bytes (`unable to parse '<line>': max key length
    // exceeded`, which names it).
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = Broker::with_config(&sink_config(
        &influx,
        "refuse",
        spool.path(),
        &one_batch(202),
    ));
    let addr = ops_support::metrics_addr(&broker);
    let mut options = common::client::options(&broker, "refuse-pub");
    options.set_max_packet_size(200_000, 200_000);
    let mut c = MqttClient::connect_with(options);
    for i in 0..100 {
        c.publish(&format!("good/{i}"), 0, false, b"1");
    }
    c.publish("bad/only-time", 0, false, br#"{"time": 5}"#);
    let long = format!("long/{}", "l".repeat(65_530));
    c.publish(&long, 0, false, b"2");
    for i in 100..200 {
        c.publish(&format!("good/{i}"), 0, false, b"1");
    }
    broker.wait_for_log(&["dropped: ", "bad/only-time"]);
    broker.wait_for_log(&["dropped: ", "topic=long/lll"]);
    assert!(
        influx.wait_until(WAIT, || influx.count("refuse", "mqtt", "value") == 200),
        "stored {} of 200 good points",
        influx.count("refuse", "mqtt", "value")
    );
    // The sender counts once it has the last answer: wait for it.
    let counted = common::eventually(WAIT, || {
        let m = ops_support::scrape(addr);
        let written = m["mqflux_sink_points_written_total"];
        (written >= 200.0).then_some((
            m["mqflux_sink_points_dropped_total{reason=\"rejected\"}"],
            written,
        ))
    });
    assert_eq!(counted, Some((2.0, 200.0)));
}
