//! MQTT over TLS (`protocol = "mqtts"`): handshake with a test CA generated here, publish and
//! subscribe with Debian's mosquitto clients, client certificates, config errors.

use crate::common;
use crate::common::listeners as listeners_support;

use common::Broker;
use listeners_support::*;
use mqflux::protocol::Packet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};

fn tls_config(pki: &TestPki, extra: &str) -> String {
    format!(
        "[[listeners]]\nbind = \"127.0.0.1\"\nport = 0\n\n{}{extra}\n",
        tls_listener_toml("mqtts", pki)
    )
}

/// A plain-TCP client subscribed to `filter`, SUBACK received.
fn tcp_subscriber(addr: SocketAddr, filter: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    mqtt_connect(&mut s, "tcp-sub");
    std::io::Write::write_all(&mut s, &encode(&subscribe_packet(filter))).unwrap();
    assert!(matches!(read_packet(&mut s), Packet::SubAck(_)));
    s
}

fn expect_publish(s: &mut impl Read, topic: &str, payload: &[u8]) {
    match read_packet(s) {
        Packet::Publish(p) => {
            assert_eq!(&*p.topic, topic);
            assert_eq!(&p.payload[..], payload);
        }
        other => panic!("expected PUBLISH, got {}", other.name()),
    }
}

fn mosquitto(tool: &str, addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(tool)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &addr.port().to_string(),
            "-V",
            "mqttv311",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool} (apt-get install mosquitto-clients): {e}"))
}

#[test]
fn mqtts_listener_carries_messages_both_ways_between_tls_and_tcp_clients() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "sensor-1");
    let broker = Broker::builder()
        .dir(dir)
        .config(&tls_config(&pki, ""))
        .start();
    let tcp = broker.listener_addr("tcp");
    let tls = broker.listener_addr("mqtts");
    let ca = pki.ca.to_str().unwrap();

    // TLS publisher -> plain TCP subscriber.
    let mut sub = tcp_subscriber(tcp, "tls/#");
    let out = mosquitto(
        "mosquitto_pub",
        tls,
        &["--cafile", ca, "-t", "tls/up", "-m", "over tls", "-q", "1"],
    );
    assert!(out.status.success(), "mosquitto_pub: {out:?}");
    expect_publish(&mut sub, "tls/up", b"over tls");

    // Plain TCP publisher (retained) -> TLS subscriber.
    let mut publisher = TcpStream::connect(tcp).unwrap();
    publisher.set_read_timeout(Some(WAIT)).unwrap();
    mqtt_connect(&mut publisher, "tcp-pub");
    let mut retained = publish_packet("tls/down", b"to tls");
    if let Packet::Publish(p) = &mut retained {
        p.retain = true;
    }
    std::io::Write::write_all(&mut publisher, &encode(&retained)).unwrap();
    expect_publish(&mut sub, "tls/down", b"to tls"); // routed, so stored as retained too
    let out = mosquitto(
        "mosquitto_sub",
        tls,
        &["--cafile", ca, "-t", "tls/down", "-C", "1", "-W", "10"],
    );
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "to tls");
}

#[test]
fn client_certificate_is_required_and_its_cn_becomes_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "sensor-1");
    let extra = format!(
        "ca_file = {}\nrequire_certificate = true\nuse_identity_as_username = true\n",
        toml_path(&pki.ca)
    );
    let broker = Broker::builder()
        .dir(dir)
        .config(&tls_config(&pki, &extra))
        .start();
    let tls = broker.listener_addr("mqtts");
    let mut sub = tcp_subscriber(broker.listener_addr("tcp"), "cert/#");
    let ca = pki.ca.to_str().unwrap();

    let no_cert = mosquitto(
        "mosquitto_pub",
        tls,
        &["--cafile", ca, "-t", "cert/none", "-m", "x", "-q", "1"],
    );
    assert!(!no_cert.status.success(), "accepted without a certificate");

    let stranger = mosquitto(
        "mosquitto_pub",
        tls,
        &[
            "--cafile",
            ca,
            "--cert",
            pki.stranger_cert.to_str().unwrap(),
            "--key",
            pki.stranger_key.to_str().unwrap(),
            "-t",
            "cert/stranger",
            "-m",
            "x",
            "-q",
            "1",
        ],
    );
    assert!(
        !stranger.status.success(),
        "accepted a certificate from another CA"
    );

    let good = mosquitto(
        "mosquitto_pub",
        tls,
        &[
            "--cafile",
            ca,
            "--cert",
            pki.client_cert.to_str().unwrap(),
            "--key",
            pki.client_key.to_str().unwrap(),
            "-i",
            "certified",
            "-t",
            "cert/ok",
            "-m",
            "signed by the CA",
            "-q",
            "1",
        ],
    );
    assert!(
        good.status.success(),
        "mosquitto_pub with a client cert: {good:?}"
    );
    // Nothing from the refused clients was routed: the first message is the good one.
    expect_publish(&mut sub, "cert/ok", b"signed by the CA");
    let line = broker.wait_for_log_after(0, &["client certified connected"], WAIT);
    assert!(line.contains("as \"sensor-1\""), "{line}");
}

#[test]
fn tls_handshake_that_never_completes_is_closed_after_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "sensor-1");
    let config = tls_config(&pki, "") + "\n[limits]\nconnect_timeout_secs = 1\n";
    let broker = Broker::builder().dir(dir).config(&config).start();
    let mut silent = TcpStream::connect(broker.listener_addr("mqtts")).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    // The broker closes the socket: EOF (or a reset), never the read timeout.
    match silent.read(&mut buf) {
        Ok(n) => assert_eq!(n, 0, "unexpected bytes from the broker"),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "not closed: {e}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    broker.wait_for_log_after(0, &["closed during the handshake"], WAIT);
}

#[test]
fn tls_settings_errors_name_the_listener_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "x");
    let config = format!(
        r#"
[[listeners]]
port = 0

[[listeners]]
protocol = "mqtts"
key_file = {}

[[listeners]]
protocol = "mqtts"
cert_file = {}
key_file = {}
require_certificate = true

[[listeners]]
protocol = "ws"
path = "mqtt"
cert_file = "server.pem"
"#,
        toml_path(&pki.server_key),
        toml_path(&pki.server_cert),
        toml_path(&pki.server_key),
    );
    let stderr = rejected_config(dir.path(), &config);
    for key in [
        "listeners[1].cert_file",
        "listeners[2].ca_file",
        "listeners[3].path",
        "listeners[3].cert_file",
    ] {
        assert!(
            stderr.contains(&format!("key `{key}`")),
            "{key} missing in: {stderr}"
        );
    }
    assert!(stderr.contains("bad.toml"), "{stderr}");
}

#[test]
fn unreadable_certificate_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "x");
    let config = format!(
        "[[listeners]]\nprotocol = \"mqtts\"\ncert_file = {}\nkey_file = {}\n",
        toml_path(&pki.server_key), // a key where a certificate belongs
        toml_path(&dir.path().join("missing.key")),
    );
    let stderr = rejected_config(dir.path(), &config);
    assert!(
        stderr.contains("key `listeners[0].cert_file`") && stderr.contains("no PEM certificate"),
        "{stderr}"
    );
}

#[test]
fn certificate_identity_replaces_username_and_password_and_obeys_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "sensor-1");
    let passwords = dir.path().join("passwd");
    let status = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&passwords)
        .args(["reader", "secret"])
        .status()
        .expect("mosquitto_passwd (apt-get install mosquitto)");
    assert!(status.success());
    let acl = dir.path().join("acl");
    std::fs::write(
        &acl,
        "user reader\ntopic read cert/#\n\nuser sensor-1\ntopic write cert/allowed\n",
    )
    .unwrap();
    let extra = format!(
        "ca_file = {}\nrequire_certificate = true\nuse_identity_as_username = true\n\n\
         [security]\nallow_anonymous = false\npassword_file = {}\nacl_file = {}\n",
        toml_path(&pki.ca),
        toml_path(&passwords),
        toml_path(&acl),
    );
    let broker = Broker::builder()
        .dir(dir)
        .config(&tls_config(&pki, &extra))
        .start();
    let mut sub = TcpStream::connect(broker.listener_addr("tcp")).unwrap();
    sub.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(
        &mut sub,
        &encode(&connect_with_credentials("reader", "reader", "secret")),
    )
    .unwrap();
    assert!(matches!(read_packet(&mut sub), Packet::ConnAck(c) if c.code == 0));
    std::io::Write::write_all(&mut sub, &encode(&subscribe_packet("cert/#"))).unwrap();
    assert!(matches!(read_packet(&mut sub), Packet::SubAck(_)));

    let publish = |topic: &str, payload: &str| {
        // No -u/-P: the certificate is the only credential.
        let out = mosquitto(
            "mosquitto_pub",
            broker.listener_addr("mqtts"),
            &[
                "--cafile",
                pki.ca.to_str().unwrap(),
                "--cert",
                pki.client_cert.to_str().unwrap(),
                "--key",
                pki.client_key.to_str().unwrap(),
                "-t",
                topic,
                "-m",
                payload,
                "-q",
                "1",
            ],
        );
        assert!(out.status.success(), "mosquitto_pub: {out:?}");
    };
    // Not in sensor-1's ACL: accepted on the wire (v3.1.1) but not delivered.
    publish("cert/denied", "dropped");
    publish("cert/allowed", "delivered");
    expect_publish(&mut sub, "cert/allowed", b"delivered");
}
