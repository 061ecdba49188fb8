//! The broker: listener, connections, sessions and routing.
//!
//! Data flow: `listener` accepts a socket and starts a `connection` (a reader thread). The reader
//! decodes packets and calls into `Broker`: a PUBLISH is routed by the `router` to every matching
//! `session`, which queues it on its connection's `outbox` (written by the publishing thread, or
//! by a writer thread when the client's socket is full); then it is handed to the InfluxDB `sink`.
//!
//! The connection path: `listener` (accept) -> `pump` (TLS / WebSocket) -> `connection` (one
//! file per packet family) reading through `reader::ConnectionReader`, inside the per-read
//! batching scope of `read_scope`, which states once the order its collected work goes out.
//!
//! `Broker` is one type whose methods live in one file per role:
//!
//! - `state`: the struct, construction, loading the store, limits;
//! - `publish`: the publish pipeline (retained store, subscribers, message log, sink);
//! - `sessions`: attaching and detaching connections, ending sessions and their wills, the
//!   housekeeping thread;
//! - `registry`: the live connections, password file reloads and shutdown;
//! - `inspect`: what an operator sees (clients, sessions, retained) and may do (kick, discard
//!   a session, delete a retained message), for the dashboard.

pub mod acl;
pub mod auth;
pub mod connection;
pub mod flow;
pub mod forward;
pub mod inspect;
pub mod listener;
mod live;
pub mod message;
pub mod outbox;
pub mod persist;
pub mod prefix_stats;
mod publish;
pub mod pump;
pub mod ratelimit;
pub mod read_scope;
pub mod reader;
mod registry;
pub mod router;
pub mod security;
pub mod session;
mod sessions;
pub mod socket;
mod state;
pub mod stats;
pub mod threads;
pub mod tls;
pub mod topic;
pub mod topic_rates;

pub use live::{ClientInfo, Credential, Revocation, WillView};
pub use sessions::Attached;
pub use state::Broker;

// The files of this module import each other directly (`super::state::Broker`), never through
// these re-exports, so this front door is on no import cycle (tests/suite/layout.rs).
