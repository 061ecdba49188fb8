//! A time series on a regular grid: what every model and the backtest take. Points read from
//! InfluxDB or a CSV file arrive with gaps and jitter; `Series::from_points` puts them on the
//! grid (`start + k * step`), keeps the last value per slot and fills gaps by linear
//! interpolation, counting how many slots it filled so the caller can say so.

use std::fmt;
use std::path::Path;

/// A regular time series: `values[k]` is the value at `start_s + k * step_s` (Unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub start_s: i64,
    pub step_s: i64,
    pub values: Vec<f64>,
    /// Slots that had no point and were interpolated.
    pub filled: usize,
    /// Seasonal periods in steps, given by the source (a CSV's `# seasons:` line); when empty,
    /// `seasons()` derives daily and weekly periods from the step.
    pub given_seasons: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SeriesError {
    TooFewPoints(usize),
    BadStep(i64),
    TooLong { slots: i64 },
    Csv { line: usize, message: String },
    Io(String),
}

impl fmt::Display for SeriesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeriesError::TooFewPoints(n) => {
                write!(f, "expected at least 2 points with finite values, got {n}")
            }
            SeriesError::BadStep(s) => write!(f, "expected a step of at least 1 s, got {s}"),
            SeriesError::TooLong { slots } => write!(
                f,
                "the points span {slots} steps, more than {MAX_SLOTS}: give a larger step"
            ),
            SeriesError::Csv { line, message } => write!(f, "line {line}: {message}"),
            SeriesError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SeriesError {}

/// Most slots one series may have (a year of per-minute data): bounds memory for any input.
pub const MAX_SLOTS: i64 = 366 * 24 * 60;

const DAY_S: i64 = 86_400;
const WEEK_S: i64 = 7 * DAY_S;

impl Series {
    /// Put `(unix seconds, value)` points on a grid of `step_s` (None: the median spacing of
    /// the points). Non-finite values are left out; several points in one slot: the last wins.
    pub fn from_points(
        name: &str,
        points: &[(i64, f64)],
        step_s: Option<i64>,
    ) -> Result<Series, SeriesError> {
        let mut pts: Vec<(i64, f64)> = points
            .iter()
            .copied()
            .filter(|(_, v)| v.is_finite())
            .collect();
        if pts.len() < 2 {
            return Err(SeriesError::TooFewPoints(pts.len()));
        }
        pts.sort_by_key(|p| p.0);
        let step = match step_s {
            Some(s) => s,
            None => {
                let mut gaps: Vec<i64> = pts
                    .windows(2)
                    .map(|w| w[1].0 - w[0].0)
                    .filter(|g| *g > 0)
                    .collect();
                gaps.sort_unstable();
                gaps.get(gaps.len() / 2).copied().unwrap_or(0)
            }
        };
        if step < 1 {
            return Err(SeriesError::BadStep(step));
        }
        let start = pts[0].0;
        let last = pts[pts.len() - 1].0;
        let slots = (last - start + step / 2) / step + 1;
        if slots > MAX_SLOTS {
            return Err(SeriesError::TooLong { slots });
        }
        let mut grid: Vec<Option<f64>> = vec![None; slots as usize];
        let last_slot = grid.len() - 1;
        for (t, v) in pts {
            let k = ((t - start + step / 2) / step) as usize;
            grid[k.min(last_slot)] = Some(v);
        }
        let (values, filled) = interpolate(&grid);
        Ok(Series {
            name: name.to_string(),
            start_s: start,
            step_s: step,
            values,
            filled,
            given_seasons: Vec::new(),
        })
    }

    /// Read a CSV file of `time,value` rows (a header line first). `time` is RFC 3339
    /// (`2000-06-05T00:30:00Z`) or Unix seconds. Lines starting with `#` are comments, except
    /// `# seasons: 60,1440` (periods in steps) and `# step: 60` (seconds).
    pub fn from_csv(path: &Path) -> Result<Series, SeriesError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SeriesError::Io(format!("{}: {e}", path.display())))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "series".into());
        Series::parse_csv(&name, &text)
    }

    pub fn parse_csv(name: &str, text: &str) -> Result<Series, SeriesError> {
        let mut points = Vec::new();
        let mut seasons = Vec::new();
        let mut step = None;
        let mut header_seen = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            let bad = |message: String| SeriesError::Csv {
                line: i + 1,
                message,
            };
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let comment = comment.trim();
                if let Some(list) = comment.strip_prefix("seasons:") {
                    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                        seasons.push(p.parse::<usize>().map_err(|_| {
                            bad(format!("expected seasons as whole numbers, got {p:?}"))
                        })?);
                    }
                } else if let Some(s) = comment.strip_prefix("step:") {
                    step = Some(s.trim().parse::<i64>().map_err(|_| {
                        bad(format!("expected a step in seconds, got {:?}", s.trim()))
                    })?);
                }
                continue;
            }
            if !header_seen {
                header_seen = true;
                if line.to_ascii_lowercase().starts_with("time") {
                    continue;
                }
            }
            let (t, v) = line
                .split_once(',')
                .ok_or_else(|| bad(format!("expected `time,value`, got {line:?}")))?;
            let t = parse_time(t.trim()).ok_or_else(|| {
                bad(format!(
                    "expected an RFC 3339 time or Unix seconds, got {:?}",
                    t.trim()
                ))
            })?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| bad(format!("expected a number, got {:?}", v.trim())))?;
            points.push((t, v));
        }
        let mut s = Series::from_points(name, &points, step)?;
        s.given_seasons = seasons;
        Ok(s)
    }

    /// Seasonal periods in steps, shortest first: those given by the source, else a day and a
    /// week where the step divides them (and a period has at least 2 steps).
    pub fn seasons(&self) -> Vec<usize> {
        if !self.given_seasons.is_empty() {
            return self.given_seasons.clone();
        }
        [DAY_S, WEEK_S]
            .into_iter()
            .filter(|p| p % self.step_s == 0 && p / self.step_s >= 2)
            .map(|p| (p / self.step_s) as usize)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Unix seconds of slot `k` (also past the end, for forecasts).
    pub fn time_of(&self, k: usize) -> i64 {
        self.start_s + k as i64 * self.step_s
    }
}

fn parse_time(t: &str) -> Option<i64> {
    if let Ok(secs) = t.parse::<i64>() {
        return Some(secs);
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|d| d.timestamp())
}

/// Fill the empty slots between known ones linearly (the ends cannot be empty: the first and
/// last slot hold the first and last point).
fn interpolate(grid: &[Option<f64>]) -> (Vec<f64>, usize) {
    let mut out = Vec::with_capacity(grid.len());
    let mut filled = 0;
    let mut prev: Option<(usize, f64)> = None;
    for (k, slot) in grid.iter().enumerate() {
        if let Some(v) = slot {
            if let Some((pk, pv)) = prev {
                for j in pk + 1..k {
                    let frac = (j - pk) as f64 / (k - pk) as f64;
                    out.push(pv + (v - pv) * frac);
                    filled += 1;
                }
            }
            out.push(*v);
            prev = Some((k, *v));
        }
    }
    (out, filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_land_on_a_grid_and_gaps_are_interpolated() {
        let pts = [(0, 1.0), (60, 2.0), (180, 4.0), (240, 5.0)];
        let s = Series::from_points("x", &pts, None).unwrap();
        assert_eq!(s.step_s, 60);
        assert_eq!(s.values, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(s.filled, 1);
    }

    #[test]
    fn jittered_points_round_to_the_nearest_slot_and_nan_is_left_out() {
        let pts = [(1000, 1.0), (1061, 2.0), (1119, 3.0), (1180, f64::NAN)];
        let s = Series::from_points("x", &pts, Some(60)).unwrap();
        assert_eq!(s.values, vec![1.0, 2.0, 3.0]);
        assert_eq!(s.start_s, 1000);
    }

    #[test]
    fn csv_reads_rfc3339_and_seasons_and_names_bad_lines() {
        let s = Series::parse_csv(
            "t",
            "# seasons: 4\ntime,value\n2000-01-01T00:00:00Z,1\n2000-01-01T00:30:00Z,2\n",
        )
        .unwrap();
        assert_eq!(s.step_s, 1800);
        assert_eq!(s.seasons(), vec![4]);
        let e = Series::parse_csv("t", "time,value\n0,1\n60,x\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: expected a number, got \"x\"");
    }

    #[test]
    fn daily_and_weekly_seasons_follow_from_the_step() {
        let s = Series::from_points("x", &[(0, 1.0), (1800, 1.0)], None).unwrap();
        assert_eq!(s.seasons(), vec![48, 336]);
    }

    #[test]
    fn a_span_too_long_for_memory_is_refused() {
        let e = Series::from_points("x", &[(0, 1.0), (i64::MAX / 4, 1.0)], Some(1)).unwrap_err();
        assert!(matches!(e, SeriesError::TooLong { .. }), "{e}");
    }
}
