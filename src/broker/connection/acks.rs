//! The acknowledgement packets (PUBACK, PUBREC, PUBREL, PUBCOMP) and the durable waits: with
//! sync persistence an acknowledgement goes out only once what it confirms is on disk.

use super::*;
use crate::protocol::{reason, Ack, Packet};
use log::debug;

impl Connection {
    pub(super) fn on_puback(&mut self, a: Ack) -> Result<(), Exit> {
        if !self.session().lock().puback(a.packet_id) {
            debug!(
                "client {}: PUBACK for unknown packet id {}",
                self.client_id, a.packet_id
            );
        }
        Ok(())
    }

    pub(super) fn on_pubrec(&mut self, a: Ack) -> Result<(), Exit> {
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

    pub(super) fn on_pubrel(&mut self, a: Ack) -> Result<(), Exit> {
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

    pub(super) fn on_pubcomp(&mut self, a: Ack) -> Result<(), Exit> {
        if !self.session().lock().pubcomp(a.packet_id) {
            debug!(
                "client {}: PUBCOMP for unknown packet id {}",
                self.client_id, a.packet_id
            );
        }
        Ok(())
    }

    /// With sync persistence, what an acknowledgement confirms must be on disk first: wait for
    /// the store, then send the acknowledgements held back so far.
    pub(super) fn durable(&mut self) -> Result<(), Exit> {
        read_scope::flush();
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
    pub(super) fn ack_durable(&mut self, packet: Packet) -> Result<(), Exit> {
        if !self.broker.acks_wait_durable() {
            return self.send(packet);
        }
        self.unconfirmed.push(packet);
        if self.unconfirmed.len() >= MAX_UNCONFIRMED {
            self.durable()?;
        }
        Ok(())
    }
}
