//! Interoperability with Eclipse Mosquitto's command-line clients (Debian `mosquitto-clients`):
//! `mosquitto_sub -t '#' -v` must receive what `mosquitto_pub` sends.

use crate::common;

use common::client::MqttClient;
use common::Broker;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `mosquitto_sub` whose stdout lines arrive on a channel.
struct MosquittoSub {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl MosquittoSub {
    /// Start `mosquitto_sub -d -v -t FILTER -q QOS -C count -W 20` and wait until its SUBACK
    /// arrived (the `-d` debug output says so), so that publishes after this are received.
    fn start(broker: &Broker, filter: &str, qos: u8, count: usize) -> MosquittoSub {
        MosquittoSub::start_with(broker, filter, qos, count, &[])
    }

    fn start_with(
        broker: &Broker,
        filter: &str,
        qos: u8,
        count: usize,
        extra: &[&str],
    ) -> MosquittoSub {
        // stdbuf: line-buffered stdout, so lines arrive as they are printed, not at exit.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &broker.port.to_string(),
            ])
            .args(["-t", filter, "-v", "-d", "-q", &qos.to_string()])
            .args(["-C", &count.to_string(), "-W", "20", "-i", "interop-sub"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub (Debian package mosquitto-clients)");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sub = MosquittoSub { child, lines };
        sub.wait_line(|l| l.contains("received SUBACK"));
        sub
    }

    fn wait_line(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) if pred(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => {
                    panic!("mosquitto_sub did not print the expected line; it printed: {seen:#?}")
                }
            }
        }
    }

    /// Wait for the process to finish (it exits after `-C` messages) and check its status.
    fn wait_success(mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                assert!(
                    status.success(),
                    "mosquitto_sub exited with {status:?}: {err}"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto_sub did not exit after its -C count"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for MosquittoSub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto_pub(broker: &Broker, args: &[&str]) {
    let output = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run mosquitto_pub (Debian package mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn mosquitto_sub_receives_what_mosquitto_pub_sends_at_every_qos() {
    let broker = Broker::start();
    let mut sub = MosquittoSub::start(&broker, "#", 2, 3);
    mosquitto_pub(&broker, &["-t", "interop/zero", "-m", "hello 0", "-q", "0"]);
    mosquitto_pub(&broker, &["-t", "interop/one", "-m", "hello 1", "-q", "1"]);
    mosquitto_pub(
        &broker,
        &["-t", "interop/deep/two", "-m", "hello 2", "-q", "2"],
    );
    // `-v` prints "topic payload" per message.
    for expected in [
        "interop/zero hello 0",
        "interop/one hello 1",
        "interop/deep/two hello 2",
    ] {
        sub.wait_line(|l| l == expected);
    }
    sub.wait_success();
}

#[test]
fn mosquitto_sub_gets_retained_message_published_by_mosquitto_pub() {
    let broker = Broker::start();
    mosquitto_pub(
        &broker,
        &["-t", "interop/retained", "-m", "kept", "-r", "-q", "1"],
    );
    let mut sub = MosquittoSub::start(&broker, "interop/#", 1, 1);
    sub.wait_line(|l| l == "interop/retained kept");
    sub.wait_success();
}

#[test]
fn mosquitto_pub_and_rust_client_interoperate_both_ways() {
    let broker = Broker::start();
    let mut rust_sub = MqttClient::connect(&broker, "interop-rust");
    rust_sub.subscribe("to-rust", 2);
    mosquitto_pub(
        &broker,
        &["-t", "to-rust", "-m", "from mosquitto_pub", "-q", "2"],
    );
    assert_eq!(&rust_sub.recv_publish().payload[..], b"from mosquitto_pub");

    let mut sub = MosquittoSub::start(&broker, "to-mosquitto", 1, 1);
    rust_sub.publish("to-mosquitto", 1, false, b"from rumqttc");
    sub.wait_line(|l| l == "to-mosquitto from rumqttc");
    sub.wait_success();
}

#[test]
fn mqtt_31_mosquitto_clients_interoperate() {
    // `-V mqttv31`: protocol name "MQIsdp", level 3.
    let broker = Broker::start();
    let mut sub = MosquittoSub::start_with(&broker, "v31/#", 1, 1, &["-V", "mqttv31"]);
    mosquitto_pub(
        &broker,
        &[
            "-V",
            "mqttv31",
            "-t",
            "v31/x",
            "-m",
            "old protocol",
            "-q",
            "1",
        ],
    );
    sub.wait_line(|l| l == "v31/x old protocol");
    sub.wait_success();
}
