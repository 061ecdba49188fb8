//! Results: one `Record` per scenario, printed as a table row and written as one JSON line, and
//! the side-by-side comparison of two result files.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// One scenario's result. The JSON form is stable: scripts key on `name`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Record {
    /// Stable key across brokers, e.g. "fan-in q1 10->1 v3.1.1".
    pub name: String,
    /// fan-in, fan-out, pairs, latency, connections.
    pub scenario: String,
    /// Broker under test (--label).
    pub label: String,
    pub mqtt: String,
    pub qos: u8,
    pub publishers: usize,
    pub subscribers: usize,
    pub payload_bytes: usize,
    pub window: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    pub sent: u64,
    pub acked: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub missing: u64,
    pub elapsed_s: f64,
    /// Messages published per second.
    pub publish_rate: f64,
    /// Messages delivered to subscribers per second (fan-out counts each copy).
    pub delivery_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_us: Option<f64>,
    /// Bridge drain: seconds from the remote becoming reachable to the first message there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_delivery_s: Option<f64>,
    /// CPU seconds (user + system) this tool used during the scenario.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_cpu_s: Option<f64>,
    /// CPU seconds the broker used during the scenario (needs --broker-pid).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_s: Option<f64>,
    /// Deliveries per broker CPU second: efficiency, meaningful even on a busy machine where the
    /// broker does not get a whole core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_per_broker_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goal: Option<Goal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Runs this record stands for (see `merge_rounds`); 0 (absent) or 1 is a single run.
    #[serde(skip_serializing_if = "is_single")]
    pub rounds: usize,
}

fn is_single(n: &usize) -> bool {
    *n <= 1
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnRecord {
    pub requested: usize,
    pub attempted: usize,
    pub connected: usize,
    pub failed: usize,
    pub alive: usize,
    pub connect_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_per_conn_kib: Option<f64>,
    /// Broker threads per connection (from /proc/PID/status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads_per_conn: Option<f64>,
    /// Broker file descriptors per connection (from /proc/PID/fd).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fds_per_conn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// The target for a suite scenario, checked by `compare`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Goal {
    /// candidate/base of the primary metric (deliveries/s) at least this, and 0 lost.
    RatioAtLeast(f64),
    /// candidate/base of p99 latency at most this.
    P99RatioAtMost(f64),
    /// candidate RSS per connection at most this many KiB, all connections alive.
    RssPerConnAtMost(f64),
}

impl Record {
    /// The measured part of a load run's record: counts, rates, latency quantiles and CPU; the
    /// caller fills in what names the run (name, scenario, label, shape).
    pub fn measured(
        o: crate::engine::Outcome,
        tool_cpu_s: Option<f64>,
        broker_cpu_s: Option<f64>,
    ) -> Record {
        let us = |q: f64| o.latency.quantile(q).map(|ns| ns as f64 / 1000.0);
        Record {
            sent: o.sent,
            acked: o.acked,
            expected: o.expected,
            received: o.received,
            lost: o.lost,
            duplicated: o.duplicated,
            reordered: o.reordered,
            missing: o.missing,
            elapsed_s: o.elapsed,
            publish_rate: o.sent as f64 / o.publish_elapsed.max(1e-9),
            delivery_rate: o.received as f64 / o.elapsed.max(1e-9),
            p50_us: us(0.5),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: (o.latency.count() > 0).then(|| o.latency.max() as f64 / 1000.0),
            tool_cpu_s,
            broker_cpu_s,
            deliveries_per_broker_cpu_s: broker_cpu_s
                .filter(|&c| c > 0.0)
                .map(|c| o.received as f64 / c),
            stalled: o.stalled,
            errors: o.errors,
            rounds: 1,
            ..Default::default()
        }
    }

    /// Problems that make the numbers untrustworthy or show broker misbehaviour.
    pub fn problems(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.lost > 0 {
            v.push(format!("LOST {}", self.lost));
        }
        if self.duplicated > 0 {
            v.push(format!("dup {}", self.duplicated));
        }
        if self.reordered > 0 {
            v.push(format!("reord {}", self.reordered));
        }
        if self.qos == 0 && self.missing > 0 && self.scenario != "connections" {
            v.push(format!("q0-dropped {}", self.missing));
        }
        if self.qos > 0 && self.acked < self.sent {
            v.push(format!("unacked {}", self.sent - self.acked));
        }
        if let Some(c) = &self.connections {
            if c.failed > 0 {
                v.push(format!("failed {}", c.failed));
            }
            if c.attempted < c.requested {
                v.push(format!("gave up after {}", c.attempted));
            }
            if c.alive < c.connected {
                v.push(format!("dead {}", c.connected - c.alive));
            }
        }
        if self.stalled.is_some() {
            v.push("STALLED".into());
        }
        if !self.errors.is_empty() {
            v.push(format!("{} errors", self.errors.len()));
        }
        v
    }

    /// The number a scenario is judged by, with its unit, and whether higher is better.
    pub fn primary(&self) -> (f64, &'static str, bool) {
        match self.scenario.as_str() {
            "latency" => (self.p99_us.unwrap_or(f64::NAN), "p99 us", false),
            "connections" => (
                self.connections
                    .as_ref()
                    .map(|c| c.connect_rate)
                    .unwrap_or(f64::NAN),
                "conn/s",
                true,
            ),
            _ => (self.delivery_rate, "deliv/s", true),
        }
    }
}

pub fn print_header() {
    println!(
        "{:<40} {:>10} {:>12} {:>9} {:>9} {:>9}  checks",
        "scenario", "sent", "msg/s", "p50 us", "p99 us", "p99.9 us"
    );
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.0}")).unwrap_or_else(|| "-".into())
}

pub fn print_row(r: &Record) {
    let problems = r.problems();
    let mut checks = if problems.is_empty() {
        "ok".to_string()
    } else {
        problems.join(", ")
    };
    if let Some(c) = &r.connections {
        let rss = c
            .rss_per_conn_kib
            .map(|k| format!("{k:.1} KiB/conn"))
            .unwrap_or_else(|| "RSS n/a".into());
        let per = |v: Option<f64>, what: &str| {
            v.map(|x| format!(", {x:.2} {what}/conn"))
                .unwrap_or_default()
        };
        checks = format!(
            "{}/{} up, {}/{} alive, {rss}{}{}; {checks}",
            c.connected,
            c.requested,
            c.alive,
            c.connected,
            per(c.threads_per_conn, "threads"),
            per(c.fds_per_conn, "fds")
        );
        println!(
            "{:<40} {:>10} {:>12.0} {:>9} {:>9} {:>9}  {}",
            r.name, c.requested, c.connect_rate, "-", "-", "-", checks
        );
    } else {
        println!(
            "{:<40} {:>10} {:>12.0} {:>9} {:>9} {:>9}  {}",
            r.name,
            r.sent,
            r.delivery_rate,
            opt(r.p50_us),
            opt(r.p99_us),
            opt(r.p999_us),
            checks
        );
    }
    if let (Some(b), Some(t)) = (r.broker_cpu_s, r.tool_cpu_s) {
        println!(
            "    cpu: broker {b:.1} s, tool {t:.1} s over {:.1} s",
            r.elapsed_s
        );
    }
    if let Some(first) = r.first_delivery_s {
        println!(
            "    backlog: {} acknowledged at {:.0} msg/s with the remote away; first message \
             {first:.2} s after it came back, then all in {:.2} s",
            r.acked, r.publish_rate, r.elapsed_s
        );
    }
    if let Some(s) = &r.stalled {
        println!("    stalled: {s}");
    }
    for e in r.errors.iter().take(3) {
        println!("    error: {e}");
    }
}

pub fn append_json(path: &Path, r: &Record) -> Result<(), String> {
    let line = serde_json::to_string(r).map_err(|e| e.to_string())?;
    if path == Path::new("-") {
        println!("{line}");
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

pub fn read_json(path: &Path) -> Result<Vec<Record>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with('{'))
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Records with the same name (rounds of one scenario, e.g. the latency rounds `bench.sh`
/// alternates between the brokers) become one, in the order of first appearance: rates and
/// latency quantiles are the median over the rounds, message counts and errors are summed, so
/// a loss in any round still shows. A p99 from one run is at the mercy of whatever else the
/// machine did in those seconds; the median of alternating rounds exposes both brokers alike.
pub fn merge_rounds(records: &[Record]) -> Vec<Record> {
    let mut groups: Vec<Vec<&Record>> = Vec::new();
    for r in records {
        match groups.iter_mut().find(|g| g[0].name == r.name) {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let mut m = g[0].clone();
            if g.len() == 1 {
                return m;
            }
            let median = |f: &dyn Fn(&Record) -> Option<f64>| -> Option<f64> {
                let mut v: Vec<f64> = g.iter().filter_map(|r| f(r)).collect();
                v.sort_by(f64::total_cmp);
                match v.len() {
                    0 => None,
                    n if n % 2 == 1 => Some(v[n / 2]),
                    n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
                }
            };
            m.rounds = g.len();
            m.publish_rate = median(&|r| Some(r.publish_rate)).unwrap_or(0.0);
            m.delivery_rate = median(&|r| Some(r.delivery_rate)).unwrap_or(0.0);
            m.p50_us = median(&|r| r.p50_us);
            m.p99_us = median(&|r| r.p99_us);
            m.p999_us = median(&|r| r.p999_us);
            m.max_us = g.iter().filter_map(|r| r.max_us).reduce(f64::max);
            m.deliveries_per_broker_cpu_s = median(&|r| r.deliveries_per_broker_cpu_s);
            m.tool_cpu_s = median(&|r| r.tool_cpu_s);
            m.broker_cpu_s = median(&|r| r.broker_cpu_s);
            let sum = |f: fn(&Record) -> u64| g.iter().map(|r| f(r)).sum::<u64>();
            m.sent = sum(|r| r.sent);
            m.acked = sum(|r| r.acked);
            m.expected = sum(|r| r.expected);
            m.received = sum(|r| r.received);
            m.lost = sum(|r| r.lost);
            m.duplicated = sum(|r| r.duplicated);
            m.reordered = sum(|r| r.reordered);
            m.missing = sum(|r| r.missing);
            m.elapsed_s = g.iter().map(|r| r.elapsed_s).sum();
            m.stalled = g.iter().find_map(|r| r.stalled.clone());
            m.errors = g.iter().flat_map(|r| r.errors.clone()).collect();
            m
        })
        .collect()
}

/// Side-by-side table of two result files, matched by scenario name; ratio = candidate / base.
/// Repeated scenarios are merged first (`merge_rounds`).
pub fn compare(base: &[Record], cand: &[Record]) -> String {
    let wins = p99_wins(base, cand);
    let (base, cand) = (&merge_rounds(base)[..], &merge_rounds(cand)[..]);
    let mut s = String::new();
    let bl = base
        .first()
        .map(|r| r.label.clone())
        .unwrap_or_else(|| "base".into());
    let cl = cand
        .first()
        .map(|r| r.label.clone())
        .unwrap_or_else(|| "candidate".into());
    let by_name: HashMap<&str, &Record> = cand.iter().map(|r| (r.name.as_str(), r)).collect();
    let ratio_head = format!("{cl}/{bl}");
    let (bc_head, cc_head) = (format!("{bl} checks"), format!("{cl} checks"));
    s += &format!(
        "{:<40} {:<9} {:>12} {:>12} {:>9}  {:<10} {:<22} {}\n",
        "scenario", "metric", bl, cl, "ratio", "goal", bc_head, cc_head
    );
    s += &format!(
        "{:<40} {:<9} {:>12} {:>12} {:>9}\n",
        "", "", "", "", ratio_head
    );
    let metric_row = |name: &str, metric: &str, b: f64, c: f64, goal: &str, bc: &str, cc: &str| {
        let ratio = c / b;
        format!(
            "{:<40} {:<9} {:>12} {:>12} {:>9}  {:<10} {:<22} {}\n",
            name,
            metric,
            fmt_num(b),
            fmt_num(c),
            if ratio.is_finite() {
                format!("{ratio:.2}x")
            } else {
                "-".into()
            },
            goal,
            bc,
            cc
        )
    };
    for b in base {
        let rounds = (
            b.rounds.max(1),
            by_name.get(b.name.as_str()).map(|c| c.rounds.max(1)),
        );
        let name = match rounds {
            (1, None | Some(1)) => b.name.clone(),
            (n, None) => format!("{} (median of {n})", b.name),
            (n, Some(m)) if n == m => format!("{} (median of {n})", b.name),
            (n, Some(m)) => format!("{} (median of {n} / {m})", b.name),
        };
        let Some(c) = by_name.get(b.name.as_str()) else {
            s += &metric_row(
                &name,
                "(missing)",
                b.primary().0,
                f64::NAN,
                "",
                &checks(b),
                "not run",
            );
            continue;
        };
        // A stalled or failed message run has no meaningful rate: show "-" rather than a ratio.
        let usable = |r: &Record| {
            r.scenario == "connections" || (r.stalled.is_none() && r.errors.is_empty())
        };
        let (bu, cu) = (usable(b), usable(c));
        let pair = |f: &Metric| {
            let get = |r: &Record, ok: bool| {
                if ok {
                    f(r).unwrap_or(f64::NAN)
                } else {
                    f64::NAN
                }
            };
            (get(b, bu), get(c, cu))
        };
        let unit = b.primary().1;
        let (bv, cv) = pair(&|r| Some(r.primary().0));
        let verdict = goal_verdict(b, c);
        s += &metric_row(&name, unit, bv, cv, &verdict, &checks(b), &checks(c));
        let extra: Vec<(&str, &Metric)> = match b.scenario.as_str() {
            "latency" => vec![("p50 us", &|r| r.p50_us), ("p99.9 us", &|r| r.p999_us)],
            "connections" => vec![
                ("KiB/conn", &|r| {
                    r.connections.as_ref().and_then(|c| c.rss_per_conn_kib)
                }),
                ("fds/conn", &|r| {
                    r.connections.as_ref().and_then(|c| c.fds_per_conn)
                }),
            ],
            _ => vec![
                ("p99 us", &|r| r.p99_us),
                ("deliv/cpu-s", &|r| r.deliveries_per_broker_cpu_s),
            ],
        };
        for (metric, f) in extra {
            let (x, y) = pair(f);
            s += &metric_row("", metric, x, y, "", "", "");
        }
        if let Some(&(bw, cw, n)) = wins.get(b.name.as_str()) {
            s += &format!(
                "{:<40} {:<9} {:>12} {:>12}\n",
                "",
                "p99 lower",
                format!("{bw}/{n} rounds"),
                format!("{cw}/{n} rounds")
            );
        }
    }
    s
}

/// For each scenario run in several rounds on both sides: in how many rounds each broker had
/// the lower p99 (base wins, candidate wins, rounds). Round i of one file is paired with round i
/// of the other, which `bench.sh` ran right before or after it. A median of a few rounds moves
/// by +-20% between two runs of the same broker on a VM; the count shows whether a ratio is a
/// consistent difference or a coin toss.
fn p99_wins<'a>(base: &'a [Record], cand: &[Record]) -> HashMap<&'a str, (usize, usize, usize)> {
    let rounds = |recs: &[Record], name: &str| -> Vec<f64> {
        recs.iter()
            .filter(|r| r.name == name)
            .filter_map(|r| r.p99_us)
            .collect()
    };
    let mut out = HashMap::new();
    for b in base {
        if out.contains_key(b.name.as_str()) {
            continue;
        }
        let (bs, cs) = (rounds(base, &b.name), rounds(cand, &b.name));
        if bs.len() < 2 || bs.len() != cs.len() {
            continue;
        }
        let bw = bs.iter().zip(&cs).filter(|(x, y)| x < y).count();
        let cw = bs.iter().zip(&cs).filter(|(x, y)| y < x).count();
        out.insert(b.name.as_str(), (bw, cw, bs.len()));
    }
    out
}

/// Reads one number out of a record (None when the record lacks it).
type Metric = dyn Fn(&Record) -> Option<f64>;

fn checks(r: &Record) -> String {
    let p = r.problems();
    if p.is_empty() {
        "ok".into()
    } else {
        p.join(",")
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn goal_verdict(b: &Record, c: &Record) -> String {
    let clean = c.lost == 0 && c.stalled.is_none() && c.errors.is_empty();
    match &b.goal {
        None => String::new(),
        Some(Goal::RatioAtLeast(x)) => {
            let met = c.delivery_rate / b.delivery_rate >= *x && clean;
            format!(">={x}x {}", if met { "MET" } else { "NO" })
        }
        Some(Goal::P99RatioAtMost(x)) => {
            let met = c.p99_us.zip(b.p99_us).is_some_and(|(c, b)| c / b <= *x) && clean;
            format!("<={x}x {}", if met { "MET" } else { "NO" })
        }
        Some(Goal::RssPerConnAtMost(k)) => {
            let met = c.connections.as_ref().is_some_and(|cr| {
                cr.rss_per_conn_kib.is_some_and(|r| r <= *k)
                    && cr.alive == cr.requested
                    && cr.failed == 0
            });
            format!("<={k}KiB {}", if met { "MET" } else { "NO" })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency(name: &str, p99: f64, lost: u64) -> Record {
        Record {
            name: name.into(),
            scenario: "latency".into(),
            p50_us: Some(p99 / 4.0),
            p99_us: Some(p99),
            sent: 10,
            lost,
            ..Record::default()
        }
    }

    #[test]
    fn rounds_of_a_scenario_merge_into_medians_and_sums() {
        let records = [
            latency("lat", 300.0, 0),
            latency("other", 50.0, 0),
            latency("lat", 100.0, 1),
            latency("lat", 200.0, 0),
        ];
        let merged = merge_rounds(&records);
        assert_eq!(merged.len(), 2);
        let (lat, other) = (&merged[0], &merged[1]);
        assert_eq!((lat.name.as_str(), lat.rounds), ("lat", 3));
        assert_eq!((lat.p99_us, lat.p50_us), (Some(200.0), Some(50.0)));
        assert_eq!((lat.sent, lat.lost), (30, 1), "counts are summed");
        assert_eq!(lat.problems(), vec!["LOST 1".to_string()]);
        assert_eq!(
            (other.rounds, other.p99_us),
            (0, Some(50.0)),
            "a single run is kept"
        );
        let table = compare(&records, &records);
        assert!(table.contains("lat (median of 3)"), "{table}");
    }

    #[test]
    fn rounds_are_paired_in_order_to_count_which_broker_had_the_lower_p99() {
        let base = [
            latency("lat", 300.0, 0),
            latency("lat", 100.0, 0),
            latency("lat", 200.0, 0),
            latency("single", 10.0, 0),
        ];
        let cand = [
            latency("lat", 250.0, 0),
            latency("lat", 150.0, 0),
            latency("lat", 200.0, 0),
            latency("single", 5.0, 0),
        ];
        let wins = p99_wins(&base, &cand);
        assert_eq!(
            wins.get("lat"),
            Some(&(1, 1, 3)),
            "a tie counts for neither"
        );
        assert_eq!(wins.get("single"), None, "one run is not a count");
        let table = compare(&base, &cand);
        let row = table.lines().find(|l| l.contains("p99 lower")).unwrap();
        assert!(row.contains("1/3 rounds"), "{table}");
    }
}
