/**
 * Self-renewing credentials: a client made from a credentials directory (`<data dir>/client/`
 * of a paired device, or `operator/` on the node) renews its certificate on its own, as the
 * `palyra` CLI does.
 *
 * The rule is the CLI's: renew once two thirds of the certificate's lifetime have passed, the
 * lifetime counted from issuance (`notBefore` + 5 minutes, since the node backdates
 * `notBefore` for clocks that run behind) to `notAfter`. Before expiry the renewal is
 * `IdentityService/RenewCertificate` over mTLS; after it, an anonymous `GetRenewalChallenge`
 * and `RenewCertificate` with an Ed25519 proof by the device's identity key (`identity.key`,
 * which only a paired device's `client/` holds). The TLS key stays; `cert.pem` is replaced
 * atomically (temp file, fsync, rename, fsync of the directory; mode 0600).
 *
 * A timer renews when due, and a call that finds the certificate expired waits for the
 * renewal. A renewal that fails keeps the old certificate and is retried with exponential
 * backoff. The channel's credentials come from a grpc-js certificate provider: every new TLS
 * connection uses the newest certificate, and calls in flight go on undisturbed.
 */

import { createHash, createPrivateKey, createPublicKey, KeyObject, sign, X509Certificate } from "node:crypto";
import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";

import * as grpc from "@grpc/grpc-js";

import { PalyraError } from "./errors";
import { tlsFor } from "./servername";
import { IdentityServiceClient, RenewCertificateResponse } from "./gen/palyra/identity/v1/identity";

/** How far the node backdates `notBefore` (`CLOCK_SKEW_ALLOWANCE` in the node's CA), in ms. */
export const CLOCK_SKEW_ALLOWANCE_MS = 300_000;
/** The domain tag of the renewal proof (`RENEWAL_PROOF_TAG` in the node). */
export const RENEWAL_PROOF_TAG = Buffer.from("palyra-renewal-v1/proof");
/** The URI SAN prefix that names a device in its certificate. */
export const DEVICE_URI_PREFIX = "palyra://device/";
// identity.key: version (1) ‖ ULID (16) ‖ Ed25519 seed (32) ‖ X25519 secret (32).
const IDENTITY_LEN = 81;
const IDENTITY_FORMAT_V1 = 1;
const RPC_TIMEOUT_MS = 10_000;

/** What a renewal attempt did: `notAfter` of the new certificate, or the `error` (the old one is kept) and when it is tried again. */
export type RenewalEvent = { notAfter: Date; error?: undefined } | { error: Error; retryInMs: number; notAfter?: undefined };

/** (issued at, not after) of a certificate in ms since the epoch: issuance is `notBefore` + 5 min. */
export function certificateWindow(certPem: Buffer | string): { issuedAt: number; notAfter: number } {
  const cert = new X509Certificate(certPem);
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) {
    throw new Error("the certificate's validity does not parse");
  }
  return { issuedAt: notBefore + CLOCK_SKEW_ALLOWANCE_MS, notAfter };
}

/** When two thirds of the certificate's lifetime (from issuance) have passed, in ms since the epoch. */
export function renewalDueAt(certPem: Buffer | string): number {
  const { issuedAt, notAfter } = certificateWindow(certPem);
  return notAfter - Math.max(0, notAfter - issuedAt) / 3;
}

function deviceIdOf(certPem: Buffer): string {
  const names = new X509Certificate(certPem).subjectAltName ?? "";
  for (const name of names.split(/,\s*/)) {
    if (name.startsWith(`URI:${DEVICE_URI_PREFIX}`)) {
      return name.slice(`URI:${DEVICE_URI_PREFIX}`.length);
    }
  }
  throw new Error("the certificate names no palyra device (no palyra://device/ URI)");
}

// --- a PKCS#10 request for the TLS key (node:crypto makes none) -----------------------------

function der(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const n = body.length;
  const length =
    n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  if (n > 0xffff) {
    throw new Error("DER value too long");
  }
  return Buffer.concat([Buffer.from([tag]), length, body]);
}

const OID_COMMON_NAME = Buffer.from([0x06, 0x03, 0x55, 0x04, 0x03]);
const OID_ECDSA_SHA256 = Buffer.from([0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);

/** A CSR (PEM and DER) for `key` with CN = the device id; the node uses only its public key. */
export function csrFor(key: KeyObject, deviceId: string): { pem: string; der: Buffer } {
  const spki = createPublicKey(key).export({ type: "spki", format: "der" });
  const subject = der(0x30, der(0x31, der(0x30, OID_COMMON_NAME, der(0x0c, Buffer.from(deviceId, "utf8")))));
  const info = der(0x30, der(0x02, Buffer.from([0])), subject, spki, Buffer.from([0xa0, 0x00]));
  const signature = sign("sha256", info, key); // DER ECDSA signature
  const request = der(0x30, info, der(0x30, OID_ECDSA_SHA256), der(0x03, Buffer.from([0]), signature));
  const b64 = request.toString("base64").replace(/(.{64})/g, "$1\n");
  return { pem: `-----BEGIN CERTIFICATE REQUEST-----\n${b64}\n-----END CERTIFICATE REQUEST-----\n`, der: request };
}

const ED25519_PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");

function signingKey(identity: Buffer): KeyObject {
  if (identity.length !== IDENTITY_LEN || identity[0] !== IDENTITY_FORMAT_V1) {
    throw new Error("identity.key is not a version-1 device identity (81 bytes)");
  }
  const pkcs8 = Buffer.concat([ED25519_PKCS8_PREFIX, identity.subarray(17, 49)]);
  try {
    return createPrivateKey({ key: pkcs8, format: "der", type: "pkcs8" });
  } finally {
    pkcs8.fill(0);
  }
}

/** Replaces `path` with `data` atomically: a new 0600 temp file beside it, fsynced, renamed over it, the directory fsynced. */
export function writePrivateAtomic(path: string, data: Buffer): void {
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${Math.random().toString(16).slice(2, 10)}`);
  try {
    const fd = openSync(tmp, "wx", 0o600);
    try {
      writeSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  const dir = openSync(dirname(path), "r");
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

// --- the certificate provider grpc-js reads -------------------------------------------------

/**
 * The CA and the current client certificate for grpc-js
 * (`experimental.createCertificateProviderChannelCredentials`): a new certificate is handed to
 * the channel's listeners, and every TLS connection made after that presents it.
 */
class CredentialsProvider implements grpc.experimental.CertificateProvider {
  private readonly caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>();
  private readonly identityListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>();

  constructor(
    readonly ca: Buffer,
    public cert: Buffer,
    readonly key: Buffer,
  ) {}

  /** Never shows the private key (console.log, util.inspect). */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `CredentialsProvider { certificate: ${this.cert.length} bytes, key: [redacted] }`;
  }

  update(cert: Buffer): void {
    this.cert = cert;
    for (const listener of this.identityListeners) {
      listener({ certificate: cert, privateKey: this.key });
    }
  }

  addCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(listener);
    process.nextTick(listener, { caCertificate: this.ca });
  }
  removeCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(listener);
  }
  addIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.add(listener);
    process.nextTick(listener, { certificate: this.cert, privateKey: this.key });
  }
  removeIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.identityListeners.delete(listener);
  }
}

export interface RenewalOptions {
  /** Hears every renewal attempt. */
  onRenewal?: (event: RenewalEvent) => void;
  /** First retry delay after a failed renewal (default 1 s), doubled up to `backoffMaxMs` (default 60 s). */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
}

/** The credentials of one directory and their renewal; `credentials` is what the channel uses. */
export class Renewer {
  readonly credentials: grpc.ChannelCredentials;
  private readonly provider: CredentialsProvider;
  private readonly tlsKey: KeyObject;
  private dueAt = 0;
  private notAfter = 0;
  private retryAt = 0;
  private failures = 0;
  private timer: NodeJS.Timeout | undefined;
  private renewing: Promise<void> | undefined;
  private closed = false;
  private identity: IdentityServiceClient | undefined;
  private lastError = "";

  constructor(
    readonly target: string,
    readonly dir: string,
    private readonly options: RenewalOptions = {},
  ) {
    const read = (name: string) => readFileSync(join(dir, name));
    this.provider = new CredentialsProvider(read("ca.pem"), read("cert.pem"), read("key.pem"));
    this.tlsKey = createPrivateKey(this.provider.key);
    this.credentials = grpc.experimental.createCertificateProviderChannelCredentials(
      this.provider,
      this.provider,
      tlsFor(target).verify,
    );
    this.setTimes(this.provider.cert);
  }

  /** Never shows the private key (console.log, util.inspect). */
  [Symbol.for("nodejs.util.inspect.custom")](): string {
    return `Renewer { dir: ${JSON.stringify(this.dir)}, notAfter: ${new Date(this.notAfter).toISOString()} }`;
  }

  /** The certificate new connections present. */
  get certificatePem(): Buffer {
    return this.provider.cert;
  }

  /** The CA, certificate and key of the moment (for a channel of its own). */
  get pems(): { ca: Buffer; cert: Buffer; key: Buffer } {
    return { ca: this.provider.ca, cert: this.provider.cert, key: this.provider.key };
  }

  /** Starts renewing on time; `channel` is the client's, used for renewals over mTLS. */
  start(channel: ReturnType<grpc.Client["getChannel"]>): void {
    this.identity = new IdentityServiceClient(this.target, this.credentials, { channelOverride: channel });
    this.schedule();
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  /**
   * Interceptor: a call that finds the certificate due starts its renewal in the background; one
   * that finds it expired waits for a renewal attempt. While the certificate stays expired (the
   * renewal failed; it is retried with backoff) calls fail at once with UNAVAILABLE rather than
   * let the channel try the node with a certificate it refuses (grpc-js would then back off
   * its reconnects, delaying the first call after the renewal).
   */
  readonly interceptor: grpc.Interceptor = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start: (metadata, listener, next) => {
        const now = Date.now();
        if (this.closed || now < this.dueAt) {
          next(metadata, listener);
          return;
        }
        const attempt = now >= this.retryAt ? this.renewInBackground() : Promise.resolve();
        if (now < this.notAfter) {
          next(metadata, listener);
          return;
        }
        void attempt.then(() => {
          if (Date.now() < this.notAfter) {
            next(metadata, listener);
            return;
          }
          const retryIn = Math.max(0, Math.round((this.retryAt - Date.now()) / 1000));
          listener.onReceiveStatus({
            code: grpc.status.UNAVAILABLE,
            details: `this client's certificate expired and could not be renewed yet (${this.lastError}); retrying in ${retryIn} s`,
            metadata: new grpc.Metadata(),
          });
        });
      },
    });

  /** Renews now, whatever the certificate's age; rejects when it fails (the old one is kept). */
  renewNow(): Promise<void> {
    const attempt = (this.renewing ?? Promise.resolve()).then(() => this.renew(true));
    return attempt;
  }

  private setTimes(cert: Buffer): void {
    this.dueAt = renewalDueAt(cert);
    this.notAfter = certificateWindow(cert).notAfter;
  }

  private schedule(): void {
    clearTimeout(this.timer);
    if (this.closed) {
      return;
    }
    // setTimeout takes at most 2^31-1 ms (24.8 days): a later renewal is reached in steps.
    const wait = Math.min(Math.max(Math.max(this.dueAt, this.retryAt) - Date.now(), 0), 2 ** 31 - 1);
    this.timer = setTimeout(() => {
      if (Date.now() >= Math.max(this.dueAt, this.retryAt)) {
        void this.renewInBackground();
      } else {
        this.schedule();
      }
    }, wait);
    this.timer.unref(); // never keeps the process alive
  }

  /** One renewal at a time; resolves when it is over, whatever happened. */
  private renewInBackground(): Promise<void> {
    this.renewing ??= this.renew(false)
      .catch(() => undefined)
      .finally(() => {
        this.renewing = undefined;
      });
    return this.renewing;
  }

  private async renew(raise: boolean): Promise<void> {
    if (this.closed) {
      return;
    }
    try {
      const cert = Date.now() >= this.notAfter ? await this.renewWithProof() : await this.renewOverMtls();
      const issued = new X509Certificate(cert);
      if (!issued.publicKey.equals(createPublicKey(this.tlsKey))) {
        throw new Error("the node answered with a certificate for another key");
      }
      writePrivateAtomic(join(this.dir, "cert.pem"), cert);
      this.provider.update(cert);
      this.setTimes(cert);
      this.failures = 0;
      this.retryAt = 0;
      this.notify({ notAfter: new Date(this.notAfter) });
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      this.lastError = error.message;
      this.failures += 1;
      const { backoffInitialMs = 1000, backoffMaxMs = 60_000 } = this.options;
      const delay = Math.min(backoffMaxMs, backoffInitialMs * 2 ** (this.failures - 1)) * (0.75 + Math.random() / 4);
      this.retryAt = Date.now() + delay;
      this.notify({ error, retryInMs: delay });
      if (raise) {
        throw error;
      }
    } finally {
      this.schedule();
    }
  }

  private notify(event: RenewalEvent): void {
    try {
      this.options.onRenewal?.(event);
    } catch {
      // a listener's failure is not the renewal's
    }
  }

  private renewOverMtls(): Promise<Buffer> {
    const identity = this.identity;
    if (!identity) {
      return Promise.reject(new Error("the renewer was not started"));
    }
    const csr = csrFor(this.tlsKey, deviceIdOf(this.provider.cert));
    return call<RenewCertificateResponse>((cb) =>
      identity.renewCertificate({ csrPem: csr.pem, proof: undefined }, new grpc.Metadata(), { deadline: Date.now() + RPC_TIMEOUT_MS }, cb),
    ).then((r) => Buffer.from(r.certificatePem));
  }

  private async renewWithProof(): Promise<Buffer> {
    let identityKey: Buffer;
    try {
      identityKey = readFileSync(join(this.dir, "identity.key"));
    } catch (e) {
      throw new Error(
        `the certificate in ${this.dir} expired and cannot be renewed without the device identity (${(e as NodeJS.ErrnoException).code}): pair this device again`,
      );
    }
    const signing = signingKey(identityKey);
    identityKey.fill(0);
    const deviceId = deviceIdOf(this.provider.cert);
    const csr = csrFor(this.tlsKey, deviceId);
    // No valid client certificate: server-authenticated TLS only, the node's CA pinned.
    const tls = tlsFor(this.target);
    const anonymous = new IdentityServiceClient(
      this.target,
      grpc.credentials.createSsl(this.provider.ca, null, null, tls.verify),
      tls.options,
    );
    try {
      const deadline = () => ({ deadline: Date.now() + RPC_TIMEOUT_MS });
      const { challenge } = await call<{ challenge: Buffer }>((cb) =>
        anonymous.getRenewalChallenge({ deviceId }, new grpc.Metadata(), deadline(), cb),
      );
      const message = Buffer.concat([RENEWAL_PROOF_TAG, challenge, createHash("sha256").update(csr.der).digest()]);
      const proof = { deviceId, challenge, signature: sign(null, message, signing) };
      const reply = await call<RenewCertificateResponse>((cb) =>
        anonymous.renewCertificate({ csrPem: csr.pem, proof }, new grpc.Metadata(), deadline(), cb),
      );
      return Buffer.from(reply.certificatePem);
    } finally {
      anonymous.close();
    }
  }
}

/** A unary call as a Promise that rejects with a `PalyraError`. */
function call<Res>(start: (cb: (error: grpc.ServiceError | null, response: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => {
    start((error, response) => (error ? reject(new PalyraError(error)) : resolve(response)));
  });
}
