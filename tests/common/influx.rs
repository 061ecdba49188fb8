//! Test harness: a real `influxd` (Debian `influxdb` 1.6.7) started in a temp dir on free
//! 127.0.0.1 ports, with every listener other than HTTP switched off and reporting disabled.
//! It can be stopped and restarted on the same ports and data dir (outage tests) and is killed
//! on drop.
//!
//! Use it with `use crate::common::influx;`. `examples/bench_sink.rs` includes this file by
//! `#[path]` on its own, hence the allow.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the Debian package installs the server.
const INFLUXD: &str = "/usr/bin/influxd";
/// How long influxd may take to answer /ping after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How the test influxd is configured beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct InfluxOptions {
    /// `[http] auth-enabled`: the harness creates admin user `admin`/`admin-pw` and uses it.
    pub auth: bool,
    /// `[http] max-body-size` in bytes (influxd answers 413 beyond it); None: influxd's 25 MB.
    pub max_body_size: Option<usize>,
}

pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-pw";

pub struct Influx {
    options: InfluxOptions,
    dir: tempfile::TempDir,
    pub http_port: u16,
    pub rpc_port: u16,
    child: Option<Child>,
    agent: ureq::Agent,
}

/// A free 127.0.0.1 port (bound then released; the kernel does not hand it out again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free 127.0.0.1 port")
}

impl Influx {
    /// Start a fresh influxd; panics (test failure) if it does not answer /ping in time.
    pub fn start() -> Influx {
        Influx::start_with(InfluxOptions::default())
    }

    /// Start a fresh influxd with options.
    pub fn start_with(options: InfluxOptions) -> Influx {
        let dir = tempfile::Builder::new()
            .prefix("mqflux-influxd-")
            .tempdir()
            .expect("temp dir");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut influx = Influx {
            options,
            dir,
            http_port: free_port(),
            rpc_port: free_port(),
            child: None,
            agent,
        };
        influx.write_config();
        influx.launch();
        if influx.options.auth {
            // With auth on and no user yet, influxd 1.x accepts exactly this unauthenticated.
            let q = format!(
                "CREATE USER {ADMIN_USER} WITH PASSWORD '{ADMIN_PASSWORD}' WITH ALL PRIVILEGES"
            );
            let r = influx
                .agent
                .post(format!("{}/query", influx.url()))
                .send_form([("q", q.as_str())])
                .expect("create admin");
            assert_eq!(r.status().as_u16(), 200, "CREATE USER failed");
        }
        influx
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("influxdb.conf")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        // Every section that opens a port is either bound to our own free 127.0.0.1 port or
        // disabled; background services that would only add noise or load are off.
        let config = format!(
            r#"reporting-enabled = false
bind-address = "127.0.0.1:{rpc}"

[meta]
  dir = "{d}/meta"
  logging-enabled = false

[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  write-timeout = "10s"

[retention]
  enabled = false

[shard-precreation]
  enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http}"
  auth-enabled = {auth}
  max-body-size = {max_body}
  log-enabled = false
  pprof-enabled = false
  unix-socket-enabled = false

[ifql]
  enabled = false

[logging]
  level = "error"
  suppress-logo = true

[[graphite]]
  enabled = false

[[collectd]]
  enabled = false

[[opentsdb]]
  enabled = false

[[udp]]
  enabled = false

[continuous_queries]
  enabled = false
"#,
            rpc = self.rpc_port,
            auth = self.options.auth,
            max_body = self.options.max_body_size.unwrap_or(25_000_000),
            http = self.http_port,
        );
        std::fs::write(self.config_path(), config).expect("write influxd config");
    }

    fn launch(&mut self) {
        assert!(
            Path::new(INFLUXD).exists(),
            "{INFLUXD} missing: apt-get install influxdb"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("influxd.log"))
            .expect("influxd log file");
        let log2 = log.try_clone().expect("clone log handle");
        let child = Command::new(INFLUXD)
            .arg("-config")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn influxd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "influxd exited at start-up ({status}); log:\n{}",
                        self.log()
                    );
                }
            }
            if let Ok(r) = self.agent.get(format!("{}/ping", self.url())).call() {
                if r.status().as_u16() == 204 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "influxd did not answer /ping in {START_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn authed<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if self.options.auth {
            req.query("u", ADMIN_USER).query("p", ADMIN_PASSWORD)
        } else {
            req
        }
    }

    /// influxd's own output (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("influxd.log")).unwrap_or_default()
    }

    /// Kill influxd (SIGKILL: an outage, not a clean shutdown) and wait for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Process id of the running influxd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Run an InfluxQL statement via /query and return the JSON answer (panics on HTTP errors).
    pub fn query(&self, db: &str, q: &str) -> serde_json::Value {
        let mut r = self
            .authed(self.agent.post(format!("{}/query", self.url())))
            .query("db", db)
            .query("epoch", "ns")
            .send_form([("q", q)])
            .expect("query influxd");
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().expect("query body");
        assert_eq!(status, 200, "query {q:?} failed: {body}");
        serde_json::from_str(&body).expect("query answer is JSON")
    }

    /// The rows of the first series of a SELECT, as JSON arrays, plus the column names.
    pub fn select(&self, db: &str, q: &str) -> (Vec<String>, Vec<Vec<serde_json::Value>>) {
        let v = self.query(db, q);
        let series = &v["results"][0]["series"];
        if series.is_null() {
            let error = v["results"][0]["error"].as_str().unwrap_or_default();
            // Polling before the database exists reads as "nothing yet".
            assert!(
                error.is_empty() || error.starts_with("database not found"),
                "query {q:?} failed: {v}"
            );
            return (Vec::new(), Vec::new());
        }
        let s = &series[0];
        let columns = s["columns"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let rows = s["values"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        (columns, rows)
    }

    /// `SELECT count(field) FROM measurement` (0 when the measurement does not exist).
    pub fn count(&self, db: &str, measurement: &str, field: &str) -> i64 {
        let (_, rows) = self.select(
            db,
            &format!("SELECT count(\"{field}\") FROM \"{measurement}\""),
        );
        rows.first()
            .and_then(|r| r.get(1))
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
    }

    /// Field name -> InfluxDB type ("float", "string", "boolean", "integer") of a measurement.
    pub fn field_types(&self, db: &str, measurement: &str) -> Vec<(String, String)> {
        let (_, rows) = self.select(db, &format!("SHOW FIELD KEYS FROM \"{measurement}\""));
        rows.iter()
            .map(|r| {
                (
                    r[0].as_str().unwrap_or_default().to_string(),
                    r[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Tag keys of a measurement.
    pub fn tag_keys(&self, db: &str, measurement: &str) -> Vec<String> {
        let (_, rows) = self.select(db, &format!("SHOW TAG KEYS FROM \"{measurement}\""));
        rows.iter()
            .map(|r| r[0].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn measurements(&self, db: &str) -> Vec<String> {
        let (_, rows) = self.select(db, "SHOW MEASUREMENTS");
        rows.iter()
            .map(|r| r[0].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn databases(&self) -> Vec<String> {
        let (_, rows) = self.select("", "SHOW DATABASES");
        rows.iter()
            .map(|r| r[0].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub fn create_database(&self, db: &str) {
        self.query("", &format!("CREATE DATABASE \"{db}\""));
    }

    /// POST raw line protocol; returns (status, body).
    pub fn write(&self, db: &str, lines: &str) -> (u16, String) {
        let mut r = self
            .authed(self.agent.post(format!("{}/write", self.url())))
            .query("db", db)
            .query("precision", "ns")
            .send(lines.as_bytes())
            .expect("write to influxd");
        let status = r.status().as_u16();
        (status, r.body_mut().read_to_string().unwrap_or_default())
    }

    /// Poll `f` until it returns true or `timeout` passes (InfluxDB has no change notification).
    pub fn wait_until(&self, timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Influx {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "influxd log ({}):\n{}",
                self.dir.path().display(),
                self.log()
            );
        }
    }
}
