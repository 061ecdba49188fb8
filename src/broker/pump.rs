//! The transport pump of a TLS or WebSocket client: one thread that owns the client's TCP
//! socket and the protocol state (rustls `ServerConnection`, tungstenite `WebSocket`).
//!
//! It first does the TLS handshake and/or the WebSocket upgrade, bounded by
//! `limits.connect_timeout_secs`, and reads the client certificate's identity. Then it creates a
//! `UnixStream` pair, starts the ordinary connection threads on one end (they see bare MQTT bytes
//! and need no change), and bridges the other end to the client: decrypt/unframe towards the
//! broker, encrypt/frame towards the client.
//!
//! The bridge is non-blocking: one `poll` on both sockets, with bounded buffers in each
//! direction, so a client that does not read cannot stop the broker's messages from the client
//! being delivered (and the reverse), and memory per client stays bounded. When either side
//! ends, the other is closed cleanly: TLS close_notify, WebSocket close frame, or EOF towards the
//! connection threads.

use super::connection;
use super::connection::ConnectionSlot;
use super::socket::Socket;
use super::state::Broker;
use super::tls;
use crate::config::ListenerProtocol;
use log::{debug, info, warn};
use rustls::ServerConnection;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// What a transport pump needs to know about the listener that accepted its socket.
pub struct ListenerContext {
    pub protocol: ListenerProtocol,
    /// rustls configuration for mqtts / wss.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// ws / wss: the HTTP path of the WebSocket endpoint.
    pub websocket_path: String,
    /// mqtts / wss: hand the client certificate's subject CN to the connection.
    pub use_identity_as_username: bool,
    /// Whether a CONNECT without username is accepted here (`SecurityConfig::anonymous_access`).
    pub allow_anonymous: bool,
    /// Connections of this listener still open (handshakes included).
    pub(super) active: Arc<AtomicUsize>,
}

/// The handshake (rustls, http parsing) needs more stack than a connection thread; still small.
const PUMP_STACK: usize = 256 * 1024;
/// Bytes read from one side per step, and the most buffered per direction before the pump
/// stops reading that side (one WebSocket message may exceed it once).
const CHUNK: usize = 16 * 1024;
/// Encrypted bytes rustls may hold for a client that is slow to read.
const TLS_SEND_BUFFER: usize = 64 * 1024;
/// How long to go on flushing to the client after the broker closed the connection.
const LINGER: Duration = Duration::from_secs(5);

/// Start the pump thread for a freshly accepted socket of a TLS or WebSocket listener.
pub fn start(
    broker: &Arc<Broker>,
    context: &Arc<ListenerContext>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    bridging: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let broker = broker.clone();
    let context = context.clone();
    thread::Builder::new()
        .name(format!("pump-{peer}"))
        .stack_size(PUMP_STACK)
        .spawn(move || run(&broker, &context, tcp, peer, slot, &bridging))
}

fn run(
    broker: &Arc<Broker>,
    context: &ListenerContext,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: ConnectionSlot,
    bridging: &AtomicBool,
) {
    let scheme = context.protocol.scheme();
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(broker.config.limits.connect_timeout_secs);
    let shutdown_handle = tcp.try_clone();
    let (mut transport, identity) = match handshake(broker, context, tcp, peer, deadline) {
        Ok(t) => t,
        Err(e) => {
            info!("{scheme} connection from {peer} closed during the handshake: {e}");
            if let Ok(s) = shutdown_handle {
                let _ = s.shutdown(Shutdown::Both);
            }
            return;
        }
    };
    let started = UnixStream::pair().and_then(|(broker_end, pump_end)| {
        pump_end.set_nonblocking(true)?;
        transport.tcp().set_nonblocking(true)?;
        connection::spawn(
            broker,
            Socket::Bridged(broker_end),
            peer,
            identity,
            context.allow_anonymous,
            slot,
        )?;
        Ok(pump_end)
    });
    match started {
        Ok(pump_end) => {
            bridging.store(true, Ordering::Release);
            bridge(&mut transport, pump_end, peer)
        }
        Err(e) => warn!("{scheme} connection from {peer} dropped: {e}"),
    }
    // The listener keeps a clone of the socket: shut it down so the client sees the close now.
    let _ = transport.tcp().shutdown(Shutdown::Both);
}

/// TLS handshake and/or WebSocket upgrade in blocking mode, bounded by `deadline`.
/// Returns the transport and, with `use_identity_as_username`, the client certificate's CN.
#[allow(clippy::result_large_err)] // the upgrade callback returns tungstenite's ErrorResponse
fn handshake(
    broker: &Broker,
    context: &ListenerContext,
    tcp: TcpStream,
    peer: SocketAddr,
    deadline: Instant,
) -> io::Result<(Transport, Option<String>)> {
    let mut net = NetStream {
        tcp: DeadlineTcp {
            stream: tcp,
            deadline: Some(deadline),
        },
        tls: None,
    };
    let mut identity = None;
    if let Some(config) = &context.tls {
        let mut conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(TLS_SEND_BUFFER));
        while conn.is_handshaking() {
            conn.complete_io(&mut net.tcp)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut net.tcp)?;
        }
        let certificate = conn.peer_certificates().and_then(|chain| chain.first());
        if context.use_identity_as_username {
            // The certificate was verified against ca_file by rustls; its subject CN is the
            // identity the connection will use as the username.
            match certificate.and_then(|c| tls::subject_common_name(c)) {
                Some(cn) => {
                    debug!("{peer}: TLS client identity {cn:?}");
                    identity = Some(cn);
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "use_identity_as_username is set but the client certificate \
                         (if any) has no subject CN",
                    ))
                }
            }
        }
        net.tls = Some(Box::new(conn));
    }
    let transport = if context.protocol.is_websocket() {
        let max = broker.config.limits.max_packet_size.max(CHUNK);
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_write_buffer_size(4 * CHUNK)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let path = context.websocket_path.as_str();
        let ws = tungstenite::accept_hdr_with_config(
            net,
            |request: &Request, response: Response| check_upgrade(request, response, path),
            Some(config),
        )
        .map_err(|e| io::Error::other(format!("WebSocket upgrade failed: {e}")))?;
        Transport::WebSocket(Box::new(ws))
    } else {
        Transport::Raw(net)
    };
    let mut transport = transport;
    transport.net().tcp.deadline = None;
    Ok((transport, identity))
}

/// Accept the WebSocket upgrade only on the configured path, and agree on the `mqtt`
/// subprotocol [MQTT-6.0.0-3] [MQTT-6.0.0-4] (`mqttv3.1` for MQTT 3.1 clients).
#[allow(clippy::result_large_err)] // the signature tungstenite's `Callback` asks for
fn check_upgrade(
    request: &Request,
    mut response: Response,
    path: &str,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != path {
        return Err(http_error(
            StatusCode::NOT_FOUND,
            format!("no MQTT WebSocket endpoint at {}", request.uri().path()),
        ));
    }
    let offered: Vec<&str> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let chosen = ["mqtt", "mqttv3.1"]
        .into_iter()
        .find(|p| offered.iter().any(|o| o.eq_ignore_ascii_case(p)));
    match chosen {
        Some(p) => {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
        }
        // A client that names no subprotocol at all is served anyway (lenient, like mosquitto).
        None if offered.is_empty() => {}
        None => {
            return Err(http_error(
                StatusCode::BAD_REQUEST,
                format!("expected the WebSocket subprotocol \"mqtt\", offered {offered:?}"),
            ))
        }
    }
    Ok(response)
}

fn http_error(status: StatusCode, message: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message));
    *response.status_mut() = status;
    response
}

/// The client's TCP socket. During the handshake it is blocking and every read and write is
/// bounded by the connect deadline (so a client trickling bytes cannot hold it open); while
/// bridging it is non-blocking and the deadline is None.
struct DeadlineTcp {
    stream: TcpStream,
    deadline: Option<Instant>,
}

impl DeadlineTcp {
    fn remaining(&self) -> io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "handshake not completed within limits.connect_timeout_secs",
                )),
            },
        }
    }

    /// A timeout in blocking mode is reported as WouldBlock by the OS; make it TimedOut so that
    /// it is never mistaken for "try again" by rustls or tungstenite.
    fn timed(&self, result: io::Result<usize>) -> io::Result<usize> {
        match result {
            Err(e) if self.deadline.is_some() && e.kind() == io::ErrorKind::WouldBlock => Err(
                io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"),
            ),
            other => other,
        }
    }
}

impl Read for DeadlineTcp {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(left) = self.remaining()? {
            self.stream.set_read_timeout(Some(left))?;
        }
        let result = self.stream.read(buf);
        self.timed(result)
    }
}

impl Write for DeadlineTcp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(left) = self.remaining()? {
            self.stream.set_write_timeout(Some(left))?;
        }
        let result = self.stream.write(buf);
        self.timed(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// The client's byte stream: TCP, or TLS over TCP. Non-blocking while bridging: `WouldBlock`
/// means "wait for poll".
struct NetStream {
    tcp: DeadlineTcp,
    tls: Option<Box<ServerConnection>>,
}

impl NetStream {
    /// Send what rustls has queued, as far as the socket takes it.
    fn push_tls(&mut self) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                tls.write_tls(&mut self.tcp)?;
            }
        }
        Ok(())
    }
}

impl Read for NetStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &mut self.tls else {
            return self.tcp.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                // Ok(0): the client sent close_notify.
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // UnexpectedEof: TCP closed without close_notify; the end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = tls.process_new_packets() {
                // Tell the client why (rustls queued an alert), then give up.
                let _ = tls.write_tls(&mut self.tcp);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Write for NetStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let accepted = match &mut self.tls {
            None => return self.tcp.write(buf),
            Some(tls) => tls.writer().write(buf)?,
        };
        match self.push_tls() {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if accepted == 0 && !buf.is_empty() {
            // rustls' send buffer is full until the client reads.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(accepted)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push_tls()?;
        self.tcp.flush()
    }
}

/// How MQTT bytes travel to the client: as-is on the stream, or in WebSocket binary frames.
enum Transport {
    Raw(NetStream),
    WebSocket(Box<WebSocket<NetStream>>),
}

enum Progress {
    Data,
    Blocked,
    Eof,
}

impl Transport {
    fn net(&mut self) -> &mut NetStream {
        match self {
            Transport::Raw(n) => n,
            Transport::WebSocket(ws) => ws.get_mut(),
        }
    }

    fn tcp(&mut self) -> &TcpStream {
        &self.net().tcp.stream
    }

    /// Read MQTT bytes from the client and append them to `out`.
    fn read_into(&mut self, out: &mut Vec<u8>, scratch: &mut [u8]) -> io::Result<Progress> {
        match self {
            Transport::Raw(net) => match net.read(scratch) {
                Ok(0) => Ok(Progress::Eof),
                Ok(n) => {
                    out.extend_from_slice(&scratch[..n]);
                    Ok(Progress::Data)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Progress::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Progress::Data),
                Err(e) => Err(e),
            },
            Transport::WebSocket(ws) => match ws.read() {
                Ok(Message::Binary(bytes)) => {
                    out.extend_from_slice(&bytes);
                    Ok(Progress::Data)
                }
                // [MQTT-6.0.0-1] MQTT travels in binary frames only; anything else closes.
                Ok(Message::Text(_)) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "WebSocket text frame received [MQTT-6.0.0-1]",
                )),
                // Pings are answered by tungstenite; a close is answered when we close.
                Ok(Message::Close(_)) => Ok(Progress::Eof),
                Ok(_) => Ok(Progress::Data),
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(Progress::Blocked)
                }
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                ) => Ok(Progress::Eof),
                Err(tungstenite::Error::Io(e)) => Err(e),
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            },
        }
    }

    /// Queue MQTT bytes for the client. Returns how many were taken; WouldBlock if none.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Raw(net) => net.write(data),
            Transport::WebSocket(ws) => match ws.write(Message::binary(data.to_vec())) {
                Ok(()) => Ok(data.len()),
                // The frame is buffered inside tungstenite; flush() sends it later.
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    Ok(data.len())
                }
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    Err(io::ErrorKind::WouldBlock.into())
                }
                Err(tungstenite::Error::Io(e)) => Err(e),
                Err(e) => Err(io::Error::new(io::ErrorKind::NotConnected, e.to_string())),
            },
        }
    }

    /// Send everything queued. WouldBlock: more remains, wait until the socket is writable.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Raw(net) => net.flush(),
            Transport::WebSocket(ws) => match ws.flush() {
                Ok(()) => Ok(()),
                Err(tungstenite::Error::Io(e)) => Err(e),
                // ConnectionClosed: the close handshake is complete, nothing more to send.
                Err(e) => Err(io::Error::new(io::ErrorKind::NotConnected, e.to_string())),
            },
        }
    }

    /// Queue the protocol's goodbye: a WebSocket close frame and/or a TLS close_notify.
    fn start_close(&mut self) {
        if let Transport::WebSocket(ws) = self {
            let _ = ws.close(None);
            let _ = ws.flush();
        }
        if let Some(tls) = &mut self.net().tls {
            tls.send_close_notify();
        }
    }
}

/// Move bytes both ways between the client (`transport`) and the connection threads (`unix`)
/// until both are done.
fn bridge(transport: &mut Transport, mut unix: UnixStream, peer: SocketAddr) {
    let mut scratch = vec![0u8; CHUNK];
    // Client -> broker bytes not yet taken by the connection's reader.
    let mut inbound: Vec<u8> = Vec::new();
    // Broker -> client bytes not yet taken by the transport.
    let mut outbound: Vec<u8> = Vec::new();
    let mut net_eof = false; // the client will send nothing more
    let mut net_dead = false; // nothing more can be sent to the client
    let mut unix_eof = false; // the connection threads have closed their end
    let mut unix_write_shut = false;
    let mut closing = false; // close frame / close_notify queued
    let mut pending = false; // output waiting for the client's socket to become writable
    let mut linger_until: Option<Instant> = None;

    loop {
        // Make every step that can proceed without blocking, until none can.
        loop {
            let mut progress = false;
            if !net_eof && inbound.len() < CHUNK {
                match transport.read_into(&mut inbound, &mut scratch) {
                    Ok(Progress::Data) => progress = true,
                    Ok(Progress::Blocked) => {}
                    Ok(Progress::Eof) => {
                        net_eof = true;
                        progress = true;
                    }
                    Err(e) => {
                        debug!("{peer}: transport read failed: {e}");
                        (net_eof, net_dead, progress) = (true, true, true);
                    }
                }
            }
            if !inbound.is_empty() {
                match unix.write(&inbound) {
                    Ok(n) => {
                        inbound.drain(..n);
                        progress |= n > 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        // The connection is gone; what the client still sends has no reader.
                        inbound.clear();
                        (net_eof, unix_eof, progress) = (true, true, true);
                    }
                }
            }
            if net_eof && inbound.is_empty() && !unix_write_shut {
                // The client has finished: the connection's reader sees EOF.
                let _ = unix.shutdown(Shutdown::Write);
                unix_write_shut = true;
            }
            if !unix_eof && outbound.is_empty() && !pending {
                match unix.read(&mut scratch) {
                    Ok(0) => {
                        unix_eof = true;
                        progress = true;
                    }
                    Ok(n) => {
                        outbound.extend_from_slice(&scratch[..n]);
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(_) => {
                        unix_eof = true;
                        progress = true;
                    }
                }
            }
            if !outbound.is_empty() {
                if net_dead {
                    outbound.clear();
                } else {
                    match transport.write(&outbound) {
                        Ok(n) => {
                            outbound.drain(..n);
                            progress |= n > 0;
                        }
                        // Full: the flush below finds the socket blocked and sets `pending`.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            debug!("{peer}: transport write failed: {e}");
                            outbound.clear();
                            (net_eof, net_dead, progress) = (true, true, true);
                        }
                    }
                }
            }
            if unix_eof && outbound.is_empty() && !closing && !net_dead {
                transport.start_close();
                closing = true;
                progress = true;
            }
            if net_dead {
                pending = false;
            } else {
                match transport.flush() {
                    Ok(()) => pending = false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => pending = true,
                    Err(e) => {
                        if !closing {
                            debug!("{peer}: transport flush failed: {e}");
                        }
                        (net_eof, net_dead, pending, progress) = (true, true, false, true);
                    }
                }
            }
            if !progress {
                break;
            }
        }

        if unix_eof && (net_dead || (closing && !pending)) {
            break;
        }
        let now = Instant::now();
        let timeout_ms = if unix_eof {
            let until = *linger_until.get_or_insert(now + LINGER);
            if until <= now {
                debug!("{peer}: client did not take the last bytes in time");
                break;
            }
            (until - now).as_millis().min(i32::MAX as u128) as i32 + 1
        } else {
            -1
        };

        let mut tcp_events: libc::c_short = 0;
        if !net_eof && inbound.len() < CHUNK {
            tcp_events |= libc::POLLIN;
        }
        if pending {
            tcp_events |= libc::POLLOUT;
        }
        let mut unix_events: libc::c_short = 0;
        if !unix_eof && outbound.is_empty() && !pending {
            unix_events |= libc::POLLIN;
        }
        if !inbound.is_empty() {
            unix_events |= libc::POLLOUT;
        }
        // A socket with nothing wanted from it is left out (a negative fd is ignored), so that a
        // hang-up it reports cannot make this loop spin.
        let fd = |events: libc::c_short, raw: i32| if events == 0 { -1 } else { raw };
        let mut fds = [
            libc::pollfd {
                fd: fd(tcp_events, transport.tcp().as_raw_fd()),
                events: tcp_events,
                revents: 0,
            },
            libc::pollfd {
                fd: fd(unix_events, unix.as_raw_fd()),
                events: unix_events,
                revents: 0,
            },
        ];
        let timeout_ms = if tcp_events == 0 && unix_events == 0 && timeout_ms < 0 {
            100 // cannot happen by the logic above; never block forever on nothing
        } else {
            timeout_ms
        };
        // SAFETY: `fds` is a valid array of two initialised pollfd structs that outlives the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                warn!("{peer}: poll failed: {e}");
                break;
            }
        }
    }
}
