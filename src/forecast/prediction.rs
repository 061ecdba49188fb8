//! What a model returns: a forecast with its interval, or why it could not make one. Its own
//! file so that the models (`models.rs`) and the LSTM (`lstm.rs`) share it without importing
//! each other.

use std::fmt;

/// Point forecasts and a central prediction interval of `level` (e.g. 0.8).
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub point: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    pub level: f64,
}

impl Forecast {
    /// The highest upper bound: what buffers must be sized for.
    pub fn peak_upper(&self) -> f64 {
        self.upper.iter().copied().fold(f64::NAN, f64::max)
    }

    pub fn peak_point(&self) -> f64 {
        self.point.iter().copied().fold(f64::NAN, f64::max)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// The history is shorter than the model needs.
    TooShort { need: usize, have: usize },
    /// The model could not be fitted (its own message).
    Fit(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::TooShort { need, have } => {
                write!(f, "needs at least {need} points of history, has {have}")
            }
            ModelError::Fit(e) => write!(f, "fit failed: {e}"),
        }
    }
}

impl std::error::Error for ModelError {}
