//! The topic table: a trie of subscriptions behind an `RwLock` (read side on the publish hot path,
//! write side only for SUBSCRIBE/UNSUBSCRIBE), and the retained-message store.

use super::message::Message;
use super::session::SessionRef;
use super::topic::filter_matches;
use crate::protocol::SubscriptionOptions;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

#[derive(Default)]
struct Node {
    /// Child levels, including the literal wildcard levels "+" and "#".
    children: HashMap<Box<str>, Node>,
    /// Sessions whose filter ends at this node, keyed by client id.
    subscribers: HashMap<Arc<str>, Subscriber>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty()
    }
}

struct Subscriber {
    session: SessionRef,
    options: SubscriptionOptions,
    /// v5 Subscription Identifier given in SUBSCRIBE, echoed in matching PUBLISHes.
    identifier: Option<u32>,
}

/// One session a message must be delivered to, with the options of its matching subscription.
/// Overlapping subscriptions of one session are merged into one delivery at the highest QoS,
/// carrying the identifiers of all of them [MQTT-3.3.4-3 (v5)].
pub struct Delivery {
    pub session: SessionRef,
    pub options: SubscriptionOptions,
    pub subscription_ids: Vec<u32>,
}

#[derive(Default)]
pub struct Router {
    subscriptions: RwLock<Node>,
    retained: RwLock<HashMap<Arc<str>, Arc<Message>>>,
}

impl Router {
    /// Add or replace `session`'s subscription to `filter`. Returns true if it already existed.
    pub fn subscribe(
        &self,
        filter: &str,
        session: &SessionRef,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) -> bool {
        let mut root = self
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let node = filter.split('/').fold(&mut *root, |node, level| {
            node.children.entry(level.into()).or_default()
        });
        let subscriber = Subscriber {
            session: session.clone(),
            options,
            identifier,
        };
        node.subscribers
            .insert(session.client_id.clone(), subscriber)
            .is_some()
    }

    /// Remove `client_id`'s subscription to `filter`. Returns true if it existed.
    pub fn unsubscribe(&self, filter: &str, client_id: &str) -> bool {
        let mut root = self
            .subscriptions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut root, &levels, client_id)
    }

    /// Every session subscribed to a filter matching `topic`, one entry per session.
    /// Subscriptions with v5 No Local do not match their own client's messages [MQTT-3.8.3-3].
    pub fn matches(&self, topic: &str, publisher: Option<&str>) -> Vec<Delivery> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Vec::new();
        {
            let root = self.subscriptions.read().unwrap_or_else(|e| e.into_inner());
            // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
            collect(&root, &levels, topic.starts_with('$'), publisher, &mut out);
        }
        merge_overlapping(&mut out);
        out
    }

    /// Number of (session, filter) subscriptions, for statistics.
    pub fn subscription_count(&self) -> usize {
        fn count(node: &Node) -> usize {
            node.subscribers.len() + node.children.values().map(count).sum::<usize>()
        }
        count(&self.subscriptions.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Store (or, with an empty payload, clear) the retained message for its topic.
    /// [MQTT-3.3.1-5] store; [MQTT-3.3.1-10]/[MQTT-3.3.1-11] empty payload removes it.
    pub fn retain(&self, message: &Arc<Message>) {
        let mut retained = self.retained.write().unwrap_or_else(|e| e.into_inner());
        if message.payload.is_empty() {
            retained.remove(&message.topic);
        } else {
            retained.insert(message.topic.clone(), message.clone());
        }
    }

    /// Retained messages whose topic matches `filter` [MQTT-3.3.1-6].
    pub fn retained_matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let retained = self.retained.read().unwrap_or_else(|e| e.into_inner());
        retained
            .values()
            .filter(|m| filter_matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    pub fn retained_count(&self) -> usize {
        self.retained
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

fn collect(
    node: &Node,
    levels: &[&str],
    dollar: bool,
    publisher: Option<&str>,
    out: &mut Vec<Delivery>,
) {
    let push_all = |n: &Node, out: &mut Vec<Delivery>| {
        let wanted = n
            .subscribers
            .iter()
            .filter(|(id, s)| !(s.options.no_local && Some(&***id) == publisher));
        out.extend(wanted.map(|(_, s)| Delivery {
            session: s.session.clone(),
            options: s.options,
            subscription_ids: s.identifier.into_iter().collect(),
        }))
    };
    let Some((level, rest)) = levels.split_first() else {
        push_all(node, out);
        // "sport/#" matches "sport" as well [MQTT-4.7.1-2].
        if let Some(hash) = node.children.get("#") {
            push_all(hash, out);
        }
        return;
    };
    if !dollar {
        if let Some(hash) = node.children.get("#") {
            push_all(hash, out);
        }
        if let Some(plus) = node.children.get("+") {
            collect(plus, rest, false, publisher, out);
        }
    }
    if let Some(child) = node.children.get(*level) {
        collect(child, rest, false, publisher, out);
    }
}

fn remove(node: &mut Node, levels: &[&str], client_id: &str) -> bool {
    match levels.split_first() {
        None => node.subscribers.remove(client_id).is_some(),
        Some((level, rest)) => {
            let Some(child) = node.children.get_mut(*level) else {
                return false;
            };
            let removed = remove(child, rest, client_id);
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
