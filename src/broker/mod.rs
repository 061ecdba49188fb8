//! The broker: listener, connections, sessions and routing.
