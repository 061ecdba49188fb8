//! Counting what arrived: per-publisher sequence tracking (lost, duplicated, reordered) and a
//! latency histogram. Both are owned by one thread and merged at the end of a run.

use std::sync::OnceLock;
use std::time::Instant;

/// Nanoseconds since the tool's clock origin. Publishers and subscribers are in one process, so a
/// monotonic clock is shared and send/receive stamps compare directly.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for this one), from
/// /proc/PID/stat. Clock ticks are taken as 100 per second (USER_HZ on Linux).
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?);
    Some((utime + stime) as f64 / 100.0)
}

/// A growable set of sequence numbers.
#[derive(Default, Clone)]
pub struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Insert `seq`; returns false if it was already present.
    #[inline]
    pub fn insert(&mut self, seq: u64) -> bool {
        let w = (seq / 64) as usize;
        if w >= self.words.len() {
            self.words.resize((w + 1).max(self.words.len() * 2), 0);
        }
        let bit = 1u64 << (seq % 64);
        let was = self.words[w] & bit != 0;
        self.words[w] |= bit;
        !was
    }

    #[inline]
    pub fn contains(&self, seq: u64) -> bool {
        self.words
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many members of `self` are missing from `other`.
    pub fn count_missing_from(&self, other: &SeqSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| (w & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// What one subscriber saw from one publisher.
#[derive(Default, Clone)]
pub struct SeqTracker {
    pub seen: SeqSet,
    /// Highest sequence number seen + 1 (0 before the first message).
    pub next: u64,
    pub unique: u64,
    pub duplicated: u64,
    /// Messages that arrived after one with a higher sequence number.
    pub reordered: u64,
}

impl SeqTracker {
    #[inline]
    pub fn record(&mut self, seq: u64) {
        if !self.seen.insert(seq) {
            self.duplicated += 1;
            return;
        }
        self.unique += 1;
        if seq < self.next {
            self.reordered += 1;
        } else {
            self.next = seq + 1;
        }
    }
}

/// Log-linear latency histogram: 64 linear sub-buckets per power of two (<= 1.6% error), fixed
/// size, no allocation per sample.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; ((64 - SUB_BITS as usize) + 1) * SUB as usize],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros(); // >= SUB_BITS
        let mantissa = v >> (e - SUB_BITS); // in [SUB, 2*SUB)
        ((e - SUB_BITS + 1) as u64 * SUB + (mantissa - SUB)) as usize
    }

    /// Midpoint of a bucket's value range.
    fn value(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let e = i / SUB - 1 + SUB_BITS as u64;
        let mantissa = i % SUB + SUB;
        let low = mantissa << (e - SUB_BITS as u64);
        low + (1u64 << (e - SUB_BITS as u64)) / 2
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// Value at quantile `q` (0..=1), or None when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::value(i).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_duplicates_and_reordering() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 3, 2, 3, 4] {
            t.record(s);
        }
        assert_eq!((t.unique, t.duplicated, t.reordered, t.next), (5, 1, 1, 5));
    }

    #[test]
    fn seqset_counts_acked_but_never_received() {
        let mut acked = SeqSet::default();
        let mut got = SeqSet::default();
        for s in 0..200 {
            acked.insert(s);
            if s % 50 != 7 {
                got.insert(s);
            }
        }
        assert_eq!(acked.count_missing_from(&got), 4);
        assert_eq!(got.len(), 196);
    }

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000f64),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), Some(100_000_000));
    }
}
