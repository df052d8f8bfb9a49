/**
 * Palyra client for Node.js.
 *
 * The message types and service clients in `./gen` are generated from the repository's
 * `proto/` by ts-proto (`clients/generate.sh`), for `@grpc/grpc-js`. This file is the small
 * hand-written layer on top: `connect` (mTLS from a data dir or explicit PEMs), `unary` (a call
 * as a Promise), and `PalyraError` (the gRPC code plus the `ErrorReason` from the
 * `google.rpc.ErrorInfo` in `grpc-status-details-bin`). It does not pair devices or renew
 * certificates; use the `palyra` CLI or the Python client for those.
 */

import { readFileSync, existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

import * as grpc from "@grpc/grpc-js";

import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import { AuditServiceClient } from "./gen/palyra/audit/v1/audit";
import { AuthProfileServiceClient } from "./gen/palyra/auth/v1/auth";
import { ErrorReason, errorReasonFromJSON } from "./gen/palyra/common/v1/errors";
import { ConsoleServiceClient } from "./gen/palyra/console/v1/console";
import { IdentityServiceClient, WhoAmIResponse } from "./gen/palyra/identity/v1/identity";
import { PairingServiceClient } from "./gen/palyra/pairing/v1/pairing";
import { PolicyServiceClient } from "./gen/palyra/policy/v1/policy";
import {
  GetSecretMetadataResponse,
  SecretMetadata,
  VaultServiceClient,
} from "./gen/palyra/vault/v1/vault";

export * as audit from "./gen/palyra/audit/v1/audit";
export * as auth from "./gen/palyra/auth/v1/auth";
export * as common from "./gen/palyra/common/v1/errors";
export * as console from "./gen/palyra/console/v1/console";
export * as identity from "./gen/palyra/identity/v1/identity";
export * as pairing from "./gen/palyra/pairing/v1/pairing";
export * as policy from "./gen/palyra/policy/v1/policy";
export * as vault from "./gen/palyra/vault/v1/vault";
export { ErrorReason } from "./gen/palyra/common/v1/errors";

/** Where `palyra serve` listens unless told otherwise. */
export const DEFAULT_SERVER = "https://127.0.0.1:7443";

/** The `ErrorInfo.domain` of Palyra's reasons. */
export const ERROR_DOMAIN = "palyra.dev";

const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

/**
 * A failed call: `code` is the gRPC status code, `reason` the Palyra `ErrorReason`
 * (`ErrorReason.ERROR_REASON_UNSPECIFIED` when the status carried none, e.g. a transport
 * failure), `reasonName` its name as sent (`"ERROR_REASON_VERSION_CONFLICT"`, or `""`).
 */
export class PalyraError extends Error {
  readonly code: grpc.status;
  readonly details: string;
  readonly reason: ErrorReason;
  readonly reasonName: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;
  readonly cause: grpc.ServiceError;

  constructor(error: grpc.ServiceError) {
    const info = errorInfo(error);
    const reasonName = info?.reason ?? "";
    super(`${grpc.status[error.code]}: ${error.details}${reasonName ? ` [${reasonName}]` : ""}`);
    this.name = "PalyraError";
    this.code = error.code;
    this.details = error.details;
    this.reasonName = reasonName;
    this.reason = reasonName ? errorReasonFromJSON(reasonName) : ErrorReason.ERROR_REASON_UNSPECIFIED;
    this.domain = info?.domain ?? "";
    this.metadata = info?.metadata ?? {};
    this.cause = error;
  }
}

function errorInfo(error: grpc.ServiceError): ErrorInfo | undefined {
  const raw = error.metadata?.get("grpc-status-details-bin")[0];
  if (!(raw instanceof Buffer)) {
    return undefined;
  }
  try {
    const status = Status.decode(raw);
    const detail = status.details.find((d) => d.typeUrl === ERROR_INFO_TYPE);
    return detail ? ErrorInfo.decode(detail.value) : undefined;
  } catch {
    return undefined; // unreadable details: keep the code and message
  }
}

type Callback<Res> = (error: grpc.ServiceError | null, response: Res) => void;

/**
 * Runs one unary call of a generated client as a Promise that rejects with a `PalyraError`:
 * `await unary<GetSecretResponse>((cb) => client.vault.getSecret(request, cb))`.
 */
export function unary<Res>(start: (callback: Callback<Res>) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((error, response) => (error ? reject(new PalyraError(error)) : resolve(response)));
  });
}

/** The CLI's default data dir: `$PALYRA_HOME`, else `$XDG_DATA_HOME/palyra`, else `~/.local/share/palyra`. */
export function defaultDataDir(): string {
  return (
    process.env.PALYRA_HOME ||
    (process.env.XDG_DATA_HOME ? join(process.env.XDG_DATA_HOME, "palyra") : join(homedir(), ".local", "share", "palyra"))
  );
}

/** `operator/` (on the node) or `client/` (a paired device) of a data dir, as the CLI picks it. */
export function credentialsDir(dataDir: string): string {
  for (const sub of ["operator", "client"]) {
    if (existsSync(join(dataDir, sub, "cert.pem"))) {
      return join(dataDir, sub);
    }
  }
  throw new Error(`no client credentials in ${dataDir}: run \`palyra init\` on the node, or \`palyra pair\` on a device`);
}

export interface ConnectOptions {
  /** `https://HOST:PORT`; default `https://127.0.0.1:7443`. */
  server?: string;
  /** A data dir whose `operator/` or `client/` holds ca.pem, cert.pem, key.pem. */
  dataDir?: string;
  /** Or the PEMs themselves. */
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** The generated clients on one mTLS channel, and a few helpers. */
export class Palyra {
  readonly vault: VaultServiceClient;
  readonly identity: IdentityServiceClient;
  readonly pairing: PairingServiceClient;
  readonly policy: PolicyServiceClient;
  readonly audit: AuditServiceClient;
  readonly auth: AuthProfileServiceClient;
  readonly console: ConsoleServiceClient;

  constructor(
    readonly target: string,
    readonly credentials: grpc.ChannelCredentials,
  ) {
    this.vault = new VaultServiceClient(target, credentials);
    // The other clients share the first one's channel.
    const options = { channelOverride: this.vault.getChannel() };
    this.identity = new IdentityServiceClient(target, credentials, options);
    this.pairing = new PairingServiceClient(target, credentials, options);
    this.policy = new PolicyServiceClient(target, credentials, options);
    this.audit = new AuditServiceClient(target, credentials, options);
    this.auth = new AuthProfileServiceClient(target, credentials, options);
    this.console = new ConsoleServiceClient(target, credentials, options);
  }

  close(): void {
    this.vault.close();
  }

  /** Who the node thinks this caller is. */
  whoAmI(): Promise<WhoAmIResponse> {
    return unary((cb) => this.identity.whoAmI({}, cb));
  }

  /**
   * Stores a new version. `expectedVersion` makes it a compare-and-swap ("0": must not exist);
   * a mismatch rejects with FAILED_PRECONDITION / ERROR_REASON_VERSION_CONFLICT.
   */
  async putSecret(scope: string, key: string, value: Buffer | string, opts: { expectedVersion?: string } = {}): Promise<SecretMetadata> {
    const request = { scope, key, value: Buffer.from(value), expectedVersion: opts.expectedVersion };
    const response = await unary<{ metadata?: SecretMetadata | undefined }>((cb) => this.vault.putSecret(request, cb));
    if (!response.metadata) {
      throw new Error("PutSecret answered without metadata");
    }
    return response.metadata;
  }

  /** The value of `version` (default "0": the latest). */
  async getSecret(scope: string, key: string, version = "0"): Promise<Buffer> {
    const response = await unary<{ value: Buffer }>((cb) => this.vault.getSecret({ scope, key, version }, cb));
    return response.value;
  }

  /** The secret's metadata and every version (never values). */
  secretMetadata(scope: string, key: string): Promise<GetSecretMetadataResponse> {
    return unary((cb) => this.vault.getSecretMetadata({ scope, key }, cb));
  }
}

/**
 * Opens an mTLS channel: `connect({ dataDir })`, or `connect({ server, ca, cert, key })`.
 * Without either, the CLI's default data dir. The channel connects on the first call.
 */
export function connect(opts: ConnectOptions = {}): Palyra {
  const server = opts.server ?? DEFAULT_SERVER;
  let { ca, cert, key } = opts;
  if (!ca && !cert && !key) {
    const dir = credentialsDir(opts.dataDir ?? defaultDataDir());
    [ca, cert, key] = ["ca.pem", "cert.pem", "key.pem"].map((f) => readFileSync(join(dir, f)));
  } else if (!ca || !cert || !key) {
    throw new Error("pass all of ca, cert and key, or a dataDir");
  }
  return new Palyra(target(server), grpc.credentials.createSsl(ca, key, cert));
}

/** `https://HOST:PORT` → `HOST:PORT`, the form grpc-js takes. */
export function target(server: string): string {
  if (server.startsWith("https://")) {
    return server.slice("https://".length).replace(/\/$/, "");
  }
  if (server.includes("://")) {
    throw new Error(`bad server ${JSON.stringify(server)}: use https://HOST:PORT`);
  }
  return server;
}
