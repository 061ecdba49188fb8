//! `[[bridges]]`: one table per bridge, with mosquitto's key names and meanings (mosquitto.conf(5),
//! "Configuring Bridges"), so a mosquitto `connection` block translates line by line; plus the
//! durable queue's keys. `topic` lines keep mosquitto's grammar
//! `pattern [out|in|both] [qos] [local-prefix remote-prefix]` (`TopicLine::parse`).
//!
//! `config.rs` embeds these settings (the one allowed exception to the floors); this file imports
//! no configuration code back: `problems` returns (key, message) pairs that `Config::validate`
//! turns into errors naming the file.

use crate::protocol::QoS;
use serde::Deserialize;
use std::path::PathBuf;

/// The MQTT version the bridge speaks to the remote broker (`bridge_protocol_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum BridgeProtocol {
    /// MQTT 3.1.1; with `try_private` the protocol level carries the bridge bit (0x84).
    #[default]
    #[serde(rename = "mqttv311")]
    V311,
    /// MQTT 5.0: subscriptions with No Local and Retain As Published.
    #[serde(rename = "mqttv50")]
    V5,
}

/// One `[[bridges]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeConfig {
    /// The bridge's name (mosquitto `connection`): its queue directory, metric label and, by
    /// default, its client ids. A reload keeps the queue of a bridge whose name is unchanged.
    pub connection: String,
    /// "host:port" of the remote, in order of preference: the first is the primary; on failure
    /// the next is tried, and a bridge on a secondary tries the primary again every
    /// `primary_retry_secs` (mosquitto's `round_robin false`).
    pub address: Vec<String>,
    /// mosquitto's `topic` lines, e.g. `"sensors/# out 1"`, `"cmd/# in 2 site1/ central/"`.
    pub topic: Vec<String>,
    pub bridge_protocol_version: BridgeProtocol,
    /// Remote session: false (mosquitto's default) keeps subscriptions and QoS 1/2 state on the
    /// remote across reconnections.
    pub cleansession: bool,
    /// Accepted for mosquitto compatibility: the bridge's local side is not a client session
    /// here (its queue is durable whatever this says).
    pub local_cleansession: Option<bool>,
    /// Client id on the remote; default `<hostname>.<connection>` (mosquitto's default).
    pub remote_clientid: Option<String>,
    /// Publisher id of what the bridge brings in locally; default `local.<remote_clientid>`.
    pub local_clientid: Option<String>,
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    /// The local identity whose ACL decides what `in` messages may be published locally.
    pub local_username: Option<String>,
    /// Keep-alive towards the remote, seconds (mosquitto default 60).
    pub keepalive_interval: u16,
    /// Seconds between connection attempts (mosquitto: `restart_timeout`; a single value).
    pub restart_timeout: u64,
    /// Set the bridge bit in the protocol level (0x83/0x84, v3 only), so a broker that knows it
    /// does not echo our publishes back; retried without it when the remote refuses.
    pub try_private: bool,
    /// Publish `$SYS/broker/connection/<remote_clientid>/state` 1/0 (retained) locally.
    pub notifications: bool,
    /// Overrides the notification topic.
    pub notification_topic: Option<String>,
    /// TLS to the remote: the CA that signs its certificate (enables TLS).
    pub bridge_cafile: Option<PathBuf>,
    /// Client certificate and key, when the remote asks for one.
    pub bridge_certfile: Option<PathBuf>,
    pub bridge_keyfile: Option<PathBuf>,
    /// Skip the host name check of the remote's certificate (the chain is still checked).
    pub bridge_insecure: bool,
    /// Forward the retain flag of outgoing messages (false: always clear it).
    pub bridge_outgoing_retain: bool,
    /// Largest packet sent to the remote, bytes (0 = the remote's limit or 256 MiB). A message
    /// too large is dropped, counted and logged.
    pub bridge_max_packet_size: u32,
    /// Directory of the durable queue: `<queue_dir>/<connection>/`. Default:
    /// `<persistence.dir>/bridges`, else `./mqflux-bridges` beside the config file.
    pub queue_dir: Option<PathBuf>,
    /// When the queued messages exceed this many bytes, the oldest are dropped (counted, logged).
    pub queue_max_bytes: u64,
    /// QoS 1/2 messages in flight to the remote at most (also bounded by its Receive Maximum).
    /// 20 by default: mosquitto's `max_inflight_messages`, since a 3.1.1 remote cannot say its
    /// limit and mosquitto silently drops QoS 2 messages beyond it.
    pub max_inflight: u16,
    /// Optional cap on messages sent per second (0 = none).
    pub max_rate: u32,
    /// Seconds after which a bridge connected to a secondary address tries the primary again.
    pub primary_retry_secs: u64,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            connection: String::new(),
            address: Vec::new(),
            topic: Vec::new(),
            bridge_protocol_version: BridgeProtocol::V311,
            cleansession: false,
            local_cleansession: None,
            remote_clientid: None,
            local_clientid: None,
            remote_username: None,
            remote_password: None,
            local_username: None,
            keepalive_interval: 60,
            restart_timeout: 5,
            try_private: true,
            notifications: true,
            notification_topic: None,
            bridge_cafile: None,
            bridge_certfile: None,
            bridge_keyfile: None,
            bridge_insecure: false,
            bridge_outgoing_retain: true,
            bridge_max_packet_size: 0,
            queue_dir: None,
            queue_max_bytes: 1024 * 1024 * 1024,
            max_inflight: 20,
            max_rate: 0,
            primary_retry_secs: 60,
        }
    }
}

/// Which way a topic line carries messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Both,
}

impl Direction {
    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One parsed `topic` line. The local topic is `local_prefix + pattern`, the remote one
/// `remote_prefix + pattern` (mosquitto's remapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLine {
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl TopicLine {
    /// Parse `pattern [out|in|both] [qos] [local-prefix remote-prefix]`; `""` stands for an
    /// empty pattern or prefix, as in mosquitto.conf. Errors say what was expected.
    pub fn parse(line: &str) -> Result<TopicLine, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let unquote = |w: &str| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        };
        let Some(first) = words.first() else {
            return Err("expected `pattern [out|in|both] [qos] [local-prefix remote-prefix]`, got an empty line".into());
        };
        if words.len() > 5 {
            return Err(format!(
                "expected at most 5 words (`pattern [out|in|both] [qos] [local-prefix remote-prefix]`), got {}",
                words.len()
            ));
        }
        let pattern = unquote(first);
        let direction = match words.get(1).copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => {
                return Err(format!(
                    "expected direction `out`, `in` or `both` after the pattern, got `{other}`"
                ))
            }
        };
        let qos = match words.get(2).copied() {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(other) => return Err(format!("expected QoS 0, 1 or 2, got `{other}`")),
        };
        let (local_prefix, remote_prefix) = match (words.get(3), words.get(4)) {
            (None, _) => (String::new(), String::new()),
            (Some(_), None) => {
                return Err(
                    "a local prefix needs a remote prefix after it (use \"\" for none)".into(),
                )
            }
            (Some(l), Some(r)) => (unquote(l), unquote(r)),
        };
        // mosquitto.conf(5): the valid combinations of pattern and prefixes. An empty pattern
        // maps exactly one topic, so it needs both prefixes (local topic -> remote topic).
        if pattern.is_empty() && (local_prefix.is_empty() || remote_prefix.is_empty()) {
            return Err(
                "an empty pattern (\"\") needs both a local and a remote prefix: it maps \
                        the one topic local-prefix to remote-prefix (mosquitto.conf(5))"
                    .into(),
            );
        }
        for (what, prefix) in [("local", &local_prefix), ("remote", &remote_prefix)] {
            if prefix.contains(['+', '#']) {
                return Err(format!(
                    "the {what} prefix `{prefix}` must not contain wildcards (+ or #)"
                ));
            }
        }
        let line = TopicLine {
            pattern,
            direction,
            qos,
            local_prefix,
            remote_prefix,
        };
        if let Err(e) = crate::broker::topic::validate_topic_filter(&line.local_filter()) {
            return Err(format!(
                "`{}` is not a valid topic filter: {e}",
                line.local_filter()
            ));
        }
        Ok(line)
    }

    /// The filter this line matches on the local broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter this line subscribes to on the remote broker.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// The remote topic for a local one this line matches, None when it does not match.
    pub fn to_remote(&self, local_topic: &str) -> Option<String> {
        let rest = local_topic.strip_prefix(self.local_prefix.as_str())?;
        let matches = if self.pattern.is_empty() {
            rest.is_empty()
        } else {
            crate::broker::topic::filter_matches(&self.pattern, rest)
        };
        matches.then(|| format!("{}{rest}", self.remote_prefix))
    }

    /// The local topic for a remote one this line matches, None when it does not match.
    pub fn to_local(&self, remote_topic: &str) -> Option<String> {
        let rest = remote_topic.strip_prefix(self.remote_prefix.as_str())?;
        let matches = if self.pattern.is_empty() {
            rest.is_empty()
        } else {
            crate::broker::topic::filter_matches(&self.pattern, rest)
        };
        matches.then(|| format!("{}{rest}", self.local_prefix))
    }
}

/// Characters allowed in a bridge name: it names a directory and a metric label.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.')
}

impl BridgeConfig {
    /// The parsed topic lines (call after `problems` found none).
    pub fn topic_lines(&self) -> Vec<TopicLine> {
        self.topic
            .iter()
            .filter_map(|l| TopicLine::parse(l).ok())
            .collect()
    }

    pub fn remote_clientid(&self) -> String {
        self.remote_clientid.clone().unwrap_or_else(|| {
            let host = hostname();
            format!("{host}.{}", self.connection)
        })
    }

    pub fn local_clientid(&self) -> String {
        self.local_clientid
            .clone()
            .unwrap_or_else(|| format!("local.{}", self.remote_clientid()))
    }

    pub fn notification_topic(&self) -> String {
        self.notification_topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.remote_clientid()))
    }

    /// Every problem of this table as (key inside the table, what was expected).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| out.push((key.to_string(), message));
        if !valid_name(&self.connection) {
            bad(
                "connection",
                format!(
                    "expected a name of 1 to 64 letters, digits, '-', '_' or '.' (it names the \
                     queue directory), got {:?}",
                    self.connection
                ),
            );
        }
        if self.address.is_empty() {
            bad(
                "address",
                "expected at least one \"host:port\" (a list: the first is the primary)".into(),
            );
        }
        for (i, a) in self.address.iter().enumerate() {
            if split_address(a).is_none() {
                bad(
                    &format!("address[{i}]"),
                    format!("expected \"host:port\" or \"host\" (port 1883), got {a:?}"),
                );
            }
        }
        if self.topic.is_empty() {
            bad(
                "topic",
                "expected at least one topic line `pattern [out|in|both] [qos] [local-prefix \
                 remote-prefix]`"
                    .into(),
            );
        }
        for (i, line) in self.topic.iter().enumerate() {
            if let Err(e) = TopicLine::parse(line) {
                bad(&format!("topic[{i}]"), format!("{e} (line {line:?})"));
            }
        }
        if self.keepalive_interval < 2 {
            bad(
                "keepalive_interval",
                format!(
                    "expected 2 to 65535 seconds, got {}",
                    self.keepalive_interval
                ),
            );
        }
        if self.restart_timeout == 0 {
            bad(
                "restart_timeout",
                "expected at least 1 second, got 0".into(),
            );
        }
        if self.max_inflight == 0 {
            bad("max_inflight", "expected 1 to 65535, got 0".into());
        }
        if self.queue_max_bytes < 1024 {
            bad(
                "queue_max_bytes",
                format!("expected at least 1024 bytes, got {}", self.queue_max_bytes),
            );
        }
        if self.bridge_max_packet_size != 0 && self.bridge_max_packet_size < 64 {
            bad(
                "bridge_max_packet_size",
                format!(
                    "expected 0 (no limit of ours) or at least 64 bytes, got {}",
                    self.bridge_max_packet_size
                ),
            );
        }
        if self.primary_retry_secs == 0 {
            bad(
                "primary_retry_secs",
                "expected at least 1 second, got 0".into(),
            );
        }
        if self.bridge_certfile.is_some() != self.bridge_keyfile.is_some() {
            bad(
                "bridge_certfile",
                "expected bridge_certfile and bridge_keyfile together (or neither)".into(),
            );
        }
        if self.bridge_certfile.is_some() && self.bridge_cafile.is_none() {
            bad(
                "bridge_cafile",
                "expected bridge_cafile too: a client certificate is only used over TLS".into(),
            );
        }
        for (key, file) in [
            ("bridge_cafile", &self.bridge_cafile),
            ("bridge_certfile", &self.bridge_certfile),
            ("bridge_keyfile", &self.bridge_keyfile),
        ] {
            if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
                bad(
                    key,
                    format!(
                        "expected a readable PEM file, but {} does not exist",
                        f.display()
                    ),
                );
            }
        }
        if self.remote_password.is_some() && self.remote_username.is_none() {
            bad(
                "remote_password",
                "expected remote_username too: MQTT sends a password only with a user name".into(),
            );
        }
        out
    }

    /// Make relative paths relative to the config file's directory.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        for p in [
            &mut self.bridge_cafile,
            &mut self.bridge_certfile,
            &mut self.bridge_keyfile,
            &mut self.queue_dir,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

/// "host:port" -> (host, port); a bare host gets port 1883 (mosquitto's default).
pub fn split_address(address: &str) -> Option<(String, u16)> {
    let address = address.trim();
    if address.is_empty() {
        return None;
    }
    // [v6]:port, host:port, or host alone.
    if let Some(rest) = address.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host.to_string(), port.parse().ok()?));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            if host.is_empty() {
                return None;
            }
            Some((host.to_string(), port.parse().ok().filter(|p| *p != 0)?))
        }
        _ => Some((address.to_string(), 1883)),
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "mqflux".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_line_defaults_are_out_and_qos_0() {
        let t = TopicLine::parse("sensors/#").unwrap();
        assert_eq!(t.direction, Direction::Out);
        assert_eq!(t.qos, QoS::AtMostOnce);
        assert_eq!(t.to_remote("sensors/a"), Some("sensors/a".into()));
        assert_eq!(t.to_remote("other/a"), None);
    }

    #[test]
    fn prefixes_remap_both_ways() {
        let t = TopicLine::parse("# both 2 site1/ central/site1/").unwrap();
        assert_eq!(t.direction, Direction::Both);
        assert_eq!(t.qos, QoS::ExactlyOnce);
        assert_eq!(t.to_remote("site1/t"), Some("central/site1/t".into()));
        assert_eq!(t.to_local("central/site1/t"), Some("site1/t".into()));
        assert_eq!(t.to_remote("site2/t"), None);
        assert_eq!(t.remote_filter(), "central/site1/#");
    }

    #[test]
    fn mosquitto_table_of_valid_prefix_combinations() {
        // pattern, local prefix, remote prefix: valid (mosquitto.conf(5), "topic").
        assert!(TopicLine::parse("a/# out 0 l/ r/").is_ok());
        assert!(TopicLine::parse("a/# out 0 l/ \"\"").is_ok());
        assert!(TopicLine::parse("a/# out 0 \"\" r/").is_ok());
        assert!(TopicLine::parse("a/# out 0 \"\" \"\"").is_ok());
        let one = TopicLine::parse("\"\" out 0 local/topic remote/topic").unwrap();
        assert_eq!(one.to_remote("local/topic"), Some("remote/topic".into()));
        assert_eq!(one.to_remote("local/topic/x"), None);
        // No pattern: both prefixes needed.
        assert!(TopicLine::parse("\"\" out 0 local/topic \"\"").is_err());
        assert!(TopicLine::parse("\"\" out 0 \"\" remote/topic").is_err());
        assert!(TopicLine::parse("\"\" out 0 \"\" \"\"").is_err());
        assert!(TopicLine::parse("\"\"").is_err());
    }

    #[test]
    fn bad_topic_lines_say_what_was_expected() {
        let e = TopicLine::parse("a/# sideways").unwrap_err();
        assert!(e.contains("`out`, `in` or `both`"), "{e}");
        let e = TopicLine::parse("a/# out 3").unwrap_err();
        assert!(e.contains("QoS 0, 1 or 2"), "{e}");
        let e = TopicLine::parse("a/# out 1 l/").unwrap_err();
        assert!(e.contains("remote prefix"), "{e}");
        let e = TopicLine::parse("a/# out 1 l/+ r/").unwrap_err();
        assert!(e.contains("wildcards"), "{e}");
        let e = TopicLine::parse("a/#/b").unwrap_err();
        assert!(e.contains("not a valid topic filter"), "{e}");
    }

    #[test]
    fn addresses_take_mosquittos_default_port() {
        assert_eq!(split_address("h:1884"), Some(("h".into(), 1884)));
        assert_eq!(split_address("h"), Some(("h".into(), 1883)));
        assert_eq!(split_address("[::1]:2000"), Some(("::1".into(), 2000)));
        assert_eq!(split_address("h:x"), None);
        assert_eq!(split_address(""), None);
    }

    #[test]
    fn problems_name_the_key() {
        let c = BridgeConfig {
            connection: "bad name".into(),
            ..Default::default()
        };
        let keys: Vec<String> = c.problems().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"connection".to_string()));
        assert!(keys.contains(&"address".to_string()));
        assert!(keys.contains(&"topic".to_string()));
    }

    #[test]
    fn the_commented_example_in_config_example_toml_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let start = text
            .find("#[[bridges]]")
            .expect("a commented [[bridges]] example");
        let block: String = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("##"))
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        let table: toml::Table = toml::from_str(&block).unwrap();
        let bridges = table["bridges"].as_array().unwrap();
        let c: BridgeConfig = bridges[0].clone().try_into().unwrap();
        let problems: Vec<_> = c
            .problems()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("bridge_") || !k.ends_with("file"))
            .collect();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.topic_lines().len(), 2);
    }
}
