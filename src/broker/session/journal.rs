//! What a persistent session records in the store (`broker/persist.rs` encodes it): the
//! session, its owner, subscriptions, QoS state, and its end.

use crate::broker::persist as records;
use crate::broker::security::SecurityFiles;
use crate::store::journal::Op;

use super::state::{Session, SessionJournal, SessionOwner};

impl Session {
    /// Start recording this session (it became persistent): write all of its state.
    pub fn enable_journal(&mut self, journal: SessionJournal) {
        self.journal = Some(journal);
        self.record_owner();
        self.record_session();
        for q in &self.queued {
            self.record(|c| records::outgoing_put(c, q.seq, &q.message, &q.route, 0, false));
        }
        for i in &self.inflight {
            self.record(|c| {
                records::outgoing_put(c, i.seq, &i.message, &i.route, i.packet_id, i.released)
            });
        }
        for id in &self.incoming_qos2 {
            self.record(|c| records::incoming_put(c, *id));
        }
    }

    pub fn has_journal(&self) -> bool {
        self.journal.is_some()
    }

    /// Stop recording. Returns the record that deletes everything stored for the session (it
    /// ended), for the caller to submit, with the session's will if it has one to publish.
    pub fn end_journal(&mut self) -> Option<Op> {
        let j = self.journal.take()?;
        Some(Op::Batch(records::session_end(&j.client)))
    }

    /// The client is back: its disconnection time (and delayed will) is deleted from the store.
    /// Returns whether a record was submitted, so the caller can wait for it before CONNACK:
    /// after a crash the store must not claim the client was still away, nor hold a will the
    /// reconnection cancelled [MQTT-3.1.3-9].
    pub fn note_reconnected(&mut self) -> bool {
        if self.disconnected_at.take().is_none() {
            return false;
        }
        self.record(records::session_attached);
        self.journal.is_some()
    }

    /// Record when the client disconnected and the delayed will (see `Session::restore`).
    pub fn record_detached(&self) {
        if let (Some(j), Some(op)) = (&self.journal, self.detached_record()) {
            j.store.submit(op);
        }
    }

    /// The record `record_detached` submits (None when the session is not stored or its
    /// client is connected).
    pub fn detached_record(&self) -> Option<Op> {
        let j = self.journal.as_ref()?;
        let at = self.disconnected_at?;
        let will = self.delayed_will.as_ref().map(|(due, w)| (*due, &**w));
        Some(records::session_detached(&j.client, at, will))
    }

    pub(super) fn record_owner(&self) {
        if let SessionOwner::Identity(owner) = &self.owner {
            self.record(|c| records::session_owner(c, owner.as_deref()));
        }
    }

    /// Remove the queued and in-flight messages that `username` may not read, before a
    /// resumed session sends them (as mosquitto's `connection_check_acl`): a second line of
    /// defence behind `may_resume`, and what applies read access changed while the client was
    /// away. A QoS 2 message already PUBREC'd stays: only its PUBREL is left to send.
    pub fn discard_unreadable(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        security: &SecurityFiles,
    ) -> usize {
        let Some(acl) = security.current().client_acl(client_id, username) else {
            return 0;
        };
        let journal = self.journal.as_ref();
        let mut discarded = 0;
        self.queued.retain(|q| {
            let keep = acl.can_receive(&q.message.topic);
            if !keep {
                discarded += 1;
                if let Some(j) = journal {
                    j.store.submit(records::outgoing_delete(&j.client, q.seq));
                }
            }
            keep
        });
        self.inflight.retain(|i| {
            let keep = i.released || acl.can_receive(&i.message.topic);
            if !keep {
                discarded += 1;
                if let Some(j) = journal {
                    j.store.submit(records::outgoing_delete(&j.client, i.seq));
                }
            }
            keep
        });
        discarded
    }

    /// Record the expiry interval and subscriptions.
    pub fn record_session(&self) {
        self.record(|c| {
            records::session_put(
                c,
                self.expiry_interval,
                self.subscriptions
                    .iter()
                    .map(|(f, o)| (f.as_str(), *o, self.subscription_ids.get(f).copied())),
            )
        });
    }

    pub(super) fn record(&self, op: impl FnOnce(&[u8]) -> Op) {
        if let Some(j) = &self.journal {
            j.store.submit(op(&j.client));
        }
    }

    /// The store record of an incoming QoS 2 packet id (None when the session is not stored):
    /// written by `Broker::publish_exactly_once` atomically with the message's deliveries.
    pub fn incoming_record(&self, packet_id: u16) -> Option<Op> {
        self.journal
            .as_ref()
            .map(|j| records::incoming_put(&j.client, packet_id))
    }
}
