// MQTT.js (Debian's node-mqtt), the client of Node-RED and of most Node.js and browser
// dashboards, against a running broker. Each check prints "ok NAME"; the first failure exits
// non-zero with the reason.
//
//     NODE_PATH=/usr/share/nodejs node tests/interop/mqttjs_clients.js PORT
//
// Run by tests/interop_clients.rs against the real broker binary.
'use strict';

const mqtt = require('mqtt');

const PORT = Number(process.argv[2]);
const WAIT_MS = 5000; // how long any one expected event may take

function fail(why) {
  console.log(`FAIL ${why}`);
  process.exit(1);
}

function within(what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// A connected client whose received messages are queued for `expect`.
async function client(clientId, options = {}) {
  const c = mqtt.connect(`mqtt://127.0.0.1:${PORT}`, {
    clientId,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: WAIT_MS,
    ...options,
  });
  c.received = [];
  c.waiting = null;
  c.on('message', (topic, payload, packet) => {
    c.received.push({ topic, payload, packet });
    if (c.waiting) c.waiting();
  });
  const connack = await within(`CONNACK for ${clientId}`, new Promise((resolve, reject) => {
    c.once('connect', resolve);
    c.once('error', reject);
  }));
  c.sessionPresent = connack.sessionPresent;
  return c;
}

async function expect(c, topic) {
  if (c.received.length === 0) {
    await within(`message on ${topic}`, new Promise((resolve) => { c.waiting = resolve; }));
    c.waiting = null;
  }
  const m = c.received.shift();
  if (m.topic !== topic) fail(`expected a message on ${topic}, got one on ${m.topic}`);
  return m;
}

async function expectNone(c, ms) {
  await new Promise((resolve) => setTimeout(resolve, ms));
  if (c.received.length > 0) fail(`unexpected message on ${c.received[0].topic}`);
}

function subscribe(c, topic, options) {
  return within(`SUBACK for ${topic}`, new Promise((resolve, reject) => {
    c.subscribe(topic, options, (err, granted) => (err ? reject(err) : resolve(granted)));
  }));
}

function publish(c, topic, payload, options) {
  return within(`acknowledgement of ${topic}`, new Promise((resolve, reject) => {
    c.publish(topic, payload, options, (err) => (err ? reject(err) : resolve()));
  }));
}

function end(c) {
  return new Promise((resolve) => c.end(false, {}, resolve));
}

async function v311QosLevels() {
  const sub = await client('js-sub');
  const granted = await subscribe(sub, 'js/q/#', { qos: 2 });
  if (granted[0].qos !== 2) fail(`SUBACK granted ${JSON.stringify(granted)}`);
  const pub = await client('js-pub');
  for (const qos of [0, 1, 2]) {
    await publish(pub, `js/q/${qos}`, `at qos ${qos}`, { qos });
    const m = await expect(sub, `js/q/${qos}`);
    if (m.payload.toString() !== `at qos ${qos}` || m.packet.qos !== qos || m.packet.retain) {
      fail(`QoS ${qos}: got ${m.payload} at QoS ${m.packet.qos}, retain ${m.packet.retain}`);
    }
  }
  await end(pub);
  await end(sub);
}

async function v311RetainedAndWill() {
  const pub = await client('js-ret-pub');
  await publish(pub, 'js/retained', '21.5', { qos: 1, retain: true });
  const late = await client('js-ret-sub');
  await subscribe(late, 'js/retained', { qos: 1 });
  const m = await expect(late, 'js/retained');
  if (m.payload.toString() !== '21.5' || !m.packet.retain) fail(`retained: ${m.payload} ${m.packet.retain}`);
  await subscribe(late, 'js/status/#', { qos: 1 });
  const gw = await client('js-gw', { will: { topic: 'js/status/gw', payload: 'offline', qos: 1, retain: false } });
  gw.stream.destroy(); // the connection is lost, no DISCONNECT
  const w = await expect(late, 'js/status/gw');
  if (w.payload.toString() !== 'offline') fail(`will: ${w.payload}`);
  await publish(pub, 'js/retained', '', { qos: 1, retain: true }); // clear it
  await end(pub);
  await end(late);
}

async function v5PropertiesAndSession() {
  const props = { sessionExpiryInterval: 60 };
  const sub = await client('js5-sub', { protocolVersion: 5, clean: true, properties: props });
  await subscribe(sub, 'js5/#', { qos: 2, nl: true, properties: { subscriptionIdentifier: 7 } });
  const pub = await client('js5-pub', { protocolVersion: 5 });
  await publish(pub, 'js5/t', '22.0', {
    qos: 1,
    properties: {
      userProperties: { site: 'north' },
      contentType: 'text/plain',
      responseTopic: 'js5/reply',
      correlationData: Buffer.from([1, 2]),
      messageExpiryInterval: 30,
    },
  });
  const m = await expect(sub, 'js5/t');
  const p = m.packet.properties || {};
  if (JSON.stringify(p.userProperties) !== JSON.stringify({ site: 'north' })) fail(`user properties: ${JSON.stringify(p)}`);
  if (p.contentType !== 'text/plain' || p.responseTopic !== 'js5/reply') fail(`properties: ${JSON.stringify(p)}`);
  if (!p.correlationData || !Buffer.from([1, 2]).equals(p.correlationData)) fail(`correlation data: ${JSON.stringify(p)}`);
  const ids = [].concat(p.subscriptionIdentifier);
  if (ids.length !== 1 || ids[0] !== 7) fail(`subscription identifier: ${JSON.stringify(p)}`);
  if (!(p.messageExpiryInterval > 0 && p.messageExpiryInterval <= 30)) fail(`message expiry: ${JSON.stringify(p)}`);
  await publish(sub, 'js5/own', 'mine', { qos: 1 }); // No Local [MQTT-3.8.3-3]
  await expectNone(sub, 500);
  await end(sub); // the session stays for 60 s
  await publish(pub, 'js5/queued', 'while away', { qos: 2 });
  const back = await client('js5-sub', { protocolVersion: 5, clean: false, properties: props });
  if (!back.sessionPresent) fail('v5 session present flag not set on resume');
  const q = await expect(back, 'js5/queued');
  if (q.payload.toString() !== 'while away' || q.packet.qos !== 2) fail(`queued: ${q.payload} QoS ${q.packet.qos}`);
  await expectNone(back, 500);
  await end(back);
  await end(pub);
}

async function main() {
  const start = Date.now();
  const checks = [
    ['v3.1.1 QoS 0, 1 and 2 delivered at the granted QoS', v311QosLevels],
    ['v3.1.1 retained message and will on connection loss', v311RetainedAndWill],
    ['v5 properties, subscription id, No Local, session resumed with its queued QoS 2 message', v5PropertiesAndSession],
  ];
  for (const [name, check] of checks) {
    await check();
    console.log(`ok ${name}`);
  }
  console.log(`all MQTT.js checks passed in ${((Date.now() - start) / 1000).toFixed(1)} s`);
  process.exit(0);
}

main().catch((e) => fail(e.stack || e));
