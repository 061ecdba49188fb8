//! Password files are interchangeable with mosquitto's, in both directions: files written by
//! Debian's `mosquitto_passwd` load in mqflux, and entries written by `mqflux passwd` are
//! accepted by a real `/usr/sbin/mosquitto` broker (checked with `mosquitto_pub`).

use std::io::{BufRead, BufReader, Cursor};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use mqflux::broker::auth::{run_passwd, AuthRefusal, PasswordFile, PasswordHash};

const CLIENT_TIMEOUT_SECS: &str = "10";
const BROKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Run a command bounded by coreutils `timeout`, so a hung client cannot hang the test.
fn run_bounded(program: &str, args: &[&str]) -> Output {
    let out = Command::new("timeout")
        .args(["-k", "2", CLIENT_TIMEOUT_SECS, program])
        .args(args)
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => {
            assert_ne!(
                o.status.code(),
                Some(124),
                "{program} {args:?} timed out: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            o
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

fn mosquitto_passwd(args: &[&str]) {
    let out = run_bounded("mosquitto_passwd", args);
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A real mosquitto broker on 127.0.0.1, killed when dropped.
struct Mosquitto {
    child: Child,
    port: u16,
}

impl Mosquitto {
    fn start(dir: &Path, password_file: &Path) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous false\n\
             password_file {}\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n\
             # When run as root, mosquitto would switch to the `mosquitto` user, which cannot\n\
             # read a 0600 file in our temp dir; this keeps it as the current user.\n\
             user root\n",
            password_file.display()
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start /usr/sbin/mosquitto");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("mosquitto-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    // Keep draining after startup so mosquitto never blocks on a full pipe.
                    let _ = tx.send(line);
                }
            })
            .expect("spawn log reader");
        let mut broker = Mosquitto { child, port };
        // Wait for the event "listening", not for a fixed time.
        let deadline = std::time::Instant::now() + BROKER_START_TIMEOUT;
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.contains(&format!("listen socket on port {port}"));
                    log.push(line);
                    if ready {
                        return broker;
                    }
                }
                Err(_) => {
                    let status = broker.child.try_wait().ok().flatten();
                    panic!(
                        "mosquitto did not start (exit: {status:?}); log:\n{}",
                        log.join("\n")
                    );
                }
            }
        }
    }

    /// `mosquitto_pub` one message with these credentials; returns its exit code, which is
    /// 0 on success and the CONNACK code when the broker refuses the connection.
    fn publish_exit_code(&self, user: &str, password: &str, protocol: &str) -> Option<i32> {
        let port = self.port.to_string();
        let out = run_bounded(
            "mosquitto_pub",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                protocol,
                "-u",
                user,
                "-P",
                password,
                "-t",
                "auth/test",
                "-m",
                "hello",
                "-q",
                "1",
            ],
        );
        out.status.code()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn password_file_written_by_mosquitto_passwd_is_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    let f = file.to_str().expect("utf-8 path");
    // Default hash ($7$, PBKDF2-SHA512, 101 iterations, 12-byte salt).
    mosquitto_passwd(&["-c", "-b", f, "alice", "correct horse"]);
    // Legacy hash ($6$, salted SHA-512), as mosquitto 1.x wrote.
    mosquitto_passwd(&["-H", "sha512", "-b", f, "bob", "b0b's pässword"]);
    // Explicit PBKDF2 and a second user to check that several entries coexist.
    mosquitto_passwd(&["-H", "sha512-pbkdf2", "-b", f, "carol", "x"]);
    // Updating a user rewrites its entry; the old password must stop working.
    mosquitto_passwd(&["-b", f, "carol", "carol-2"]);

    let text = std::fs::read_to_string(&file).expect("read passwd");
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(text.contains("bob:$6$"), "{text}");

    let pw = PasswordFile::load(&file).expect("load");
    assert!(pw.skipped_lines().is_empty(), "{:?}", pw.skipped_lines());
    assert_eq!(pw.len(), 3);
    assert!(pw.check("alice", b"correct horse"));
    assert!(!pw.check("alice", b"correct horse "));
    assert!(!pw.check("alice", b"b0b's p\xc3\xa4ssword"));
    assert!(pw.check("bob", "b0b's pässword".as_bytes()));
    assert!(!pw.check("bob", b"b0b's password"));
    assert!(pw.check("carol", b"carol-2"));
    assert!(!pw.check("carol", b"x"));
    assert!(!pw.check("dave", b"x"));
}

#[test]
fn mosquitto_passwd_can_update_a_file_written_by_mqflux() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    run_passwd(
        &file,
        "alice",
        Some("ours".into()),
        &mut Cursor::new(Vec::new()),
    )
    .expect("mqflux passwd");
    let f = file.to_str().expect("utf-8 path");
    mosquitto_passwd(&["-b", f, "bob", "theirs"]);
    let pw = PasswordFile::load(&file).expect("load");
    assert!(pw.check("alice", b"ours"));
    assert!(pw.check("bob", b"theirs"));
}

#[test]
fn entries_written_by_mqflux_passwd_are_accepted_by_mosquitto() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("passwd");
    // Password given as an argument (`--password`) and as a line on stdin.
    run_passwd(
        &file,
        "alice",
        Some("alice-pw".into()),
        &mut Cursor::new(Vec::new()),
    )
    .expect("passwd alice");
    run_passwd(&file, "bob", None, &mut Cursor::new(b"bob pw\n".to_vec())).expect("passwd bob");
    // Updating keeps the other users.
    run_passwd(
        &file,
        "alice",
        Some("alice-pw-2".into()),
        &mut Cursor::new(Vec::new()),
    )
    .expect("passwd alice again");
    // A non-default iteration count (mosquitto_passwd 2.0.11 has no option to choose one):
    // mosquitto must honour the count stored in the entry.
    let carol = PasswordHash::pbkdf2_with(b"carol-pw", b"0123456789ab".to_vec(), 1000);
    mqflux::broker::auth::set_entry(&file, "carol", &carol).expect("set carol");

    let text = std::fs::read_to_string(&file).expect("read passwd");
    let users: Vec<&str> = text.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(users, ["alice", "bob", "carol"], "{text}");

    let broker = Mosquitto::start(dir.path(), &file);
    // mosquitto refuses with the codes mqflux uses too (AuthRefusal::CONNACK_V3 / _V5).
    for (proto, refused) in [
        ("mqttv311", AuthRefusal::CONNACK_V3),
        ("mqttv5", AuthRefusal::CONNACK_V5),
    ] {
        let refused = Some(i32::from(refused));
        let code = |user, pw| broker.publish_exit_code(user, pw, proto);
        assert_eq!(code("alice", "alice-pw-2"), Some(0), "alice {proto}");
        assert_eq!(code("bob", "bob pw"), Some(0), "bob {proto}");
        assert_eq!(code("carol", "carol-pw"), Some(0), "carol {proto}");
        assert_eq!(code("alice", "alice-pw"), refused, "old password {proto}");
        assert_eq!(code("bob", "wrong"), refused, "wrong password {proto}");
        assert_eq!(code("mallory", "bob pw"), refused, "unknown user {proto}");
    }
}
