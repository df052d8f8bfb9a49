// A real node for the tests: `palyra serve` built from this repository, on a fresh data dir in a
// temp directory and a free port. The binary is $PALYRA_BIN, else $CARGO_TARGET_DIR/debug/palyra,
// else target/debug/palyra (build it with `cargo build`).

import { ChildProcess, spawn } from "node:child_process";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";

import { connect, PalyraError } from "../src";

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

export async function startNode(): Promise<TestNode> {
  const binary = palyraBin();
  if (!existsSync(binary)) {
    throw new Error(`${binary} not found: run \`cargo build\` first (or set PALYRA_BIN)`);
  }
  const root = mkdtempSync(join(tmpdir(), "palyra-ts-"));
  chmodSync(root, 0o700);
  const dataDir = join(root, "node");
  const port = await freePort();
  const url = `https://127.0.0.1:${port}`;
  let log = "";
  const child: ChildProcess = spawn(binary, ["--data-dir", dataDir, "serve", "--grpc-addr", `127.0.0.1:${port}`, "--console-addr", "127.0.0.1:0"], {
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
      throw new Error(`palyra serve exited with ${child.exitCode}:\n${log}`);
    }
    if (["ca.pem", "cert.pem", "key.pem"].every((f) => existsSync(join(dataDir, "operator", f)))) {
      const client = connect({ server: url, dataDir });
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
