//! Password files are interchangeable with mosquitto's, in both directions: files written by
//! Debian's `mosquitto_passwd` load in mqflux, and entries written by `mqflux passwd` are
//! accepted by a real `/usr/sbin/mosquitto` broker (checked with `mosquitto_pub`).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Cursor};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mqflux::broker::acl::AclFile;
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
    /// Start with `security` (e.g. `password_file ...`, `acl_file ...`) in the config.
    fn start(dir: &Path, security: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             {security}\n\
             persistence false\n\
             log_dest stderr\n\
             log_type all\n\
             # When run as root, mosquitto would switch to the `mosquitto` user, which cannot\n\
             # read a 0600 file in our temp dir; this keeps it as the current user.\n\
             user root\n"
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
        // Wait for the event "started", not for a fixed time.
        let deadline = Instant::now() + BROKER_START_TIMEOUT;
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    // "Opening ... listen socket" is logged before bind(); "running" after
                    // every listener is up.
                    let ready = line.contains("mosquitto version") && line.ends_with(" running");
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

    let security = format!("allow_anonymous false\npassword_file {}", file.display());
    let broker = Mosquitto::start(dir.path(), &security);
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

/// A client process (`mosquitto_sub`) whose stdout lines are read by a thread; killed on drop.
struct LineSource {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl LineSource {
    fn spawn(program: &str, args: &[&str]) -> LineSource {
        // stdbuf: mosquitto_sub's stdout to a pipe is block-buffered; we need each line as it
        // is printed to know when it has subscribed.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{program}-stdout"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn stdout reader");
        LineSource { child, lines }
    }

    /// Lines up to and including the first one for which `last` is true.
    fn read_until(&self, what: &str, last: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = last(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => panic!("timed out waiting for {what}; got:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for LineSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ACL under test, plus harness rules: `spy` reads everything, `writer` writes
/// everything, and each identity below can read some end-of-round marker topic.
const DIFFERENTIAL_ACL: &str = "\
# anonymous clients
topic read public/#
topic write anon/in
topic read done/anon

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read shared/+/status

user bob
topic deny bob/x
topic readwrite bob/#

user carol
topic read done/carol

user eve+
topic read done/eve

user spy
topic read #

user writer
topic write #

pattern readwrite dev/%c/#
pattern deny dev/%c/locked
pattern read inbox/%u
# A user-section allow is decided before pattern denies (mosquitto's order).
pattern deny %u/blocked
";

/// (client id, username, a topic it can read that marks the end of a round).
const IDENTITIES: &[(&str, Option<&str>, &str)] = &[
    ("anon1", None, "done/anon"),
    ("c-alice", Some("alice"), "alice/done"),
    ("c-bob", Some("bob"), "bob/done"),
    ("c-carol", Some("carol"), "done/carol"),
    // A username without a section: only patterns apply.
    ("c-dave", Some("dave"), "inbox/dave"),
    // Wildcards in client id or username: patterns must not apply.
    ("evil#", Some("carol"), "done/carol"),
    ("c-eve", Some("eve+"), "done/eve"),
];

const TOPICS: &[&str] = &[
    "public/news",
    "anon/in",
    "alice/a",
    "alice/secret/k",
    "alice/blocked",
    "shared/x/status",
    "bob/x",
    "bob/y",
    "dev/anon1/t",
    "dev/c-carol/t",
    "dev/c-carol/locked",
    "dev/c-eve/t",
    "inbox/carol",
    "inbox/alice",
];

fn client_args<'a>(port: &'a str, id: &'a str, user: Option<&'a str>) -> Vec<&'a str> {
    let mut a = vec![
        "-h",
        "127.0.0.1",
        "-p",
        port,
        "-V",
        "mqttv311",
        "-q",
        "1",
        "-i",
        id,
    ];
    if let Some(u) = user {
        a.extend(["-u", u]);
    }
    a
}

fn publish(port: &str, id: &str, user: Option<&str>, topic: &str, payload: &str) {
    let mut args = client_args(port, id, user);
    args.extend(["-t", topic, "-m", payload]);
    let out = run_bounded("mosquitto_pub", &args);
    // 3.1.1 has no negative PUBACK: a denied publish is acknowledged and dropped, so the
    // client succeeds either way [MQTT-3.3.5-2].
    assert!(
        out.status.success(),
        "mosquitto_pub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `topic payload` lines (from `mosquitto_sub -v`) whose payload is `payload`.
fn topics_with_payload(lines: &[String], payload: &str) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_suffix(&format!(" {payload}")))
        .map(str::to_string)
        .collect()
}

#[test]
fn acl_decisions_match_mosquitto_for_publish_and_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let acl_path = dir.path().join("acl");
    std::fs::write(&acl_path, DIFFERENTIAL_ACL).expect("write acl");
    let acl = AclFile::load(&acl_path).expect("our parser accepts the file");
    let broker = Mosquitto::start(
        dir.path(),
        &format!("allow_anonymous true\nacl_file {}", acl_path.display()),
    );
    let port = broker.port.to_string();
    let port = port.as_str();

    // Write access: each identity publishes on every topic; the spy sees what got through.
    // mosquitto_pub waits for PUBACK, so messages reach the spy in publishing order and the
    // writer's final marker arrives after all of them.
    let mut args = client_args(port, "spy", Some("spy"));
    args.extend(["-t", "#", "-v", "-d"]);
    let spy = LineSource::spawn("mosquitto_sub", &args);
    spy.read_until("spy SUBACK", |l| l.contains("received SUBACK"));
    for &(id, user, _) in IDENTITIES {
        for &topic in TOPICS {
            publish(port, id, user, topic, &format!("from-{id}"));
        }
    }
    publish(port, "writer", Some("writer"), "done/spy", "end");
    let seen = spy.read_until("spy end marker", |l| l == "done/spy end");
    drop(spy);
    let mut mismatches = Vec::new();
    let mut allowed = [0usize; 2]; // [write, read] decisions mosquitto allowed
    for &(id, user, _) in IDENTITIES {
        let got = topics_with_payload(&seen, &format!("from-{id}"));
        for &topic in TOPICS {
            let mosquitto = got.contains(topic);
            let ours = acl.can_publish(id, user, topic);
            allowed[0] += usize::from(mosquitto);
            if mosquitto != ours {
                mismatches.push(format!(
                    "write {id}/{user:?} {topic}: mosquitto {mosquitto}, mqflux {ours}"
                ));
            }
        }
    }

    // Read access: each identity subscribes to `#`; the writer publishes every topic, then the
    // identity's end marker.
    for &(id, user, marker) in IDENTITIES {
        let mut args = client_args(port, id, user);
        args.extend(["-t", "#", "-v", "-d"]);
        let reader = LineSource::spawn("mosquitto_sub", &args);
        reader.read_until("reader SUBACK", |l| l.contains("received SUBACK"));
        for &topic in TOPICS {
            publish(port, "writer", Some("writer"), topic, "msg");
        }
        publish(port, "writer", Some("writer"), marker, "end");
        let end_line = format!("{marker} end");
        let lines = reader.read_until("reader end marker", |l| l == end_line);
        let got = topics_with_payload(&lines, "msg");
        for &topic in TOPICS {
            let mosquitto = got.contains(topic);
            let ours = acl.can_receive(id, user, topic);
            allowed[1] += usize::from(mosquitto);
            if mosquitto != ours {
                mismatches.push(format!(
                    "read {id}/{user:?} {topic}: mosquitto {mosquitto}, mqflux {ours}"
                ));
            }
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // The comparison means something only if both outcomes occurred.
    let total = IDENTITIES.len() * TOPICS.len();
    for (what, n) in ["write", "read"].iter().zip(allowed) {
        assert!(
            n > 0 && n < total,
            "{what}: mosquitto allowed {n} of {total}"
        );
    }
}
