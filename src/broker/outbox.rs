//! A connection's outbound side: the packets queued for one client and how they reach its socket.
//!
//! Whoever queues a packet onto an idle outbox becomes its flusher and writes it with a
//! non-blocking send, so a delivery costs no thread wake-up. A connection's reader thread runs
//! in a *batching* scope: the outboxes it makes dirty while handling what one read returned
//! (its own acks, the deliveries it routed) are flushed just before its next read, one send per
//! outbox for the whole burst. Only when a client's socket buffer is full does the outbox hand
//! its bytes to a writer thread of its own, started on first need, that blocks on the socket:
//! an idle or keeping-up client has no writer thread at all.
//!
//! Order is kept because one flusher at a time owns an outbox (`Owner`): others only queue.

use super::message::Message;
use super::socket::Socket;
use super::stats::Stats;
use super::threads::{self, ConnectionThread};
use crate::protocol::{self, Packet, ProtocolVersion, QoS};
use log::{debug, warn};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::Shutdown;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// A flush writes once this much is encoded, even if more is queued.
const WRITE_BATCH: usize = 64 * 1024;

/// What a connection is asked to send.
#[derive(Debug)]
pub enum Outbound {
    /// Boxed: `Packet` is large (v5 properties) and most traffic is `Publish`.
    Packet(Box<Packet>),
    Publish {
        message: Arc<Message>,
        qos: QoS,
        packet_id: u16,
        dup: bool,
        retain: bool,
        subscription_ids: Vec<u32>,
    },
    /// Flush what is queued, then close the socket.
    Close,
}

/// The outbox is closed: the socket is shut down and nothing more is sent.
#[derive(Debug)]
pub struct Closed;

/// Who writes the outbox's queue to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Nobody: the next `send` becomes the flusher.
    Idle,
    /// A thread that queued onto the idle outbox; it flushes now or at its batch's end.
    Flusher,
    /// The writer thread: the socket was full, so writes must block.
    Writer,
}

/// What an outbox needs from the broker that owns it: the counters it bumps, and whether and
/// how a QoS 2 send waits for the store. The broker passes itself down as this trait object,
/// so the outbox does not name the broker (ARCHITECTURE.md §7, "call up").
pub trait OutboxContext: Send + Sync {
    fn stats(&self) -> &Stats;
    /// Whether acknowledgements wait for the store (sync persistence).
    fn acks_wait_for_store(&self) -> bool;
    /// Wait until every change this thread made so far is durable; false when the store failed
    /// or timed out.
    fn wait_durable(&self) -> bool;
}

pub struct Outbox {
    stream: Arc<Socket>,
    version: ProtocolVersion,
    broker: Arc<dyn OutboxContext>,
    connection_id: u64,
    state: Mutex<State>,
    /// Signalled when the writer thread is handed the outbox and when the outbox closes.
    changed: Condvar,
}

struct State {
    queue: VecDeque<Outbound>,
    owner: Owner,
    /// Encoded bytes a non-blocking send could not write, for the writer thread.
    unsent: Option<Batch>,
    closed: bool,
    writer: Option<ConnectionThread>,
    aliases: TopicAliases,
}

/// Packets encoded for one write.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    packets: u64,
    publishes: u64,
    /// Holds a QoS 2 send, which must not reach the client before its packet id is durable:
    /// after a crash the client would hold that id for a message the broker forgot, and treat
    /// the next message sent with it as a duplicate [MQTT-4.3.3-2] (lost), while the forgotten
    /// one came again under another id (twice). Resends too: after a reconnect without a
    /// restart, a message may be resent before its first send was durable.
    qos2: bool,
    /// Ends with `Outbound::Close`: shut the socket down once written.
    close: bool,
}

/// A batching scope's outboxes, and what to run before this thread blocks inside it.
struct Collecting {
    dirty: Vec<Arc<Outbox>>,
    /// `read_scope::flush`, passed down by `ReadScope::start` (the outbox does not name it).
    before_blocking: fn(),
}

thread_local! {
    /// Outboxes this thread became the flusher of inside a batching scope; `None` outside one.
    static DIRTY: RefCell<Option<Collecting>> = const { RefCell::new(None) };
    /// Encode buffer of this thread's direct flushes.
    static SCRATCH: RefCell<Batch> = RefCell::new(Batch::default());
}

/// Start collecting the outboxes this thread becomes the flusher of (`read_scope::ReadScope`);
/// `before_blocking` runs before `Outbox::close` waits.
pub(super) fn start_collecting(before_blocking: fn()) {
    DIRTY.with(|d| {
        let mut d = d.borrow_mut();
        let c = d.get_or_insert_with(|| Collecting {
            dirty: Vec::new(),
            before_blocking,
        });
        c.dirty.clear();
        c.before_blocking = before_blocking;
    });
}

/// What this thread's batching scope runs before it blocks (nothing outside a scope).
fn before_blocking() {
    if let Some(f) = DIRTY.with(|d| d.borrow().as_ref().map(|c| c.before_blocking)) {
        f();
    }
}

/// Stop collecting; `read_scope` has flushed what was collected.
pub(super) fn end_collecting() {
    DIRTY.with(|d| *d.borrow_mut() = None);
}

/// Write the outboxes this thread collected, until none is dirty (step 2 of `read_scope::flush`).
pub(super) fn flush_collected() {
    loop {
        let dirty = DIRTY.with(|d| {
            d.borrow_mut()
                .as_mut()
                .map(|c| std::mem::take(&mut c.dirty))
        });
        match dirty {
            Some(outboxes) if !outboxes.is_empty() => {
                for outbox in outboxes {
                    outbox.flush_direct();
                }
            }
            _ => return,
        }
    }
}

impl Outbox {
    /// `alias_max`: topic aliases the v5 client accepts from the broker.
    pub fn new(
        stream: Arc<Socket>,
        version: ProtocolVersion,
        alias_max: u16,
        broker: Arc<dyn OutboxContext>,
        connection_id: u64,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            stream,
            version,
            broker,
            connection_id,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                owner: Owner::Idle,
                unsent: None,
                closed: false,
                writer: None,
                aliases: TopicAliases {
                    max: alias_max,
                    assigned: HashMap::new(),
                },
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue a packet. Never blocks on the socket: an idle outbox is written by this thread
    /// (now, or at the end of its batching scope), a busy one by its current flusher.
    pub fn send(self: &Arc<Self>, out: Outbound) -> Result<(), Closed> {
        {
            let mut st = self.lock();
            if st.closed {
                return Err(Closed);
            }
            st.queue.push_back(out);
            if st.owner != Owner::Idle {
                return Ok(());
            }
            st.owner = Owner::Flusher;
        }
        let batched = DIRTY.with(|d| match d.borrow_mut().as_mut() {
            Some(c) => {
                c.dirty.push(self.clone());
                true
            }
            None => false,
        });
        if !batched {
            self.flush_direct();
        }
        Ok(())
    }

    /// Everything queued so far is written (nobody is writing, nothing waits).
    pub fn is_idle(&self) -> bool {
        let st = self.lock();
        st.closed || (st.owner == Owner::Idle && st.queue.is_empty())
    }

    /// Packets queued and not yet written: what bounds a client that does not read.
    pub fn backlog(&self) -> usize {
        let st = self.lock();
        st.queue.len() + st.unsent.as_ref().map_or(0, |b| b.packets as usize)
    }

    /// Queue `Close` and wait until everything before it is written (or the write failed or
    /// timed out) and the socket is shut down; then join the writer thread, if one started.
    pub fn close(self: &Arc<Self>) {
        let _ = self.send(Outbound::Close);
        before_blocking();
        let mut st = self.lock();
        while !st.closed {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let writer = st.writer.take();
        drop(st);
        if let Some(writer) = writer {
            writer.join();
        }
    }

    /// As the flusher: encode and write with non-blocking sends until the queue is empty. A
    /// full socket, or a QoS 2 send that must wait for the store, goes to the writer thread.
    fn flush_direct(self: &Arc<Self>) {
        SCRATCH.with(|scratch| {
            let mut batch = scratch.borrow_mut();
            loop {
                let mut st = self.lock();
                debug_assert_eq!(st.owner, Owner::Flusher);
                if st.queue.is_empty() {
                    st.owner = Owner::Idle;
                    return;
                }
                self.encode(&mut st, &mut batch);
                if batch.qos2 && self.broker.acks_wait_for_store() {
                    return self.hand_to_writer(st, &mut batch);
                }
                drop(st);
                match write_nonblocking(&self.stream, &batch.bytes) {
                    Ok(n) if n == batch.bytes.len() => self.written(&mut batch),
                    Ok(n) => {
                        batch.bytes.drain(..n);
                        let st = self.lock();
                        return self.hand_to_writer(st, &mut batch);
                    }
                    Err(e) => return self.fail(&e, &mut batch),
                }
                if batch.close {
                    return self.shut(&mut batch);
                }
            }
        })
    }

    /// Encode queued packets into `batch` (empty) up to `WRITE_BATCH` bytes or a `Close`.
    fn encode(&self, st: &mut State, batch: &mut Batch) {
        while batch.bytes.len() < WRITE_BATCH {
            let Some(out) = st.queue.pop_front() else {
                break;
            };
            match out {
                Outbound::Close => {
                    batch.close = true;
                    break;
                }
                Outbound::Packet(p) => protocol::encode_packet(&p, self.version, &mut batch.bytes),
                Outbound::Publish {
                    message,
                    qos,
                    packet_id,
                    dup,
                    retain,
                    subscription_ids,
                } => {
                    batch.qos2 |= qos == QoS::ExactlyOnce;
                    encode_delivery(
                        &mut batch.bytes,
                        self.version,
                        &mut st.aliases,
                        &message,
                        qos,
                        packet_id,
                        dup,
                        retain,
                        subscription_ids,
                    );
                    batch.publishes += 1;
                }
            }
            batch.packets += 1;
        }
    }

    /// Give the rest of `batch` and the queue to the writer thread, starting it if needed.
    fn hand_to_writer(self: &Arc<Self>, mut st: MutexGuard<'_, State>, batch: &mut Batch) {
        st.unsent = Some(std::mem::take(batch));
        st.owner = Owner::Writer;
        if st.writer.is_none() {
            let outbox = self.clone();
            let name = format!("conn-{}-w", self.connection_id);
            let spawned = threads::spawn(&name, move || outbox.write_loop());
            match spawned {
                Ok(writer) => st.writer = Some(writer),
                Err(e) => {
                    // Out of threads: write with blocking sends on this thread instead.
                    warn!("cannot start a writer thread ({e}); writing from the caller");
                    drop(st);
                    return self.flush_blocking();
                }
            }
        }
        drop(st);
        self.changed.notify_all();
    }

    /// The writer thread: wait to be handed the outbox, write it with blocking sends (the
    /// socket's write timeout bounds a client that stopped reading), give it back.
    fn write_loop(self: Arc<Self>) {
        loop {
            let mut st = self.lock();
            while st.owner != Owner::Writer && !st.closed {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.owner != Owner::Writer {
                return;
            }
            drop(st);
            self.flush_blocking();
        }
    }

    /// As the owner: write `unsent` and then the queue, blocking, until the queue is empty.
    fn flush_blocking(&self) {
        let mut batch = Batch::default();
        loop {
            let mut st = self.lock();
            match st.unsent.take() {
                Some(unsent) => batch = unsent,
                None if st.queue.is_empty() => {
                    st.owner = Owner::Idle;
                    return;
                }
                None => self.encode(&mut st, &mut batch),
            }
            drop(st);
            if batch.qos2 && !self.broker.wait_durable() {
                let e = io::Error::other("the store could not make a QoS 2 delivery durable");
                return self.fail(&e, &mut batch);
            }
            if let Err(e) = (&*self.stream).write_all(&batch.bytes) {
                return self.fail(&e, &mut batch);
            }
            self.written(&mut batch);
            if batch.close {
                return self.shut(&mut batch);
            }
        }
    }

    /// Count a fully written batch and clear it for reuse.
    fn written(&self, batch: &mut Batch) {
        // Counted once per batch: a shared counter bumped per message by every writer was the
        // top item of the fan-out profile.
        let stats = self.broker.stats();
        Stats::add(&stats.messages_sent, batch.packets);
        Stats::add(&stats.publish_sent, batch.publishes);
        Stats::add(&stats.bytes_sent, batch.bytes.len() as u64);
        batch.bytes.clear();
        if batch.bytes.capacity() > 4 * WRITE_BATCH {
            batch.bytes = Vec::new();
        }
        batch.packets = 0;
        batch.publishes = 0;
        batch.qos2 = false;
    }

    fn fail(&self, e: &io::Error, batch: &mut Batch) {
        debug!("connection {}: write failed: {e}", self.connection_id);
        self.shut(batch);
    }

    /// Shut the socket down (the reader sees it and ends the connection) and refuse further
    /// sends. What is still queued stays unsent, as after any lost connection: sessions keep
    /// their QoS 1/2 messages inflight and resend them on reconnect.
    fn shut(&self, batch: &mut Batch) {
        *batch = Batch::default();
        let _ = self.stream.shutdown(Shutdown::Both);
        let mut st = self.lock();
        st.closed = true;
        st.queue.clear();
        st.unsent = None;
        st.owner = Owner::Idle;
        drop(st);
        self.changed.notify_all();
    }
}

/// Write as much of `buf` as the socket takes without blocking.
fn write_nonblocking(stream: &Socket, buf: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        match stream.send_nonblocking(&buf[written..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Topic aliases the broker assigns towards one v5 client, up to the client's maximum.
struct TopicAliases {
    max: u16,
    assigned: HashMap<Arc<str>, u16>,
}

/// Encode one PUBLISH for one subscriber. v3 and plain v5 deliveries are written straight from
/// the shared message; only v5 deliveries that need per-subscriber properties (subscription ids,
/// remaining expiry, topic alias) copy the properties.
#[allow(clippy::too_many_arguments)]
fn encode_delivery(
    buf: &mut Vec<u8>,
    version: ProtocolVersion,
    aliases: &mut TopicAliases,
    message: &Message,
    qos: QoS,
    packet_id: u16,
    dup: bool,
    retain: bool,
    subscription_ids: Vec<u32>,
) {
    let mut topic: &str = &message.topic;
    let mut properties = Cow::Borrowed(&message.properties);
    if version.is_v5() {
        if !subscription_ids.is_empty() {
            properties.to_mut().subscription_identifiers = subscription_ids;
        }
        if let Some(remaining) = message.remaining_expiry_secs() {
            properties.to_mut().message_expiry_interval = Some(remaining);
        }
        if aliases.max > 0 {
            match aliases.assigned.get(&message.topic) {
                Some(&alias) => {
                    properties.to_mut().topic_alias = Some(alias);
                    topic = "";
                }
                None if aliases.assigned.len() < aliases.max as usize => {
                    let alias = aliases.assigned.len() as u16 + 1;
                    aliases.assigned.insert(message.topic.clone(), alias);
                    properties.to_mut().topic_alias = Some(alias);
                }
                None => {}
            }
        }
    }
    protocol::encode::encode_publish(
        buf,
        version,
        topic,
        &message.payload,
        qos,
        retain,
        dup,
        packet_id,
        &properties,
    );
}
