//! TOML configuration: structs with defaults, and validation whose every error names the file,
//! the key and what was expected.
//!
//! Why this file is over ~700 lines of code: it holds the settings that belong to no lower
//! floor — the broker's own (listeners, limits, security, persistence, log), the ops floor's
//! (`[metrics]`, `[dashboard]`) — with their checks, and the loading that turns every problem
//! into one located `ConfigError`. The other parts' settings live beside their code
//! (`sink/config.rs`, `bridge/config.rs`, `forecast`). The next split, when it grows again, is
//! a `config/` folder with a file per section.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A configuration problem, always tied to the file and key it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `limits.max_inflight`; empty for file-level problems.
    pub key: String,
    /// What is wrong and what was expected instead.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: key `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seconds between `$SYS/broker/...` updates; 0 disables the `$SYS` tree.
    pub sys_interval: u64,
    /// Every `[[listeners]]` table; one plain MQTT listener on 127.0.0.1:1883 (loopback only)
    /// when none is given.
    pub listeners: Vec<ListenerConfig>,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    pub security: SecurityConfig,
    pub sink: crate::sink::SinkConfig,
    pub metrics: MetricsConfig,
    pub persistence: PersistenceConfig,
    pub forecast: crate::forecast::ForecastConfig,
    pub dashboard: DashboardConfig,
    /// Every `[[bridges]]` table (`crate::bridge::config`): mosquitto's bridge keys plus the
    /// durable queue's.
    pub bridges: Vec<crate::bridge::config::BridgeConfig>,
}

/// The web dashboard (`ops::dashboard`): pages and a JSON API about the broker and the sink.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardConfig {
    /// "IP:PORT" to serve on, e.g. "127.0.0.1:18083"; absent = no dashboard. Not the address
    /// of `metrics.bind` (each is its own server).
    pub bind: Option<String>,
    /// Users of `security.password_file` who may kick clients, discard sessions and delete
    /// retained messages (HTTP Basic). Empty: nobody may.
    pub admins: Vec<String>,
    /// Ask for a password file user (HTTP Basic) for the read-only pages and API too.
    pub require_login: bool,
    /// TLS certificate chain and key (PEM); required when `bind` is not a loopback address.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl DashboardConfig {
    pub fn bind_addr(&self) -> Option<std::net::SocketAddr> {
        self.bind.as_deref().and_then(|b| b.parse().ok())
    }

    /// The TLS settings as a listener's, so the listeners' TLS helpers load them.
    pub fn tls_listener(&self) -> Option<ListenerConfig> {
        if self.cert_file.is_none() && self.key_file.is_none() {
            return None;
        }
        Some(ListenerConfig {
            protocol: ListenerProtocol::Mqtts,
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            ..ListenerConfig::default()
        })
    }

    /// Every problem with these settings, as (key under `dashboard.`, message).
    fn problems(&self, security: &SecurityConfig, check: ListenerCheck) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(bind) = &self.bind else {
            return out;
        };
        let addr = match bind.parse::<std::net::SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                out.push((
                    "bind".into(),
                    format!("expected IP:PORT like \"127.0.0.1:18083\", got {bind:?}"),
                ));
                return out;
            }
        };
        match self.tls_listener() {
            None if !addr.ip().to_canonical().is_loopback() => out.push((
                "cert_file".into(),
                format!(
                    "expected a PEM certificate (and key_file): the dashboard on {bind} is \
                     reachable from other machines and must be served over TLS (or bind a \
                     loopback address such as 127.0.0.1)"
                ),
            )),
            None => {}
            Some(listener) => {
                if let Err((key, message)) = check(&listener) {
                    out.push((key.into(), message));
                }
            }
        }
        let needs_users = !self.admins.is_empty() || self.require_login;
        if needs_users && security.password_file.is_none() {
            let key = if self.admins.is_empty() {
                "require_login"
            } else {
                "admins"
            };
            out.push((
                key.into(),
                "expected security.password_file to be set: dashboard users are the password \
                 file's users"
                    .into(),
            ));
        }
        for (i, admin) in self.admins.iter().enumerate() {
            if admin.is_empty() || admin.contains(':') {
                out.push((
                    format!("admins[{i}]"),
                    format!("expected a password file user name (no ':'), got {admin:?}"),
                ));
            }
        }
        out
    }
}

/// The HTTP endpoint serving `/metrics` (Prometheus) and `/health`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// "IP:PORT" to serve on, e.g. "127.0.0.1:9883"; absent = no endpoint.
    pub bind: Option<String>,
}

impl MetricsConfig {
    pub fn bind_addr(&self) -> Option<std::net::SocketAddr> {
        self.bind.as_deref().and_then(|b| b.parse().ok())
    }
}

/// The store's setting, embedded here (see `crate::store`).
pub use crate::store::PersistenceMode;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PersistenceConfig {
    /// Directory of the store (created if missing). Without it nothing is persisted, whatever
    /// the mode: a broker never writes to a place its operator did not name.
    pub dir: Option<PathBuf>,
    pub mode: PersistenceMode,
    /// fsync interval for `mode = "periodic"`.
    pub periodic_interval_secs: u64,
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            dir: None,
            mode: PersistenceMode::Sync,
            periodic_interval_secs: 1,
        }
    }
}

impl PersistenceConfig {
    /// The store directory, when persistence is on.
    pub fn enabled_dir(&self) -> Option<&Path> {
        match self.mode {
            PersistenceMode::Off => None,
            _ => self.dir.as_deref(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sys_interval: 10,
            // Secure by default, as mosquitto 2.0: a broker nobody configured serves this
            // machine only. A `[[listeners]]` table without `bind` still means every interface
            // (mosquitto's `listener 1883`), where anonymous clients need an explicit
            // `security.allow_anonymous = true` (see `SecurityConfig::anonymous_access`). Only
            // 127.0.0.1, not also ::1: a second default listener would fail to bind on hosts
            // without IPv6 loopback, and `--bind`/`--port` act on one listener.
            listeners: vec![ListenerConfig {
                bind: DEFAULT_BIND.into(),
                ..ListenerConfig::default()
            }],
            forecast: crate::forecast::ForecastConfig::default(),
            limits: LimitsConfig::default(),
            log: LogConfig::default(),
            security: SecurityConfig::default(),
            sink: Default::default(),
            metrics: MetricsConfig::default(),
            persistence: PersistenceConfig::default(),
            bridges: Vec::new(),
            dashboard: DashboardConfig::default(),
        }
    }
}

/// Address of the listener the broker opens when none is configured: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1";

/// What a listener speaks on its socket. MQTT is carried as-is, inside TLS, inside WebSocket
/// binary frames, or inside WebSocket over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    Mqtts,
    Ws,
    Wss,
}

impl ListenerProtocol {
    /// URL scheme used in log lines (`tcp://` for plain MQTT, as tests and tools expect).
    pub fn scheme(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "tcp",
            ListenerProtocol::Mqtts => "mqtts",
            ListenerProtocol::Ws => "ws",
            ListenerProtocol::Wss => "wss",
        }
    }

    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            ListenerProtocol::Mqtt => "mqtt",
            other => other.scheme(),
        }
    }

    /// Port used when the listener does not set one.
    pub fn default_port(self) -> u16 {
        match self {
            ListenerProtocol::Mqtt => 1883,
            ListenerProtocol::Mqtts => 8883,
            ListenerProtocol::Ws => 8080,
            ListenerProtocol::Wss => 8081,
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ListenerProtocol::Mqtts | ListenerProtocol::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerProtocol::Ws | ListenerProtocol::Wss)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// "mqtt" (default), "mqtts" (TLS), "ws" (WebSocket) or "wss" (WebSocket over TLS).
    pub protocol: ListenerProtocol,
    /// Address to bind, e.g. "0.0.0.0" or "127.0.0.1". "0.0.0.0" in a `[[listeners]]` table
    /// that does not set it; the listener used when there is no table binds `DEFAULT_BIND`.
    pub bind: String,
    /// TCP port; None = the protocol's default (see `port()`); 0 picks a free port.
    pub port: Option<u16>,
    /// Concurrent connections on this listener (TLS/WebSocket handshakes included); further
    /// connections are closed at accept. 0 = unlimited (`limits.max_connections` still applies).
    pub max_connections: usize,
    /// mqtts/wss: the server certificate chain (PEM).
    pub cert_file: Option<PathBuf>,
    /// mqtts/wss: the server private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// mqtts/wss: CA certificates (PEM) that client certificates are verified against.
    pub ca_file: Option<PathBuf>,
    /// mqtts/wss: refuse clients without a certificate signed by `ca_file`.
    pub require_certificate: bool,
    /// mqtts/wss: the client certificate's subject CN becomes the client's username.
    pub use_identity_as_username: bool,
    /// ws/wss: the HTTP path of the WebSocket endpoint (default "/mqtt").
    pub path: Option<String>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            protocol: ListenerProtocol::Mqtt,
            bind: "0.0.0.0".into(),
            port: None,
            max_connections: 0,
            cert_file: None,
            key_file: None,
            ca_file: None,
            require_certificate: false,
            use_identity_as_username: false,
            path: None,
        }
    }
}

impl ListenerConfig {
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.protocol.default_port())
    }

    pub fn websocket_path(&self) -> &str {
        self.path.as_deref().unwrap_or("/mqtt")
    }

    /// True when `bind` is a loopback address (127.0.0.0/8, ::1, or ::ffff:127.x.y.z): only
    /// processes on this machine can reach the listener.
    pub fn is_loopback(&self) -> bool {
        self.bind
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// `SCHEME://BIND:PORT` as configured (port 0 stays 0), for check-config and log lines.
    pub fn url(&self) -> String {
        let bind = match self.bind.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => format!("[{}]", self.bind),
            _ => self.bind.clone(),
        };
        format!("{}://{bind}:{}", self.protocol.scheme(), self.port())
    }

    /// Problems with this listener as (key inside the table, message). `check` looks at what
    /// the settings name (the TLS files), see `ListenerCheck`.
    fn problems(&self, check: ListenerCheck) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if self.bind.parse::<std::net::IpAddr>().is_err() {
            problems.push((
                "bind",
                format!(
                    "expected an IP address like \"0.0.0.0\", got {:?}",
                    self.bind
                ),
            ));
        }
        let protocol = self.protocol;
        if protocol.is_tls() {
            if (self.require_certificate || self.use_identity_as_username) && self.ca_file.is_none()
            {
                problems.push((
                    "ca_file",
                    "required when require_certificate or use_identity_as_username is set \
                     (the CA that signs client certificates)"
                        .into(),
                ));
            } else if let Err(problem) = check(self) {
                problems.push(problem);
            }
        } else {
            let tls_keys = [
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
                ("ca_file", self.ca_file.is_some()),
                ("require_certificate", self.require_certificate),
                ("use_identity_as_username", self.use_identity_as_username),
            ];
            for (key, set) in tls_keys {
                if set {
                    problems.push((
                        key,
                        format!(
                            "only used by TLS listeners (protocol \"mqtts\" or \"wss\"), \
                             this one is {:?}",
                            protocol.name()
                        ),
                    ));
                }
            }
        }
        match &self.path {
            Some(_) if !protocol.is_websocket() => problems.push((
                "path",
                "only used by WebSocket listeners (protocol \"ws\" or \"wss\")".into(),
            )),
            Some(p) if !p.starts_with('/') => problems.push((
                "path",
                format!("expected an HTTP path starting with \"/\", got {p:?}"),
            )),
            _ => {}
        }
        problems
    }
}

/// What happens when a connected subscriber's QoS 1/2 queue (`limits.max_queued`) is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueFullPolicy {
    /// The publishers feeding it stop being read (and so acknowledged) until it has room:
    /// nothing acknowledged is dropped for a connected subscriber (see `broker::flow`).
    #[default]
    Backpressure,
    /// The message is dropped for that subscriber and counted (mosquitto's behaviour).
    Drop,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent client connections; further connections are closed at accept. 0 = unlimited.
    pub max_connections: usize,
    /// Largest packet accepted, in bytes (fixed header included); checked before allocating.
    pub max_packet_size: usize,
    /// Unacknowledged outgoing QoS 1/2 messages per client.
    pub max_inflight: u16,
    /// QoS 1/2 messages queued per client beyond the inflight window (also while offline).
    pub max_queued: usize,
    /// A connected client's queue at `max_queued`: hold the publishers back (default) or drop.
    pub queue_full: QueueFullPolicy,
    /// Seconds a connected subscriber may complete nothing while publishers wait on its full
    /// queue before it is disconnected (`queue_full = "backpressure"`).
    pub stalled_subscriber_secs: u64,
    /// Seconds a new socket may take to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// Packets waiting to be written to one client; QoS 0 messages beyond it are
    /// dropped (and counted) so that one slow reader cannot grow broker memory.
    pub outbound_queue: usize,
    /// v5 topic aliases a client may use towards the broker (0 disables them).
    pub max_topic_alias: u16,
    /// Longest keep-alive in seconds a v5 client may use: one asking for more, or for none (0),
    /// gets this as Server Keep Alive in CONNACK and is held to it. 0 = accept what the client
    /// asks. (v3.1.1 clients cannot be told, so their own value always applies.)
    pub max_keep_alive: u16,
    /// PUBLISH packets per second one client may send; a faster client is slowed down (the
    /// broker stops reading from it), nothing is dropped. 0 = unlimited.
    pub max_publish_rate: u32,
    /// Payload bytes per second one client may publish, enforced the same way. 0 = unlimited.
    pub max_publish_bytes_rate: u64,
    /// Topic filters one session may hold; a SUBSCRIBE filter beyond it is refused (SUBACK
    /// 0x80, or 0x97 Quota exceeded in v5). Re-subscribing to a held filter always works.
    /// 0 = unlimited.
    pub max_subscriptions_per_client: usize,
    /// Retained topics the broker stores; a retained PUBLISH to a new topic beyond it is routed
    /// but not stored (replacing or clearing a stored one always works). 0 = unlimited.
    pub max_retained_messages: usize,
    /// Bytes (topic + payload) of all retained messages, enforced like `max_retained_messages`.
    /// 0 = unlimited.
    pub max_retained_bytes: u64,
    /// Longest time in seconds a session outlives its connection: a v5 client asking for more
    /// is told this value in CONNACK, and a v3.1.1 persistent session (which would otherwise
    /// never expire) ends this long after its client left. 0 = no cap.
    pub max_session_expiry_secs: u64,
}

/// Default `limits.max_session_expiry_secs`: one week. Without a cap every v3.1.1 client id
/// that ever connected with clean session off keeps a session (subscriptions plus up to
/// `max_queued` messages) forever, so churned client ids grow memory without bound; a week
/// still outlasts any outage a client would want its queued messages back after.
pub const DEFAULT_MAX_SESSION_EXPIRY_SECS: u64 = 7 * 24 * 3600;

impl LimitsConfig {
    /// `max_session_expiry_secs` as a Session Expiry Interval; None when there is no cap.
    pub fn session_expiry_cap(&self) -> Option<u32> {
        (self.max_session_expiry_secs > 0).then(|| {
            self.max_session_expiry_secs
                .min(MAX_SESSION_EXPIRY_CAP as u64) as u32
        })
    }
}

/// Largest usable cap: 0xFFFFFFFF means "never expires" (MQTT 5.0 section 3.1.2.11.2).
const MAX_SESSION_EXPIRY_CAP: u32 = u32::MAX - 1;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_packet_size: 16 * 1024 * 1024,
            max_inflight: 20,
            max_queued: 1000,
            queue_full: QueueFullPolicy::Backpressure,
            stalled_subscriber_secs: 30,
            connect_timeout_secs: 10,
            outbound_queue: 1024,
            max_topic_alias: 10,
            max_keep_alive: 0,
            max_publish_rate: 0,
            max_publish_bytes_rate: 0,
            max_subscriptions_per_client: 1000,
            max_retained_messages: 100_000,
            max_retained_bytes: 256 * 1024 * 1024,
            max_session_expiry_secs: DEFAULT_MAX_SESSION_EXPIRY_SECS,
        }
    }
}

/// Authentication and authorization, with mosquitto-compatible files (reloaded on SIGHUP).
/// The default is secure: anonymous clients on loopback listeners only, no files.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Accept clients that send no username: `true` on every listener, `false` on none; unset,
    /// on loopback listeners only (see `anonymous_access`).
    pub allow_anonymous: Option<bool>,
    /// mosquitto-format password file (`$7$` PBKDF2-SHA512 or `$6$` entries).
    pub password_file: Option<PathBuf>,
    /// mosquitto-format ACL file.
    pub acl_file: Option<PathBuf>,
}

/// Whether one listener accepts clients without a username, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnonymousAccess {
    /// `allow_anonymous` unset and the listener is on a loopback address: clients on this
    /// machine only.
    LoopbackOnly,
    /// `allow_anonymous = true`: from wherever the listener can be reached.
    Allowed,
    /// `allow_anonymous` unset and the listener is not on a loopback address.
    RefusedNotLoopback,
    /// `allow_anonymous = false`.
    Refused,
    /// A listener with `use_identity_as_username`: the client certificate is the credential,
    /// there is no anonymous client.
    CertificateIdentity,
}

impl AnonymousAccess {
    /// Whether a CONNECT without a username may pass (a password file is still checked for a
    /// CONNECT with one).
    pub fn allows_anonymous(self) -> bool {
        matches!(
            self,
            AnonymousAccess::LoopbackOnly | AnonymousAccess::Allowed
        )
    }

    /// How the start-up log and check-config describe it, after the listener's URL.
    pub fn describe(self) -> &'static str {
        match self {
            AnonymousAccess::LoopbackOnly => {
                "accepts anonymous clients from this machine only (loopback address)"
            }
            AnonymousAccess::Allowed => {
                "accepts anonymous clients from any address that reaches it \
                 (security.allow_anonymous = true)"
            }
            AnonymousAccess::RefusedNotLoopback => {
                "refuses anonymous clients: not a loopback address and \
                 security.allow_anonymous is not set to true"
            }
            AnonymousAccess::Refused => {
                "refuses anonymous clients (security.allow_anonymous = false)"
            }
            AnonymousAccess::CertificateIdentity => {
                "authenticates clients by their certificate (use_identity_as_username)"
            }
        }
    }
}

impl SecurityConfig {
    /// Who may connect without a username on `listener`. As mosquitto 2.0: anonymous access is
    /// the default only where nobody but this machine can connect; a listener reachable from
    /// elsewhere needs an explicit `allow_anonymous = true`.
    pub fn anonymous_access(&self, listener: &ListenerConfig) -> AnonymousAccess {
        if listener.use_identity_as_username {
            return AnonymousAccess::CertificateIdentity;
        }
        match self.allow_anonymous {
            Some(true) => AnonymousAccess::Allowed,
            Some(false) => AnonymousAccess::Refused,
            None if listener.is_loopback() => AnonymousAccess::LoopbackOnly,
            None => AnonymousAccess::RefusedNotLoopback,
        }
    }

    /// Warnings about access for `mqflux check-config` and the start-up log, one per listener
    /// that needs one: anonymous clients accepted from other machines, or a listener that no
    /// client can pass (anonymous refused and no password file).
    pub fn access_warnings(&self, listeners: &[ListenerConfig]) -> Vec<String> {
        let mut warnings = Vec::new();
        for (i, l) in listeners.iter().enumerate() {
            let access = self.anonymous_access(l);
            if access == AnonymousAccess::Allowed && !l.is_loopback() {
                warnings.push(format!(
                    "listeners[{i}] ({}) accepts anonymous clients from other machines \
                     (security.allow_anonymous = true); set a security.password_file and \
                     remove allow_anonymous, or bind it to 127.0.0.1",
                    l.url()
                ));
            } else if !access.allows_anonymous()
                && access != AnonymousAccess::CertificateIdentity
                && self.password_file.is_none()
            {
                warnings.push(format!(
                    "listeners[{i}] ({}) {}, and there is no security.password_file: \
                     every client will be refused",
                    l.url(),
                    access.describe()
                ));
            }
        }
        warnings
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Log topic and payload of every PUBLISH the broker accepts (the "message logger").
    pub messages: bool,
}

/// A check of what a listener's settings name outside the file (its TLS certificate, key and
/// CA files: do they load, does the key match?), as (key inside the table, message). The
/// broker owns TLS (`broker::tls::check_listener`); configuration sits below it and never calls
/// broker code, so the caller (`main`) passes the check down through the `*_with` functions.
pub type ListenerCheck<'a> = &'a dyn Fn(&ListenerConfig) -> Result<(), (&'static str, String)>;

/// Checks nothing outside the file: what `load`, `parse_all` and `validate` use.
fn no_file_check(_: &ListenerConfig) -> Result<(), (&'static str, String)> {
    Ok(())
}

impl Config {
    /// Read, parse and validate a config file (without the listener file check, see
    /// `load_with`).
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::load_with(path, &no_file_check)
    }

    /// Read, parse and validate a config file, running `check` on each TLS listener.
    pub fn load_with(path: &Path, check: ListenerCheck) -> Result<Config, Vec<ConfigError>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                message: format!("cannot read file: {e}"),
            }]
        })?;
        Config::parse_all_with(&text, path, check)
    }

    /// Parse and validate TOML text, reporting every error rather than the first: after each
    /// error the offending line is commented out (so it takes its default) and parsing
    /// resumes, which keeps the line numbers of later errors right. A TOML syntax error ends
    /// the search, since nothing after it can be trusted.
    pub fn parse_all(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        Config::parse_all_with(text, path, &no_file_check)
    }

    /// `parse_all`, running `check` on each TLS listener.
    pub fn parse_all_with(
        text: &str,
        path: &Path,
        check: ListenerCheck,
    ) -> Result<Config, Vec<ConfigError>> {
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(vec![ConfigError {
                file: path.to_path_buf(),
                key: String::new(),
                message: format!(
                    "TOML syntax error{}: {}",
                    line_of(text, e.span()),
                    e.message()
                ),
            }]);
        }
        let mut text = text.to_string();
        let mut errors = Vec::new();
        // Each round comments out at least one line, so this ends.
        let config = loop {
            match Config::deserialize_spanned(&text, path) {
                Ok(config) => break Some(config),
                Err((error, span)) => {
                    errors.push(error);
                    let Some(span) = span else { break None };
                    match comment_out(&text, span.start) {
                        Some(t) if t.parse::<toml::Table>().is_ok() => text = t,
                        _ => break None,
                    }
                }
            }
        };
        if let Some(mut config) = config {
            config.resolve_paths(path);
            if let Err(more) = config.validate_with(path, check) {
                errors.extend(more);
            }
            if errors.is_empty() {
                return Ok(config);
            }
        }
        Err(errors)
    }

    /// Parse TOML text (first error only); `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::deserialize_spanned(text, path).map_err(|(e, _)| e)
    }

    fn deserialize_spanned(
        text: &str,
        path: &Path,
    ) -> Result<Config, (ConfigError, Option<std::ops::Range<usize>>)> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let error = ConfigError {
                file: path.to_path_buf(),
                key: if key == "." { String::new() } else { key },
                message: format!("{}{}", inner.message().trim(), line_of(text, inner.span())),
            };
            (error, inner.span())
        })
    }

    /// Make relative file paths relative to the config file's directory, not the working
    /// directory, so a config behaves the same whoever starts the broker.
    fn resolve_paths(&mut self, config_path: &Path) {
        let base = config_path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut self.security.password_file,
            &mut self.security.acl_file,
            &mut self.persistence.dir,
            &mut self.dashboard.cert_file,
            &mut self.dashboard.key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for bridge in &mut self.bridges {
            bridge.resolve_paths(base);
        }
    }

    /// Check value ranges that TOML types cannot express. Returns every problem found.
    pub fn validate(&self, path: &Path) -> Result<(), Vec<ConfigError>> {
        self.validate_with(path, &no_file_check)
    }

    /// `validate`, running `check` on each TLS listener.
    pub fn validate_with(&self, path: &Path, check: ListenerCheck) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        let mut bad = |key: &str, message: String| {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                key: key.into(),
                message,
            })
        };
        if self.listeners.is_empty() {
            bad(
                "listeners",
                "expected at least one [[listeners]] table (or none at all for the default)".into(),
            );
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            for (key, message) in listener.problems(check) {
                bad(&format!("listeners[{i}].{key}"), message);
            }
        }
        if self.sys_interval > 86_400 {
            bad(
                "sys_interval",
                format!(
                    "expected 0 (off) to 86400 seconds, got {}",
                    self.sys_interval
                ),
            );
        }
        if let Some(b) = &self.metrics.bind {
            if b.parse::<std::net::SocketAddr>().is_err() {
                bad(
                    "metrics.bind",
                    format!("expected IP:PORT like \"127.0.0.1:9883\", got {b:?}"),
                );
            }
        }
        for (key, message) in self.dashboard.problems(&self.security, check) {
            bad(&format!("dashboard.{key}"), message);
        }
        if let (Some(d), Some(m)) = (self.dashboard.bind_addr(), self.metrics.bind_addr()) {
            if d == m && d.port() != 0 {
                bad(
                    "dashboard.bind",
                    format!(
                        "expected another address than metrics.bind ({m}): each is its own server"
                    ),
                );
            }
        }
        let l = &self.limits;
        if !(16..=crate::protocol::MAX_REMAINING_LENGTH + 5).contains(&l.max_packet_size) {
            bad(
                "limits.max_packet_size",
                format!("expected 16 to 268435460 bytes, got {}", l.max_packet_size),
            );
        }
        if l.max_inflight == 0 {
            bad("limits.max_inflight", "expected 1 to 65535, got 0".into());
        }
        if l.connect_timeout_secs == 0 {
            bad(
                "limits.connect_timeout_secs",
                "expected at least 1 second, got 0".into(),
            );
        }
        if l.stalled_subscriber_secs == 0 || l.stalled_subscriber_secs > 86_400 {
            bad(
                "limits.stalled_subscriber_secs",
                format!(
                    "expected 1 to 86400 seconds, got {}",
                    l.stalled_subscriber_secs
                ),
            );
        }
        if l.outbound_queue == 0 {
            bad("limits.outbound_queue", "expected at least 1, got 0".into());
        }
        if l.max_session_expiry_secs > MAX_SESSION_EXPIRY_CAP as u64 {
            bad(
                "limits.max_session_expiry_secs",
                format!(
                    "expected 0 (no cap) to {MAX_SESSION_EXPIRY_CAP} seconds, got {}",
                    l.max_session_expiry_secs
                ),
            );
        }
        let files = [
            ("security.password_file", &self.security.password_file),
            ("security.acl_file", &self.security.acl_file),
        ];
        for (key, file) in files {
            if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                bad(
                    key,
                    format!(
                        "expected a readable file, but {} does not exist",
                        f.display()
                    ),
                );
            }
        }
        let p = &self.persistence;
        if p.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            bad(
                "persistence.dir",
                "expected a directory path, got an empty string".into(),
            );
        }
        if p.mode == PersistenceMode::Periodic && p.periodic_interval_secs == 0 {
            bad(
                "persistence.periodic_interval_secs",
                "expected at least 1 second, got 0".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, bridge) in self.bridges.iter().enumerate() {
            for (key, message) in bridge.problems() {
                bad(&format!("bridges[{i}].{key}"), message);
            }
            if bridge.queue_dir.is_none() && self.persistence.dir.is_none() {
                bad(
                    &format!("bridges[{i}].queue_dir"),
                    "expected a directory for the bridge's durable queue (or persistence.dir, \
                     under which it goes to bridges/<connection>)"
                        .into(),
                );
            }
            if !names.insert(bridge.connection.as_str()) {
                bad(
                    &format!("bridges[{i}].connection"),
                    format!(
                        "expected a name no other bridge has, but {:?} is used twice",
                        bridge.connection
                    ),
                );
            }
        }
        errors.extend(self.sink.validate(path));
        for (key, message) in self.forecast.problems() {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                key: format!("forecast.{key}"),
                message,
            });
        }
        if self.forecast.enabled && !(self.sink.enabled && self.sink.self_metrics) {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                key: "forecast.enabled".into(),
                message: "expected `sink.enabled = true` and `sink.self_metrics = true` as well: \
                          the forecast reads the broker's own history back from InfluxDB"
                    .into(),
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// " (line N)" for a byte span of `text`, or "" without one.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let start = s.start.min(text.len());
        format!(" (line {})", text[..start].matches('\n').count() + 1)
    })
    .unwrap_or_default()
}

/// `text` with the line holding byte `at` commented out; for a `[table]` header, the whole
/// table. None if that line is already a comment (no progress possible).
fn comment_out(text: &str, at: usize) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut offset = 0;
    let mut in_table = false;
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let is_header = trimmed.starts_with('[');
        let hit = (offset..offset + line.len()).contains(&at);
        if is_header && !hit {
            in_table = false;
        }
        if (hit || in_table) && !trimmed.starts_with('#') {
            out.push_str("# ");
            changed = true;
            in_table |= hit && is_header;
        }
        out.push_str(line);
        offset += line.len();
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_type_names_file_key_and_expectation() {
        let err =
            Config::parse("[limits]\nmax_inflight = \"many\"\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(err.key, "limits.max_inflight");
        let text = err.to_string();
        assert!(
            text.starts_with("x.toml: key `limits.max_inflight`:"),
            "{text}"
        );
        assert!(text.contains("expected u16"), "{text}");
    }

    #[test]
    fn forecast_needs_the_sink_and_its_self_metrics_and_names_bad_keys() {
        let errs =
            Config::parse_all("[forecast]\nenabled = true\n", Path::new("f.toml")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "forecast.enabled");
        assert!(errs[0].message.contains("sink.self_metrics"), "{}", errs[0]);
        let errs = Config::parse_all(
            "[sink]\nenabled = true\nself_metrics = true\nself_metrics_interval_secs = 0\n\
             [forecast]\nenabled = true\nlevel = 2.0\n",
            Path::new("f.toml"),
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["sink.self_metrics_interval_secs", "forecast.level"]
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = Config::parse("[limits]\nmax_infligt = 3\n", Path::new("x.toml")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `max_infligt`"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_values_are_all_listed() {
        let c = Config::parse(
            "[limits]\nmax_inflight = 0\nmax_packet_size = 1\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let errs = c.validate(Path::new("x.toml")).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"limits.max_inflight") && keys.contains(&"limits.max_packet_size"),
            "{keys:?}"
        );
    }

    #[test]
    fn listeners_array_takes_per_protocol_default_ports() {
        let c = Config::parse(
            "[[listeners]]\nprotocol = \"mqtts\"\n[[listeners]]\nprotocol = \"ws\"\n\
             [[listeners]]\nprotocol = \"wss\"\nport = 9001\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let ports: Vec<_> = c.listeners.iter().map(|l| l.port()).collect();
        assert_eq!(ports, [8883, 8080, 9001]);
        assert_eq!(c.listeners[1].websocket_path(), "/mqtt");
        assert_eq!(c.listeners[0].bind, "0.0.0.0");
    }

    #[test]
    fn unknown_protocol_names_the_listener_key() {
        let err = Config::parse(
            "[[listeners]]\n[[listeners]]\nprotocol = \"quic\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert_eq!(err.key, "listeners[1].protocol");
        assert!(err.message.contains("mqtts"), "{err}");
    }

    #[test]
    fn listener_problems_carry_the_index() {
        let c = Config::parse(
            "[[listeners]]\n[[listeners]]\nbind = \"localhost\"\nca_file = \"ca.pem\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let errs = c.validate(Path::new("x.toml")).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["listeners[1].bind", "listeners[1].ca_file"]);
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));
        let c = Config::load(path).unwrap();
        assert_eq!(c.listeners.len(), 1);
    }

    #[test]
    fn persistence_mode_must_be_known_and_interval_positive() {
        let err =
            Config::parse("[persistence]\nmode = \"always\"\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(err.key, "persistence.mode");
        assert!(err.to_string().contains("sync"), "{err}");
        let c = Config::parse(
            "[persistence]\nmode = \"periodic\"\nperiodic_interval_secs = 0\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let errs = c.validate(Path::new("x.toml")).unwrap_err();
        assert_eq!(errs[0].key, "persistence.periodic_interval_secs");
    }

    #[test]
    fn queue_full_policy_is_checked_and_defaults_to_backpressure() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.limits.queue_full, QueueFullPolicy::Backpressure);
        let c = Config::parse("[limits]\nqueue_full = \"drop\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.limits.queue_full, QueueFullPolicy::Drop);
        let err =
            Config::parse("[limits]\nqueue_full = \"block\"\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(err.key, "limits.queue_full");
        assert!(err.to_string().contains("backpressure"), "{err}");
        let c = Config::parse(
            "[limits]\nstalled_subscriber_secs = 0\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let errs = c.validate(Path::new("x.toml")).unwrap_err();
        assert_eq!(errs[0].key, "limits.stalled_subscriber_secs");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].port(), 1883);
        assert_eq!(c.listeners[0].protocol, ListenerProtocol::Mqtt);
        assert_eq!(c.limits.max_inflight, 20);
    }

    #[test]
    fn parse_all_lists_every_type_error_unknown_key_and_range_error() {
        let text = "sys_interval = -1\n[[listeners]]\nport = \"x\"\nbnd = \"::\"\n[limits]\nmax_inflight = 0\n[metrics]\nbind = \"localhost\"\n";
        let errs = Config::parse_all(text, Path::new("x.toml")).unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(errs.len(), 5, "{errs:#?}");
        for key in [
            "sys_interval",
            "listeners[0].port",
            "limits.max_inflight",
            "metrics.bind",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(errs
            .iter()
            .any(|e| e.message.contains("unknown field `bnd`")));
        let port = errs.iter().find(|e| e.key == "listeners[0].port").unwrap();
        assert!(port.message.contains("expected u16"), "{port}");
        assert!(port.message.contains("(line 3)"), "{port}");
        assert!(errs.iter().all(|e| e.file == Path::new("x.toml")));
    }

    #[test]
    fn parse_all_skips_an_unknown_table_with_its_keys() {
        let text = "[listner]\nport = 1\nbind = \"x\"\n[limits]\nmax_inflight = \"y\"\n";
        let errs = Config::parse_all(text, Path::new("x.toml")).unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:#?}");
        assert!(
            errs[0].message.contains("unknown field `listner`"),
            "{}",
            errs[0]
        );
        assert_eq!(errs[1].key, "limits.max_inflight");
    }

    #[test]
    fn syntax_error_is_reported_with_its_line() {
        let errs =
            Config::parse_all("[limits]\nmax_inflight = = 3\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].message.contains("syntax error (line 2)"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn memory_limits_have_their_defaults_and_session_cap_is_range_checked() {
        let c = Config::parse_all("", Path::new("x.toml")).unwrap();
        assert_eq!(c.limits.max_subscriptions_per_client, 1000);
        assert_eq!(c.limits.max_retained_messages, 100_000);
        assert_eq!(c.limits.max_retained_bytes, 256 * 1024 * 1024);
        assert_eq!(c.limits.session_expiry_cap(), Some(604_800));
        let c = Config::parse_all(
            "[limits]\nmax_session_expiry_secs = 0\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.limits.session_expiry_cap(), None);
        let errs = Config::parse_all(
            "[limits]\nmax_session_expiry_secs = 4294967295\nmax_retained_bytes = -1\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "limits.max_retained_bytes",
                "limits.max_session_expiry_secs"
            ],
            "{errs:#?}"
        );
        assert!(errs[1]
            .to_string()
            .starts_with("x.toml: key `limits.max_session_expiry_secs`:"));
    }

    #[test]
    fn default_listener_is_loopback_but_a_listener_table_without_bind_is_every_interface() {
        let c = Config::parse_all("", Path::new("x.toml")).unwrap();
        assert_eq!(c.listeners[0].bind, "127.0.0.1");
        assert!(c.listeners[0].is_loopback());
        let c = Config::parse_all("[[listeners]]\nport = 1884\n", Path::new("x.toml")).unwrap();
        assert_eq!(c.listeners[0].bind, "0.0.0.0");
        assert!(!c.listeners[0].is_loopback());
    }

    #[test]
    fn anonymous_access_depends_on_the_listener_address_unless_set_explicitly() {
        let listener = |bind: &str| ListenerConfig {
            bind: bind.into(),
            ..ListenerConfig::default()
        };
        let security = |allow: Option<bool>| SecurityConfig {
            allow_anonymous: allow,
            ..SecurityConfig::default()
        };
        use AnonymousAccess::*;
        let cases = [
            (None, "127.0.0.1", LoopbackOnly),
            (None, "127.0.0.53", LoopbackOnly),
            (None, "::1", LoopbackOnly),
            (None, "::ffff:127.0.0.1", LoopbackOnly),
            (None, "0.0.0.0", RefusedNotLoopback),
            (None, "::", RefusedNotLoopback),
            (None, "192.168.1.10", RefusedNotLoopback),
            (Some(true), "0.0.0.0", Allowed),
            (Some(true), "127.0.0.1", Allowed),
            (Some(false), "127.0.0.1", Refused),
        ];
        for (allow, bind, expected) in cases {
            let got = security(allow).anonymous_access(&listener(bind));
            assert_eq!(got, expected, "allow_anonymous {allow:?}, bind {bind}");
        }
        let mut cert = listener("0.0.0.0");
        cert.use_identity_as_username = true;
        assert_eq!(
            security(Some(true)).anonymous_access(&cert),
            CertificateIdentity
        );
    }

    #[test]
    fn access_warnings_name_open_and_closed_non_loopback_listeners_only() {
        let c = Config::parse_all(
            "[[listeners]]\nbind = \"127.0.0.1\"\n[[listeners]]\nbind = \"::\"\nport = 1885\n\
             [security]\nallow_anonymous = true\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let w = c.security.access_warnings(&c.listeners);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with("listeners[1] (tcp://[::]:1885) accepts anonymous clients"),
            "{w:?}"
        );
        let c = Config::parse_all("", Path::new("x.toml")).unwrap();
        assert!(c.security.access_warnings(&c.listeners).is_empty());
    }

    #[test]
    fn dashboard_settings_are_checked_and_errors_name_the_key() {
        let keys = |text: &str| -> Vec<String> {
            match Config::parse_all(text, Path::new("d.toml")) {
                Ok(_) => Vec::new(),
                Err(errs) => errs.into_iter().map(|e| e.key).collect(),
            }
        };
        assert!(keys("[dashboard]\nbind = \"127.0.0.1:18083\"\n").is_empty());
        assert!(keys("[dashboard]\nbind = \"[::1]:18083\"\n").is_empty());
        assert_eq!(
            keys("[dashboard]\nbind = \"0.0.0.0:18083\"\n"),
            ["dashboard.cert_file"]
        );
        assert_eq!(
            keys("[dashboard]\nbind = \"127.0.0.1:18083\"\nadmins = [\"a\"]\n"),
            ["dashboard.admins"]
        );
        assert_eq!(
            keys("[dashboard]\nbind = \"127.0.0.1:18083\"\nrequire_login = true\n"),
            ["dashboard.require_login"]
        );
        // (the password file itself does not exist here: only the dashboard's keys matter)
        let admin_keys = keys(
            "[security]\npassword_file = \"p\"\n[dashboard]\nbind = \"127.0.0.1:1\"\nadmins = [\"a:b\"]\n",
        );
        let dashboard: Vec<&String> = admin_keys
            .iter()
            .filter(|k| k.starts_with("dashboard"))
            .collect();
        assert_eq!(dashboard, ["dashboard.admins[0]"]);
        assert_eq!(
            keys("[metrics]\nbind = \"127.0.0.1:9\"\n[dashboard]\nbind = \"127.0.0.1:9\"\n"),
            ["dashboard.bind"]
        );
        assert_eq!(keys("[dashboard]\nbnd = \"x\"\n"), ["dashboard.bnd"]);
        let c = Config::parse_all(
            "[dashboard]\nbind = \"10.0.0.1:443\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
            Path::new("/etc/mqflux/d.toml"),
        )
        .unwrap();
        let tls = c.dashboard.tls_listener().unwrap();
        assert_eq!(tls.cert_file.unwrap(), Path::new("/etc/mqflux/c.pem"));
        assert_eq!(
            c.dashboard.bind_addr(),
            Some("10.0.0.1:443".parse().unwrap())
        );
    }

    #[test]
    fn sys_interval_and_metrics_have_their_defaults() {
        let c = Config::parse_all("", Path::new("x.toml")).unwrap();
        assert_eq!(c.sys_interval, 10);
        assert_eq!(c.metrics.bind, None);
        assert_eq!(Config::default().sys_interval, 10);
        let c = Config::parse_all(
            "sys_interval = 0\n[metrics]\nbind = \"127.0.0.1:9883\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.sys_interval, 0);
        assert_eq!(
            c.metrics.bind_addr(),
            Some("127.0.0.1:9883".parse().unwrap())
        );
    }
}
