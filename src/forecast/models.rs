//! The models the backtest judges, behind one enum: `ModelSpec::forecast(history, horizon,
//! level)` fits on `history` and returns point forecasts with a prediction interval.
//!
//! - `SeasonalNaive(m)`: the value one season ago (same time yesterday / last week). Its
//!   interval follows from the in-sample seasonal differences (Hyndman & Athanasopoulos, FPP3
//!   §5.5: sigma_h = sigma * sqrt(k + 1), k = whole seasons inside h - 1).
//! - `Ets`: augurs' AutoETS, non-seasonal (AIC picks error/trend/damping).
//! - `Mstl(periods)`: augurs' MSTL decomposition with AutoETS on the deseasonalised trend.
//! - `Lstm`: a small candle-nn LSTM (`lstm.rs`).

use super::lstm::{self, LstmConfig};
use super::prediction::{Forecast, ModelError};
use augurs::ets::{trend::AutoETSTrendModel, AutoETS};
use augurs::mstl::MSTLModel;
use augurs::{Fit, Predict};

/// One model with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    SeasonalNaive(usize),
    Ets,
    Mstl(Vec<usize>),
    Lstm(LstmConfig),
}

impl ModelSpec {
    /// The usual candidates for a series with these seasonal periods (shortest first):
    /// seasonal naive for each period, ETS, MSTL over all periods, and the LSTM.
    pub fn candidates(seasons: &[usize], lstm: &LstmConfig) -> Vec<ModelSpec> {
        let mut v: Vec<ModelSpec> = seasons
            .iter()
            .map(|&m| ModelSpec::SeasonalNaive(m))
            .collect();
        v.push(ModelSpec::Ets);
        if !seasons.is_empty() {
            v.push(ModelSpec::Mstl(seasons.to_vec()));
        }
        let mut l = lstm.clone();
        l.seasons = seasons.to_vec();
        v.push(ModelSpec::Lstm(l));
        v
    }

    /// A short stable name for tables and `$SYS` payloads: `snaive(48)`, `ets`, `mstl(48,336)`,
    /// `lstm`.
    pub fn name(&self) -> String {
        match self {
            ModelSpec::SeasonalNaive(m) => format!("snaive({m})"),
            ModelSpec::Ets => "ets".into(),
            ModelSpec::Mstl(p) => format!(
                "mstl({})",
                p.iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            ModelSpec::Lstm(_) => "lstm".into(),
        }
    }

    /// The simple methods, as opposed to the learnt one (the LSTM).
    pub fn is_simple(&self) -> bool {
        !matches!(self, ModelSpec::Lstm(_))
    }

    /// Fit on `history` and forecast `horizon` steps with a central `level` interval.
    pub fn forecast(
        &self,
        history: &[f64],
        horizon: usize,
        level: f64,
    ) -> Result<Forecast, ModelError> {
        if horizon == 0 {
            return Err(ModelError::Fit(
                "expected a horizon of at least 1 step".into(),
            ));
        }
        match self {
            ModelSpec::SeasonalNaive(m) => seasonal_naive(history, *m, horizon, level),
            ModelSpec::Ets => {
                need(history, 10)?;
                fit_and_predict(AutoETS::non_seasonal(), history, horizon, level)
            }
            ModelSpec::Mstl(periods) => {
                // STL needs two full cycles of the longest period.
                need(history, 2 * periods.iter().copied().max().unwrap_or(1) + 1)?;
                let trend: AutoETSTrendModel = AutoETS::non_seasonal().into();
                let model = MSTLModel::new(periods.clone(), trend);
                fit_and_predict(model, history, horizon, level)
            }
            ModelSpec::Lstm(cfg) => lstm::forecast(cfg, history, horizon, level),
        }
    }
}

fn need(history: &[f64], n: usize) -> Result<(), ModelError> {
    if history.len() < n {
        return Err(ModelError::TooShort {
            need: n,
            have: history.len(),
        });
    }
    Ok(())
}

/// Fit an augurs model to `history` and forecast `horizon` steps with `level` intervals.
fn fit_and_predict(
    model: impl Fit,
    history: &[f64],
    horizon: usize,
    level: f64,
) -> Result<Forecast, ModelError> {
    let fit = model
        .fit(history)
        .map_err(|e| ModelError::Fit(e.to_string()))?;
    let f = fit
        .predict(horizon, level)
        .map_err(|e| ModelError::Fit(e.to_string()))?;
    from_augurs(f, level)
}

fn from_augurs(f: augurs::Forecast, level: f64) -> Result<Forecast, ModelError> {
    let iv = f
        .intervals
        .ok_or_else(|| ModelError::Fit("no prediction intervals returned".into()))?;
    if f.point
        .iter()
        .chain(&iv.lower)
        .chain(&iv.upper)
        .any(|v| !v.is_finite())
    {
        return Err(ModelError::Fit("non-finite forecast".into()));
    }
    Ok(Forecast {
        point: f.point,
        lower: iv.lower,
        upper: iv.upper,
        level,
    })
}

/// y(t + h) = y(t + h - m * (k + 1)), k = (h - 1) / m; interval from the in-sample seasonal
/// differences, widening with every season the forecast reaches past the data.
fn seasonal_naive(
    history: &[f64],
    m: usize,
    horizon: usize,
    level: f64,
) -> Result<Forecast, ModelError> {
    let m = m.max(1);
    need(history, m + 2)?;
    let n = history.len();
    let diffs = history[m..].iter().zip(history).map(|(a, b)| a - b);
    let sigma = (diffs.map(|d| d * d).sum::<f64>() / (n - m) as f64).sqrt();
    let z = normal_quantile(0.5 + level / 2.0);
    let mut f = Forecast {
        point: Vec::with_capacity(horizon),
        lower: Vec::with_capacity(horizon),
        upper: Vec::with_capacity(horizon),
        level,
    };
    for h in 1..=horizon {
        let k = (h - 1) / m;
        let p = history[n - m + (h - 1) % m];
        let half = z * sigma * ((k + 1) as f64).sqrt();
        f.point.push(p);
        f.lower.push(p - half);
        f.upper.push(p + half);
    }
    Ok(f)
}

/// The standard normal quantile (Acklam's rational approximation, relative error < 1.2e-9).
#[allow(clippy::excessive_precision)] // Acklam's published coefficients, kept as printed
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.383577518672690e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-03,
        3.224671290700398e-01,
        2.445134137142996e+00,
        3.754408661907416e+00,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles_match_tables() {
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-5);
        assert!((normal_quantile(0.9) - 1.281552).abs() < 1e-5);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
    }

    #[test]
    fn seasonal_naive_repeats_the_last_season_and_widens_per_season() {
        let y = [1.0, 2.0, 3.0, 1.5, 2.0, 3.5, 1.0, 2.0, 3.0];
        let f = ModelSpec::SeasonalNaive(3).forecast(&y, 6, 0.8).unwrap();
        assert_eq!(f.point, vec![1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
        let w1 = f.upper[0] - f.lower[0];
        let w2 = f.upper[3] - f.lower[3];
        assert!((w2 / w1 - 2f64.sqrt()).abs() < 1e-9, "{w1} {w2}");
    }

    #[test]
    fn too_short_a_history_is_an_error_not_a_panic() {
        let e = ModelSpec::SeasonalNaive(24).forecast(&[1.0; 5], 3, 0.8);
        assert_eq!(e, Err(ModelError::TooShort { need: 26, have: 5 }));
        assert!(ModelSpec::Mstl(vec![24])
            .forecast(&[1.0; 10], 3, 0.8)
            .is_err());
        let lstm = ModelSpec::Lstm(LstmConfig::default());
        assert!(matches!(
            lstm.forecast(&[1.0; 500], 0, 0.8),
            Err(ModelError::Fit(e)) if e.contains("horizon")
        ));
    }

    #[test]
    fn ets_and_mstl_follow_a_seasonal_series() {
        let y: Vec<f64> = (0..24 * 10)
            .map(|t| 100.0 + 10.0 * (t as f64 * std::f64::consts::TAU / 24.0).sin())
            .collect();
        let f = ModelSpec::Mstl(vec![24]).forecast(&y, 24, 0.8).unwrap();
        for (h, p) in f.point.iter().enumerate() {
            let want = 100.0 + 10.0 * ((240 + h) as f64 * std::f64::consts::TAU / 24.0).sin();
            assert!((p - want).abs() < 1.0, "h={h}: {p} vs {want}");
        }
        let e = ModelSpec::Ets.forecast(&y, 5, 0.8).unwrap();
        assert_eq!(e.point.len(), 5);
        assert!(e.lower.iter().zip(&e.upper).all(|(l, u)| l <= u));
    }
}
