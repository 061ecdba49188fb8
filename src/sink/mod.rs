//! InfluxDB sink: the router hands every accepted PUBLISH to `Sink::submit`; the points end up
//! in InfluxDB, in order, none lost and none twice (as far as InfluxDB's own answers allow).
//!
//! Data flow (one direction, two threads):
//!
//! ```text
//! submit() --records (bounded; blocks when full)--> sink-batcher: mapping.rs + line_protocol.rs,
//!     batches by size/time --batches (2 in memory)--> sink-sender: http.rs POST /write
//!                   \--(sender busy or spool non-empty)--> spool.rs on disk --replayed by--/
//! ```
//!
//! The sender takes the in-memory batches first (they are older than anything spooled), then the
//! spool. A batch that cannot be written (InfluxDB down, 5xx, timeout) goes to the front of the
//! spool and is retried with exponential backoff and jitter. A batch InfluxDB refuses in part
//! is checked against its answer, line by line (`line_scan.rs` reads a batch as influxd does);
//! what the answer does not account for is sent again in halves, as a point written twice is
//! stored once.
//!
//! With sync persistence, a QoS 1/2 publish is also kept in the broker's journal from before it
//! is acknowledged until its batch has left memory, and written again after a crash
//! (`durable.rs`, `submit_acknowledged`).

mod batcher;
mod durable;
mod field_types;
mod handoff;
pub mod http;
pub mod line_protocol;
pub mod line_scan;
pub mod mapping;
mod payload;
mod rules;
mod sender;
pub mod spool;
mod timestamp;
mod writer;

use crate::config::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub(crate) use handoff::{end_batching, flush_batched, start_batching};
pub use line_protocol::Precision;
pub use mapping::{NonNumeric, RuleConfig, TimestampUnit};

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

/// One accepted PUBLISH as the sink sees it (borrowed: `Sink::submit` copies what it keeps).
#[derive(Debug, Clone, Copy)]
pub struct SinkRecord<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Broker receive time, nanoseconds since the Unix epoch.
    pub received_at_ns: i64,
}

/// Why points were dropped. Each has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Empty payload (e.g. clearing a retained message).
    EmptyPayload,
    /// Payload is not UTF-8 text.
    NotUtf8,
    /// Not JSON/number/line protocol and the rule says `non_numeric = "skip"`.
    UnparsedPayload,
    /// Nothing storable in the payload (`{}`, `null`, ...).
    NoFields,
    /// Every field conflicted with the type the database has.
    TypeConflict,
    /// InfluxDB refused the point (400/422: bad line, type conflict it reported).
    Rejected,
    /// A single point larger than the server's request size limit (413).
    TooLarge,
    /// Deleted from a full spool (`spool_full = "drop_oldest"`), or a batch larger than the spool.
    SpoolFull,
    /// Could not be written to or read from the spool (disk error).
    SpoolIo,
    /// Submitted after the writer stopped.
    Stopped,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::EmptyPayload,
        DropReason::NotUtf8,
        DropReason::UnparsedPayload,
        DropReason::NoFields,
        DropReason::TypeConflict,
        DropReason::Rejected,
        DropReason::TooLarge,
        DropReason::SpoolFull,
        DropReason::SpoolIo,
        DropReason::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::EmptyPayload => "empty_payload",
            DropReason::NotUtf8 => "not_utf8",
            DropReason::UnparsedPayload => "unparsed_payload",
            DropReason::NoFields => "no_fields",
            DropReason::TypeConflict => "type_conflict",
            DropReason::Rejected => "rejected",
            DropReason::TooLarge => "too_large",
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolIo => "spool_io",
            DropReason::Stopped => "stopped",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Live counters, shared by the sink's threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Counted by the publishing threads, the rest mostly by the batcher: on a cache line of its
    /// own, so that the two do not take the same line from each other for every publish.
    received: crossbeam_utils::CachePadded<AtomicU64>,
    excluded: AtomicU64,
    queued: AtomicU64,
    written: AtomicU64,
    retried: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    conflicting_fields: AtomicU64,
    write_requests: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    spool_points: AtomicU64,
    spool_bytes: AtomicU64,
    /// Why the sink cannot write: the last write failed, or InfluxDB has not been reachable
    /// since start-up. None once a write succeeds or InfluxDB answers.
    last_error: std::sync::Mutex<Option<String>>,
    /// The sender has created the database (if configured) and learnt its field types.
    prepared: std::sync::atomic::AtomicBool,
}

impl Counters {
    fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn drop_points(&self, reason: DropReason, n: usize) {
        Self::add(&self.dropped[reason.index()], n);
    }
    pub(crate) fn set_prepared(&self) {
        self.prepared.store(true, Ordering::Release);
    }
    pub(crate) fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }
}

/// A snapshot of the sink's counters (all counts are points unless said otherwise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Publishes handed to `submit`.
    pub received: u64,
    /// Publishes not stored by configuration (`exclude`, `store = false`).
    pub excluded: u64,
    /// Points encoded into batches.
    pub queued: u64,
    /// Points InfluxDB accepted.
    pub written: u64,
    /// Points whose write failed and was (or will be) tried again; once per failed attempt.
    pub retried: u64,
    /// Points written to the on-disk spool.
    pub spooled: u64,
    /// Points written to InfluxDB from the spool (included in `written`).
    pub replayed: u64,
    /// Fields converted or left out because the database has them with another type.
    pub conflicting_fields: u64,
    /// HTTP write requests sent.
    pub write_requests: u64,
    /// Points in the spool now, and its size in bytes.
    pub spool_points: u64,
    pub spool_bytes: u64,
    /// Dropped points by reason (`DropReason::as_str`), every reason listed.
    pub dropped: Vec<(&'static str, u64)>,
    /// Why the sink cannot write ("last write failed: ...", "InfluxDB not reachable ...");
    /// None once a write succeeded or InfluxDB answered.
    pub last_error: Option<String>,
    /// The database was created (if configured) and its field types learnt: from then on a
    /// type the sink has not seen can only come from a write error.
    pub prepared: bool,
}

impl SinkStats {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .iter()
            .find(|(r, _)| *r == reason.as_str())
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
}

impl Counters {
    fn snapshot(&self) -> SinkStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SinkStats {
            received: g(&self.received),
            excluded: g(&self.excluded),
            queued: g(&self.queued),
            written: g(&self.written),
            retried: g(&self.retried),
            spooled: g(&self.spooled),
            replayed: g(&self.replayed),
            conflicting_fields: g(&self.conflicting_fields),
            write_requests: g(&self.write_requests),
            spool_points: g(&self.spool_points),
            spool_bytes: g(&self.spool_bytes),
            dropped: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), g(&self.dropped[r.index()])))
                .collect(),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            prepared: self.prepared.load(Ordering::Acquire),
        }
    }
}

/// Handle to the writer threads. Cheap to share (`&Sink` from every connection thread).
pub struct Sink {
    writer: Option<Arc<writer::Writer>>,
    counters: Arc<Counters>,
}

impl Sink {
    /// Start the writer threads (or nothing, when disabled). Fails when the config is invalid or
    /// the spool directory cannot be opened. InfluxDB being unreachable is not an error: points
    /// are spooled until it answers.
    pub fn start(config: &SinkConfig) -> Result<Sink, String> {
        let counters = Arc::new(Counters::default());
        if !config.enabled {
            return Ok(Sink {
                writer: None,
                counters,
            });
        }
        let errors = config.validate(Path::new("<sink config>"));
        if !errors.is_empty() {
            return Err(errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "));
        }
        let writer = writer::Writer::start(config, counters.clone())?;
        Ok(Sink {
            writer: Some(Arc::new(writer)),
            counters,
        })
    }

    /// Hand one publish to the writer (a connection thread's are handed over together at its
    /// next flush, see `start_batching`). Blocks, applying backpressure to the publisher, rather
    /// than dropping when `queue_capacity` records are queued.
    pub fn submit(&self, record: SinkRecord) {
        if let Some(w) = &self.writer {
            w.submit(record, handoff::Journaled::No);
        }
    }

    /// Keep acknowledged records in `store` from now on when its mode is sync, and write again
    /// the records a previous run left there (`stored`: `Loaded::sink`). Call once, before any
    /// publish arrives.
    pub fn attach_store(
        &self,
        store: std::sync::Arc<crate::store::Store>,
        stored: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        match &self.writer {
            Some(w) => w.attach_store(store, stored),
            None if !stored.is_empty() => log::warn!(
                "sink: the store holds {} publishes not yet written to InfluxDB, but the sink \
                 is disabled; they are kept until it is enabled again",
                stored.len()
            ),
            None => {}
        }
    }

    /// `submit` for a QoS 1/2 publish about to be acknowledged: with sync persistence (and a
    /// topic the sink stores) it is put into the store with the other publishes of this
    /// thread's chunk when the chunk is handed over, which `flush_batched` does before the
    /// caller waits for `Store::wait_durable`; it is deleted once written (`durable.rs`).
    pub fn submit_acknowledged(&self, record: SinkRecord) {
        if let Some(w) = &self.writer {
            let journaled = if w.keeps_durably(record.topic) {
                handoff::Journaled::WithChunk
            } else {
                handoff::Journaled::No
            };
            w.submit(record, journaled);
        }
    }

    /// The store record that makes a QoS 1/2 publish durable for the sink, for a caller that
    /// must submit it inside an atomic record of its own (`Store::atomically`); then hand the
    /// publish over with `submit_durable`. None: no record needed (persistence not sync, sink
    /// off, or the topic is not stored).
    pub fn durable_put(&self, record: &SinkRecord) -> Option<(u64, crate::store::journal::Op)> {
        self.writer.as_ref()?.durable_put(record)
    }

    /// `submit` for a publish whose `durable_put` record (id `id`) was submitted to the store.
    pub fn submit_durable(&self, record: SinkRecord, id: u64) {
        if let Some(w) = &self.writer {
            w.submit(record, handoff::Journaled::Own(id));
        }
    }

    /// Whether publishes are stored at all.
    pub fn is_enabled(&self) -> bool {
        self.writer.is_some()
    }

    /// Counter snapshot.
    pub fn stats(&self) -> SinkStats {
        self.counters.snapshot()
    }

    /// Flush what is buffered and join the writer threads. Points InfluxDB does not take within
    /// `shutdown_timeout_secs` stay in the spool for the next start. Later `submit`s are counted
    /// as dropped (reason `stopped`). Idempotent; also done on drop.
    pub fn shutdown(&self) {
        if let Some(w) = &self.writer {
            w.shutdown();
        }
    }

    /// `shutdown`, then the final counters.
    pub fn shutdown_with_stats(&self) -> SinkStats {
        self.shutdown();
        self.counters.snapshot()
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
