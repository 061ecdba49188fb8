// Drives the mqflux dashboard's real pages in the system's headless Chromium (playwright-core,
// no downloaded browser). Run by tests/suite/dashboard_browser.rs, which starts mqflux,
// influxd and the MQTT clients and passes what to expect in the environment:
//   DASHBOARD_URL, ADMIN_USER, ADMIN_PASSWORD, EXPECT_CLIENTS (comma-separated client ids),
//   KICK_CLIENT, RETAINED_TOPIC, RETAINED_PAYLOAD, SCREENSHOT_DIR, CHROMIUM (executable).
// Prints one line per check ("ok: ..."); exits 1 with "FAILED: ..." on the first failure.
import { chromium } from "playwright-core";
import { mkdtempSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env("DASHBOARD_URL");
const shots = env("SCREENSHOT_DIR");
mkdirSync(shots, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "mqflux-chromium-"));
const consoleErrors = [];
const ok = (what) => console.log(`ok: ${what}`);

async function check(page, what, f) {
  try { await f(); ok(what); } catch (e) {
    await page.screenshot({ path: join(shots, "failure.png"), fullPage: true }).catch(() => {});
    throw new Error(`${what}: ${e.message}`);
  }
}

const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  // Sent with every request, as a browser does once the user has logged in.
  httpCredentials: { username: env("ADMIN_USER"), password: env("ADMIN_PASSWORD"), send: "always" },
  viewport: { width: 1280, height: 860 },
});
let failed = null;
try {
  const page = context.pages()[0] || await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => {
    // The event stream is cut when the page goes; anything else failing is an error.
    if (!r.url().endsWith("/api/v1/events")) consoleErrors.push(`request failed: ${r.url()}`);
  });
  page.on("response", (r) => { if (r.status() >= 400) consoleErrors.push(`HTTP ${r.status()} for ${r.url()}`); });
  page.on("dialog", (d) => d.accept());

  await check(page, "overview loads", async () => {
    await page.goto(url + "#overview");
    await page.waitForSelector("body[data-loaded=overview]", { timeout: 20000 });
    await page.waitForSelector("#live-status.ok", { timeout: 20000 });
  });

  await check(page, "the chart's value changes while a publisher runs", async () => {
    const values = new Set();
    let nonZero = false;
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline && !(values.size >= 2 && nonZero)) {
      const v = await page.getAttribute("#rate-chart", "data-last-in");
      values.add(v);
      if (Number(v) > 0) nonZero = true;
      await page.waitForTimeout(700);
    }
    if (!(values.size >= 2 && nonZero)) throw new Error(`values seen: ${[...values]}`);
    const points = Number(await page.getAttribute("#rate-chart", "data-points"));
    if (points < 2) throw new Error(`only ${points} points drawn`);
    const rateText = await page.textContent("#rate-in");
    if (!(Number(rateText.replace(/,/g, "")) >= 0)) throw new Error(`rate shown: ${rateText}`);
  });
  await page.waitForSelector("#sink-rate", { timeout: 10000 });
  // Ten seconds of chart for the screenshot (docs/dashboard.png is one of these).
  await page.waitForSelector("#rate-chart[data-points]", { timeout: 10000 });
  await page.waitForFunction(() => Number(document.querySelector("#rate-chart").dataset.points) >= 10, null, { timeout: 30000 });
  await page.screenshot({ path: join(shots, "overview.png"), fullPage: true });

  const expected = env("EXPECT_CLIENTS").split(",");
  await check(page, `the clients table shows ${expected.join(", ")}`, async () => {
    await page.goto(url + "#clients");
    await page.waitForSelector("body[data-loaded=clients]", { timeout: 20000 });
    for (const id of expected) {
      await page.waitForSelector(`#clients-table tr[data-client-id="${id}"]`, { timeout: 10000 });
    }
  });
  await page.screenshot({ path: join(shots, "clients.png"), fullPage: true });

  const victim = env("KICK_CLIENT");
  await check(page, "a client's detail shows its subscriptions", async () => {
    await page.click(`#clients-table tr[data-client-id="${victim}"] td:first-child`);
    await page.waitForSelector("#client-detail:not([hidden]) table tbody tr", { timeout: 10000 });
  });
  await page.screenshot({ path: join(shots, "client-detail.png"), fullPage: true });

  await check(page, `kicking ${victim} removes its row`, async () => {
    await page.click(`#clients-table tr[data-client-id="${victim}"] button.danger`);
    await page.waitForSelector(`#clients-table tr[data-client-id="${victim}"]`, { state: "detached", timeout: 15000 });
    const message = await page.textContent("#message");
    if (!message.includes("disconnected")) throw new Error(`message: ${message}`);
  });

  const topic = env("RETAINED_TOPIC");
  const payload = env("RETAINED_PAYLOAD");
  await check(page, `the retained view shows ${topic}`, async () => {
    await page.goto(url + "#retained");
    await page.waitForSelector("body[data-loaded=retained]", { timeout: 20000 });
    const cell = await page.waitForSelector(`#retained-table tr[data-topic="${topic}"] td.payload`, { timeout: 10000 });
    const text = await cell.textContent();
    if (!text.includes(payload)) throw new Error(`payload shown: ${text}`);
    await page.selectOption("#retained-format", "hex");
    await page.waitForFunction((t) => {
      const c = document.querySelector(`#retained-table tr[data-topic="${t}"] td.payload`);
      return c && /^[0-9a-f]{2}( [0-9a-f]{2})*$/.test(c.textContent.trim());
    }, topic, { timeout: 10000 });
    await page.selectOption("#retained-format", "json");
  });
  await page.screenshot({ path: join(shots, "retained.png"), fullPage: true });

  await check(page, "the topics page shows the retained tree and busiest topics", async () => {
    await page.goto(url + "#topics");
    await page.waitForSelector("body[data-loaded=topics]", { timeout: 20000 });
    await page.waitForSelector(`#retained-tree li[data-topic="${topic}"]`, { timeout: 10000 });
  });
  await page.screenshot({ path: join(shots, "topics.png"), fullPage: true });

  await check(page, "the sink page shows the last point written", async () => {
    await page.goto(url + "#sink");
    await page.waitForSelector("body[data-loaded=sink]", { timeout: 20000 });
    await page.waitForSelector("#points-table tbody tr[data-measurement]", { timeout: 10000 });
  });
  await page.screenshot({ path: join(shots, "sink.png"), fullPage: true });

  if (consoleErrors.length) throw new Error(`console errors: ${JSON.stringify(consoleErrors)}`);
  ok("no console errors");
} catch (e) {
  failed = e;
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
if (failed) {
  console.log(`FAILED: ${failed.message}`);
  process.exit(1);
}
