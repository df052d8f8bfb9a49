// Self-renewing credentials against a real node whose device certificates live 10 s
// (`device_certificate_lifetime_seconds = 10`): a client makes calls without pause from two
// workers across a full certificate lifetime past its first certificate's expiry and none fails;
// its cert.pem is replaced (0600); with every connection cut it reconnects with the new
// certificate. A device whose certificate expired while no client ran renews with its identity
// key, after a failed attempt (node unreachable) that keeps the old certificate and is retried.

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { inspect } from "node:util";

import * as grpc from "@grpc/grpc-js";

import { certificateWindow, connect, Palyra, PalyraError, RenewalEvent } from "../src";
import { pairDevice, portOf, TcpProxy, startNode, TestNode } from "./node";

const LIFETIME_MS = 10_000;

let node: TestNode;
let root: string;

before(async () => {
  node = await startNode(`device_certificate_lifetime_seconds = ${LIFETIME_MS / 1000}\n`);
  root = mkdtempSync(join(tmpdir(), "palyra-ts-renewal-"));
});

after(async () => {
  await node?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Resolves once the channel has left READY (its connection was cut). */
function disconnected(client: Palyra): Promise<void> {
  const channel = client.vault.getChannel();
  return new Promise((ok, fail) => {
    const wait = () => {
      const state = channel.getConnectivityState(false);
      if (state !== grpc.connectivityState.READY) {
        ok();
        return;
      }
      channel.watchConnectivityState(state, Date.now() + 10_000, (error) => (error ? fail(error) : wait()));
    };
    wait();
  });
}

test("calls never fail across expiry; an expired device renews with its key", async () => {
  const busy = join(root, "busy");
  const idle = join(root, "idle");
  await pairDevice(node, busy, "ts-busy", ["renew/ts"]);
  await pairDevice(node, idle, "ts-idle", ["renew/ts"]);
  const operator = connect({ server: node.url, dataDir: node.dataDir });
  await operator.putSecret("renew/ts", "TOKEN", "still here");
  operator.close();

  const certPath = join(busy, "client", "cert.pem");
  const first = readFileSync(certPath);
  const { issuedAt, notAfter } = certificateWindow(first);
  assert.equal(notAfter - issuedAt, LIFETIME_MS);
  const until = notAfter + LIFETIME_MS; // a full lifetime past the first certificate's expiry

  const events: RenewalEvent[] = [];
  const proxy = await TcpProxy.start(portOf(node));
  const me = connect({
    server: proxy.url,
    dataDir: busy,
    onRenewal: (e) => events.push(e),
    channelOptions: { "grpc.initial_reconnect_backoff_ms": 50, "grpc.max_reconnect_backoff_ms": 200 },
  });
  try {
    assert.ok(me.renews);
    // Nothing that prints the client shows its private key.
    const shown = inspect(me, { depth: 30, maxArrayLength: Infinity, maxStringLength: Infinity });
    assert.ok(shown.includes("key: [redacted]"), "the provider is shown redacted");
    assert.ok(!shown.includes(inspect(Buffer.from("-----BEGIN PRIVATE")).slice(8, -1)), "no key bytes");
    assert.ok(!shown.includes("BEGIN PRIVATE"), "no key text");
    const calls = [0, 0];
    const worker = async (i: number) => {
      while (Date.now() < until) {
        assert.equal((await me.getSecret("renew/ts", "TOKEN")).toString(), "still here");
        await me.whoAmI();
        // What new connections present is never expired.
        assert.ok(certificateWindow(me.certificatePem ?? "").notAfter > Date.now());
        calls[i] += 1;
      }
    };
    await Promise.all([worker(0), worker(1)]);
    assert.ok(Math.min(...calls) > 10, `${calls}`);
    assert.deepEqual(events.filter((e) => e.error).map((e) => e.error?.message), []);
    assert.ok(events.filter((e) => e.notAfter).length >= 2, `${events.length} renewals`);

    const stored = readFileSync(certPath);
    assert.ok(!stored.equals(first), "cert.pem was replaced");
    assert.equal(statSync(certPath).mode & 0o777, 0o600);
    assert.ok(certificateWindow(stored).notAfter > Date.now());

    // Every connection cut: the reconnection presents the renewed certificate (the first one
    // expired long ago, and the node would refuse it).
    const gone = disconnected(me);
    proxy.cut();
    proxy.resume();
    await gone;
    const accepted = proxy.accepted;
    assert.equal((await me.getSecret("renew/ts", "TOKEN")).toString(), "still here");
    assert.ok(proxy.accepted > accepted, "a new connection");
  } finally {
    me.close();
    await proxy.close();
  }

  // The idle device's certificate expired meanwhile, and the node cannot be reached: the
  // renewal fails, the old certificate stays, and it is retried after a backoff.
  const stale = readFileSync(join(idle, "client", "cert.pem"));
  assert.ok(certificateWindow(stale).notAfter < Date.now());
  events.length = 0;
  let renewed: () => void = () => {};
  const renewal = new Promise<void>((ok) => (renewed = ok));
  const down = await TcpProxy.start(portOf(node));
  down.cut();
  const late = connect({
    server: down.url,
    dataDir: idle,
    onRenewal: (e) => {
      events.push(e);
      if (e.notAfter) renewed();
    },
    channelOptions: { "grpc.initial_reconnect_backoff_ms": 50, "grpc.max_reconnect_backoff_ms": 200 },
  });
  try {
    await assert.rejects(late.getSecret("renew/ts", "TOKEN"), (e: unknown) => {
      assert.ok(e instanceof PalyraError, `${e}`);
      assert.equal(e.code, grpc.status.UNAVAILABLE);
      return true;
    });
    assert.equal(events.length, 1);
    assert.ok(events[0].error && events[0].retryInMs > 0, `${events[0].error}`);
    assert.ok(readFileSync(join(idle, "client", "cert.pem")).equals(stale));

    // Reachable again: the retry renews with the proof, and calls work.
    down.resume();
    await Promise.race([
      renewal,
      new Promise((_, fail) => setTimeout(() => fail(new Error("no renewal within 30 s")), 30_000).unref()),
    ]);
    assert.equal((await late.getSecret("renew/ts", "TOKEN")).toString(), "still here");
  } finally {
    late.close();
    await down.close();
  }
  const renewedPem = readFileSync(join(idle, "client", "cert.pem"));
  assert.ok(!renewedPem.equals(stale));
  assert.ok(certificateWindow(renewedPem).notAfter > Date.now());
});
