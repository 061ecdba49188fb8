//! The topic table: a trie of subscriptions behind an `RwLock` (read side on the publish hot path,
//! write side only for SUBSCRIBE/UNSUBSCRIBE), shared subscription groups, and the retained store.

use super::message::{Message, Route};
use super::session::SessionRef;
use super::topic::filter_matches;
use crate::protocol::SubscriptionOptions;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

/// The table's maps are looked up with client-chosen strings on every publish (each topic level,
/// the retained topic): ahash is several times faster than SipHash on such short keys, and
/// keyed per process like std's, so clients cannot pick colliding topics.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Default)]
struct Node {
    /// Child levels, including the literal wildcard levels "+" and "#".
    children: Map<Box<str>, Node>,
    /// Sessions whose (non-shared) filter ends at this node, keyed by client id.
    subscribers: Map<Arc<str>, Subscriber>,
    /// Shared subscription groups (`$share/{group}/{filter}`) whose filter ends here, by group.
    shared: Map<Box<str>, SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

#[derive(Clone)]
struct Subscriber {
    session: SessionRef,
    options: SubscriptionOptions,
    /// v5 Subscription Identifier given in SUBSCRIBE, echoed in matching PUBLISHes.
    identifier: Option<u32>,
}

/// The members of one shared subscription: each message goes to one of them, round-robin.
struct SharedGroup {
    /// The whole `$share/{group}/{filter}` string, to find the group again for redelivery.
    key: Arc<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

impl SharedGroup {
    /// Next member in turn, preferring connected ones with room in their queue, then the
    /// connected full one that completed a message last (it holds the publisher back, see
    /// `flow.rs`; a member that takes nothing is picked last), then offline ones; `exclude`
    /// skips a member that is leaving.
    fn pick(&self, exclude: Option<&str>) -> Option<&Subscriber> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..n).map(|i| &self.members[(start + i) % n]);
        let (mut full, mut offline): (Option<(u64, &Subscriber)>, _) = (None, None);
        for m in candidates.filter(|m| Some(&*m.session.client_id) != exclude) {
            // try_lock: never wait on a session while holding the table's read lock; a session
            // that is busy right now is one that is active.
            let online = m
                .session
                .state
                .try_lock()
                .map(|s| s.link().is_some())
                .unwrap_or(true);
            let room = &m.session.room;
            if !online {
                offline.get_or_insert(m);
            } else if room.is_full() {
                let taken_at = room.taken_at_ns();
                if full.is_none_or(|(t, _)| taken_at > t) {
                    full = Some((taken_at, m));
                }
            } else {
                return Some(m);
            }
        }
        full.map(|(_, m)| m).or(offline)
    }
}

/// Split `$share/{group}/{filter}` into group and filter (MQTT 5.0 section 4.8.2).
pub fn parse_shared(filter: &str) -> Option<(&str, &str)> {
    filter.strip_prefix("$share/")?.split_once('/')
}

/// One session a message must be delivered to. Overlapping non-shared subscriptions of one
/// session are merged into one delivery at the highest QoS, carrying the identifiers of all of
/// them [MQTT-3.3.4-3 (v5)]; each matching shared group adds one delivery of its own.
pub struct Delivery {
    pub session: SessionRef,
    pub options: SubscriptionOptions,
    pub subscription_ids: Vec<u32>,
    /// The shared subscription this delivery came through, if any.
    pub shared_group: Option<Arc<str>>,
}

impl Delivery {
    /// How the message travels to this session: QoS downgraded to the granted one, RETAIN kept
    /// only for Retain As Published ([MQTT-3.3.1-9], [MQTT-3.3.1-12 (v5)]).
    pub fn route(self, message: &Message) -> (SessionRef, Route) {
        let route = Route {
            qos: message.qos.min(self.options.qos),
            retain: message.retain && self.options.retain_as_published,
            subscription_ids: self.subscription_ids,
            shared_group: self.shared_group,
        };
        (self.session, route)
    }
}

/// Bounds on the retained store (`limits.max_retained_messages` / `max_retained_bytes`);
/// 0 = unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetainedLimits {
    pub max_messages: usize,
    pub max_bytes: u64,
}

/// What `Router::retain` did with a retained PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored, as a new topic or replacing the topic's previous message.
    Stored,
    /// Empty payload: the topic's retained message (if any) was removed.
    Cleared,
    /// A new topic beyond `RetainedLimits`: not stored (the PUBLISH is still routed).
    Refused,
}

/// The retained messages by topic, with the count and size of those that count against
/// `RetainedLimits` kept up to date.
#[derive(Default)]
struct RetainedStore {
    messages: Map<Arc<str>, Arc<Message>>,
    /// Number of messages that count against the limits (`counts_against_limits`).
    counted: usize,
    /// Sum of `retained_size` over those messages.
    bytes: u64,
}

/// What a retained message counts against `max_retained_bytes`: its topic and payload.
fn retained_size(m: &Message) -> u64 {
    (m.topic.len() + m.payload.len()) as u64
}

/// The broker's own `$SYS` tree (which clients cannot publish to) is neither limited nor
/// counted: it is a fixed set of a few dozen topics, refreshed every `sys_interval`, and a
/// store filled by clients must not freeze it, nor must it eat into the clients' allowance.
fn counts_against_limits(topic: &str) -> bool {
    !topic.starts_with("$SYS/")
}

impl RetainedStore {
    fn remove(&mut self, topic: &str) {
        if let Some(old) = self.messages.remove(topic) {
            if counts_against_limits(&old.topic) {
                self.counted -= 1;
                self.bytes -= retained_size(&old);
            }
        }
    }

    fn insert(&mut self, message: &Arc<Message>) {
        self.remove(&message.topic);
        if counts_against_limits(&message.topic) {
            self.counted += 1;
            self.bytes += retained_size(message);
        }
        self.messages.insert(message.topic.clone(), message.clone());
    }

    /// Whether storing `message` as a NEW topic would exceed `limits`.
    fn over_limit(&self, message: &Message, limits: &RetainedLimits) -> bool {
        if !counts_against_limits(&message.topic) {
            return false;
        }
        let too_many = limits.max_messages > 0 && self.counted >= limits.max_messages;
        let too_big =
            limits.max_bytes > 0 && self.bytes + retained_size(message) > limits.max_bytes;
        too_many || too_big
    }
}

#[derive(Default)]
pub struct Router {
    subscriptions: RwLock<Node>,
    /// Whether `subscriptions` holds any (set under its write lock): a broker that only feeds
    /// the sink then routes a publish without touching the lock, whose count every connection
    /// thread would otherwise update for every publish.
    has_subscriptions: AtomicBool,
    retained: RwLock<RetainedStore>,
    retained_limits: RetainedLimits,
}

impl Router {
    pub fn new(retained_limits: RetainedLimits) -> Router {
        Router {
            retained_limits,
            ..Router::default()
        }
    }

    /// Add or replace `session`'s subscription to `filter` (plain or `$share/...`).
    /// Returns true if it already existed.
    pub fn subscribe(
        &self,
        filter: &str,
        session: &SessionRef,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let subscriber = Subscriber {
            session: session.clone(),
            options,
            identifier,
        };
        let mut root = self
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        self.has_subscriptions.store(true, Ordering::Release);
        match parse_shared(filter) {
            Some((group, topic_filter)) => {
                let node = node_for(&mut root, topic_filter);
                let g = node
                    .shared
                    .entry(group.into())
                    .or_insert_with(|| SharedGroup {
                        key: filter.into(),
                        members: Vec::new(),
                        next: AtomicUsize::new(0),
                    });
                let existing = g
                    .members
                    .iter_mut()
                    .find(|m| m.session.client_id == session.client_id);
                match existing {
                    Some(m) => {
                        *m = subscriber;
                        true
                    }
                    None => {
                        g.members.push(subscriber);
                        false
                    }
                }
            }
            None => {
                let node = node_for(&mut root, filter);
                node.subscribers
                    .insert(session.client_id.clone(), subscriber)
                    .is_some()
            }
        }
    }

    /// Remove `client_id`'s subscription to `filter`. Returns true if it existed.
    /// Only `session`'s own entry is removed: a connection that was taken over must not remove
    /// the subscription its successor made under the same client id.
    pub fn unsubscribe(&self, filter: &str, session: &SessionRef) -> bool {
        let mut root = self
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let (group, topic_filter) = match parse_shared(filter) {
            Some((group, topic_filter)) => (Some(group), topic_filter),
            None => (None, filter),
        };
        let levels: Vec<&str> = topic_filter.split('/').collect();
        let removed = remove(&mut root, &levels, group, session);
        self.has_subscriptions
            .store(!root.children.is_empty(), Ordering::Release);
        removed
    }

    /// Whether any session subscribes to anything (without taking the table's lock).
    pub fn has_subscriptions(&self) -> bool {
        self.has_subscriptions.load(Ordering::Acquire)
    }

    /// Every session a message on `topic` goes to. Subscriptions with v5 No Local do not match
    /// their own client's messages [MQTT-3.8.3-3].
    pub fn matches(&self, topic: &str, publisher: Option<&str>) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut shared = Vec::new();
        // No subscription at all (a broker that only feeds the sink): nothing to split.
        if !self.has_subscriptions() {
            return out;
        }
        {
            let root = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
            // On the stack for all but very deep topics: this runs for every publish.
            let levels: smallvec::SmallVec<[&str; 16]> = topic.split('/').collect();
            let mut m = Matcher {
                publisher,
                out: &mut out,
                shared: &mut shared,
            };
            // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
            m.collect(&root, &levels, topic.starts_with('$'));
        }
        merge_overlapping(&mut out);
        out.append(&mut shared);
        out
    }

    /// Another member of shared group `key` for a message that `leaving` could not take.
    pub fn redeliver_shared(&self, key: &str, leaving: &str) -> Option<Delivery> {
        let (group, topic_filter) = parse_shared(key)?;
        let root = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
        let node = topic_filter
            .split('/')
            .try_fold(&*root, |node, level| node.children.get(level))?;
        let g = node.shared.get(group)?;
        let m = g.pick(Some(leaving))?;
        Some(Delivery {
            session: m.session.clone(),
            options: m.options,
            subscription_ids: m.identifier.into_iter().collect(),
            shared_group: Some(g.key.clone()),
        })
    }

    /// Number of (session, filter) subscriptions, for statistics.
    pub fn subscription_count(&self) -> usize {
        fn count(node: &Node) -> usize {
            let shared: usize = node.shared.values().map(|g| g.members.len()).sum();
            node.subscribers.len() + shared + node.children.values().map(count).sum::<usize>()
        }
        count(&self.subscriptions.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Store (or, with an empty payload, clear) the retained message for its topic.
    /// [MQTT-3.3.1-5] store; [MQTT-3.3.1-10]/[MQTT-3.3.1-11] empty payload removes it.
    /// A new topic that would take the store beyond its limits is refused (the spec lets a
    /// server decline to store: [MQTT-3.3.1-5] is a SHOULD for it to be kept "as long as
    /// possible"); replacing a stored topic is always allowed, since it is how a client keeps
    /// its value current, and `$SYS` topics are exempt (see `counts_against_limits`).
    /// `journal` is called with the store's lock held, and only for a change actually made,
    /// so the store records concurrent changes to one topic in the order they were applied.
    pub fn retain(&self, message: &Arc<Message>, journal: impl FnOnce()) -> RetainOutcome {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        if message.payload.is_empty() {
            journal();
            retained.remove(&message.topic);
            return RetainOutcome::Cleared;
        }
        let exists = retained.messages.contains_key(&message.topic);
        if !exists && retained.over_limit(message, &self.retained_limits) {
            return RetainOutcome::Refused;
        }
        journal();
        retained.insert(message);
        RetainOutcome::Stored
    }

    /// Retained messages whose topic matches `filter` [MQTT-3.3.1-6]; expired ones are dropped
    /// from the store instead [MQTT-3.3.2-5].
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let (live, expired): (Vec<_>, Vec<_>) = {
            let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
            let matching = retained
                .messages
                .values()
                .filter(|m| filter_matches(filter, &m.topic));
            matching.cloned().partition(|m| !m.is_expired())
        };
        if !expired.is_empty() {
            let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
            for m in expired {
                if retained
                    .messages
                    .get(&m.topic)
                    .is_some_and(|r| Arc::ptr_eq(r, &m))
                {
                    retained.remove(&m.topic);
                }
            }
        }
        live
    }

    /// Live retained messages whose topic starts with `prefix` (for the dashboard).
    pub fn retained_with_prefix(&self, prefix: &str) -> Vec<Arc<Message>> {
        let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
        retained
            .messages
            .values()
            .filter(|m| m.topic.starts_with(prefix) && !m.is_expired())
            .cloned()
            .collect()
    }

    /// Every retained topic.
    pub fn retained_topics(&self) -> Vec<Arc<str>> {
        let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
        retained.messages.keys().cloned().collect()
    }

    pub fn has_retained(&self, topic: &str) -> bool {
        let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
        retained.messages.contains_key(topic)
    }

    pub fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .messages
            .len()
    }

    /// Total size (topic + payload bytes) of the retained messages outside `$SYS`.
    pub fn retained_bytes(&self) -> u64 {
        self.retained
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .bytes
    }
}

fn node_for<'a>(root: &'a mut Node, filter: &str) -> &'a mut Node {
    filter.split('/').fold(root, |node, level| {
        node.children.entry(level.into()).or_default()
    })
}

/// Walks the trie for one topic, collecting plain deliveries and one per matching shared group.
struct Matcher<'a> {
    publisher: Option<&'a str>,
    out: &'a mut Vec<Delivery>,
    shared: &'a mut Vec<Delivery>,
}

impl Matcher<'_> {
    fn take_all(&mut self, n: &Node) {
        for (id, s) in &n.subscribers {
            if s.options.no_local && Some(&**id) == self.publisher {
                continue;
            }
            self.out.push(Delivery {
                session: s.session.clone(),
                options: s.options,
                subscription_ids: s.identifier.into_iter().collect(),
                shared_group: None,
            });
        }
        for g in n.shared.values() {
            if let Some(m) = g.pick(None) {
                self.shared.push(Delivery {
                    session: m.session.clone(),
                    options: m.options,
                    subscription_ids: m.identifier.into_iter().collect(),
                    shared_group: Some(g.key.clone()),
                });
            }
        }
    }

    fn collect(&mut self, node: &Node, levels: &[&str], dollar: bool) {
        let Some((level, rest)) = levels.split_first() else {
            self.take_all(node);
            // "sport/#" matches "sport" as well [MQTT-4.7.1-2].
            if let Some(hash) = node.children.get("#") {
                self.take_all(hash);
            }
            return;
        };
        if !dollar {
            if let Some(hash) = node.children.get("#") {
                self.take_all(hash);
            }
            if let Some(plus) = node.children.get("+") {
                self.collect(plus, rest, false);
            }
        }
        if let Some(child) = node.children.get(*level) {
            self.collect(child, rest, false);
        }
    }
}

fn remove(node: &mut Node, levels: &[&str], group: Option<&str>, session: &SessionRef) -> bool {
    match levels.split_first() {
        None => match group {
            None => {
                let own = node
                    .subscribers
                    .get(&session.client_id)
                    .is_some_and(|s| Arc::ptr_eq(&s.session, session));
                own && node.subscribers.remove(&session.client_id).is_some()
            }
            Some(group) => {
                let Some(g) = node.shared.get_mut(group) else {
                    return false;
                };
                let before = g.members.len();
                g.members.retain(|m| !Arc::ptr_eq(&m.session, session));
                let removed = g.members.len() < before;
                if g.members.is_empty() {
                    node.shared.remove(group);
                }
                removed
            }
        },
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove(child, rest, group, session);
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

/// A session with several matching subscriptions gets one copy at the highest granted QoS
/// (MQTT 3.1.1 section 3.3.5, non-normative but what every broker does).
fn merge_overlapping(out: &mut Vec<Delivery>) {
    if out.len() < 2 {
        return;
    }
    out.sort_by_key(|d| Arc::as_ptr(&d.session) as usize);
    out.dedup_by(|later, kept| {
        if Arc::ptr_eq(&later.session, &kept.session) {
            if later.options.qos > kept.options.qos {
                kept.options.qos = later.options.qos;
            }
            // One copy: it keeps its RETAIN flag if any matching subscription asked for that.
            kept.options.retain_as_published |= later.options.retain_as_published;
            kept.subscription_ids.append(&mut later.subscription_ids);
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    fn retained(topic: &str, payload: &str) -> Arc<Message> {
        Arc::new(Message::new(
            topic.into(),
            bytes::Bytes::copy_from_slice(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
            Default::default(),
            Some("c".into()),
            crate::broker::message::now_ns(),
        ))
    }

    #[test]
    fn retained_byte_count_follows_replace_clear_and_sys_is_not_counted() {
        let router = Router::new(RetainedLimits {
            max_messages: 2,
            max_bytes: 0,
        });
        let put = |t: &str, p: &str| router.retain(&retained(t, p), || {});
        assert_eq!(put("a", "12345"), RetainOutcome::Stored);
        assert_eq!(router.retained_bytes(), 6);
        assert_eq!(put("a", "1"), RetainOutcome::Stored, "replace at any size");
        assert_eq!(router.retained_bytes(), 2);
        assert_eq!(put("b", "1"), RetainOutcome::Stored);
        assert_eq!(
            put("$SYS/broker/x", "1"),
            RetainOutcome::Stored,
            "$SYS exempt"
        );
        assert_eq!(put("c", "1"), RetainOutcome::Refused);
        assert_eq!(router.retained_bytes(), 4, "$SYS not counted");
        assert_eq!(put("a", ""), RetainOutcome::Cleared);
        assert_eq!(router.retained_bytes(), 2);
        assert_eq!(put("c", "1"), RetainOutcome::Stored, "clearing made room");
        assert_eq!(router.retained_count(), 3);
    }

    #[test]
    fn refused_retained_message_is_not_journaled() {
        let router = Router::new(RetainedLimits {
            max_messages: 0,
            max_bytes: 10,
        });
        let mut journaled = 0;
        router.retain(&retained("t", "123456789"), || journaled += 1);
        let outcome = router.retain(&retained("u", "1"), || journaled += 1);
        assert_eq!((outcome, journaled), (RetainOutcome::Refused, 1));
    }
}
