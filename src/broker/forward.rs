//! The call up from the publish pipeline to the bridges (`crate::bridge`, a floor above): the
//! broker hands every routed message to a `Forward` that `main` installs
//! (`Broker::set_forward`), and waits for it before acknowledging, as for its own store.

use super::message::Message;

/// What the broker needs from whatever forwards its messages elsewhere (the bridges).
pub trait Forward: Send + Sync {
    /// Whether a message on `topic` is taken (so the sink-only fast path must not skip it).
    fn takes(&self, topic: &str) -> bool;
    /// Queue `message` if it is taken; must not block for long (a channel send and a lock).
    fn forward(&self, message: &Message);
    /// Block until what this thread forwarded so far is durable; false: it could not be made
    /// durable, and the acknowledgement must not be sent.
    fn wait_durable(&self) -> bool;
    /// For the floor above (`ops`) to read the bridges' own figures.
    fn as_any(&self) -> &dyn std::any::Any;
}
