//! Secure by default, as mosquitto 2.0: without a configured listener the broker listens on
//! loopback only; a listener on a non-loopback address refuses anonymous clients unless
//! `security.allow_anonymous = true`; the start-up log says which listeners accept anonymous
//! clients from where, and `check-config` warns about an anonymous non-loopback listener.
//! Also the start-up behaviours the README's first run relies on: an unreachable InfluxDB is
//! one warning line, not a failure; a spool directory that cannot be made is a config error.

use crate::common;
use crate::common::spawned;

use common::raw::{self, Connect, RawClient};
use common::{run_to_exit, Broker};
use spawned::Spawned;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// CONNACK return code (3.1.1) for an anonymous CONNECT.
fn anonymous_connack_v3(addr: SocketAddr, client_id: &str) -> u8 {
    let mut c = RawClient::connect(addr);
    c.send(&Connect::new(client_id).encode());
    let ack = c.expect_reply(raw::CONNACK);
    ack.body[1]
}

/// CONNACK reason code of an MQTT 5 anonymous CONNECT.
fn anonymous_connack_v5(addr: SocketAddr, client_id: &str) -> u8 {
    let mut body = raw::string(b"MQTT");
    body.push(5); // protocol level 5
    body.push(0x02); // clean start, no username, no password
    body.extend(60u16.to_be_bytes());
    body.push(0); // no properties
    body.extend(raw::string(client_id.as_bytes()));
    let mut c = RawClient::connect(addr);
    c.send(&raw::packet(0x10, &body));
    let ack = c.expect_reply(raw::CONNACK);
    ack.body[1]
}

/// A loopback listener first (the harness points `--bind 127.0.0.1 --port` at it) and a
/// second one on every interface, on a free port.
fn two_listeners(security: &str) -> Broker {
    let broker = Broker::with_config(&format!(
        "[[listeners]]\nbind = \"127.0.0.1\"\nport = 0\n\n\
         [[listeners]]\nbind = \"0.0.0.0\"\nport = 0\n\n{security}"
    ));
    assert_eq!(broker.listeners().len(), 2, "{:?}", broker.listeners());
    broker
}

/// Where the all-interfaces listener can be reached from this machine.
fn wildcard_listener(broker: &Broker) -> (SocketAddr, SocketAddr) {
    let bound = broker.listeners()[1].1;
    assert!(bound.ip().is_unspecified(), "{bound}");
    (bound, SocketAddr::from(([127, 0, 0, 1], bound.port())))
}

#[test]
fn broker_without_config_listens_on_loopback_only_and_accepts_anonymous_clients_there() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqflux"));
    cmd.args(["--port", "0"]).env_remove("RUST_LOG");
    let broker = Spawned::start(cmd);
    let line = broker.wait_for_line(0, "listening on tcp://", TIMEOUT);
    let addr: SocketAddr = line
        .split("listening on tcp://")
        .nth(1)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    broker.wait_for_line(
        0,
        &format!("listener tcp://{addr} accepts anonymous clients from this machine only"),
        TIMEOUT,
    );
    broker.wait_for_line(0, "ready", TIMEOUT);
    assert_eq!(anonymous_connack_v3(addr, "local-anon"), 0);
    // Without a config the sink is off: nothing is said about InfluxDB at all.
    assert!(!broker.output().contains("InfluxDB"), "{}", broker.output());
}

#[test]
fn non_loopback_listener_refuses_anonymous_clients_by_default_and_loopback_accepts_them() {
    let broker = two_listeners("");
    let (bound, reach) = wildcard_listener(&broker);
    broker.wait_for_log(&[&format!(
        "listener tcp://{bound} refuses anonymous clients: not a loopback address"
    )]);
    // Nobody can pass it (no password file either): said once at start-up.
    broker.wait_for_log(&["every client will be refused"]);
    // MQTT 3.1.1: 0x05 not authorized; MQTT 5: 0x87 Not authorized (as mosquitto 2.0).
    assert_eq!(anonymous_connack_v3(reach, "remote-anon"), 0x05);
    assert_eq!(anonymous_connack_v5(reach, "remote-anon-5"), 0x87);
    broker.wait_for_log(&["refused: this listener refuses anonymous clients"]);
    // The loopback listener of the same broker takes anonymous clients.
    assert_eq!(anonymous_connack_v3(broker.addr(), "local-anon"), 0);
    assert_eq!(anonymous_connack_v5(broker.addr(), "local-anon-5"), 0);
}

#[test]
fn allow_anonymous_true_accepts_anonymous_clients_on_a_non_loopback_listener() {
    let broker = two_listeners("[security]\nallow_anonymous = true\n");
    let (bound, reach) = wildcard_listener(&broker);
    broker.wait_for_log(&[&format!(
        "listener tcp://{bound} accepts anonymous clients from any address"
    )]);
    broker.wait_for_log(&["accepts anonymous clients from other machines"]);
    assert_eq!(anonymous_connack_v3(reach, "remote-anon"), 0);
    assert_eq!(anonymous_connack_v5(reach, "remote-anon-5"), 0);
}

#[test]
fn allow_anonymous_false_refuses_anonymous_clients_also_on_loopback() {
    let broker = Broker::with_config("[security]\nallow_anonymous = false\n");
    broker.wait_for_log(&["refuses anonymous clients (security.allow_anonymous = false)"]);
    assert_eq!(anonymous_connack_v3(broker.addr(), "local-anon"), 0x05);
    assert_eq!(anonymous_connack_v5(broker.addr(), "local-anon-5"), 0x87);
}

#[test]
fn bind_flag_on_all_interfaces_without_config_refuses_anonymous_clients() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqflux"));
    cmd.args(["--bind", "0.0.0.0", "--port", "0"])
        .env_remove("RUST_LOG");
    let broker = Spawned::start(cmd);
    let line = broker.wait_for_line(0, "] listener tcp://0.0.0.0:", TIMEOUT);
    assert!(line.contains("refuses anonymous clients"), "{line}");
    let port: u16 = line
        .split("listener tcp://0.0.0.0:")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    broker.wait_for_line(0, "ready", TIMEOUT);
    let reach = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(anonymous_connack_v3(reach, "remote-anon"), 0x05);
}

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let (status, out) = run_to_exit(&["check-config", path.to_str().unwrap()], TIMEOUT);
    (status.success(), out)
}

#[test]
fn check_config_warns_about_an_anonymous_non_loopback_listener() {
    let (ok, out) = check_config(
        "[[listeners]]\nbind = \"0.0.0.0\"\nport = 1884\n[security]\nallow_anonymous = true\n",
    );
    assert!(ok, "a warning does not fail the check: {out}");
    let warning = out
        .lines()
        .find(|l| l.starts_with("warning: "))
        .unwrap_or_else(|| panic!("no warning: {out}"));
    assert!(
        warning.contains("c.toml")
            && warning.contains(
                "listeners[0] (tcp://0.0.0.0:1884) accepts anonymous clients from other machines"
            ),
        "{warning}"
    );

    // Loopback listeners (the default included) and a password-protected one need no warning.
    for quiet in [
        "",
        "[[listeners]]\nbind = \"127.0.0.1\"\n[security]\nallow_anonymous = true\n",
        "[[listeners]]\nbind = \"::1\"\n",
    ] {
        let (ok, out) = check_config(quiet);
        assert!(ok && !out.contains("warning"), "{quiet:?}: {out}");
    }

    // A non-loopback listener nobody can pass is worth a warning too.
    let (ok, out) = check_config("[[listeners]]\nbind = \"0.0.0.0\"\n");
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: ") && out.contains("every client will be refused"),
        "{out}"
    );
}

#[test]
fn unreachable_influxdb_is_one_warning_line_and_the_broker_serves_mqtt() {
    let spool = tempfile::tempdir().unwrap();
    // A free port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let broker = Broker::with_config(&format!(
        "[sink]\nenabled = true\nurl = \"http://127.0.0.1:{port}\"\nspool_dir = {:?}\n",
        spool.path()
    ));
    broker.wait_for_log(&["InfluxDB not ready at start-up"]);
    // The broker answers MQTT; the sink's background retries do not add log lines.
    let mut sub = RawClient::connected(broker.addr(), "sub");
    sub.ping();
    // Not a synchronisation: a window in which a wrongly repeated warning would show.
    std::thread::sleep(Duration::from_millis(500));
    let log = broker.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warnings.len(), 1, "one warning line, got: {warnings:#?}");
    assert!(
        warnings[0].contains("points are spooled"),
        "{}",
        warnings[0]
    );
    // Publishes are delivered (and spooled for InfluxDB).
    sub.subscribe(1, &[("sensors/#", 0)]);
    let mut publisher = RawClient::connected(broker.addr(), "pub");
    publisher.send(&raw::publish(
        "sensors/kitchen/temperature",
        b"21.5",
        0,
        0,
        false,
        false,
    ));
    assert_eq!(sub.expect_publish().payload, b"21.5");
}

#[test]
fn spool_dir_that_cannot_be_created_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // Under a regular file: cannot be created, even by root.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[sink]\nenabled = true\nspool_dir = {:?}\n",
            file.join("spool")
        ),
    )
    .unwrap();
    let (status, out) = run_to_exit(
        &["--config", config.to_str().unwrap(), "--port", "0"],
        TIMEOUT,
    );
    assert!(!status.success(), "{out}");
    assert!(out.contains("sink.spool_dir"), "{out}");
    assert!(!out.contains(" ready"), "must not start: {out}");
}
