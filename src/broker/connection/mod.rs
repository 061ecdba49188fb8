//! One client connection: a reader thread (`run`) that decodes packets and acts on them. What
//! is sent to the client goes through its `Outbox` (see `outbox.rs`).
//!
//! `Connection` is one type whose methods live in one file per packet family, as mosquitto's
//! `handle_*.c`:
//!
//! - this file: the types, `spawn` and `run`, and what every family uses (`send`, `Exit`);
//! - `connect`: the CONNECT handshake up to the CONNACK.
//!
//! Before CONNECT is accepted the connection is a `Handshake`: it owns the socket and reads one
//! packet, which must be CONNECT [MQTT-3.1.0-1]; only an accepted CONNECT builds the
//! `Connection` (`Handshake::connect`), so no other packet can be handled before it. Then:
//!
//! - `read_loop`: reading, the dispatch on one screen (`handle`), DISCONNECT and teardown;
//! - `publish`: PUBLISH admission, the in-place path and the hand-off to the broker;
//! - `subscribe`: SUBSCRIBE and UNSUBSCRIBE;
//! - `acks`: PUBACK, PUBREC, PUBREL, PUBCOMP and the durable waits before acknowledgements.
//!
//! A new packet gets a `Packet::X` arm in `read_loop::handle` and an `on_x` method in the file
//! of its family.

mod acks;
mod connect;
mod publish;
mod read_loop;
mod subscribe;

use crate::broker::acl::ClientAcl;
use crate::broker::flow;
use crate::broker::outbox::Outbox;
use crate::broker::ratelimit::{PublishRateLimit, PublishRateLimiter};
use crate::broker::read_scope::{self, ReadScope};
use crate::broker::reader::ConnectionReader;
use crate::broker::session::{Outbound, SessionRef};
use crate::broker::socket::Socket;
use crate::broker::state::Broker;
use crate::broker::threads::{self, release_unused_stack};
use crate::protocol::{Ack, DecodeError, Packet, Properties, ProtocolVersion, Will};
use log::warn;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// One of a listener's `max_connections` places, held until the connection's threads end.
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl ConnectionSlot {
    /// Take one place of `active` (the listener has already counted it in).
    pub(super) fn new(active: Arc<AtomicUsize>) -> ConnectionSlot {
        ConnectionSlot(active)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long a control packet (PUBACK, SUBACK, ...) may wait for room in a client's outbound
/// queue, and a socket write may block, before the client is considered not to be reading.
const STALLED_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection the broker ends with a DISCONNECT waits for its client to read it and
/// close (see `linger_for_disconnect`).
const DISCONNECT_LINGER: Duration = Duration::from_secs(2);

/// Start the threads for a freshly accepted socket (or the broker's end of a TLS / WebSocket
/// bridge). `tls_identity` is the client certificate's subject CN when the listener has
/// `use_identity_as_username`; `allow_anonymous` is the listener's answer to a CONNECT without
/// username (`SecurityConfig::anonymous_access`); `slot` is the listener's connection place,
/// held until the end.
pub fn spawn(
    broker: &Arc<Broker>,
    stream: Socket,
    peer: SocketAddr,
    tls_identity: Option<String>,
    allow_anonymous: bool,
    slot: ConnectionSlot,
) -> io::Result<()> {
    // The CONNECT deadline counts from here: accept, or the end of the TLS / WebSocket handshake.
    let started = Instant::now();
    // One socket shared by the reader, the writer and the broker's registry.
    let stream = Arc::new(stream);
    let Some(id) = broker.register_connection(&stream) else {
        return Ok(()); // shutting down
    };
    let b = broker.clone();
    let spawned = threads::spawn(&format!("conn-{id}"), move || {
        Handshake::new(
            b.clone(),
            id,
            stream,
            peer,
            tls_identity,
            started,
            allow_anonymous,
        )
        .run();
        b.unregister_connection(id);
        drop(slot);
    });
    match spawned {
        Ok(thread) => {
            broker.set_connection_thread(id, thread);
            Ok(())
        }
        Err(e) => {
            broker.unregister_connection(id);
            Err(e)
        }
    }
}

/// Why a connection ended; decides whether the will is published and what is logged.
enum Exit {
    /// DISCONNECT received. A v5 reason other than 0x00 (0x04, or an error) keeps the will.
    Disconnect { publish_will: bool },
    /// The client broke the protocol; `reason_code` goes in a v5 DISCONNECT.
    Violation { reason_code: u8, message: String },
    /// Socket closed or failed without DISCONNECT.
    Closed(String),
    /// No packet within 1.5x the keep-alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// A reload of the password file removed or changed the entry the client authenticated
    /// against (see `Broker::reload_security`).
    Revoked,
}

fn violation(reason_code: u8, message: impl Into<String>) -> Exit {
    Exit::Violation {
        reason_code,
        message: message.into(),
    }
}

/// A connection before its CONNECT is accepted: it owns the socket, and the one packet it reads
/// is the CONNECT (`connect.rs`). Accepting it turns the handshake into a `Connection`.
struct Handshake {
    broker: Arc<Broker>,
    id: u64,
    peer: SocketAddr,
    stream: Arc<Socket>,
    /// When the socket was handed over (accepted, or its handshake done): the CONNECT deadline
    /// counts from then.
    started: Instant,
    /// The TLS client certificate's subject CN, set only on listeners with
    /// `use_identity_as_username`: there it replaces the CONNECT username for authentication
    /// and ACLs (mosquitto's semantics), and the CONNECT password is not checked.
    tls_identity: Option<String>,
    /// Whether the listener that accepted this client takes a CONNECT without username
    /// (decided per listener: loopback or not, and `security.allow_anonymous`).
    allow_anonymous: bool,
    /// Handed to the broker with the credential (`keep_credential`), then to the `Connection`.
    revoked: Arc<crate::broker::live::Revocation>,
}

/// A connected client: built from an accepted CONNECT (`Handshake::connect`).
struct Connection {
    broker: Arc<Broker>,
    id: u64,
    peer: SocketAddr,
    stream: Arc<Socket>,
    client_id: Arc<str>,
    version: ProtocolVersion,
    /// CONNECT carried the bridge bit (level 0x83/0x84, mosquitto's `try_private`): the
    /// client is another broker, so every subscription it makes gets No Local and Retain As
    /// Published (`on_subscribe`).
    bridge: bool,
    outbox: Option<Arc<Outbox>>,
    session: Option<SessionRef>,
    /// Shared with the session's `Link`: false once the session is no longer ours.
    owns_session: Arc<AtomicBool>,
    /// Set by the broker when a reload revoked the credentials this client connected with.
    revoked: Arc<crate::broker::live::Revocation>,
    will: Option<Will>,
    /// Session Expiry Interval from CONNECT (v5 DISCONNECT may change it, within rules).
    session_expiry: u32,
    /// v5 topic aliases the client set up towards us [MQTT-3.3.2-12 (v5)].
    topic_aliases: HashMap<u16, Arc<str>>,
    /// Authenticated username (for ACL `%u` and `user` sections).
    username: Option<Arc<str>>,
    /// This client's ACL rules and the security generation they were built from.
    acl: (u64, Option<ClientAcl>),
    /// PUBLISHes refused by the ACL, for throttled logging.
    denied: u64,
    /// The topic prefix this client published to last and its counter (`sink.self_metrics`).
    prefix: crate::broker::prefix_stats::PrefixCache,
    rate_limiter: PublishRateLimiter,
    /// Acknowledgements waiting for the store to make what they confirm durable (sync
    /// persistence), in the order they are due [MQTT-4.6.0-2].
    unconfirmed: Vec<Packet>,
    /// When the packet being handled was received (`ConnectionReader::received_at_ns`).
    received_at_ns: i64,
}

/// Acknowledgements held back at most before the connection waits for the store.
const MAX_UNCONFIRMED: usize = 256;

impl Handshake {
    fn new(
        broker: Arc<Broker>,
        id: u64,
        stream: Arc<Socket>,
        peer: SocketAddr,
        tls_identity: Option<String>,
        started: Instant,
        allow_anonymous: bool,
    ) -> Handshake {
        Handshake {
            broker,
            id,
            peer,
            stream,
            started,
            tls_identity,
            allow_anonymous,
            revoked: Arc::default(),
        }
    }

    /// The connection's thread: the handshake, then, once CONNECT is accepted, the connected
    /// client's packets until it ends.
    fn run(self) {
        // Sends this thread makes are written just before it reads again (see `outbox.rs`).
        let _batching = ReadScope::start();
        // Filling a subscriber's queue makes this reader wait for room (see `flow.rs`).
        let _flow = flow::Scope::start();
        let _ = self.stream.set_nodelay(true);
        let mut reader = ConnectionReader::new(self.stream.clone(), self.broker.clone());
        let (stream, peer) = (self.stream.clone(), self.peer);
        match self.connect(&mut reader) {
            Ok(mut connection) => {
                // CONNECT (and writing CONNACK) was the deepest work an idle client causes:
                // hand its stack pages back before the client's first wait.
                read_scope::flush();
                release_unused_stack();
                let exit = connection.serve(&mut reader);
                connection.finish(exit);
            }
            // Refused (CONNACK already written), closed, or timed out before CONNECT.
            Err(exit) => {
                if let Some(Exit::Violation { message, .. }) = exit {
                    warn!(
                        "client (before CONNECT) ({peer}): protocol violation {message}; \
                         closing connection"
                    );
                }
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }

    fn max_packet_size(&self) -> usize {
        self.broker.config.limits.max_packet_size
    }
}

impl Connection {
    fn max_packet_size(&self) -> usize {
        self.broker.config.limits.max_packet_size
    }

    fn session(&self) -> &SessionRef {
        self.session.as_ref().expect("session exists after CONNECT")
    }

    /// Queue a control packet for the writer. If the client is not reading, wait (and so stop
    /// reading from it: TCP backpressure) rather than let its queue grow without bound.
    fn send(&self, packet: Packet) -> Result<(), Exit> {
        let Some(outbox) = &self.outbox else {
            return Ok(());
        };
        let limits = &self.broker.config.limits;
        let bound = limits.outbound_queue + limits.max_inflight as usize;
        let started = Instant::now();
        while outbox.backlog() >= bound {
            if started.elapsed() > STALLED_CLIENT_TIMEOUT {
                return Err(Exit::Closed(format!(
                    "client not reading for {}s",
                    STALLED_CLIENT_TIMEOUT.as_secs()
                )));
            }
            read_scope::flush();
            thread::sleep(Duration::from_millis(1));
        }
        outbox
            .send(Outbound::Packet(Box::new(packet)))
            .map_err(|_| Exit::Closed("write failed".into()))
    }
}

fn ack(packet_id: u16, reason_code: u8) -> Ack {
    Ack {
        packet_id,
        reason_code,
        properties: Properties::default(),
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn violation_from(e: DecodeError) -> Exit {
    match e {
        DecodeError::Io(e) => Exit::Closed(format!("read error: {e}")),
        DecodeError::Eof => Exit::Closed("connection closed by client".into()),
        e => Exit::Violation {
            reason_code: e.reason_code(),
            message: e.to_string(),
        },
    }
}
