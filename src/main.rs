//! mqflux daemon entry point: CLI, config, start the sink and the listeners, wait for a signal.

use clap::{Args, Parser, Subcommand};
use log::{error, info, warn};
use mqflux::bridge::Bridges;
use mqflux::broker::listener::Listener;
use mqflux::broker::security::SecurityFiles;
use mqflux::broker::Broker;
use mqflux::config::Config;
use mqflux::ops::dashboard::DashboardServer;
use mqflux::ops::forecast::ForecastPublisher;
use mqflux::ops::metrics::MetricsServer;
use mqflux::ops::self_metrics::SelfMetrics;
use mqflux::ops::sys::SysPublisher;
use mqflux::sink::Sink;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// An MQTT 3.1.1/5.0 broker that also stores every published message in InfluxDB.
///
/// Without a subcommand, runs the broker. SIGINT/SIGTERM stop it gracefully; SIGHUP reloads the
/// password and ACL files without dropping connections.
#[derive(Parser, Debug)]
#[command(
    name = "mqflux",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,

    /// More log output: -v for debug, -vv for trace. RUST_LOG, if set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Less log output: -q for warnings and errors only, -qq for errors only.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
}

/// Options for running the broker (`mqflux [OPTIONS]`, no subcommand).
#[derive(Args, Debug)]
struct RunArgs {
    /// Configuration file (TOML). Without it the built-in defaults apply; see config.example.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address of the first listener; overrides its `bind` (default 127.0.0.1: this machine
    /// only). On a non-loopback address anonymous clients need `security.allow_anonymous = true`.
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,

    /// Port of the first listener; overrides its `port` (default 1883). 0 picks a free port.
    #[arg(short, long, value_name = "PORT")]
    port: Option<u16>,

    /// Log the topic and payload of every message the broker accepts (same as `log.messages`).
    #[arg(long)]
    log_messages: bool,

    /// Start even if the persistence store or a bridge queue is damaged: keep what can be read,
    /// log what is lost.
    #[arg(long)]
    recover: bool,
}

/// Tools beside the broker itself; each variant's doc comment is its `--help` line.
#[derive(Subcommand, Debug)]
enum Command {
    /// Check a configuration file: list every error (file, key, what was expected) and exit 1,
    /// or print a short summary and exit 0.
    CheckConfig {
        /// Configuration file (TOML) to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Create or update a user in a mosquitto-compatible password file ($7$ PBKDF2-SHA512, the
    /// format mosquitto_passwd writes). The password is read from standard input unless given.
    Passwd {
        /// Password file; created (mode 0600) if missing.
        file: PathBuf,
        /// User name to add or update.
        user: String,
        /// Password on the command line (visible in `ps`; prefer standard input).
        #[arg(long)]
        password: Option<String>,
    },
    /// Forecast load: read the broker's self metrics (or any InfluxQL query, or CSV files) from
    /// InfluxDB, run a rolling-origin backtest of every model (seasonal naive, ETS, MSTL, LSTM),
    /// and forecast with the winner, with prediction intervals; for the self metrics, also the
    /// recommended buffer sizes. CPU only.
    Forecast(Box<ForecastArgs>),
}

/// `mqflux forecast`: the sources, the backtest and the recommendation settings. Defaults come
/// from the config file's `[forecast]` section (built-in defaults without one).
#[derive(Args, Debug)]
struct ForecastArgs {
    /// Configuration file: InfluxDB URL, database and credentials from `[sink]`, the
    /// self-metrics measurement, and the `[forecast]` settings as defaults for the flags below.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// InfluxDB base URL (overrides `sink.url`).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// InfluxDB database (overrides `sink.database`).
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// Forecast what this InfluxQL query returns instead of the self metrics (its first series,
    /// first value column; e.g. `SELECT mean("v") FROM "m" WHERE time > now() - 7d GROUP BY
    /// time(5m)`). Repeat for several series. No recommendations are made for these.
    #[arg(long = "query", value_name = "INFLUXQL")]
    queries: Vec<String>,
    /// Read a series from a CSV file (`time,value` rows; `# seasons:` / `# step:` lines, see
    /// data/forecast/) instead of InfluxDB. Repeat for several series.
    #[arg(long = "backtest-file", value_name = "CSV")]
    files: Vec<PathBuf>,
    /// Step of the series in seconds: the GROUP BY interval of the self-metrics query
    /// (default `forecast.step_secs`, 300); for --query and CSV files the median spacing of
    /// the points unless given.
    #[arg(long, value_name = "SECS")]
    step_secs: Option<u64>,
    /// How much self-metrics history to read, seconds (default `forecast.history_secs`, a week).
    #[arg(long, value_name = "SECS")]
    history_secs: Option<u64>,
    /// How far ahead to forecast, seconds (default `forecast.horizon_secs`, 6 hours).
    #[arg(long, value_name = "SECS")]
    horizon_secs: Option<u64>,
    /// How far ahead to forecast, in steps (overrides --horizon-secs; 1 to 100000).
    #[arg(long, value_name = "STEPS", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    horizon_steps: Option<u64>,
    /// Seasonal periods in steps, comma-separated (default: the CSV's `# seasons:` line, else a
    /// day and a week where the step divides them). Only those with two cycles of history
    /// before the first backtest origin are used.
    #[arg(long, value_delimiter = ',', value_name = "STEPS")]
    seasons: Vec<usize>,
    /// Rolling-origin backtest origins, one horizon apart, the last one a horizon before the
    /// end of the data (default `forecast.origins`, 3).
    #[arg(long, value_name = "N")]
    origins: Option<usize>,
    /// Points of history each fit sees at most (default: all).
    #[arg(long, value_name = "POINTS")]
    max_history: Option<usize>,
    /// Central prediction interval, e.g. 0.8 for 10%..90% (default `forecast.level`, 0.8).
    #[arg(long, value_name = "LEVEL")]
    level: Option<f64>,
    /// Leave the LSTM out of the backtest (it is the slowest model to fit).
    #[arg(long)]
    no_lstm: bool,
    /// LSTM training passes over its windows (default `forecast.lstm_epochs`, 20).
    #[arg(long, value_name = "N")]
    lstm_epochs: Option<usize>,
    /// LSTM seed for the initial weights and the batch order (same seed, same forecast).
    #[arg(long, default_value_t = 42, value_name = "SEED")]
    seed: u64,
    /// The LSTM wins only with a MASE this much lower than the best simple method's
    /// (default `forecast.lstm_margin`, 0.1 = 10%).
    #[arg(long, value_name = "FRACTION")]
    lstm_margin: Option<f64>,
    /// The outage the spool must ride out, seconds (default `forecast.outage_secs`, 3600).
    #[arg(long, value_name = "SECS")]
    outage_secs: Option<u64>,
    /// Print the backtest and the winner only, not the forecast's rows.
    #[arg(long)]
    no_forecast: bool,
    /// Also print the backtest as Markdown table rows (series, model, MASE, coverage), as in
    /// the README.
    #[arg(long)]
    markdown: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose as i16 - cli.quiet as i16 {
        i16::MIN..=-2 => log::LevelFilter::Error,
        -1 => log::LevelFilter::Warn,
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .init();

    match &cli.command {
        Some(Command::CheckConfig { file }) => check_config(file),
        Some(Command::Passwd {
            file,
            user,
            password,
        }) => {
            let mut stdin = std::io::stdin().lock();
            match mqflux::broker::auth::run_passwd(file, user, password.clone(), &mut stdin) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Forecast(args)) => forecast_command(args),
        None => run_broker(&cli.run),
    }
}

/// `mqflux forecast`: see `ForecastArgs`. Exit 0 when every series got a forecast, 1 otherwise.
fn forecast_command(a: &ForecastArgs) -> ExitCode {
    use mqflux::ops::forecast as fc;
    let mut config = match &a.config {
        Some(p) => match Config::load_with(p, &mqflux::broker::tls::check_listener) {
            Ok(c) => c,
            Err(errors) => {
                for e in errors {
                    eprintln!("error: {e}");
                }
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(u) = &a.url {
        config.sink.url = u.clone();
    }
    if let Some(d) = &a.database {
        config.sink.database = d.clone();
    }
    let f = &mut config.forecast;
    f.step_secs = a.step_secs.unwrap_or(f.step_secs);
    f.history_secs = a.history_secs.unwrap_or(f.history_secs);
    f.horizon_secs = a.horizon_secs.unwrap_or(f.horizon_secs);
    f.origins = a.origins.unwrap_or(f.origins);
    f.level = a.level.unwrap_or(f.level);
    f.lstm_epochs = a.lstm_epochs.unwrap_or(f.lstm_epochs);
    f.lstm_margin = a.lstm_margin.unwrap_or(f.lstm_margin);
    f.outage_secs = a.outage_secs.unwrap_or(f.outage_secs);
    f.lstm &= !a.no_lstm;
    let problems = f.problems();
    if !problems.is_empty() {
        for (key, message) in problems {
            eprintln!("error: forecast option for `forecast.{key}`: {message}");
        }
        return ExitCode::from(2);
    }
    let f = config.forecast.clone();
    let mut settings = fc::Settings::from_config(&f);
    if let Some(l) = &mut settings.lstm {
        l.seed = a.seed;
    }
    if !a.seasons.is_empty() {
        settings.seasons = Some(a.seasons.clone());
    }
    if let Some(m) = a.max_history {
        settings.max_history = m.max(2);
    }
    let client = mqflux::sink::http::InfluxClient::new(&config.sink);
    // (name, series, horizon) for each source; a source that cannot be read is reported.
    let mut failed = 0;
    let mut sources: Vec<mqflux::forecast::Series> = Vec::new();
    let self_metrics = a.files.is_empty() && a.queries.is_empty();
    let step = Some(f.step_secs as i64);
    for path in &a.files {
        match mqflux::forecast::Series::from_csv(path) {
            Ok(s) => sources.push(s),
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    for (i, q) in a.queries.iter().enumerate() {
        match fc::read_series(
            &client,
            &format!("query{}", i + 1),
            q,
            a.step_secs.map(|s| s as i64),
        ) {
            Ok(s) => sources.push(s),
            Err(e) => {
                eprintln!("error: --query {q:?}: {e}");
                failed += 1;
            }
        }
    }
    if self_metrics {
        for (name, field) in fc::SELF_SERIES {
            let q = fc::self_metrics_query(
                &config.sink.self_metrics_measurement,
                field,
                f.history_secs,
                f.step_secs,
            );
            match fc::read_series(&client, name, &q, step) {
                Ok(s) => sources.push(s),
                Err(e) => {
                    eprintln!(
                        "error: self metrics {name} from {} database {:?}: {e}",
                        config.sink.url, config.sink.database
                    );
                    failed += 1;
                }
            }
        }
    }
    let mut forecasts = Vec::new();
    let mut markdown = Vec::new();
    for series in sources {
        let mut s = settings.clone();
        s.horizon = match a.horizon_steps {
            Some(h) => h as usize,
            None => (f.horizon_secs / series.step_s.max(1) as u64).max(1) as usize,
        };
        let e = fc::evaluate(series, &s);
        println!(
            "== {}: {} points, step {} s ({} filled), horizon {} steps, {} origins ==",
            e.series.name,
            e.series.len(),
            e.series.step_s,
            e.series.filled,
            e.horizon,
            s.origins
        );
        print!("{}", fc::score_table(&e, s.level));
        for score in &e.scores {
            markdown.push(format!(
                "| {} | {} | {:.3} | {:.3} | {:.0} |",
                e.series.name, score.model, score.mase, score.coverage, score.fit_ms
            ));
        }
        match (&e.winner, &e.forecast) {
            (Some(w), Some(fcast)) => {
                println!("{}", w.describe());
                if !a.no_forecast {
                    print!("{}", fc::forecast_table(&e, fcast));
                }
                forecasts.push((e.series.name.clone(), fcast.clone()));
            }
            _ => {
                println!("no model could be fitted at every origin: no forecast");
                failed += 1;
            }
        }
        println!();
    }
    if a.markdown {
        println!("| series | model | MASE | coverage | fit ms |");
        println!("| --- | --- | ---: | ---: | ---: |");
        for row in markdown {
            println!("{row}");
        }
        println!();
    }
    if self_metrics {
        if let [(_, bytes), (_, points), (_, mqtt)] = &forecasts[..] {
            let peak = fc::peak_rates(bytes, points, mqtt);
            let r = mqflux::forecast::recommend(&peak, &fc::sizing(&f, &config.sink));
            let sink = &config.sink;
            println!(
                "recommendation for a {} s outage at the forecast peak ({:.0} B/s to the sink, {:.1} points/s, {:.0} MQTT B/s; headroom x{}):",
                f.outage_secs, peak.sink_bytes, peak.sink_points, peak.mqtt_bytes, f.headroom
            );
            println!(
                "  sink.spool_max_bytes        = {:<12} (now {})",
                r.spool_max_bytes, sink.spool_max_bytes
            );
            println!(
                "  bridge queue_max_bytes      = {:<12}",
                r.bridge_queue_max_bytes
            );
            println!(
                "  sink.batch_size             = {:<12} (now {})",
                r.batch_size, sink.batch_size
            );
            println!(
                "  sink.queue_capacity         = {:<12} (now {})",
                r.queue_capacity, sink.queue_capacity
            );
            if let Some(w) = mqflux::forecast::spool_shortfall(
                sink.spool_max_bytes,
                peak.sink_bytes,
                f.outage_secs as f64,
            ) {
                println!("warning: {w}");
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `mqflux check-config FILE`: every error on stderr, or a one-line summary on stdout.
fn check_config(file: &Path) -> ExitCode {
    let loaded = Config::load_with(file, &mqflux::broker::tls::check_listener).and_then(|c| {
        // The bridges' TLS files must load, as the listeners' must.
        let errors: Vec<mqflux::config::ConfigError> = c
            .bridges
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let message = mqflux::bridge::tls_problem(b)?;
                Some(mqflux::config::ConfigError {
                    file: file.to_path_buf(),
                    key: format!("bridges[{i}].bridge_cafile"),
                    message,
                })
            })
            .collect();
        if errors.is_empty() {
            Ok(c)
        } else {
            Err(errors)
        }
    });
    match loaded {
        Ok(c) => {
            let listeners: Vec<String> = c.listeners.iter().map(|l| l.url()).collect();
            // Warnings do not fail the check: the file is valid, but who may connect deserves
            // a second look.
            for w in c.security.access_warnings(&c.listeners) {
                eprintln!("warning: {}: {w}", file.display());
            }
            let bridges: Vec<&str> = c.bridges.iter().map(|b| b.connection.as_str()).collect();
            println!(
                "{}: ok (listeners {}, $SYS {}, metrics {}, dashboard {}, InfluxDB sink {}, bridges {})",
                file.display(),
                listeners.join(" "),
                match c.sys_interval {
                    0 => "off".to_string(),
                    n => format!("every {n}s"),
                },
                c.metrics.bind.as_deref().unwrap_or("off"),
                c.dashboard.bind.as_deref().unwrap_or("off"),
                if c.sink.enabled { "on" } else { "off" },
                if bridges.is_empty() {
                    "none".to_string()
                } else {
                    bridges.join(" ")
                },
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!("{}: {} error(s)", file.display(), errors.len());
            ExitCode::FAILURE
        }
    }
}

fn run_broker(cli: &RunArgs) -> ExitCode {
    let config = match load_config(cli) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                error!("config error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    match run(config, cli.recover, cli.config.as_deref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &RunArgs) -> Result<Config, Vec<mqflux::config::ConfigError>> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("(defaults)"));
    let mut config = match &cli.config {
        Some(p) => Config::load_with(p, &mqflux::broker::tls::check_listener)?,
        None => Config::default(),
    };
    // Command-line flags override the file; validate again so a bad --bind is reported too.
    if let Some(first) = config.listeners.first_mut() {
        if let Some(bind) = &cli.bind {
            first.bind = bind.clone();
        }
        if let Some(port) = cli.port {
            first.port = Some(port);
        }
    }
    config.log.messages |= cli.log_messages;
    config.validate_with(&path, &mqflux::broker::tls::check_listener)?;
    for w in config.security.access_warnings(&config.listeners) {
        warn!("{w}");
    }
    Ok(config)
}

fn run(config: Config, recover: bool, config_path: Option<&Path>) -> Result<(), String> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let security = SecurityFiles::load(
        config.security.password_file.as_deref(),
        config.security.acl_file.as_deref(),
    )
    .map_err(|e| format!("cannot load security files: {e}"))?;
    let sink =
        Sink::start(&config.sink).map_err(|e| format!("cannot start the InfluxDB sink: {e}"))?;
    let sys_interval = Duration::from_secs(config.sys_interval);
    let metrics_addr = config.metrics.bind_addr();
    let dashboard_addr = config.dashboard.bind_addr();
    let store = match config.persistence.enabled_dir() {
        Some(dir) => {
            let interval = Duration::from_secs(config.persistence.periodic_interval_secs);
            let mode = config.persistence.mode;
            Some(
                mqflux::broker::persist::open(dir, mode, interval, recover)
                    .map_err(|e| format!("cannot open the persistence store: {e}"))?,
            )
        }
        None => {
            info!("persistence off (no persistence.dir, or mode \"off\"): sessions, retained and queued messages are lost at restart");
            None
        }
    };
    let broker = Broker::new(config, sink, security);
    if let Some((store, loaded)) = store {
        broker.attach_store(store, loaded);
    }
    broker
        .start_housekeeping()
        .map_err(|e| format!("cannot start the housekeeping thread: {e}"))?;
    // Before any listener opens: a publish matching a bridge must find its queue.
    let bridges = if broker.config.bridges.is_empty() {
        None
    } else {
        let bridges = Bridges::start(&broker, recover).inspect_err(|_| {
            broker.shutdown(Duration::from_secs(1));
        })?;
        broker.set_forward(bridges.clone());
        Some(bridges)
    };
    let stop_bridges = || {
        if let Some(b) = &bridges {
            b.stop();
        }
    };
    let mut listeners = Vec::new();
    for (i, settings) in broker.config.listeners.iter().enumerate() {
        match Listener::start(&broker, settings) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                // Release what is already running before giving up.
                stop_bridges();
                broker.shutdown(Duration::from_secs(1));
                listeners.into_iter().for_each(Listener::stop);
                return Err(format!("listeners[{i}]: {e}"));
            }
        }
    }
    let sys = SysPublisher::start(&broker, sys_interval)
        .map_err(|e| format!("cannot start the $SYS publisher: {e}"));
    let (self_metrics, forecast) = match (
        SelfMetrics::start(&broker),
        ForecastPublisher::start(&broker),
    ) {
        (Ok(m), Ok(f)) => (m, f),
        (m, f) => {
            // Release what is already running before giving up.
            let error = format!(
                "cannot start the self-metrics or forecast thread: {}",
                m.as_ref()
                    .err()
                    .or(f.as_ref().err())
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            );
            if let Ok(Some(f)) = f {
                f.stop();
            }
            if let Ok(Some(m)) = m {
                m.stop();
            }
            if let Ok(Some(sys)) = sys {
                sys.stop();
            }
            broker.shutdown(Duration::from_secs(1));
            listeners.into_iter().for_each(Listener::stop);
            return Err(error);
        }
    };
    let warnings: Vec<mqflux::ops::metrics::Warning> = forecast
        .iter()
        .map(|f| Box::new(f.warning()) as mqflux::ops::metrics::Warning)
        .collect();
    let metrics = match metrics_addr {
        Some(addr) => {
            let probes = listeners
                .iter()
                .map(|l| Box::new(l.probe()) as mqflux::ops::metrics::Probe)
                .collect();
            MetricsServer::start(&broker, addr, probes, warnings).map(Some)
        }
        None => Ok(None),
    };
    let dashboard = match dashboard_addr {
        Some(addr) => DashboardServer::start(&broker, addr).map(Some),
        None => Ok(None),
    };
    let (sys, metrics, dashboard) = match (sys, metrics, dashboard) {
        (Ok(sys), Ok(metrics), Ok(dashboard)) => (sys, metrics, dashboard),
        (sys, metrics, dashboard) => {
            // Release what is already running before giving up.
            let error = sys
                .as_ref()
                .err()
                .or(metrics.as_ref().err())
                .or(dashboard.as_ref().err())
                .cloned();
            if let Ok(Some(sys)) = sys {
                sys.stop();
            }
            if let Ok(Some(metrics)) = metrics {
                metrics.stop();
            }
            if let Ok(Some(dashboard)) = dashboard {
                dashboard.stop();
            }
            if let Some(f) = forecast {
                f.stop();
            }
            if let Some(m) = self_metrics {
                m.stop();
            }
            stop_bridges();
            broker.shutdown(Duration::from_secs(1));
            listeners.into_iter().for_each(Listener::stop);
            return Err(error.unwrap_or_default());
        }
    };
    info!("mqflux {} ready", env!("CARGO_PKG_VERSION"));

    for signal in signals.forever() {
        if signal == SIGHUP {
            // Connections stay up and pick the new rules up at their next check, except those
            // whose credentials no longer hold.
            match broker.reload_security() {
                Ok(generation) => {
                    info!("SIGHUP: password and ACL files reloaded (generation {generation})")
                }
                Err(e) => warn!("SIGHUP: reload failed, keeping the previous files: {e}"),
            }
            if let (Some(bridges), Some(path)) = (&bridges, config_path) {
                // A bridge whose `connection` stays keeps its queue (`Bridges::reload`).
                match Config::load_with(path, &mqflux::broker::tls::check_listener) {
                    Ok(new) => bridges.reload(&new.bridges),
                    Err(errors) => {
                        for e in errors {
                            warn!("SIGHUP: bridges not reloaded: {e}");
                        }
                    }
                }
            }
            continue;
        }
        info!("received signal {signal}, shutting down");
        break;
    }
    if let Some(sys) = sys {
        sys.stop();
    }
    // The bridges first: their DISCONNECT goes out and their queues are closed (a publish
    // arriving after that is not acknowledged, so its client sends it again).
    stop_bridges();
    // Before the sink stops: both hand it what they write.
    if let Some(f) = forecast {
        f.stop();
    }
    if let Some(m) = self_metrics {
        m.stop();
    }
    // /health answers 503 "shutting down" from here until the metrics server stops.
    broker.shutdown(Duration::from_secs(5));
    listeners.into_iter().for_each(Listener::stop);
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    if let Some(dashboard) = dashboard {
        dashboard.stop();
    }
    info!("stopped");
    Ok(())
}
