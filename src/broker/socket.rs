//! The byte stream a connection's reader and writer threads use.
//!
//! Plain MQTT clients are served straight from their `TcpStream`: no extra thread, no copy.
//! TLS and WebSocket clients are served through a transport pump (`pump.rs`) that owns the real
//! socket and the protocol state, and hands the connection one end of a `UnixStream` pair that
//! carries the bare MQTT bytes. Either way the connection code sees the same blocking stream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

#[derive(Debug)]
pub enum Socket {
    /// A plain MQTT client's own TCP socket.
    Tcp(TcpStream),
    /// The broker's end of a pair whose other end is bridged to a TLS or WebSocket client.
    Bridged(UnixStream),
}

impl Socket {
    pub fn try_clone(&self) -> io::Result<Socket> {
        Ok(match self {
            Socket::Tcp(s) => Socket::Tcp(s.try_clone()?),
            Socket::Bridged(s) => Socket::Bridged(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(timeout),
            Socket::Bridged(s) => s.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_write_timeout(timeout),
            Socket::Bridged(s) => s.set_write_timeout(timeout),
        }
    }

    /// Disable Nagle on TCP; a no-op for a bridged socket (its pump sets it on the real one).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_nodelay(nodelay),
            Socket::Bridged(_) => Ok(()),
        }
    }

    /// Write what the socket buffer takes now, without blocking (`WouldBlock` when it is full),
    /// whatever the blocking mode the reader thread uses on the same descriptor.
    pub fn send_nonblocking(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: the descriptor is open for as long as `self` lives; `buf` is valid for
        // `buf.len()` bytes.
        let n = unsafe {
            libc::send(
                self.raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn raw_fd(&self) -> std::os::unix::io::RawFd {
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Bridged(s) => s.as_raw_fd(),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.shutdown(how),
            Socket::Bridged(s) => s.shutdown(how),
        }
    }
}

/// Reading and writing through a shared reference (as std allows for `&TcpStream`), so the
/// reader thread, the outbox and the broker's registry share one `Arc<Socket>`: one file
/// descriptor per client instead of one per handle.
impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Socket::Tcp(s) => (&*s).read(buf),
            Socket::Bridged(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Socket::Tcp(s) => (&*s).write(buf),
            Socket::Bridged(s) => (&*s).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Bridged(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Bridged(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Bridged(s) => s.flush(),
        }
    }
}

impl From<TcpStream> for Socket {
    fn from(s: TcpStream) -> Socket {
        Socket::Tcp(s)
    }
}
