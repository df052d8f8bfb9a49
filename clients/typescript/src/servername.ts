// TLS server names for grpc-js. grpc-js sets the TLS ServerName (SNI) to the target's host,
// and Node deprecates an IP address there (DEP0123, a warning on every run). For an IP target
// the SNI becomes a DNS name every Palyra server certificate carries ("localhost"), while the
// certificate is still checked against the IP address itself. DNS targets are left alone.

import { isIP } from "node:net";
import { checkServerIdentity } from "node:tls";

import type * as grpc from "@grpc/grpc-js";

/** A DNS name in every Palyra server certificate (beside its addresses and extra names). */
const CERTIFICATE_DNS_NAME = "localhost";

/** The host of a grpc-js target: `HOST:PORT`, `[V6]:PORT`, or a bare host. */
export function hostOf(target: string): string {
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(target);
  if (bracketed) {
    return bracketed[1];
  }
  const colon = target.lastIndexOf(":");
  return colon > 0 && target.indexOf(":") === colon ? target.slice(0, colon) : target;
}

/** Channel options and certificate checks for `target`: see the file's comment. */
export function tlsFor(target: string): { options: grpc.ChannelOptions; verify: grpc.VerifyOptions } {
  const host = hostOf(target);
  if (!isIP(host)) {
    return { options: {}, verify: {} };
  }
  return {
    options: { "grpc.ssl_target_name_override": CERTIFICATE_DNS_NAME },
    verify: { checkServerIdentity: (_sni, cert) => checkServerIdentity(host, cert) },
  };
}
