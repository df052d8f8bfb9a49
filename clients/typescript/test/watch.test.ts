// Palyra.watchSecrets against a real node: a put is seen with its metadata, a stream cut by the
// network (twice: before and after a first change) resumes where it was with nothing missed or
// repeated, a scope the device was not granted throws PERMISSION_DENIED, an AbortSignal ends it,
// and a revoked watcher gets UNAUTHENTICATED / DEVICE_REVOKED (no reconnecting).

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { connect, Palyra, PalyraError, unary, vault } from "../src";
import { pairDevice, portOf, TcpProxy, startNode, TestNode } from "./node";

const STEP_MS = 10_000; // how long any one awaited change may take
const { SECRET_CHANGE_PUT: PUT, SECRET_CHANGE_DELETE: DELETE, SECRET_CHANGE_PROGRESS: PROGRESS } = vault.SecretChange;
const FAST_RECONNECT = { "grpc.initial_reconnect_backoff_ms": 50, "grpc.max_reconnect_backoff_ms": 200 };

let node: TestNode;
let operator: Palyra;
let device: string;

before(async () => {
  node = await startNode();
  operator = connect({ server: node.url, dataDir: node.dataDir });
  device = join(mkdtempSync(join(tmpdir(), "palyra-ts-watcher-")), "device");
  await pairDevice(node, device, "ts-watcher", ["watch/ts"]);
});

after(async () => {
  operator?.close();
  await node?.stop();
  if (device) rmSync(join(device, ".."), { recursive: true, force: true });
});

type Changes = AsyncGenerator<vault.WatchSecretsResponse, void, undefined>;

async function next(changes: Changes): Promise<vault.WatchSecretsResponse> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, fail) => {
    timer = setTimeout(() => fail(new Error("no change within 10 s")), STEP_MS);
  });
  try {
    const item = await Promise.race([changes.next(), timeout]);
    assert.ok(!item.done, "the watch ended");
    return item.value;
  } finally {
    clearTimeout(timer);
  }
}

/** The watch is live once its first message, the progress marker of where it starts, arrives. */
async function live(changes: Changes): Promise<void> {
  const first = await next(changes);
  assert.equal(first.change, PROGRESS);
  assert.equal(first.scope, "");
}

/** The next change that is not a progress marker. */
async function nextChange(changes: Changes): Promise<vault.WatchSecretsResponse> {
  for (;;) {
    const change = await next(changes);
    if (change.change !== PROGRESS) return change;
  }
}

test("a put is seen with its metadata, never its value", async () => {
  const me = connect({ server: node.url, dataDir: device });
  const changes = me.watchSecrets("watch/ts", { recursive: true, progress: true });
  try {
    await live(changes);
    const put = await operator.putSecret("watch/ts/sub", "API_KEY", "value-never-sent");
    const change = await nextChange(changes);
    assert.deepEqual([change.scope, change.key, change.version, change.change], ["watch/ts/sub", "API_KEY", put.version, PUT]);
    assert.ok(BigInt(change.sequence) > 0n);
    assert.ok(!Buffer.from(vault.WatchSecretsResponse.encode(change).finish()).includes("value-never-sent"));
  } finally {
    await changes.return();
    me.close();
  }
});

test("a cut stream resumes after the last sequence: nothing missed, nothing repeated", async () => {
  const proxy = await TcpProxy.start(portOf(node));
  const me = connect({ server: proxy.url, dataDir: device, channelOptions: FAST_RECONNECT });
  const scope = "watch/ts/resume";
  const changes = me.watchSecrets(scope, { progress: true, backoffInitialMs: 50, backoffMaxMs: 200 });
  try {
    await live(changes);
    // Cut before any change was seen: the resume point is where the stream started.
    proxy.cut();
    let accepted = proxy.accepted;
    await operator.putSecret(scope, "A", "1");
    proxy.resume();
    const seen = [await nextChange(changes)];
    assert.ok(proxy.accepted > accepted, "the watch reconnected");

    // The network drops every connection, and refuses new ones while these happen.
    proxy.cut();
    accepted = proxy.accepted;
    await operator.putSecret(scope, "B", "2");
    await operator.putSecret(scope, "C", "3");
    await new Promise<void>((ok, fail) =>
      operator.vault.deleteSecret({ scope, key: "A", destroy: false }, (e) => (e ? fail(new PalyraError(e)) : ok())),
    );
    proxy.resume();
    for (let i = 0; i < 3; i++) seen.push(await nextChange(changes));
    assert.ok(proxy.accepted > accepted, "the watch reconnected");
    assert.deepEqual(
      seen.map((c) => [c.key, c.change]),
      [["A", PUT], ["B", PUT], ["C", PUT], ["A", DELETE]],
    );
    const sequences = seen.map((c) => BigInt(c.sequence));
    assert.ok(sequences.every((s, i) => i === 0 || s > sequences[i - 1]), `in order, no repeat: ${sequences}`);

    await operator.putSecret(scope, "D", "4");
    const last = await nextChange(changes);
    assert.deepEqual([last.key, last.change], ["D", PUT]);
    assert.ok(BigInt(last.sequence) > sequences[sequences.length - 1]);
  } finally {
    await changes.return();
    me.close();
    await proxy.close();
  }
});

test("a scope not granted throws PERMISSION_DENIED", async () => {
  const me = connect({ server: node.url, dataDir: device });
  try {
    await assert.rejects(next(me.watchSecrets("apps/not-yours")), (e: unknown) => {
      assert.ok(e instanceof PalyraError, `${e}`);
      assert.equal(e.code, grpc.status.PERMISSION_DENIED);
      assert.equal(e.reason, "ERROR_REASON_POLICY_DENIED");
      return true;
    });
  } finally {
    me.close();
  }
});

test("an aborted watch ends its iteration", async () => {
  const me = connect({ server: node.url, dataDir: device });
  const abort = new AbortController();
  const changes = me.watchSecrets("watch/ts", { progress: true, signal: abort.signal });
  try {
    await live(changes);
    const pending = changes.next();
    abort.abort();
    const ended = await Promise.race([
      pending,
      new Promise<never>((_, fail) => setTimeout(() => fail(new Error("still running")), STEP_MS).unref()),
    ]);
    assert.equal(ended.done, true);
  } finally {
    me.close();
  }
});

test("revoking the watcher ends the watch with DEVICE_REVOKED, without reconnecting", async () => {
  const revokedDir = join(mkdtempSync(join(tmpdir(), "palyra-ts-revoked-")), "device");
  try {
    await pairDevice(node, revokedDir, "ts-revoked");
    const deviceId = readFileSync(join(revokedDir, "client", "device_id"), "utf8").trim();
    const me = connect({ server: node.url, dataDir: revokedDir });
    const changes = me.watchSecrets(`devices/${deviceId.toLowerCase()}`, { progress: true });
    try {
      await live(changes);
      await unary((cb) => operator.identity.revokeDevice({ deviceId, reason: "lost" }, cb));
      await assert.rejects(nextChange(changes), (e: unknown) => {
        assert.ok(e instanceof PalyraError, `${e}`);
        assert.equal(e.code, grpc.status.UNAUTHENTICATED);
        assert.equal(e.reason, "ERROR_REASON_DEVICE_REVOKED");
        return true;
      });
    } finally {
      me.close();
    }
  } finally {
    rmSync(join(revokedDir, ".."), { recursive: true, force: true });
  }
});
