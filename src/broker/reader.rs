//! `ConnectionReader`: the buffered reader of a connection's reader thread. It sizes its buffer
//! to the traffic, counts what it reads into the broker's statistics once per read, stamps the
//! receive time of each PUBLISH, and gives an idle thread's stack back (see `threads.rs`).

use super::message::now_ns;
use super::socket::Socket;
use super::stats::Stats;
use crate::protocol::decode::FrameRef;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The buffered reader of a connection's reader thread. The buffer follows the traffic: it
/// starts small, so an idle client costs little; it grows while reads fill it, so a busy
/// publisher's burst is taken (and what it routes is written, see `outbox.rs`) per large read
/// instead of per few packets; it shrinks back once reads stay small.
pub struct ConnectionReader {
    socket: Arc<Socket>,
    /// Packets (and PUBLISH packets among them) and bytes read, added to the broker's counters
    /// before the next wait: a few atomic adds per read instead of several per packet (shared
    /// lines, on every connection's hot path).
    broker: Arc<super::state::Broker>,
    packets_read: u64,
    publishes_read: u64,
    bytes_read: u64,
    /// Wall-clock time of the last read, and frames taken since: the receive time of a
    /// PUBLISH is its read's time plus its place in the read, in ns. One clock read per socket
    /// read instead of per packet; the offset keeps the points of one read on one series from
    /// sharing a timestamp (InfluxDB would keep only the last). Successive reads are further
    /// apart than a read has frames (handling a frame takes far more than 1 ns), so they do
    /// not overlap either, as long as the clock does not step back; a sink `precision`
    /// coarser than ns can merge points, as it always could.
    read_at_ns: i64,
    frames_in_read: i64,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    /// Consecutive reads that used less than a quarter of the buffer.
    small_reads: u32,
    /// The last read waited at least `CLIENT_PAUSE` (see `threads.rs` for why it matters).
    paused: bool,
    /// Set while waiting for CONNECT: every read must end by then, however the bytes trickle
    /// in (see `set_deadline`).
    deadline: Option<Instant>,
}

const MIN_READ_BUFFER: usize = 1024;
const MAX_READ_BUFFER: usize = 64 * 1024;
/// A wait for input this long means the client is pausing: its thread's unused stack pages
/// are given back before the next wait. Costs at most one madvise per pause.
const CLIENT_PAUSE: Duration = Duration::from_millis(100);
/// Small reads in a row before the buffer is halved.
const SHRINK_AFTER: u32 = 16;

impl ConnectionReader {
    pub fn new(socket: Arc<Socket>, broker: Arc<super::state::Broker>) -> ConnectionReader {
        ConnectionReader {
            socket,
            broker,
            packets_read: 0,
            publishes_read: 0,
            bytes_read: 0,
            read_at_ns: 0,
            frames_in_read: 0,
            buf: vec![0; MIN_READ_BUFFER].into_boxed_slice(),
            pos: 0,
            filled: 0,
            small_reads: 0,
            paused: false,
            deadline: None,
        }
    }

    /// Make every read end by `deadline` (`TimedOut` once it has passed), or lift that. A read
    /// timeout alone applies per read, so a client sending one byte a second would never hit
    /// it; the connection sets this for the whole CONNECT packet and lifts it after.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// Bytes read from the socket and not yet consumed.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// The next MQTT frame: straight out of the buffer when it holds the whole frame (one copy),
    /// else read through the buffer as `read_frame` does.
    pub fn next_frame(
        &mut self,
        max_packet_size: usize,
    ) -> Result<crate::protocol::Frame, crate::protocol::DecodeError> {
        if let Some((frame, used)) =
            crate::protocol::decode::frame_in(self.buffer(), max_packet_size)?
        {
            self.pos += used;
            self.count_frame(frame.header);
            return Ok(frame);
        }
        let frame = crate::protocol::read_frame(self, max_packet_size)?;
        self.count_frame(frame.header);
        Ok(frame)
    }

    /// The next frame when it is a PUBLISH that the buffer holds whole (reading when the
    /// buffer is empty): the frame where it is (no copy), and its receive time. None: another
    /// packet, or not all read yet (`next_frame` then takes it).
    pub fn publish_in_buffer(
        &mut self,
        max_packet_size: usize,
    ) -> Result<Option<(FrameRef<'_>, i64)>, crate::protocol::DecodeError> {
        if self.pos == self.filled {
            // Read first (this is where the thread waits): a client that sends one PUBLISH at a
            // time then has it taken from the buffer too. As `read_frame`: a signal is retried,
            // and the peer closing between packets is `Eof`.
            loop {
                match self.fill() {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(crate::protocol::DecodeError::Io(e)),
                }
            }
            if self.filled == 0 {
                return Err(crate::protocol::DecodeError::Eof);
            }
        }
        let at = self.pos;
        if self.buf[at] >> 4 != 3 {
            // Another packet: `next_frame` frames it (once).
            return Ok(None);
        }
        let found = crate::protocol::decode::frame_in_place(self.buffer(), max_packet_size)?
            .map(|(frame, size)| (frame.header, frame.body.len(), size));
        let Some((header, body_len, size)) = found else {
            return Ok(None);
        };
        self.pos += size;
        self.count_frame(header);
        // The body is the frame's tail.
        let received_at_ns = self.received_at_ns();
        let body = &self.buf[at + size - body_len..at + size];
        Ok(Some((FrameRef { header, body }, received_at_ns)))
    }

    fn count_frame(&mut self, header: u8) {
        self.packets_read += 1;
        self.publishes_read += u64::from(header >> 4 == 3);
        self.frames_in_read += 1;
    }

    /// When the frame `next_frame` returned last was received (ns since the Unix epoch);
    /// `publish_in_buffer` returns its frame's own.
    pub fn received_at_ns(&self) -> i64 {
        self.read_at_ns + self.frames_in_read
    }

    fn note_read(&mut self, n: usize) {
        self.bytes_read += n as u64;
        self.read_at_ns = now_ns();
        self.frames_in_read = 0;
    }

    fn count_reads(&mut self) {
        let stats = &self.broker.stats;
        if self.packets_read > 0 {
            Stats::add(
                &stats.messages_received,
                std::mem::take(&mut self.packets_read),
            );
        }
        if self.publishes_read > 0 {
            Stats::add(
                &stats.publish_received,
                std::mem::take(&mut self.publishes_read),
            );
        }
        if self.bytes_read > 0 {
            Stats::add(&stats.bytes_received, std::mem::take(&mut self.bytes_read));
        }
    }

    /// What the reader thread does before it may block on the socket.
    fn before_wait(&mut self) {
        self.count_reads();
        // What handling the last read queued goes out now (see `read_scope.rs`).
        super::read_scope::before_read();
        // The client paused before what we just handled (an idle client's keep-alive ping), so
        // it will likely pause again: drop the stack pages handling it touched. A busy client
        // never waits that long and pays nothing.
        if self.paused {
            super::threads::release_unused_stack();
        }
    }

    /// Refill the (consumed) buffer with one read, then resize it for the next one.
    fn fill(&mut self) -> io::Result<()> {
        self.before_wait();
        let n = read_noting_pause(&self.socket, self.deadline, &mut self.paused, &mut self.buf)?;
        self.note_read(n);
        self.pos = 0;
        self.filled = n;
        let size = self.buf.len();
        let resized = if n == size && size < MAX_READ_BUFFER {
            Some(size * 4)
        } else if n < size / 4 && size > MIN_READ_BUFFER {
            self.small_reads += 1;
            (self.small_reads >= SHRINK_AFTER).then_some(size / 2)
        } else {
            self.small_reads = 0;
            None
        };
        if let Some(new_size) = resized {
            let mut buf = vec![0; new_size.clamp(MIN_READ_BUFFER, MAX_READ_BUFFER)];
            buf[..n].copy_from_slice(&self.buf[..n]);
            self.buf = buf.into_boxed_slice();
            self.small_reads = 0;
        }
        Ok(())
    }
}

/// One socket read, ending by `deadline` when there is one; `paused` tells whether it waited
/// `CLIENT_PAUSE` or longer.
fn read_noting_pause(
    socket: &Socket,
    deadline: Option<Instant>,
    paused: &mut bool,
    buf: &mut [u8],
) -> io::Result<usize> {
    if let Some(deadline) = deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        socket.set_read_timeout(Some(left))?;
    }
    let started = Instant::now();
    let read = (&*socket).read(buf);
    *paused = started.elapsed() >= CLIENT_PAUSE;
    read
}

impl Drop for ConnectionReader {
    fn drop(&mut self) {
        self.count_reads();
    }
}

impl Read for ConnectionReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.filled {
            // A read as large as the buffer skips it (a big packet's body), as `BufReader` does.
            if out.len() >= self.buf.len() {
                self.before_wait();
                let n = read_noting_pause(&self.socket, self.deadline, &mut self.paused, out)?;
                self.note_read(n);
                return Ok(n);
            }
            self.fill()?;
        }
        let n = out.len().min(self.filled - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
