//! The test harness, one for every test area: runs the real `mqflux` binary on a free loopback
//! port with a config file in a temp dir, and collects its log (stderr) so tests can wait for
//! and assert log lines.
//!
//! - `Broker`: start / signal / terminate / kill / wait / restart (same port, same config),
//!   the address of each listener (`listener_addr("ws")`), CPU use; killed on drop.
//! - `raw`: a byte-level MQTT 3.1/3.1.1 client built from the spec, independent of the broker's
//!   codec, for exact bytes and protocol violations.
//! - `codec`: a raw MQTT client on the crate's own codec, parameterised by protocol version
//!   (3.1.1 or 5.0): typed packets, properties and reason codes; also packet encode/read over
//!   any byte stream (TLS, WebSocket).
//! - `bench`: one run of `mqflux-bench` and the JSON record it prints.
//! - `client`: helpers around rumqttc for real-client tests.
//! - `influx`: a real influxd on a free port, with query helpers.
//! - `spawned`: a command other than the harness's broker start (a script, `mqflux` with
//!   options the builder always sets), in its own process group.
//! - `listeners`: a test PKI, TLS clients and refused listener configs.
//! - `ops`: HTTP/1.1 to the metrics and health endpoints, and the Prometheus text format.
//! - `nats`: a real 3-node NATS cluster serving MQTT (JetStream), with SIGKILL and restart of a node.
//! - `remote`: Debian's mosquitto as a second broker (bridge tests), killable and restartable.
//! - `fault_proxy`: a TCP proxy that forwards, pauses, blackholes (no FIN) or resets.
//!
//! One `allow(dead_code)` for the whole harness: a few helpers (`Broker::dir`, `Spawned::pid`,
//! `Influx::is_running`, `codec::eventually`) have no caller at the moment, and test areas on
//! other branches may use them; without the allow, the one binary would flag them.
#![allow(dead_code)]

pub mod bench;
pub mod client;
pub mod codec;
pub mod dashboard;
pub mod fault_proxy;
pub mod influx;
pub mod listeners;
pub mod nats;
pub mod ops;
pub mod raw;
pub mod remote;
pub mod spawned;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long the broker may take to log `mqflux VERSION ready` (every listener bound).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for a log line.
pub const LOG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker may take to exit after SIGTERM.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the broker wrote to stderr, shared with the thread that reads it.
#[derive(Default)]
struct LogState {
    text: String,
    /// Set when the current process's stderr reached EOF.
    closed: bool,
}

#[derive(Default)]
struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

impl Log {
    fn append_line(&self, line: &str) {
        let mut s = self.state.lock().unwrap();
        s.text.push_str(line);
        s.text.push('\n');
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_all();
    }

    /// Wait until a line starting at byte offset >= `from` satisfies `pred`; returns that line.
    fn wait_line(
        &self,
        from: usize,
        timeout: Duration,
        pred: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut s = self.state.lock().unwrap();
        loop {
            if let Some(line) = s.text.get(from..).unwrap_or("").lines().find(|l| pred(l)) {
                return Some(line.to_string());
            }
            let now = Instant::now();
            if now >= deadline || s.closed {
                return None;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
    }
}

/// Options for starting a broker.
#[derive(Default)]
pub struct BrokerBuilder {
    config: String,
    args: Vec<String>,
    dir: Option<tempfile::TempDir>,
}

impl BrokerBuilder {
    /// TOML text for the config file (empty = all defaults; the sink is off by default).
    pub fn config(mut self, toml: &str) -> Self {
        self.config = toml.to_string();
        self
    }

    /// Extra command-line arguments (e.g. `--log-messages`, `-v`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// Run in this directory (e.g. with certificates already written into it) instead of a
    /// fresh one; the config file is written there as `mqflux.toml`.
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    pub fn start(self) -> Broker {
        let dir = match self.dir {
            Some(dir) => dir,
            None => tempfile::tempdir().expect("create temp dir"),
        };
        let config_path = dir.path().join("mqflux.toml");
        std::fs::write(&config_path, &self.config).expect("write config file");
        let mut broker = Broker {
            child: None,
            port: 0,
            listeners: Vec::new(),
            log: Arc::new(Log::default()),
            dir,
            config_path,
            args: self.args,
        };
        broker.spawn(0);
        broker
    }
}

/// A running `mqflux` process.
pub struct Broker {
    child: Option<Child>,
    /// The port of the first listener, which `--bind 127.0.0.1 --port` applies to (picked by
    /// the OS on first start, kept on restart).
    pub port: u16,
    /// (scheme, address) of every listener, in config order, from the `listening on
    /// SCHEME://ADDR` log lines of the current run.
    listeners: Vec<(String, SocketAddr)>,
    log: Arc<Log>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    args: Vec<String>,
}

impl Broker {
    /// Start with default config.
    pub fn start() -> Broker {
        Broker::builder().start()
    }

    /// Start with this config file content.
    pub fn with_config(toml: &str) -> Broker {
        Broker::builder().config(toml).start()
    }

    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Every listener as (scheme, address), in config order.
    pub fn listeners(&self) -> &[(String, SocketAddr)] {
        &self.listeners
    }

    /// Address of the first listener with this scheme (`tcp`, `mqtts`, `ws`, `wss`).
    pub fn listener_addr(&self, scheme: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(s, _)| s == scheme)
            .unwrap_or_else(|| panic!("no {scheme} listener in {:?}", self.listeners))
            .1
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory holding the config file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker is running").id()
    }

    fn spawn(&mut self, port: u16) {
        let log_start = self.log.state.lock().unwrap().text.len();
        self.log.state.lock().unwrap().closed = false;
        let mut child = match reference_broker() {
            Some(mosquitto) => self.mosquitto_command(&mosquitto, port),
            None => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_mqflux"));
                cmd.arg("--config")
                    .arg(&self.config_path)
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(&self.args)
                    // The default log level must apply (info: start-up line, warnings),
                    // whatever the environment running the tests has set.
                    .env_remove("RUST_LOG");
                cmd
            }
        }
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broker");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::clone(&self.log);
        std::thread::Builder::new()
            .name("broker-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    match line {
                        Ok(line) => log.append_line(&line),
                        Err(_) => break,
                    }
                }
                log.close();
            })
            .expect("spawn stderr reader");
        self.child = Some(child);

        self.listeners = match reference_broker() {
            Some(_) => {
                let line = self.wait_for_start(log_start, &|l| l.contains(MOSQUITTO_MARKER));
                let rest = &line[line.find(MOSQUITTO_MARKER).unwrap() + MOSQUITTO_MARKER.len()..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                let port: u16 = digits
                    .parse()
                    .unwrap_or_else(|_| panic!("no port in start-up line {line:?}"));
                vec![("tcp".to_string(), SocketAddr::from(([127, 0, 0, 1], port)))]
            }
            None => {
                // Every listener logs `listening on SCHEME://ADDR` before this line.
                self.wait_for_start(log_start, &|l| {
                    l.contains("mqflux ") && l.trim_end().ends_with(" ready")
                });
                let log = self.log_text();
                log[log_start..]
                    .lines()
                    .filter_map(|l| l.split("listening on ").nth(1))
                    .map(|url| {
                        let (scheme, addr) = url
                            .trim()
                            .split_once("://")
                            .unwrap_or_else(|| panic!("no scheme in listener {url:?}"));
                        let addr = addr
                            .parse()
                            .unwrap_or_else(|_| panic!("bad listener address {url:?}"));
                        (scheme.to_string(), addr)
                    })
                    .collect()
            }
        };
        self.port = self
            .listeners
            .first()
            .unwrap_or_else(|| panic!("broker logged no listener; log:\n{}", self.log_text()))
            .1
            .port();
        if port != 0 {
            assert_eq!(self.port, port, "broker restarted on a different port");
        }
        if reference_broker().is_some() {
            // mosquitto logs its start-up line just before it listens.
            let addr = self.addr();
            eventually(START_TIMEOUT, || std::net::TcpStream::connect(addr).ok())
                .expect("reference broker listens");
        }
    }

    /// Wait for the start-up line of the run whose log begins at `log_start`; panics with the
    /// log and the exit status if it does not come within `START_TIMEOUT`.
    fn wait_for_start(&mut self, log_start: usize, pred: &dyn Fn(&str) -> bool) -> String {
        if let Some(line) = self.log.wait_line(log_start, START_TIMEOUT, pred) {
            return line;
        }
        let status = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        panic!(
            "broker did not finish starting within {START_TIMEOUT:?} (exit status: {status:?}); log:\n{}",
            self.log_text()
        );
    }

    /// Command line for the reference broker (see `reference_broker`), with the limits of our
    /// config translated to mosquitto.conf.
    fn mosquitto_command(&self, mosquitto: &str, port: u16) -> Command {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let config =
            mqflux::config::Config::parse(&text, &self.config_path).expect("valid test config");
        let port = if port != 0 { port } else { free_port() };
        let l = &config.limits;
        let max_connections = if l.max_connections == 0 {
            -1
        } else {
            l.max_connections as i64
        };
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type all\n\
             max_inflight_messages {}\nmax_queued_messages {}\nmax_connections {max_connections}\nmax_packet_size {}\n",
            l.max_inflight, l.max_queued, l.max_packet_size
        );
        let conf_path = self.config_path.with_extension("mosquitto.conf");
        std::fs::write(&conf_path, conf).expect("write mosquitto.conf");
        let mut cmd = Command::new(mosquitto);
        cmd.arg("-c").arg(conf_path);
        cmd
    }

    /// The whole log so far (all runs of this broker).
    pub fn log_text(&self) -> String {
        self.log.state.lock().unwrap().text.clone()
    }

    /// Byte offset of the end of the log; pass to `wait_for_log_after` to only look at newer lines.
    pub fn log_mark(&self) -> usize {
        self.log.state.lock().unwrap().text.len()
    }

    /// Wait for a log line containing every one of `needles`; returns the line, or panics with
    /// the whole log.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        self.wait_for_log_after(0, needles, LOG_TIMEOUT)
    }

    pub fn wait_for_log_after(&self, mark: usize, needles: &[&str], timeout: Duration) -> String {
        match self
            .log
            .wait_line(mark, timeout, &|l| needles.iter().all(|n| l.contains(n)))
        {
            Some(line) => line,
            None => panic!(
                "no log line containing all of {needles:?} within {timeout:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// Wait for the log line reporting a protocol violation by `client_id`: it names the client
    /// and cites the rule broken (`[MQTT-x.y.z-n]`).
    pub fn wait_for_violation(&self, client_id: &str) -> String {
        self.wait_for_log(&[client_id, "[MQTT-"])
    }

    /// Send a signal (e.g. `libc::SIGTERM`).
    pub fn send_signal(&self, signal: i32) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child process.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}) failed: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Whether the process is still running (it has not exited or been killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// SIGTERM, then wait (at most `EXIT_TIMEOUT`) for a clean exit; returns how long the
    /// broker took to exit.
    pub fn terminate(&mut self) -> Duration {
        let started = Instant::now();
        self.send_signal(libc::SIGTERM);
        let child = self.child.as_mut().expect("broker is running");
        // Timed here rather than by `wait_exit`, which also waits for the log to drain.
        let took = loop {
            if child.try_wait().expect("try_wait").is_some() {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < EXIT_TIMEOUT,
                "broker did not exit within {EXIT_TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = self.wait_exit(Duration::ZERO).expect("broker has exited");
        assert!(
            status.success(),
            "broker exited with {status} after SIGTERM"
        );
        took
    }

    /// CPU time (user + system) the broker process has used so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| -> u64 { fields[i].parse().expect("numeric tick count") };
        field(11) + field(12)
    }

    /// CPU ticks the broker uses while the caller sleeps `d` (an idle broker uses ~0).
    pub fn cpu_ticks_over(&self, d: Duration) -> u64 {
        let before = self.cpu_ticks();
        std::thread::sleep(d);
        self.cpu_ticks() - before
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            // Let the reader thread drain the last lines and mark the log closed.
            self.log
                .wait_line(usize::MAX, Duration::from_secs(2), &|_| false);
        }
    }

    /// Wait for the process to exit; `None` on timeout (the process is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                // Let the reader thread drain the last lines.
                self.log
                    .wait_line(usize::MAX, Duration::from_secs(2), &|_| false);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (up to 10 s) for a clean exit.
    pub fn stop_gracefully(&mut self) {
        self.send_signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
            .expect("broker stops on SIGTERM");
    }

    /// Start the broker again on the same port with the same config (killing it first if it
    /// is still running).
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(port);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- mqflux log -----\n{}----- end of mqflux log -----",
                self.log_text()
            );
        }
    }
}

/// A config that keeps state in `dir` (`[persistence] mode = "sync"`).
pub fn persistent_config(dir: &std::path::Path) -> String {
    format!(
        "[persistence]\ndir = {:?}\nmode = \"sync\"\n",
        dir.to_str().expect("utf-8 temp dir")
    )
}

/// Start-up line of the reference broker, followed by the port.
const MOSQUITTO_MARKER: &str = "Opening ipv4 listen socket on port ";

/// `MQFLUX_REFERENCE_BROKER=/usr/sbin/mosquitto cargo test` runs the same tests against
/// mosquitto, to check that a test (not the broker) is right where behaviour is ambiguous.
/// Tests of mqflux-specific log lines and options naturally fail there.
fn reference_broker() -> Option<String> {
    std::env::var("MQFLUX_REFERENCE_BROKER")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A port that was free a moment ago (only for the reference broker, which cannot pick one).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Run the binary to completion with `args` (e.g. a bad config) and return its exit status and
/// stderr; kills it after `timeout`.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqflux"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mqflux binary");
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "mqflux {args:?} did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status, text)
}

/// Random waits between SIGKILLs for the crash tests: `min_ms` plus up to `spread_ms`, from a
/// time-seeded xorshift whose seed is printed, so a failing schedule can be read off the log.
pub fn kill_waits(min_ms: u64, spread_ms: u64) -> impl Iterator<Item = Duration> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("kill schedule seed {seed}");
    std::iter::repeat_with(move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        Duration::from_millis(min_ms + seed % spread_ms)
    })
}

/// Poll `f` until it returns `Some`, for at most `timeout`.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
