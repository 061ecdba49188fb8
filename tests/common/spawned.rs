//! Test harness: a command other than the harness's own broker start (a script, or `mqflux`
//! with options the `Broker` builder always sets, such as `--config`), run in its own process
//! group, with its stderr (and stdout) collected line by line so tests can wait for a line.
//! `interrupt()` sends SIGINT to the whole group, as Ctrl-C in a terminal does; the group is
//! SIGKILLed on drop, with anything else registered through `also_kill`.
//!
//! Use it with `use crate::common::spawned;`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Output {
    text: Mutex<(String, usize)>, // (text, open streams)
    changed: Condvar,
}

pub struct Spawned {
    child: Child,
    output: Arc<Output>,
    status: Option<ExitStatus>,
    /// Further process ids to SIGKILL on drop (e.g. a daemon the command started in a session
    /// of its own), read lazily from pid files that may not exist yet.
    pid_files: Vec<(std::path::PathBuf, &'static str)>,
}

impl Spawned {
    /// Start `cmd` as the leader of a new process group; stdin is /dev/null.
    pub fn start(mut cmd: Command) -> Spawned {
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let output = Arc::new(Output::default());
        output.text.lock().unwrap().1 = 2;
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for stream in streams {
            let output = Arc::clone(&output);
            std::thread::Builder::new()
                .name("spawned-output".into())
                .spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let Ok(line) = line else { break };
                        let mut t = output.text.lock().unwrap();
                        t.0.push_str(&line);
                        t.0.push('\n');
                        output.changed.notify_all();
                    }
                    output.text.lock().unwrap().1 -= 1;
                    output.changed.notify_all();
                })
                .expect("spawn output reader");
        }
        Spawned {
            child,
            output,
            status: None,
            pid_files: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Also SIGKILL the process whose id is in `pid_file` (if any) on drop, provided its
    /// command line still contains `name` (the id is not someone else's by now).
    pub fn also_kill(&mut self, pid_file: std::path::PathBuf, name: &'static str) {
        self.pid_files.push((pid_file, name));
    }

    /// Everything written so far.
    pub fn output(&self) -> String {
        self.output.text.lock().unwrap().0.clone()
    }

    /// Wait for a line containing `needle` (after byte `from`); panics with the output if it
    /// does not come within `timeout` or the output ends first.
    pub fn wait_for_line(&self, from: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut t = self.output.text.lock().unwrap();
        loop {
            if let Some(l) =
                t.0.get(from..)
                    .unwrap_or("")
                    .lines()
                    .find(|l| l.contains(needle))
            {
                return l.to_string();
            }
            let now = Instant::now();
            assert!(
                now < deadline && t.1 > 0,
                "no line containing {needle:?} within {timeout:?} (output closed: {}); output:\n{}",
                t.1 == 0,
                t.0
            );
            t = self
                .output
                .changed
                .wait_timeout(t, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Send `signal` to the whole process group (SIGINT: what Ctrl-C in a terminal does).
    pub fn signal_group(&self, signal: i32) {
        // SAFETY: kill(2) with a negative pid signals the process group we created in `start`.
        let rc = unsafe { libc::kill(-(self.child.id() as libc::pid_t), signal) };
        assert_eq!(rc, 0, "kill(-{}, {signal}) failed", self.child.id());
    }

    pub fn interrupt(&self) {
        self.signal_group(libc::SIGINT);
    }

    /// Wait for the leader to exit (None on timeout, leaving it running); then for its output
    /// to be read to the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.status = Some(status);
                let mut t = self.output.text.lock().unwrap();
                while t.1 > 0 && Instant::now() < deadline + Duration::from_secs(2) {
                    t = self
                        .output
                        .changed
                        .wait_timeout(t, Duration::from_millis(100))
                        .unwrap()
                        .0;
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether a process with this id exists (a zombie counts: it has not been reaped).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The process id in a pid file, if it holds one.
pub fn read_pid(file: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if self.status.is_none() {
            // SAFETY: as in `signal_group`; the group may be gone already (ESRCH is fine).
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = self.child.wait();
        }
        for (f, name) in &self.pid_files {
            let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).ok();
            let ours =
                |pid: u32| cmdline(pid).is_some_and(|c| String::from_utf8_lossy(&c).contains(name));
            if let Some(pid) = read_pid(f).filter(|&pid| ours(pid)) {
                // SAFETY: kill(2) on a pid the spawned command wrote; at worst ESRCH.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if std::thread::panicking() {
            eprintln!("----- output -----\n{}----- end -----", self.output());
        }
    }
}
