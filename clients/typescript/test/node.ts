// A real node for the tests: `palyra serve` built from this repository, on a fresh data dir in a
// temp directory and a free port. The binary is $PALYRA_BIN, else $CARGO_TARGET_DIR/debug/palyra,
// else target/debug/palyra (build it with `cargo build`).

import { ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, Server, Socket } from "node:net";
import { tmpdir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";

import { connect, pairing, PalyraError, unary } from "../src";

const REPO = resolve(__dirname, "..", "..", "..", "..");

export function palyraBin(): string {
  if (process.env.PALYRA_BIN) {
    return process.env.PALYRA_BIN;
  }
  const target = process.env.CARGO_TARGET_DIR ?? join(REPO, "target");
  return join(isAbsolute(target) ? target : join(REPO, target), "debug", "palyra");
}

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => (typeof address === "object" && address ? ok(address.port) : fail(new Error("no port"))));
    });
  });
}

export interface TestNode {
  url: string;
  dataDir: string;
  stop(): Promise<void>;
}

/** `palyra serve` on a fresh data dir (with `config` as its palyra.toml), on a free port. */
export async function startNode(config?: string): Promise<TestNode> {
  const binary = palyraBin();
  if (!existsSync(binary)) {
    throw new Error(`${binary} not found: run \`cargo build\` first (or set PALYRA_BIN)`);
  }
  const root = mkdtempSync(join(tmpdir(), "palyra-ts-"));
  chmodSync(root, 0o700);
  const dataDir = join(root, "node");
  if (config !== undefined) {
    mkdirSync(dataDir, { mode: 0o700 });
    writeFileSync(join(dataDir, "palyra.toml"), config);
  }
  const port = await freePort();
  const url = `https://127.0.0.1:${port}`;
  let log = "";
  const child: ChildProcess = spawn(binary, ["--data-dir", dataDir, "serve", "--grpc-addr", `127.0.0.1:${port}`, "--console-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"], {
    env: { ...process.env, PALYRA_KEY_BACKEND: "file" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (d) => (log += d));
  child.stderr?.on("data", (d) => (log += d));
  const exited = new Promise<void>((ok) => child.once("exit", () => ok()));
  const stop = async () => {
    if (child.exitCode === null) {
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(root, { recursive: true, force: true });
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      rmSync(root, { recursive: true, force: true });
      throw new Error(`palyra serve exited with ${child.exitCode}:\n${log}`);
    }
    if (["ca.pem", "cert.pem", "key.pem"].every((f) => existsSync(join(dataDir, "operator", f)))) {
      const client = connect({ server: url, dataDir, renew: false });
      try {
        await client.whoAmI();
        return { url, dataDir, stop };
      } catch (e) {
        if (!(e instanceof PalyraError)) throw e;
      } finally {
        client.close();
      }
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`palyra serve did not come up:\n${log}`);
    }
    await new Promise((ok) => setTimeout(ok, 100));
  }
}

export function operatorCa(node: TestNode): Buffer {
  return readFileSync(join(node.dataDir, "operator", "ca.pem"));
}

/** The node's gRPC port. */
export function portOf(node: TestNode): number {
  return Number(node.url.split(":").pop());
}

/**
 * Pairs `dataDir` with the node by running `palyra pair --uri` (the CLI, as a device would),
 * approved with `scopes` by the operator as soon as the CLI says which request to approve.
 */
export async function pairDevice(node: TestNode, dataDir: string, name: string, scopes: string[] = []): Promise<void> {
  const operator = connect({ server: node.url, dataDir: node.dataDir, renew: false });
  try {
    const code = await unary<pairing.CreatePairingCodeResponse>((cb) => operator.pairing.createPairingCode({ role: "" }, cb));
    const child = spawn(palyraBin(), ["--data-dir", dataDir, "pair", "--uri", code.uri, "--name", name, "--wait-seconds", "30"], {
      env: { ...process.env, PALYRA_LOG: "off" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    const exited = new Promise<number | null>((ok) => child.once("exit", (status) => ok(status)));
    const requestId = await new Promise<string>((ok, fail) => {
      child.stderr?.on("data", (d) => {
        log += d;
        const found = /palyra pairing approve (\S+)/.exec(log);
        if (found) ok(found[1]);
      });
      void exited.then((status) => fail(new Error(`palyra pair exited with ${status}:\n${log}`)));
    });
    await unary((cb) => operator.pairing.approvePairing({ requestId, role: "", scopes }, cb));
    const status = await exited;
    if (status !== 0) {
      throw new Error(`palyra pair exited with ${status}:\n${log}`);
    }
  } finally {
    operator.close();
  }
}

/**
 * A TCP proxy on 127.0.0.1 in front of a node, whose connections a test can cut: `cut()` closes
 * every connection and refuses new ones until `resume()`.
 */
export class TcpProxy {
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private paused = false;
  accepted = 0;

  private constructor(server: Server, readonly url: string) {
    this.server = server;
  }

  static start(upstreamPort: number): Promise<TcpProxy> {
    const server = createServer();
    return new Promise((ok, fail) => {
      server.once("error", fail);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        if (!address || typeof address !== "object") {
          fail(new Error("no address"));
          return;
        }
        const proxy = new TcpProxy(server, `https://127.0.0.1:${address.port}`);
        server.on("connection", (client) => proxy.accept(client, upstreamPort));
        ok(proxy);
      });
    });
  }

  private accept(client: Socket, upstreamPort: number): void {
    if (this.paused) {
      client.destroy();
      return;
    }
    this.accepted += 1;
    const upstream = createConnection({ host: "127.0.0.1", port: upstreamPort });
    for (const [a, b] of [
      [client, upstream],
      [upstream, client],
    ]) {
      this.sockets.add(a);
      a.on("error", () => b.destroy());
      a.on("close", () => {
        this.sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  }

  cut(): void {
    this.paused = true;
    for (const socket of this.sockets) {
      socket.destroy();
    }
  }

  resume(): void {
    this.paused = false;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((ok) => this.server.close(() => ok()));
  }
}
