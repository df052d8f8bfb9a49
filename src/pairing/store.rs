//! What the pairing flow needs kept: codes, sealed handshake sessions and requests.
//!
//! [`PairingStore`] is the narrow store [`super::Pairing`] holds; the node's SQLite store
//! implements it. The rules (attempts, expiry, single use) are the domain's
//! ([`PairingCode::take_attempt`] and friends); an implementation runs them inside one write
//! transaction, so concurrent starts cannot spend the same attempt twice and concurrent
//! finishes cannot take the same session twice. It never sees a PIN or a session's state in
//! the clear (both arrive sealed).

use std::time::SystemTime;

use super::{CodeId, EnrollmentKey, PairingCode, PairingError, PairingRequest, RequestState};
use crate::identity::{Device, IdentityError};
use crate::store_error::{BoxFuture, StoreError};

/// A pairing rule's outcome inside a store result: the outer error is the database's, the
/// inner one the rule that refused (whose state change, if any, is committed).
pub(crate) type Outcome<T> = Result<T, PairingError>;

/// Where pairing codes, handshake sessions and requests are kept.
pub(crate) trait PairingStore: Send + Sync + std::fmt::Debug {
    /// Stores a new code.
    fn insert_code(&self, code: &PairingCode) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The code `code_id`, if any.
    fn code(&self, code_id: &CodeId) -> BoxFuture<'_, Result<Option<PairingCode>, StoreError>>;

    /// Spends one attempt of `code_id` for a StartPairing at `now` and returns the code (with
    /// its sealed PIN), or why it cannot be used. An expiry or burn found here is recorded.
    fn take_attempt(
        &self,
        code_id: &CodeId,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<PairingCode>, StoreError>>;

    /// After a failed FinishPairing: burns `code_id` if it has no attempts left. Returns
    /// whether it is burned, and its attempts left.
    fn attempt_failed(&self, code_id: &CodeId) -> BoxFuture<'_, Result<(bool, u32), StoreError>>;

    /// After a successful FinishPairing: consumes the code and stores the PENDING request (and
    /// its event), in one transaction. Refused if the code is no longer active.
    fn finish(&self, request: &PairingRequest) -> BoxFuture<'_, Result<Outcome<()>, StoreError>>;

    /// Stores a handshake session (its state sealed by the caller) until `expires_at`, and
    /// prunes sessions expired at `now`.
    fn insert_session(
        &self,
        session_id: &str,
        sealed_state: Vec<u8>,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Takes session `session_id` out: deletes it and returns its sealed state if it was there
    /// and unexpired at `now`. Of concurrent takes at most one gets it.
    fn take_session(
        &self,
        session_id: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>>;

    /// The pairing request `id`, if any.
    fn request(&self, id: &str) -> BoxFuture<'_, Result<Option<PairingRequest>, StoreError>>;

    /// Pairing requests, newest first, optionally only those in `state` at `now`.
    fn requests(
        &self,
        state: Option<RequestState>,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<PairingRequest>, StoreError>>;

    /// Records what time has decided: codes past their expiry lose their PIN, enrollment keys
    /// past theirs their secret, handshake sessions past theirs are deleted, pending requests
    /// past theirs become EXPIRED.
    fn expire(&self, now: SystemTime) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Approves pending request `id`: registers `device` (ACTIVE, its role and scopes as
    /// approved) and records the device id, role, scopes and issued certificate on the
    /// request (and its event), in one transaction.
    fn approve(
        &self,
        id: &str,
        device: &Device,
        certificate_pem: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<PairingRequest>, IdentityError>>;

    /// Stores a new enrollment key.
    fn insert_enrollment_key(&self, key: &EnrollmentKey) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The enrollment key `key_id`, if any.
    fn enrollment_key(&self, key_id: &CodeId) -> BoxFuture<'_, Result<Option<EnrollmentKey>, StoreError>>;

    /// Enrollment keys, newest first (at most 1,000): only those that can still pair at `now`
    /// when `active_only` (so a flood of spent keys never hides a live one).
    fn enrollment_keys(
        &self,
        active_only: bool,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Vec<EnrollmentKey>, StoreError>>;

    /// Revokes enrollment key `key_id` at `now` (its sealed secret erased); a revoked key stays
    /// as it was. Returns the key after the change.
    fn revoke_enrollment_key(
        &self,
        key_id: &CodeId,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<EnrollmentKey>, StoreError>>;

    /// Takes one use of enrollment key `key_id` and registers its device, in one transaction:
    /// only if the key still has `seen_uses` uses (else `Ok(Ok(false))`: another use came
    /// first; read it again) and is usable at `now` (else why not). Stores `resealed` as its
    /// secret (`None` when this was the last use), `device`, and `request` (already approved,
    /// with the issued certificate), with the request's `pairing.approved` event.
    fn enroll(
        &self,
        key_id: &CodeId,
        seen_uses: u32,
        resealed: Option<Vec<u8>>,
        request: &PairingRequest,
        device: &Device,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<bool>, IdentityError>>;

    /// Rejects pending request `id` with `reason` (and records its event).
    fn reject(
        &self,
        id: &str,
        reason: &str,
        now: SystemTime,
    ) -> BoxFuture<'_, Result<Outcome<PairingRequest>, StoreError>>;
}
