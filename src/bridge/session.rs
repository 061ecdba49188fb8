//! One bridge's thread (`bridge-<connection>`): connect to the first address that answers
//! (failover in `address` order; back to the primary every `primary_retry_secs`), run the link
//! until it breaks, wait `restart_timeout`, and again, until the bridge stops.
//!
//! On a live link, one loop: queue what the `out` window allows, read what the remote sent
//! (waiting at most `POLL`), handle it, make the local side durable, then send the
//! acknowledgements and PUBRELs it earned. Keep-alive [MQTT-3.1.2-24]: PINGREQ when we have
//! been quiet for `keepalive_interval`, and a link from which nothing arrived for 1.5 times
//! that is dead (a blackholed link sends no FIN).

use super::inbound;
use super::link::{tcp_connect, Link, LinkError};
use super::out::Outgoing;
use super::running::Bridge;
use super::stats::BridgeStats;
use crate::protocol::{reason, Disconnect, Packet};
use log::{debug, info, warn};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a read waits before the loop looks at the queue and the keep-alive again.
const POLL: Duration = Duration::from_millis(5);
/// How long a probe of the primary may take while we are on a secondary.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

enum End {
    Stopped,
    Broken(String),
    BackToPrimary,
}

pub fn run(bridge: Arc<Bridge>) {
    let c = &bridge.config;
    let tls = match super::link::tls_config(c) {
        Ok(t) => t,
        Err(e) => {
            warn!(
                "bridge {}: cannot set up TLS, not starting: {e}",
                c.connection
            );
            return;
        }
    };
    let n = c.address.len();
    let mut index = 0;
    let mut failures = 0;
    let mut private_refused = vec![false; n];
    // After a refused bridge bit: the next attempt goes without it, and only if that one
    // succeeds was the bit the problem (a remote that is down refuses both).
    let mut plain_probe = false;
    let mut connected_before = false;
    let mut logged_down = false;
    // Down until connected, also for subscribers of the state that come before the link.
    bridge.notify(false);
    while !bridge.is_stopping() {
        let address = &c.address[index];
        let private = c.try_private
            && c.bridge_protocol_version == super::config::BridgeProtocol::V311
            && !private_refused[index]
            && !plain_probe;
        let probing = std::mem::take(&mut plain_probe);
        match Link::connect(c, address, tls.as_ref(), private) {
            Ok((link, connack)) => {
                if probing {
                    private_refused[index] = true;
                    warn!(
                        "bridge {}: {address} refused the bridge bit (try_private) but accepts a \
                         plain client: connected without it, so it may send our own messages back",
                        c.connection
                    );
                }
                failures = 0;
                logged_down = false;
                if connected_before {
                    BridgeStats::add(&bridge.stats.reconnects, 1);
                }
                connected_before = true;
                bridge
                    .stats
                    .address_index
                    .store(index as u64, Ordering::Relaxed);
                bridge.stats.up.store(true, Ordering::Relaxed);
                info!(
                    "bridge {}: connected to {address} ({}{}, session present {})",
                    c.connection,
                    link.version,
                    if private { ", bridge bit" } else { "" },
                    connack.session_present
                );
                bridge.notify(true);
                let end = serve(&bridge, link, &connack, index);
                bridge.stats.up.store(false, Ordering::Relaxed);
                bridge.notify(false);
                match end {
                    End::Stopped => break,
                    End::BackToPrimary => {
                        info!(
                            "bridge {}: the primary {} answers again; moving back",
                            c.connection, c.address[0]
                        );
                        index = 0;
                        continue;
                    }
                    End::Broken(why) => {
                        warn!(
                            "bridge {}: link to {address} lost: {why}; reconnecting",
                            c.connection
                        );
                    }
                }
            }
            Err(LinkError::Refused(_)) | Err(LinkError::NoConnAck) if private => {
                // A broker that does not know the bridge bit refuses the level (or hangs up):
                // try at once without it.
                plain_probe = true;
                continue;
            }
            Err(e) => {
                if !logged_down {
                    warn!("bridge {}: cannot connect to {address}: {e}", c.connection);
                } else {
                    debug!("bridge {}: cannot connect to {address}: {e}", c.connection);
                }
                failures += 1;
                index = (index + 1) % n;
                if failures < n {
                    continue;
                }
                logged_down = true;
                failures = 0;
            }
        }
        bridge.sleep(Duration::from_secs(c.restart_timeout));
    }
    info!("bridge {}: stopped", c.connection);
}

fn serve(bridge: &Bridge, mut link: Link, connack: &crate::protocol::ConnAck, index: usize) -> End {
    let c = &bridge.config;
    let receive_maximum = connack.properties.receive_maximum.unwrap_or(u16::MAX);
    let window = c.max_inflight.min(receive_maximum) as usize;
    let mut max_packet = connack
        .properties
        .maximum_packet_size
        .map_or(crate::protocol::MAX_REMAINING_LENGTH + 5, |m| m as usize);
    if c.bridge_max_packet_size > 0 {
        max_packet = max_packet.min(c.bridge_max_packet_size as usize);
    }
    let mut out = Outgoing::new(window, max_packet, c.bridge_outgoing_retain, c.max_rate);
    // The remote may ask for a keep-alive of its own (v5 Server Keep Alive). Its 0 ("none")
    // would leave a silent link undetected: we keep pinging at ours, which a server answers.
    let keepalive = Duration::from_secs(
        connack
            .properties
            .server_keep_alive
            .filter(|k| *k > 0)
            .unwrap_or(c.keepalive_interval) as u64,
    );
    if let Some(subscribe) = inbound::subscribe(&bridge.lines) {
        link.queue(&subscribe);
    }
    out.resume(&mut link, &bridge.queue, &bridge.stats);
    link.set_read_timeout(POLL);
    let mut ping_outstanding = false;
    let mut next_probe = Instant::now() + Duration::from_secs(c.primary_retry_secs);
    let mut acks: Vec<Packet> = Vec::new();
    loop {
        if bridge.is_stopping() {
            let d = Disconnect {
                reason_code: reason::SUCCESS,
                ..Default::default()
            };
            link.queue(&Packet::Disconnect(d));
            let _ = link.flush();
            link.shutdown();
            return End::Stopped;
        }
        out.fill(&mut link, &bridge.queue, &bridge.stats);
        bridge.queue.flush_drop_log();
        let now = Instant::now();
        // [MQTT-3.1.2-24] the remote closes a client quiet for 1.5 x keep-alive; we ping
        // before that, and take a remote silent that long as gone.
        if now.duration_since(link.last_received) > keepalive.mul_f32(1.5) {
            link.shutdown();
            return End::Broken(format!(
                "nothing received for {:.1} s (1.5 x keepalive_interval {} s)",
                now.duration_since(link.last_received).as_secs_f32(),
                keepalive.as_secs()
            ));
        }
        if !ping_outstanding
            && (now.duration_since(link.last_sent) >= keepalive
                || now.duration_since(link.last_received) >= keepalive)
        {
            link.queue(&Packet::PingReq);
            ping_outstanding = true;
        }
        if let Err(e) = link.flush() {
            return End::Broken(e.to_string());
        }
        if index > 0 && now >= next_probe {
            next_probe = now + Duration::from_secs(c.primary_retry_secs);
            if tcp_connect(&c.address[0], PROBE_TIMEOUT).is_ok() {
                link.shutdown();
                return End::BackToPrimary;
            }
        }
        // Wait up to POLL for the remote: a message queued meanwhile goes out at the next turn,
        // so a new message waits 5 ms at most (an idle bridge costs ~0.4 % of a core).
        let packets = match link.poll() {
            Ok(p) => p,
            Err(e) => return End::Broken(e.to_string()),
        };
        let mut inbound_routed = false;
        for packet in packets {
            match packet {
                Packet::PubAck(a) | Packet::PubComp(a) => {
                    out.on_complete(&a, &bridge.queue, &bridge.stats)
                }
                Packet::PubRec(a) => out.on_pubrec(&a, &bridge.queue, &bridge.stats),
                Packet::Publish(p) => {
                    if let Some(ack) = inbound::on_publish(bridge, p) {
                        acks.push(ack);
                    }
                    inbound_routed = true;
                }
                Packet::PubRel(a) => acks.push(inbound::on_pubrel(bridge, &a)),
                Packet::SubAck(s) => inbound::on_suback(bridge, &s.reason_codes),
                Packet::PingResp => ping_outstanding = false,
                Packet::Disconnect(d) => {
                    return End::Broken(format!(
                        "the remote sent DISCONNECT (reason {:#04x}{})",
                        d.reason_code,
                        d.properties
                            .reason_string
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ))
                }
                other => {
                    link.shutdown();
                    return End::Broken(format!(
                        "the remote sent {}, which a server must not send here",
                        other.name()
                    ));
                }
            }
        }
        if out.pubrel.is_empty() && acks.is_empty() {
            continue;
        }
        // What the acknowledgements confirm is made durable first: the PUBRECs we recorded and
        // the incoming ids (our queue), and what we routed locally (the broker's store, the
        // sink's record, other bridges' queues).
        let durable = bridge.queue.sync() && (!inbound_routed || bridge.broker.wait_durable());
        if !durable {
            link.shutdown();
            return End::Broken(
                "the local side could not make messages durable; not acknowledged".into(),
            );
        }
        for id in out.pubrel.drain(..) {
            link.queue(&Packet::PubRel(crate::protocol::Ack::new(id)));
        }
        for ack in acks.drain(..) {
            link.queue(&ack);
        }
    }
}
