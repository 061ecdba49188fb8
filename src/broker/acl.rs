//! ACL file in mosquitto's format, and the checks the broker makes with it.
//!
//! ```text
//! # comment
//! topic read public/#          <- before the first `user` line: applies to anonymous clients
//! user alice
//! topic readwrite alice/#      <- applies to username "alice"
//! topic deny alice/secret
//! topic sensors/+/temp         <- no access word means readwrite
//! pattern write devices/%c/up  <- applies to every client; %c = client id, %u = username
//! ```
//!
//! Semantics follow mosquitto 2.0 (`src/security_default.c`, `aclfile__parse` and
//! `mosquitto_acl_check_default`):
//! - A client with a username uses the `user` section of that name (none if absent); a client
//!   without one uses the anonymous section. `pattern` lines apply to everybody, wherever they
//!   appear in the file.
//! - The client's own rules are checked first, then the patterns. Within each list a matching
//!   `deny` wins over any allow, whatever the line order (mosquitto moves deny rules to the
//!   front). As in mosquitto, an allow in the client's own section is decided before the
//!   pattern list is looked at, so a `pattern deny` does not override a user's `topic` allow.
//! - With patterns present, a client whose username or client id contains `+`, `#` or `/` is
//!   denied everything that its own section does not allow: substituted into a pattern, such a
//!   name would turn into a wildcard, or into more than one topic level, and reach other
//!   clients' topics (client id `victim/data` in `devices/%c/#` would own
//!   `devices/victim/data/#`). mosquitto 2.0 refuses only `+` and `#`; mqflux refuses `/` too.
//! - A pattern using `%u` is skipped for clients without a username.
//! - A file with no rules for a client denies it everything (an empty file denies all).
//! - Read access is checked per delivered message against its concrete topic (including
//!   retained messages sent on subscribe), as mosquitto does. A SUBSCRIBE filter is refused
//!   outright (`can_subscribe`) when the rules leave it nothing to read: a `deny` rule covers
//!   every topic it matches (`topic deny test/nosubscribe`), or no read rule matches any topic
//!   it could match. A filter that is only partly readable (`#` with `deny secret/#`) is
//!   granted, and its deliveries are filtered as above. mosquitto 2.0 refuses nothing at
//!   subscribe time ("FIXME - implement ACL subscription strings"); 2.1 refuses a filter no
//!   single read rule covers, which would also refuse `#` to a client allowed `sensors/#`.
//! - Any syntax error rejects the whole file with `file:line`, as mosquitto refuses to start:
//!   a half-loaded ACL would silently grant or deny the wrong things.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::topic::{filter_matches, validate_topic_filter};

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

const READ: u8 = 1;
const WRITE: u8 = 2;
/// mosquitto's MOSQ_ACL_NONE: an explicit deny.
const DENY: u8 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// READ | WRITE bits, or DENY.
    access: u8,
    /// A topic filter; for patterns it may contain `%c` / `%u` before substitution.
    topic: String,
}

/// The parsed ACL file.
#[derive(Debug, Clone, Default)]
pub struct AclFile {
    path: PathBuf,
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Outcome of checking one rule list.
enum Verdict {
    Allow,
    Deny,
    NoMatch,
}

fn check_rules(rules: &[Rule], topic: &str, want: u8) -> Verdict {
    // mosquitto puts deny rules at the front of each list, so any matching deny decides first.
    if rules
        .iter()
        .any(|r| r.access == DENY && acl_topic_matches(&r.topic, topic))
    {
        return Verdict::Deny;
    }
    if rules
        .iter()
        .any(|r| r.access & want != 0 && acl_topic_matches(&r.topic, topic))
    {
        return Verdict::Allow;
    }
    Verdict::NoMatch
}

/// Wildcard matching is the router's (`topic::filter_matches`, so ACLs and subscriptions agree,
/// including [MQTT-4.7.2-1] for `$` topics). mosquitto additionally requires a `$` topic to be
/// matched by a rule that itself starts with `$`; that only matters for non-wildcard rules and
/// is kept for exactness.
fn acl_topic_matches(rule_topic: &str, topic: &str) -> bool {
    if topic.starts_with('$') && !rule_topic.starts_with('$') {
        return false;
    }
    filter_matches(rule_topic, topic)
}

/// Does ACL filter `rule` match every topic that subscription filter `filter` matches?
fn acl_filter_covers(rule: &str, filter: &str) -> bool {
    // A rule not starting with `$` never matches a `$` topic (`acl_topic_matches`), and a
    // filter starting with a wildcard matches none [MQTT-4.7.2-1].
    if filter.starts_with('$') && !rule.starts_with('$') {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(rl), Some(fl)) if rl == fl && fl != "+" && fl != "#" => {}
            (None, None) => return true,
            // "a/#" also matches "a" [MQTT-4.7.1-2].
            (Some(_), None) => return r.next().is_none() && rule.ends_with("/#"),
            _ => return false,
        }
    }
}

/// Is there a topic that both filters match?
fn acl_filters_overlap(rule: &str, filter: &str) -> bool {
    let dollar = |a: &str, b: &str| a.starts_with('$') && b.starts_with(['+', '#']);
    if dollar(rule, filter) || dollar(filter, rule) {
        return false;
    }
    let (mut r, mut f) = (rule.split('/'), filter.split('/'));
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (Some(a), Some(b)) if a == b || a == "+" || b == "+" => {}
            (None, None) => return true,
            // One ends where the other has only "#" left: "a" and "a/#".
            (None, Some(_)) | (Some(_), None) => return false,
            _ => return false,
        }
    }
}

/// `check_rules` for a SUBSCRIBE filter (see the module doc).
fn subscribe_verdict(rules: &[Rule], filter: &str) -> Verdict {
    if rules
        .iter()
        .any(|r| r.access == DENY && acl_filter_covers(&r.topic, filter))
    {
        return Verdict::Deny;
    }
    if rules
        .iter()
        .any(|r| r.access & READ != 0 && acl_filters_overlap(&r.topic, filter))
    {
        return Verdict::Allow;
    }
    Verdict::NoMatch
}

impl AclFile {
    pub fn load(path: &Path) -> Result<AclFile, AclError> {
        let bytes = fs::read(path).map_err(|source| AclError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            AclError::Syntax {
                path: path.to_path_buf(),
                line: valid.iter().filter(|&&b| b == b'\n').count() + 1,
                message: "not valid UTF-8".into(),
            }
        })?;
        AclFile::parse(&text, path)
    }

    /// Parse file contents; `path` is used in error and log messages.
    pub fn parse(text: &str, path: &Path) -> Result<AclFile, AclError> {
        let mut acl = AclFile {
            path: path.to_path_buf(),
            ..AclFile::default()
        };
        // None = the anonymous section before the first `user` line.
        let mut current_user: Option<String> = None;
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let err = |message: String| AclError::Syntax {
                path: path.to_path_buf(),
                line: line_no,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("missing username after `user`".into()));
                    }
                    // The username is the rest of the line: it may contain spaces.
                    acl.users.entry(rest.to_string()).or_default();
                    current_user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest, path, line_no).map_err(err)?;
                    let topic = rule.topic.as_str();
                    if keyword == "pattern" {
                        if !topic.contains("%c") && !topic.contains("%u") {
                            log::warn!(
                                "{}:{line_no}: pattern {topic:?} contains neither %c nor %u",
                                path.display()
                            );
                        }
                        acl.patterns.push(rule);
                    } else {
                        match &current_user {
                            None => acl.anonymous.push(rule),
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                        }
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?} (expected user, topic or pattern)"
                    )))
                }
            }
        }
        Ok(acl)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The rules that apply to one client, with `%c`/`%u` already substituted. A connection
    /// can build this once after CONNECT and check every publish/delivery without allocating.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> ClientAcl {
        let own = match username {
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        // A name substituted for `%c`/`%u` must stay one topic level of literal text.
        const NOT_ONE_LEVEL: [char; 3] = ['+', '#', '/'];
        let dangerous_name = !self.patterns.is_empty()
            && (client_id.contains(NOT_ONE_LEVEL)
                || username.is_some_and(|u| u.contains(NOT_ONE_LEVEL)));
        if dangerous_name {
            log::info!(
                "ACL patterns not applied to client {client_id:?} (username {username:?}): \
                 `+`, `#` or `/` in its client id or username"
            );
        }
        let patterns = if dangerous_name {
            Vec::new()
        } else {
            self.patterns
                .iter()
                .filter(|p| username.is_some() || !p.topic.contains("%u"))
                .map(|p| Rule {
                    access: p.access,
                    topic: substitute(&p.topic, client_id, username),
                })
                .collect()
        };
        ClientAcl { own, patterns }
    }

    /// May this client publish to `topic` (a concrete topic name)?
    pub fn can_publish(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.for_client(client_id, username).can_publish(topic)
    }

    /// May this client receive a message published on `topic` (a concrete topic name)?
    pub fn can_receive(&self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        self.for_client(client_id, username).can_receive(topic)
    }
}

/// The ACL rules for one connected client (see [`AclFile::for_client`]).
#[derive(Debug, Clone)]
pub struct ClientAcl {
    own: Vec<Rule>,
    patterns: Vec<Rule>,
}

impl ClientAcl {
    fn check(&self, topic: &str, want: u8) -> bool {
        // A topic name never contains wildcards [MQTT-3.3.2-2]; refuse rather than match.
        if topic.contains(['+', '#']) {
            return false;
        }
        match check_rules(&self.own, topic, want) {
            Verdict::Allow => return true,
            Verdict::Deny => return false,
            Verdict::NoMatch => {}
        }
        matches!(check_rules(&self.patterns, topic, want), Verdict::Allow)
    }

    pub fn can_publish(&self, topic: &str) -> bool {
        self.check(topic, WRITE)
    }

    pub fn can_receive(&self, topic: &str) -> bool {
        self.check(topic, READ)
    }

    /// May this client subscribe to `filter` (a topic filter, `$share/{group}/` already
    /// removed)? Refused when the rules leave it nothing to read (see the module doc).
    pub fn can_subscribe(&self, filter: &str) -> bool {
        match subscribe_verdict(&self.own, filter) {
            Verdict::Allow => return true,
            Verdict::Deny => return false,
            Verdict::NoMatch => {}
        }
        matches!(subscribe_verdict(&self.patterns, filter), Verdict::Allow)
    }
}

/// The part of a `topic`/`pattern` line after the keyword: `[ACCESS] TOPIC`.
fn parse_rule(keyword: &str, rest: &str, path: &Path, line_no: usize) -> Result<Rule, String> {
    let (first, after) = split_word(rest);
    if first.is_empty() {
        return Err(format!("missing topic after `{keyword}`"));
    }
    // `topic X` (one word) is X with readwrite access; `topic ACCESS X...` has the topic as
    // the rest of the line, which may contain spaces.
    let (access, topic) = if after.is_empty() {
        if matches!(first, "read" | "write" | "readwrite" | "deny") {
            log::warn!(
                "{}:{line_no}: `{keyword} {first}` is read as the topic {first:?} with readwrite \
                 access (as mosquitto does); write `{keyword} {first} TOPIC` for an access rule",
                path.display()
            );
        }
        (READ | WRITE, first)
    } else {
        let access = match first {
            "read" => READ,
            "write" => WRITE,
            "readwrite" => READ | WRITE,
            "deny" => DENY,
            other => {
                return Err(format!(
                    "invalid access type {other:?} (expected read, write, readwrite or deny)"
                ))
            }
        };
        (access, after)
    };
    validate_acl_topic(topic)
        .map_err(|why| format!("invalid topic {:?}: {why}", shorten(topic)))?;
    Ok(Rule {
        access,
        topic: topic.to_string(),
    })
}

/// At most 80 characters of `s`, for error messages about possibly huge lines.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// First whitespace-separated word and the trimmed rest of the line.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Replace `%c` with the client id and `%u` with the username, left to right in one pass
/// (a substituted value is never itself substituted again).
fn substitute(pattern: &str, client_id: &str, username: Option<&str>) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("%c") {
            out.push_str(client_id);
            rest = after;
        } else if let (Some(after), Some(u)) = (tail.strip_prefix("%u"), username) {
            out.push_str(u);
            rest = after;
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// An ACL topic must be a valid topic filter (mosquitto runs `mosquitto_sub_topic_check` on
/// it): the router's validation, plus the 65535-byte limit on MQTT strings [MQTT-1.5.3-1].
fn validate_acl_topic(topic: &str) -> Result<(), &'static str> {
    if topic.len() > 65535 {
        return Err("longer than 65535 bytes [MQTT-1.5.3-1]");
    }
    validate_topic_filter(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AclFile {
        match AclFile::parse(text, Path::new("test.acl")) {
            Ok(a) => a,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match AclFile::parse(text, Path::new("test.acl")) {
            Ok(a) => panic!("expected an error, parsed {a:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn subscribe_is_refused_when_the_filter_has_nothing_readable() {
        let acl = parse(
            "topic readwrite #\ntopic deny test/nosubscribe\ntopic deny secret/#\n\
             user bob\ntopic read sensors/#\npattern read own/%c/#\n",
        );
        let anon = acl.for_client("c1", None);
        assert!(!anon.can_subscribe("test/nosubscribe"), "denied exactly");
        assert!(!anon.can_subscribe("secret/#"), "denied entirely");
        assert!(!anon.can_subscribe("secret/+/x"), "covered by secret/#");
        assert!(
            anon.can_subscribe("test/#"),
            "only partly denied: filtered per message"
        );
        assert!(anon.can_subscribe("#"));
        assert!(!anon.can_subscribe("$SYS/#"), "# does not reach $ topics");
        let bob = acl.for_client("c2", Some("bob"));
        assert!(bob.can_subscribe("sensors/+/temp"));
        assert!(bob.can_subscribe("#"), "overlaps sensors/#");
        assert!(bob.can_subscribe("sensors"), "sensors/# matches sensors");
        assert!(
            !bob.can_subscribe("actuators/#"),
            "no read rule matches any of it"
        );
        assert!(bob.can_subscribe("own/c2/x"), "pattern");
        assert!(!bob.can_subscribe("own/c1/x"));
        assert!(acl_filter_covers("a/#", "a"));
        assert!(acl_filter_covers("a/+", "a/b"));
        assert!(!acl_filter_covers("a/+", "a/#"));
        assert!(!acl_filter_covers("a/b", "a/+"));
        assert!(acl_filters_overlap("a/b", "+/b"));
        assert!(!acl_filters_overlap("a/b", "a/c"));
        assert!(!acl_filters_overlap("a/b/c", "a/b"));
    }

    #[test]
    fn acl_topic_longer_than_an_mqtt_string_is_refused() {
        let long = "a".repeat(65536);
        let e = parse_err(&format!("topic read {long}\n"));
        assert!(e.starts_with("test.acl:1: invalid topic \"aaaa"), "{e}");
        assert!(e.ends_with("longer than 65535 bytes [MQTT-1.5.3-1]"), "{e}");
        assert!(e.len() < 200, "{e}");
    }

    // The example from mosquitto's aclfile.example, abridged.
    const MOSQUITTO_EXAMPLE: &str = "\
# This affects access control for clients with no username.
topic read $SYS/#

# This only affects clients with username \"roger\".
user roger
topic foo/bar

# This affects all clients.
pattern write $SYS/broker/connection/%c/state
";

    #[test]
    fn mosquitto_example_anonymous_may_read_sys_only() {
        let acl = parse(MOSQUITTO_EXAMPLE);
        assert!(acl.can_receive("c1", None, "$SYS/broker/uptime"));
        assert!(!acl.can_publish("c1", None, "$SYS/broker/uptime"));
        assert!(!acl.can_receive("c1", None, "foo/bar"));
    }

    #[test]
    fn mosquitto_example_roger_has_readwrite_on_foo_bar_only() {
        let acl = parse(MOSQUITTO_EXAMPLE);
        assert!(acl.can_publish("c1", Some("roger"), "foo/bar"));
        assert!(acl.can_receive("c1", Some("roger"), "foo/bar"));
        assert!(!acl.can_publish("c1", Some("roger"), "foo/baz"));
        // The anonymous section does not apply to a named user.
        assert!(!acl.can_receive("c1", Some("roger"), "$SYS/broker/uptime"));
    }

    #[test]
    fn mosquitto_example_pattern_lets_each_client_write_its_own_state_topic() {
        let acl = parse(MOSQUITTO_EXAMPLE);
        assert!(acl.can_publish("bridge1", None, "$SYS/broker/connection/bridge1/state"));
        assert!(acl.can_publish("bridge1", Some("x"), "$SYS/broker/connection/bridge1/state"));
        assert!(!acl.can_publish("bridge1", None, "$SYS/broker/connection/bridge2/state"));
        assert!(!acl.can_receive("bridge1", Some("x"), "$SYS/broker/connection/bridge1/state"));
    }

    #[test]
    fn access_words_grant_what_they_say() {
        let acl = parse(
            "user u\n\
             topic read r/#\n\
             topic write w/#\n\
             topic readwrite rw/#\n\
             topic plain/#\n",
        );
        let c = acl.for_client("c", Some("u"));
        assert!(c.can_receive("r/1") && !c.can_publish("r/1"));
        assert!(!c.can_receive("w/1") && c.can_publish("w/1"));
        assert!(c.can_receive("rw/1") && c.can_publish("rw/1"));
        assert!(c.can_receive("plain/1") && c.can_publish("plain/1"));
        assert!(!c.can_receive("other") && !c.can_publish("other"));
    }

    #[test]
    fn deny_wins_regardless_of_line_order() {
        let acl = parse(
            "user u\n\
             topic readwrite home/#\n\
             topic deny home/secret/#\n\
             user v\n\
             topic deny home/secret/#\n\
             topic readwrite home/#\n",
        );
        for user in ["u", "v"] {
            assert!(acl.can_publish("c", Some(user), "home/kitchen"));
            assert!(!acl.can_publish("c", Some(user), "home/secret/x"));
            assert!(!acl.can_receive("c", Some(user), "home/secret"));
        }
    }

    #[test]
    fn pattern_deny_wins_over_pattern_allow() {
        let acl = parse("pattern readwrite dev/%c/#\npattern deny dev/%c/admin\n");
        assert!(acl.can_publish("d1", None, "dev/d1/up"));
        assert!(!acl.can_publish("d1", None, "dev/d1/admin"));
    }

    #[test]
    fn user_allow_is_decided_before_pattern_deny_as_in_mosquitto() {
        let acl = parse("user u\ntopic readwrite a/#\npattern deny a/%u\n");
        assert!(acl.can_publish("c", Some("u"), "a/u"));
        // Without a user-section allow, the pattern deny applies.
        assert!(!acl.can_publish("c", Some("w"), "a/w"));
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let acl = parse(
            "pattern readwrite clients/%c/#\n\
             pattern read users/%u/inbox\n\
             pattern write both/%u/%c\n",
        );
        assert!(acl.can_publish("dev-1", None, "clients/dev-1/temp"));
        assert!(!acl.can_publish("dev-1", None, "clients/dev-2/temp"));
        assert!(acl.can_receive("x", Some("alice"), "users/alice/inbox"));
        assert!(!acl.can_publish("x", Some("alice"), "users/alice/inbox"));
        assert!(!acl.can_receive("x", Some("bob"), "users/alice/inbox"));
        assert!(acl.can_publish("c9", Some("alice"), "both/alice/c9"));
        assert!(!acl.can_publish("c9", Some("alice"), "both/c9/alice"));
    }

    #[test]
    fn username_pattern_does_not_apply_to_anonymous_clients() {
        let acl = parse("pattern readwrite users/%u/#\n");
        // Without substitution `%u` would be a literal level; it must not match that either.
        assert!(!acl.can_publish("c", None, "users/%u/x"));
        assert!(!acl.can_publish("c", None, "users//x"));
    }

    #[test]
    fn wildcard_in_client_id_or_username_disables_patterns() {
        let acl = parse("pattern readwrite clients/%c/#\npattern readwrite users/%u/#\n");
        assert!(!acl.can_publish("+", None, "clients/other/x"));
        assert!(!acl.can_publish("#", None, "clients/anything"));
        assert!(!acl.can_publish("c", Some("+"), "users/bob/x"));
        assert!(!acl.can_publish("c", Some("a#"), "users/a#/x"));
        assert!(acl.can_publish("c", Some("bob"), "users/bob/x"));
    }

    #[test]
    fn slash_in_client_id_or_username_disables_patterns() {
        // `victim/data` substituted for %c would own another client's subtree.
        let acl = parse("pattern readwrite devices/%c/#\npattern readwrite users/%u/#\n");
        assert!(!acl.can_publish("victim/data", None, "devices/victim/data"));
        assert!(!acl.can_receive("victim/data", None, "devices/victim/data/x"));
        assert!(!acl.can_publish("victim/data", None, "devices/victim/data/x"));
        assert!(!acl.can_publish("c", Some("bob/x"), "users/bob/x/y"));
        assert!(acl.can_publish("victim", None, "devices/victim/data"));
    }

    #[test]
    fn substitution_is_single_pass() {
        let acl = parse("pattern readwrite c/%c\n");
        assert!(acl.can_publish("%u", Some("bob"), "c/%u"));
        assert!(!acl.can_publish("%u", Some("bob"), "c/bob"));
        assert_eq!(substitute("a/%x/%c%%u", "id", Some("u")), "a/%x/id%u");
    }

    #[test]
    fn unknown_user_gets_nothing_and_empty_file_denies_all() {
        let acl = parse("topic read public/#\nuser alice\ntopic alice/#\n");
        assert!(acl.can_receive("c", None, "public/x"));
        assert!(!acl.can_receive("c", Some("mallory"), "public/x"));
        assert!(!acl.can_receive("c", Some("mallory"), "alice/x"));
        let empty = parse("# nothing here\n\n");
        assert!(!empty.can_receive("c", None, "a"));
        assert!(!empty.can_publish("c", Some("u"), "a"));
    }

    #[test]
    fn wildcard_rules_match_concrete_topics_and_wildcard_topics_are_refused() {
        let acl = parse("topic readwrite sensors/+/temp\ntopic read logs/#\n");
        assert!(acl.can_publish("c", None, "sensors/kitchen/temp"));
        assert!(!acl.can_publish("c", None, "sensors/kitchen/hum"));
        assert!(acl.can_receive("c", None, "logs"));
        assert!(acl.can_receive("c", None, "logs/a/b"));
        // Not a topic name: must not be treated as matching the filter.
        assert!(!acl.can_publish("c", None, "sensors/+/temp"));
        assert!(!acl.can_receive("c", None, "logs/#"));
    }

    #[test]
    fn dollar_topics_need_dollar_rules() {
        let acl = parse("topic readwrite #\ntopic read $SYS/#\n");
        assert!(acl.can_publish("c", None, "anything/else"));
        assert!(!acl.can_publish("c", None, "$SYS/x"));
        assert!(acl.can_receive("c", None, "$SYS/x"));
        assert!(!acl.can_receive("c", None, "$other/x"));
    }

    #[test]
    fn sections_topics_and_usernames_may_contain_spaces_comments_and_crlf() {
        let acl = parse(
            "# header\r\n\r\n   \r\nuser  John Smith \r\n\ttopic\tread  room one/#\r\n  # indented comment\r\n",
        );
        assert!(acl.can_receive("c", Some("John Smith"), "room one/x"));
        assert!(!acl.can_receive("c", Some("John"), "room one/x"));
    }

    #[test]
    fn repeated_user_sections_accumulate() {
        let acl = parse("user a\ntopic x\nuser b\ntopic y\nuser a\ntopic z\n");
        assert!(acl.can_publish("c", Some("a"), "x"));
        assert!(acl.can_publish("c", Some("a"), "z"));
        assert!(!acl.can_publish("c", Some("a"), "y"));
    }

    #[test]
    fn single_access_word_is_a_topic_like_mosquitto() {
        let acl = parse("topic read\n");
        assert!(acl.can_publish("c", None, "read"));
        assert!(!acl.can_publish("c", None, "other"));
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let e = parse_err("topic a\n\nfoo bar\n");
        assert!(e.starts_with("test.acl:3: unknown keyword \"foo\""), "{e}");
        let e = parse_err("topic read a\ntopic reed a/b\n");
        assert!(
            e.starts_with("test.acl:2: invalid access type \"reed\""),
            "{e}"
        );
        let e = parse_err("user\n");
        assert!(e.starts_with("test.acl:1: missing username"), "{e}");
        let e = parse_err("# c\ntopic\n");
        assert!(e.starts_with("test.acl:2: missing topic"), "{e}");
        let e = parse_err("pattern read a/#/b\n");
        assert!(e.starts_with("test.acl:1: invalid topic \"a/#/b\""), "{e}");
        let e = parse_err("topic write a+\n");
        assert!(e.starts_with("test.acl:1: invalid topic"), "{e}");
    }

    #[test]
    fn load_reports_missing_file_and_invalid_utf8_with_path() {
        let e = AclFile::load(Path::new("/nonexistent/mqflux.acl")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/mqflux.acl"), "{e}");
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("bad.acl");
        fs::write(&p, b"topic a\ntopic \xff\n").expect("write");
        let e = AclFile::load(&p).expect_err("bad utf8").to_string();
        assert!(e.ends_with("bad.acl:2: not valid UTF-8"), "{e}");
    }
}
