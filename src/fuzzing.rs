//! Entry points for the fuzz targets in `fuzz/` into code that is otherwise private to the
//! crate. Not an API: hidden from the docs, and it may change with any commit.

use zeroize::Zeroizing;

use crate::pairing::{NodeSession, PairingError};
use crate::policy::{AuthzDecision, PolicyEngine, Resource, Subject};

/// The plaintext decoder of a stored pairing session (what `open_session` runs after the
/// AEAD opened): the fuzzers reach it without having to forge a seal.
pub fn pairing_session_decode(bytes: &[u8]) -> Result<(NodeSession, String), PairingError> {
    crate::pairing::session::decode(bytes)
}

/// The matching encoder, for round-trip checks.
pub fn pairing_session_encode(
    session: &NodeSession,
    peer_address: &str,
) -> Result<Zeroizing<Vec<u8>>, PairingError> {
    crate::pairing::session::encode(session, peer_address)
}

/// A policy set compiled whole, without the engine's slicing.
pub struct UnslicedPolicies(crate::policy::Unsliced);

impl std::fmt::Debug for UnslicedPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnslicedPolicies")
    }
}

/// The policy set in force in `engine`, compiled whole: the reference its sliced decisions
/// must agree with.
pub fn policy_unsliced(engine: &PolicyEngine) -> Option<UnslicedPolicies> {
    engine.unsliced().map(UnslicedPolicies)
}

/// A decision by `set` evaluated whole, as `PolicyEngine::authorize_subject` would make it.
pub fn policy_decide_unsliced(
    engine: &PolicyEngine,
    set: &UnslicedPolicies,
    subject: &Subject<'_>,
    action: &str,
    resource: &Resource,
    context: Option<&serde_json::Value>,
) -> AuthzDecision {
    engine.decide_unsliced(&set.0, subject, action, resource, context)
}
