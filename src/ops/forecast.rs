//! Forecasting the broker's own load, above the pure models (`crate::forecast`): read a series
//! from InfluxDB (the self metrics, or any InfluxQL query), backtest every model on it, forecast
//! with the winner, and size the buffers from the forecast peak.
//!
//! - `evaluate`: one series -> backtest table, winner, the winner's forecast. Used by the
//!   `mqflux forecast` subcommand and by the `forecast` thread alike.
//! - `ForecastPublisher` (`[forecast] enabled`): a thread named `forecast`, at the lowest CPU
//!   priority (nice 19), that refits every `refit_interval_secs`, publishes the forecast and the
//!   recommendation as retained messages under `$SYS/broker/forecast/...`, and warns (log,
//!   `/health`) when `sink.spool_max_bytes` could not hold the forecast peak through
//!   `forecast.outage_secs`. Its cost is bounded by the history (`history_secs / step_secs`
//!   points at most, `forecast::MAX_SLOTS`), the origins and the LSTM's epochs.

use crate::broker::Broker;
use crate::forecast::{
    self, BacktestPlan, Forecast, ForecastConfig, LstmConfig, ModelSpec, PeakRates, Recommendation,
    Score, Series, Sizing, Winner,
};
use crate::sink::http::InfluxClient;
use crate::sink::SinkConfig;
use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What one series came to.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub series: Series,
    pub horizon: usize,
    pub scores: Vec<Score>,
    pub winner: Option<Winner>,
    /// The winner refitted on the whole history, forecasting from its end.
    pub forecast: Option<Forecast>,
}

/// How to evaluate: the knobs the subcommand and `[forecast]` share.
#[derive(Debug, Clone)]
pub struct Settings {
    pub horizon: usize,
    pub origins: usize,
    pub level: f64,
    pub lstm: Option<LstmConfig>,
    pub lstm_margin: f64,
    /// Seasonal periods in steps; None: the series' own (`Series::seasons`).
    pub seasons: Option<Vec<usize>>,
    /// Points each fit sees at most.
    pub max_history: usize,
    /// Set to stop early: no fit starts once it is true (`ForecastPublisher::stop`).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Settings {
    pub fn from_config(c: &ForecastConfig) -> Settings {
        Settings {
            horizon: c.horizon_steps(),
            origins: c.origins,
            level: c.level,
            lstm: c.lstm.then(|| LstmConfig {
                epochs: c.lstm_epochs,
                ..Default::default()
            }),
            lstm_margin: c.lstm_margin,
            seasons: None,
            max_history: forecast::MAX_SLOTS as usize,
            cancel: None,
        }
    }
}

/// The seasons a series of `n` points can use: two whole cycles before the first origin.
fn usable_seasons(all: &[usize], n: usize, horizon: usize, origins: usize) -> Vec<usize> {
    let first_origin = n.saturating_sub(horizon * origins.max(1));
    all.iter()
        .copied()
        .filter(|m| *m >= 2 && 2 * m < first_origin)
        .collect()
}

/// Backtest every model on `series`, pick the winner and forecast with it.
pub fn evaluate(series: Series, s: &Settings) -> Evaluation {
    let n = series.len();
    let seasons = usable_seasons(
        &s.seasons.clone().unwrap_or_else(|| series.seasons()),
        n,
        s.horizon,
        s.origins,
    );
    let mut models: Vec<ModelSpec> = Vec::new();
    if seasons.is_empty() {
        // No season fits the history: the plain naive forecast is the baseline.
        models.push(ModelSpec::SeasonalNaive(1));
    }
    models.extend(ModelSpec::candidates(
        &seasons,
        &s.lstm.clone().unwrap_or_default(),
    ));
    if s.lstm.is_none() {
        models.retain(ModelSpec::is_simple);
    }
    let plan = BacktestPlan {
        horizon: s.horizon,
        origins: s.origins,
        spacing: s.horizon,
        max_history: s.max_history,
        level: s.level,
        season: seasons.first().copied().unwrap_or(1),
    };
    let cancelled = || s.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
    let scores = forecast::backtest::run_until(&series.values, &models, &plan, &cancelled);
    let winner = forecast::pick_winner(&scores, s.lstm_margin);
    let history = &series.values[n.saturating_sub(s.max_history)..];
    let forecast = winner
        .as_ref()
        .filter(|_| !cancelled())
        .and_then(|w| models[w.index].forecast(history, s.horizon, s.level).ok());
    Evaluation {
        series,
        horizon: s.horizon,
        scores,
        winner,
        forecast,
    }
}

/// The backtest as a text table (model, MASE, coverage, origins, fit time), best first.
pub fn score_table(e: &Evaluation, level: f64) -> String {
    let mut rows: Vec<&Score> = e.scores.iter().collect();
    rows.sort_by(|a, b| a.mase.total_cmp(&b.mase));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>8} {:>10} {:>8} {:>10}  note",
        "model",
        "MASE",
        format!("cover{:.0}%", level * 100.0),
        "origins",
        "fit ms"
    );
    for s in rows {
        let note = match (&s.error, e.winner.as_ref().map(|w| &w.model)) {
            (_, Some(w)) if *w == s.model => "winner".to_string(),
            (Some(err), _) => format!("{} origin(s) failed: {err}", s.failed),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:>8.3} {:>10.3} {:>8} {:>10.1}  {note}",
            s.model, s.mase, s.coverage, s.origins, s.fit_ms
        );
    }
    out
}

/// The forecast as rows of (UTC time, point, lower, upper).
pub fn forecast_table(e: &Evaluation, f: &Forecast) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>14} {:>14} {:>14}",
        "time (UTC)",
        "forecast",
        format!("lower{:.0}%", f.level * 100.0),
        format!("upper{:.0}%", f.level * 100.0)
    );
    for (h, p) in f.point.iter().enumerate() {
        let t = e.series.time_of(e.series.len() + h);
        let when = chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| t.to_string());
        let _ = writeln!(
            out,
            "{when:<20} {p:>14.2} {:>14.2} {:>14.2}",
            f.lower[h], f.upper[h]
        );
    }
    out
}

/// The self-metrics series the recommendations need, with the field each reads.
pub const SELF_SERIES: [(&str, &str); 3] = [
    ("sink_bytes", "sink_bytes_per_min"),
    ("sink_points", "sink_points_per_min"),
    ("publish_bytes", "publish_bytes_per_min"),
];

/// The InfluxQL query for one broker-wide self-metrics field: its mean per `step_secs` over
/// the last `history_secs`.
pub fn self_metrics_query(
    measurement: &str,
    field: &str,
    history_secs: u64,
    step_secs: u64,
) -> String {
    format!(
        "SELECT mean(\"{field}\") FROM \"{measurement}\" WHERE \"kind\" = 'broker' AND \
         time > now() - {history_secs}s GROUP BY time({step_secs}s) fill(none)"
    )
}

/// Run `query` and read its first series' first value column as (Unix seconds, value).
pub fn read_series(
    client: &InfluxClient,
    name: &str,
    query: &str,
    step_secs: Option<i64>,
) -> Result<Series, String> {
    let body = client.select(query)?;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("InfluxDB answered no JSON: {e}"))?;
    let result = &v["results"][0];
    if let Some(e) = result["error"].as_str() {
        return Err(format!("InfluxDB: {e}"));
    }
    let series = result["series"]
        .as_array()
        .and_then(|s| s.first())
        .ok_or_else(|| format!("the query returned no data: {query}"))?;
    let mut points = Vec::new();
    for row in series["values"].as_array().into_iter().flatten() {
        let (Some(t), Some(v)) = (row[0].as_i64(), row[1].as_f64()) else {
            continue; // a null mean (no data in that slot)
        };
        points.push((t, v));
    }
    Series::from_points(name, &points, step_secs).map_err(|e| format!("{name}: {e}"))
}

/// The per-second peak rates (upper end of each forecast interval), from per-minute series.
pub fn peak_rates(
    sink_bytes: &Forecast,
    sink_points: &Forecast,
    publish_bytes: &Forecast,
) -> PeakRates {
    let per_s = |f: &Forecast| f.peak_upper().max(0.0) / 60.0;
    PeakRates {
        sink_bytes: per_s(sink_bytes),
        sink_points: per_s(sink_points),
        mqtt_bytes: per_s(publish_bytes),
    }
}

pub fn sizing(c: &ForecastConfig, sink: &SinkConfig) -> Sizing {
    Sizing {
        outage_secs: c.outage_secs as f64,
        headroom: c.headroom,
        flush_interval_ms: sink.flush_interval_ms,
    }
}

/// What the last refit found, for `/health` and `$SYS`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForecastStatus {
    /// "ok", or why there is no forecast yet.
    pub state: String,
    pub recommendation: Option<Recommendation>,
    /// The spool cannot hold the forecast peak through the outage.
    pub warning: Option<String>,
}

/// The running `forecast` thread; `stop` ends and joins it.
pub struct ForecastPublisher {
    stop: Sender<()>,
    /// Set by `stop`: a refit under way makes no further fit.
    stopping: Arc<AtomicBool>,
    thread: JoinHandle<()>,
    status: Arc<Mutex<ForecastStatus>>,
}

impl ForecastPublisher {
    /// Start when `forecast.enabled` (config validation made sure the sink and self metrics
    /// are on); None otherwise.
    pub fn start(broker: &Arc<Broker>) -> std::io::Result<Option<ForecastPublisher>> {
        if !broker.config.forecast.enabled || !broker.sink.is_enabled() {
            return Ok(None);
        }
        let (stop, stopped) = bounded::<()>(1);
        let status = Arc::new(Mutex::new(ForecastStatus {
            state: "waiting for the first refit".into(),
            ..Default::default()
        }));
        let stopping = Arc::new(AtomicBool::new(false));
        let (b, st, cancel) = (broker.clone(), status.clone(), stopping.clone());
        let thread = thread::Builder::new()
            .name("forecast".into())
            .spawn(move || {
                lower_priority();
                let c = &b.config.forecast;
                let interval = Duration::from_secs(c.refit_interval_secs);
                let mut next = if c.refit_at_start {
                    Instant::now()
                } else {
                    Instant::now() + interval
                };
                loop {
                    let wait = next.saturating_duration_since(Instant::now());
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                    let s = refit(&b, &cancel);
                    if cancel.load(Ordering::Relaxed) {
                        break; // a cut-short refit publishes nothing
                    }
                    *st.lock().unwrap_or_else(|e| e.into_inner()) = s;
                    next = Instant::now() + interval;
                }
                log::debug!("forecast thread stopped");
            })?;
        Ok(Some(ForecastPublisher {
            stop,
            stopping,
            thread,
            status,
        }))
    }

    /// The `/health` warning, if the last refit found the spool too small.
    pub fn warning(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let status = self.status.clone();
        move || {
            status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .warning
                .clone()
        }
    }

    /// Stop the thread and wait for it: at most for the one model fit under way.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// nice 19 for this thread only (Linux: a thread is a task with its own nice value), so a refit
/// never takes CPU from connections.
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; they only change this thread's nice.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
    }
}

fn publish(broker: &Broker, path: &str, payload: String) {
    super::sys::publish(broker, format!("$SYS/broker/forecast/{path}"), payload);
}

/// One refit: read, evaluate and publish every self-metrics series, then the recommendation.
fn refit(broker: &Broker, cancel: &Arc<AtomicBool>) -> ForecastStatus {
    let c = &broker.config.forecast;
    let sink = &broker.config.sink;
    let client = InfluxClient::new(sink);
    let mut settings = Settings::from_config(c);
    settings.cancel = Some(cancel.clone());
    let mut forecasts: Vec<Forecast> = Vec::new();
    let mut problem = None;
    for (name, field) in SELF_SERIES {
        let q = self_metrics_query(
            &sink.self_metrics_measurement,
            field,
            c.history_secs,
            c.step_secs,
        );
        if cancel.load(Ordering::Relaxed) {
            return ForecastStatus::default();
        }
        let e = match read_series(&client, name, &q, Some(c.step_secs as i64)) {
            Ok(series) => evaluate(series, &settings),
            Err(e) => {
                problem.get_or_insert(format!("{name}: {e}"));
                continue;
            }
        };
        match (&e.winner, e.forecast) {
            (Some(w), Some(f)) => {
                publish(broker, &format!("{name}/model"), w.model.clone());
                publish(broker, &format!("{name}/backtest"), w.describe());
                publish(
                    broker,
                    &format!("{name}/peak"),
                    format!("{:.2}", f.peak_upper()),
                );
                publish(
                    broker,
                    &format!("{name}/json"),
                    forecast_json(&e.series, &f, w),
                );
                forecasts.push(f);
            }
            _ => {
                problem.get_or_insert(format!(
                    "{name}: no model could be fitted on {} points (too little history yet?)",
                    e.series.len()
                ));
            }
        }
    }
    let mut status = ForecastStatus::default();
    if let [bytes, points, mqtt] = &forecasts[..] {
        let peak = peak_rates(bytes, points, mqtt);
        let r = forecast::recommend(&peak, &sizing(c, sink));
        publish(
            broker,
            "recommendation/spool_max_bytes",
            r.spool_max_bytes.to_string(),
        );
        publish(
            broker,
            "recommendation/bridge_queue_max_bytes",
            r.bridge_queue_max_bytes.to_string(),
        );
        publish(
            broker,
            "recommendation/batch_size",
            r.batch_size.to_string(),
        );
        publish(
            broker,
            "recommendation/queue_capacity",
            r.queue_capacity.to_string(),
        );
        status.warning =
            forecast::spool_shortfall(sink.spool_max_bytes, peak.sink_bytes, c.outage_secs as f64);
        match &status.warning {
            Some(w) => log::warn!("forecast: {w}"),
            None => log::info!(
                "forecast: the spool ({} bytes) holds the forecast peak ({:.0} B/s) through a {} s outage",
                sink.spool_max_bytes,
                peak.sink_bytes,
                c.outage_secs
            ),
        }
        status.recommendation = Some(r);
        status.state = "ok".into();
    } else {
        status.state = problem.unwrap_or_else(|| "no forecast".into());
        log::info!("forecast: {}", status.state);
    }
    publish(
        broker,
        "spool_warning",
        status.warning.clone().unwrap_or_else(|| "none".into()),
    );
    publish(broker, "status", status.state.clone());
    status
}

/// The forecast as JSON: model, step, first time, point, lower, upper, level, backtest.
fn forecast_json(series: &Series, f: &Forecast, w: &Winner) -> String {
    serde_json::json!({
        "model": w.model,
        "mase": w.mase,
        "backtest": w.describe(),
        "step_secs": series.step_s,
        "start": series.time_of(series.len()),
        "level": f.level,
        "point": f.point,
        "lower": f.lower,
        "upper": f.upper,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seasons_need_two_cycles_before_the_first_origin() {
        assert_eq!(usable_seasons(&[24, 168], 400, 24, 3), vec![24]);
        assert_eq!(usable_seasons(&[24, 168], 48, 24, 1), Vec::<usize>::new());
    }

    #[test]
    fn a_pure_seasonal_series_is_won_by_seasonal_naive_with_mase_zero() {
        let points: Vec<(i64, f64)> = (0..24 * 8)
            .map(|t| {
                (
                    t * 3600,
                    [5.0, 9.0, 2.0, 7.0][(t % 4) as usize] + (t % 24) as f64,
                )
            })
            .collect();
        let series = Series::from_points("pure", &points, Some(3600)).unwrap();
        let settings = Settings {
            horizon: 24,
            origins: 2,
            level: 0.8,
            lstm: None,
            lstm_margin: 0.1,
            seasons: None,
            max_history: 10_000,
            cancel: None,
        };
        let e = evaluate(series, &settings);
        let w = e.winner.unwrap();
        assert_eq!(w.model, "snaive(24)");
        assert_eq!(w.mase, 0.0);
        assert!(score_table(&e_clone_scores(&e.scores), 0.8).contains("snaive(24)"));
    }

    fn e_clone_scores(scores: &[Score]) -> Evaluation {
        Evaluation {
            series: Series::from_points("x", &[(0, 1.0), (1, 1.0)], None).unwrap(),
            horizon: 1,
            scores: scores.to_vec(),
            winner: None,
            forecast: None,
        }
    }

    #[test]
    fn the_self_metrics_query_averages_per_step() {
        assert_eq!(
            self_metrics_query("mqflux_self", "sink_bytes_per_min", 3600, 60),
            "SELECT mean(\"sink_bytes_per_min\") FROM \"mqflux_self\" WHERE \"kind\" = 'broker' \
             AND time > now() - 3600s GROUP BY time(60s) fill(none)"
        );
    }
}
