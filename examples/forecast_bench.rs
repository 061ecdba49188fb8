//! Fit time and memory of each forecasting model on a week of per-minute data (10,080 points):
//! `cargo run --release --example forecast_bench` (scripts/bench.sh runs it too).
//!
//! The series is synthetic but shaped like broker traffic: a daily cycle (1,440 steps), a quieter
//! weekend, and seeded noise. Each model is fitted once on all of it and forecasts 6 hours (360
//! steps) with an 80% interval. Memory is the peak of bytes allocated on the heap during the fit
//! above what was allocated before it (a counting global allocator), so it is the model's own
//! working set, not the process's.

use mqflux::forecast::{LstmConfig, ModelSpec};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const DAY: usize = 1440;
const WEEK: usize = 7 * DAY;
const HORIZON: usize = 360;

fn week_of_minutes() -> Vec<f64> {
    let mut seed = 42u64;
    (0..WEEK)
        .map(|t| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed % 1000) as f64 / 1000.0 - 0.5;
            let phase = (t % DAY) as f64 / DAY as f64 * std::f64::consts::TAU;
            let weekend = if t / DAY >= 5 { 0.5 } else { 1.0 };
            weekend * (1000.0 + 800.0 * (phase - 1.5).sin().max(-0.6)) + 60.0 * noise
        })
        .collect()
}

fn main() {
    let y = week_of_minutes();
    println!(
        "forecast fit on {} points (a week per minute), {HORIZON} steps ahead, 80% interval",
        y.len()
    );
    println!(
        "{:<14} {:>10} {:>16}  note",
        "model", "fit ms", "peak heap MiB"
    );
    let lstm = LstmConfig {
        seasons: vec![DAY],
        epochs: 20,
        ..Default::default()
    };
    // The weekly period needs two weeks of history, so only the daily one is fitted here.
    for m in [
        ModelSpec::SeasonalNaive(DAY),
        ModelSpec::Ets,
        ModelSpec::Mstl(vec![DAY]),
        ModelSpec::Lstm(lstm),
    ] {
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let started = Instant::now();
        let result = m.forecast(&y, HORIZON, 0.8);
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let note = match &result {
            Ok(f) => format!(
                "peak forecast {:.0} (upper {:.0})",
                f.peak_point(),
                f.peak_upper()
            ),
            Err(e) => format!("failed: {e}"),
        };
        println!(
            "{:<14} {:>10.1} {:>16.2}  {note}",
            m.name(),
            ms,
            peak as f64 / (1 << 20) as f64
        );
    }
}
