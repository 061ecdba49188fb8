"""Eclipse Paho (Debian's python3-paho-mqtt) against a running broker: the client library many
IoT gateways use. Each check prints "ok NAME"; the first failure exits non-zero with the reason.

    /usr/bin/python3 tests/interop/paho_clients.py PORT

Run by tests/interop_clients.rs against the real broker binary.
"""

import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

PORT = int(sys.argv[1])
WAIT = 5.0  # seconds any one expected event may take


def fail(why):
    print(f"FAIL {why}", flush=True)
    sys.exit(1)


class Client:
    """A paho client on its own network thread; what it receives lands in queues."""

    def __init__(self, client_id, v5=False, clean=True, will=None, props=None):
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(client_id=client_id, protocol=protocol, **kwargs)
        self.messages = queue.Queue()
        self.acks = queue.Queue()
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_subscribe = lambda c, u, mid, granted, *rest: self.acks.put(("suback", granted))
        self.c.on_publish = lambda c, u, mid: self.acks.put(("published", mid))
        self.c.on_connect = lambda c, u, flags, rc, *rest: self.acks.put(("connack", flags, rc))
        if will:
            self.c.will_set(*will)
        if v5:
            self.c.connect("127.0.0.1", PORT, keepalive=30, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", PORT, keepalive=30)
        self.c.loop_start()
        kind, flags, rc = self.expect_ack("connack")
        if rc != 0:
            fail(f"{client_id}: CONNACK {rc}")
        self.session_present = bool(flags.get("session present"))

    def expect_ack(self, kind):
        try:
            got = self.acks.get(timeout=WAIT)
        except queue.Empty:
            fail(f"no {kind} within {WAIT} s")
        if got[0] != kind:
            fail(f"expected {kind}, got {got}")
        return got

    def subscribe(self, topic, qos=0, **kwargs):
        self.c.subscribe(topic, qos, **kwargs)
        return self.expect_ack("suback")[1]

    def publish(self, topic, payload, qos=0, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        info.wait_for_publish(WAIT)
        if not info.is_published():
            fail(f"publish on {topic} (QoS {qos}) not completed within {WAIT} s")

    def expect(self, topic):
        try:
            m = self.messages.get(timeout=WAIT)
        except queue.Empty:
            fail(f"no message on {topic} within {WAIT} s")
        if m.topic != topic:
            fail(f"expected a message on {topic}, got one on {m.topic}")
        return m

    def expect_none(self, seconds):
        try:
            m = self.messages.get(timeout=seconds)
            fail(f"unexpected message on {m.topic}: {m.payload!r}")
        except queue.Empty:
            pass

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Lose the connection without DISCONNECT (as a gateway losing power)."""
        self.c.loop_stop()
        self.c.socket().close()


def check(name, f):
    f()
    print(f"ok {name}", flush=True)


def v311_qos_levels():
    sub = Client("paho-sub")
    if sub.subscribe("paho/q/#", 2) != (2,):
        fail("SUBACK did not grant QoS 2")
    pub = Client("paho-pub")
    for qos in (0, 1, 2):
        pub.publish(f"paho/q/{qos}", f"at qos {qos}".encode(), qos=qos)
        m = sub.expect(f"paho/q/{qos}")
        if (m.payload, m.qos, m.retain) != (f"at qos {qos}".encode(), qos, False):
            fail(f"QoS {qos}: got payload {m.payload!r}, QoS {m.qos}, retain {m.retain}")
    pub.close()
    sub.close()


def v311_retained():
    pub = Client("paho-ret-pub")
    pub.publish("paho/retained", b"21.5", qos=1, retain=True)
    late = Client("paho-ret-sub")
    late.subscribe("paho/retained", 1)
    m = late.expect("paho/retained")
    if (m.payload, m.retain) != (b"21.5", True):
        fail(f"retained: got {m.payload!r}, retain {m.retain}")
    pub.publish("paho/retained", b"", qos=1, retain=True)  # cleared
    late.expect("paho/retained")
    later = Client("paho-ret-sub2")
    later.subscribe("paho/retained", 1)
    later.expect_none(0.5)
    for c in (pub, late, later):
        c.close()


def v311_will():
    watcher = Client("paho-will-watch")
    watcher.subscribe("paho/status/#", 1)
    gw = Client("paho-gw", will=("paho/status/gw", b"offline", 1, False))
    gw.drop()
    m = watcher.expect("paho/status/gw")
    if (m.payload, m.qos) != (b"offline", 1):
        fail(f"will: got {m.payload!r} at QoS {m.qos}")
    watcher.close()


def v311_persistent_session():
    sub = Client("paho-persist", clean=False)
    sub.subscribe("paho/persist", 1)
    sub.close()
    pub = Client("paho-persist-pub")
    pub.publish("paho/persist", b"while away", qos=1)
    back = Client("paho-persist", clean=False)
    if not back.session_present:
        fail("session present flag not set on resume")
    m = back.expect("paho/persist")
    if m.payload != b"while away":
        fail(f"queued message: got {m.payload!r}")
    back.close()
    pub.close()
    # Clean up the stored session.
    Client("paho-persist", clean=True).close()


def v5_properties():
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 60
    sub = Client("paho5-sub", v5=True, props=connect)
    sub_props = Properties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 42
    options = SubscribeOptions(qos=1, noLocal=True)
    granted = sub.subscribe("paho5/#", options=options, properties=sub_props)
    if [g.value if hasattr(g, "value") else g for g in granted] != [1]:
        fail(f"v5 SUBACK: {granted}")
    pub_props = Properties(PacketTypes.PUBLISH)
    pub_props.UserProperty = [("site", "north"), ("unit", "C")]
    pub_props.ContentType = "text/plain"
    pub_props.ResponseTopic = "paho5/reply"
    pub_props.CorrelationData = b"\x01\x02"
    pub_props.MessageExpiryInterval = 30
    pub = Client("paho5-pub", v5=True)
    pub.publish("paho5/t", b"22.0", qos=1, props=pub_props)
    m = sub.expect("paho5/t")
    p = m.properties
    if p.UserProperty != [("site", "north"), ("unit", "C")]:
        fail(f"user properties: {p.UserProperty}")
    if (p.ContentType, p.ResponseTopic, p.CorrelationData) != ("text/plain", "paho5/reply", b"\x01\x02"):
        fail(f"properties: {p}")
    if p.SubscriptionIdentifier != [42]:
        fail(f"subscription identifier: {getattr(p, 'SubscriptionIdentifier', None)}")
    if not 0 < p.MessageExpiryInterval <= 30:
        fail(f"message expiry interval: {p.MessageExpiryInterval}")
    # No Local: the subscriber's own publish does not come back [MQTT-3.8.3-3].
    sub.publish("paho5/own", b"mine", qos=1)
    sub.expect_none(0.5)
    pub.close()
    sub.close()


def v5_session_resume():
    connect = Properties(PacketTypes.CONNECT)
    connect.SessionExpiryInterval = 60
    sub = Client("paho5-resume", v5=True, props=connect)
    sub.subscribe("paho5/resume", 2)
    sub.close()
    pub = Client("paho5-resume-pub", v5=True)
    pub.publish("paho5/resume", b"exactly once", qos=2)
    back = Client("paho5-resume", v5=True, clean=False, props=connect)
    if not back.session_present:
        fail("v5 session present flag not set on resume")
    m = back.expect("paho5/resume")
    if (m.payload, m.qos) != (b"exactly once", 2):
        fail(f"v5 queued message: {m.payload!r} at QoS {m.qos}")
    back.expect_none(0.5)
    back.close()
    pub.close()


start = time.monotonic()
check("v3.1.1 QoS 0, 1 and 2 delivered at the granted QoS", v311_qos_levels)
check("v3.1.1 retained message stored, delivered with RETAIN, cleared", v311_retained)
check("v3.1.1 will published when the connection is lost", v311_will)
check("v3.1.1 persistent session resumed with its queued message", v311_persistent_session)
check("v5 user properties, content type, response topic, correlation data, expiry, subscription id, No Local", v5_properties)
check("v5 session resumed with its queued QoS 2 message, once", v5_session_resume)
print(f"all paho checks passed in {time.monotonic() - start:.1f} s", flush=True)
