//! A real MQTT 3.1.1 client (rumqttc) driven synchronously: a thread runs the client's event
//! loop and forwards every event over a channel, and the helpers here wait (with timeouts) for
//! the acks a step needs, so a test reads as a sequence of MQTT operations.

use super::Broker;
use rumqttc::{
    ConnAck, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use std::collections::VecDeque;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Default wait for anything the broker is expected to send.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Options for a clean-session client with a 30 s keep-alive.
pub fn options(broker: &Broker, client_id: &str) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(true);
    o
}

pub fn qos(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => panic!("invalid QoS {level}"),
    }
}

pub struct MqttClient {
    pub client: rumqttc::Client,
    pub connack: ConnAck,
    events: mpsc::Receiver<Result<Event, String>>,
    /// PUBLISH packets received while waiting for something else.
    publishes: VecDeque<Publish>,
    id: String,
}

impl MqttClient {
    /// Connect a clean-session client and wait for a successful CONNACK.
    pub fn connect(broker: &Broker, client_id: &str) -> MqttClient {
        MqttClient::connect_with(options(broker, client_id))
    }

    pub fn connect_with(options: MqttOptions) -> MqttClient {
        let id = options.client_id();
        match MqttClient::try_connect(options) {
            Ok(c) => c,
            Err(e) => panic!("client {id:?} could not connect: {e}"),
        }
    }

    /// Connect and wait for CONNACK; `Err` describes a refusal or connection error.
    pub fn try_connect(options: MqttOptions) -> Result<MqttClient, String> {
        let id = options.client_id();
        let (client, mut connection) = rumqttc::Client::new(options, 64);
        let (tx, events) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("rumqttc-{id}"))
            .spawn(move || {
                for event in connection.iter() {
                    let failed = event.is_err();
                    // Stop at the first error: rumqttc would otherwise reconnect on its own.
                    if tx.send(event.map_err(|e| e.to_string())).is_err() || failed {
                        break;
                    }
                }
            })
            .expect("spawn rumqttc event loop thread");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match events.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::ConnAck(connack)))) => {
                    if connack.code != ConnectReturnCode::Success {
                        return Err(format!("CONNACK {:?}", connack.code));
                    }
                    return Ok(MqttClient {
                        client,
                        connack,
                        events,
                        publishes: VecDeque::new(),
                        id,
                    });
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("no CONNACK within {TIMEOUT:?}")),
            }
        }
    }

    /// Wait for the first event matching `pred`, stashing PUBLISHes that arrive meanwhile.
    fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(event)) => {
                    if pred(&event) {
                        return event;
                    }
                    if let Event::Incoming(Packet::Publish(p)) = event {
                        self.publishes.push_back(p);
                    }
                }
                Ok(Err(e)) => panic!(
                    "client {}: connection error while waiting for {what}: {e}",
                    self.id
                ),
                Err(_) => panic!("client {}: no {what} within {TIMEOUT:?}", self.id),
            }
        }
    }

    /// SUBSCRIBE and wait for the SUBACK; returns the granted QoS or failure.
    pub fn subscribe(&mut self, filter: &str, qos_level: u8) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, qos(qos_level))
            .expect("queue SUBSCRIBE");
        match self.wait_for("SUBACK", |e| {
            matches!(e, Event::Incoming(Packet::SubAck(_)))
        }) {
            Event::Incoming(Packet::SubAck(ack)) => ack.return_codes[0],
            _ => unreachable!(),
        }
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub fn unsubscribe(&mut self, filter: &str) {
        self.client.unsubscribe(filter).expect("queue UNSUBSCRIBE");
        self.wait_for("UNSUBACK", |e| {
            matches!(e, Event::Incoming(Packet::UnsubAck(_)))
        });
    }

    /// PUBLISH and wait until the flow for its QoS is complete (written for QoS 0, PUBACK for
    /// QoS 1, PUBCOMP for QoS 2): once this returns the broker has taken the message.
    pub fn publish(&mut self, topic: &str, qos_level: u8, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos(qos_level), retain, payload.to_vec())
            .expect("queue PUBLISH");
        let pkid = match self.wait_for("outgoing PUBLISH", |e| {
            matches!(e, Event::Outgoing(Outgoing::Publish(_)))
        }) {
            Event::Outgoing(Outgoing::Publish(pkid)) => pkid,
            _ => unreachable!(),
        };
        match qos_level {
            0 => {}
            1 => {
                self.wait_for(
                    "PUBACK",
                    |e| matches!(e, Event::Incoming(Packet::PubAck(a)) if a.pkid == pkid),
                );
            }
            _ => {
                self.wait_for(
                    "PUBCOMP",
                    |e| matches!(e, Event::Incoming(Packet::PubComp(a)) if a.pkid == pkid),
                );
            }
        }
    }

    /// The next PUBLISH received, within `TIMEOUT`.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv_publish_timeout(TIMEOUT) {
            Some(p) => p,
            None => panic!("client {}: no PUBLISH within {TIMEOUT:?}", self.id),
        }
    }

    /// The next PUBLISH received, or `None` after `timeout`.
    pub fn recv_publish_timeout(&mut self, timeout: Duration) -> Option<Publish> {
        if let Some(p) = self.publishes.pop_front() {
            return Some(p);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!(
                    "client {}: connection error while waiting for PUBLISH: {e}",
                    self.id
                ),
                Err(_) => return None,
            }
        }
    }

    /// Wait until the client's connection ends (the broker closed it); returns the error text.
    pub fn wait_disconnected(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => self.publishes.push_back(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return e,
                Err(mpsc::RecvTimeoutError::Disconnected) => return "event loop ended".into(),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("client {}: still connected after {timeout:?}", self.id)
                }
            }
        }
    }

    /// Send DISCONNECT and wait until it has been written.
    pub fn disconnect(mut self) {
        self.client.disconnect().expect("queue DISCONNECT");
        self.wait_for("outgoing DISCONNECT", |e| {
            matches!(e, Event::Outgoing(Outgoing::Disconnect))
        });
    }
}
