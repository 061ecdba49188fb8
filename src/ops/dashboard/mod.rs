//! The web dashboard (config `[dashboard]`, off by default): pages about the broker and the
//! InfluxDB sink, the JSON API behind them (`/api/v1/`), live figures over Server-Sent Events,
//! and three operator actions.
//!
//! - Served by `ops::http` (bounded, blocking; TLS when `dashboard.cert_file` is set, which
//!   configuration requires off loopback) on its own address, `dashboard.bind`.
//! - The pages are `assets/` (hand-written HTML, CSS and JS), embedded with `include_str!`:
//!   no build step, no CDN, works offline.
//! - `live`: the `dashboard-sampler` thread takes the figures once a second (rates, the chart's
//!   history, the busiest topics); `api`: the JSON documents; `auth`: who may read and act
//!   (HTTP Basic against the password file, `dashboard.admins`, CSRF token, Origin).
//! - It reads the broker through `broker::inspect` (copies taken under the broker's locks)
//!   and acts through `Broker::kick`, `discard_session` and `delete_retained`. The broker
//!   never calls the dashboard; its only cost on the publish path is `topic_rates::note`.
//!
//! The API (every path under `/api/v1/`; README "Web dashboard" has curl examples):
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET overview` | uptime, version, connections, sessions, subscriptions, retained, rates, sink |
//! | `GET history` | the last `live::HISTORY` one-second samples |
//! | `GET events` | Server-Sent Events: one `sample` event a second |
//! | `GET clients?q=&status=online\|offline&page=&per_page=` | sessions, a page of them |
//! | `GET clients/{id}` | one session with its subscriptions and will |
//! | `POST clients/{id}/kick` | admin: disconnect (v5: DISCONNECT 0x98) |
//! | `DELETE sessions/{id}` | admin: discard the session |
//! | `GET topics` | retained topic tree, busiest live topics |
//! | `GET retained?prefix=&limit=` | retained messages (text, JSON, hex) |
//! | `DELETE retained?topic=` | admin: delete a retained message |
//! | `GET sink` | rules, last point per measurement, spool |
//! | `GET csrf` | admin: the CSRF token for `X-CSRF-Token` |
//! | `GET whoami` | the logged-in user and whether they are an admin |
//! | `GET login` | the same, but asks for credentials (401) when none were sent |

mod api;
mod auth;
pub mod live;

use crate::broker::Broker;
use crate::ops::http::{self, Body, Request, Response};
use auth::{Gate, Refusal};
use live::{Live, Sampler};
use log::info;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

const JSON: &str = "application/json";

pub struct DashboardServer {
    server: http::Server,
    sampler: Sampler,
}

impl DashboardServer {
    /// Bind `dashboard.bind` and serve the dashboard; logs `dashboard on http(s)://ADDR`.
    pub fn start(broker: &Arc<Broker>, addr: SocketAddr) -> Result<DashboardServer, String> {
        let settings = &broker.config.dashboard;
        let tls = match settings.tls_listener() {
            Some(listener) => Some(
                crate::broker::tls::server_config(&listener)
                    .map_err(|e| format!("dashboard.{}: {}", e.key, e.message))?,
            ),
            None => None,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr} for the dashboard: {e}"))?;
        let _ = socket2::SockRef::from(&listener).set_tcp_nodelay(true);
        let sampler = Sampler::start(broker)
            .map_err(|e| format!("cannot start the dashboard sampler thread: {e}"))?;
        let site = Arc::new(Site {
            broker: broker.clone(),
            live: sampler.live().clone(),
            gate: Gate::new(settings.admins.clone(), settings.require_login),
        });
        let handler: Arc<http::Handler> = Arc::new(move |request: &Request| site.respond(request));
        let server = match http::Server::start(listener, "dashboard", handler, tls) {
            Ok(s) => s,
            Err(e) => {
                sampler.stop();
                return Err(format!("cannot start the dashboard thread: {e}"));
            }
        };
        info!("dashboard on {scheme}://{}/", server.local_addr());
        Ok(DashboardServer { server, sampler })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Close every connection (event streams included) and join the threads.
    pub fn stop(self) {
        self.server.stop();
        self.sampler.stop();
    }
}

struct Site {
    broker: Arc<Broker>,
    live: Arc<Live>,
    gate: Gate,
}

fn json_response(status: u16, doc: &Value) -> Response {
    Response::new(status, JSON, doc.to_string()).with_header("Cache-Control", "no-store")
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}

fn refused(refusal: Refusal) -> Response {
    match refusal {
        Refusal::Unauthorized(why) => error(401, why).with_header(
            "WWW-Authenticate",
            "Basic realm=\"mqflux dashboard\", charset=\"UTF-8\"",
        ),
        Refusal::Forbidden(why) => error(403, &why),
    }
}

/// A page or script, with headers that keep it from being framed or sniffed.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    Response::new(200, content_type, body)
        .with_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        )
        .with_header("X-Frame-Options", "DENY")
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Cache-Control", "no-cache")
}

impl Site {
    fn respond(&self, request: &Request) -> Response {
        let (path, query) = match request.path.split_once('?') {
            Some((p, q)) => (p, parse_query(q)),
            None => (request.path, BTreeMap::new()),
        };
        let method = match request.method {
            "HEAD" => "GET",
            m => m,
        };
        if method == "GET" {
            if let Err(r) = self.gate.read(request, &self.broker) {
                return refused(r);
            }
        }
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return match (method, path) {
                ("GET", "/" | "/index.html") => asset("text/html; charset=utf-8", INDEX_HTML),
                ("GET", "/app.js") => asset("text/javascript; charset=utf-8", APP_JS),
                ("GET", "/style.css") => asset("text/css; charset=utf-8", STYLE_CSS),
                ("GET", _) => error(404, "not found: the dashboard is at /"),
                _ => error(405, "only GET here"),
            };
        };
        let segments: Vec<&str> = rest.split('/').collect();
        match (method, segments.as_slice()) {
            ("GET", ["overview"]) => json_response(200, &api::overview(&self.broker, &self.live)),
            ("GET", ["history"]) => json_response(200, &api::history(&self.live)),
            ("GET", ["events"]) => {
                let live = self.live.clone();
                Response {
                    status: 200,
                    content_type: "text/event-stream",
                    headers: Vec::new(),
                    body: Body::Stream(Box::new(move |out| live.events(out))),
                }
            }
            ("GET", ["clients"]) => json_response(200, &api::clients(&self.broker, &query)),
            ("GET", ["clients", id]) => match decode(id) {
                Some(id) => match api::client(&self.broker, &id) {
                    Some(doc) => json_response(200, &doc),
                    None => error(404, "no such client or session"),
                },
                None => error(400, "malformed client id"),
            },
            ("GET", ["topics"]) => json_response(200, &api::topics(&self.broker, &self.live)),
            ("GET", ["retained"]) => json_response(200, &api::retained(&self.broker, &query)),
            ("GET", ["sink"]) => json_response(200, &api::sink(&self.broker)),
            ("GET", ["whoami" | "login"]) => {
                let user = self.gate.user(request, &self.broker).ok().flatten();
                if user.is_none() && rest == "login" {
                    // The browser asks for credentials and sends them from then on.
                    return refused(Refusal::Unauthorized("log in with a password file user"));
                }
                let admin = user.is_some()
                    && self
                        .broker
                        .config
                        .dashboard
                        .admins
                        .iter()
                        .any(|a| Some(a) == user.as_ref());
                json_response(200, &json!({ "user": user, "admin": admin }))
            }
            ("GET", ["csrf"]) => match self.gate.admin(request, &self.broker, false) {
                Ok(user) => json_response(200, &json!({ "token": self.gate.csrf_token(&user) })),
                Err(r) => refused(r),
            },
            ("POST", ["clients", id, "kick"]) => self.act(request, id, "kick client", |b, id| {
                b.kick(id)
                    .then(|| json!({ "kicked": id }))
                    .ok_or("client not connected")
            }),
            ("DELETE", ["sessions", id]) => self.act(request, id, "discard session", |b, id| {
                b.discard_session(id)
                    .then(|| json!({ "discarded": id }))
                    .ok_or("no such session")
            }),
            ("DELETE", ["retained"]) => {
                let topic = query.get("topic").cloned().unwrap_or_default();
                if topic.is_empty() {
                    return error(400, "expected ?topic=TOPIC");
                }
                self.act_on(request, &topic, "delete retained message on", |b, t| {
                    b.delete_retained(t)
                        .then(|| json!({ "deleted": t }))
                        .ok_or("no retained message on that topic")
                })
            }
            ("GET", _) => error(
                404,
                "no such API path (see the README's Web dashboard section)",
            ),
            _ => error(405, "method not allowed here"),
        }
    }

    /// An admin action on a percent-encoded path segment.
    fn act(
        &self,
        request: &Request,
        segment: &str,
        what: &str,
        action: impl FnOnce(&Broker, &str) -> Result<Value, &'static str>,
    ) -> Response {
        match decode(segment) {
            Some(id) => self.act_on(request, &id, what, action),
            None => error(400, "malformed path segment"),
        }
    }

    /// Check the admin, CSRF token and origin, run `action` and log it with the user.
    fn act_on(
        &self,
        request: &Request,
        target: &str,
        what: &str,
        action: impl FnOnce(&Broker, &str) -> Result<Value, &'static str>,
    ) -> Response {
        let user = match self.gate.admin(request, &self.broker, true) {
            Ok(user) => user,
            Err(r) => {
                info!("dashboard: refused to {what} {target:?}: {}", describe(&r));
                return refused(r);
            }
        };
        match action(&self.broker, target) {
            Ok(doc) => {
                info!("dashboard: user {user:?}: {what} {target:?}: done");
                json_response(200, &doc)
            }
            Err(why) => {
                info!("dashboard: user {user:?}: {what} {target:?}: {why}");
                error(404, why)
            }
        }
    }
}

fn describe(r: &Refusal) -> String {
    match r {
        Refusal::Unauthorized(why) => format!("401 {why}"),
        Refusal::Forbidden(why) => format!("403 {why}"),
    }
}

/// `a=1&b=x%2Fy` -> {a: "1", b: "x/y"}; undecodable pairs are left out.
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

/// Percent-decoding (`+` is a space, as forms send it); None for bad escapes or bad UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_path_segments_are_percent_decoded() {
        let q = parse_query("topic=a%2Fb%20c&x=1+2&bad=%zz");
        assert_eq!(q["topic"], "a/b c");
        assert_eq!(q["x"], "1 2");
        assert!(!q.contains_key("bad"));
        assert_eq!(decode("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%ff"), None);
    }
}
