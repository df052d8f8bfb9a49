//! Who is on the other end of a gRPC connection: the typed [`Peer`] from [`crate::access`],
//! resolved once per request from the client certificate rustls verified and the registry.
//!
//! Unknown → `UNAUTHENTICATED` + `UNKNOWN_DEVICE`; revoked → `UNAUTHENTICATED` +
//! `DEVICE_REVOKED`; no certificate → [`crate::identity::Principal::Anonymous`].

use tonic::{Code, Status};

use crate::access::Refusal;
pub use crate::access::{Peer, PeerResolver};

use super::pb::common::v1::ErrorReason;
use super::status::{internal, status};

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::UnknownDevice(message) => {
                status(Code::Unauthenticated, ErrorReason::UnknownDevice, message)
            }
            e @ Refusal::Revoked(_) => {
                status(Code::Unauthenticated, ErrorReason::DeviceRevoked, e.to_string())
            }
            Refusal::Internal(detail) => internal(detail),
        }
    }
}
