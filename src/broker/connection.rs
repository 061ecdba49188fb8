//! One client connection: a reader thread (`run`) that decodes packets and acts on them. What
//! is sent to the client goes through its `Outbox` (see `outbox.rs`).

use super::acl::ClientAcl;
use super::auth::{authenticate, AuthRefusal};
use super::flow;
use super::listener::ConnectionSlot;
use super::message::{now_ns, Message};
use super::outbox::{self, Batching, Outbox};
use super::ratelimit::{PublishRateLimit, PublishRateLimiter};
use super::session::{Link, Outbound, SessionRef, NEVER_EXPIRES};
use super::socket::{ConnectionReader, Socket};
use super::stats::Stats;
use super::threads::{self, release_unused_stack};
use super::topic::{validate_subscription_filter, validate_topic_name};
use super::Broker;
use crate::protocol::decode::FrameRef;
use crate::protocol::{
    self, connack_v3, reason, Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties,
    ProtocolVersion, Publish, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};
use crate::sink::SinkRecord;
use log::{debug, info, warn};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

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
        Connection::boxed(
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

struct Connection {
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
    client_id: Arc<str>,
    version: ProtocolVersion,
    outbox: Option<Arc<Outbox>>,
    session: Option<SessionRef>,
    /// Shared with the session's `Link`: false once the session is no longer ours.
    owns_session: Arc<AtomicBool>,
    /// Set by the broker when a reload revoked the credentials this client connected with.
    revoked: Arc<AtomicBool>,
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
    rate_limiter: PublishRateLimiter,
    /// Acknowledgements waiting for the store to make what they confirm durable (sync
    /// persistence), in the order they are due [MQTT-4.6.0-2].
    unconfirmed: Vec<Packet>,
    /// When the packet being handled was received (`ConnectionReader::received_at_ns`).
    received_at_ns: i64,
}

/// Acknowledgements held back at most before the connection waits for the store.
const MAX_UNCONFIRMED: usize = 256;

impl Connection {
    /// On the heap, built in a frame that is gone before the thread starts waiting for input:
    /// the idle thread's stack stays shallow (see `threads.rs`).
    #[inline(never)]
    fn boxed(
        broker: Arc<Broker>,
        id: u64,
        stream: Arc<Socket>,
        peer: SocketAddr,
        tls_identity: Option<String>,
        started: Instant,
        allow_anonymous: bool,
    ) -> Box<Connection> {
        Box::new(Connection::new(
            broker,
            id,
            stream,
            peer,
            tls_identity,
            started,
            allow_anonymous,
        ))
    }

    fn new(
        broker: Arc<Broker>,
        id: u64,
        stream: Arc<Socket>,
        peer: SocketAddr,
        tls_identity: Option<String>,
        started: Instant,
        allow_anonymous: bool,
    ) -> Connection {
        let rate_limit = PublishRateLimit {
            messages_per_sec: Some(broker.config.limits.max_publish_rate),
            bytes_per_sec: Some(broker.config.limits.max_publish_bytes_rate),
            ..PublishRateLimit::default()
        };
        Connection {
            broker,
            id,
            peer,
            stream,
            started,
            tls_identity,
            allow_anonymous,
            client_id: "(before CONNECT)".into(),
            version: ProtocolVersion::V311,
            outbox: None,
            session: None,
            owns_session: Arc::new(AtomicBool::new(true)),
            revoked: Arc::new(AtomicBool::new(false)),
            will: None,
            session_expiry: 0,
            topic_aliases: HashMap::new(),
            username: None,
            acl: (0, None),
            denied: 0,
            unconfirmed: Vec::new(),
            received_at_ns: 0,
            rate_limiter: PublishRateLimiter::new(rate_limit, Instant::now()),
        }
    }

    fn run(mut self: Box<Self>) {
        // Sends this thread makes are written just before it reads again (see `outbox.rs`).
        let _batching = Batching::start();
        // Filling a subscriber's queue makes this reader wait for room (see `flow.rs`).
        let _flow = flow::Scope::start();
        let _ = self.stream.set_nodelay(true);
        let mut reader = ConnectionReader::new(self.stream.clone(), self.broker.clone());
        let exit = match self.connect(&mut reader) {
            Ok(true) => {
                // CONNECT (and writing CONNACK) was the deepest work an idle client causes:
                // hand its stack pages back before the client's first wait.
                outbox::flush_batched();
                release_unused_stack();
                self.serve(&mut reader)
            }
            Ok(false) => None,
            Err(exit) => Some(exit),
        };
        self.finish(exit);
    }

    fn max_packet_size(&self) -> usize {
        self.broker.config.limits.max_packet_size
    }

    /// Wait for CONNECT and answer it. Ok(true): connected; Ok(false): refused (already answered).
    /// `connect`, `serve` and `finish` are not inlined into `run`, so its frame (above every
    /// wait) stays small; see `process`.
    #[inline(never)]
    fn connect(&mut self, reader: &mut ConnectionReader) -> Result<bool, Exit> {
        // `limits.connect_timeout_secs` is a deadline for the whole CONNECT, counted from accept
        // (or from the end of the TLS / WebSocket handshake): a client trickling its CONNECT a
        // byte at a time must not hold a connection place past it.
        let timeout = Duration::from_secs(self.broker.config.limits.connect_timeout_secs);
        let deadline = self.started + timeout;
        reader.set_deadline(Some(deadline));
        let frame = reader.next_frame(self.max_packet_size());
        reader.set_deadline(None);
        let frame = match frame {
            Ok(f) => f,
            // Idle, or timed out inside the packet (which the decoder reports as another error).
            Err(DecodeError::Io(e)) if is_timeout(&e) || Instant::now() >= deadline => {
                info!(
                    "connection from {}: no complete CONNECT within {}s \
                     (limits.connect_timeout_secs), closing",
                    self.peer,
                    timeout.as_secs()
                );
                return Ok(false);
            }
            Err(DecodeError::Eof) => {
                debug!("connection from {} closed before CONNECT", self.peer);
                return Ok(false);
            }
            Err(e) => return Err(violation_from(e)),
        };
        let connect = match protocol::decode_packet(frame, ProtocolVersion::V311) {
            Ok(Packet::Connect(c)) => c,
            Ok(other) => {
                let message = format!(
                    "[MQTT-3.1.0-1] first packet must be CONNECT, got {}",
                    other.name()
                );
                return Err(violation(reason::PROTOCOL_ERROR, message));
            }
            Err(DecodeError::UnsupportedProtocol { name, level }) => {
                // [MQTT-3.1.2-2] answer CONNACK 0x01 and close.
                warn!("connection from {}: unsupported protocol {name:?} level {level} [MQTT-3.1.2-2]", self.peer);
                let _ = (&*self.stream).write_all(&[
                    0x20,
                    0x02,
                    0x00,
                    connack_v3::UNACCEPTABLE_PROTOCOL_VERSION,
                ]);
                return Ok(false);
            }
            Err(e) => return Err(violation_from(e)),
        };
        self.accept_connect(connect)
    }

    fn accept_connect(&mut self, c: Connect) -> Result<bool, Exit> {
        self.version = c.version;
        // The username that authentication and ACLs must use: on a listener with
        // `use_identity_as_username` the TLS client certificate's CN, whatever CONNECT says;
        // otherwise CONNECT's own.
        let username: Option<String> = self.tls_identity.clone().or_else(|| c.username.clone());
        let v5 = c.version.is_v5();
        if v5 && c.properties.authentication_method.is_some() {
            // No enhanced authentication methods are supported [MQTT-4.12.0-1].
            warn!(
                "connection from {}: unsupported authentication method, refused with 0x8C",
                self.peer
            );
            self.refuse(
                connack_v3::NOT_AUTHORIZED,
                reason::BAD_AUTHENTICATION_METHOD,
            );
            return Ok(false);
        }
        if let Some(will) = &c.will {
            if will.properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(&will.payload).is_err()
            {
                warn!("connection from {}: will payload is not UTF-8 though marked so [MQTT-3.1.3-11]", self.peer);
                self.refuse(connack_v3::NOT_AUTHORIZED, reason::PAYLOAD_FORMAT_INVALID);
                return Ok(false);
            }
        }
        let mut assigned = None;
        let client_id: Arc<str> = if c.client_id.is_empty() {
            if !c.clean_start && !v5 {
                // [MQTT-3.1.3-8] zero-length id with clean session 0: identifier rejected.
                warn!("connection from {}: empty client id with clean session 0 rejected [MQTT-3.1.3-8]", self.peer);
                self.refuse(
                    connack_v3::IDENTIFIER_REJECTED,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                );
                return Ok(false);
            }
            // [MQTT-3.1.3-6] assign a unique id.
            let id = format!("auto-{:x}-{}", super::message::now_ns(), self.id);
            assigned = Some(id.clone());
            id.into()
        } else {
            c.client_id.as_str().into()
        };
        self.client_id = client_id.clone();
        // Credentials are checked against the current password file before CONNACK (CONNECT
        // Actions, section 3.1.4, step 3 in both versions); the password itself is never logged.
        let snapshot = self.broker.security.current();
        let allow_anonymous = self.allow_anonymous;
        let password = c.password.as_deref();
        let authenticated = match &self.tls_identity {
            // use_identity_as_username: the client certificate, verified against the listener's
            // ca_file during the TLS handshake, is the credential; as in mosquitto, the password
            // file is not consulted.
            Some(_) => Ok(()),
            None => authenticate(
                allow_anonymous,
                snapshot.passwords.as_ref(),
                c.username.as_deref(),
                password,
            ),
        };
        if let Err(refusal) = authenticated {
            warn!(
                "connection from {}: client {} (username {:?}) refused: {refusal}",
                self.peer, client_id, c.username
            );
            self.refuse(AuthRefusal::CONNACK_V3, AuthRefusal::CONNACK_V5);
            return Ok(false);
        }
        self.username = username.as_deref().map(Arc::from);
        if !self.keep_credential(&snapshot, &client_id) {
            warn!(
                "connection from {}: client {} (username {:?}) refused: password file entry \
                 changed by a reload during CONNECT",
                self.peer, client_id, c.username
            );
            self.refuse(AuthRefusal::CONNACK_V3, AuthRefusal::CONNACK_V5);
            return Ok(false);
        }
        self.acl = (
            snapshot.generation,
            snapshot.client_acl(&client_id, username.as_deref()),
        );
        self.session_expiry = match (v5, c.clean_start) {
            (true, _) => c.properties.session_expiry_interval.unwrap_or(0),
            (false, true) => 0,
            (false, false) => NEVER_EXPIRES,
        };
        // `limits.max_session_expiry_secs`: a longer interval (or "never", 0xFFFFFFFF) is cut
        // to the cap. A v5 client is told in CONNACK, since the server's value is the one that
        // applies (MQTT 5.0 section 3.2.2.3.2); a v3.1.1 persistent session, which would
        // otherwise never expire, silently gets the cap (3.1.1 has no way to say so).
        let capped_expiry = self
            .broker
            .config
            .limits
            .session_expiry_cap()
            .filter(|&cap| self.session_expiry > cap);
        if let Some(cap) = capped_expiry {
            self.session_expiry = cap;
        }

        let limits = &self.broker.config.limits;
        // Bounds the blocking writes of the outbox's writer thread (see `outbox.rs`).
        let _ = self.stream.set_write_timeout(Some(STALLED_CLIENT_TIMEOUT));
        // The broker may use as many topic aliases towards the client as it allows.
        let client_alias_max = if v5 {
            c.properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        };
        let outbox = Outbox::new(
            self.stream.clone(),
            self.version,
            client_alias_max,
            self.broker.clone(),
            self.id,
        );
        self.outbox = Some(outbox.clone());

        let link = Link {
            connection_id: self.id,
            version: self.version,
            outbox,
            max_packet_size: c.properties.maximum_packet_size.filter(|_| v5),
            username: self.username.clone(),
            owns_session: self.owns_session.clone(),
        };
        let mut properties = Properties::default();
        // v5 Server Keep Alive (section 3.2.2.3.14): a client asking for more than
        // `limits.max_keep_alive`, or for none (0), is told the broker's maximum, which it
        // must then use [MQTT-3.2.2-21]. v3.1.1 has no way to say so: its own value applies.
        let keep_alive_secs = match limits.max_keep_alive {
            max if v5 && max > 0 && (c.keep_alive == 0 || c.keep_alive > max) => {
                properties.server_keep_alive = Some(max);
                max
            }
            _ => c.keep_alive,
        };
        if v5 {
            properties.session_expiry_interval = capped_expiry;
            properties.assigned_client_identifier = assigned;
            properties.receive_maximum = Some(limits.max_inflight);
            properties.maximum_packet_size =
                Some(limits.max_packet_size.min(u32::MAX as usize) as u32);
            properties.topic_alias_maximum = Some(limits.max_topic_alias);
            if c.properties.request_response_information == Some(1) {
                // A per-client prefix the client may use for response topics.
                properties.response_information = Some(format!("response/{client_id}"));
            }
        }
        let session_limits = self
            .broker
            .session_limits(c.properties.receive_maximum.filter(|_| v5));
        let attached = self.broker.attach_session(
            &client_id,
            c.clean_start,
            self.session_expiry,
            session_limits,
            link,
            |present| {
                // [MQTT-3.2.2-1/2/3] session present only when resuming a stored session.
                Packet::ConnAck(ConnAck {
                    session_present: present,
                    code: 0,
                    properties,
                })
            },
        );
        self.session = Some(attached.session);
        self.will = c.will;
        self.broker.stats.client_connected();

        // [MQTT-3.1.2-24] close after 1.5x the keep-alive without any packet.
        let keep_alive =
            (keep_alive_secs > 0).then(|| Duration::from_millis(keep_alive_secs as u64 * 1500));
        let _ = self.stream.set_read_timeout(keep_alive);
        info!(
            "client {} connected from {}{} (MQTT {}, {}, keep-alive {}s{})",
            client_id,
            self.peer,
            username
                .as_deref()
                .map(|u| format!(" as {u:?}"))
                .unwrap_or_default(),
            self.version,
            if self.session_expiry == 0 {
                "clean session"
            } else {
                "persistent session"
            },
            keep_alive_secs,
            if attached.session_present {
                ", session resumed"
            } else {
                ""
            }
        );
        Ok(true)
    }

    /// Register the password file entry this client authenticated against, so that a reload
    /// that removes or changes it closes the connection. False when a reload since `snapshot`
    /// already did (the broker's pass over the connections may have run before this one was
    /// registered).
    fn keep_credential(&self, snapshot: &super::security::Snapshot, client_id: &Arc<str>) -> bool {
        if self.tls_identity.is_some() {
            return true; // the certificate is the credential; the password file is not used
        }
        let Some(username) = &self.username else {
            return true; // anonymous: allow_anonymous, which a reload does not change
        };
        let Some(entry) = snapshot.passwords.as_ref().and_then(|p| p.entry(username)) else {
            return true; // no password file
        };
        self.broker.note_credential(
            self.id,
            super::Credential {
                client_id: client_id.clone(),
                username: username.clone(),
                entry: entry.clone(),
                revoked: self.revoked.clone(),
            },
        );
        self.broker.security.generation() == snapshot.generation
            || self.broker.security.current().still_holds(username, entry)
    }

    /// Answer CONNECT with a failure code and close [MQTT-3.2.2-5].
    fn refuse(&mut self, code_v3: u8, code_v5: u8) {
        let code = if self.version.is_v5() {
            code_v5
        } else {
            code_v3
        };
        let mut buf = Vec::new();
        let connack = ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        };
        protocol::encode_packet(&Packet::ConnAck(connack), self.version, &mut buf);
        let _ = (&*self.stream).write_all(&buf);
    }

    /// The packet loop after CONNACK. Returns why it ended.
    #[inline(never)]
    fn serve(&mut self, reader: &mut ConnectionReader) -> Option<Exit> {
        loop {
            if flow::must_give_way() {
                if let Err(exit) = self.give_way() {
                    return Some(exit);
                }
            }
            // Nothing more from the client for now: one wait on the store confirms every
            // acknowledgement the burst it sent produced (group commit per connection too).
            if !self.unconfirmed.is_empty() && reader.buffer().is_empty() {
                if let Err(exit) = self.durable() {
                    return Some(exit);
                }
            }
            let frame = match reader.publish_in_buffer(self.max_packet_size()) {
                Ok(Some((frame, received_at_ns))) => {
                    match self.on_publish_in_place(frame, received_at_ns) {
                        Ok(()) => continue,
                        Err(exit) => return Some(exit),
                    }
                }
                Ok(None) => reader.next_frame(self.max_packet_size()),
                Err(e) => Err(e),
            };
            let frame = match frame {
                Ok(f) => f,
                // The broker closed our read side: the credentials were revoked.
                Err(_) if self.revoked.load(Ordering::Acquire) => return Some(Exit::Revoked),
                Err(DecodeError::Io(e)) if is_timeout(&e) => return Some(Exit::KeepAliveTimeout),
                Err(e) => return Some(violation_from(e)),
            };
            self.received_at_ns = reader.received_at_ns();
            if let Err(exit) = self.process(frame) {
                return Some(exit);
            }
        }
    }

    /// `limits.queue_full = "backpressure"`: the last packet filled a connected subscriber's
    /// queue. Send what is confirmed so far, then read nothing more (TCP holds the client
    /// back, and nothing new is acknowledged) until the subscribers it filled have room again
    /// (`flow::give_way`). Not inlined: the wait is off the hot path.
    #[inline(never)]
    fn give_way(&mut self) -> Result<(), Exit> {
        if !self.unconfirmed.is_empty() {
            self.durable()?;
        }
        outbox::flush_batched();
        let broker = &self.broker;
        let owns_session = &self.owns_session;
        let stall = Duration::from_secs(broker.config.limits.stalled_subscriber_secs);
        flow::give_way(
            self.id,
            stall,
            &|| !broker.is_shutting_down() && owns_session.load(Ordering::Acquire),
            &|room, connection| broker.disconnect_stalled(room.client_id(), connection),
        );
        Ok(())
    }

    /// Decode and act on one packet. Not inlined into `serve`: the decoded packet's space then
    /// lives in this frame, not in the one under which an idle client's thread waits to read
    /// (see `threads.rs`: a shallower wait keeps fewer stack pages resident).
    #[inline(never)]
    fn process(&mut self, frame: protocol::Frame) -> Result<(), Exit> {
        if frame.header >> 4 == 3 {
            // The packet that counts skips the (twice as large) `Packet` enum.
            let publish = protocol::decode_publish(frame, self.version).map_err(violation_from)?;
            self.check_attached()?;
            return self.on_publish(publish);
        }
        let packet = protocol::decode_packet(frame, self.version).map_err(violation_from)?;
        self.check_attached()?;
        self.handle(packet)
    }

    /// After a takeover the old reader may still hold packets it read earlier; it must not act
    /// on the session its successor now owns.
    fn check_attached(&self) -> Result<(), Exit> {
        if self.revoked.load(Ordering::Acquire) {
            // Packets the client sent before the reload and we had not read yet are not acted on.
            return Err(Exit::Revoked);
        }
        if self.owns_session.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(Exit::Closed(
                "session taken over by a new connection".into(),
            ))
        }
    }

    fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            // `process` hands PUBLISH to `on_publish` itself; kept so any packet can come here.
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => {
                if !self.session().lock().puback(a.packet_id) {
                    debug!(
                        "client {}: PUBACK for unknown packet id {}",
                        self.client_id, a.packet_id
                    );
                }
                Ok(())
            }
            Packet::PubRec(a) => {
                let mut state = self.session().lock();
                if a.reason_code >= 0x80 {
                    // v5: the receiver refused the message; the exchange ends here (4.3.3).
                    state.pubcomp(a.packet_id);
                    return Ok(());
                }
                let known = state.pubrec(a.packet_id);
                drop(state);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                // PUBREL only once "released" is stored: after a crash we must not resend the
                // PUBLISH the client has completed [MQTT-4.3.3-1].
                self.ack_durable(Packet::PubRel(ack(a.packet_id, code)))
            }
            Packet::PubRel(a) => {
                let known = self.session().lock().release_qos2(a.packet_id);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                // PUBCOMP only once the id is forgotten on disk too, or a restarted broker
                // would take the client's next message with that id for a resend.
                // [MQTT-4.3.3-2] PUBCOMP even for an id we no longer know (resent PUBREL).
                self.ack_durable(Packet::PubComp(ack(a.packet_id, code)))
            }
            Packet::PubComp(a) => {
                if !self.session().lock().pubcomp(a.packet_id) {
                    debug!(
                        "client {}: PUBCOMP for unknown packet id {}",
                        self.client_id, a.packet_id
                    );
                }
                Ok(())
            }
            Packet::Subscribe(s) => self.on_subscribe(s),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            // [MQTT-3.12.4-1]
            Packet::PingReq => self.send(Packet::PingResp),
            Packet::Disconnect(d) => self.on_disconnect(d),
            Packet::Connect(_) => Err(violation(
                reason::PROTOCOL_ERROR,
                "[MQTT-3.1.0-2] a second CONNECT on one connection",
            )),
            // Without an Authentication Method in CONNECT, AUTH is a protocol error [MQTT-4.12.0-6].
            Packet::Auth(_) => Err(violation(
                reason::PROTOCOL_ERROR,
                "[MQTT-4.12.0-6] AUTH without an authentication method",
            )),
            p @ (Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp) => Err(violation(
                reason::PROTOCOL_ERROR,
                format!("[MQTT-2.2.1] {} is a server-to-client packet", p.name()),
            )),
        }
    }

    /// With sync persistence, what an acknowledgement confirms must be on disk first: wait for
    /// the store, then send the acknowledgements held back so far.
    fn durable(&mut self) -> Result<(), Exit> {
        outbox::flush_batched();
        if !self.broker.wait_durable() {
            return Err(Exit::Closed(
                "the store could not make the client's message durable; not acknowledged".into(),
            ));
        }
        for packet in std::mem::take(&mut self.unconfirmed) {
            self.send(packet)?;
        }
        Ok(())
    }

    /// Send an acknowledgement once what it confirms is durable. With sync persistence it is
    /// held back until the client has nothing more buffered (see `serve`), so a burst of
    /// PUBLISHes costs one wait on the store, not one each; the ack order is kept.
    fn ack_durable(&mut self, packet: Packet) -> Result<(), Exit> {
        if !self.broker.acks_wait_for_store() {
            return self.send(packet);
        }
        self.unconfirmed.push(packet);
        if self.unconfirmed.len() >= MAX_UNCONFIRMED {
            self.durable()?;
        }
        Ok(())
    }

    fn session(&self) -> &SessionRef {
        self.session.as_ref().expect("session exists after CONNECT")
    }

    /// Resolve a v5 topic alias: set it when the PUBLISH carries a topic, use it when not.
    fn resolve_topic_alias(&mut self, p: &mut Publish) -> Result<(), Exit> {
        let Some(alias) = p.properties.take_topic_alias() else {
            return Ok(());
        };
        if alias == 0 || alias > self.broker.config.limits.max_topic_alias {
            let message =
                format!("[MQTT-3.3.2-8] topic alias {alias} is 0 or above the maximum we allow");
            return Err(violation(reason::TOPIC_ALIAS_INVALID, message));
        }
        if p.topic.is_empty() {
            match self.topic_aliases.get(&alias) {
                Some(topic) => p.topic = topic.clone(),
                None => {
                    let message =
                        format!("topic alias {alias} used before it was set (MQTT 5.0 section 3.3.2.3.4: a Protocol Error)");
                    return Err(violation(reason::PROTOCOL_ERROR, message));
                }
            }
        } else {
            self.topic_aliases.insert(alias, p.topic.clone());
        }
        Ok(())
    }

    fn on_publish(&mut self, mut p: Publish) -> Result<(), Exit> {
        if self.version.is_v5() {
            self.resolve_topic_alias(&mut p)?;
        }
        if !self.admit(&p.topic, &p.payload, &p.properties, p.qos, p.packet_id)? {
            return Ok(());
        }
        self.route_publish(p)
    }

    /// A PUBLISH still in the read buffer. When only the sink takes it (no subscription at
    /// all, not retained, QoS 0 or 1, messages not logged), it goes there straight from the
    /// buffer: the usual telemetry publish costs no allocation. Any other is copied out and
    /// handled as usual.
    #[inline(never)]
    fn on_publish_in_place(&mut self, frame: FrameRef, received_at_ns: i64) -> Result<(), Exit> {
        self.received_at_ns = received_at_ns;
        let p = protocol::decode_publish_view(frame.header, frame.body, self.version)
            .map_err(violation_from)?;
        self.check_attached()?;
        if p.properties.topic_alias.is_some() {
            return self.on_publish(p.into_owned());
        }
        if !self.admit(p.topic, p.payload, &p.properties, p.qos, p.packet_id)? {
            return Ok(());
        }
        let sink_only = p.qos != QoS::ExactlyOnce
            && !p.retain
            && !self.broker.config.log.messages
            && !self.broker.router.has_subscriptions();
        if !sink_only {
            return self.route_publish(p.into_owned());
        }
        let record = SinkRecord {
            topic: p.topic,
            payload: p.payload,
            received_at_ns,
        };
        match p.qos {
            // With sync persistence its PUBACK then waits for the sink's store record too.
            QoS::AtLeastOnce => self.broker.sink.submit_acknowledged(record),
            _ => self.broker.sink.submit(record),
        }
        match p.qos {
            QoS::AtLeastOnce => {
                let code = self.delivered_code(0);
                self.ack_durable(Packet::PubAck(ack(p.packet_id, code)))
            }
            _ => Ok(()),
        }
    }

    /// The checks every PUBLISH passes before it is routed. `Ok(false)`: refused, and answered
    /// where the protocol has an answer.
    fn admit(
        &mut self,
        topic: &str,
        payload: &[u8],
        properties: &Properties,
        qos: QoS,
        packet_id: u16,
    ) -> Result<bool, Exit> {
        if self.version.is_v5() && !properties.subscription_identifiers.is_empty() {
            return Err(violation(
                reason::PROTOCOL_ERROR,
                "[MQTT-3.3.4-6] a PUBLISH from a client must not carry a subscription identifier",
            ));
        }
        if let Err(rule) = validate_topic_name(topic) {
            return Err(violation(reason::TOPIC_NAME_INVALID, rule));
        }
        let pause = self.rate_limiter.acquire_now(payload.len());
        if !pause.is_zero() {
            // Over its publish rate: stop reading from this client for a while, so TCP slows it
            // down and nothing it sent is dropped.
            outbox::flush_batched();
            thread::sleep(pause);
        }
        if !self.can_publish(topic) {
            // Dropped, as mosquitto does; v5 clients are told (0x87), v3 clients cannot be.
            self.denied += 1;
            if self.denied == 1 || self.denied % 1000 == 0 {
                info!(
                    "client {}: PUBLISH to {} denied by ACL ({} so far)",
                    self.client_id, topic, self.denied
                );
            }
            Stats::add(&self.broker.stats.publish_denied, 1);
            let code = if self.version.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::SUCCESS
            };
            return match qos {
                QoS::AtMostOnce => Ok(()),
                QoS::AtLeastOnce => self.ack_durable(Packet::PubAck(ack(packet_id, code))),
                QoS::ExactlyOnce => self.ack_durable(Packet::PubRec(ack(packet_id, code))),
            }
            .map(|()| false);
        }
        if properties.payload_format_indicator == Some(1) && std::str::from_utf8(payload).is_err() {
            // v5: payload declared UTF-8 but is not; refuse it with 0x99 (3.3.2.3.2).
            debug!(
                "client {}: PUBLISH on {} has a payload that is not UTF-8 as declared",
                self.client_id, topic
            );
            return match qos {
                QoS::AtMostOnce => Err(violation(
                    reason::PAYLOAD_FORMAT_INVALID,
                    "payload is not UTF-8 as declared",
                )),
                QoS::AtLeastOnce => self.ack_durable(Packet::PubAck(ack(
                    packet_id,
                    reason::PAYLOAD_FORMAT_INVALID,
                ))),
                QoS::ExactlyOnce => self.ack_durable(Packet::PubRec(ack(
                    packet_id,
                    reason::PAYLOAD_FORMAT_INVALID,
                ))),
            }
            .map(|()| false);
        }
        Ok(true)
    }

    /// v5: tell the publisher when nobody was subscribed (0x10, a success code).
    fn delivered_code(&self, delivered: usize) -> u8 {
        if self.version.is_v5() && delivered == 0 {
            reason::NO_MATCHING_SUBSCRIBERS
        } else {
            reason::SUCCESS
        }
    }

    /// Route an admitted PUBLISH and acknowledge it.
    fn route_publish(&mut self, p: Publish) -> Result<(), Exit> {
        let (qos, packet_id) = (p.qos, p.packet_id);
        let message = Message::new(
            p.topic,
            p.payload,
            qos,
            p.retain,
            p.properties,
            Some(self.client_id.clone()),
            self.received_at_ns,
        );
        match qos {
            QoS::AtMostOnce => {
                self.broker.publish(message);
                Ok(())
            }
            QoS::AtLeastOnce => {
                let delivered = self.broker.publish(message);
                self.ack_durable(Packet::PubAck(ack(
                    packet_id,
                    self.delivered_code(delivered),
                )))
            }
            QoS::ExactlyOnce => {
                let (new, pending) = {
                    let mut state = self.session().lock();
                    let pending = state.incoming_qos2_len();
                    (state.receive_qos2(packet_id), pending)
                };
                // v5 only: more unreleased QoS 2 messages than the Receive Maximum we announced
                // [MQTT-3.3.4-9]. 3.1.1 has no such limit (the packet id space bounds it).
                let receive_maximum = self.broker.config.limits.max_inflight as usize;
                if new && self.version.is_v5() && pending >= receive_maximum {
                    self.session().lock().release_qos2(packet_id);
                    return Err(violation(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "[MQTT-3.3.4-9] receive maximum exceeded",
                    ));
                }
                // [MQTT-4.3.3-2] route once; a resend before PUBREL is only acknowledged again.
                let delivered = if new {
                    let incoming = self.session().lock().incoming_record(packet_id);
                    self.broker.publish_exactly_once(message, incoming)
                } else {
                    debug!(
                        "client {}: duplicate QoS 2 PUBLISH {packet_id} not routed again",
                        self.client_id
                    );
                    1
                };
                self.ack_durable(Packet::PubRec(ack(
                    packet_id,
                    self.delivered_code(delivered),
                )))
            }
        }
    }

    /// ACL write access; clients never write to `$SYS` (the broker's own topics).
    fn can_publish(&mut self, topic: &str) -> bool {
        if topic.starts_with("$SYS/") || topic == "$SYS" {
            return false;
        }
        self.client_acl().is_none_or(|acl| acl.can_publish(topic))
    }

    /// This client's ACL rules (None: no ACL file), rebuilt when the files were reloaded.
    fn client_acl(&mut self) -> Option<&ClientAcl> {
        let generation = self.broker.security.generation();
        if self.acl.0 != generation {
            let acl = self
                .broker
                .security
                .current()
                .client_acl(&self.client_id, self.username.as_deref());
            self.acl = (generation, acl);
        }
        self.acl.1.as_ref()
    }

    fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Exit> {
        let session = self.session().clone();
        let v5 = self.version.is_v5();
        let identifier = s.properties.subscription_identifiers.first().copied();
        let mut reason_codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            if let Err(rule) = validate_subscription_filter(&f.filter) {
                // A failed filter gets 0x80 in SUBACK, the others still apply: one code per filter
                // [MQTT-3.8.4-5] (3.1.1), [MQTT-3.8.4-6]/[MQTT-3.8.4-7] (5.0).
                debug!(
                    "client {}: subscription to {:?} refused: {rule}",
                    self.client_id, f.filter
                );
                reason_codes.push(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    0x80
                });
                continue;
            }
            let shared = super::router::parse_shared(&f.filter);
            if shared.is_some() && f.options.no_local {
                let message = "[MQTT-3.8.3-4] No Local on a shared subscription";
                return Err(violation(reason::PROTOCOL_ERROR, message));
            }
            let topic_filter = shared.map_or(f.filter.as_str(), |(_, filter)| filter);
            if !self
                .client_acl()
                .is_none_or(|acl| acl.can_subscribe(topic_filter))
            {
                // The ACL leaves the filter nothing to read: refused in SUBACK, 0x80 Failure
                // (MQTT 3.1.1 section 3.9.3) or 0x87 Not authorized (MQTT 5.0 section 3.9.3).
                info!(
                    "client {}: subscription to {:?} denied by ACL",
                    self.client_id, f.filter
                );
                reason_codes.push(if v5 { reason::NOT_AUTHORIZED } else { 0x80 });
                continue;
            }
            let shared = shared.is_some();
            // `limits.max_subscriptions_per_client`: a filter the session already holds is
            // a replacement [MQTT-3.8.4-3] and never counts twice.
            let max = self.broker.config.limits.max_subscriptions_per_client;
            if max > 0 {
                let (held, holds_filter) = {
                    let state = session.lock();
                    let held = state.subscriptions.len();
                    (held, state.subscriptions.contains_key(&f.filter))
                };
                if held >= max && !holds_filter {
                    warn!(
                        "client {}: subscription to {:?} refused: {held} subscriptions held, \
                         limits.max_subscriptions_per_client is {max}",
                        self.client_id, f.filter
                    );
                    // 0x97 Quota exceeded (MQTT 5.0 section 3.9.3); v3.1.1 only has 0x80 Failure.
                    reason_codes.push(if v5 { reason::QUOTA_EXCEEDED } else { 0x80 });
                    continue;
                }
            }
            let existed = self
                .broker
                .router
                .subscribe(&f.filter, &session, f.options, identifier);
            session.lock().subscribe(&f.filter, f.options, identifier);
            reason_codes.push(f.options.qos as u8);
            // v5 retain handling: 0 always, 1 only for a new subscription, 2 never [MQTT-3.3.1-9..11 (v5)].
            // Shared subscriptions get no retained messages (MQTT 5.0 section 4.8.2).
            let wants_retained =
                f.options.retain_handling == 0 || (f.options.retain_handling == 1 && !existed);
            if wants_retained && !shared {
                retained.push((f.filter.clone(), f.options.qos));
            }
            debug!(
                "client {} subscribed to {} (qos {})",
                self.client_id, f.filter, f.options.qos as u8
            );
        }
        // A granted subscription is stored before SUBACK confirms it.
        self.durable()?;
        // [MQTT-3.8.4-1] SUBACK, with one return code per filter [MQTT-3.8.4-5].
        self.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes,
            properties: Properties::default(),
        }))?;
        for (filter, qos) in retained {
            self.broker
                .deliver_retained(&session, &filter, qos, identifier);
        }
        Ok(())
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Exit> {
        let session = self.session().clone();
        let mut reason_codes = Vec::with_capacity(u.filters.len());
        for filter in &u.filters {
            if validate_subscription_filter(filter).is_err() {
                // v5 0x8F "Topic Filter invalid" (section 3.11.2.1): no subscription can have
                // this filter, so there is nothing to remove.
                reason_codes.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let existed = self.broker.router.unsubscribe(filter, &session);
            session.lock().unsubscribe(filter);
            reason_codes.push(if existed {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        self.durable()?;
        // [MQTT-3.10.4-4] UNSUBACK even when nothing was removed.
        self.send(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reason_codes,
            properties: Properties::default(),
        }))
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Exit> {
        if let Some(expiry) = d.properties.session_expiry_interval {
            if self.session_expiry == 0 && expiry != 0 {
                let message =
                    "[MQTT-3.14.2-2] session expiry set at DISCONNECT after being 0 at CONNECT";
                return Err(violation(reason::PROTOCOL_ERROR, message));
            }
            // The broker's cap holds here too (the server may end a session by policy).
            let cap = self.broker.config.limits.session_expiry_cap();
            let expiry = cap.map_or(expiry, |cap| expiry.min(cap));
            self.session_expiry = expiry;
            self.session().lock().expiry_interval = expiry;
        }
        // [MQTT-3.1.2-10 (v5)] only a normal disconnection (0x00) discards the will: 0x04 asks
        // for it, and an error reason means the client did not end normally (section 3.1.2.5).
        Err(Exit::Disconnect {
            publish_will: d.reason_code != reason::SUCCESS,
        })
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
            outbox::flush_batched();
            thread::sleep(Duration::from_millis(1));
        }
        outbox
            .send(Outbound::Packet(Box::new(packet)))
            .map_err(|_| Exit::Closed("write failed".into()))
    }

    /// Close the connection: log why, tell a v5 client, flush and close the outbox, detach the
    /// session and publish the will unless the client disconnected normally [MQTT-3.1.2-8].
    #[inline(never)]
    fn finish(&mut self, exit: Option<Exit>) {
        let shutting_down = self.broker.is_shutting_down();
        let (publish_will, why) = match &exit {
            None => (false, String::new()),
            Some(Exit::Disconnect { publish_will }) => {
                (*publish_will, "client sent DISCONNECT".to_string())
            }
            Some(Exit::Violation { message, .. }) => {
                warn!(
                    "client {} ({}): protocol violation {message}; closing connection",
                    self.client_id, self.peer
                );
                (true, format!("protocol violation {message}"))
            }
            Some(Exit::Closed(why)) => (true, why.clone()),
            Some(Exit::KeepAliveTimeout) => {
                (true, "keep-alive timeout [MQTT-3.1.2-24]".to_string())
            }
            // No will: it would be published for an identity that is no longer authorized.
            Some(Exit::Revoked) => (
                false,
                "credentials revoked (password file entry removed or changed by a reload)"
                    .to_string(),
            ),
        };
        // v5 clients are told why the broker closes (section 4.13): the rule broken, 0x8D
        // "Keep Alive timeout" [MQTT-3.1.2-22], or 0x87 "Not authorized".
        let disconnect_reason = match &exit {
            Some(Exit::Violation { reason_code, .. }) => Some(*reason_code),
            Some(Exit::KeepAliveTimeout) => Some(reason::KEEP_ALIVE_TIMEOUT),
            // 0x87 Not authorized rather than 0x98 Administrative action: it names why the
            // client may not stay (its credentials no longer authorize it), and it is the code
            // the client gets in CONNACK if it reconnects with them.
            Some(Exit::Revoked) => Some(reason::NOT_AUTHORIZED),
            _ => None,
        };
        let told = disconnect_reason.is_some() && self.version.is_v5();
        if let (Some(reason_code), true) = (disconnect_reason, told) {
            let disconnect = Disconnect {
                reason_code,
                properties: Properties::default(),
            };
            let _ = self.send(Packet::Disconnect(disconnect));
        }
        // Settle the session (detach, end it, publish or schedule the will) before the socket
        // is closed: a client that sees the close and reconnects at once must find the session
        // already ended (Session Present 0 for expiry 0) and its messages no longer sent here.
        if let Some(session) = self.session.take() {
            self.detach(session, publish_will, shutting_down, &why);
        }
        if told {
            self.linger_for_disconnect();
        }
        match self.outbox.take() {
            Some(outbox) => outbox.close(),
            None => {
                let _ = self.stream.shutdown(Shutdown::Both);
            }
        }
    }

    /// After a DISCONNECT the broker sends to end the connection: let the client read it. The
    /// client may still be sending (a PUBREL for each PUBREC, the rest of a burst that broke
    /// the Receive Maximum [MQTT-3.3.4-9]); closing a socket with unread input makes the
    /// kernel send RST instead of FIN, and the client then loses what it had not read yet,
    /// DISCONNECT included (it sees "connection reset" or a broken pipe). So: wait until the
    /// DISCONNECT is written, send FIN (shutdown of the write side), and read and discard
    /// until the client closes too, for at most `DISCONNECT_LINGER`.
    fn linger_for_disconnect(&self) {
        let Some(outbox) = &self.outbox else { return };
        let deadline = Instant::now() + DISCONNECT_LINGER;
        outbox::flush_batched();
        while !outbox.is_idle() {
            if Instant::now() >= deadline {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        let mut discard = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match (&*self.stream).read(&mut discard) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    /// Detach the session from this connection and hand the will (if due) to the broker.
    fn detach(&mut self, session: SessionRef, publish_will: bool, shutting_down: bool, why: &str) {
        self.broker.stats.client_disconnected();
        let will_topic = self
            .will
            .as_ref()
            .map(|w| w.topic.clone())
            .unwrap_or_default();
        if self.will.is_some() && publish_will && !self.can_publish(&will_topic) {
            // The will obeys the ACL like any other publish.
            info!(
                "client {}: will on {will_topic} denied by ACL; not published",
                self.client_id
            );
            self.will = None;
        }
        let will = self
            .will
            .take()
            .filter(|_| publish_will && !shutting_down)
            .map(|will| {
                let delay = will.properties.will_delay_interval.unwrap_or(0);
                let message = Message::new(
                    will.topic.into(),
                    will.payload,
                    will.qos,
                    will.retain,
                    will.properties.into(),
                    Some(self.client_id.clone()),
                    now_ns(),
                );
                (Arc::new(message), delay)
            });
        info!(
            "client {} disconnected: {}{}",
            self.client_id,
            if shutting_down {
                "broker shutting down"
            } else {
                why
            },
            if will.is_some() {
                "; publishing will"
            } else {
                ""
            }
        );
        self.broker.detach_session(&session, self.id, will);
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
