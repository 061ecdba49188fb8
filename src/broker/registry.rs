//! The connection registry and shutdown: every live connection is registered so that a
//! password file reload can close those it no longer admits and shutdown can close and join
//! them all.

use super::socket::Socket;
use super::stats::Stats;
use log::{debug, info, warn};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::live::{ClientInfo, Credential, LiveConnection};
use super::sessions::close_link;
use super::state::Broker;
use super::{security, threads};

impl Broker {
    /// Register a new connection; returns its id, or None when the broker is shutting down.
    pub fn register_connection(&self, stream: &Arc<Socket>) -> Option<u64> {
        let stream = stream.clone();
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if self.is_shutting_down() {
            return None;
        }
        conns.insert(
            id,
            LiveConnection {
                stream,
                thread: None,
                credential: None,
                client: None,
            },
        );
        Some(id)
    }

    pub fn set_connection_thread(&self, id: u64, thread: threads::ConnectionThread) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get_mut(&id) {
            Some(c) => c.thread = Some(thread),
            None => drop(thread), // already finished
        }
    }

    /// Remember what connection `id` authenticated with (see `reload_security`).
    pub fn note_credential(&self, id: u64, credential: Credential) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns.get_mut(&id) {
            c.credential = Some(credential);
        }
    }

    /// Reload the password and ACL files (SIGHUP), then close the connections whose
    /// credentials no longer hold: user removed from the password file or given another entry.
    /// Everybody else stays connected and gets the new ACL at the next check. mosquitto 2.0
    /// also re-checks every client's credentials at reload (`mosquitto_security_apply_default`)
    /// and drops those that fail.
    pub fn reload_security(&self) -> Result<u64, security::SecurityError> {
        let generation = self.security.reload()?;
        let snapshot = self.security.current();
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        for c in conns.values() {
            let Some(cred) = &c.credential else { continue };
            if snapshot.still_holds(&cred.username, &cred.entry) {
                continue;
            }
            if !cred.revoked.revoke(crate::protocol::reason::NOT_AUTHORIZED) {
                continue; // already being closed
            }
            warn!(
                "client {} (user {:?}): password file entry removed or changed by the reload; \
                 disconnecting",
                cred.client_id, cred.username
            );
            // Its reader sees the end of input, or the flag at its next packet, and closes
            // the connection (v5: DISCONNECT 0x87 first).
            let _ = c.stream.shutdown(Shutdown::Read);
        }
        Ok(generation)
    }

    /// Remember who connection `id` is, once its CONNECT is accepted (see `inspect.rs`).
    pub fn note_client(&self, id: u64, client: ClientInfo) {
        let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = conns.get_mut(&id) {
            c.client = Some(client);
        }
    }

    /// Every connected client's `ClientInfo` (cloned: the registry is a leaf lock), oldest
    /// connection first: during a takeover the new connection comes last.
    pub(super) fn connected_clients(&self) -> Vec<ClientInfo> {
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let mut clients: Vec<(u64, ClientInfo)> = conns
            .iter()
            .filter_map(|(id, c)| Some((*id, c.client.clone()?)))
            .collect();
        clients.sort_by_key(|(id, _)| *id);
        clients.into_iter().map(|(_, c)| c).collect()
    }

    /// Close the connection of `client_id` for `reason_code` the way a password reload does:
    /// set its `Revocation`, then close its read side; its reader ends the connection (v5:
    /// DISCONNECT with the reason first). False when no such client is connected.
    pub(super) fn revoke_client(&self, client_id: &str, reason_code: u8) -> bool {
        let conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        // The newest connection of that client id: an older one is being taken over.
        let newest = conns
            .iter()
            .filter(|(_, c)| {
                c.client
                    .as_ref()
                    .is_some_and(|i| &*i.client_id == client_id)
            })
            .max_by_key(|(id, _)| **id);
        let Some((_, c)) = newest else { return false };
        if let Some(client) = &c.client {
            if client.revocation.revoke(reason_code) {
                let _ = c.stream.shutdown(Shutdown::Read);
            }
        }
        true
    }

    pub fn unregister_connection(&self, id: u64) {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn connection_count(&self) -> usize {
        self.connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// A subscriber that completed nothing for `limits.stalled_subscriber_secs` while publishers
    /// waited on its full queue: close its socket, so one dead client cannot hold them back.
    /// Its reader then ends the connection as for any lost client: the will is published, a
    /// persistent session keeps its queue (and drops beyond `max_queued`, counted).
    pub fn disconnect_stalled(&self, client_id: &str, connection_id: u64) {
        let stream = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&connection_id)
            .map(|c| c.stream.clone());
        let Some(stream) = stream else { return };
        Stats::add(&self.stats.stalled_subscribers, 1);
        warn!(
            "client {client_id}: completed no message for {}s while publishers waited on its \
             full queue (limits.stalled_subscriber_secs); disconnecting it",
            self.config.limits.stalled_subscriber_secs
        );
        // Both directions: its reader sees the end at once, and a writer blocked on the
        // client's full socket fails instead of waiting for the write timeout.
        let _ = stream.shutdown(Shutdown::Both);
    }

    /// Graceful shutdown: refuse new connections, close every client (v5 clients get
    /// DISCONNECT 0x8B), join their threads, then flush the sink.
    pub fn shutdown(&self, timeout: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        // A housekeeping round under way finishes (and records its wills) while the store is
        // still running; none starts after this.
        let housekeeping = self
            .housekeeping_thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = housekeeping {
            let _ = thread.join();
        }
        let live: Vec<(u64, LiveConnection)> = {
            let mut conns = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            conns.drain().collect()
        };
        info!("shutting down: closing {} connection(s)", live.len());
        {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            for s in sessions.values() {
                if let Some(link) = s.lock().link() {
                    close_link(link, crate::protocol::reason::SERVER_SHUTTING_DOWN);
                }
            }
        }
        // Closing the read side ends each reader loop; the writer still flushes what it has.
        for (_, c) in &live {
            let _ = c.stream.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + timeout;
        for (id, c) in live {
            let Some(thread) = c.thread else { continue };
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                thread.join();
            } else {
                debug!("connection {id} did not stop in time; closing its socket");
                let _ = c.stream.shutdown(Shutdown::Both);
            }
        }
        // The sink first: what it writes or spools while flushing is then deleted from the
        // store before the store stops (otherwise the next start would write it again).
        self.sink.shutdown();
        if let Some(store) = self.store.get() {
            // Everything the closed connections and the sink changed is written and fsynced.
            store.stop();
        }
    }
}
