//! The integration tests: one test binary, one module per area (ripgrep's `tests/tests.rs`
//! layout). Every test drives the real `mqflux` binary (`CARGO_BIN_EXE_mqflux`) over real
//! sockets, with real clients and servers (mosquitto, influxd, Paho, MQTT.js) started by the
//! harness. One binary links once instead of once per area, and shares one compiled harness.
//!
//! Layout:
//! - `tests/common/` is the one harness (see its `mod.rs`): the broker process, the byte-level
//!   client (`raw`), the client on the crate's codec for any protocol version (`codec`), rumqttc
//!   (`client`), influxd (`influx`), other processes (`spawned`), TLS/WebSocket listener helpers
//!   (`listeners`) and the HTTP/Prometheus helpers of the ops endpoints (`ops`).
//! - `tests/suite/AREA.rs` holds the tests of one area, listed below; `tests/interop/` the
//!   scripts of the client interoperability tests.
//!
//! To add a test area: create `tests/suite/AREA.rs`, start it with `use crate::common;` (and
//! `use crate::common::SUBMODULE;` for the helpers it needs), and add `mod AREA;` below in
//! alphabetical order. Do not add other `tests/*.rs` files: each would be a binary of its own,
//! compiled and linked separately (`suite::layout` fails if one appears). nextest names a test
//! `mqflux::tests suite::AREA::NAME`; run one area with `cargo nextest run --test tests suite::AREA::`.

mod common;

mod suite {
    mod auth_files;
    mod bench_tool;
    mod bridge;
    mod bridge_remote;
    mod codec_interop;
    mod connect;
    mod dashboard;
    mod dashboard_browser;
    mod durability_crash;
    mod durability_restart;
    mod durability_sink_crash;
    mod flow_control;
    mod forecast;
    mod interop_clients;
    mod interop_mosquitto;
    mod keepalive;
    mod layout;
    mod lifecycle;
    mod limits;
    mod listeners_backpressure;
    mod listeners_limits;
    mod listeners_tls;
    mod listeners_websocket;
    mod malformed;
    mod nats_scaleout;
    mod node_red;
    mod ops_check_config;
    mod ops_monitoring;
    mod ops_sink_health;
    mod publish;
    mod retained;
    mod run_script;
    mod secure_defaults;
    mod security;
    mod session;
    mod sink_e2e;
    mod sink_influx;
    mod sink_injection;
    mod subscribe;
    mod v5_packets;
    mod v5_sessions;
    mod v5_subscriptions;
    mod will;
}
