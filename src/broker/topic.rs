//! Topic names and topic filters: validation and wildcard matching (MQTT 3.1.1 section 4.7).

/// Why a topic name or filter was refused; the text cites the rule.
pub type TopicError = &'static str;

/// Most levels a topic name or filter may have (mosquitto's TOPIC_HIERARCHY_LIMIT). The topic
/// trie is walked level by level, so this also bounds the stack a client can make it use.
pub const MAX_TOPIC_LEVELS: usize = 200;

const TOO_DEEP: TopicError = "topic has more than 200 levels (broker limit, as mosquitto)";

/// A topic name as used in PUBLISH: non-empty, no wildcards.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err("[MQTT-4.7.3-1] topic name must be at least one character long");
    }
    // One pass over the bytes (this runs for every publish): levels and wildcards.
    let (mut separators, mut wildcard) = (0usize, false);
    for b in topic.bytes() {
        match b {
            b'/' => separators += 1,
            b'+' | b'#' => wildcard = true,
            _ => {}
        }
    }
    if separators >= MAX_TOPIC_LEVELS {
        return Err(TOO_DEEP);
    }
    if wildcard {
        return Err("[MQTT-3.3.2-2] topic name must not contain wildcard characters");
    }
    Ok(())
}

/// A topic filter as used in SUBSCRIBE/UNSUBSCRIBE.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err("[MQTT-4.7.3-1] topic filter must be at least one character long");
    }
    if filter.split('/').nth(MAX_TOPIC_LEVELS).is_some() {
        return Err(TOO_DEEP);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("[MQTT-4.7.1-2] '#' must occupy a whole level and be the last level");
        }
        if level.contains('+') && level != "+" {
            return Err("[MQTT-4.7.1-3] '+' must occupy a whole level");
        }
    }
    Ok(())
}

/// A SUBSCRIBE topic filter: a valid filter and, for `$share/{ShareName}/{filter}`, a non-empty
/// ShareName without "/", "+" or "#" followed by "/" and a non-empty filter [MQTT-4.8.2-1/2 (v5)].
pub fn validate_subscription_filter(filter: &str) -> Result<(), TopicError> {
    validate_topic_filter(filter)?;
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(());
    };
    match rest.split_once('/') {
        Some((name, inner)) if !name.is_empty() && !name.contains(['+', '#']) => {
            if inner.is_empty() {
                return Err("[MQTT-4.8.2-2] a shared subscription needs a topic filter");
            }
            validate_topic_filter(inner)
        }
        _ => Err("[MQTT-4.8.2-1/2] $share/ needs a ShareName without '+' or '#', then '/'"),
    }
}

/// Does `filter` match `topic`? Both must already be valid.
///
/// Filters starting with a wildcard do not match topics starting with '$' [MQTT-4.7.2-1].
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            // "sport/#" also matches "sport" [MQTT-4.7.1-2].
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscription_filters_need_a_share_name_and_a_filter() {
        for ok in [
            "$share/g/a/b",
            "$share/g/#",
            "$share/g/+/x",
            "$share",
            "$shared/x",
        ] {
            assert!(validate_subscription_filter(ok).is_ok(), "{ok}");
        }
        for bad in [
            "$share/g",
            "$share//x",
            "$share/g/",
            "$share/g+/x",
            "$share/#/x",
        ] {
            assert!(validate_subscription_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wildcards_match_per_spec_examples() {
        // Examples from MQTT 3.1.1 section 4.7.1.
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("#", "a/b/c"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!filter_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1]
        assert!(!filter_matches("#", "$SYS/broker/uptime"));
        assert!(!filter_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/+/uptime", "$SYS/broker/uptime"));
    }

    #[test]
    fn invalid_filters_are_refused() {
        for bad in ["", "a/#/b", "a#", "a/b#", "a+", "a/+b/c", "#/a"] {
            assert!(validate_topic_filter(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["#", "+", "a/+/b", "a/#", "+/+", "/", "$SYS/#"] {
            assert!(validate_topic_filter(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn topics_deeper_than_the_level_limit_are_refused() {
        let ok = vec!["a"; MAX_TOPIC_LEVELS].join("/");
        let deep = vec!["a"; MAX_TOPIC_LEVELS + 1].join("/");
        assert!(validate_topic_name(&ok).is_ok() && validate_topic_filter(&ok).is_ok());
        assert!(validate_topic_name(&deep).is_err());
        assert!(validate_topic_filter(&deep).is_err());
    }

    #[test]
    fn topic_names_with_wildcards_are_refused() {
        assert!(validate_topic_name("a/+").is_err());
        assert!(validate_topic_name("a/#").is_err());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("a/b").is_ok());
    }
}
