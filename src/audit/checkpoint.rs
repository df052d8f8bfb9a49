//! Signed checkpoints: an [`AuditHead`] (a sequence and its chain hash), a time and a kind,
//! signed with the node's Ed25519 identity key.
//!
//! The sealed head and a checkpoint are one design: both state "the log is at `sequence` with
//! `hash`" through [`AuditHead::message`]. The sealed head is MAC'd (a key only this node
//! holds, advanced by every append); a checkpoint is signed, so it stays checkable by anyone
//! who knows the node's public key — a witness — and it is kept for good:
//!
//! - [`CheckpointKind::Prune`]: written in the transaction that removes records up to and
//!   including its sequence. The first kept record's previous hash is its hash, so the kept
//!   suffix verifies from it.
//! - [`CheckpointKind::Verified`]: where the last successful verification ended; the next
//!   one starts there (incremental verification).
//! - [`CheckpointKind::Served`]: handed to a witness (`node.audit_checkpoint`,
//!   `GetAuditCheckpoint`); kept so the node can still answer for it after pruning.
//!
//! Pure: no IO, no clock, no SQL.

use super::chain::AuditHead;

/// Why a checkpoint was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointKind {
    /// Records up to its sequence were removed.
    Prune,
    /// A verification reached its sequence.
    Verified,
    /// It was handed to a witness.
    Served,
}

impl CheckpointKind {
    /// The stored (and signed) name.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Prune => "prune",
            CheckpointKind::Verified => "verified",
            CheckpointKind::Served => "served",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "prune" => Some(CheckpointKind::Prune),
            "verified" => Some(CheckpointKind::Verified),
            "served" => Some(CheckpointKind::Served),
            _ => None,
        }
    }
}

/// A signed statement "the log was at `head` at `at_millis`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Where the log was.
    pub head: AuditHead,
    /// When (unix milliseconds).
    pub at_millis: i64,
    /// Why it was written.
    pub kind: CheckpointKind,
    /// Ed25519 over [`Checkpoint::message`], by the node's identity key.
    pub signature: [u8; 64],
}

/// The domain tag of a checkpoint's signed message.
const TAG: &[u8] = b"palyra.audit.checkpoint.v1";

impl Checkpoint {
    /// The bytes signed: a tag, [`AuditHead::message`], the time (8 bytes big-endian) and the
    /// kind's name (1 length byte, then its ASCII bytes).
    pub fn message(head: &AuditHead, at_millis: i64, kind: CheckpointKind) -> Vec<u8> {
        let kind = kind.as_str().as_bytes();
        let mut out = Vec::with_capacity(TAG.len() + 60 + 8 + 1 + kind.len());
        out.extend_from_slice(TAG);
        out.extend_from_slice(&head.message());
        out.extend_from_slice(&at_millis.to_be_bytes());
        out.push(kind.len() as u8);
        out.extend_from_slice(kind);
        out
    }

    /// A checkpoint of `head`, signed by `sign`.
    pub fn sign(head: AuditHead, at_millis: i64, kind: CheckpointKind, sign: &CheckpointSigner) -> Self {
        let signature = (sign.sign)(&Self::message(&head, at_millis, kind));
        Checkpoint { head, at_millis, kind, signature }
    }

    /// Whether the signature is valid under `public_key` (strict Ed25519).
    pub fn verify(&self, public_key: &[u8; 32]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&Self::message(&self.head, self.at_millis, self.kind), &signature).is_ok()
    }
}

/// Signs a message with the node's identity key.
pub type SignFn = dyn Fn(&[u8]) -> [u8; 64] + Send + Sync;

/// The node's signing key as the audit log uses it: its public half and a signing function
/// (the key itself stays in the identity).
#[derive(Clone)]
pub struct CheckpointSigner {
    /// The Ed25519 public key checkpoints verify under.
    pub public_key: [u8; 32],
    /// Signs a message.
    pub sign: std::sync::Arc<SignFn>,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSigner").field("public_key", &hex::encode(self.public_key)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Signer;

    fn signer(seed: u8) -> CheckpointSigner {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        CheckpointSigner {
            public_key: key.verifying_key().to_bytes(),
            sign: std::sync::Arc::new(move |m| key.sign(m).to_bytes()),
        }
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed() {
        let s = signer(1);
        let head = AuditHead { sequence: 42, hash: [9; 32] };
        let c = Checkpoint::sign(head, 1_000, CheckpointKind::Prune, &s);
        assert!(c.verify(&s.public_key));
        assert!(!c.verify(&signer(2).public_key));
        for edited in [
            Checkpoint { head: AuditHead { sequence: 43, ..head }, ..c.clone() },
            Checkpoint { head: AuditHead { hash: [8; 32], ..head }, ..c.clone() },
            Checkpoint { at_millis: 1_001, ..c.clone() },
            Checkpoint { kind: CheckpointKind::Verified, ..c.clone() },
        ] {
            assert!(!edited.verify(&s.public_key), "{edited:?}");
        }
    }
}
