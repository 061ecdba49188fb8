//! mqflux daemon entry point: CLI, config, start the sink and the listener, wait for a signal.

use clap::{Args, Parser, Subcommand};
use log::{error, info};
use mqflux::broker::listener::Listener;
use mqflux::broker::sys::SysPublisher;
use mqflux::broker::Broker;
use mqflux::config::Config;
use mqflux::metrics::MetricsServer;
use mqflux::sink::Sink;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// An MQTT 3.1.1/5.0 broker that also stores every published message in InfluxDB.
///
/// Without a subcommand, runs the broker.
#[derive(Parser, Debug)]
#[command(
    name = "mqflux",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
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
}

/// Options for running the broker (`mqflux [OPTIONS]`).
#[derive(Args, Debug)]
struct RunArgs {
    /// Configuration file (TOML). Without it the built-in defaults apply; see config.example.toml.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on; overrides `listener.bind` (default 0.0.0.0).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,

    /// TCP port to listen on; overrides `listener.port` (default 1883). 0 picks a free port.
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
    match cli.command {
        Some(Command::CheckConfig { file }) => check_config(&file),
        None => run_broker(&cli.run),
    }
}

/// `mqflux check-config FILE`: every error on stderr, or a one-line summary on stdout.
fn check_config(file: &Path) -> ExitCode {
    match Config::load(file) {
        Ok(c) => {
            println!(
                "{}: ok (listener {}:{}, $SYS {}, metrics {}, InfluxDB sink {})",
                file.display(),
                c.listener.bind,
                c.listener.port,
                match c.sys_interval {
                    0 => "off".to_string(),
                    n => format!("every {n}s"),
                },
                c.metrics.bind.as_deref().unwrap_or("off"),
                if c.sink.enabled { "on" } else { "off" },
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

    let config = match load_config(cli) {
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

fn load_config(cli: &RunArgs) -> Result<Config, Vec<mqflux::config::ConfigError>> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("(defaults)"));
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    // Command-line flags override the file; validate again so a bad --bind is reported too.
    if let Some(bind) = &cli.bind {
        config.listener.bind = bind.clone();
    }
    if let Some(port) = cli.port {
        config.listener.port = port;
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
    let ip = config
        .listener
        .bind
        .parse()
        .map_err(|e| format!("listener.bind: {e}"))?;
    let addr = SocketAddr::new(ip, config.listener.port);
    let sink =
        Sink::start(&config.sink).map_err(|e| format!("cannot start the InfluxDB sink: {e}"))?;
    let sys_interval = Duration::from_secs(config.sys_interval);
    let metrics_addr = config.metrics.bind_addr();
    let broker = Broker::new(config, sink);
    let housekeeping = broker
        .start_housekeeping()
        .map_err(|e| format!("cannot start the housekeeping thread: {e}"))?;
    let listener = Listener::start(&broker, addr).map_err(|e| e.to_string())?;
    let sys = SysPublisher::start(&broker, sys_interval)
        .map_err(|e| format!("cannot start the $SYS publisher: {e}"))?;
    let metrics = match metrics_addr {
        Some(a) => Some(MetricsServer::start(
            &broker,
            a,
            vec![Box::new(listener.probe())],
        )?),
        None => None,
    };
    info!("mqflux {} ready", env!("CARGO_PKG_VERSION"));

    let mut signals = signals;
    if let Some(signal) = signals.forever().next() {
        info!("received signal {signal}, shutting down");
    }
    if let Some(sys) = sys {
        sys.stop();
    }
    // /health answers 503 "shutting down" from here until the metrics server stops.
    broker.shutdown(Duration::from_secs(5));
    listener.stop();
    let _ = housekeeping.join();
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    info!("stopped");
    Ok(())
}
