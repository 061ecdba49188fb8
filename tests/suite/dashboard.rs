//! The web dashboard's API (`[dashboard]`, `ops::dashboard`) against the real binary, real
//! MQTT clients and a real influxd: what it shows equals what is connected, published and
//! written; its actions act; who may act is checked.

use crate::common;
use crate::common::codec::{self, RawClient};
use crate::common::dashboard::{self, act, get, request, Events, ADMIN, VIEWER};
use crate::common::influx::Influx;
use mqflux::protocol::{reason, Properties, QoS};
use serde_json::Value;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn client_ids(clients: &Value) -> Vec<String> {
    let mut ids: Vec<String> = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Poll `f` until it returns Some, for at most `WAIT`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    common::eventually(WAIT, &mut f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

#[test]
fn counts_and_clients_equal_the_real_connections_and_sink_figures_match_influxdb() {
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = dashboard::broker_with_dashboard(&format!(
        r#"
[sink]
enabled = true
url = "{}"
database = "dash"
spool_dir = "{}"
flush_interval_ms = 50
[[sink.rules]]
topic = "sensors/{{device}}/{{measurement}}"
"#,
        influx.url(),
        spool.path().display()
    ));
    let addr = dashboard::dashboard_addr(&broker);
    let port = broker.port;
    let mut v5 = RawClient::connect_v5(port, "dash-v5", Properties::default());
    let v311 = RawClient::connect_v311(port, "dash-v311");
    let _third = RawClient::connect_v5(port, "dash-third", Properties::default());
    v5.subscribe("sensors/#", QoS::AtLeastOnce);

    let clients = get(addr, "/api/v1/clients");
    assert_eq!(clients["total"], 3, "{clients}");
    assert_eq!(client_ids(&clients), ["dash-third", "dash-v311", "dash-v5"]);
    let row = clients["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "dash-v311")
        .unwrap();
    assert_eq!(row["protocol"], "3.1.1");
    assert_eq!(row["connected"], true);
    assert_eq!(row["keep_alive"], 30);
    assert_eq!(row["persistent"], false);
    assert!(row["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    let detail = get(addr, "/api/v1/clients/dash-v5");
    assert_eq!(detail["subscriptions"][0]["filter"], "sensors/#");
    assert_eq!(detail["subscriptions"][0]["qos"], 1);
    // Search and paging.
    let found = get(addr, "/api/v1/clients?q=V311");
    assert_eq!(client_ids(&found), ["dash-v311"]);
    let page2 = get(addr, "/api/v1/clients?per_page=2&page=2");
    assert_eq!(
        (page2["total"].as_u64(), client_ids(&page2).len()),
        (Some(3), 1)
    );

    // The overview counts what the sampler read after the third client connected.
    wait_for("overview with 3 connections", || {
        let o = get(addr, "/api/v1/overview");
        (o["connections"] == 3 && o["subscriptions"] == 1).then_some(o)
    });
    v311.disconnect();
    wait_for("overview with 2 connections", || {
        let o = get(addr, "/api/v1/overview");
        (o["connections"] == 2 && get(addr, "/api/v1/clients")["total"] == 2).then_some(())
    });

    for i in 0..20 {
        v5.publish_with(
            "sensors/kitchen/temperature",
            format!("{}", 20 + i).as_bytes(),
            QoS::AtLeastOnce,
            false,
            Properties::default(),
        );
    }
    assert!(influx.wait_until(WAIT, || influx.count("dash", "temperature", "value") == 20));
    let sink = wait_for("the sink page to show the 20 points", || {
        let s = get(addr, "/api/v1/sink");
        (s["stats"]["written"] == 20).then_some(s)
    });
    let last = &sink["last_points"][0];
    assert_eq!(last["measurement"], "temperature");
    let line = last["line"].as_str().unwrap();
    assert!(line.starts_with("temperature,device=kitchen"), "{line}");
    assert!(line.contains("value=39"), "the last point written: {line}");
    assert_eq!(sink["rules"][0]["topic"], "sensors/{device}/{measurement}");
    // The overview's counters are the sampler's, taken once a second.
    let o = wait_for("the overview to count the 20 publishes", || {
        let o = get(addr, "/api/v1/overview");
        (o["messages_in"] == 20).then_some(o)
    });
    assert_eq!(o["sink"]["enabled"], true);
    assert_eq!(o["sink"]["written"], 20);
    assert_eq!(o["sink"]["last_error"], Value::Null);
}

#[test]
fn server_sent_events_deliver_rising_counters_while_a_client_publishes() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut events = Events::open(addr);
    let first = events.next_sample(WAIT);
    let mut publisher = RawClient::connect_v5(broker.port, "sse-pub", Properties::default());
    let mut seen = vec![first["messages_in"].as_u64().unwrap()];
    let mut seqs = vec![first["seq"].as_u64().unwrap()];
    let deadline = Instant::now() + WAIT;
    let mut sent = 0;
    while seen.len() < 4 && Instant::now() < deadline {
        for _ in 0..10 {
            publisher.publish("sse/topic", "x", QoS::AtLeastOnce);
            sent += 1;
        }
        let s = events.next_sample(WAIT);
        let n = s["messages_in"].as_u64().unwrap();
        if n > *seen.last().unwrap() {
            seen.push(n);
            seqs.push(s["seq"].as_u64().unwrap());
            assert!(s["connections"].as_u64().unwrap() >= 1);
        }
    }
    assert!(seen.len() >= 4, "counters did not rise: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(*seen.last().unwrap() <= sent);
    // The busiest topics include the one published to (sampled 1 in 8: 30+ publishes suffice
    // with overwhelming probability only over several rounds, so wait for it).
    wait_for("sse/topic among the busiest topics", || {
        publisher.publish("sse/topic", "x", QoS::AtLeastOnce);
        let t = get(addr, "/api/v1/topics");
        t["busiest"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["topic"] == "sse/topic")
            .then_some(())
    });
}

#[test]
fn kick_disconnects_a_v5_client_with_administrative_action_and_logs_the_user() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut victim = RawClient::connect_v5(broker.port, "kick-me", Properties::default());
    let _bystander = RawClient::connect_v5(broker.port, "stay", Properties::default());
    let answer = act(addr, "POST", "/api/v1/clients/kick-me/kick");
    assert_eq!(answer.status, 200, "{}", answer.body);
    // MQTT 5.0 section 3.14.2.1: 0x98 Administrative action.
    victim.expect_disconnect(reason::ADMINISTRATIVE_ACTION);
    broker.wait_for_log(&["dashboard: user \"admin\": kick client \"kick-me\": done"]);
    broker.wait_for_log(&["client kick-me disconnected: disconnected by an administrator"]);
    wait_for("the kicked client gone from the list", || {
        (client_ids(&get(addr, "/api/v1/clients")) == ["stay"]).then_some(())
    });
    // Kicking a client that is not connected is a 404, not a silent success.
    let again = act(addr, "POST", "/api/v1/clients/kick-me/kick");
    assert_eq!(again.status, 404, "{}", again.body);
}

#[test]
fn a_kicked_client_with_a_will_has_it_published() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut watcher = RawClient::connect_v5(broker.port, "watcher", Properties::default());
    watcher.subscribe("wills/#", QoS::AtLeastOnce);
    let mut connect = codec::connect_packet("with-will");
    connect.will = Some(codec::will(
        "wills/with-will",
        "gone",
        Properties::default(),
    ));
    let (mut victim, ack) = RawClient::connect_with(broker.port, connect);
    assert_eq!(ack.code, 0);
    let detail = get(addr, "/api/v1/clients/with-will");
    assert_eq!(detail["will"]["topic"], "wills/with-will");
    assert_eq!(detail["will"]["payload_preview"], "gone");
    assert_eq!(
        act(addr, "POST", "/api/v1/clients/with-will/kick").status,
        200
    );
    victim.expect_disconnect(reason::ADMINISTRATIVE_ACTION);
    // [MQTT-3.1.2-8] the server closed the connection: the will is published.
    let will = watcher.expect_publish();
    assert_eq!(&*will.topic, "wills/with-will");
}

#[test]
fn retained_delete_is_seen_by_a_late_subscriber() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut publisher = RawClient::connect_v5(broker.port, "ret-pub", Properties::default());
    publisher.publish_with(
        "home/door",
        br#"{"open":true}"#,
        QoS::AtLeastOnce,
        true,
        Properties::default(),
    );
    publisher.publish_with(
        "home/bin",
        &[0xff, 0x00],
        QoS::AtLeastOnce,
        true,
        Properties::default(),
    );
    let listed = get(addr, "/api/v1/retained?prefix=home/");
    assert_eq!(listed["total"], 2, "{listed}");
    let door = &listed["messages"][1];
    assert_eq!(door["topic"], "home/door");
    assert_eq!(door["text"], r#"{"open":true}"#);
    assert_eq!(door["json"]["open"], true);
    let bin = &listed["messages"][0];
    assert_eq!(
        (bin["hex"].as_str(), &bin["text"]),
        (Some("ff00"), &Value::Null)
    );
    let tree = get(addr, "/api/v1/topics");
    assert_eq!(tree["retained_tree"][0]["name"], "home");
    assert_eq!(
        tree["retained_tree"][0]["children"][1]["topic"],
        "home/door"
    );

    let deleted = act(addr, "DELETE", "/api/v1/retained?topic=home%2Fdoor");
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    broker.wait_for_log(&[
        "dashboard: user \"admin\": delete retained message on \"home/door\": done",
    ]);
    // [MQTT-3.3.1-6] a new subscription gets the retained messages that match: no longer the
    // deleted one, still the other.
    let mut late = RawClient::connect_v5(broker.port, "late", Properties::default());
    late.subscribe("home/#", QoS::AtLeastOnce);
    let p = late.expect_publish();
    assert_eq!(&*p.topic, "home/bin");
    late.expect_no_publish(Duration::from_millis(500));
    assert_eq!(get(addr, "/api/v1/retained?prefix=home/")["total"], 1);
    assert_eq!(
        act(addr, "DELETE", "/api/v1/retained?topic=home%2Fdoor").status,
        404
    );
}

#[test]
fn discarding_an_offline_session_removes_it_and_its_queue() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let props = Properties {
        session_expiry_interval: Some(3600),
        ..Properties::default()
    };
    let mut away = RawClient::connect_v5(broker.port, "away", props.clone());
    away.subscribe("queue/#", QoS::AtLeastOnce);
    away.disconnect();
    let mut publisher = RawClient::connect_v5(broker.port, "q-pub", Properties::default());
    publisher.publish("queue/a", "1", QoS::AtLeastOnce);
    let offline = wait_for("the offline session", || {
        let c = get(addr, "/api/v1/clients?status=offline");
        (c["total"] == 1 && c["clients"][0]["queued"] == 1).then_some(c)
    });
    assert_eq!(offline["clients"][0]["client_id"], "away");
    assert_eq!(offline["clients"][0]["persistent"], true);
    let answer = act(addr, "DELETE", "/api/v1/sessions/away");
    assert_eq!(answer.status, 200, "{}", answer.body);
    broker.wait_for_log(&["dashboard: user \"admin\": discard session \"away\": done"]);
    assert_eq!(get(addr, "/api/v1/clients?status=offline")["total"], 0);
    // The client finds no session (Session Present 0 [MQTT-3.2.2-3]) and nothing queued.
    let mut connect = codec::connect_packet("away");
    connect.clean_start = false;
    connect.properties = props;
    let (mut back, ack) = RawClient::connect_with(broker.port, connect);
    assert!(!ack.session_present);
    back.expect_no_publish(Duration::from_millis(500));
}

#[test]
fn non_admins_wrong_passwords_and_requests_without_the_csrf_token_are_refused() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut victim = RawClient::connect_v5(broker.port, "target", Properties::default());
    let path = "/api/v1/clients/target/kick";
    // No credentials: 401 with a Basic challenge, so a browser asks for them.
    let none = request(addr, "POST", path, None, &[]);
    assert_eq!(none.status, 401);
    assert!(none
        .header("WWW-Authenticate")
        .unwrap()
        .starts_with("Basic "));
    // A wrong password: 401.
    let wrong = request(addr, "POST", path, Some((ADMIN.0, "wrong")), &[]);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    // A password file user who is not an admin: 403, and no token either.
    let viewer = request(addr, "POST", path, Some(VIEWER), &[]);
    assert_eq!(viewer.status, 403, "{}", viewer.body);
    assert_eq!(
        request(addr, "GET", "/api/v1/csrf", Some(VIEWER), &[]).status,
        403
    );
    // The admin without the CSRF token, with a wrong one, or from another origin: 403.
    let no_token = request(addr, "POST", path, Some(ADMIN), &[]);
    assert_eq!(no_token.status, 403, "{}", no_token.body);
    assert!(no_token.body.contains("CSRF"));
    let bad_token = request(addr, "POST", path, Some(ADMIN), &[("X-CSRF-Token", "00")]);
    assert_eq!(bad_token.status, 403);
    let token = dashboard::csrf_token(addr, ADMIN);
    let elsewhere = request(
        addr,
        "POST",
        path,
        Some(ADMIN),
        &[("X-CSRF-Token", &token), ("Origin", "http://evil.example")],
    );
    assert_eq!(elsewhere.status, 403, "{}", elsewhere.body);
    broker.wait_for_log(&["refused to kick client \"target\": 403"]);
    // None of these touched the client.
    victim.ping();
    // With the token (and no Origin, as curl sends): done.
    let ok = request(addr, "POST", path, Some(ADMIN), &[("X-CSRF-Token", &token)]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    victim.expect_disconnect(reason::ADMINISTRATIVE_ACTION);
}

#[test]
fn require_login_asks_for_a_password_file_user_for_every_page() {
    let broker = dashboard::broker_with_dashboard("require_login = true");
    let addr = dashboard::dashboard_addr(&broker);
    for path in ["/", "/app.js", "/api/v1/overview", "/api/v1/events"] {
        let a = request(addr, "GET", path, None, &[]);
        assert_eq!(a.status, 401, "{path}");
        let wrong = request(addr, "GET", path, Some((VIEWER.0, "nope")), &[]);
        assert_eq!(wrong.status, 401, "{path}");
    }
    let page = request(addr, "GET", "/", Some(VIEWER), &[]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<canvas id=\"rate-chart\""));
    assert!(page.header("Content-Security-Policy").is_some());
    let me = request(addr, "GET", "/api/v1/whoami", Some(VIEWER), &[]).json();
    assert_eq!(
        (me["user"].as_str(), me["admin"].as_bool()),
        (Some("viewer"), Some(false))
    );
}

#[test]
fn pages_are_embedded_and_unknown_paths_and_methods_are_refused() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let a = request(addr, "GET", path, None, &[]);
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("Content-Type").unwrap().starts_with(kind),
            "{path}"
        );
        assert!(
            !a.body.contains("http://") && !a.body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    assert_eq!(request(addr, "GET", "/nope", None, &[]).status, 404);
    assert_eq!(request(addr, "GET", "/api/v1/nope", None, &[]).status, 404);
    assert_eq!(
        request(addr, "PUT", "/api/v1/overview", None, &[]).status,
        405
    );
    assert_eq!(
        request(addr, "GET", "/api/v1/clients/%zz", None, &[]).status,
        400
    );
}

#[test]
fn readme_curl_examples_run_against_a_live_dashboard() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut sensor = RawClient::connect_v5(broker.port, "sensor-1", Properties::default());
    let mut publisher = RawClient::connect_v5(broker.port, "readme-pub", Properties::default());
    publisher.publish_with(
        "home/lamp",
        b"on",
        QoS::AtLeastOnce,
        true,
        Properties::default(),
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("<!-- dashboard-curl -->")
        .expect("README marks its dashboard curl examples");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let block = &block[..block.find("```").unwrap()];
    let script = block
        .replace("127.0.0.1:18083", &addr.to_string())
        .replace("admin:secret", &format!("{}:{}", ADMIN.0, ADMIN.1));
    let out = std::process::Command::new("sh")
        .args(["-ec", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README commands failed:\n{script}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"connections\":2"), "{stdout}");
    assert!(stdout.contains("\"kicked\":\"sensor-1\""), "{stdout}");
    assert!(stdout.contains("\"deleted\":\"home/lamp\""), "{stdout}");
    assert!(stdout.contains("event: sample"), "{stdout}");
    sensor.expect_disconnect(reason::ADMINISTRATIVE_ACTION);
}

#[test]
fn with_a_certificate_the_dashboard_speaks_only_tls() {
    use crate::common::listeners::{make_pki, tls_client, toml_path};
    use std::io::{Read, Write};
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = make_pki(pki_dir.path(), "unused");
    let broker = dashboard::broker_with_dashboard(&format!(
        "cert_file = {}\nkey_file = {}",
        toml_path(&pki.server_cert),
        toml_path(&pki.server_key)
    ));
    let line = broker.wait_for_log(&["dashboard on https://"]);
    let addr = dashboard::dashboard_addr(&broker);
    let mut tls = tls_client(addr, &pki.ca);
    write!(
        tls,
        "GET /api/v1/csrf HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
        base64_credentials(ADMIN)
    )
    .unwrap();
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{line}: {answer}");
    assert!(answer.contains("\"token\""));
    // Plain HTTP on the TLS port gets no answer, and the connection is closed at once (not
    // left open until the client gives up).
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /api/v1/overview HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let read = plain.read_to_end(&mut raw);
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    assert!(
        !read.as_ref().is_err_and(timed_out),
        "the server kept the connection open: {read:?}"
    );
    assert!(
        !raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

fn base64_credentials((user, password): (&str, &str)) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[test]
fn config_errors_name_the_file_and_the_dashboard_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dash.toml");
    std::fs::write(
        &file,
        "[dashboard]\nbind = \"0.0.0.0:18083\"\nadmins = [\"admin\"]\n",
    )
    .unwrap();
    let (status, out) = common::run_to_exit(
        &["check-config", file.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("dash.toml: key `dashboard.cert_file`: expected a PEM certificate"),
        "{out}"
    );
    assert!(
        out.contains("key `dashboard.admins`: expected security.password_file to be set"),
        "{out}"
    );
    std::fs::write(&file, "[dashboard]\nbind = \"localhost\"\n").unwrap();
    let (_, out) = common::run_to_exit(
        &["check-config", file.to_str().unwrap()],
        Duration::from_secs(30),
    );
    assert!(
        out.contains("key `dashboard.bind`: expected IP:PORT"),
        "{out}"
    );
}

#[test]
fn discarding_a_connected_clients_session_disconnects_it_and_ends_the_session() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let props = Properties {
        session_expiry_interval: Some(3600),
        ..Properties::default()
    };
    let mut online = RawClient::connect_v5(broker.port, "online", props.clone());
    online.subscribe("jobs/#", QoS::AtLeastOnce);
    let answer = act(addr, "DELETE", "/api/v1/sessions/online");
    assert_eq!(answer.status, 200, "{}", answer.body);
    online.expect_disconnect(reason::ADMINISTRATIVE_ACTION);
    wait_for("the session gone", || {
        (get(addr, "/api/v1/clients")["total"] == 0).then_some(())
    });
    // [MQTT-3.2.2-3] no session to resume.
    let mut connect = codec::connect_packet("online");
    connect.clean_start = false;
    connect.properties = props;
    let (_back, ack) = RawClient::connect_with(broker.port, connect);
    assert!(!ack.session_present);
}

#[test]
fn login_asks_for_credentials_and_whoami_names_the_user() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let anonymous = request(addr, "GET", "/api/v1/login", None, &[]);
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.header("WWW-Authenticate").is_some());
    let me = request(addr, "GET", "/api/v1/login", Some(ADMIN), &[]).json();
    assert_eq!(
        (me["user"].as_str(), me["admin"].as_bool()),
        (Some("admin"), Some(true))
    );
    assert_eq!(get(addr, "/api/v1/whoami")["user"], Value::Null);
}

#[test]
fn an_open_event_stream_is_not_closed_to_make_room_for_idle_connections() {
    let broker = dashboard::broker_with_dashboard("");
    let addr = dashboard::dashboard_addr(&broker);
    let mut events = Events::open(addr);
    events.next_sample(WAIT);
    // Fill the server's 16 connections with idle ones opened after the stream...
    let idle: Vec<std::net::TcpStream> = (0..mqflux::ops::metrics::MAX_CONNECTIONS - 1)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // ...let the stream write after them (a sample a second)...
    events.next_sample(WAIT);
    events.next_sample(WAIT);
    // ...then one more: the least recently active goes, an idle one, not the stream.
    let one_more = request(addr, "GET", "/api/v1/whoami", None, &[]);
    assert_eq!(one_more.status, 200);
    for _ in 0..3 {
        events.next_sample(WAIT);
    }
    drop(idle);
}
