//! The sink's input: one accepted PUBLISH, borrowed.

/// One accepted PUBLISH as the sink sees it (borrowed: `Sink::submit` copies what it keeps).
#[derive(Debug, Clone, Copy)]
pub struct SinkRecord<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Broker receive time, nanoseconds since the Unix epoch.
    pub received_at_ns: i64,
}
