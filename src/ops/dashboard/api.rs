//! The JSON documents of `/api/v1/`, built from the broker's read-only views
//! (`broker::inspect`), the sampler's figures (`live`) and the sink's counters.

use super::live::Live;
use crate::broker::inspect::SessionView;
use crate::broker::Broker;
use crate::broker::WillView;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Clients per page unless asked; the most one page holds.
pub const PER_PAGE: usize = 50;
pub const MAX_PER_PAGE: usize = 500;
/// Retained messages listed unless asked; the most one answer holds.
pub const RETAINED_LIMIT: usize = 100;
pub const MAX_RETAINED_LIMIT: usize = 1000;
/// Payload bytes shown of a retained message.
const PAYLOAD_SHOWN: usize = 4096;
/// Retained topics in the topic tree at most.
const TREE_TOPICS: usize = 2000;
/// Busiest topics listed.
const BUSIEST: usize = 20;

pub fn overview(broker: &Broker, live: &Live) -> Value {
    let sample = live.latest().unwrap_or_default();
    let mut doc = sample.to_json();
    let s = &sample.snapshot;
    let o = doc.as_object_mut().expect("an object");
    o.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    o.insert("uptime_secs".into(), broker.uptime().as_secs().into());
    o.insert(
        "retained_bytes".into(),
        broker.router.retained_bytes().into(),
    );
    o.insert("connections".into(), s.clients_connected.into());
    o.insert("sink".into(), sink_summary(broker));
    // mqflux has no bridges yet; the field is here so the page shows them once it has.
    o.insert("bridges".into(), json!([]));
    doc
}

fn sink_summary(broker: &Broker) -> Value {
    if !broker.sink.is_enabled() {
        return json!({ "enabled": false });
    }
    let k = broker.sink.stats();
    let dropped = k.dropped_total();
    // Points taken in and not yet written, dropped or spooled: in the hand-off queue or a batch.
    let in_memory = k
        .received
        .saturating_sub(k.excluded + k.written.saturating_sub(k.replayed) + dropped + k.spooled);
    json!({
        "enabled": true,
        "received": k.received,
        "written": k.written,
        "excluded": k.excluded,
        "dropped": dropped,
        "dropped_by_reason": k.dropped.iter().filter(|(_, n)| *n > 0)
            .map(|(r, n)| (r.to_string(), json!(n))).collect::<Map<_, _>>(),
        "retried": k.retried,
        "write_requests": k.write_requests,
        "queued_in_memory": in_memory,
        "spool_points": k.spool_points,
        "spool_bytes": k.spool_bytes,
        "last_error": k.last_error,
        "prepared": k.prepared,
    })
}

pub fn history(live: &Live) -> Value {
    Value::Array(live.history().iter().map(|s| s.to_json()).collect())
}

fn will_json(w: &WillView) -> Value {
    json!({
        "topic": w.topic, "qos": w.qos, "retain": w.retain, "delay_secs": w.delay_secs,
        "payload_bytes": w.payload_bytes, "payload_preview": w.payload_preview,
    })
}

fn client_json(s: &SessionView, detail: bool) -> Value {
    let c = s.connection.as_ref();
    let mut doc = json!({
        "client_id": &*s.client_id,
        "connected": c.is_some(),
        "username": c.and_then(|c| c.username.as_deref()),
        "address": c.map(|c| c.peer.to_string()),
        "protocol": c.map(|c| c.protocol.to_string()),
        "keep_alive": c.map(|c| c.keep_alive_secs),
        "clean_start": c.map(|c| c.clean_start),
        "persistent": s.expiry_interval != 0,
        "session_expiry": s.expiry_interval,
        "connected_since_ms": c.map(|c| c.connected_at_ms),
        "offline_secs": s.offline_secs,
        "inflight": s.inflight,
        "queued": s.queued,
        "dropped": s.dropped,
        "subscription_count": s.subscriptions.len(),
    });
    if detail {
        let subs: Vec<Value> = s
            .subscriptions
            .iter()
            .map(|f| {
                json!({
                    "filter": f.filter, "qos": f.qos, "no_local": f.no_local,
                    "retain_as_published": f.retain_as_published,
                    "retain_handling": f.retain_handling, "identifier": f.identifier,
                })
            })
            .collect();
        let o = doc.as_object_mut().expect("an object");
        o.insert("subscriptions".into(), Value::Array(subs));
        o.insert(
            "will".into(),
            c.and_then(|c| c.will.as_ref())
                .map_or(Value::Null, will_json),
        );
    }
    doc
}

/// `GET /api/v1/clients?q=&status=&page=&per_page=`: matching sessions, one page of them.
pub fn clients(broker: &Broker, query: &BTreeMap<String, String>) -> Value {
    let q = query.get("q").map(|s| s.to_lowercase()).unwrap_or_default();
    let status = query.get("status").map(String::as_str).unwrap_or("all");
    let per_page = query
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(PER_PAGE)
        .clamp(1, MAX_PER_PAGE);
    let page: usize = query
        .get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(1)
        .max(1);
    let matching: Vec<SessionView> = broker
        .sessions_view()
        .into_iter()
        .filter(|s| match status {
            "online" => s.connection.is_some(),
            "offline" => s.connection.is_none(),
            _ => true,
        })
        .filter(|s| {
            if q.is_empty() {
                return true;
            }
            let c = s.connection.as_ref();
            s.client_id.to_lowercase().contains(&q)
                || c.and_then(|c| c.username.as_deref())
                    .is_some_and(|u| u.to_lowercase().contains(&q))
                || c.is_some_and(|c| c.peer.to_string().contains(&q))
        })
        .collect();
    let total = matching.len();
    let shown: Vec<Value> = matching
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|s| client_json(s, false))
        .collect();
    json!({ "total": total, "page": page, "per_page": per_page, "clients": shown })
}

pub fn client(broker: &Broker, client_id: &str) -> Option<Value> {
    broker
        .sessions_view()
        .iter()
        .find(|s| &*s.client_id == client_id)
        .map(|s| client_json(s, true))
}

/// `GET /api/v1/topics`: the retained topics as a tree, and the busiest live topics.
pub fn topics(broker: &Broker, live: &Live) -> Value {
    let all = broker.retained_topics();
    let total = all.len();
    #[derive(Default)]
    struct Node {
        retained: bool,
        children: BTreeMap<String, Node>,
    }
    let mut root = Node::default();
    for topic in all.iter().take(TREE_TOPICS) {
        let mut node = &mut root;
        for level in topic.split('/') {
            node = node.children.entry(level.to_string()).or_default();
        }
        node.retained = true;
    }
    fn to_json(name: &str, path: &str, node: &Node) -> Value {
        let children: Vec<Value> = node
            .children
            .iter()
            .map(|(n, c)| {
                let p = if path.is_empty() && name.is_empty() {
                    n.clone()
                } else {
                    format!("{path}/{n}")
                };
                to_json(n, &p, c)
            })
            .collect();
        json!({ "name": name, "topic": path, "retained": node.retained, "children": children })
    }
    let tree: Vec<Value> = root
        .children
        .iter()
        .map(|(n, c)| to_json(n, n, c))
        .collect();
    let busiest: Vec<Value> = live
        .busiest(BUSIEST)
        .into_iter()
        .map(|(t, r)| json!({ "topic": &*t, "per_sec": (r * 10.0).round() / 10.0 }))
        .collect();
    json!({
        "retained_total": total,
        "retained_tree": tree,
        "tree_truncated": total > TREE_TOPICS,
        "busiest": busiest,
        "busiest_note": format!(
            "estimated from 1 in {} publishes, at most {} topics tracked",
            crate::broker::topic_rates::SAMPLE_ONE_IN,
            crate::broker::topic_rates::CAPACITY
        ),
    })
}

/// `GET /api/v1/retained?prefix=&limit=`: retained messages with their payload as text,
/// JSON (when it parses) and hex.
pub fn retained(broker: &Broker, query: &BTreeMap<String, String>) -> Value {
    let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
    let limit = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(RETAINED_LIMIT)
        .clamp(1, MAX_RETAINED_LIMIT);
    let (views, total) = broker.retained_view(prefix, limit);
    let messages: Vec<Value> = views
        .iter()
        .map(|v| {
            let m = &v.message;
            let shown = &m.payload[..m.payload.len().min(PAYLOAD_SHOWN)];
            let text = std::str::from_utf8(shown).ok();
            let parsed = text
                .filter(|_| shown.len() == m.payload.len())
                .and_then(|t| serde_json::from_str::<Value>(t).ok());
            let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
            json!({
                "topic": &*m.topic,
                "qos": m.qos as u8,
                "bytes": m.payload.len(),
                "received_at_ms": m.received_at_ns / 1_000_000,
                "truncated": shown.len() < m.payload.len(),
                "text": text,
                "json": parsed,
                "hex": hex,
            })
        })
        .collect();
    json!({ "total": total, "prefix": prefix, "messages": messages })
}

/// `GET /api/v1/sink`: the mapping rules, the last point written per measurement, the spool.
pub fn sink(broker: &Broker) -> Value {
    let config = &broker.config.sink;
    let rules: Vec<Value> = config
        .rules
        .iter()
        .map(|r| {
            json!({
                "topic": r.topic, "store": r.store, "measurement": r.measurement,
                "tags": r.tags, "topic_tag": r.topic_tag, "value_field": r.value_field,
                "line_protocol": r.line_protocol,
                "timestamp_field": r.timestamp_field,
            })
        })
        .collect();
    let last: Vec<Value> = broker
        .sink
        .last_points()
        .iter()
        .rev()
        .map(|p| json!({ "measurement": p.measurement, "line": p.line, "written_at_ms": p.written_at_ms }))
        .collect();
    json!({
        "enabled": broker.sink.is_enabled(),
        "database": config.database,
        "batch_size": config.batch_size,
        "flush_interval_ms": config.flush_interval_ms,
        "rules": rules,
        "stats": sink_summary(broker),
        "last_points": last,
        "spool": {
            "dir": config.spool_dir.display().to_string(),
            "max_bytes": config.spool_max_bytes,
        },
    })
}
