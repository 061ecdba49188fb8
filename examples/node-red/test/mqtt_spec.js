// Node-RED's own MQTT nodes (mqtt-broker, mqtt in, mqtt out; MQTT.js inside) against a running
// mqflux, loaded by node-red-node-test-helper. tests/node_red.rs starts the broker on a free
// loopback port and runs this file with MQFLUX_PORT set; by hand:
//   MQFLUX_PORT=1883 npx mocha test/mqtt_spec.js
//
// Every wait has a timeout. Where a message must NOT arrive, a canary published after it on the
// same connection (and delivered to the same subscriber connection) is awaited instead of a
// sleep: the broker keeps the order of one publisher's messages to one subscriber
// [MQTT-4.6.0-2].
"use strict";

const helper = require("node-red-node-test-helper");
const mqttNodes = require("@node-red/nodes/core/network/10-mqtt.js");
const assert = require("assert");

helper.init(require.resolve("node-red"));

const HOST = process.env.MQFLUX_HOST || "127.0.0.1";
const PORT = process.env.MQFLUX_PORT;
if (!PORT) {
    throw new Error("set MQFLUX_PORT to the port of a running mqflux");
}
const WAIT_MS = 5000;
// A topic prefix of this run, so that retained messages of an earlier run cannot interfere.
const RUN = "mochatest/" + process.pid + "-" + Date.now().toString(36);

function broker(id, protocolVersion, extra) {
    return Object.assign(
        {
            id,
            type: "mqtt-broker",
            name: "broker " + id,
            broker: HOST,
            port: PORT,
            clientid: id + "-" + process.pid,
            autoConnect: true,
            usetls: false,
            protocolVersion: String(protocolVersion),
            keepalive: "30",
            cleansession: true,
            autoUnsubscribe: true,
        },
        extra || {},
    );
}

function mqttIn(id, brokerId, topic, wires, extra) {
    return Object.assign(
        { id, type: "mqtt in", name: "in " + id, topic, qos: "2", datatype: "auto-detect", broker: brokerId, nl: false, rap: true, rh: 0, inputs: 0, wires: [wires] },
        extra || {},
    );
}

function mqttOut(id, brokerId) {
    return { id, type: "mqtt out", name: "out " + id, topic: "", qos: "", retain: "", broker: brokerId, wires: [] };
}

function load(flow) {
    return new Promise((resolve, reject) => {
        try {
            helper.load(mqttNodes, flow, () => resolve());
        } catch (e) {
            reject(e);
        }
    });
}

// Resolves once the broker config node's MQTT.js client has its CONNACK.
function connected(brokerId) {
    const node = helper.getNode(brokerId);
    return withTimeout(`${brokerId} connected`, new Promise((resolve) => {
        const check = () => (node.connected ? resolve() : setTimeout(check, 10));
        check();
    }));
}

function withTimeout(what, promise, ms) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no ${what} within ${ms || WAIT_MS} ms`)), ms || WAIT_MS);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Collects what a helper node receives; next(pred) resolves with the first (new) match.
function collector(helperId) {
    const node = helper.getNode(helperId);
    const seen = [];
    const waiters = [];
    node.on("input", (msg) => {
        seen.push(msg);
        for (let i = waiters.length - 1; i >= 0; i--) {
            if (waiters[i].pred(msg)) {
                waiters[i].resolve(msg);
                waiters.splice(i, 1);
            }
        }
    });
    return {
        seen,
        next(what, pred) {
            const found = seen.find(pred);
            if (found) return Promise.resolve(found);
            return withTimeout(what, new Promise((resolve) => waiters.push({ pred, resolve })));
        },
    };
}

function send(nodeId, msg) {
    helper.getNode(nodeId).receive(msg);
}

describe("Node-RED MQTT nodes against mqflux", function () {
    this.timeout(20000);

    before(function (done) {
        helper.startServer(done);
    });
    after(function (done) {
        helper.stopServer(done);
    });
    afterEach(function () {
        return helper.unload();
    });

    for (const [label, version] of [["MQTT 3.1.1", 4], ["MQTT 5", 5]]) {
        it(`${label}: QoS 0, 1 and 2 arrive with their QoS and payload`, async function () {
            const base = `${RUN}/v${version}/qos`;
            await load([
                broker("b", version),
                mqttIn("in", "b", base + "/#", ["h"]),
                mqttOut("out", "b"),
                { id: "h", type: "helper" },
            ]);
            const got = collector("h");
            await connected("b");
            for (const qos of [0, 1, 2]) {
                send("out", { topic: `${base}/${qos}`, payload: `reading ${qos}`, qos });
            }
            for (const qos of [0, 1, 2]) {
                const msg = await got.next(`QoS ${qos} message`, (m) => m.topic === `${base}/${qos}`);
                assert.strictEqual(msg.payload, `reading ${qos}`);
                assert.strictEqual(msg.qos, qos, "delivered at the QoS it was published with");
                assert.strictEqual(msg.retain, false);
            }
            assert.strictEqual(got.seen.length, 3, "each message once");
        });

        it(`${label}: a retained message reaches a later (dynamic) subscriber, and clearing it works`, async function () {
            const topic = `${RUN}/v${version}/retained`;
            const canary = `${RUN}/v${version}/canary`;
            await load([
                broker("b", version),
                mqttIn("canary", "b", canary, ["hc"]),
                mqttIn("dyn", "b", "", ["h"], { inputs: 1 }),
                mqttOut("out", "b"),
                { id: "h", type: "helper" },
                { id: "hc", type: "helper" },
            ]);
            const got = collector("h");
            const canaries = collector("hc");
            await connected("b");
            send("out", { topic, payload: "21.5", qos: 1, retain: true });
            // The canary comes back after the broker has stored the retained message.
            send("out", { topic: canary, payload: "1", qos: 1 });
            await canaries.next("canary 1", (m) => m.payload === 1);
            send("dyn", { action: "subscribe", topic: { topic, qos: 1 } });
            const msg = await got.next("retained message", (m) => m.topic === topic);
            assert.strictEqual(msg.payload, 21.5);
            assert.strictEqual(msg.retain, true, "RETAIN set on a retained message sent on subscribe [MQTT-3.3.1-8]");
            // Unsubscribe, clear it, and subscribe again: nothing retained is left to send, which
            // the canary after it shows. (All on one connection, so the broker sees it in order.)
            send("dyn", { action: "unsubscribe", topic });
            send("out", { topic, payload: "", qos: 1, retain: true });
            send("dyn", { action: "subscribe", topic: [{ topic, qos: 1 }, { topic: canary + "/2", qos: 1 }] });
            send("out", { topic: canary + "/2", payload: "2", qos: 1 });
            await got.next("canary 2", (m) => m.topic === canary + "/2");
            assert.deepStrictEqual(got.seen.filter((m) => m.topic === topic), [msg], "no retained message after clearing [MQTT-3.3.1-10]");
        });

        it(`${label}: dynamic subscribe and unsubscribe actions take effect in order`, async function () {
            const base = `${RUN}/v${version}/dynamic`;
            await load([
                broker("b", version),
                mqttIn("dyn", "b", "", ["h"], { inputs: 1 }),
                mqttOut("out", "b"),
                { id: "h", type: "helper" },
            ]);
            const got = collector("h");
            await connected("b");
            send("dyn", { action: "subscribe", topic: [base + "/a/+", base + "/canary"] });
            send("out", { topic: base + "/a/1", payload: "one", qos: 1 });
            const first = await got.next("message after subscribe", (m) => m.topic === base + "/a/1");
            assert.strictEqual(first.payload, "one");
            send("dyn", { action: "unsubscribe", topic: base + "/a/+" });
            send("out", { topic: base + "/a/2", payload: "two", qos: 1 });
            send("out", { topic: base + "/canary", payload: "c", qos: 1 });
            await got.next("canary", (m) => m.topic === base + "/canary");
            assert.deepStrictEqual(
                got.seen.map((m) => m.topic),
                [base + "/a/1", base + "/canary"],
                "nothing delivered for the filter after UNSUBSCRIBE",
            );
        });
    }

    it("MQTT 5: user properties, content type, response topic and correlation data arrive", async function () {
        const topic = `${RUN}/v5/props`;
        await load([
            broker("b", 5),
            mqttIn("in", "b", topic, ["h"]),
            mqttOut("out", "b"),
            { id: "h", type: "helper" },
        ]);
        const got = collector("h");
        await connected("b");
        send("out", {
            topic,
            payload: { temperature: 21.5 },
            qos: 1,
            contentType: "application/json",
            userProperties: { site: "home", unit: "°C" },
            responseTopic: `${RUN}/v5/reply`,
            correlationData: Buffer.from([0, 1, 2, 0xff]),
        });
        const msg = await got.next("message with properties", (m) => m.topic === topic);
        assert.strictEqual(msg.contentType, "application/json");
        assert.deepStrictEqual(msg.payload, { temperature: 21.5 }, "auto-detect parses application/json");
        assert.deepStrictEqual(msg.userProperties, { site: "home", unit: "°C" });
        assert.strictEqual(msg.responseTopic, `${RUN}/v5/reply`);
        assert.ok(Buffer.from([0, 1, 2, 0xff]).equals(msg.correlationData), "correlation data unchanged");
    });

    for (const [label, version] of [["MQTT 3.1.1", 4], ["MQTT 5", 5]]) {
        it(`${label}: the broker node's will is published when its connection drops`, async function () {
            const base = `${RUN}/v${version}/will`;
            await load([
                broker("dying", version, { willTopic: base + "/gone", willQos: "1", willRetain: "false", willPayload: "lost", willMsg: {} }),
                broker("watcher", 5),
                mqttIn("in", "watcher", base + "/#", ["h"]),
                mqttOut("out", "dying"),
                { id: "h", type: "helper" },
            ]);
            const got = collector("h");
            await connected("watcher");
            await connected("dying");
            // Once "ready" from the dying client arrives, the watcher's subscription is in place.
            send("out", { topic: base + "/ready", payload: "ready", qos: 1 });
            await got.next("ready", (m) => m.topic === base + "/ready");
            // A socket drop without DISCONNECT: the broker must publish the will [MQTT-3.1.2-8].
            helper.getNode("dying").client.stream.destroy();
            const will = await got.next("will", (m) => m.topic === base + "/gone");
            assert.strictEqual(will.payload, "lost");
        });
    }
});
