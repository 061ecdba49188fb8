//! Session state [MQTT-4.1]: subscriptions, outgoing QoS 1/2 messages in flight and queued,
//! incoming QoS 2 packet ids awaiting PUBREL, expiry, and the connection it is attached to.
//!
//! A session outlives its connection for its expiry interval (3.1.1 clean session = 0: forever).
//! Every method is called with the session's mutex held and never blocks.
//!
//! One type, `Session` (`state.rs`), whose methods live in one file per job:
//!
//! - `state.rs`: the type, creation and restore, subscriptions, attach / detach, ownership,
//!   expiry;
//! - `delivery.rs`: what it sends (inflight window, queue, packet ids) and the acks that
//!   complete it, incoming QoS 2 ids;
//! - `journal.rs`: what a persistent session records in the store.
//!
//! The files import each other's types directly (`super::state::Session`), never through this
//! front door.

mod delivery;
mod journal;
mod state;

pub use super::outbox::Outbound;
pub(super) use delivery::{defer_sends, take_fed_backlog};
pub use state::{
    Link, Session, SessionHandle, SessionJournal, SessionLimits, SessionOwner, SessionRef,
    NEVER_EXPIRES,
};

#[cfg(test)]
mod tests;
