// End-to-end test of the web console in headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core; no downloaded browser). It starts `palyra serve` (the binary named by
// $PALYRA_BIN) in a temp data dir, gets a one-time login URL from `palyra console --no-open`,
// signs in, creates a pairing code, checks the QR image loaded, pairs a device with
// `palyra pair` (a second data dir), approves it in the page, sees it in Devices, revokes it,
// and checks the device is refused afterwards. Screenshots go to $PALYRA_E2E_ARTIFACTS
// (default <repo>/target/console-e2e/).
//
// Usage: PALYRA_BIN=target/debug/palyra node e2e.mjs   (or: npm test)

import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const bin = path.resolve(process.env.PALYRA_BIN || path.join(process.env.CARGO_TARGET_DIR || path.join(repo, "target"), "debug/palyra"));
const artifacts = path.resolve(process.env.PALYRA_E2E_ARTIFACTS || path.join(repo, "target/console-e2e"));
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const run = promisify(execFile);

function log(...args) {
  console.log("[console-e2e]", ...args);
}

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket("udp4");
    socket.once("error", reject);
    socket.bind(0, "127.0.0.1", () => {
      const { port } = socket.address();
      socket.close(() => resolve(port));
    });
  });
}

function privateDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o700);
  return dir;
}

const cleanups = [];
let failed = false;
async function cleanup() {
  while (cleanups.length) {
    try { await cleanups.pop()(); } catch (e) { log("cleanup:", e.message); }
  }
}

async function main() {
  assert.ok(fs.existsSync(bin), `no palyra binary at ${bin}: build it (cargo build) or set PALYRA_BIN`);
  assert.ok(fs.existsSync(chromiumPath), `no Chromium at ${chromiumPath}: apt-get install chromium`);
  fs.mkdirSync(artifacts, { recursive: true });
  const tmp = privateDir("palyra-console-e2e-");
  cleanups.push(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const nodeDir = path.join(tmp, "node");
  const phoneDir = path.join(tmp, "phone");
  const [grpc, consolePort, quic] = [await freeTcpPort(), await freeTcpPort(), await freeUdpPort()];
  const server = `https://127.0.0.1:${grpc}`;
  const env = { ...process.env, PALYRA_KEY_BACKEND: "file", PALYRA_LOG: "info" };
  for (const k of ["PALYRA_HOME", "PALYRA_SERVER", "BROWSER", "DISPLAY", "WAYLAND_DISPLAY"]) delete env[k];

  // The node.
  const serveLog = fs.openSync(path.join(artifacts, "serve.log"), "w");
  const serve = spawn(bin, ["--data-dir", nodeDir, "serve", "--grpc-addr", `127.0.0.1:${grpc}`,
    "--quic-addr", `127.0.0.1:${quic}`, "--console-addr", `127.0.0.1:${consolePort}`],
  { env, stdio: ["ignore", serveLog, serveLog] });
  let serveExit = null;
  serve.on("exit", (code, signal) => { serveExit = { code, signal }; });
  cleanups.push(async () => {
    if (serveExit) return;
    serve.kill("SIGTERM");
    await new Promise((resolve) => serve.once("exit", resolve));
  });

  // `palyra console --no-open` answers once the node serves gRPC and the console.
  const cli = (dataDir, args) => run(bin, ["--data-dir", dataDir, "--server", server, ...args], { env });
  let loginUrl = null;
  for (let attempt = 0; attempt < 300 && !loginUrl; attempt++) {
    assert.equal(serveExit, null, `palyra serve exited early: ${JSON.stringify(serveExit)} (see serve.log)`);
    try {
      const { stdout } = await cli(nodeDir, ["console", "--no-open"]);
      loginUrl = stdout.trim();
    } catch (_) {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  assert.ok(loginUrl, "palyra console never produced a login URL (see serve.log)");
  assert.match(loginUrl, new RegExp(`^http://127\\.0\\.0\\.1:${consolePort}/login\\?token=[0-9a-f]{64}$`));
  log("login URL obtained");

  // The browser: a fresh profile, nothing reaching out.
  const profile = privateDir("palyra-chromium-");
  cleanups.push(() => fs.rmSync(profile, { recursive: true, force: true }));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1000, height: 860 },
  });
  cleanups.push(() => context.close());
  const page = context.pages()[0] || (await context.newPage());
  cleanups.push(async () => {
    if (failed) {
      await page.screenshot({ path: path.join(artifacts, "failure.png") }).catch(() => {});
      log("at", page.url(), "page text:", (await page.locator("main").textContent().catch(() => "")).slice(0, 500));
    }
  });
  page.setDefaultTimeout(20_000);
  const cspViolations = [];
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text()); });
  page.on("dialog", (d) => d.accept());

  // Sign in: the token link redirects to the Pair page and leaves the token behind.
  await page.goto(loginUrl);
  await page.waitForURL(`http://127.0.0.1:${consolePort}/pair`);
  assert.ok(!page.url().includes("token"), "the token does not stay in the address bar");
  await page.getByRole("heading", { name: "Pair a device" }).waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "palyra_session");
  assert.ok(session && session.httpOnly && session.sameSite === "Strict", "HttpOnly SameSite=Strict session cookie");
  // The same link does not work twice.
  const again = await context.request.get(loginUrl, { maxRedirects: 0 });
  assert.equal(again.status(), 401, "a login link is single use");
  log("signed in");

  // A pairing code, with its QR code as an image.
  await page.getByLabel("Role", { exact: true }).selectOption("device");
  await page.getByLabel("Valid for").selectOption("600");
  await page.getByRole("button", { name: "Create pairing code" }).click();
  await page.locator("#qr").waitFor();
  await page.waitForFunction(() => {
    const img = document.getElementById("qr");
    return img && img.complete && img.naturalWidth > 0;
  });
  const pin = (await page.locator("#pin").textContent()).trim();
  const uri = await page.locator("#uri").inputValue();
  assert.match(pin, /^[0-9]{6}$/);
  assert.ok(uri.startsWith(`palyra://pair?server=127.0.0.1:${grpc}&code=`), uri);
  await page.locator(".countdown").filter({ hasText: /expires in \d+:\d\d/ }).waitFor();
  log("pairing code created, QR image loaded");

  // The device pairs with the CLI from its own data dir and waits for approval.
  const pair = run(bin, ["--data-dir", phoneDir, "pair", "--uri", uri, "--name", "e2e-phone"], { env });
  pair.catch(() => {});

  // The request appears live (server-sent events), with its name and fingerprint.
  const card = page.locator("li.request", { hasText: "e2e-phone" });
  await card.waitFor();
  const fingerprint = (await card.locator(".fingerprint").textContent()).trim();
  assert.match(fingerprint, /^[0-9a-f]{64}$/);
  await page.screenshot({ path: path.join(artifacts, "pair.png") });
  log("pending request shown live; fingerprint", fingerprint.slice(0, 16) + "…");

  // Approve it in the page.
  await card.getByRole("button", { name: "Approve e2e-phone" }).click();
  await page.waitForURL(/\/devices\?paired=/);
  const row = page.locator("tr", { hasText: "e2e-phone" });
  await row.waitFor();
  assert.equal(await row.getAttribute("data-status"), "active");
  const deviceId = await row.getAttribute("data-device");
  await page.screenshot({ path: path.join(artifacts, "devices.png") });
  const paired = await pair;
  assert.match(paired.stdout + paired.stderr, new RegExp(deviceId, "i"), "palyra pair reports the approved device");
  log("approved; device", deviceId);

  // The device works, then is revoked in the page, then is refused.
  await cli(phoneDir, ["identity", "show"]);
  await row.getByLabel("Reason for revoking e2e-phone").fill("e2e: lost phone");
  await row.getByRole("button", { name: "Revoke e2e-phone" }).click();
  await page.waitForURL(`http://127.0.0.1:${consolePort}/devices`);
  const revoked = page.locator(`tr[data-device="${deviceId}"]`);
  assert.equal(await revoked.getAttribute("data-status"), "revoked");
  await page.screenshot({ path: path.join(artifacts, "revoked.png") });
  await assert.rejects(cli(phoneDir, ["vault", "list", `devices/${deviceId.toLowerCase()}`]), "a revoked device is refused");
  log("revoked; the device is refused");

  // The audit log has the console's actions and a verified chain.
  await page.getByRole("link", { name: "Audit" }).click();
  await page.locator("#chain.ok").waitFor();
  await page.getByLabel("Action").fill("palyra.identity.v1.IdentityService/RevokeDevice");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.locator("tr.allow", { hasText: "RevokeDevice" }).first().waitFor();
  await page.screenshot({ path: path.join(artifacts, "audit.png") });

  // A phone-sized viewport still shows the whole Pair page.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`http://127.0.0.1:${consolePort}/pair`);
  await page.getByRole("button", { name: "Create pairing code" }).waitFor();
  await page.screenshot({ path: path.join(artifacts, "phone.png") });
  assert.deepEqual(cspViolations, [], "no Content-Security-Policy violation");

  // Sign out, then stop the node cleanly.
  await page.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Signed out" }).waitFor();
  await context.close();
  serve.kill("SIGTERM");
  await new Promise((resolve) => (serveExit ? resolve() : serve.once("exit", resolve)));
  assert.equal(serveExit.code, 0, "palyra serve stops cleanly on SIGTERM with a console session open");
  log(`ok: screenshots in ${artifacts}`);
}

main().then(cleanup, async (e) => {
  failed = true;
  console.error("[console-e2e] FAILED:", e && e.stack ? e.stack : e);
  await cleanup();
  process.exit(1);
});
