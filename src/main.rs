//! mqflux daemon entry point: CLI, config, start the sink and the listeners, wait for a signal.

use clap::Parser;
use log::{error, info};
use mqflux::broker::listener::Listener;
use mqflux::broker::Broker;
use mqflux::config::Config;
use mqflux::sink::Sink;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// An MQTT 3.1.1/5.0 broker that also stores every published message in InfluxDB.
#[derive(Parser, Debug)]
#[command(name = "mqflux", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Without it the built-in defaults apply; see config.example.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address of the first listener; overrides its `bind` (default 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,

    /// Port of the first listener; overrides its `port` (default 1883). 0 picks a free port.
    #[arg(short, long, value_name = "PORT")]
    port: Option<u16>,

    /// More log output: -v for debug, -vv for trace. RUST_LOG, if set, takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Less log output: -q for warnings and errors only, -qq for errors only.
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,

    /// Log the topic and payload of every message the broker accepts (same as `log.messages`).
    #[arg(long)]
    log_messages: bool,
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

    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                error!("config error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config, Vec<mqflux::config::ConfigError>> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("(defaults)"));
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
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
    config.validate(&path)?;
    Ok(config)
}

fn run(config: Config) -> Result<(), String> {
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let sink =
        Sink::start(&config.sink).map_err(|e| format!("cannot start the InfluxDB sink: {e}"))?;
    let broker = Broker::new(config, sink);
    let housekeeping = broker
        .start_housekeeping()
        .map_err(|e| format!("cannot start the housekeeping thread: {e}"))?;
    let mut listeners = Vec::new();
    for (i, settings) in broker.config.listeners.iter().enumerate() {
        match Listener::start(&broker, settings) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                // Release what is already running before giving up.
                broker.shutdown(Duration::from_secs(1));
                listeners.into_iter().for_each(Listener::stop);
                return Err(format!("listeners[{i}]: {e}"));
            }
        }
    }
    info!("mqflux {} ready", env!("CARGO_PKG_VERSION"));

    let mut signals = signals;
    if let Some(signal) = signals.forever().next() {
        info!("received signal {signal}, shutting down");
    }
    broker.shutdown(Duration::from_secs(5));
    listeners.into_iter().for_each(Listener::stop);
    let _ = housekeeping.join();
    info!("stopped");
    Ok(())
}
