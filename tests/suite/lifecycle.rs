//! The daemon as a process: start-up, graceful shutdown on SIGTERM/SIGINT, the message logger,
//! and config errors.

use crate::common;

use common::client::MqttClient;
use common::raw::RawClient;
use common::{run_to_exit, Broker};
use std::net::TcpStream;
use std::time::Duration;

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn graceful_shutdown_on(signal: i32) {
    let mut broker = Broker::start();
    let addr = broker.addr();
    let mut a = RawClient::connected(addr, "shutdown-a");
    let mut sub = MqttClient::connect(&broker, "shutdown-b");
    sub.subscribe("s/#", 1);
    a.ping();
    broker.send_signal(signal);
    // Clients are disconnected ...
    a.read_until_closed(EXIT_TIMEOUT);
    sub.wait_disconnected(EXIT_TIMEOUT);
    // ... and the process exits with status 0.
    let status = broker
        .wait_exit(EXIT_TIMEOUT)
        .expect("broker did not exit after the signal");
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    // Nothing listens any more.
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "port still accepting"
    );
}

#[test]
fn sigterm_disconnects_clients_and_exits_with_status_0() {
    graceful_shutdown_on(libc::SIGTERM);
}

#[test]
fn sigint_disconnects_clients_and_exits_with_status_0() {
    graceful_shutdown_on(libc::SIGINT);
}

#[test]
fn sigterm_with_no_clients_exits_promptly_with_status_0() {
    let mut broker = Broker::start();
    broker.send_signal(libc::SIGTERM);
    let status = broker
        .wait_exit(Duration::from_secs(5))
        .expect("idle broker did not exit within 5 s");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn broker_restarts_on_the_same_port_after_graceful_shutdown() {
    let mut broker = Broker::start();
    let port = broker.port;
    broker.send_signal(libc::SIGTERM);
    assert_eq!(
        broker.wait_exit(EXIT_TIMEOUT).and_then(|s| s.code()),
        Some(0)
    );
    broker.restart();
    assert_eq!(broker.port, port);
    RawClient::connected(broker.addr(), "after-restart").ping();
}

#[test]
fn log_messages_flag_logs_topic_and_payload_of_each_publish() {
    let broker = Broker::builder().arg("--log-messages").start();
    let mut publisher = MqttClient::connect(&broker, "logged-pub");
    publisher.publish("logged/topic", 1, false, b"payload-one");
    publisher.publish("logged/other", 0, false, b"payload-two");
    broker.wait_for_log(&["logged/topic", "payload-one"]);
    broker.wait_for_log(&["logged/other", "payload-two"]);
}

#[test]
fn log_messages_config_key_logs_topic_and_payload() {
    let broker = Broker::with_config("[log]\nmessages = true\n");
    let mut publisher = MqttClient::connect(&broker, "logged-cfg");
    publisher.publish("cfg/topic", 1, false, b"from-config");
    broker.wait_for_log(&["cfg/topic", "from-config"]);
}

#[test]
fn payloads_are_not_logged_without_the_message_logger() {
    let broker = Broker::start();
    let mut publisher = MqttClient::connect(&broker, "quiet-pub");
    // A subscriber receiving it proves the broker has processed the publish.
    let mut sub = MqttClient::connect(&broker, "quiet-sub");
    sub.subscribe("quiet/#", 1);
    publisher.publish("quiet/topic", 1, false, b"secret-payload");
    assert_eq!(&sub.recv_publish().payload[..], b"secret-payload");
    assert!(
        !broker.log_text().contains("secret-payload"),
        "payload logged without --log-messages:\n{}",
        broker.log_text()
    );
}

#[test]
fn config_error_names_the_file_and_the_key_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[limits]\nmax_inflight = \"many\"\n").unwrap();
    let (status, output) = run_to_exit(
        &["--config", path.to_str().unwrap(), "--port", "0"],
        EXIT_TIMEOUT,
    );
    assert!(
        !status.success(),
        "broker accepted a broken config: {output}"
    );
    assert!(
        output.contains("broken.toml"),
        "error does not name the file: {output}"
    );
    assert!(
        output.contains("max_inflight"),
        "error does not name the key: {output}"
    );
}

#[test]
fn missing_config_file_is_an_error_naming_the_file() {
    let (status, output) = run_to_exit(
        &["--config", "/nonexistent/mqflux-test.toml", "--port", "0"],
        EXIT_TIMEOUT,
    );
    assert!(!status.success());
    assert!(output.contains("/nonexistent/mqflux-test.toml"), "{output}");
}

#[test]
fn help_lists_the_command_line_options() {
    let (status, output) = run_to_exit(&["--help"], EXIT_TIMEOUT);
    assert!(status.success(), "{output}");
    for option in ["--config", "--bind", "--port", "--log-messages", "-v", "-q"] {
        assert!(
            output.contains(option),
            "--help does not mention {option}:\n{output}"
        );
    }
}

#[test]
fn verbose_flag_enables_debug_logging() {
    let broker = Broker::builder().arg("-v").start();
    let mut c = RawClient::connected(broker.addr(), "verbose-client");
    assert_eq!(c.subscribe(1, &[("v/#", 0)]), vec![0]);
    broker.wait_for_log(&["DEBUG", "verbose-client"]);
}

#[test]
fn example_config_is_valid_and_starts_the_broker() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&example).expect("config.example.toml exists");
    // The harness overrides bind and port (never 1883 in tests); everything else is the example.
    let broker = Broker::with_config(&text);
    RawClient::connected(broker.addr(), "example-config").ping();
}
