//! The TCP accept loop: one named thread that hands every socket to its own connection threads.

use super::connection;
use super::stats::Stats;
use super::Broker;
use log::{error, info, warn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

pub struct Listener {
    local_addr: SocketAddr,
    thread: JoinHandle<()>,
    /// True while the accept loop runs; read by the `/health` endpoint.
    accepting: Arc<AtomicBool>,
}

/// Clears the `accepting` flag however the accept loop ends (even by a panic).
struct AcceptingGuard(Arc<AtomicBool>);

impl Drop for AcceptingGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Listener {
    /// Bind `addr` and start accepting. Logs `listening on tcp://ADDR` once bound.
    pub fn start(broker: &Arc<Broker>, addr: SocketAddr) -> io::Result<Listener> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        info!("listening on tcp://{local_addr}");
        let broker = broker.clone();
        let accepting = Arc::new(AtomicBool::new(true));
        let guard = AcceptingGuard(accepting.clone());
        let thread = thread::Builder::new()
            .name("listener".into())
            .spawn(move || {
                let _guard = guard;
                accept_loop(&broker, listener)
            })?;
        Ok(Listener {
            local_addr,
            thread,
            accepting,
        })
    }

    /// A health check for this listener: Err once it no longer accepts connections.
    pub fn probe(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let (accepting, addr) = (self.accepting.clone(), self.local_addr);
        move || {
            if accepting.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(format!(
                    "listener tcp://{addr} is not accepting connections"
                ))
            }
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting (the broker must already be marked as shutting down) and join the thread.
    pub fn stop(self) {
        // accept() has no timeout: wake it with a connection of our own.
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        let _ = self.thread.join();
    }
}

fn accept_loop(broker: &Arc<Broker>, listener: TcpListener) {
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
        if let Err(e) = connection::spawn(broker, stream, peer) {
            error!("cannot start a thread for the connection from {peer}: {e}");
        }
    }
}
