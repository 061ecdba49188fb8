//! The read loop and teardown: `serve` reads and dispatches packets (`handle` is the dispatch
//! on one screen), `finish` ends the connection, publishes or keeps the will and detaches the
//! session.

use super::*;
use crate::broker::flow;
use crate::broker::message::{now_ns, Message};
use crate::broker::reader::ConnectionReader;
use crate::broker::session::SessionRef;
use crate::protocol::{self, reason, DecodeError, Disconnect, Packet, Properties};
use log::{info, warn};
use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

impl Connection {
    /// The packet loop after CONNACK. Returns why it ended.
    #[inline(never)]
    pub(super) fn serve(&mut self, reader: &mut ConnectionReader) -> Option<Exit> {
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
                Err(_) if self.revoked.is_revoked() => return Some(Exit::Revoked),
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
    pub(super) fn give_way(&mut self) -> Result<(), Exit> {
        if !self.unconfirmed.is_empty() {
            self.durable()?;
        }
        read_scope::flush();
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
    pub(super) fn process(&mut self, frame: protocol::Frame) -> Result<(), Exit> {
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
    pub(super) fn check_attached(&self) -> Result<(), Exit> {
        if self.revoked.is_revoked() {
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

    pub(super) fn handle(&mut self, packet: Packet) -> Result<(), Exit> {
        match packet {
            // `process` hands PUBLISH to `on_publish` itself; kept so any packet can come here.
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PubComp(a) => self.on_pubcomp(a),
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

    /// Whether an operator closed this connection (`Broker::kick`).
    fn kicked(&self) -> bool {
        self.revoked.reason() == Some(reason::ADMINISTRATIVE_ACTION)
    }

    pub(super) fn on_disconnect(&mut self, d: Disconnect) -> Result<(), Exit> {
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

    /// Close the connection: log why, tell a v5 client, flush and close the outbox, detach the
    /// session and publish the will unless the client disconnected normally [MQTT-3.1.2-8].
    #[inline(never)]
    pub(super) fn finish(&mut self, exit: Option<Exit>) {
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
            // An operator's kick is a connection the server closed: the will is published
            // [MQTT-3.1.2-8].
            Some(Exit::Revoked) if self.kicked() => {
                (true, "disconnected by an administrator".to_string())
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
            // An operator's kick: 0x98 Administrative action.
            Some(Exit::Revoked) => Some(self.revoked.reason().unwrap_or(reason::NOT_AUTHORIZED)),
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
    pub(super) fn linger_for_disconnect(&self) {
        let Some(outbox) = &self.outbox else { return };
        let deadline = Instant::now() + DISCONNECT_LINGER;
        read_scope::flush();
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
    pub(super) fn detach(
        &mut self,
        session: SessionRef,
        publish_will: bool,
        shutting_down: bool,
        why: &str,
    ) {
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
