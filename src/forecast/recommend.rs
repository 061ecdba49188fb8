//! What a forecast drives: buffer sizes for the forecast peak. All inputs are rates per
//! second at the upper end of the forecast's prediction interval, so a recommendation holds
//! unless traffic leaves the interval.
//!
//! - `spool_max_bytes`: the sink's line-protocol bytes per second x `outage_secs` x `headroom`:
//!   the spool holds everything InfluxDB could not take during an outage that long.
//! - `bridge_queue_max_bytes`: the same for the MQTT bytes a bridge forwards (its remote away).
//! - `batch_size`: points per second x `flush_interval_ms`: at the peak a batch fills about as
//!   the flush timer ends it, so neither waits for the other.
//! - `queue_capacity`: points per second x 2 flush intervals (at least 2 s): publishers do not
//!   block while the batcher waits for one write.
//!
//! Every figure is clamped to what `[sink]` accepts (`SinkConfig::validate`).

/// How to turn peak rates into sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizing {
    /// The outage to ride out (InfluxDB or the bridge's remote away), seconds.
    pub outage_secs: f64,
    /// Multiplier over the exact need (1.25: 25% spare).
    pub headroom: f64,
    /// The sink's `flush_interval_ms`.
    pub flush_interval_ms: u64,
}

/// Peak rates per second (upper bound of the forecast interval, over the forecast horizon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakRates {
    /// Line-protocol bytes the sink writes per second.
    pub sink_bytes: f64,
    /// Points the sink writes per second.
    pub sink_points: f64,
    /// MQTT PUBLISH bytes (topic + payload) received per second.
    pub mqtt_bytes: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recommendation {
    pub spool_max_bytes: u64,
    pub bridge_queue_max_bytes: u64,
    pub batch_size: usize,
    pub queue_capacity: usize,
}

/// The spool's smallest accepted size (`sink.spool_max_bytes`).
pub const MIN_SPOOL_BYTES: u64 = 64 * 1024;

pub fn recommend(peak: &PeakRates, sizing: &Sizing) -> Recommendation {
    let bytes = |rate: f64| -> u64 {
        let need = rate.max(0.0) * sizing.outage_secs.max(0.0) * sizing.headroom.max(1.0);
        (need.ceil() as u64).max(MIN_SPOOL_BYTES)
    };
    let flush_s = sizing.flush_interval_ms.max(1) as f64 / 1000.0;
    let points = peak.sink_points.max(0.0) * sizing.headroom.max(1.0);
    Recommendation {
        spool_max_bytes: bytes(peak.sink_bytes),
        bridge_queue_max_bytes: bytes(peak.mqtt_bytes),
        batch_size: ((points * flush_s).ceil() as usize).clamp(1, 1_000_000),
        queue_capacity: ((points * (2.0 * flush_s).max(2.0)).ceil() as usize).max(1),
    }
}

/// Why the configured spool cannot ride out the outage, or None when it can: `needed` is the
/// recommendation's `spool_max_bytes` without headroom.
pub fn spool_shortfall(configured: u64, peak_sink_bytes: f64, outage_secs: f64) -> Option<String> {
    let needed = (peak_sink_bytes.max(0.0) * outage_secs.max(0.0)).ceil() as u64;
    (configured < needed).then(|| {
        format!(
            "sink.spool_max_bytes = {configured} cannot hold the forecast peak of {:.0} B/s \
             through a {outage_secs:.0} s outage (needs {needed} bytes)",
            peak_sink_bytes
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_from_a_known_peak() {
        let peak = PeakRates {
            sink_bytes: 10_000.0,
            sink_points: 400.0,
            mqtt_bytes: 2_000.0,
        };
        let r = recommend(
            &peak,
            &Sizing {
                outage_secs: 3600.0,
                headroom: 1.25,
                flush_interval_ms: 1000,
            },
        );
        assert_eq!(r.spool_max_bytes, 45_000_000); // 10 kB/s x 1 h x 1.25
        assert_eq!(r.bridge_queue_max_bytes, 9_000_000);
        assert_eq!(r.batch_size, 500); // 400/s x 1.25 x 1 s
        assert_eq!(r.queue_capacity, 1000); // x 2 s
    }

    #[test]
    fn sizes_are_clamped_to_what_the_sink_accepts() {
        let r = recommend(
            &PeakRates {
                sink_bytes: 0.0,
                sink_points: 0.0,
                mqtt_bytes: f64::NAN,
            },
            &Sizing {
                outage_secs: 60.0,
                headroom: 1.0,
                flush_interval_ms: 1000,
            },
        );
        assert_eq!(r.spool_max_bytes, MIN_SPOOL_BYTES);
        assert_eq!(r.bridge_queue_max_bytes, MIN_SPOOL_BYTES);
        assert_eq!(r.batch_size, 1);
        assert_eq!(r.queue_capacity, 1);
    }

    #[test]
    fn a_spool_too_small_for_the_outage_is_named() {
        assert_eq!(spool_shortfall(1_000_000, 100.0, 600.0), None);
        let w = spool_shortfall(1000, 100.0, 600.0).unwrap();
        assert!(w.contains("needs 60000 bytes"), "{w}");
    }
}
