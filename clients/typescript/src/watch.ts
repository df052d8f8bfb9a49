/**
 * `watchSecrets`: VaultService/WatchSecrets as an AsyncIterable that survives a broken stream.
 *
 * It remembers where it is: the last change's sequence, or the node's position from the
 * progress markers it always asks for (the first says where the stream starts, later ones
 * come while other scopes change). When the stream breaks with UNAVAILABLE (the network, a
 * node that restarts) or ends without being asked to, it calls again after a backoff and
 * resumes after that position: no gap, no repeat. Any other failure is thrown as a
 * `PalyraError`: PERMISSION_DENIED (scope not granted), UNAUTHENTICATED +
 * ERROR_REASON_DEVICE_REVOKED, OUT_OF_RANGE + ERROR_REASON_EVENTS_TRUNCATED (`sinceSequence`
 * older than the node keeps; `metadata.oldest_available_sequence` says where to start over).
 */

import * as grpc from "@grpc/grpc-js";

import { PalyraError } from "./errors";
import { SecretChange, VaultServiceClient, WatchSecretsResponse } from "./gen/palyra/vault/v1/vault";

export interface WatchOptions {
  /** Also the sub-scopes' changes. */
  recursive?: boolean;
  /** Replay the changes after this sequence first ("0", the default: only new ones). */
  sinceSequence?: string;
  /** Also yield the progress markers (`change === SecretChange.SECRET_CHANGE_PROGRESS`, empty scope and key); the first says the stream is live. */
  progress?: boolean;
  /** First reconnect delay (default 250 ms), doubled up to `backoffMaxMs` (default 15 s); reset by any message. */
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Ends the watch (the iteration returns) when aborted. */
  signal?: AbortSignal;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

export async function* watchSecrets(
  vault: VaultServiceClient,
  scope: string,
  opts: WatchOptions = {},
): AsyncGenerator<WatchSecretsResponse, void, undefined> {
  const { recursive = false, progress = false, backoffInitialMs = 250, backoffMaxMs = 15_000, signal } = opts;
  let last = BigInt(opts.sinceSequence ?? "0");
  let delay = backoffInitialMs;
  while (!signal?.aborted) {
    const call = vault.watchSecrets({ scope, recursive, sinceSequence: last.toString(), progress: true });
    const abort = () => call.cancel();
    signal?.addEventListener("abort", abort, { once: true });
    try {
      for await (const change of call as AsyncIterable<WatchSecretsResponse>) {
        delay = backoffInitialMs;
        const sequence = BigInt(change.sequence);
        if (change.change === SecretChange.SECRET_CHANGE_PROGRESS) {
          if (sequence > last) {
            last = sequence;
          }
          if (progress) {
            yield change;
          }
          continue;
        }
        if (sequence <= last) {
          continue; // never yield a change twice
        }
        last = sequence;
        yield change;
      }
    } catch (e) {
      const error = e as grpc.ServiceError;
      if (signal?.aborted && error.code === grpc.status.CANCELLED) {
        return;
      }
      if (error.code !== grpc.status.UNAVAILABLE) {
        throw new PalyraError(error);
      }
    } finally {
      signal?.removeEventListener("abort", abort);
      call.cancel(); // a consumer that stopped early ends the call
    }
    await sleep(delay * (0.75 + Math.random() / 4), signal);
    delay = Math.min(backoffMaxMs, delay * 2);
  }
}
