//! Listeners: one named accept thread per `[[listeners]]` entry. Plain MQTT sockets go straight
//! to their connection threads; TLS and WebSocket sockets first get a transport pump (`pump.rs`)
//! that does the handshake and then bridges the bare MQTT bytes to the connection threads.

use super::connection;
use super::connection::ConnectionSlot;
use super::pump::{self, ListenerContext};
use super::socket::Socket;
use super::state::Broker;
use super::stats::Stats;
use super::tls;
use crate::config::{ListenerConfig, ListenerProtocol};
use log::{debug, error, info, warn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub struct Listener {
    local_addr: SocketAddr,
    thread: JoinHandle<()>,
    /// True while the accept loop runs; read by the `/health` endpoint.
    accepting: Arc<AtomicBool>,
    scheme: &'static str,
}

/// Clears the `accepting` flag however the accept loop ends (even by a panic).
struct AcceptingGuard(Arc<AtomicBool>);

impl Drop for AcceptingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Listener {
    /// Bind the listener and start accepting. Logs `listening on SCHEME://ADDR` once bound
    /// (`tcp://` for plain MQTT, `mqtts://`, `ws://`, `wss://` for the others).
    pub fn start(broker: &Arc<Broker>, settings: &ListenerConfig) -> io::Result<Listener> {
        let ip: IpAddr = settings.bind.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bind: not an IP address: {:?}", settings.bind),
            )
        })?;
        let addr = SocketAddr::new(ip, settings.port());
        let protocol = settings.protocol;
        let tls = if protocol.is_tls() {
            let config = tls::server_config(settings).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: {}", e.key, e.message),
                )
            })?;
            Some(config)
        } else {
            None
        };
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        info!("listening on {}://{local_addr}", protocol.scheme());
        // Who may connect without credentials, stated once per listener, since the default
        // depends on the address (anonymous on loopback only, as mosquitto 2.0).
        let access = broker.config.security.anonymous_access(settings);
        info!(
            "listener {}://{local_addr} {}",
            protocol.scheme(),
            access.describe()
        );
        let context = Arc::new(ListenerContext {
            protocol,
            tls,
            websocket_path: settings.websocket_path().to_string(),
            use_identity_as_username: settings.use_identity_as_username,
            allow_anonymous: access.allows_anonymous(),
            active: Arc::new(AtomicUsize::new(0)),
        });
        let max_connections = settings.max_connections;
        let broker = broker.clone();
        let accepting = Arc::new(AtomicBool::new(true));
        let guard = AcceptingGuard(accepting.clone());
        let thread = thread::Builder::new()
            .name(format!("listener-{}", local_addr.port()))
            .spawn(move || {
                let _guard = guard;
                accept_loop(&broker, listener, &context, max_connections)
            })?;
        Ok(Listener {
            local_addr,
            thread,
            accepting,
            scheme: protocol.scheme(),
        })
    }

    /// A health check for this listener: Err once it no longer accepts connections.
    pub fn probe(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let (accepting, addr, scheme) = (self.accepting.clone(), self.local_addr, self.scheme);
        move || {
            if accepting.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(format!(
                    "listener {scheme}://{addr} is not accepting connections"
                ))
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting (the broker must already be marked as shutting down) and join the thread,
    /// which joins this listener's transport pumps.
    pub fn stop(self) {
        wake_accept(self.local_addr);
        let _ = self.thread.join();
    }
}

/// A running transport pump and a handle on its client socket, to cut it short at shutdown.
struct PumpThread {
    thread: JoinHandle<()>,
    socket: TcpStream,
    /// Set by the pump once the handshake is done and it bridges a connection.
    bridging: Arc<AtomicBool>,
}

fn accept_loop(
    broker: &Arc<Broker>,
    listener: TcpListener,
    context: &Arc<ListenerContext>,
    max_connections: usize,
) {
    let mut pumps: Vec<PumpThread> = Vec::new();
    for incoming in listener.incoming() {
        if broker.is_shutting_down() {
            break;
        }
        let stream = match incoming {
            Ok(s) => s,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning; the limit is the fix.
                warn!("accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let max = broker.config.limits.max_connections;
        if max > 0 && broker.connection_count() >= max {
            Stats::add(&broker.stats.connections_refused, 1);
            warn!("connection from {peer} refused: limits.max_connections ({max}) reached");
            continue; // dropping the stream closes it
        }
        // Only this thread takes places, so checking then adding cannot overshoot.
        if max_connections > 0 && context.active.load(Ordering::Acquire) >= max_connections {
            Stats::add(&broker.stats.connections_refused, 1);
            warn!(
                "connection from {peer} refused: this listener's max_connections ({max_connections}) reached"
            );
            continue;
        }
        context.active.fetch_add(1, Ordering::AcqRel);
        let slot = ConnectionSlot::new(context.active.clone());
        if context.protocol == ListenerProtocol::Mqtt {
            if let Err(e) = connection::spawn(
                broker,
                Socket::Tcp(stream),
                peer,
                None,
                context.allow_anonymous,
                slot,
            ) {
                error!("cannot start a thread for the connection from {peer}: {e}");
            }
            continue;
        }
        pumps.retain(|p| !p.thread.is_finished());
        let socket = match stream.try_clone() {
            Ok(s) => s,
            Err(e) => {
                warn!("connection from {peer} dropped: cannot clone its socket: {e}");
                continue;
            }
        };
        let bridging = Arc::new(AtomicBool::new(false));
        match pump::start(broker, context, stream, peer, slot, bridging.clone()) {
            Ok(thread) => pumps.push(PumpThread {
                thread,
                socket,
                bridging,
            }),
            Err(e) => error!("cannot start a transport thread for {peer}: {e}"),
        }
    }
    // Handshakes still waiting for a client are cut off now. The broker has closed every
    // connection, so bridging pumps are finishing: give them a moment to flush, then cut them off.
    for p in &pumps {
        if !p.bridging.load(Ordering::Acquire) {
            let _ = p.socket.shutdown(Shutdown::Both);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pumps.iter().any(|p| !p.thread.is_finished()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    for p in pumps {
        if !p.thread.is_finished() {
            debug!("closing a transport that did not finish in time");
            let _ = p.socket.shutdown(Shutdown::Both);
        }
        let _ = p.thread.join();
    }
}

/// Wake a thread blocked in `accept()` on `addr` (which has no timeout) with a connection of
/// our own; an unspecified address is reached through loopback.
pub fn wake_accept(addr: SocketAddr) {
    let mut wake = addr;
    if wake.ip().is_unspecified() {
        wake.set_ip(match wake.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
}
