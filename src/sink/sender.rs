//! Sender: the last stage, thread `sink-sender`. Writes batches to InfluxDB (`http.rs`): the
//! in-memory ones first (they are older than anything spooled), then the spool. A batch that
//! cannot be written (InfluxDB down, 5xx, timeout) goes to the front of the spool and is retried
//! with exponential backoff and jitter. A 413 is answered by sending the batch in halves. A
//! batch InfluxDB refuses in part is checked against its answer line by line (`line_scan.rs`
//! reads a batch as influxd does); what the answer does not account for is sent again in halves,
//! as a point written twice is stored once. Field types the server reports are handed back to
//! the batcher (`Shared::add_facts`).

use super::http::{error_text, InfluxClient, WriteResult};
use super::line_protocol::{self, FieldType};
use super::shared::Shared;
use super::spool::Batch;
use super::stats::{Counters, DropReason};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Dropped lines logged per refused batch.
const LOGGED_LINES: usize = 5;

/// Exponential backoff with jitter: the n-th wait is uniformly random in [d/2, d] where d
/// doubles from `initial` up to `max`.
pub(super) struct Backoff {
    pub(super) initial: Duration,
    pub(super) max: Duration,
    pub(super) current: Duration,
    pub(super) rng: u64,
}

impl Backoff {
    pub(super) fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Backoff {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            current: Duration::from_millis(initial_ms),
            rng: seed | 1,
        }
    }

    fn reset(&mut self) {
        self.current = self.initial;
    }

    fn next(&mut self) -> Duration {
        // xorshift64: jitter only, no need for a cryptographic source.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }
}

enum Job {
    Memory(Batch),
    Spooled(u64, Batch),
}

/// Outcome of writing one batch (possibly in parts).
struct Delivery {
    written: usize,
    /// What still has to be written, and why it failed.
    retry: Option<(Batch, String, bool)>,
}

pub(super) struct SenderLoop {
    pub(super) client: InfluxClient,
    pub(super) create_database: bool,
    pub(super) prepared: bool,
    pub(super) backoff: Backoff,
    pub(super) batches: Receiver<Batch>,
    pub(super) stop: Receiver<()>,
    pub(super) shared: Arc<Shared>,
    pub(super) ready: Option<Sender<()>>,
}

fn split(batch: &Batch) -> (Batch, Batch) {
    let lines = line_protocol::lines(&batch.data);
    let mid = lines.len() / 2;
    let join = |ls: &[&[u8]]| {
        let mut data = Vec::with_capacity(ls.iter().map(|l| l.len() + 1).sum());
        for l in ls {
            data.extend_from_slice(l);
            data.push(b'\n');
        }
        Batch {
            data,
            lines: ls.len(),
            ids: Vec::new(),
        }
    };
    (join(&lines[..mid]), join(&lines[mid..]))
}

fn concat(mut a: Batch, b: Batch) -> Batch {
    a.data.extend_from_slice(&b.data);
    a.lines += b.lines;
    a.ids.extend(b.ids);
    a
}

/// `input field "F" on measurement "M" is type T, already exists as type U` ->
/// (measurement, field, input type, stored type).
fn parse_type_conflict(text: &str) -> Option<(String, String, FieldType, FieldType)> {
    let rest = &text[text.find("input field \"")? + 13..];
    let (field, rest) = rest.split_once("\" on measurement \"")?;
    let (measurement, rest) = rest.split_once("\" is type ")?;
    let (input, rest) = rest.split_once(", already exists as type ")?;
    let stored = rest.split(|c: char| !c.is_ascii_alphabetic()).next()?;
    Some((
        measurement.to_string(),
        field.to_string(),
        FieldType::from_influx_name(input)?,
        FieldType::from_influx_name(stored)?,
    ))
}

fn dropped_count(text: &str) -> Option<usize> {
    let i = text.rfind("dropped=")?;
    text[i + 8..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl SenderLoop {
    pub(super) fn run(mut self) {
        // The database is created at start-up when InfluxDB answers; otherwise before the
        // first write that gets through.
        // While InfluxDB has not answered yet, it is asked again (with backoff) even when
        // nothing is published, so that /health turns ok as soon as it is reachable.
        let mut next_prepare = Instant::now();
        if let Err(e) = self.prepare() {
            log::warn!(
                "sink: InfluxDB not ready at start-up ({e}); points are spooled until it is"
            );
            self.shared
                .counters
                .set_last_error(Some(format!("InfluxDB not reachable at start-up: {e}")));
            next_prepare += self.backoff.next();
        }
        self.ready = None;
        loop {
            if self.shared.past_deadline() {
                break;
            }
            let job = {
                let mut st = self.shared.lock_spool();
                match self.batches.try_recv() {
                    Ok(b) => {
                        self.shared.sender_took.notify_all();
                        Some(Job::Memory(b))
                    }
                    Err(_) => {
                        match st.spool.front() {
                            Some((seq, Ok(b))) => {
                                st.in_flight = Some(seq);
                                Some(Job::Spooled(seq, b))
                            }
                            Some((seq, Err(e))) => {
                                let n = st.spool.remove(seq);
                                log::error!("sink: cannot read spooled batch ({n} points), dropping it: {e}");
                                self.shared.counters.drop_points(DropReason::SpoolIo, n);
                                self.shared.update_gauges(&st);
                                continue;
                            }
                            None => None,
                        }
                    }
                }
            };
            let job = match job {
                Some(j) => j,
                None if !self.prepared
                    && Instant::now() >= next_prepare
                    && !self.shared.stopping.load(Ordering::Acquire) =>
                {
                    match self.prepare() {
                        Ok(()) => {
                            log::info!("sink: InfluxDB is reachable");
                            self.backoff.reset();
                            self.shared.counters.set_last_error(None);
                        }
                        Err(e) => {
                            self.shared
                                .counters
                                .set_last_error(Some(format!("InfluxDB not reachable: {e}")));
                            next_prepare = Instant::now() + self.backoff.next();
                        }
                    }
                    continue;
                }
                None => {
                    // Nothing to write: the batcher may hand over a partial batch at once.
                    self.shared.sender_idle.store(true, Ordering::Release);
                    let next = self.batches.recv_timeout(Duration::from_millis(200));
                    self.shared.sender_idle.store(false, Ordering::Release);
                    match next {
                        Ok(b) => {
                            self.shared.sender_took.notify_all();
                            Job::Memory(b)
                        }
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => {
                            if self.shared.lock_spool().spool.is_empty() {
                                break;
                            }
                            continue;
                        }
                    }
                }
            };
            if !self.prepared {
                if let Err(reason) = self.prepare() {
                    self.failed(job, None, &reason, false);
                    if self.wait_backoff(&reason) {
                        continue;
                    }
                    break;
                }
            }
            let (mut job_batch, seq) = match job {
                Job::Memory(b) => (b, None),
                Job::Spooled(seq, b) => (b, Some(seq)),
            };
            // Settled below whatever happens: written, dropped, or spooled by `failed`.
            let ids = std::mem::take(&mut job_batch.ids);
            let delivery = self.deliver(job_batch);
            let counters = &self.shared.counters;
            Counters::add(&counters.written, delivery.written);
            if seq.is_some() {
                Counters::add(&counters.replayed, delivery.written);
            }
            match delivery.retry {
                None => {
                    self.backoff.reset();
                    counters.set_last_error(None);
                    if let Some(seq) = seq {
                        let mut st = self.shared.lock_spool();
                        st.spool.remove(seq);
                        st.in_flight = None;
                        self.shared.update_gauges(&st);
                        drop(st);
                        self.shared.spool_shrunk.notify_all();
                    }
                    self.shared.release(&ids);
                }
                Some((rest, reason, loud)) => {
                    let job = match seq {
                        Some(seq) => Job::Spooled(seq, rest),
                        None => Job::Memory(rest),
                    };
                    self.failed(job, Some(delivery.written), &reason, loud);
                    self.shared.release(&ids);
                    if !self.wait_backoff(&reason) {
                        break;
                    }
                }
            }
        }
        self.spool_leftovers();
    }

    /// Create the database and learn its field types, once, before the first write.
    fn prepare(&mut self) -> Result<(), String> {
        if self.create_database {
            match self.client.create_database() {
                Ok(()) => log::info!("sink: database {:?} ready", self.client.database()),
                Err((true, e)) => return Err(format!("cannot create database: {e}")),
                Err((false, e)) => {
                    log::error!(
                        "sink: CREATE DATABASE {:?} failed: {e}; writing anyway",
                        self.client.database()
                    )
                }
            }
        }
        match self.client.field_types() {
            Ok(facts) => {
                log::debug!("sink: {} field types known in the database", facts.len());
                self.shared.add_facts(facts);
            }
            // Not reachable (also when the database is not ours to create): not ready yet.
            Err((true, e)) => return Err(e),
            Err((false, e)) => {
                log::debug!("sink: SHOW FIELD KEYS failed ({e}); relying on write errors")
            }
        }
        self.prepared = true;
        self.shared.counters.set_prepared();
        Ok(())
    }

    /// A write failed and will be retried: put what is left into the spool, in order.
    fn failed(&mut self, job: Job, written: Option<usize>, reason: &str, loud: bool) {
        let counters = self.shared.counters.clone();
        counters.set_last_error(Some(format!("last write failed: {reason}")));
        let mut st = self.shared.lock_spool();
        match job {
            Job::Spooled(seq, rest) => {
                Counters::add(&counters.retried, rest.lines);
                if written.unwrap_or(0) > 0 {
                    if let Err(e) = st.spool.replace(seq, &rest) {
                        log::error!("sink: cannot rewrite spooled batch: {e}");
                    }
                }
                st.in_flight = None;
            }
            Job::Memory(rest) => {
                Counters::add(&counters.retried, rest.lines);
                // Older than anything spooled, and so are the batches still in the channel:
                // they all go in front, oldest first.
                let mut pending = vec![rest];
                while let Ok(b) = self.batches.try_recv() {
                    pending.push(b);
                }
                for b in pending.into_iter().rev() {
                    match st.spool.push_front(&b) {
                        Ok(()) => Counters::add(&counters.spooled, b.lines),
                        Err(e) => {
                            log::error!(
                                "sink: cannot spool {} points: {e}; they are lost",
                                b.lines
                            );
                            counters.drop_points(DropReason::SpoolIo, b.lines);
                        }
                    }
                    self.shared.release(&b.ids);
                }
            }
        }
        self.shared.update_gauges(&st);
        let held = st.spool.lines();
        drop(st);
        if loud {
            log::error!("sink: InfluxDB write failed: {reason}; {held} points held in the spool");
        } else {
            log::warn!("sink: InfluxDB write failed: {reason}; {held} points held in the spool");
        }
    }

    /// Wait before the next attempt. False when the sink is stopping (stop trying).
    fn wait_backoff(&mut self, reason: &str) -> bool {
        if self.shared.stopping.load(Ordering::Acquire) {
            log::warn!("sink: stopping while InfluxDB is failing ({reason})");
            return false;
        }
        let d = self.backoff.next();
        log::debug!("sink: retrying in {d:?}");
        matches!(self.stop.recv_timeout(d), Err(RecvTimeoutError::Timeout))
    }

    /// At exit (only during shutdown): batches still in the channel, and any the batcher flushes
    /// until it ends, go in front of the spool (the channel only holds batches older than it).
    fn spool_leftovers(&mut self) {
        {
            let mut st = self.shared.lock_spool();
            st.in_flight = None;
        }
        self.shared.spool_shrunk.notify_all();
        // The batcher ends soon: its input is closed and it spools by force while stopping.
        let mut pending = Vec::new();
        for b in self.batches.iter() {
            pending.push(b);
            self.shared.sender_took.notify_all();
        }
        if pending.is_empty() {
            return;
        }
        let counters = self.shared.counters.clone();
        let mut st = self.shared.lock_spool();
        for b in pending.into_iter().rev() {
            match st.spool.push_front(&b) {
                Ok(()) => Counters::add(&counters.spooled, b.lines),
                Err(e) => {
                    log::error!(
                        "sink: cannot spool {} points at shutdown: {e}; they are lost",
                        b.lines
                    );
                    counters.drop_points(DropReason::SpoolIo, b.lines);
                }
            }
            self.shared.release(&b.ids);
        }
        self.shared.update_gauges(&st);
    }

    /// Write a batch; 413 is split in halves, refusals are handled by `refused` (which may
    /// send points InfluxDB already stored again: it stores them once).
    fn deliver(&mut self, mut batch: Batch) -> Delivery {
        // A loop rather than recursion for `Refusal::Resend`: a batch may hold many conflicts.
        loop {
            if batch.lines == 0 || batch.data.is_empty() {
                return Delivery {
                    written: 0,
                    retry: None,
                };
            }
            Counters::add(&self.shared.counters.write_requests, 1);
            break match self.client.write(&batch.data) {
                WriteResult::Written => {
                    self.shared.counters.note_written(&batch.data);
                    Delivery {
                        written: batch.lines,
                        retry: None,
                    }
                }
                WriteResult::TooLarge if batch.lines > 1 => {
                    log::warn!(
                        "sink: InfluxDB refused a {}-byte batch as too large (413); splitting it",
                        batch.data.len()
                    );
                    self.deliver_halves(&batch)
                }
                WriteResult::TooLarge => {
                    log::error!(
                        "sink: InfluxDB refused a single {}-byte point as too large (413); dropped: {}",
                        batch.data.len(),
                        String::from_utf8_lossy(&batch.data[..batch.data.len().min(300)])
                    );
                    self.shared.counters.drop_points(DropReason::TooLarge, 1);
                    Delivery {
                        written: 0,
                        retry: None,
                    }
                }
                WriteResult::Rejected { status, body } => {
                    let text = error_text(&body);
                    if let Some((m, f, _, stored)) = parse_type_conflict(&text) {
                        self.shared.add_facts(vec![(m, f, stored)]);
                    }
                    match self.refused(batch, status, &text) {
                        Refusal::Done(delivery) => delivery,
                        Refusal::Resend(rest) => {
                            batch = rest;
                            continue;
                        }
                    }
                }
                WriteResult::Retry { reason, loud } => Delivery {
                    written: 0,
                    retry: Some((batch, reason, loud)),
                },
            };
        }
    }

    fn deliver_halves(&mut self, batch: &Batch) -> Delivery {
        let (a, b) = split(batch);
        let first = self.deliver(a);
        if let Some((rest, reason, loud)) = first.retry {
            return Delivery {
                written: first.written,
                retry: Some((concat(rest, b), reason, loud)),
            };
        }
        let second = self.deliver(b);
        Delivery {
            written: first.written + second.written,
            retry: second.retry,
        }
    }

    /// A batch InfluxDB refused (4xx other than 413). What it stored is taken from its answer
    /// only when the answer accounts for every point not stored (`account`); otherwise the
    /// batch is sent again in halves down to single points: a point written twice is stored
    /// once (same series, time and fields), so no good point is lost to a bad one, and every
    /// point that is not stored is counted (`rejected`) and logged with its line.
    fn refused(&mut self, batch: Batch, status: u16, text: &str) -> Refusal {
        let lines = line_protocol::lines(&batch.data);
        let account = account(&lines, text);
        // influxd quotes every line it could not parse: keep the log line short.
        let text = clip(text, 500);
        let (refused, resend) = match account {
            Accounting::Named(refused) => (refused, false),
            Accounting::Conflicting(refused) => (refused, true),
            Accounting::Unknown if lines.len() > 1 => {
                log::warn!(
                    "sink: InfluxDB refused part of a batch of {} points without naming every \
                     point it did not store ({text}); sending it again in halves",
                    lines.len()
                );
                return Refusal::Done(self.deliver_halves(&batch));
            }
            Accounting::Unknown => ((0..lines.len()).collect(), false),
        };
        self.shared
            .counters
            .drop_points(DropReason::Rejected, refused.len());
        log::error!(
            "sink: InfluxDB refused {} of {} points (HTTP {status}): {text}{}",
            refused.len(),
            lines.len(),
            refused
                .iter()
                .take(LOGGED_LINES)
                .map(|&i| format!(
                    "\n  dropped: {}",
                    clip(&String::from_utf8_lossy(lines[i]), 300)
                ))
                .collect::<String>()
        );
        if resend {
            // A type conflict: influxd names one conflicting field and the number dropped, but
            // an unparsable line would not be mentioned. The lines that conflict are known;
            // the rest is sent again, and its answer handled the same way.
            log::warn!(
                "sink: sending the other {} points of the batch again",
                lines.len() - refused.len()
            );
            let mut keep = vec![true; lines.len()];
            for &i in &refused {
                keep[i] = false;
            }
            let mut data = Vec::with_capacity(batch.data.len());
            for (l, _) in lines.iter().zip(&keep).filter(|(_, k)| **k) {
                data.extend_from_slice(l);
                data.push(b'\n');
            }
            // `ids` were taken out by the caller, which settles them after the last attempt.
            return Refusal::Resend(Batch {
                data,
                lines: lines.len() - refused.len(),
                ids: Vec::new(),
            });
        }
        Refusal::Done(Delivery {
            written: lines.len() - refused.len(),
            retry: None,
        })
    }
}

/// What became of a refused batch.
enum Refusal {
    Done(Delivery),
    /// Send these lines (the batch less those refused) again.
    Resend(Batch),
}

/// `s` cut to at most `max` characters, marked when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// What a refusal says about which points of a batch were not stored.
#[derive(Debug, PartialEq)]
enum Accounting {
    /// Exactly these lines (indices) were not stored, and every other one was.
    Named(Vec<usize>),
    /// These lines conflict with a stored field type and were not stored; about the others the
    /// answer may not tell all.
    Conflicting(Vec<usize>),
    /// The answer does not say which points were stored.
    Unknown,
}

/// Read influxd's answer to a refused write of `lines`. influxd 1.x answers a batch with lines
/// it cannot parse with `unable to parse '<line>': <reason>` for each, joined by newlines, in
/// batch order (`partial write: ... dropped=0` when it stored the other lines); a write the
/// storage refused in part (type conflict, retention, a `time` field) with `partial write:
/// <first reason> dropped=<n>`, which does not name the lines. Anything the answer does not
/// account for line by line is `Unknown`: then no point is assumed stored.
fn account(lines: &[&[u8]], text: &str) -> Accounting {
    let dropped = dropped_count(text);
    let (list, partial) = match text.strip_prefix("partial write: ") {
        Some(rest) => (rest.rfind(" dropped=").map_or(rest, |i| &rest[..i]), true),
        None => (text, false),
    };
    if list.starts_with("unable to parse '") {
        let Some(named) = named_lines(lines, list) else {
            return Accounting::Unknown;
        };
        // All lines refused (no `partial write`), or the others stored and none dropped.
        let complete = if partial {
            dropped == Some(0)
        } else {
            named.len() == lines.len()
        };
        return if complete {
            Accounting::Named(named)
        } else {
            Accounting::Unknown
        };
    }
    if dropped == Some(lines.len()) {
        return Accounting::Named((0..lines.len()).collect());
    }
    if let Some((m, f, input, _)) = parse_type_conflict(text) {
        let conflicting: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                line_protocol::parse_line(l).is_ok_and(|p| {
                    p.measurement == m && p.fields.iter().any(|(k, t)| *k == f && *t == input)
                })
            })
            .map(|(i, _)| i)
            .collect();
        if !conflicting.is_empty() {
            return Accounting::Conflicting(conflicting);
        }
    }
    Accounting::Unknown
}

/// The lines an `unable to parse '<line>': <reason>` list names, each matched whole against
/// the batch's lines in order (so text inside a line cannot pass for an entry). None when an
/// entry is not exactly one of them (influxd split the batch elsewhere).
fn named_lines(lines: &[&[u8]], list: &str) -> Option<Vec<usize>> {
    const ENTRY: &str = "unable to parse '";
    let mut named = Vec::new();
    let mut next = 0;
    let mut rest = list;
    while !rest.is_empty() {
        rest = rest.strip_prefix(ENTRY)?;
        let i = (next..lines.len()).find(|&i| {
            let b = rest.as_bytes();
            b.starts_with(lines[i]) && b[lines[i].len()..].starts_with(b"': ")
        })?;
        rest = &rest[lines[i].len() + 3..];
        // The reason is influxd's own text, up to the next entry.
        rest = rest
            .find(&format!("\n{ENTRY}"))
            .map_or("", |j| &rest[j + 1..]);
        named.push(i);
        next = i + 1;
    }
    Some(named)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_conflict_message_is_understood() {
        let t = "partial write: field type conflict: input field \"value\" on measurement \"m x\" is type string, already exists as type float dropped=2";
        assert_eq!(
            parse_type_conflict(t),
            Some((
                "m x".into(),
                "value".into(),
                FieldType::Str,
                FieldType::Float
            ))
        );
        assert_eq!(dropped_count(t), Some(2));
    }

    #[test]
    fn refusals_are_accounted_line_by_line_or_not_at_all() {
        let lines: Vec<&[u8]> = vec![b"a v=1 1", b"b v=x 2", b"c s=\"': q\" 3", b"d v=1 4"];
        let named = "partial write: unable to parse 'b v=x 2': invalid boolean\nunable to parse \
                     'c s=\"': q\" 3': x dropped=0";
        assert_eq!(account(&lines, named), Accounting::Named(vec![1, 2]));
        // A block that is not one of the lines (influxd split elsewhere): unknown.
        let merged = "partial write: unable to parse 'b v=x 2\nc s=\"': q\" 3': x dropped=0";
        assert_eq!(account(&lines, merged), Accounting::Unknown);
        // Every line refused, but fewer named than sent: unknown.
        let all = "unable to parse 'b v=x 2': invalid boolean";
        assert_eq!(account(&lines, all), Accounting::Unknown);
        let one: Vec<&[u8]> = vec![b"b v=x 2"];
        assert_eq!(account(&one, all), Accounting::Named(vec![0]));
        // A storage refusal that names no line.
        let time = "partial write: invalid field name: input field \"time\" on measurement \
                    \"m\" is invalid dropped=1";
        assert_eq!(account(&lines, time), Accounting::Unknown);
        let conflict = "partial write: field type conflict: input field \"v\" on measurement \
                        \"d\" is type float, already exists as type string dropped=1";
        assert_eq!(account(&lines, conflict), Accounting::Conflicting(vec![3]));
        let everything = "partial write: points beyond retention policy dropped=4";
        assert_eq!(
            account(&lines, everything),
            Accounting::Named(vec![0, 1, 2, 3])
        );
    }

    #[test]
    fn split_keeps_every_line_once() {
        let b = Batch {
            data: b"a v=1 1\nb s=\"x\ny\" 2\nc v=3 3\n".to_vec(),
            lines: 3,
            ids: Vec::new(),
        };
        let (x, y) = split(&b);
        assert_eq!((x.lines, y.lines), (1, 2));
        assert_eq!(concat(x, y).data, b.data);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_max() {
        let mut b = Backoff::new(100, 400);
        let waits: Vec<_> = (0..5).map(|_| b.next().as_millis()).collect();
        for (w, d) in waits.iter().zip([100u128, 200, 400, 400, 400]) {
            assert!(*w >= d / 2 && *w <= d, "{waits:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
