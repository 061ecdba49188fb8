//! The CONNECT handshake: the first packet, authentication, the session attach and the
//! CONNACK [MQTT-3.1.0-1], [MQTT-3.2.0-1].

use super::*;
use crate::broker::auth::{authenticate, AuthRefusal};
use crate::broker::live::{ClientInfo, WillView};
use crate::broker::outbox::Outbox;
use crate::broker::reader::ConnectionReader;
use crate::broker::session::{Link, NEVER_EXPIRES};
use crate::protocol::{
    self, connack_v3, reason, ConnAck, Connect, DecodeError, Packet, Properties, ProtocolVersion,
};
use log::{debug, info, warn};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Handshake {
    /// Wait for CONNECT and answer it: the connected client, or why not (None: refused with a
    /// CONNACK already written, closed or timed out; the caller closes the socket).
    /// `connect`, `serve` and `finish` are not inlined into `run`, so its frame (above every
    /// wait) stays small; see `process`.
    #[inline(never)]
    pub(super) fn connect(
        self,
        reader: &mut ConnectionReader,
    ) -> Result<Box<Connection>, Option<Exit>> {
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
                return Err(None);
            }
            Err(DecodeError::Eof) => {
                debug!("connection from {} closed before CONNECT", self.peer);
                return Err(None);
            }
            Err(e) => return Err(Some(violation_from(e))),
        };
        let connect = match protocol::decode_packet(frame, ProtocolVersion::V311) {
            Ok(Packet::Connect(c)) => c,
            Ok(other) => {
                let message = format!(
                    "[MQTT-3.1.0-1] first packet must be CONNECT, got {}",
                    other.name()
                );
                return Err(Some(violation(reason::PROTOCOL_ERROR, message)));
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
                return Err(None);
            }
            Err(e) => return Err(Some(violation_from(e))),
        };
        self.accept_connect(connect).ok_or(None)
    }

    /// The connected client, or None when CONNECT is refused (the CONNACK saying why is
    /// written).
    pub(super) fn accept_connect(self, c: Connect) -> Option<Box<Connection>> {
        let version = c.version;
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
                version,
                connack_v3::NOT_AUTHORIZED,
                reason::BAD_AUTHENTICATION_METHOD,
            );
            return None;
        }
        if let Some(will) = &c.will {
            if will.properties.payload_format_indicator == Some(1)
                && std::str::from_utf8(&will.payload).is_err()
            {
                warn!("connection from {}: will payload is not UTF-8 though marked so [MQTT-3.1.3-11]", self.peer);
                self.refuse(
                    version,
                    connack_v3::NOT_AUTHORIZED,
                    reason::PAYLOAD_FORMAT_INVALID,
                );
                return None;
            }
        }
        let mut assigned = None;
        let client_id: Arc<str> = if c.client_id.is_empty() {
            if !c.clean_start && !v5 {
                // [MQTT-3.1.3-8] zero-length id with clean session 0: identifier rejected.
                warn!("connection from {}: empty client id with clean session 0 rejected [MQTT-3.1.3-8]", self.peer);
                self.refuse(
                    version,
                    connack_v3::IDENTIFIER_REJECTED,
                    reason::CLIENT_IDENTIFIER_NOT_VALID,
                );
                return None;
            }
            // [MQTT-3.1.3-6] assign a unique id.
            let id = format!("auto-{:x}-{}", crate::broker::message::now_ns(), self.id);
            assigned = Some(id.clone());
            id.into()
        } else {
            c.client_id.as_str().into()
        };
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
            self.refuse(version, AuthRefusal::CONNACK_V3, AuthRefusal::CONNACK_V5);
            return None;
        }
        let username_arc: Option<Arc<str>> = username.as_deref().map(Arc::from);
        if !self.keep_credential(&snapshot, &client_id, username_arc.as_ref()) {
            warn!(
                "connection from {}: client {} (username {:?}) refused: password file entry \
                 changed by a reload during CONNECT",
                self.peer, client_id, c.username
            );
            self.refuse(version, AuthRefusal::CONNACK_V3, AuthRefusal::CONNACK_V5);
            return None;
        }
        let acl = (
            snapshot.generation,
            snapshot.client_acl(&client_id, username.as_deref()),
        );
        let mut session_expiry = match (v5, c.clean_start) {
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
            .filter(|&cap| session_expiry > cap);
        if let Some(cap) = capped_expiry {
            session_expiry = cap;
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
            version,
            client_alias_max,
            self.broker.clone(),
            self.id,
        );

        // Shared with the session's `Link`: cleared once the session is no longer ours.
        let owns_session = Arc::new(AtomicBool::new(true));
        let link = Link {
            connection_id: self.id,
            version,
            outbox: outbox.clone(),
            max_packet_size: c.properties.maximum_packet_size.filter(|_| v5),
            username: username_arc.clone(),
            owns_session: owns_session.clone(),
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
        // Registered before CONNACK goes out (in `attach_session`): a client that has its
        // CONNACK is already in the operator's views.
        self.broker.note_client(
            self.id,
            ClientInfo {
                client_id: client_id.clone(),
                username: username_arc.clone(),
                peer: self.peer,
                protocol: version,
                keep_alive_secs,
                clean_start: c.clean_start,
                connected_at_ms: (crate::broker::message::now_ns() / 1_000_000) as u64,
                will: c.will.as_ref().map(|w| Arc::new(WillView::of(w))),
                revocation: self.revoked.clone(),
            },
        );
        let attached = self.broker.attach_session(
            &client_id,
            c.clean_start,
            session_expiry,
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
        self.broker.stats.client_connected();

        // [MQTT-3.1.2-24] close after 1.5x the keep-alive without any packet.
        let keep_alive =
            (keep_alive_secs > 0).then(|| Duration::from_millis(keep_alive_secs as u64 * 1500));
        let _ = self.stream.set_read_timeout(keep_alive);
        info!(
            "client {} connected from {}{} (MQTT {}{}, {}, keep-alive {}s{})",
            client_id,
            self.peer,
            username
                .as_deref()
                .map(|u| format!(" as {u:?}"))
                .unwrap_or_default(),
            version,
            if c.bridge {
                " bridge (no local, retain as published)"
            } else {
                ""
            },
            if session_expiry == 0 {
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
        let rate_limit = PublishRateLimit {
            messages_per_sec: Some(limits.max_publish_rate),
            bytes_per_sec: Some(limits.max_publish_bytes_rate),
            ..PublishRateLimit::default()
        };
        let Handshake {
            broker,
            id,
            peer,
            stream,
            revoked,
            ..
        } = self;
        Some(Box::new(Connection {
            broker,
            id,
            peer,
            stream,
            client_id,
            version,
            bridge: c.bridge,
            outbox: Some(outbox),
            session: Some(attached.session),
            owns_session,
            revoked,
            will: c.will,
            session_expiry,
            topic_aliases: HashMap::new(),
            username: username_arc,
            acl,
            denied: 0,
            prefix: None,
            rate_limiter: PublishRateLimiter::new(rate_limit, Instant::now()),
            unconfirmed: Vec::new(),
            received_at_ns: 0,
        }))
    }

    /// Register the password file entry this client authenticated against, so that a reload
    /// that removes or changes it closes the connection. False when a reload since `snapshot`
    /// already did (the broker's pass over the connections may have run before this one was
    /// registered).
    pub(super) fn keep_credential(
        &self,
        snapshot: &crate::broker::security::Snapshot,
        client_id: &Arc<str>,
        username: Option<&Arc<str>>,
    ) -> bool {
        if self.tls_identity.is_some() {
            return true; // the certificate is the credential; the password file is not used
        }
        let Some(username) = username else {
            return true; // anonymous: allow_anonymous, which a reload does not change
        };
        let Some(entry) = snapshot.passwords.as_ref().and_then(|p| p.entry(username)) else {
            return true; // no password file
        };
        self.broker.note_credential(
            self.id,
            crate::broker::live::Credential {
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
    pub(super) fn refuse(&self, version: ProtocolVersion, code_v3: u8, code_v5: u8) {
        let code = if version.is_v5() { code_v5 } else { code_v3 };
        let mut buf = Vec::new();
        let connack = ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        };
        protocol::encode_packet(&Packet::ConnAck(connack), version, &mut buf);
        let _ = (&*self.stream).write_all(&buf);
    }
}
