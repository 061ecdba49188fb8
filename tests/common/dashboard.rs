//! The web dashboard from the outside: its address from the log, HTTP/1.1 requests with
//! headers (Basic credentials, the CSRF token, Origin), JSON answers, and a Server-Sent Events
//! reader; and a broker with a password file (admin and a non-admin) and a dashboard.

use super::Broker;
use base64::Engine;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const ADMIN: (&str, &str) = ("admin", "s3cret-admin");
pub const VIEWER: (&str, &str) = ("viewer", "s3cret-viewer");

/// `dashboard on http://ADDR/` from the log.
pub fn dashboard_addr(broker: &Broker) -> SocketAddr {
    let line = broker.wait_for_log(&["dashboard on http"]);
    let rest = &line[line.find("://").unwrap() + 3..];
    let addr: String = rest.chars().take_while(|c| *c != '/').collect();
    addr.parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"))
}

/// Write a password file with `ADMIN` and `VIEWER` into `dir` (`mqflux passwd`, as a user
/// would); returns its path.
pub fn password_file(dir: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("passwords");
    for (user, password) in [ADMIN, VIEWER] {
        let (status, out) = super::run_to_exit(
            &[
                "passwd",
                file.to_str().unwrap(),
                user,
                "--password",
                password,
            ],
            Duration::from_secs(30),
        );
        assert!(status.success(), "mqflux passwd failed: {out}");
    }
    file
}

/// A broker with a plain listener, the password file, `[dashboard]` on a free port with
/// `ADMIN` as its admin, and `extra` TOML appended.
pub fn broker_with_dashboard(extra: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let passwords = password_file(dir.path());
    let config = format!(
        r#"
sys_interval = 0
[[listeners]]
bind = "127.0.0.1"
[security]
allow_anonymous = true
password_file = "{}"
[dashboard]
bind = "127.0.0.1:0"
admins = ["{}"]
{extra}
"#,
        passwords.display(),
        ADMIN.0
    );
    Broker::builder().dir(dir).config(&config).start()
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request with `headers`; `user` adds HTTP Basic credentials.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    user: Option<(&str, &str)>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    if let Some((u, p)) = user {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        head.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `GET path` (read-only, no credentials), expecting 200 and JSON.
pub fn get(addr: SocketAddr, path: &str) -> Value {
    let a = request(addr, "GET", path, None, &[]);
    assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    a.json()
}

/// The CSRF token of `user` (GET /api/v1/csrf).
pub fn csrf_token(addr: SocketAddr, user: (&str, &str)) -> String {
    let a = request(addr, "GET", "/api/v1/csrf", Some(user), &[]);
    assert_eq!(a.status, 200, "GET /api/v1/csrf: {}", a.body);
    a.json()["token"].as_str().unwrap().to_string()
}

/// An admin action as the pages send it: credentials, token and this site's Origin.
pub fn act(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let token = csrf_token(addr, ADMIN);
    let origin = format!("http://{addr}");
    request(
        addr,
        method,
        path,
        Some(ADMIN),
        &[("X-CSRF-Token", &token), ("Origin", &origin)],
    )
}

/// A Server-Sent Events stream (`GET /api/v1/events`).
pub struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    pub fn open(addr: SocketAddr) -> Events {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        write!(
            stream,
            "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut content_type = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-type") {
                    content_type = Some(v.trim().to_string());
                }
            }
        }
        assert_eq!(content_type.as_deref(), Some("text/event-stream"));
        Events { reader }
    }

    /// The next `sample` event's data, within `timeout`.
    pub fn next_sample(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut event = String::new();
        let mut data = String::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no sample event within {timeout:?}"
            );
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read event stream");
            assert!(n > 0, "event stream closed");
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if event == "sample" && !data.is_empty() {
                    return serde_json::from_str(&data).unwrap();
                }
                event.clear();
                data.clear();
            } else if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
    }
}
