//! `[sink]` configuration: every key, its default, and the range checks whose errors name the
//! file and the `sink.*` key.

use super::line_protocol::Precision;
use super::mapping::{self, RuleConfig};
use crate::config::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What to do when the spool has reached `spool_max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpoolFull {
    /// Delete the oldest spooled batch (counted as dropped, reason `spool_full`) and log it.
    #[default]
    DropOldest,
    /// Stop taking publishes until there is room again (publishers block).
    Backpressure,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Store publishes in InfluxDB.
    pub enabled: bool,
    /// InfluxDB base URL (1.x, or 2.x/3.x whose 1.x-compatible /write is used).
    pub url: String,
    /// Database (1.x) or database/bucket mapped by DBRP (2.x/3.x).
    pub database: String,
    /// Retention policy; empty: the database's default.
    pub retention_policy: String,
    /// Timestamp precision written: "ns", "us", "ms" or "s".
    pub precision: Precision,
    /// InfluxDB 1.x user (sent as HTTP Basic auth).
    pub username: String,
    pub password: String,
    /// InfluxDB 2.x/3.x API token (`Authorization: Token ...`); excludes username/password.
    pub token: String,
    /// Send `CREATE DATABASE` at start-up (harmless when it exists; needs admin rights).
    pub create_database: bool,
    /// Points per write request.
    pub batch_size: usize,
    /// A non-empty batch is written at the latest this long after its first point.
    pub flush_interval_ms: u64,
    /// A partial batch is written already this long after its first point when the sender is
    /// idle and no publish is queued (InfluxDB need not wait for the batch to fill); 0: only
    /// `batch_size` and `flush_interval_ms` end a batch.
    pub idle_flush_ms: u64,
    /// Compress write requests.
    pub gzip: bool,
    /// Timeout of one HTTP request.
    pub timeout_secs: u64,
    /// First retry delay after a failed write; doubles up to `retry_max_ms` (with jitter).
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Publishes buffered between the broker and the batcher (about: connection threads add
    /// theirs a chunk at a time); `submit` blocks beyond it.
    pub queue_capacity: usize,
    /// Directory of the on-disk spool (created if missing).
    pub spool_dir: PathBuf,
    /// Largest spool size on disk.
    pub spool_max_bytes: u64,
    pub spool_full: SpoolFull,
    /// At shutdown, how long to keep writing buffered points before leaving them in the spool.
    pub shutdown_timeout_secs: u64,
    /// Topic filters never stored.
    pub exclude: Vec<String>,
    /// Mapping rules; the first whose topic matches applies.
    pub rules: Vec<RuleConfig>,
    /// The rule for topics no rule matches.
    pub default: RuleConfig,
    /// Write the broker's own load to InfluxDB (measurement `self_metrics_measurement`) every
    /// `self_metrics_interval_secs`: per topic prefix the messages and bytes per minute, and
    /// broker-wide connections, messages, bytes, sink points and bytes per minute, spool size.
    pub self_metrics: bool,
    pub self_metrics_interval_secs: u64,
    /// Topic levels that make a prefix (1: `sensors/a/b` counts under `sensors`).
    pub self_metrics_prefix_depth: usize,
    /// Prefixes counted apart at most; later ones are counted under `(other)`.
    pub self_metrics_max_prefixes: usize,
    pub self_metrics_measurement: String,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            enabled: false,
            url: "http://127.0.0.1:8086".into(),
            database: "mqtt_data".into(),
            retention_policy: String::new(),
            precision: Precision::Ns,
            username: String::new(),
            password: String::new(),
            token: String::new(),
            create_database: true,
            batch_size: 5000,
            flush_interval_ms: 1000,
            idle_flush_ms: 5,
            gzip: false,
            timeout_secs: 10,
            retry_initial_ms: 100,
            retry_max_ms: 30_000,
            queue_capacity: 100_000,
            spool_dir: PathBuf::from("/var/lib/mqflux/spool"),
            spool_max_bytes: 1 << 30,
            spool_full: SpoolFull::DropOldest,
            shutdown_timeout_secs: 10,
            exclude: vec!["$SYS/#".into()],
            rules: Vec::new(),
            default: RuleConfig::default(),
            self_metrics: false,
            self_metrics_interval_secs: 60,
            self_metrics_prefix_depth: 1,
            self_metrics_max_prefixes: 100,
            self_metrics_measurement: "mqflux_self".into(),
        }
    }
}

/// Smallest accepted `spool_max_bytes`.
const MIN_SPOOL_BYTES: u64 = 64 * 1024;

impl SinkConfig {
    /// Range checks; every error names `path` and the `sink.*` key.
    pub fn validate(&self, path: &Path) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                key: format!("sink.{key}"),
                message,
            })
        };
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.len() < 10
        {
            bad(
                "url",
                format!(
                    "expected an http:// or https:// URL like \"http://127.0.0.1:8086\", got {:?}",
                    self.url
                ),
            );
        }
        if self.database.is_empty() {
            bad(
                "database",
                "expected a database name, got an empty string".into(),
            );
        }
        if !self.token.is_empty() && !self.username.is_empty() {
            bad("token", "expected either `token` (InfluxDB 2.x/3.x) or `username`/`password` (1.x), not both".into());
        }
        if !self.password.is_empty() && self.username.is_empty() {
            bad(
                "password",
                "expected `username` as well when `password` is set".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.batch_size) {
            bad(
                "batch_size",
                format!("expected 1 to 1000000 points, got {}", self.batch_size),
            );
        }
        if self.flush_interval_ms == 0 {
            bad("flush_interval_ms", "expected at least 1 ms, got 0".into());
        }
        if self.timeout_secs == 0 {
            bad("timeout_secs", "expected at least 1 second, got 0".into());
        }
        if self.retry_initial_ms == 0 {
            bad("retry_initial_ms", "expected at least 1 ms, got 0".into());
        }
        if self.retry_max_ms < self.retry_initial_ms {
            bad(
                "retry_max_ms",
                format!(
                    "expected at least retry_initial_ms ({}), got {}",
                    self.retry_initial_ms, self.retry_max_ms
                ),
            );
        }
        if self.queue_capacity == 0 {
            bad("queue_capacity", "expected at least 1, got 0".into());
        }
        if self.spool_dir.as_os_str().is_empty() {
            bad(
                "spool_dir",
                "expected a directory path, got an empty string".into(),
            );
        }
        if self.spool_max_bytes < MIN_SPOOL_BYTES {
            bad(
                "spool_max_bytes",
                format!(
                    "expected at least {MIN_SPOOL_BYTES} bytes, got {}",
                    self.spool_max_bytes
                ),
            );
        }
        if !(1..=3600).contains(&self.self_metrics_interval_secs) {
            bad(
                "self_metrics_interval_secs",
                format!(
                    "expected 1 to 3600 seconds, got {}",
                    self.self_metrics_interval_secs
                ),
            );
        }
        if !(1..=16).contains(&self.self_metrics_prefix_depth) {
            bad(
                "self_metrics_prefix_depth",
                format!(
                    "expected 1 to 16 topic levels, got {}",
                    self.self_metrics_prefix_depth
                ),
            );
        }
        if !(1..=10_000).contains(&self.self_metrics_max_prefixes) {
            bad(
                "self_metrics_max_prefixes",
                format!(
                    "expected 1 to 10000 prefixes, got {}",
                    self.self_metrics_max_prefixes
                ),
            );
        }
        if self.self_metrics_measurement.is_empty()
            || self.self_metrics_measurement.starts_with('_')
            || self
                .self_metrics_measurement
                .contains(|c: char| c.is_whitespace() || c == ',' || c == '"')
        {
            bad(
                "self_metrics_measurement",
                format!(
                    "expected a measurement name without spaces, commas or quotes, not starting \
                     with `_`, got {:?}",
                    self.self_metrics_measurement
                ),
            );
        }
        errors.extend(mapping::validate(
            path,
            &self.exclude,
            &self.rules,
            &self.default,
            self.precision,
        ));
        errors
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    #[test]
    fn example_config_parses_and_validates_with_defaults() {
        let text = include_str!("../../config.example.toml");
        let c = Config::parse(text, Path::new("config.example.toml")).unwrap();
        c.validate(Path::new("config.example.toml")).unwrap();
        let d = super::SinkConfig::default();
        assert_eq!(
            (
                c.sink.database.as_str(),
                c.sink.batch_size,
                c.sink.flush_interval_ms
            ),
            ("mqtt_data", 5000, 1000)
        );
        assert_eq!(
            (d.spool_max_bytes, &d.exclude),
            (c.sink.spool_max_bytes, &c.sink.exclude)
        );
    }

    #[test]
    fn sink_errors_name_file_dotted_key_and_expectation() {
        let text = r#"
[sink]
url = "localhost:8086"
batch_size = 0
token = "t"
username = "u"
[[sink.rules]]
topic = "a/#"
[[sink.rules]]
topic = "b/{x}"
measurement = "{y}"
[[sink.rules]]
topic = "c/#/d"
"#;
        let c = Config::parse(text, Path::new("m.toml")).unwrap();
        let errs = c.validate(Path::new("m.toml")).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sink.url",
                "sink.token",
                "sink.batch_size",
                "sink.rules[1].measurement",
                "sink.rules[2].topic"
            ]
        );
        let text = errs[4].to_string();
        assert!(
            text.starts_with("m.toml: key `sink.rules[2].topic`: `#` must be the last level"),
            "{text}"
        );
        assert!(
            errs[0]
                .to_string()
                .contains("expected an http:// or https:// URL"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn unknown_sink_keys_and_bad_enum_values_are_rejected_with_their_key() {
        let e = Config::parse(
            "[sink]\nspool_full = \"drop_newest\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert_eq!(e.key, "sink.spool_full");
        assert!(e.message.contains("drop_oldest"), "{}", e.message);
        let e = Config::parse(
            "[[sink.rules]]\ntopic = \"a\"\nmeasurment = \"m\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `measurment`"), "{e}");
    }
}
