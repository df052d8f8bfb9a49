// One error type for every failed call: the gRPC code plus Palyra's machine-readable reason
// (`palyra.common.v1.ErrorReason`), read from the `google.rpc.ErrorInfo` that the node puts in
// the `grpc-status-details-bin` trailer.

import * as grpc from "@grpc/grpc-js";

import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import { ErrorReason, errorReasonFromJSON } from "./gen/palyra/common/v1/errors";

/** The `ErrorInfo.domain` of Palyra's reasons. */
export const ERROR_DOMAIN = "palyra.dev";

const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

/**
 * A failed call: `code` is the gRPC status code, `reason` the Palyra reason's name as sent
 * (`"ERROR_REASON_VERSION_CONFLICT"`; `""` when the status carried none, e.g. a transport
 * failure), as in the Python client; `reasonCode` the same as an `ErrorReason` number
 * (`ERROR_REASON_UNSPECIFIED` when none, `UNRECOGNIZED` for a reason newer than this client).
 */
export class PalyraError extends Error {
  readonly code: grpc.status;
  readonly details: string;
  readonly reason: string;
  readonly reasonCode: ErrorReason;
  /** The same as `reason` (kept for code written before `reason` was the name). */
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
    this.reason = reasonName;
    this.reasonName = reasonName;
    this.reasonCode = reasonCode(reasonName);
    this.domain = info?.domain ?? "";
    this.metadata = info?.metadata ?? {};
    this.cause = error;
  }
}

/** The number of a reason name: unspecified for none, `UNRECOGNIZED` for one newer than this client. */
function reasonCode(name: string): ErrorReason {
  return name ? errorReasonFromJSON(name) : ErrorReason.ERROR_REASON_UNSPECIFIED;
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
