// @palyra/client against a real node: WhoAmI, a vault round trip, denied calls with their
// reasons, and server reflection listing every Palyra service.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { connect as tlsConnect, PeerCertificate } from "node:tls";

import * as grpc from "@grpc/grpc-js";

import { connect, ErrorReason, ERROR_DOMAIN, Palyra, PalyraError, unary } from "../src";
import * as gen from "../src";
import { ServerReflectionClient, ServerReflectionResponse } from "../src/gen/grpc/reflection/v1/reflection";
import { IdentityServiceClient, ListDevicesResponse } from "../src/gen/palyra/identity/v1/identity";
import { hostOf, tlsFor } from "../src/servername";
import { operatorCa, startNode, TestNode } from "./node";

let node: TestNode;
let operator: Palyra;

// Node's warnings of the whole run: a TLS ServerName set to an IP address is DEP0123.
const warnings: Error[] = [];
process.on("warning", (w) => warnings.push(w));

before(async () => {
  node = await startNode();
  operator = connect({ server: node.url, dataDir: node.dataDir });
});

after(async () => {
  operator?.close();
  await node?.stop();
});

test("WhoAmI as the operator", async () => {
  const me = await operator.whoAmI();
  assert.equal(me.principalType, "Device");
  assert.equal(me.role, "admin");
  assert.equal(me.deviceId.length, 26);
  assert.equal(me.fingerprint.length, 64);
});

test("vault put, get, versions and a CAS conflict with its reason", async () => {
  const first = await operator.putSecret("apps/typescript", "TOKEN", "one", { expectedVersion: "0" });
  assert.equal(first.version, "1");
  await operator.putSecret("apps/typescript", "TOKEN", Buffer.from("two"), { expectedVersion: "1" });
  assert.equal((await operator.getSecret("apps/typescript", "TOKEN")).toString(), "two");
  assert.equal((await operator.getSecret("apps/typescript", "TOKEN", "1")).toString(), "one");
  const meta = await operator.secretMetadata("apps/typescript", "TOKEN");
  assert.deepEqual(meta.versions.map((v) => v.version), ["1", "2"]);

  await assert.rejects(operator.putSecret("apps/typescript", "TOKEN", "three", { expectedVersion: "1" }), (e: unknown) => {
    assert.ok(e instanceof PalyraError);
    assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
    assert.equal(e.reason, "ERROR_REASON_VERSION_CONFLICT");
    assert.equal(e.reasonName, "ERROR_REASON_VERSION_CONFLICT");
    assert.equal(e.reasonCode, ErrorReason.ERROR_REASON_VERSION_CONFLICT);
    assert.equal(e.domain, ERROR_DOMAIN);
    return true;
  });
  await assert.rejects(operator.getSecret("apps/typescript", "NOPE"), (e: unknown) => {
    assert.ok(e instanceof PalyraError);
    assert.equal(e.code, grpc.status.NOT_FOUND);
    assert.equal(e.reason, "ERROR_REASON_NOT_FOUND");
    return true;
  });
});

test("an anonymous call is denied with its code and reason", async () => {
  // TLS that trusts the node's CA but presents no client certificate: Palyra::Anonymous.
  const tls = tlsFor(node.url.replace("https://", ""));
  const credentials = grpc.credentials.createSsl(operatorCa(node), null, null, tls.verify);
  const anonymous = new IdentityServiceClient(node.url.replace("https://", ""), credentials, tls.options);
  try {
    const me = await unary<gen.identity.WhoAmIResponse>((cb) => anonymous.whoAmI({}, cb));
    assert.equal(me.principalType, "Anonymous");
    await assert.rejects(
      unary<ListDevicesResponse>((cb) => anonymous.listDevices({}, cb)),
      (e: unknown) => {
        assert.ok(e instanceof PalyraError);
        assert.equal(e.code, grpc.status.UNAUTHENTICATED);
        assert.equal(e.reason, "ERROR_REASON_POLICY_DENIED");
        return true;
      },
    );
  } finally {
    anonymous.close();
  }
});

/** Every service that proto/ defines, read from the generated service definitions. */
function protoServices(): string[] {
  const names = new Set<string>();
  for (const module of [gen.audit, gen.auth, gen.console, gen.identity, gen.pairing, gen.policy, gen.vault]) {
    for (const value of Object.values(module)) {
      if (value && typeof value === "object") {
        for (const method of Object.values(value as Record<string, unknown>)) {
          const path = (method as { path?: unknown })?.path;
          if (typeof path === "string" && path.startsWith("/palyra.")) {
            names.add(path.split("/")[1]);
          }
        }
      }
    }
  }
  return [...names].sort();
}

test("server reflection lists every Palyra service", async () => {
  const reflection = new ServerReflectionClient(operator.target, operator.credentials, tlsFor(operator.target).options);
  try {
    const stream = reflection.serverReflectionInfo();
    const answer = new Promise<ServerReflectionResponse>((ok, fail) => {
      stream.once("data", ok);
      stream.once("error", (e: grpc.ServiceError) => fail(new PalyraError(e)));
    });
    stream.write({ host: "", listServices: "" });
    const response = await answer;
    stream.end();
    const listed = (response.listServicesResponse?.service ?? []).map((s) => s.name);
    const expected = protoServices();
    assert.equal(expected.length, 7, `services found in the generated code: ${expected}`);
    assert.deepEqual(listed.filter((n) => n.startsWith("palyra.")).sort(), expected);
    assert.ok(listed.includes("grpc.health.v1.Health"), `${listed}`);
  } finally {
    reflection.close();
  }
});

test("an IP address target sets no TLS ServerName (no DEP0123) and still checks the certificate's IP", async () => {
  assert.match(node.url, /^https:\/\/127\.0\.0\.1:/);
  const client = connect({ server: node.url, dataDir: node.dataDir, renew: false });
  try {
    assert.equal((await client.whoAmI()).role, "admin");
  } finally {
    client.close();
  }
  await new Promise((resolve) => setImmediate(resolve));
  const dep = warnings.filter((w) => (w as NodeJS.ErrnoException).code === "DEP0123");
  assert.deepEqual(dep.map((w) => w.message), []);
  // The certificate is still checked against the address dialled, not the SNI name.
  const server = await new Promise<PeerCertificate>((ok, fail) => {
    const port = Number(new URL(node.url).port);
    const socket = tlsConnect({ host: "127.0.0.1", port, ca: operatorCa(node), servername: "localhost", ALPNProtocols: ["h2"] }, () => {
      ok(socket.getPeerCertificate());
      socket.end();
    });
    socket.on("error", fail);
  });
  const check = (target: string) => tlsFor(target).verify.checkServerIdentity?.("localhost", server);
  assert.equal(check("127.0.0.1:7443"), undefined);
  assert.ok(check("127.0.0.2:7443") instanceof Error, "an address the certificate does not name");
  assert.deepEqual(tlsFor("node.example:7443"), { options: {}, verify: {} }, "DNS names are left alone");
  assert.equal(hostOf("[::1]:7443"), "::1");
});
