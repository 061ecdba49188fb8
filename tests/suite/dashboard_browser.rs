//! The dashboard's pages in a real browser: Debian's Chromium, headless, driven by
//! `playwright-core` (`tests/browser/dashboard.mjs`, pinned in its committed package-lock.json
//! and installed by `scripts/test.sh` with `npm ci`), against the real mqflux with a real
//! influxd and MQTT clients. Screenshots of every page are kept in
//! `target/dashboard-screenshots/`.

use crate::common::codec::RawClient;
use crate::common::dashboard::{self, ADMIN};
use crate::common::influx::Influx;
use crate::common::spawned::Spawned;
use mqflux::protocol::{reason, Properties, QoS};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run: page loads, a chart that must move, a kick, five pages.
const BROWSER_RUN: Duration = Duration::from_secs(180);

#[test]
fn dashboard_pages_show_clients_chart_and_retained_and_kick_works_in_chromium() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} missing: apt-get install chromium (scripts/test.sh does)"
    );
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `npm ci` in tests/browser (scripts/test.sh does)"
    );
    let influx = Influx::start();
    let spool = tempfile::tempdir().unwrap();
    let broker = dashboard::broker_with_dashboard(&format!(
        r#"
[sink]
enabled = true
url = "{}"
database = "browser"
spool_dir = "{}"
flush_interval_ms = 100
[[sink.rules]]
topic = "sensors/{{device}}/{{measurement}}"
"#,
        influx.url(),
        spool.path().display()
    ));
    let addr = dashboard::dashboard_addr(&broker);
    let port = broker.port;

    let mut watcher = RawClient::connect_v5(port, "kitchen-display", Properties::default());
    watcher.subscribe("sensors/#", QoS::AtMostOnce);
    let mut victim = RawClient::connect_v5(port, "sensor-to-kick", Properties::default());
    victim.subscribe("commands/sensor-to-kick", QoS::AtLeastOnce);
    let mut retainer = RawClient::connect_v5(port, "lamp-controller", Properties::default());
    let retained_payload = r#"{"state":"on","brightness":80}"#;
    retainer.publish_with(
        "home/livingroom/lamp",
        retained_payload.as_bytes(),
        QoS::AtLeastOnce,
        true,
        Properties::default(),
    );

    // A publisher that runs while the browser looks, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = RawClient::connect_v5(port, "thermometer", Properties::default());
            let deadline = Instant::now() + BROWSER_RUN + Duration::from_secs(30);
            let (mut i, mut round) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // Bursts that grow and shrink (25 to 250 a second), so the chart moves.
                round += 1;
                for _ in 0..(5 + (round / 5 % 10) * 5) {
                    let value = format!("{}", 20.0 + (i % 50) as f64 / 10.0);
                    c.publish("sensors/kitchen/temperature", &value, QoS::AtLeastOnce);
                    i += 1;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            c.disconnect();
            i
        })
    };

    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let mut cmd = Command::new("node");
    cmd.arg("dashboard.mjs")
        .current_dir(&browser_dir)
        .env("DASHBOARD_URL", format!("http://{addr}/"))
        .env("ADMIN_USER", ADMIN.0)
        .env("ADMIN_PASSWORD", ADMIN.1)
        .env(
            "EXPECT_CLIENTS",
            "kitchen-display,sensor-to-kick,lamp-controller,thermometer",
        )
        .env("KICK_CLIENT", "sensor-to-kick")
        .env("RETAINED_TOPIC", "home/livingroom/lamp")
        .env("RETAINED_PAYLOAD", retained_payload)
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", CHROMIUM);
    let mut node = Spawned::start(cmd);
    let status = node.wait_exit(BROWSER_RUN);
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    let output = node.output();
    assert!(
        status.is_some_and(|s| s.success()),
        "browser run failed ({status:?}); screenshots in {}:\n{output}",
        shots.display()
    );
    for check in [
        "ok: overview loads",
        "ok: the chart's value changes while a publisher runs",
        "ok: the clients table shows",
        "ok: kicking sensor-to-kick removes its row",
        "ok: the retained view shows home/livingroom/lamp",
        "ok: no console errors",
    ] {
        assert!(output.contains(check), "missing {check:?} in:\n{output}");
    }
    // The kicked client saw why: 0x98 Administrative action (MQTT 5.0 section 3.14.2.1).
    victim.expect_disconnect(reason::ADMINISTRATIVE_ACTION);
    broker.wait_for_log(&["dashboard: user \"admin\": kick client \"sensor-to-kick\": done"]);
    assert!(published > 0);
    for page in [
        "overview",
        "clients",
        "client-detail",
        "retained",
        "topics",
        "sink",
    ] {
        let shot = shots.join(format!("{page}.png"));
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "screenshot {} missing or empty",
            shot.display()
        );
    }
}
