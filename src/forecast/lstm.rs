//! The learnt model: a one-layer LSTM (candle-nn, CPU) that reads the last `window` steps
//! (the value, z-scored over the history, plus sin/cos of the phase in each seasonal period)
//! and emits all `horizon` steps at once from its last hidden state (a linear layer).
//!
//! - Deterministic: candle cannot seed its CPU generator, so every weight is drawn from our own
//!   seeded generator (uniform ±1/sqrt(hidden), PyTorch's LSTM default) and the batches are
//!   shuffled with it too; the same input and config give the same forecast.
//! - Bounded: at most `max_windows` training windows, `epochs` passes, `window` <= 168 steps.
//! - Residual (default): with a season `m` that fits the history (of those that do, the one
//!   whose seasonal naive forecast erred least in sample), the network learns
//!   `y(t) - y(t - m)`, what seasonal naive misses, and the forecast adds `y(t + h - m)` back.
//!   Without it, a window of one day cannot see last week's same day.
//! - Interval: split conformal. The windows whose targets fall in the last `calibration` spans
//!   are held out of training; the `level` quantile of their absolute errors at each step ahead
//!   is the interval's half-width there.

use super::prediction::{Forecast, ModelError};
use candle_core::{DType, Device, Tensor};
use candle_nn::{rnn::LSTMConfig as CandleLstm, Module, Optimizer, VarBuilder, VarMap, RNN};

#[derive(Debug, Clone, PartialEq)]
pub struct LstmConfig {
    pub hidden: usize,
    /// Input length in steps; 0: the shortest season (at most 168), or 24 without seasons.
    pub window: usize,
    pub epochs: usize,
    pub batch: usize,
    pub learning_rate: f64,
    pub seed: u64,
    /// Training windows at most (spread evenly over the history, newest kept).
    pub max_windows: usize,
    /// Held-out windows for the interval.
    pub calibration: usize,
    /// Seasonal periods in steps (phase features); set by `ModelSpec::candidates`.
    pub seasons: Vec<usize>,
    /// Learn the residual of the seasonal naive forecast (at the season with the lowest
    /// in-sample error that fits the history), rather than the series itself (as the M4 winner, ES-RNN, deseasonalised
    /// before its LSTM).
    pub residual: bool,
}

impl Default for LstmConfig {
    fn default() -> Self {
        LstmConfig {
            hidden: 32,
            window: 0,
            epochs: 40,
            batch: 32,
            learning_rate: 0.01,
            seed: 42,
            max_windows: 256,
            calibration: 32,
            seasons: Vec::new(),
            residual: true,
        }
    }
}

impl LstmConfig {
    fn input_len(&self) -> usize {
        match self.window {
            0 => self.seasons.first().copied().unwrap_or(24).clamp(4, 168),
            w => w.min(168),
        }
    }
}

/// xorshift64*: small, seeded, good enough for initial weights and shuffling.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn fit_err(e: candle_core::Error) -> ModelError {
    // candle appends a backtrace when RUST_BACKTRACE is set: keep the message only.
    let text = e.to_string();
    ModelError::Fit(format!("lstm: {}", text.lines().next().unwrap_or_default()))
}

pub fn forecast(
    cfg: &LstmConfig,
    history: &[f64],
    horizon: usize,
    level: f64,
) -> Result<Forecast, ModelError> {
    let n = history.len();
    let direct_need = cfg.input_len() + horizon + cfg.calibration.max(4) + 16;
    // The season whose naive forecast erred least in sample (lag 336 for electricity demand
    // with its weekends, lag 24 for temperatures without a week).
    let in_sample_mae = |m: usize| -> f64 {
        let sum: f64 = (m..n).map(|t| (history[t] - history[t - m]).abs()).sum();
        sum / (n - m) as f64
    };
    let season = cfg
        .seasons
        .iter()
        .copied()
        .filter(|m| *m >= 2 && n >= m + direct_need)
        .min_by(|a, b| in_sample_mae(*a).total_cmp(&in_sample_mae(*b)));
    let Some(m) = season.filter(|_| cfg.residual) else {
        return fit_direct(cfg, history, 0, horizon, level);
    };
    // Learn what the seasonal naive forecast misses: d(t) = y(t) - y(t - m), then add the
    // value one season back (already forecast, for steps more than a season ahead).
    let d: Vec<f64> = (m..n).map(|t| history[t] - history[t - m]).collect();
    let f = fit_direct(cfg, &d, m, horizon, level)?;
    let mut extended = history.to_vec();
    let mut out = Forecast {
        point: Vec::with_capacity(horizon),
        lower: Vec::with_capacity(horizon),
        upper: Vec::with_capacity(horizon),
        level,
    };
    for h in 0..horizon {
        let p = extended[n + h - m] + f.point[h];
        extended.push(p);
        out.point.push(p);
        out.lower.push(p - (f.point[h] - f.lower[h]));
        out.upper.push(p + (f.upper[h] - f.point[h]));
    }
    Ok(out)
}

/// Fit on `history` (whose first value is step `t0` of the series, for the phase features)
/// and forecast it directly.
fn fit_direct(
    cfg: &LstmConfig,
    history: &[f64],
    t0: usize,
    horizon: usize,
    level: f64,
) -> Result<Forecast, ModelError> {
    let window = cfg.input_len();
    let calibration = cfg.calibration.max(4);
    let need = window + horizon + calibration + 16;
    if history.len() < need {
        return Err(ModelError::TooShort {
            need,
            have: history.len(),
        });
    }
    let n = history.len();
    let mean = history.iter().sum::<f64>() / n as f64;
    let sd = (history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64)
        .sqrt()
        .max(1e-9);
    let z: Vec<f32> = history.iter().map(|v| ((v - mean) / sd) as f32).collect();
    let features = 1 + 2 * cfg.seasons.len();
    // The input row of step t: value and the phase of t in each season.
    let row = |t: usize, out: &mut Vec<f32>, value: f32| {
        out.push(value);
        for &m in &cfg.seasons {
            let a = std::f64::consts::TAU * ((t + t0) % m.max(1)) as f64 / m.max(1) as f64;
            out.push(a.sin() as f32);
            out.push(a.cos() as f32);
        }
    };
    // Window ending at `end` (exclusive): inputs z[end - window .. end], targets z[end ..
    // end + horizon]. The last `calibration` window ends are held out.
    let last_end = n - horizon;
    let cal_ends: Vec<usize> = (last_end + 1 - calibration..=last_end).collect();
    let train_last = last_end - calibration;
    let train_count = train_last + 1 - window;
    let stride = train_count.div_ceil(cfg.max_windows.max(1)).max(1);
    let mut train_ends: Vec<usize> = (window..=train_last).rev().step_by(stride).collect();
    train_ends.reverse();

    let device = Device::Cpu;
    let build = |ends: &[usize]| -> Result<(Tensor, Tensor), ModelError> {
        let mut x = Vec::with_capacity(ends.len() * window * features);
        let mut y = Vec::with_capacity(ends.len() * horizon);
        for &e in ends {
            for (t, v) in z.iter().enumerate().take(e).skip(e - window) {
                row(t, &mut x, *v);
            }
            y.extend_from_slice(&z[e..e + horizon]);
        }
        let x = Tensor::from_vec(x, (ends.len(), window, features), &device).map_err(fit_err)?;
        let y = Tensor::from_vec(y, (ends.len(), horizon), &device).map_err(fit_err)?;
        Ok((x, y))
    };

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let lstm = candle_nn::lstm(features, cfg.hidden, CandleLstm::default(), vb.pp("lstm"))
        .map_err(fit_err)?;
    let head = candle_nn::linear(cfg.hidden, horizon, vb.pp("head")).map_err(fit_err)?;
    let mut rng = Rng::new(cfg.seed);
    {
        let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        let k = 1.0 / (cfg.hidden as f32).sqrt();
        for name in names {
            let var = &data[name];
            let shape = var.shape().clone();
            let vals: Vec<f32> = (0..shape.elem_count())
                .map(|_| k * rng.symmetric())
                .collect();
            var.set(&Tensor::from_vec(vals, shape, &device).map_err(fit_err)?)
                .map_err(fit_err)?;
        }
    }
    let predict = |x: &Tensor| -> Result<Tensor, ModelError> {
        let states = lstm.seq(x).map_err(fit_err)?;
        let last = states
            .last()
            .ok_or_else(|| ModelError::Fit("lstm: empty window".into()))?;
        head.forward(&last.h).map_err(fit_err)
    };
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .map_err(fit_err)?;
    let mut order: Vec<usize> = (0..train_ends.len()).collect();
    for _ in 0..cfg.epochs {
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        for batch in order.chunks(cfg.batch.max(1)) {
            let ends: Vec<usize> = batch.iter().map(|&i| train_ends[i]).collect();
            let (x, y) = build(&ends)?;
            let loss = candle_nn::loss::mse(&predict(&x)?, &y).map_err(fit_err)?;
            opt.backward_step(&loss).map_err(fit_err)?;
        }
    }

    // Calibration: absolute errors (in z units) of the held-out windows, per step ahead.
    let (xc, yc) = build(&cal_ends)?;
    let pc: Vec<Vec<f32>> = predict(&xc)?.to_vec2().map_err(fit_err)?;
    let yc: Vec<Vec<f32>> = yc.to_vec2().map_err(fit_err)?;
    let mut half = Vec::with_capacity(horizon);
    for h in 0..horizon {
        let mut errs: Vec<f64> = pc
            .iter()
            .zip(&yc)
            .map(|(p, y)| (p[h] - y[h]).abs() as f64)
            .collect();
        errs.sort_by(f64::total_cmp);
        // The ceil((n + 1) * level)-th smallest error: split conformal's finite-sample rule.
        let rank = (((errs.len() + 1) as f64 * level).ceil() as usize).clamp(1, errs.len());
        half.push(errs[rank - 1] * sd);
    }

    // The forecast from the end of the history.
    let mut x = Vec::with_capacity(window * features);
    for (t, v) in z.iter().enumerate().skip(n - window) {
        row(t, &mut x, *v);
    }
    let x = Tensor::from_vec(x, (1, window, features), &device).map_err(fit_err)?;
    let p: Vec<Vec<f32>> = predict(&x)?.to_vec2().map_err(fit_err)?;
    let point: Vec<f64> = p[0].iter().map(|v| *v as f64 * sd + mean).collect();
    if point.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::Fit("lstm: non-finite forecast".into()));
    }
    Ok(Forecast {
        lower: point.iter().zip(&half).map(|(p, h)| p - h).collect(),
        upper: point.iter().zip(&half).map(|(p, h)| p + h).collect(),
        point,
        level,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> LstmConfig {
        LstmConfig {
            hidden: 8,
            epochs: 15,
            max_windows: 64,
            calibration: 8,
            seasons: vec![12],
            ..Default::default()
        }
    }

    fn wave_at(t: usize) -> f64 {
        50.0 + 20.0 * (t as f64 * std::f64::consts::TAU / 12.0).sin()
    }

    fn wave(n: usize) -> Vec<f64> {
        (0..n).map(wave_at).collect()
    }

    /// Mean absolute error of `point` against the wave's continuation from step `from`.
    fn wave_mae(point: &[f64], from: usize) -> f64 {
        let sum: f64 = point
            .iter()
            .enumerate()
            .map(|(h, p)| (p - wave_at(from + h)).abs())
            .sum();
        sum / point.len() as f64
    }

    #[test]
    fn lstm_is_deterministic_for_a_seed_and_learns_a_wave() {
        let y = wave(240);
        let a = forecast(&small(), &y, 6, 0.8).unwrap();
        let b = forecast(&small(), &y, 6, 0.8).unwrap();
        assert_eq!(a, b);
        // Better than predicting the mean (an error of ~14 on average).
        let mae = wave_mae(&a.point, 240);
        assert!(mae < 8.0, "mae {mae}: {:?}", a.point);
        assert!(a.lower.iter().zip(&a.upper).all(|(l, u)| l <= u));
    }

    #[test]
    fn the_direct_lstm_learns_a_wave_too() {
        let cfg = LstmConfig {
            residual: false,
            ..small()
        };
        let a = forecast(&cfg, &wave(240), 6, 0.8).unwrap();
        let mae = wave_mae(&a.point, 240);
        assert!(mae < 8.0, "mae {mae}: {:?}", a.point);
    }

    #[test]
    fn the_residual_lstm_adds_the_season_back_beyond_one_season() {
        // A pure wave has no residual: the forecast is the wave, also past one season ahead.
        let a = forecast(&small(), &wave(240), 18, 0.8).unwrap();
        for (h, p) in a.point.iter().enumerate() {
            let want = 50.0 + 20.0 * ((240 + h) as f64 * std::f64::consts::TAU / 12.0).sin();
            assert!((p - want).abs() < 2.0, "h={h}: {p} vs {want}");
        }
    }

    #[test]
    fn lstm_refuses_a_short_history() {
        let e = forecast(&small(), &wave(20), 6, 0.8).unwrap_err();
        assert!(matches!(e, ModelError::TooShort { .. }), "{e}");
    }
}
