//! The sink's counters: live atomics shared by its threads (`Counters`), the snapshot the
//! broker's `$SYS`, `/metrics` and `/health` read (`SinkStats`), and why points were dropped.

use std::sync::atomic::{AtomicU64, Ordering};

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
    pub(super) received: crossbeam_utils::CachePadded<AtomicU64>,
    pub(super) excluded: AtomicU64,
    pub(super) queued: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) retried: AtomicU64,
    pub(super) spooled: AtomicU64,
    pub(super) replayed: AtomicU64,
    pub(super) conflicting_fields: AtomicU64,
    pub(super) write_requests: AtomicU64,
    /// Line-protocol bytes encoded into batches (what the spool holds when InfluxDB is away).
    pub(super) queued_bytes: AtomicU64,
    pub(super) dropped: [AtomicU64; DropReason::ALL.len()],
    pub(super) spool_points: AtomicU64,
    pub(super) spool_bytes: AtomicU64,
    /// Why the sink cannot write: the last write failed, or InfluxDB has not been reachable
    /// since start-up. None once a write succeeds or InfluxDB answers.
    pub(super) last_error: std::sync::Mutex<Option<String>>,
    /// The sender has created the database (if configured) and learnt its field types.
    pub(super) prepared: std::sync::atomic::AtomicBool,
    /// The last point InfluxDB accepted per measurement (for the dashboard), bounded.
    pub(super) last_points: std::sync::Mutex<Vec<LastPoint>>,
}

/// The last point written of one measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastPoint {
    pub measurement: String,
    /// The line protocol line, cut to `LAST_LINE_BYTES`.
    pub line: String,
    /// When InfluxDB accepted it, milliseconds since the Unix epoch.
    pub written_at_ms: u64,
}

/// Measurements whose last point is kept; the least recently written one makes room.
pub const LAST_POINT_MEASUREMENTS: usize = 32;
/// Lines looked at from the end of each written batch.
const LAST_LINES_SCANNED: usize = 64;
const LAST_LINE_BYTES: usize = 400;

/// The measurement of a line protocol line: up to the first unescaped comma or space.
fn measurement_of(line: &[u8]) -> &[u8] {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b'\\' => i += 2,
            b',' | b' ' => return &line[..i],
            _ => i += 1,
        }
    }
    line
}

impl Counters {
    pub(crate) fn add(c: &AtomicU64, n: usize) {
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
    /// Line-protocol bytes encoded into batches (counted once per batch).
    pub queued_bytes: u64,
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
    /// InfluxDB accepted `batch` (line protocol): keep the last line of each measurement in its
    /// last `LAST_LINES_SCANNED` lines. Once per write request, on the sender thread.
    pub(crate) fn note_written(&self, batch: &[u8]) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut found: Vec<LastPoint> = Vec::new();
        for line in batch
            .split(|b| *b == b'\n')
            .rev()
            .filter(|l| !l.is_empty())
            .take(LAST_LINES_SCANNED)
        {
            let m = measurement_of(line);
            if seen.contains(&m) {
                continue;
            }
            seen.push(m);
            let shown = &line[..line.len().min(LAST_LINE_BYTES)];
            found.push(LastPoint {
                measurement: String::from_utf8_lossy(m).into_owned(),
                line: String::from_utf8_lossy(shown).into_owned(),
                written_at_ms: at,
            });
        }
        let mut last = self.last_points.lock().unwrap_or_else(|e| e.into_inner());
        for point in found {
            last.retain(|p| p.measurement != point.measurement);
            last.push(point);
        }
        let over = last.len().saturating_sub(LAST_POINT_MEASUREMENTS);
        last.drain(..over);
    }

    /// The last point written per measurement, most recent last.
    pub(crate) fn last_points(&self) -> Vec<LastPoint> {
        self.last_points
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn snapshot(&self) -> SinkStats {
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
            queued_bytes: g(&self.queued_bytes),
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

#[cfg(test)]
mod last_point_tests {
    use super::*;

    #[test]
    fn the_last_line_of_each_measurement_is_kept_and_bounded() {
        let c = Counters::default();
        c.note_written(b"temp,room=a v=1 1\nhum v=2 2\ntemp,room=b v=3 3\n");
        let last = c.last_points();
        let temp = last.iter().find(|p| p.measurement == "temp").unwrap();
        assert_eq!(temp.line, "temp,room=b v=3 3");
        assert!(last.iter().any(|p| p.measurement == "hum"));
        c.note_written(br"we\,ird,t=1 v=1 1");
        assert!(c.last_points().iter().any(|p| p.measurement == r"we\,ird"));
        for i in 0..100 {
            c.note_written(format!("m{i} v=1 1").as_bytes());
        }
        let last = c.last_points();
        assert_eq!(last.len(), LAST_POINT_MEASUREMENTS);
        assert_eq!(last.last().unwrap().measurement, "m99");
    }
}
