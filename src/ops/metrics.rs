//! The operator's HTTP endpoint (config `[metrics] bind`, off by default):
//! - `GET /metrics`: the broker's figures in the Prometheus text exposition format (0.0.4),
//!   the same `Snapshot` the `$SYS` tree publishes, named per Prometheus conventions
//!   (`_total` counters, base units, `mqflux_` prefix). The `$SYS` load averages are left out:
//!   Prometheus computes rates from the counters itself (`rate(...[5m])`).
//! - `GET /health`: 200 "ok" while the broker serves clients and stores what they publish, 503
//!   with one reason per line otherwise (a listener stopped, the broker shutting down, the last
//!   write to InfluxDB failed). Warnings (the forecast says the spool is too small for an
//!   outage) do not fail it: the answer stays 200, with a `warning: ...` line after "ok".
//!
//! HTTP is served by `http.rs`, a small blocking HTTP/1.1 server (the same threading model as
//! the rest of mqflux) with bounded connections, threads and deadlines; `httparse` parses.

use super::http;
use super::snapshot::Snapshot;
use crate::broker::Broker;
use log::{debug, info};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

pub use http::{MAX_CONNECTIONS, REQUEST_TIMEOUT, WRITE_TIMEOUT};

/// A health check: Ok while its part works, Err(reason) otherwise.
pub type Probe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;
/// A warning for `/health`: Some(text) while it holds; it does not make the broker unhealthy.
pub type Warning = Box<dyn Fn() -> Option<String> + Send + Sync>;

pub struct MetricsServer {
    server: http::Server,
}

impl MetricsServer {
    /// Bind `addr` and serve on a thread named "metrics". Logs `metrics on http://ADDR`.
    /// `probes` are the health checks of parts the broker does not own (e.g. listeners);
    /// `warnings` add lines to `/health` without failing it (e.g. the forecast's spool warning).
    pub fn start(
        broker: &Arc<Broker>,
        addr: SocketAddr,
        probes: Vec<Probe>,
        warnings: Vec<Warning>,
    ) -> Result<MetricsServer, String> {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
        // A response is written in more than one write: with Nagle on, every request after
        // the first on a keep-alive connection (as Prometheus scrapes) waited for the client's
        // delayed ACK, 40 ms. Accepted sockets inherit the option on Linux (and the server
        // sets it on each one too).
        if let Err(e) = socket2::SockRef::from(&listener).set_tcp_nodelay(true) {
            debug!("metrics: cannot set TCP_NODELAY: {e}");
        }
        let broker = broker.clone();
        let handler: Arc<http::Handler> = Arc::new(move |request: &http::Request| {
            respond(request.method, request.path, &broker, &probes, &warnings).into()
        });
        let server = http::Server::start(listener, "metrics", handler, None)
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
        info!(
            "metrics on http://{} (/metrics, /health)",
            server.local_addr()
        );
        Ok(MetricsServer { server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stop serving: close the connections and join the threads.
    pub fn stop(self) {
        self.server.stop();
    }
}

/// Route one request: (status, content type, body).
fn respond(
    method: &str,
    url: &str,
    broker: &Broker,
    probes: &[Probe],
    warnings: &[Warning],
) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET is supported\n".into());
    }
    let path = url.split('?').next().unwrap_or(url);
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(&Snapshot::of(broker)),
        ),
        "/health" => {
            let warned: String = warnings
                .iter()
                .filter_map(|w| w())
                .map(|w| format!("warning: {w}\n"))
                .collect();
            let bridges = bridge_lines(broker);
            match health(broker, probes) {
                Ok(()) => (200, TEXT, format!("ok\n{warned}{bridges}")),
                Err(reasons) => (503, TEXT, reasons.join("\n") + "\n" + &warned + &bridges),
            }
        }
        _ => (404, TEXT, "not found: try /metrics or /health\n".into()),
    }
}

/// One line per bridge after "ok": a bridge that is down does not make the broker unhealthy
/// (it still takes and acknowledges messages, into the durable queue), but is worth a look.
fn bridge_lines(broker: &Broker) -> String {
    crate::ops::snapshot::bridge_figures(broker)
        .iter()
        .map(|b| {
            format!(
                "bridge {}: {} ({}), {} queued, oldest {:.0} s\n",
                b.name,
                if b.up { "up" } else { "down" },
                b.address,
                b.queued_messages,
                b.oldest_age_secs
            )
        })
        .collect()
}

/// Ok when the broker can serve clients; otherwise every reason it cannot.
pub fn health(broker: &Broker, probes: &[Probe]) -> Result<(), Vec<String>> {
    let mut reasons = Vec::new();
    if broker.is_shutting_down() {
        reasons.push("broker is shutting down".to_string());
    }
    reasons.extend(probes.iter().filter_map(|p| p().err()));
    if broker.sink.is_enabled() {
        let k = broker.sink.stats();
        if let Some(e) = k.last_error {
            reasons.push(format!(
                "InfluxDB sink: {e}; {} points held in the spool",
                k.spool_points
            ));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// Prometheus text format: per metric family one `# HELP`, one `# TYPE`, then its samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(&str, u64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(self.0, "{name}{labels} {value}");
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[("", value)]);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help, &[("", value)]);
    }
}

/// The `/metrics` body for one snapshot. Each figure's `$SYS` counterpart is named in its help.
pub fn render(s: &Snapshot) -> String {
    let mut e = Exposition(String::with_capacity(4096));
    e.family(
        "mqflux_build_info",
        "gauge",
        "mqflux version ($SYS/broker/version), as a label; the value is always 1.",
        &[(&format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
    );
    e.gauge(
        "mqflux_uptime_seconds",
        "Seconds since the broker started ($SYS/broker/uptime).",
        s.uptime_secs,
    );
    e.gauge(
        "mqflux_clients_connected",
        "Clients with a live connection ($SYS/broker/clients/connected).",
        s.clients_connected,
    );
    e.gauge(
        "mqflux_clients_disconnected",
        "Persistent sessions whose client is not connected ($SYS/broker/clients/disconnected).",
        s.clients_disconnected(),
    );
    e.gauge(
        "mqflux_sessions",
        "Sessions held, connected or not ($SYS/broker/clients/total).",
        s.sessions,
    );
    e.gauge(
        "mqflux_clients_maximum",
        "Most clients connected at the same time since start ($SYS/broker/clients/maximum).",
        s.clients_maximum,
    );
    e.counter(
        "mqflux_clients_expired_total",
        "Persistent sessions removed because they expired ($SYS/broker/clients/expired).",
        s.clients_expired,
    );
    e.counter(
        "mqflux_connections_total",
        "CONNECTs accepted since start (rate: $SYS/broker/load/connections).",
        s.connections_total,
    );
    e.counter(
        "mqflux_connections_refused_total",
        "Sockets closed at accept because limits.max_connections was reached.",
        s.connections_refused,
    );
    e.counter(
        "mqflux_messages_received_total",
        "MQTT packets of any type received ($SYS/broker/messages/received).",
        s.messages_received,
    );
    e.counter(
        "mqflux_messages_sent_total",
        "MQTT packets of any type sent ($SYS/broker/messages/sent).",
        s.messages_sent,
    );
    e.gauge(
        "mqflux_messages_stored",
        "Retained messages plus messages in flight or queued for sessions ($SYS/broker/messages/stored).",
        s.messages_stored,
    );
    e.counter(
        "mqflux_publish_messages_received_total",
        "PUBLISH packets received from clients ($SYS/broker/publish/messages/received).",
        s.publish_received,
    );
    e.counter(
        "mqflux_publish_messages_sent_total",
        "PUBLISH packets sent to clients ($SYS/broker/publish/messages/sent).",
        s.publish_sent,
    );
    e.family(
        "mqflux_publish_messages_dropped_total",
        "counter",
        "Messages not delivered to a subscriber, by reason ($SYS/broker/publish/messages/dropped is the sum).",
        &[
            ("{reason=\"queue_full\"}", s.dropped_queue_full),
            ("{reason=\"slow_subscriber\"}", s.dropped_slow_subscriber),
        ],
    );
    e.counter(
        "mqflux_stalled_subscribers_disconnected_total",
        "Subscribers disconnected for completing nothing for limits.stalled_subscriber_secs while publishers waited on their full queue ($SYS/broker/clients/stalled).",
        s.stalled_subscribers,
    );
    e.counter(
        "mqflux_received_bytes_total",
        "Bytes of MQTT packets received ($SYS/broker/bytes/received).",
        s.bytes_received,
    );
    e.counter(
        "mqflux_sent_bytes_total",
        "Bytes of MQTT packets sent ($SYS/broker/bytes/sent).",
        s.bytes_sent,
    );
    e.gauge(
        "mqflux_subscriptions",
        "Subscriptions held, one per session and filter ($SYS/broker/subscriptions/count).",
        s.subscriptions,
    );
    e.gauge(
        "mqflux_retained_messages",
        "Retained messages stored ($SYS/broker/retained messages/count).",
        s.retained,
    );
    e.counter(
        "mqflux_retained_messages_refused_total",
        "Retained PUBLISHes not stored because the retained store was full ($SYS/broker/retained messages/refused).",
        s.retained_refused,
    );
    if let Some(bytes) = s.resident_bytes {
        e.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes ($SYS/broker/heap/current).",
            bytes,
        );
    }
    if let Some(k) = &s.sink {
        render_sink(&mut e, k);
    }
    if !s.bridges.is_empty() {
        render_bridges(&mut e, &s.bridges);
    }
    e.0
}

/// The bridges' figures ($SYS/broker/bridge/<connection>/...), one sample per bridge.
fn render_bridges(e: &mut Exposition, bridges: &[crate::bridge::stats::BridgeFigures]) {
    type Figure = fn(&crate::bridge::stats::BridgeFigures) -> u64;
    let families: [(&str, &str, &str, Figure); 9] = [
        ("mqflux_bridge_up", "gauge", "1 while the bridge is connected to its remote ($SYS/broker/bridge/<name>/state).", |b| b.up as u64),
        ("mqflux_bridge_queued_messages", "gauge", "Messages in the bridge's durable queue, in flight included ($SYS/broker/bridge/<name>/queue/messages).", |b| b.queued_messages),
        ("mqflux_bridge_queued_bytes", "gauge", "Bytes of the queued messages (topic + payload + 64 each; queue_max_bytes bounds it).", |b| b.queued_bytes),
        ("mqflux_bridge_oldest_age_seconds", "gauge", "Age of the oldest queued message in whole seconds (0 when the queue is empty).", |b| b.oldest_age_secs as u64),
        ("mqflux_bridge_sent_total", "counter", "Messages sent to the remote (first sends; resends after a reconnection not counted).", |b| b.sent),
        ("mqflux_bridge_acked_total", "counter", "Messages the remote acknowledged (PUBACK, PUBCOMP; QoS 0 once written), which left the queue.", |b| b.acked),
        ("mqflux_bridge_resent_total", "counter", "Messages sent again (DUP) after a reconnection.", |b| b.resent),
        ("mqflux_bridge_received_total", "counter", "Messages received from the remote (`in`) and published locally.", |b| b.received),
        ("mqflux_bridge_reconnects_total", "counter", "Connections to the remote after the first one.", |b| b.reconnects),
    ];
    for (name, kind, help, figure) in families {
        let labels: Vec<(String, u64)> = bridges
            .iter()
            .map(|b| (format!("{{bridge=\"{}\"}}", b.name), figure(b)))
            .collect();
        let samples: Vec<(&str, u64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        e.family(name, kind, help, &samples);
    }
    let mut labels = Vec::new();
    for b in bridges {
        for (reason, n) in [
            ("queue_full", b.dropped_queue_full),
            ("too_large", b.dropped_too_large),
            ("refused", b.dropped_refused),
            ("expired", b.dropped_expired),
            ("denied", b.dropped_denied),
        ] {
            labels.push((format!("{{bridge=\"{}\",reason=\"{reason}\"}}", b.name), n));
        }
    }
    let samples: Vec<(&str, u64)> = labels.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    e.family(
        "mqflux_bridge_dropped_total",
        "counter",
        "Messages a bridge dropped, by reason: queue_full (oldest dropped at queue_max_bytes), too_large (over the remote's packet limit), refused (the remote's v5 reason code >= 0x80), expired (v5 Message Expiry Interval passed in the queue), denied (`in`: local ACL of local_username).",
        &samples,
    );
}

/// The InfluxDB sink's figures ($SYS/broker/sink/...).
fn render_sink(e: &mut Exposition, k: &crate::sink::SinkStats) {
    e.counter(
        "mqflux_sink_points_received_total",
        "Publishes handed to the InfluxDB sink.",
        k.received,
    );
    e.counter(
        "mqflux_sink_points_excluded_total",
        "Publishes not stored by configuration (exclude, store = false).",
        k.excluded,
    );
    e.counter(
        "mqflux_sink_points_written_total",
        "Points InfluxDB accepted.",
        k.written,
    );
    e.counter(
        "mqflux_sink_points_retried_total",
        "Points whose write failed and is tried again, once per failed attempt.",
        k.retried,
    );
    e.counter(
        "mqflux_sink_points_spooled_total",
        "Points written to the on-disk spool.",
        k.spooled,
    );
    e.counter(
        "mqflux_sink_points_replayed_total",
        "Points written to InfluxDB from the spool.",
        k.replayed,
    );
    let dropped: Vec<(String, u64)> = k
        .dropped
        .iter()
        .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), *n))
        .collect();
    let samples: Vec<(&str, u64)> = dropped.iter().map(|(l, n)| (l.as_str(), *n)).collect();
    e.family(
        "mqflux_sink_points_dropped_total",
        "counter",
        "Points not stored, by reason.",
        &samples,
    );
    e.counter(
        "mqflux_sink_write_requests_total",
        "HTTP write requests sent to InfluxDB.",
        k.write_requests,
    );
    e.gauge(
        "mqflux_sink_spool_points",
        "Points waiting in the spool.",
        k.spool_points,
    );
    e.gauge(
        "mqflux_sink_spool_bytes",
        "Size of the spool in bytes.",
        k.spool_bytes,
    );
    e.gauge(
        "mqflux_sink_last_write_ok",
        "1 unless the last write to InfluxDB failed or it has not been reachable since start-up (the reason is in /health and $SYS/broker/sink/last_error).",
        u64::from(k.last_error.is_none()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Check the text exposition format line by line; returns sample name -> value.
    pub fn parse(text: &str) -> std::collections::HashMap<String, f64> {
        let mut samples = std::collections::HashMap::new();
        let mut helped = std::collections::HashSet::new();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name.to_string()), "second HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut w = rest.split(' ');
                let name = w.next().unwrap();
                let kind = w.next().unwrap();
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(!name.ends_with("_total") || kind == "counter", "{line}");
                assert!(typed.insert(name.to_string()), "second TYPE: {line}");
            } else {
                let (series, value) = line.rsplit_once(' ').expect(line);
                let name = series.split('{').next().unwrap();
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(helped.contains(name) && typed.contains(name), "{line}");
                let v: f64 = value.parse().expect(line);
                samples.insert(series.to_string(), v);
            }
        }
        samples
    }

    #[test]
    fn every_metric_has_help_and_type_and_a_numeric_value() {
        let s = Snapshot {
            publish_received: 5,
            dropped_slow_subscriber: 2,
            retained_refused: 3,
            resident_bytes: Some(1 << 20),
            ..Default::default()
        };
        let m = parse(&render(&s));
        assert_eq!(m["mqflux_publish_messages_received_total"], 5.0);
        assert_eq!(
            m["mqflux_publish_messages_dropped_total{reason=\"slow_subscriber\"}"],
            2.0
        );
        assert_eq!(m["mqflux_retained_messages_refused_total"], 3.0);
        assert_eq!(m["process_resident_memory_bytes"], 1048576.0);
        assert!(render(&s).ends_with('\n'));
    }

    fn broker() -> Arc<Broker> {
        let sink = crate::sink::Sink::start(&Default::default()).expect("sink");
        let security = crate::broker::security::SecurityFiles::load(None, None).expect("no files");
        Broker::new(crate::config::Config::default(), sink, security)
    }

    #[test]
    fn health_is_ok_when_every_probe_passes() {
        let b = broker();
        let probes: Vec<Probe> = vec![Box::new(|| Ok(()))];
        let (status, _, body) = respond("GET", "/health", &b, &probes, &[]);
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }

    #[test]
    fn health_warnings_are_listed_after_ok_without_failing_it() {
        let b = broker();
        let warnings: Vec<Warning> = vec![
            Box::new(|| Some("spool too small".into())),
            Box::new(|| None),
        ];
        let (status, _, body) = respond("GET", "/health", &b, &[], &warnings);
        assert_eq!(status, 200);
        assert_eq!(body, "ok\nwarning: spool too small\n");
    }

    #[test]
    fn health_is_503_with_every_failing_reason() {
        let b = broker();
        let probes: Vec<Probe> = vec![
            Box::new(|| Err("listener tcp://127.0.0.1:1 is not accepting connections".into())),
            Box::new(|| Ok(())),
        ];
        let (status, _, body) = respond("GET", "/health", &b, &probes, &[]);
        assert_eq!(status, 503);
        assert_eq!(
            body,
            "listener tcp://127.0.0.1:1 is not accepting connections\n"
        );
        b.shutdown(std::time::Duration::from_secs(1));
        let (status, _, body) = respond("GET", "/health", &b, &probes, &[]);
        assert_eq!(status, 503);
        assert!(body.starts_with("broker is shutting down\n"), "{body}");
    }

    #[test]
    fn listener_probe_fails_once_the_listener_stopped() {
        let b = broker();
        let settings = crate::config::ListenerConfig {
            bind: "127.0.0.1".into(),
            port: Some(0),
            ..Default::default()
        };
        let listener = crate::broker::listener::Listener::start(&b, &settings).unwrap();
        let probe = listener.probe();
        assert_eq!(probe(), Ok(()));
        b.shutdown(std::time::Duration::from_secs(1));
        listener.stop();
        assert!(probe().unwrap_err().contains("not accepting"));
    }

    #[test]
    fn sink_figures_are_valid_prometheus_text() {
        let s = Snapshot {
            sink: Some(crate::sink::SinkStats {
                written: 10,
                dropped: vec![("rejected", 2), ("spool_full", 1)],
                last_error: Some("connection refused".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let m = parse(&render(&s));
        assert_eq!(m["mqflux_sink_points_written_total"], 10.0);
        assert_eq!(
            m["mqflux_sink_points_dropped_total{reason=\"rejected\"}"],
            2.0
        );
        assert_eq!(m["mqflux_sink_last_write_ok"], 0.0);
        assert!(!parse(&render(&Snapshot::default())).contains_key("mqflux_sink_spool_bytes"));
    }
}
