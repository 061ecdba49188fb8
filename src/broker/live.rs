//! What the broker keeps of each live connection (`Broker::register_connection`,
//! `registry.rs`): its socket and thread, to close and join it at shutdown, and what it
//! authenticated with, to close it when a password file reload no longer admits it.

use super::socket::Socket;
use super::{auth, threads};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A live network connection, kept so shutdown can close it and join its thread.
pub(super) struct LiveConnection {
    pub(super) stream: Arc<Socket>,
    pub(super) thread: Option<threads::ConnectionThread>,
    /// Set for a client authenticated against the password file.
    pub(super) credential: Option<Credential>,
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
    pub revoked: Arc<AtomicBool>,
}
