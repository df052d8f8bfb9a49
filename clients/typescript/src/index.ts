/**
 * Palyra client for Node.js.
 *
 * The message types and service clients in `./gen` are generated from the repository's
 * `proto/` by ts-proto (`clients/generate.sh`), for `@grpc/grpc-js`. This file is the small
 * hand-written layer on top: `connect` (mTLS from a data dir or explicit PEMs; from a data dir
 * the certificate renews itself, see `./renewal`), `unary` (a call as a Promise), `PalyraError`
 * (the gRPC code plus the `ErrorReason` from the `google.rpc.ErrorInfo` in
 * `grpc-status-details-bin`), and `watchSecrets` (an AsyncIterable of a scope's changes that
 * reconnects and resumes, see `./watch`). It does not pair devices; use `palyra pair` or the
 * Python client for that.
 */

import { readFileSync, existsSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";

import * as grpc from "@grpc/grpc-js";

import { tlsFor } from "./servername";

import { AuditServiceClient } from "./gen/palyra/audit/v1/audit";
import { AuthProfileServiceClient } from "./gen/palyra/auth/v1/auth";
import { ConsoleServiceClient } from "./gen/palyra/console/v1/console";
import { IdentityServiceClient, WhoAmIResponse } from "./gen/palyra/identity/v1/identity";
import { PairingServiceClient } from "./gen/palyra/pairing/v1/pairing";
import { PolicyServiceClient } from "./gen/palyra/policy/v1/policy";
import {
  GetSecretMetadataResponse,
  SecretMetadata,
  VaultServiceClient,
  WatchSecretsResponse,
} from "./gen/palyra/vault/v1/vault";
import { unary } from "./errors";
import { Renewer, RenewalOptions } from "./renewal";
import { watchSecrets, WatchOptions } from "./watch";

export * as audit from "./gen/palyra/audit/v1/audit";
export * as auth from "./gen/palyra/auth/v1/auth";
export * as common from "./gen/palyra/common/v1/errors";
export * as console from "./gen/palyra/console/v1/console";
export * as identity from "./gen/palyra/identity/v1/identity";
export * as pairing from "./gen/palyra/pairing/v1/pairing";
export * as policy from "./gen/palyra/policy/v1/policy";
export * as vault from "./gen/palyra/vault/v1/vault";
export { ErrorReason } from "./gen/palyra/common/v1/errors";
export { ERROR_DOMAIN, PalyraError, unary } from "./errors";
export { tlsFor } from "./servername";
export { certificateWindow, RenewalEvent, RenewalOptions } from "./renewal";
export { WatchOptions } from "./watch";

/** Where `palyra serve` listens unless told otherwise. */
export const DEFAULT_SERVER = "https://127.0.0.1:7443";

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

export interface ConnectOptions extends RenewalOptions {
  /** `https://HOST:PORT`; default `https://127.0.0.1:7443`. */
  server?: string;
  /** A data dir whose `operator/` or `client/` holds ca.pem, cert.pem, key.pem. */
  dataDir?: string;
  /** Or the PEMs themselves (then nothing is renewed). */
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** From a data dir: renew the certificate on its own (default true). */
  renew?: boolean;
  /** grpc-js channel options (e.g. `grpc.max_reconnect_backoff_ms`). */
  channelOptions?: grpc.ChannelOptions;
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

  /**
   * `renewer` (set by `connect` from a data dir) renews the certificate: its credentials are
   * the channel's and its interceptor holds a call while an expired certificate is renewed.
   */
  constructor(
    readonly target: string,
    readonly credentials: grpc.ChannelCredentials,
    private readonly renewer?: Renewer,
    channelOptions: grpc.ChannelOptions = {},
  ) {
    const interceptors = renewer ? [renewer.interceptor] : [];
    this.vault = new VaultServiceClient(target, credentials, { ...channelOptions, interceptors });
    // The other clients share the first one's channel.
    const options = { channelOverride: this.vault.getChannel(), interceptors };
    this.identity = new IdentityServiceClient(target, credentials, options);
    this.pairing = new PairingServiceClient(target, credentials, options);
    this.policy = new PolicyServiceClient(target, credentials, options);
    this.audit = new AuditServiceClient(target, credentials, options);
    this.auth = new AuthProfileServiceClient(target, credentials, options);
    this.console = new ConsoleServiceClient(target, credentials, options);
    renewer?.start(this.vault.getChannel());
  }

  close(): void {
    this.renewer?.close();
    this.vault.close();
  }

  /** Whether this client renews its certificate on its own. */
  get renews(): boolean {
    return this.renewer !== undefined;
  }

  /** The client certificate new connections present (self-renewing clients only). */
  get certificatePem(): Buffer | undefined {
    return this.renewer?.certificatePem;
  }

  /**
   * Renews the certificate now (a self-renewing client does so on its own past two thirds of
   * its lifetime); rejects when it fails, keeping the old one.
   */
  renewCertificate(): Promise<void> {
    if (!this.renewer) {
      return Promise.reject(new Error("this client was not made from a credentials directory; nothing to renew"));
    }
    return this.renewer.renewNow();
  }

  /**
   * The changes of the secrets in `scope` as they happen, never values: see `WatchOptions`.
   * `for await (const change of palyra.watchSecrets("apps/billing")) { ... }`; `break` ends it.
   */
  watchSecrets(scope: string, opts: WatchOptions = {}): AsyncGenerator<WatchSecretsResponse, void, undefined> {
    return watchSecrets(this.vault, scope, opts);
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
 *
 * From a data dir (unless `renew: false`) the client renews its certificate on its own past two
 * thirds of its lifetime, or with the device's identity key once it expired, and stores it in
 * the directory's `cert.pem`; `onRenewal` hears each attempt. See `./renewal`.
 */
export function connect(opts: ConnectOptions = {}): Palyra {
  const server = opts.server ?? DEFAULT_SERVER;
  let { ca, cert, key } = opts;
  if (!ca && !cert && !key) {
    const dir = credentialsDir(opts.dataDir ?? defaultDataDir());
    if (opts.renew ?? true) {
      const renewer = new Renewer(target(server), dir, opts);
      return new Palyra(target(server), renewer.credentials, renewer, channelOptions(server, opts));
    }
    [ca, cert, key] = ["ca.pem", "cert.pem", "key.pem"].map((f) => readFileSync(join(dir, f)));
  } else if (!ca || !cert || !key) {
    throw new Error("pass all of ca, cert and key, or a dataDir");
  }
  const credentials = grpc.credentials.createSsl(ca, key, cert, tlsFor(target(server)).verify);
  return new Palyra(target(server), credentials, undefined, channelOptions(server, opts));
}

/** The caller's channel options over the TLS server-name ones (`./servername`). */
function channelOptions(server: string, opts: ConnectOptions): grpc.ChannelOptions {
  return { ...tlsFor(target(server)).options, ...opts.channelOptions };
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
