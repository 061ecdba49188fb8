//! The busiest topics by publish rate, for the dashboard: bounded memory and almost free on
//! the publish path.
//!
//! - Off (one relaxed load per publish) unless the dashboard is configured (`enable`).
//! - Sampled: a publish is counted with probability 1/`SAMPLE_ONE_IN` (a thread-local
//!   xorshift, so a publisher cycling through a few topics is not aliased), and then weighs
//!   `SAMPLE_ONE_IN`. The table's lock is only `try_lock`ed: a sample that finds it busy is
//!   skipped rather than waited for; the figures are estimates either way.
//! - Bounded: a space-saving table of `CAPACITY` topics (Metwally et al. 2005): a new topic
//!   takes the place of the least counted one and inherits its count, so a topic that is
//!   really busy cannot be pushed out by many rare ones. Topics are cut to `MAX_TOPIC_BYTES`.
//! - The reader (`ops::dashboard`, once a second) `take`s the counts since the last take and
//!   smooths them into rates itself.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Topics tracked at once.
pub const CAPACITY: usize = 64;
/// One publish in this many is counted (and weighs this much).
pub const SAMPLE_ONE_IN: u32 = 8;
/// Longest topic prefix kept (a topic may be 64 KiB long).
const MAX_TOPIC_BYTES: usize = 200;

#[derive(Default)]
pub struct TopicRates {
    enabled: AtomicBool,
    table: Mutex<HashMap<Arc<str>, u64>>,
}

thread_local! {
    static RANDOM: Cell<u32> = Cell::new(seed());
}

fn seed() -> u32 {
    // Any non-zero value that differs between threads.
    let local = 0u8;
    let address = &local as *const u8 as usize as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    ((address ^ (address >> 32) ^ nanos) as u32) | 1
}

/// xorshift32: is this publish one of the sampled ones?
fn sampled() -> bool {
    RANDOM.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        r.set(x);
        x % SAMPLE_ONE_IN == 0
    })
}

impl TopicRates {
    /// Start counting (the dashboard is on).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// A client published on `topic`.
    #[inline]
    pub fn note(&self, topic: &str) {
        if !self.enabled.load(Ordering::Relaxed) || !sampled() {
            return;
        }
        if let Ok(mut table) = self.table.try_lock() {
            add(&mut table, topic, SAMPLE_ONE_IN as u64);
        }
    }

    /// The estimated publishes per topic since the last call, busiest first; the table starts
    /// empty again.
    pub fn take(&self) -> Vec<(Arc<str>, u64)> {
        let table = std::mem::take(&mut *self.table.lock().unwrap_or_else(|e| e.into_inner()));
        let mut counts: Vec<(Arc<str>, u64)> = table.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        counts
    }
}

/// Space-saving insert of `weight` for `topic`.
fn add(table: &mut HashMap<Arc<str>, u64>, topic: &str, weight: u64) {
    let mut cut = topic.len().min(MAX_TOPIC_BYTES);
    while !topic.is_char_boundary(cut) {
        cut -= 1;
    }
    let topic = &topic[..cut];
    if let Some(count) = table.get_mut(topic) {
        *count += weight;
        return;
    }
    let inherited = if table.len() >= CAPACITY {
        let least = table
            .iter()
            .min_by_key(|(_, c)| **c)
            .map(|(t, c)| (t.clone(), *c));
        match least {
            Some((t, c)) => {
                table.remove(&t);
                c
            }
            None => 0,
        }
    } else {
        0
    };
    table.insert(topic.into(), inherited + weight);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_topic_survives_a_flood_of_rare_ones_and_memory_stays_bounded() {
        let mut table = HashMap::new();
        for i in 0..10_000u32 {
            add(&mut table, "busy/topic", 1);
            add(&mut table, &format!("rare/{i}"), 1);
            assert!(table.len() <= CAPACITY);
        }
        let busy = table["busy/topic"];
        assert!(busy >= 10_000, "{busy}");
        let busiest = table.iter().max_by_key(|(_, c)| **c).unwrap();
        assert_eq!(&**busiest.0, "busy/topic");
    }

    #[test]
    fn sampled_counts_estimate_the_real_rate_and_take_resets() {
        let rates = TopicRates::default();
        rates.note("before/enable");
        assert!(rates.take().is_empty(), "off until enabled");
        rates.enable();
        for _ in 0..80_000 {
            rates.note("a");
        }
        for _ in 0..8_000 {
            rates.note("b");
        }
        let counts = rates.take();
        assert_eq!(&*counts[0].0, "a");
        let a = counts[0].1 as f64;
        assert!((60_000.0..100_000.0).contains(&a), "{a}");
        assert!(rates.take().is_empty());
    }

    #[test]
    fn long_topics_are_cut_at_a_char_boundary() {
        let mut table = HashMap::new();
        let topic = "é".repeat(300);
        add(&mut table, &topic, 1);
        let kept = table.keys().next().unwrap();
        assert!(kept.len() <= MAX_TOPIC_BYTES && topic.starts_with(&**kept));
    }
}
