//! `[forecast]`: the broker's own forecasting thread (`ops::forecast`). Plain settings; the
//! range checks return (key, message) pairs that `config.rs` turns into errors naming the file.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForecastConfig {
    /// Refit periodically and publish under `$SYS/broker/forecast/...` (needs the sink and
    /// `sink.self_metrics`, whose history it reads back from InfluxDB).
    pub enabled: bool,
    /// Seconds between refits (the first one runs `refit_interval_secs` after start-up, or
    /// at once with `refit_at_start`).
    pub refit_interval_secs: u64,
    pub refit_at_start: bool,
    /// How far back to read the self-metrics history.
    pub history_secs: u64,
    /// The series' step: self metrics are averaged over this many seconds.
    pub step_secs: u64,
    /// How far ahead to forecast.
    pub horizon_secs: u64,
    /// The outage the spool must ride out: InfluxDB away this long at the forecast peak.
    pub outage_secs: u64,
    /// Central prediction interval (0.8: 10% to 90%); sizes use its upper end.
    pub level: f64,
    /// Multiplier over the exact need in the recommendations.
    pub headroom: f64,
    /// Rolling-origin backtest origins per refit.
    pub origins: usize,
    /// Include the LSTM among the models (the costliest to fit).
    pub lstm: bool,
    pub lstm_epochs: usize,
    /// The LSTM is used only when its MASE is this much lower than the best simple method's.
    pub lstm_margin: f64,
}

impl Default for ForecastConfig {
    fn default() -> Self {
        ForecastConfig {
            enabled: false,
            refit_interval_secs: 3600,
            refit_at_start: false,
            history_secs: 7 * 86_400,
            step_secs: 300,
            horizon_secs: 6 * 3600,
            outage_secs: 3600,
            level: 0.8,
            headroom: 1.25,
            origins: 3,
            lstm: true,
            lstm_epochs: 20,
            lstm_margin: 0.1,
        }
    }
}

impl ForecastConfig {
    /// Steps ahead.
    pub fn horizon_steps(&self) -> usize {
        (self.horizon_secs / self.step_secs.max(1)).max(1) as usize
    }

    /// Every problem as (key under `forecast.`, what was expected).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if !(1..=7 * 86_400).contains(&self.refit_interval_secs) {
            p.push((
                "refit_interval_secs",
                format!(
                    "expected 1 to 604800 seconds, got {}",
                    self.refit_interval_secs
                ),
            ));
        }
        if !(1..=86_400).contains(&self.step_secs) {
            p.push((
                "step_secs",
                format!("expected 1 to 86400 seconds, got {}", self.step_secs),
            ));
        }
        let slots = self.history_secs / self.step_secs.max(1);
        if self.history_secs == 0 || slots > super::MAX_SLOTS as u64 {
            p.push((
                "history_secs",
                format!(
                    "expected at least 1 second and at most {} steps of step_secs, got {} s ({slots} steps)",
                    super::MAX_SLOTS,
                    self.history_secs
                ),
            ));
        }
        if self.horizon_secs < self.step_secs || self.horizon_secs > self.history_secs {
            p.push((
                "horizon_secs",
                format!(
                    "expected at least step_secs ({}) and at most history_secs ({}), got {}",
                    self.step_secs, self.history_secs, self.horizon_secs
                ),
            ));
        }
        if !(0.5..1.0).contains(&self.level) {
            p.push((
                "level",
                format!("expected 0.5 to below 1 (e.g. 0.8), got {}", self.level),
            ));
        }
        if !(1.0..=10.0).contains(&self.headroom) {
            p.push((
                "headroom",
                format!("expected 1.0 to 10.0, got {}", self.headroom),
            ));
        }
        if !(1..=50).contains(&self.origins) {
            p.push(("origins", format!("expected 1 to 50, got {}", self.origins)));
        }
        if !(1..=1000).contains(&self.lstm_epochs) {
            p.push((
                "lstm_epochs",
                format!("expected 1 to 1000, got {}", self.lstm_epochs),
            ));
        }
        if !(0.0..1.0).contains(&self.lstm_margin) {
            p.push((
                "lstm_margin",
                format!(
                    "expected 0 to below 1 (0.1: 10% lower MASE), got {}",
                    self.lstm_margin
                ),
            ));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(ForecastConfig::default().problems(), vec![]);
        assert_eq!(ForecastConfig::default().horizon_steps(), 72);
        let bad = ForecastConfig {
            level: 1.5,
            horizon_secs: 1,
            ..Default::default()
        };
        let keys: Vec<&str> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["horizon_secs", "level"]);
    }
}
