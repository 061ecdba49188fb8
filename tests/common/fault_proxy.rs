//! A TCP proxy between a bridge and its remote that can misbehave on demand: `Forward` (pass
//! bytes both ways), `Pause` (stop reading: TCP holds both sides back), `Blackhole` (read and
//! discard everything, never send a FIN: a link that went silent), `Refuse` (close new
//! connections at once, as a remote that is down), and `reset` (close every connection with
//! RST). New connections follow the current mode. Stopped (and its threads
//! left to end) on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward = 0,
    Pause = 1,
    Blackhole = 2,
    /// Close every new connection at once (a remote that is down); live ones are untouched.
    Refuse = 3,
}

struct Shared {
    mode: AtomicU8,
    stopping: AtomicBool,
    /// Every socket of every connection, to reset them.
    sockets: Mutex<Vec<TcpStream>>,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to 127.0.0.1:`target`.
    pub fn start(target: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        listener.set_nonblocking(true).expect("nonblocking accept");
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Forward as u8),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                while !s.stopping.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if s.mode.load(Ordering::SeqCst) == Mode::Refuse as u8 {
                                drop(client);
                                continue;
                            }
                            client.set_nonblocking(false).ok();
                            // A remote that is down: the client sees the connection close.
                            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                                drop(client);
                                continue;
                            };
                            for (a, b) in [(&client, &server), (&server, &client)] {
                                let (a, b) = (a.try_clone().unwrap(), b.try_clone().unwrap());
                                let s = s.clone();
                                std::thread::spawn(move || pump(a, b, &s));
                            }
                            let mut sockets = s.sockets.lock().unwrap();
                            sockets.push(client);
                            sockets.push(server);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
            .expect("spawn proxy");
        FaultProxy { port, shared }
    }

    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Close every connection at once with RST (SO_LINGER 0), as a crashed middlebox would.
    pub fn reset(&self) {
        let sockets = std::mem::take(&mut *self.shared.sockets.lock().unwrap());
        for s in sockets {
            let sock = socket2::SockRef::from(&s);
            sock.set_linger(Some(Duration::ZERO)).ok();
            s.shutdown(Shutdown::Both).ok();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.reset();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, s: &Shared) {
    from.set_read_timeout(Some(Duration::from_millis(20))).ok();
    let mut buf = [0u8; 16 * 1024];
    while !s.stopping.load(Ordering::SeqCst) {
        let mode = s.mode.load(Ordering::SeqCst);
        if mode == Mode::Pause as u8 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                to.shutdown(Shutdown::Write).ok();
                return;
            }
            Ok(n) => {
                // Blackhole: the bytes vanish, and nothing (no FIN either) comes back. Bytes read
                // just as a pause began still go through: a paused link loses nothing.
                if s.mode.load(Ordering::SeqCst) != Mode::Blackhole as u8
                    && to.write_all(&buf[..n]).is_err()
                {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                to.shutdown(Shutdown::Both).ok();
                return;
            }
        }
    }
}
