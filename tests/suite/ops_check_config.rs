//! `mqflux check-config FILE`: exit 0 with a summary for a good file; non-zero with every error
//! (file, key, what was expected) for a broken one. Also the log lines operators rely on.

use crate::common;

use common::client::MqttClient;
use common::{run_to_exit, Broker};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn check_config_accepts_the_example_config_and_prints_a_summary() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let (status, out) = run_to_exit(&["check-config", example], TIMEOUT);
    assert!(status.success(), "{out}");
    assert!(out.contains("config.example.toml: ok ("), "{out}");
}

#[test]
fn check_config_summarises_sys_and_metrics_settings() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "good.toml",
        "sys_interval = 5\n[[listeners]]\nport = 1884\n[metrics]\nbind = \"127.0.0.1:9883\"\n",
    );
    let (status, out) = run_to_exit(&["check-config", &file], TIMEOUT);
    assert!(status.success(), "{out}");
    assert!(out.contains("tcp://0.0.0.0:1884"), "{out}");
    assert!(out.contains("$SYS every 5s"), "{out}");
    assert!(out.contains("metrics 127.0.0.1:9883"), "{out}");
}

#[test]
fn check_config_lists_every_error_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "broken.toml",
        "sys_interval = 100000\n\
         [[listeners]]\n\
         bind = \"not-an-ip\"\n\
         port = \"eighteen\"\n\
         [limits]\n\
         max_inflight = 0\n\
         max_infligt = 3\n\
         [metrics]\n\
         bind = \"localhost\"\n",
    );
    let (status, out) = run_to_exit(&["check-config", &file], TIMEOUT);
    assert!(!status.success(), "{out}");
    assert_ne!(status.code(), Some(0));
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    let expected = [
        ("sys_interval", "expected 0 (off) to 86400"),
        ("listeners[0].bind", "IP address"),
        ("listeners[0].port", "expected u16"),
        ("limits.max_inflight", "expected 1 to 65535"),
        ("limits.max_infligt", "unknown field"),
        ("metrics.bind", "expected IP:PORT"),
    ];
    assert_eq!(errors.len(), expected.len(), "{out}");
    for (key, what) in expected {
        let line = errors
            .iter()
            .find(|l| l.contains(&format!("key `{key}`")))
            .unwrap_or_else(|| panic!("no error for {key}:\n{out}"));
        assert!(line.contains(&file), "error does not name the file: {line}");
        assert!(
            line.contains(what),
            "error for {key} does not say {what:?}: {line}"
        );
    }
    assert!(out.contains("6 error(s)"), "{out}");
}

#[test]
fn check_config_reports_a_syntax_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(&dir, "syntax.toml", "[limits]\nmax_inflight = = 3\n");
    let (status, out) = run_to_exit(&["check-config", &file], TIMEOUT);
    assert!(!status.success(), "{out}");
    assert!(out.contains(&file) && out.contains("line 2"), "{out}");
}

#[test]
fn check_config_reports_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("absent.toml");
    let (status, out) = run_to_exit(&["check-config", file.to_str().unwrap()], TIMEOUT);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains("absent.toml") && out.contains("cannot read file"),
        "{out}"
    );
}

#[test]
fn broker_refuses_to_start_on_the_same_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        &dir,
        "broken.toml",
        "sys_interval = 100000\n[metrics]\nbind = \"x\"\n",
    );
    let (status, out) = run_to_exit(&["--config", &file, "--port", "0"], TIMEOUT);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(
        out.contains("`sys_interval`") && out.contains("`metrics.bind`"),
        "{out}"
    );
}

#[test]
fn connect_and_disconnect_are_logged_once_each_without_payloads() {
    let broker = Broker::with_config("sys_interval = 0\n");
    let mut client = MqttClient::connect(&broker, "ops-log-client");
    client.publish("ops/log", 1, false, b"secret-payload-42");
    client.disconnect();
    let connect = broker.wait_for_log(&["ops-log-client", "connected from"]);
    for part in [
        "127.0.0.1:",
        "MQTT 3.1.1",
        "clean session",
        "keep-alive 30s",
    ] {
        assert!(connect.contains(part), "{part:?} missing from {connect:?}");
    }
    broker.wait_for_log(&["ops-log-client", "disconnected", "DISCONNECT"]);
    let log = broker.log_text();
    assert_eq!(
        log.matches("ops-log-client connected from").count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("secret-payload-42"),
        "payload logged at info:\n{log}"
    );
}

#[test]
fn message_logger_logs_payloads_when_asked() {
    let broker = Broker::builder()
        .config("sys_interval = 0\n")
        .arg("--log-messages")
        .start();
    let mut client = MqttClient::connect(&broker, "ops-msglog-client");
    client.publish("ops/msglog", 1, false, b"visible-payload-7");
    broker.wait_for_log(&["ops/msglog", "visible-payload-7"]);
}
