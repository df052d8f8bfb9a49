//! A device's long-term keys: an Ed25519 signing key (its identity: the fingerprint is the
//! SHA-256 of its public half) and an X25519 agreement key.
//!
//! The node has one ([`super::node::NodeIdentity`]), and so does every joining device. This
//! module generates, serializes and uses the keys; it does not store them (the serialized form
//! is sealed by a [`super::sealed::SecretStore`]) and it does not issue TLS certificates (TLS
//! keys are ECDSA P-256, see [`super::ca`]).

use std::fmt;

use ed25519_dalek::Signer;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::{DeviceId, IdentityError};

/// Version byte of [`DeviceIdentity::to_bytes`].
const FORMAT_V1: u8 = 1;
/// version ‖ ULID (16) ‖ Ed25519 secret (32) ‖ X25519 secret (32).
const ENCODED_LEN: usize = 1 + 16 + 32 + 32;

/// A device's id and private keys. Key material is zeroized on drop (both dalek types wipe
/// themselves); `Debug` shows only public parts.
pub struct DeviceIdentity {
    id: DeviceId,
    signing: ed25519_dalek::SigningKey,
    agreement: x25519_dalek::StaticSecret,
}

impl DeviceIdentity {
    /// A new identity with a fresh id and keys from the system CSPRNG.
    pub fn generate() -> Result<Self, IdentityError> {
        Self::generate_with_id(DeviceId::generate())
    }

    /// New keys for an id chosen elsewhere.
    pub fn generate_with_id(id: DeviceId) -> Result<Self, IdentityError> {
        let rng = SystemRandom::new();
        let mut signing = Zeroizing::new([0u8; 32]);
        let mut agreement = Zeroizing::new([0u8; 32]);
        rng.fill(signing.as_mut()).map_err(|_| IdentityError::Random)?;
        rng.fill(agreement.as_mut()).map_err(|_| IdentityError::Random)?;
        Ok(Self::from_secrets(id, &signing, &agreement))
    }

    fn from_secrets(id: DeviceId, signing: &[u8; 32], agreement: &[u8; 32]) -> Self {
        DeviceIdentity {
            id,
            signing: ed25519_dalek::SigningKey::from_bytes(signing),
            agreement: x25519_dalek::StaticSecret::from(*agreement),
        }
    }

    /// The device's id.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The Ed25519 public key.
    pub fn signing_public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 public key.
    pub fn agreement_public_key(&self) -> [u8; 32] {
        x25519_dalek::PublicKey::from(&self.agreement).to_bytes()
    }

    /// Lowercase hex SHA-256 of the Ed25519 public key.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(&self.signing_public_key())
    }

    /// An Ed25519 signature over `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// X25519 with a peer's public key. `None` when the result is all zeros (a low-order peer
    /// key), which a protocol must refuse rather than use as a secret.
    pub fn agree(&self, their_public_key: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.agreement.diffie_hellman(&x25519_dalek::PublicKey::from(*their_public_key));
        shared.was_contributory().then(|| Zeroizing::new(shared.to_bytes()))
    }

    /// The serialized form, for sealing: a version byte, the id, both secret keys.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(ENCODED_LEN));
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.id.0.to_bytes());
        out.extend_from_slice(self.signing.as_bytes());
        out.extend_from_slice(self.agreement.as_bytes());
        out
    }

    /// Parses [`Self::to_bytes`]. Bounded and panic-free on any input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let malformed = |detail: String| IdentityError::Malformed { what: "device identity", detail };
        if bytes.len() != ENCODED_LEN {
            return Err(malformed(format!("{} bytes, expected {ENCODED_LEN}", bytes.len())));
        }
        let (version, rest) = bytes.split_at(1);
        if version != [FORMAT_V1] {
            return Err(malformed(format!("unknown format version {}", version[0])));
        }
        let (id, rest) = rest.split_at(16);
        let (signing, agreement) = rest.split_at(32);
        let id: [u8; 16] = id.try_into().map_err(|_| malformed("bad id".into()))?;
        let signing = Zeroizing::new(<[u8; 32]>::try_from(signing).map_err(|_| malformed("bad key".into()))?);
        let agreement =
            Zeroizing::new(<[u8; 32]>::try_from(agreement).map_err(|_| malformed("bad key".into()))?);
        Ok(Self::from_secrets(DeviceId(ulid::Ulid::from_bytes(id)), &signing, &agreement))
    }
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("id", &self.id)
            .field("fingerprint", &self.fingerprint())
            .field("secret_keys", &"[redacted]")
            .finish()
    }
}

/// Lowercase hex SHA-256 of an Ed25519 public key: how devices are named to humans.
pub fn fingerprint_of(public_key: &[u8; 32]) -> String {
    hex::encode(digest::digest(&digest::SHA256, public_key))
}

/// Strict Ed25519 verification (no small-order keys or `R`, canonical `S`): `true` only for a
/// valid 64-byte signature by `public_key` over `message`.
pub fn verify_signature(public_key: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn signs_verifies_and_round_trips() -> Result<(), IdentityError> {
        let identity = DeviceIdentity::generate()?;
        let signature = identity.sign(b"hello");
        let public = identity.signing_public_key();
        assert!(verify_signature(&public, b"hello", &signature));
        assert!(!verify_signature(&public, b"hellO", &signature));
        assert!(!verify_signature(&public, b"hello", &signature[..63]));
        let mut bad = signature;
        bad[0] ^= 1;
        assert!(!verify_signature(&public, b"hello", &bad));

        let fingerprint = identity.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert_eq!(fingerprint, fingerprint.to_lowercase());
        assert_eq!(fingerprint, fingerprint_of(&public));

        let again = DeviceIdentity::from_bytes(&identity.to_bytes())?;
        assert_eq!(again.id(), identity.id());
        assert_eq!(again.signing_public_key(), public);
        assert_eq!(again.agreement_public_key(), identity.agreement_public_key());
        assert_ne!(identity.signing_public_key(), DeviceIdentity::generate()?.signing_public_key());
        Ok(())
    }

    #[test]
    fn agreement_is_symmetric_and_refuses_low_order_keys() -> Result<(), IdentityError> {
        let a = DeviceIdentity::generate()?;
        let b = DeviceIdentity::generate()?;
        let ab = a.agree(&b.agreement_public_key()).ok_or(IdentityError::Random)?;
        let ba = b.agree(&a.agreement_public_key()).ok_or(IdentityError::Random)?;
        assert_eq!(*ab, *ba);
        assert!(a.agree(&[0u8; 32]).is_none());
        Ok(())
    }

    #[test]
    fn debug_redacts_secrets() -> Result<(), IdentityError> {
        let identity = DeviceIdentity::generate()?;
        let shown = format!("{identity:?}");
        assert!(shown.contains("redacted"));
        let bytes = identity.to_bytes();
        assert!(!shown.contains(&hex::encode(&bytes[17..49])));
        Ok(())
    }

    #[test]
    fn from_bytes_refuses_wrong_length_and_version() -> Result<(), IdentityError> {
        let mut bytes = DeviceIdentity::generate()?.to_bytes();
        assert!(matches!(DeviceIdentity::from_bytes(&bytes[..80]), Err(IdentityError::Malformed { .. })));
        bytes[0] = 2;
        let err = DeviceIdentity::from_bytes(&bytes).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("unknown format version 2"), "{err}");
        Ok(())
    }

    proptest! {
        #[test]
        fn from_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = DeviceIdentity::from_bytes(&bytes);
        }
    }
}
