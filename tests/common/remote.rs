//! A real second broker for bridge tests: Debian's `mosquitto` on a free loopback port, with a
//! config of our choosing, which can be killed and started again on the same port. It runs
//! without persistence (it drops root and could not write a test's temp dir): a kill loses
//! its sessions, as a crash of a broker without persistence does.

use super::spawned::Spawned;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: String,
    process: Option<Spawned>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Mosquitto {
    /// Start with `extra` mosquitto.conf lines appended (after the listener and logging lines).
    pub fn start(extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            extra: extra.to_string(),
            process: None,
        };
        m.spawn();
        m
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn spawn(&mut self) {
        let conf = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type all\n\
             {}\n",
            self.port, self.extra
        );
        let path = self.dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        let mut cmd = Command::new("/usr/sbin/mosquitto");
        cmd.arg("-c").arg(&path);
        let p = Spawned::start(cmd);
        let port = self.port;
        super::eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .unwrap_or_else(|| panic!("mosquitto did not listen on {port}: {}", p.output()));
        self.process = Some(p);
    }

    /// SIGKILL (nothing saved since the last autosave).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.signal_group(libc::SIGKILL);
            p.wait_exit(Duration::from_secs(5));
        }
    }

    /// Start again on the same port with the same config (and no state).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(|p| p.output())
            .unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
