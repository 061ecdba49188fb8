//! mqflux daemon entry point: CLI, config, start the sink and the listeners, wait for a signal.

use clap::{Args, Parser, Subcommand};
use log::{error, info, warn};
use mqflux::bridge::Bridges;
use mqflux::broker::listener::Listener;
use mqflux::broker::security::SecurityFiles;
use mqflux::broker::Broker;
use mqflux::config::Config;
use mqflux::ops::dashboard::DashboardServer;
use mqflux::ops::metrics::MetricsServer;
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
        None => run_broker(&cli.run),
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
    let metrics = match metrics_addr {
        Some(addr) => {
            let probes = listeners
                .iter()
                .map(|l| Box::new(l.probe()) as mqflux::ops::metrics::Probe)
                .collect();
            MetricsServer::start(&broker, addr, probes).map(Some)
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
