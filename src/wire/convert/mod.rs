//! Proto ↔ domain conversions, one file per service. Parsing of untrusted request fields happens
//! here, so handlers only ever see domain types; every failure is `INVALID_ARGUMENT` naming the
//! field. Replies are built here too (a `From` of the domain type, or a function when a reply
//! needs more than one value), so that an edge method reads: parse, call the service, convert,
//! with its errors mapped by [`super::status`].
//!
//! - `vault` — scopes, keys, page tokens, secret metadata and versions, GetSecret's value,
//!   key rotation;
//! - `auth` — profile names, OAuth2 configs, profiles, CreateProfile, authorization and tokens;
//! - `identity` — devices, the node's identity, WhoAmI, renewal proofs, challenges, certificates;
//! - `pairing` — the pairing messages, codes, enrollment keys, requests and their states;
//! - `policy` — Authorize's request and decision, policy sets, versions, diagnostics;
//! - `audit` — ListAuditRecords' query, records, verification;
//! - `console` — login links;
//! - `events` — the data plane's events (`palyra.node.v1.Event`).
//!
//! What it does not do: decide access, call a service, read a store or keep state.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

use super::status::invalid_argument;
use crate::identity::DeviceId;

mod audit;
mod auth;
mod console;
mod events;
mod identity;
mod pairing;
mod policy;
mod vault;

pub use audit::audit_record_from_pb;
pub(crate) use audit::{AuditQuery, prune_retention};
pub use auth::profile_name;
pub(crate) use console::login_link;
pub use events::{event_from_pb, event_to_pb};
pub(crate) use identity::renewed_certificate;
pub(crate) use pairing::{code_ttl, enrollment_key, pairing_request, pairing_state_filter};
pub(crate) use policy::{AuthorizePrincipal, AuthorizeQuery, check_policy_text, policy_validation};
pub use vault::{Listing, PageTokens, scope, secret_key};
pub(crate) use vault::{requested_version, secret_reply};

/// A timestamp on the wire.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A time from the wire; untrusted: out-of-range times become the epoch.
pub fn system_time(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| {
        let secs = std::time::Duration::from_secs(u64::try_from(t.seconds).ok()?);
        let nanos = std::time::Duration::from_nanos(u64::try_from(t.nanos).ok()?.min(999_999_999));
        UNIX_EPOCH.checked_add(secs)?.checked_add(nanos)
    })
    .unwrap_or(UNIX_EPOCH)
}

/// Parses a device id field.
pub fn device_id(field: &str, text: &str) -> Result<DeviceId, Status> {
    DeviceId::parse(text).map_err(|e| invalid_argument(field, e))
}
