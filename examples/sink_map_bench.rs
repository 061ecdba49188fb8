//! Per-point cost of the sink's encoding on one core, in memory (no threads, no HTTP):
//! `cargo run --release --example sink_map_bench`
//!
//! Maps the publishes `bench_sink` uses (topic `sensors/devN/bench`, plain number payload) with
//! the rule `sensors/{device}/{measurement}` into line protocol, as the sink's batcher does.

use mqflux::sink::line_protocol::Precision;
use mqflux::sink::mapping::{FieldTypes, Mapping, TopicPlans};
use mqflux::sink::RuleConfig;
use std::time::Instant;

const N: usize = 2_000_000;
const BATCH: usize = 5000;

fn main() {
    let rules = vec![RuleConfig {
        topic: "sensors/{device}/{measurement}".into(),
        ..RuleConfig::default()
    }];
    let mapping = Mapping::new(
        &["$SYS/#".to_string()],
        &rules,
        &RuleConfig::default(),
        Precision::Ns,
    )
    .expect("mapping");
    let topics: Vec<String> = (0..100).map(|d| format!("sensors/dev{d}/bench")).collect();
    let payloads: Vec<Vec<u8>> = (0..1000)
        .map(|v| v.to_string().into_bytes())
        .chain((0..1000).map(|v| format!("{}.{}", v, v % 7).into_bytes()))
        .collect();
    for (name, payloads) in [
        ("integers", &payloads[..1000]),
        ("decimals", &payloads[1000..]),
    ] {
        let mut types = FieldTypes::default();
        let mut plans = TopicPlans::default();
        let mut out = String::with_capacity(1 << 20);
        let mut bytes = 0;
        let start = Instant::now();
        for i in 0..N {
            let r = mapping.map(
                &topics[i % 100],
                &payloads[i % 1000],
                1_700_000_000_000_000_000 + i as i64,
                &mut types,
                &mut plans,
                &mut out,
            );
            assert!(r.is_ok());
            if (i + 1) % BATCH == 0 {
                bytes += out.len();
                out.clear();
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "map {name:<9} {:>6.0} ns/point  {:>5.1} bytes/point",
            secs * 1e9 / N as f64,
            bytes as f64 / N as f64
        );
    }
}
