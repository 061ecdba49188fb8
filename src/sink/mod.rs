//! InfluxDB sink: the router hands every accepted PUBLISH to `Sink::submit`; a background writer
//! thread turns them into line protocol and writes them to InfluxDB. (Placeholder: implemented in
//! its own change; this is the interface the broker calls.)

use bytes::Bytes;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Store publishes in InfluxDB.
    pub enabled: bool,
}

impl SinkConfig {
    /// Range checks; every error names `path` and the `sink.*` key.
    pub fn validate(&self, _path: &Path) -> Vec<crate::config::ConfigError> {
        Vec::new()
    }
}

/// One accepted PUBLISH as the sink sees it.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    pub topic: String,
    pub payload: Bytes,
    /// Broker receive time, nanoseconds since the Unix epoch.
    pub received_at_ns: i64,
}

/// Handle to the writer thread. Cheap to share (`&Sink` from every connection thread).
pub struct Sink {}

impl Sink {
    /// Start the writer thread (or nothing, when disabled).
    pub fn start(_config: &SinkConfig) -> Result<Sink, String> {
        Ok(Sink {})
    }

    /// Hand one publish to the writer. Blocks (applying backpressure to the publisher) rather
    /// than dropping when the channel is full.
    pub fn submit(&self, _record: SinkRecord) {}

    /// Flush what is buffered and join the writer thread.
    pub fn shutdown(&self) {}
}
