//! The broker: listener, connections, sessions and routing.

pub mod acl;
pub mod auth;
