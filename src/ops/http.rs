//! The HTTP/1.1 server under `/metrics` and `/health` and under the web dashboard (each its own
//! `Server`): bounded, so that no client can make it grow or stall.
//!
//! - At most `MAX_CONNECTIONS` connections are served, one thread each. A connection accepted
//!   beyond that closes the least recently active one: idle or trickling clients cannot lock a
//!   health probe out, and there are never more than 2 x `MAX_CONNECTIONS` connection threads
//!   (those served, and those closed and not yet ended).
//! - A request head must arrive whole within `REQUEST_TIMEOUT` of the previous response (or of
//!   accept), at most `MAX_REQUEST_HEAD` bytes; parsing is `httparse`'s.
//! - One request is answered at a time per connection, and the next one is read only once the
//!   answer is written: a client pipelining requests without reading the answers is held back by
//!   TCP, not queued in memory; and it has `WRITE_TIMEOUT` to take each answer, or is closed.
//!
//! - An answer is a whole body, or a stream (Server-Sent Events, `Body::Stream`): the stream
//!   writes until the client goes or a write takes longer than `WRITE_TIMEOUT`, and the
//!   connection closes after it.
//! - With a rustls configuration, every connection is TLS (the dashboard off loopback).
//! - A panic in a handler is answered 500 and logged, and closes its connection only.
//!
//! `tiny_http`, used before, spawned a thread per connection without bound, read pipelined
//! requests ahead into an unbounded queue and had no socket timeouts: two clients pipelining
//! `GET /metrics` without reading grew the broker by 412 MB and stalled `/health`, 500
//! half-sent requests made 506 threads. Its API offers no way to bound either.

use crate::broker::tls::MaybeTls;
use log::{debug, error};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Connections served at once (a scraper or two, probes, an operator's curl).
pub const MAX_CONNECTIONS: usize = 16;
/// Time for a whole request head to arrive, from accept or the previous response (so also how
/// long an idle kept-alive connection stays open).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to take a whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head (request line and headers) accepted.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Headers parsed per request; more is answered 431.
const MAX_HEADERS: usize = 32;

/// A parsed request: what `handler` gets.
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target: path and query, as sent.
    pub path: &'a str,
    /// Header names in lower case, values as sent (lossy UTF-8).
    pub headers: &'a [(String, String)],
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl Request<'_> {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Writes a streamed body (see `Body::Stream`).
pub type StreamWriter = Box<dyn FnOnce(&mut dyn Write)>;

/// What a response carries.
pub enum Body {
    Bytes(Vec<u8>),
    /// Written to the client until it returns (or a write fails); no Content-Length, and the
    /// connection closes after it.
    Stream(StreamWriter),
}

/// A response: status, content type, extra headers, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: Body::Bytes(body.into()),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

impl From<(u16, &'static str, String)> for Response {
    fn from((status, content_type, body): (u16, &'static str, String)) -> Response {
        Response::new(status, content_type, body)
    }
}

/// The answer to every request.
pub type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// One served connection, as the acceptor sees it.
struct Live {
    stream: TcpStream,
    /// Milliseconds since the server started, when the connection last finished a response.
    active_at: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

pub struct Server {
    local_addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    acceptor: JoinHandle<()>,
}

impl Server {
    /// Serve `listener` on a thread named `name` (connections: `name-conn`); over TLS when
    /// `tls` is given.
    pub fn start(
        listener: TcpListener,
        name: &str,
        handler: Arc<Handler>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let conn_name = format!("{name}-conn");
        let acceptor = thread::Builder::new()
            .name(name.into())
            .spawn(move || accept_loop(&listener, &stop, &conn_name, &handler, tls))?;
        Ok(Server {
            local_addr,
            stopping,
            acceptor,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, close every connection and join all the threads.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::SeqCst);
        crate::broker::listener::wake_accept(self.local_addr);
        let _ = self.acceptor.join();
    }
}

fn accept_loop(
    listener: &TcpListener,
    stopping: &AtomicBool,
    name: &str,
    handler: &Arc<Handler>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let started = Instant::now();
    let mut live: Vec<Live> = Vec::new();
    // Threads of connections closed to make room, joined once they have ended.
    let mut closing: Vec<JoinHandle<()>> = Vec::new();
    for incoming in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, or a connection reset before accept: try the next one.
                debug!("metrics: accept failed: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (ended, running): (Vec<Live>, Vec<Live>) =
            live.drain(..).partition(|l| l.thread.is_finished());
        live = running;
        closing.extend(ended.into_iter().map(|l| l.thread));
        let (done, waiting): (Vec<_>, Vec<_>) = closing.drain(..).partition(|t| t.is_finished());
        closing = waiting;
        for t in done {
            let _ = t.join();
        }
        if live.len() >= MAX_CONNECTIONS {
            // Make room by closing the least recently active connection: its thread wakes from
            // its read or write with an error and ends.
            let oldest = live
                .iter()
                .enumerate()
                .min_by_key(|(_, l)| l.active_at.load(Ordering::Relaxed))
                .map(|(i, _)| i);
            if let Some(oldest) = oldest {
                let l = live.swap_remove(oldest);
                debug!("metrics: {MAX_CONNECTIONS} connections open; closing the least recently active");
                let _ = l.stream.shutdown(Shutdown::Both);
                closing.push(l.thread);
            }
        }
        if closing.len() >= MAX_CONNECTIONS {
            // A hard bound on threads (2 x MAX_CONNECTIONS) even if closed ones are slow to end.
            let _ = closing.remove(0).join();
        }
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let active_at = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
        let (touch, h) = (active_at.clone(), handler.clone());
        let stream = match &tls {
            None => Stream::Plain(stream),
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(conn) => Stream::Tls(Box::new(rustls::StreamOwned::new(conn, stream))),
                Err(e) => {
                    debug!("{name}: cannot start TLS: {e}");
                    continue;
                }
            },
        };
        let spawned = thread::Builder::new()
            .name(name.into())
            .spawn(move || serve_connection(stream, started, &touch, &*h));
        match spawned {
            Ok(thread) => live.push(Live {
                stream: registered,
                active_at,
                thread,
            }),
            Err(e) => debug!("metrics: cannot start a connection thread: {e}"),
        }
    }
    for l in &live {
        let _ = l.stream.shutdown(Shutdown::Both);
    }
    for t in live.into_iter().map(|l| l.thread).chain(closing) {
        let _ = t.join();
    }
}

/// A served connection: plain TCP, or TLS over it (the handshake runs in the first read).
type Stream = MaybeTls<rustls::ServerConnection>;

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_read_timeout(t)
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.tcp().set_write_timeout(t)
    }

    fn shutdown(&mut self) {
        if let Stream::Tls(s) = self {
            // Write what is pending (an alert, close_notify) without waiting to read:
            // `complete_io` would also wait for the client's next record.
            s.conn.send_close_notify();
            while s.conn.wants_write() {
                if s.conn.write_tls(&mut s.sock).unwrap_or(0) == 0 {
                    break;
                }
            }
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

/// Answer requests on one connection until it closes, breaks a limit or asks to close.
fn serve_connection(
    mut stream: Stream,
    started: Instant,
    active_at: &AtomicU64,
    handler: &Handler,
) {
    // A panic (a bug, in a handler or a streamed body) ends this connection, not the server;
    // the socket is still shut below, or the acceptor's clone would keep the client waiting.
    if catch_unwind(AssertUnwindSafe(|| {
        serve_requests(&mut stream, started, active_at, handler)
    }))
    .is_err()
    {
        error!("http: a response failed (panicked); connection closed");
    }
    // The acceptor holds a clone of the socket (to close it when making room): dropping ours
    // alone would leave the client waiting for the end of a connection nobody serves.
    stream.shutdown();
}

fn serve_requests(stream: &mut Stream, started: Instant, active_at: &AtomicU64, handler: &Handler) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let head = match read_head(stream, &mut buf, deadline) {
            Ok(Some(head)) => head,
            Ok(None) => return, // closed, or the deadline passed
            Err(status) => {
                let answer = Response::new(status, TEXT, Vec::new());
                let _ = write_response(stream, answer, false, false, &|| {});
                return;
            }
        };
        let request = Request {
            method: &head.method,
            path: &head.path,
            headers: &head.headers,
            tls: matches!(stream, Stream::Tls(_)),
        };
        let mut failed = false;
        let response = match catch_unwind(AssertUnwindSafe(|| handler(&request))) {
            Ok(response) => response,
            Err(_) => {
                failed = true;
                error!(
                    "http: {} {}: the handler panicked; answered 500",
                    head.method, head.path
                );
                Response::new(500, TEXT, "internal error: see the server log\n")
            }
        };
        let streamed = matches!(response.body, Body::Stream(_));
        // A request body is not expected (GET, HEAD); rather than read one, answer and close.
        let keep_alive = head.keep_alive && !head.has_body && !streamed && !failed;
        let is_head = head.method == "HEAD";
        buf.drain(..head.len);
        // A streamed answer counts as activity with every write, so an open event stream is
        // not the first connection closed to make room.
        let touch = || active_at.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Err(e) = write_response(stream, response, keep_alive, is_head, &touch) {
            debug!("metrics: response not taken within {WRITE_TIMEOUT:?}, closing: {e}");
            return;
        }
        active_at.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        if !keep_alive {
            return;
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    /// Bytes of `buf` the head takes.
    len: usize,
    keep_alive: bool,
    has_body: bool,
}

/// Read until `buf` holds a whole request head. Ok(None): the client closed or was too slow;
/// Err(status): answer that and close.
fn read_head(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<Option<Head>, u16> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                };
                let connection = header("connection").unwrap_or_default();
                // HTTP/1.1 keeps the connection unless told not to; 1.0 closes it.
                let keep_alive = request.version == Some(1) && !connection.contains("close");
                let has_body = header("transfer-encoding").is_some()
                    || header("content-length").is_some_and(|l| l.trim() != "0");
                let headers = request
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).trim().to_string();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                return Ok(Some(Head {
                    method: request.method.unwrap_or_default().to_string(),
                    path: request.path.unwrap_or_default().to_string(),
                    headers,
                    len,
                    keep_alive,
                    has_body,
                }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(431),
            Err(_) => return Err(400),
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(431);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return Ok(None);
        }
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(MAX_REQUEST_HEAD - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(None),
        }
    }
}

/// Write one response within `WRITE_TIMEOUT` as a whole (a client taking a byte at a time is
/// cut off, not waited for forever). A streamed body is then written by its function, each
/// write within `WRITE_TIMEOUT`.
fn write_response(
    stream: &mut Stream,
    response: Response,
    keep_alive: bool,
    head_only: bool,
    touch: &dyn Fn(),
) -> io::Result<()> {
    let status = response.status;
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {}\r\n",
        response.content_type
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let stream_body = match response.body {
        Body::Bytes(body) => {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            if !keep_alive {
                out.push_str("Connection: close\r\n");
            }
            out.push_str("\r\n");
            let mut out = out.into_bytes();
            if !head_only {
                out.extend_from_slice(&body);
            }
            write_all_within(stream, &out)?;
            return Ok(());
        }
        Body::Stream(f) => f,
    };
    out.push_str("Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
    write_all_within(stream, out.as_bytes())?;
    if head_only {
        return Ok(());
    }
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    stream.flush()?;
    stream_body(&mut Touching { stream, touch });
    Ok(())
}

/// A streamed body's writer: each write marks the connection active.
struct Touching<'a> {
    stream: &'a mut Stream,
    touch: &'a dyn Fn(),
}

impl Write for Touching<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (self.touch)();
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

fn write_all_within(stream: &mut Stream, out: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + WRITE_TIMEOUT;
    let mut written = 0;
    while written < out.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write deadline passed",
            ));
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(&out[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept-alive request: the answer is read until the server closes the connection.
    fn get(addr: SocketAddr, path: &str, extra: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[test]
    fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let handler: Arc<Handler> = Arc::new(|r: &Request| {
            if r.path == "/panic" {
                panic!("a bug in a handler");
            }
            if r.path == "/stream-panic" {
                return Response {
                    status: 200,
                    content_type: TEXT,
                    headers: Vec::new(),
                    body: Body::Stream(Box::new(|out| {
                        let _ = out.write_all(b"first");
                        let _ = out.flush();
                        panic!("a bug in a stream");
                    })),
                };
            }
            Response::new(200, TEXT, "fine")
        });
        let server = Server::start(listener, "test-http", handler, None).unwrap();
        let addr = server.local_addr();
        let started = Instant::now();
        let answer = get(addr, "/panic", "");
        assert!(answer.starts_with("HTTP/1.1 500 "), "{answer:?}");
        // It closes the connection; a streamed body's panic too (the client sees the end).
        let streamed = get(addr, "/stream-panic", "");
        assert!(streamed.ends_with("first"), "{streamed:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a client was left waiting"
        );
        assert!(get(addr, "/", "Connection: close\r\n").ends_with("fine"));
        server.stop();
    }
}
