//! Operations: what an operator reads about the broker and the sink, above both. `$SYS`
//! (`sys`), `/metrics` and `/health` (`metrics`, served by `http`), and the stats snapshot they
//! share (`snapshot`), and the web dashboard (`dashboard`). The broker only bumps counters (`broker::stats::Stats`); it never calls
//! up into this layer.

pub mod dashboard;
pub mod forecast;
mod http;
pub mod metrics;
pub mod self_metrics;
pub mod snapshot;
pub mod sys;
