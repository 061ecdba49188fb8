//! The README's first set-up command, `scripts/run.sh`, run as the README says: it starts
//! InfluxDB and mqflux with the sink on, `mosquitto_pub` then `influx ... SELECT` shows the
//! point, Ctrl-C stops both, and a second run keeps the data. Also: `cargo run` picks the broker.
//!
//! The script runs with `MQFLUX_BIN` set to the debug binary this test suite already built (a
//! release build from scratch takes minutes on 2 cores; the build step itself is one `cargo
//! build --release --locked --bin mqflux` line), on a free MQTT port and with its own influxd on
//! a free port (`MQFLUX_INFLUX_PORT`), never 1883 or 8086.

use crate::common::influx;
use crate::common::spawned;

use influx::free_port;
use spawned::{process_exists, read_pid, Spawned};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// influxd's start (fresh data directory) plus mqflux's, on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// From SIGINT until mqflux has flushed and influxd has stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// A point takes about 5 ms from PUBLISH to InfluxDB; this only bounds a failure.
const POINT_TIMEOUT: Duration = Duration::from_secs(20);

const REPO: &str = env!("CARGO_MANIFEST_DIR");

struct Ports {
    mqtt: u16,
    influx: u16,
}

/// `scripts/run.sh` with the documented variables, in its own process group.
fn start_run_sh(state: &Path, ports: &Ports) -> Spawned {
    let mut cmd = Command::new(Path::new(REPO).join("scripts/run.sh"));
    cmd.env("MQFLUX_STATE_DIR", state)
        .env("MQFLUX_PORT", ports.mqtt.to_string())
        .env("MQFLUX_INFLUX_PORT", ports.influx.to_string())
        .env("MQFLUX_BIN", env!("CARGO_BIN_EXE_mqflux"))
        // The default log level must apply, whatever the environment running the tests set.
        .env_remove("RUST_LOG");
    let mut run = Spawned::start(cmd);
    run.also_kill(state.join("influxd.pid"), "influxd");
    run.also_kill(state.join("mqflux.pid"), "mqflux");
    run.wait_for_line(0, "mqflux 0.1.0 ready", START_TIMEOUT);
    run
}

/// `influx -port P -database mqtt_data -execute 'SELECT * FROM temperature'`, as the README
/// shows it (plus the port): stdout, or the error.
fn influx_select(influx_port: u16) -> Result<String, String> {
    let out = Command::new("influx")
        .args(["-port", &influx_port.to_string()])
        .args(["-database", "mqtt_data"])
        .args(["-execute", "SELECT * FROM temperature"])
        .output()
        .map_err(|e| format!("cannot run the influx CLI (apt-get install influxdb-client): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The row the README shows: `TIME kitchen sensors/kitchen/temperature 21.5`.
fn kitchen_row(select: &str) -> Option<String> {
    select
        .lines()
        .find(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() == 4
                && cols[0].parse::<i64>().is_ok()
                && cols[1..] == ["kitchen", "sensors/kitchen/temperature", "21.5"]
        })
        .map(str::to_string)
}

fn wait_for_kitchen_row(influx_port: u16) -> String {
    let deadline = Instant::now() + POINT_TIMEOUT;
    loop {
        // InfluxDB has no change notification: poll the CLI.
        let answer = influx_select(influx_port);
        if let Some(row) = answer.as_ref().ok().and_then(|s| kitchen_row(s)) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "influx never showed the point within {POINT_TIMEOUT:?}; last answer: {answer:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Ctrl-C (SIGINT to the whole process group, as a terminal sends it); the script must exit
/// with status 0 and leave neither mqflux nor its influxd running.
fn interrupt_and_check_both_gone(mut run: Spawned, state: &Path) {
    let pids = [
        ("mqflux", read_pid(&state.join("mqflux.pid"))),
        ("influxd", read_pid(&state.join("influxd.pid"))),
    ];
    for (name, pid) in pids {
        let pid = pid.unwrap_or_else(|| panic!("run.sh wrote no {name}.pid"));
        assert!(process_exists(pid), "{name} (pid {pid}) is not running");
    }
    let mark = run.output().len();
    run.interrupt();
    let status = run
        .wait_exit(STOP_TIMEOUT)
        .unwrap_or_else(|| panic!("run.sh still running {STOP_TIMEOUT:?} after SIGINT"));
    assert!(status.success(), "run.sh exited with {status}");
    let after = &run.output()[mark..];
    assert!(
        after.contains("mqflux] stopped"),
        "no clean mqflux stop: {after}"
    );
    assert!(after.contains("stopping influxd"), "{after}");
    for (name, pid) in pids {
        let pid = pid.expect("checked above");
        // The script waited for both, so they are reaped, not zombies.
        assert!(
            !process_exists(pid),
            "{name} (pid {pid}) still exists after run.sh exited"
        );
    }
}

/// `mosquitto_pub -t sensors/kitchen/temperature -m 21.5` as in the README's quick start (no
/// -h: mosquitto_pub's default host is localhost), or with other arguments.
fn mosquitto_pub(port: u16, args: &[&str]) {
    let args = match args {
        [] => &["-t", "sensors/kitchen/temperature", "-m", "21.5"][..],
        other => other,
    };
    let status = Command::new("mosquitto_pub")
        .args(["-p", &port.to_string()])
        .args(args)
        .status()
        .expect("run mosquitto_pub (apt-get install mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

#[test]
fn run_sh_stores_what_mosquitto_pub_sends_influx_shows_it_ctrl_c_stops_both_and_data_survives() {
    let state_parent = tempfile::tempdir().expect("temp dir");
    let state: PathBuf = state_parent.path().join("state");
    let ports = Ports {
        mqtt: free_port(),
        influx: free_port(),
    };
    assert!(![1883, 8086].contains(&ports.mqtt) && ![1883, 8086].contains(&ports.influx));

    let run = start_run_sh(&state, &ports);
    let out = run.output();
    assert!(
        out.contains(&format!("starting influxd on 127.0.0.1:{}", ports.influx)),
        "nothing answered on the influx port, so run.sh must start its own influxd: {out}"
    );
    assert!(
        out.contains(&format!(
            "listener tcp://127.0.0.1:{} accepts anonymous clients from this machine only",
            ports.mqtt
        )),
        "{out}"
    );
    mosquitto_pub(ports.mqtt, &[]);
    // A retained message, to see mqflux's persistence in the state dir on the second run.
    mosquitto_pub(ports.mqtt, &["-r", "-t", "status/kitchen", "-m", "on"]);
    let row = wait_for_kitchen_row(ports.influx);
    // Spool, persistence and influxd's data are all in the state directory.
    for dir in ["spool", "persistence", "influxdb/data", "influxdb/meta"] {
        assert!(state.join(dir).is_dir(), "{dir} missing in the state dir");
    }
    interrupt_and_check_both_gone(run, &state);

    // Second run, same state directory: the point is still there.
    let run = start_run_sh(&state, &ports);
    let select = influx_select(ports.influx).expect("influx SELECT on the second run");
    assert_eq!(
        kitchen_row(&select),
        Some(row),
        "the second run lost the point: {select}"
    );
    let retained = Command::new("mosquitto_sub")
        .args(["-p", &ports.mqtt.to_string()])
        .args(["-t", "status/kitchen", "-C", "1", "-W", "10"])
        .output()
        .expect("run mosquitto_sub");
    assert_eq!(
        String::from_utf8_lossy(&retained.stdout).trim(),
        "on",
        "retained message lost across runs: {retained:?}"
    );
    interrupt_and_check_both_gone(run, &state);
}

/// `cargo run` (the README's and every Rust user's first command) must start the broker, not
/// fail with "could not determine which binary to run" because of `mqflux-bench`.
///
/// Which binary `cargo run` picks is decided by the `default-run` manifest key, the same for
/// every profile, so this checks that key through `cargo metadata` and then runs `cargo run --
/// --version` in the dev profile, whose binary this test suite has already built (`--release`
/// would compile the whole tree again: minutes on 2 cores, for the same choice).
#[test]
fn run_sh_uses_an_influxdb_already_answering_and_leaves_it_running() {
    let influx = influx::Influx::start();
    let state_parent = tempfile::tempdir().expect("temp dir");
    let state = state_parent.path().join("state");
    let ports = Ports {
        mqtt: free_port(),
        influx: influx.http_port,
    };
    let mut run = start_run_sh(&state, &ports);
    let out = run.output();
    assert!(
        out.contains(&format!(
            "using the InfluxDB already answering on 127.0.0.1:{}",
            ports.influx
        )),
        "{out}"
    );
    assert!(!out.contains("starting influxd"), "{out}");
    assert!(!state.join("influxd.pid").exists());
    mosquitto_pub(ports.mqtt, &[]);
    wait_for_kitchen_row(ports.influx);
    run.interrupt();
    let status = run.wait_exit(STOP_TIMEOUT).expect("run.sh stops on SIGINT");
    assert!(status.success(), "run.sh exited with {status}");
    assert!(
        !run.output().contains("stopping influxd"),
        "{}",
        run.output()
    );
    let pid = influx.pid().expect("harness influxd");
    assert!(
        process_exists(pid),
        "run.sh stopped an influxd it did not start"
    );
    assert_eq!(influx.count("mqtt_data", "temperature", "value"), 1);
}

#[test]
fn run_sh_refuses_a_taken_mqtt_port_before_starting_anything() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let state_parent = tempfile::tempdir().expect("temp dir");
    let state = state_parent.path().join("state");
    let mut cmd = Command::new(Path::new(REPO).join("scripts/run.sh"));
    cmd.env("MQFLUX_STATE_DIR", &state)
        .env(
            "MQFLUX_PORT",
            taken.local_addr().unwrap().port().to_string(),
        )
        .env("MQFLUX_INFLUX_PORT", free_port().to_string())
        .env("MQFLUX_BIN", env!("CARGO_BIN_EXE_mqflux"));
    let mut run = Spawned::start(cmd);
    let status = run.wait_exit(STOP_TIMEOUT).expect("run.sh exits");
    assert_eq!(status.code(), Some(1), "{}", run.output());
    let out = run.output();
    assert!(
        out.contains("is already in use") && out.contains("MQFLUX_PORT"),
        "{out}"
    );
    assert!(!out.contains("starting influxd"), "{out}");
}

/// `cargo SUBCOMMAND` in the repository, as a user runs it from a shell: without the `CARGO_*`
/// variables cargo sets for a running test (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). Build
/// scripts (ring's) track some of them, so inheriting them would make this cargo rebuild half
/// the dependency tree, and the next ordinary build rebuild it back.
fn user_cargo(args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(args).current_dir(REPO);
    let user_settings = [
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_PROFILE_",
        "CARGO_TERM_",
        "CARGO_INCREMENTAL",
    ];
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if (name.starts_with("CARGO_") && !user_settings.iter().any(|s| name.starts_with(s)))
            || name == "OUT_DIR"
        {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

#[test]
fn cargo_run_picks_the_broker_binary() {
    let metadata = user_cargo(&[
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
        "--offline",
    ])
    .output()
    .expect("run cargo metadata");
    assert!(metadata.status.success(), "{metadata:?}");
    let json: serde_json::Value = serde_json::from_slice(&metadata.stdout).expect("JSON");
    let package = json["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "mqflux"))
        .expect("package mqflux");
    assert_eq!(
        package["default_run"], "mqflux",
        "default-run in Cargo.toml"
    );
    let bins: Vec<&str> = package["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        bins.len() > 1 && bins.contains(&"mqflux"),
        "several binaries, so default-run matters: {bins:?}"
    );

    let run = user_cargo(&["run", "--offline", "--locked", "--quiet", "--", "--version"])
        .output()
        .expect("run cargo run");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "cargo run failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(stdout.trim(), "mqflux 0.1.0");
}
