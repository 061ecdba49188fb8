//! What the broker keeps of each live connection (`Broker::register_connection`,
//! `registry.rs`): its socket and thread, to close and join it at shutdown, and what it
//! authenticated with, to close it when a password file reload no longer admits it.

use super::socket::Socket;
use super::{auth, threads};
use crate::protocol::{ProtocolVersion, Will};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// A live network connection, kept so shutdown can close it and join its thread.
pub(super) struct LiveConnection {
    pub(super) stream: Arc<Socket>,
    pub(super) thread: Option<threads::ConnectionThread>,
    /// Set for a client authenticated against the password file.
    pub(super) credential: Option<Credential>,
    /// Set once CONNECT is accepted: what the operator's views show (`inspect.rs`), and the
    /// flag an administrator's kick sets.
    pub(super) client: Option<ClientInfo>,
}

/// Why the broker closed a connection's read side, if it did: the reader, which then sees the
/// end of its input, ends the connection with this reason (v5: in a DISCONNECT) instead of as
/// if its client had gone. One path for a password reload (0x87) and an operator's kick (0x98).
#[derive(Debug, Default)]
pub struct Revocation(AtomicU8);

impl Revocation {
    /// Mark the connection as closed by the broker for `reason_code`; false if it already was
    /// (the first reason stands).
    pub fn revoke(&self, reason_code: u8) -> bool {
        self.0
            .compare_exchange(0, reason_code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// The reason code given to `revoke`, or None.
    pub fn reason(&self) -> Option<u8> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    pub fn is_revoked(&self) -> bool {
        self.reason().is_some()
    }
}

/// A connected client as its CONNECT left it; kept in the connection registry for the
/// operator's views (`inspect.rs`).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub protocol: ProtocolVersion,
    /// The keep-alive that applies (the broker's Server Keep Alive for a v5 client told so).
    pub keep_alive_secs: u16,
    /// Clean Session (3.1.1) / Clean Start (5.0) as the client asked.
    pub clean_start: bool,
    /// Connected since, milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    pub will: Option<WillView>,
    /// Set by `Broker::kick` (and a password reload) before the read side is closed.
    pub revocation: Arc<Revocation>,
}

/// A will as the dashboard shows it: the payload as a short preview only.
#[derive(Debug, Clone)]
pub struct WillView {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub delay_secs: u32,
    pub payload_bytes: usize,
    /// At most `PREVIEW_BYTES` of the payload, as text (invalid UTF-8 replaced).
    pub payload_preview: String,
}

/// Payload bytes shown of a will.
const PREVIEW_BYTES: usize = 256;

impl WillView {
    pub fn of(will: &Will) -> WillView {
        let shown = &will.payload[..will.payload.len().min(PREVIEW_BYTES)];
        WillView {
            topic: will.topic.clone(),
            qos: will.qos as u8,
            retain: will.retain,
            delay_secs: will.properties.will_delay_interval.unwrap_or(0),
            payload_bytes: will.payload.len(),
            payload_preview: String::from_utf8_lossy(shown).into_owned(),
        }
    }
}

/// What a connection authenticated with, kept so that a reload of the password file can close
/// it when that no longer holds (see `Broker::reload_security`).
pub struct Credential {
    pub client_id: Arc<str>,
    pub username: Arc<str>,
    /// The password file entry the client's password matched.
    pub entry: auth::PasswordHash,
    /// Set by the broker before it closes the connection's read side: the connection then
    /// ends with "not authorized" instead of as if its client had gone.
    pub revoked: Arc<Revocation>,
}
