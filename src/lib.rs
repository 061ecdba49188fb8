//! mqflux: an MQTT 3.1.1/5.0 broker with a built-in InfluxDB sink.

pub mod bridge;
pub mod broker;
pub mod config;
pub mod forecast;
pub mod ops;
pub mod protocol;
pub mod sink;
pub mod store;
