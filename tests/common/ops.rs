//! Helpers shared by the ops tests: find the metrics endpoint, speak HTTP/1.1 to it, and check
//! the Prometheus text exposition format line by line.

use super::Broker;
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// `metrics on http://ADDR` from the log of a broker started with `[metrics] bind = ...:0`.
pub fn metrics_addr(broker: &Broker) -> SocketAddr {
    let line = broker.wait_for_log(&["metrics on http://"]);
    let rest = &line[line.find("http://").unwrap() + 7..];
    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    addr.parse()
        .unwrap_or_else(|_| panic!("no address in {line:?}"))
}

/// One HTTP/1.1 request; returns (status, content type, body).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

/// Check every line of a Prometheus text exposition and return sample -> value.
/// Rules (exposition format 0.0.4): `# HELP name text` and `# TYPE name kind` once per family,
/// before its samples; sample lines `name{labels} value` with a valid metric name and a float.
pub fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let (mut helped, mut typed) = (HashSet::new(), HashMap::new());
    let mut samples = HashMap::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect(line);
            assert!(valid_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                !name.ends_with("_total") || kind == "counter",
                "only counters end in _total: {line}"
            );
            assert!(
                typed.insert(name.to_string(), kind.to_string()).is_none(),
                "{line}"
            );
        } else {
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect(line);
            let name = series.split('{').next().unwrap();
            assert!(valid_name(name), "{line}");
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect(line);
                    assert!(valid_name(k), "{line}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "{line}"
                    );
                }
            }
            assert!(
                helped.contains(name) && typed.contains_key(name),
                "sample before its HELP/TYPE: {line}"
            );
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            assert!(v.is_finite() && v >= 0.0, "{line}");
            samples.insert(series.to_string(), v);
        }
    }
    samples
}

pub fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, content_type, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse_prometheus(&body)
}

/// The start of a broker config with a listener, `/metrics` and an enabled `[sink]` writing to
/// `database` at `influx_url` with its spool in `spool`; the caller appends its own sink keys.
pub fn sink_config_head(influx_url: &str, database: &str, spool: &Path) -> String {
    format!(
        r#"
[[listeners]]
bind = "127.0.0.1"

[metrics]
bind = "127.0.0.1:0"

[sink]
enabled = true
url = "{influx_url}"
database = "{database}"
spool_dir = "{spool}"
"#,
        spool = spool.display()
    )
}
