//! Load forecasting, pure: no I/O, no threads, no other mqflux module. `ops::forecast` reads
//! the broker's own history from InfluxDB, calls this, and publishes what comes out.
//!
//! ```text
//! Series (series.rs: a regular grid, gaps interpolated)
//!   └─► ModelSpec::forecast (models.rs: seasonal naive, ETS, MSTL; lstm.rs: candle LSTM)
//!         └─► backtest::run (rolling origin: MASE, interval coverage) ─► pick_winner
//!               └─► the winner's forecast ─► recommend (spool, bridge queue, batch, queue)
//! ```
//!
//! The winner of the backtest is the model used; the LSTM must beat the best simple method by
//! a clear margin (`backtest::pick_winner`), because simple methods mostly win (M4).

pub mod backtest;
mod config;
mod lstm;
mod models;
mod prediction;
pub mod recommend;
mod series;

pub use backtest::{pick_winner, BacktestPlan, Score, Winner};
pub use config::ForecastConfig;
pub use lstm::LstmConfig;
pub use models::{normal_quantile, ModelSpec};
pub use prediction::{Forecast, ModelError};
pub use recommend::{recommend, spool_shortfall, PeakRates, Recommendation, Sizing};
pub use series::{Series, SeriesError, MAX_SLOTS};
