//! Running `mqflux-bench` from a test: one invocation with `--json -`, and its JSON record.

use serde_json::Value;
use std::process::{Command, Output};

/// The load generator built with the broker.
pub const BENCH: &str = env!("CARGO_BIN_EXE_mqflux-bench");

/// Run the tool against `port` with `args` and `--json -` (bounded by `timeout 120`); returns
/// its exit code and the JSON record it printed.
pub fn run(port: u16, args: &[&str]) -> (i32, Value) {
    let out = invoke(port, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!(
                "no JSON line from mqflux-bench {args:?}; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let record: Value = serde_json::from_str(line).expect("JSON record");
    (out.status.code().unwrap_or(-1), record)
}

/// Every JSON record `mqflux-bench ARGS --port PORT --json -` printed, and its exit code.
pub fn run_all(port: u16, args: &[&str]) -> (i32, Vec<Value>) {
    let out = invoke(port, args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let records = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON record"))
        .collect();
    (out.status.code().unwrap_or(-1), records)
}

/// `mqflux-bench ARGS --port PORT --json -`, bounded by `timeout 120`.
fn invoke(port: u16, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("120")
        .arg(BENCH)
        .args(args)
        .args(["--port", &port.to_string(), "--json", "-"])
        .output()
        .expect("run mqflux-bench")
}

/// A count in a record; panics naming the key when it is missing.
pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}
