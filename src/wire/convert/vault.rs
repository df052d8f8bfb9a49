//! `palyra.vault.v1`: scopes and keys, page tokens bound to their listing, secret metadata and
//! versions, GetSecret's value and key rotation.

use tonic::Status;

use super::timestamp;
use crate::vault::{
    ChangeKind, Rotation, Scope, SecretKey, SecretMetadata, SecretValue, SecretVersion, Watched,
};
use crate::wire::pb::vault::v1 as pbv;
use crate::wire::status::invalid_argument;

/// Parses the `scope` field.
pub fn scope(field: &str, text: &str) -> Result<Scope, Status> {
    Scope::parse(text).map_err(|e| invalid_argument(field, e))
}

/// Parses the `key` field.
pub fn secret_key(field: &str, text: &str) -> Result<SecretKey, Status> {
    SecretKey::parse(text).map_err(|e| invalid_argument(field, e))
}

impl From<SecretMetadata> for pbv::SecretMetadata {
    fn from(m: SecretMetadata) -> Self {
        pbv::SecretMetadata {
            scope: m.scope.into(),
            key: m.key.into(),
            object_id: m.object_id.into(),
            version: m.version,
            created_at: Some(timestamp(m.created_at)),
            updated_at: Some(timestamp(m.updated_at)),
            deleted: m.deleted,
            size: m.size,
        }
    }
}

impl From<SecretVersion> for pbv::SecretVersion {
    fn from(v: SecretVersion) -> Self {
        pbv::SecretVersion {
            version: v.version,
            created_at: Some(timestamp(v.created_at)),
            size: v.size,
            destroyed: v.destroyed,
        }
    }
}

/// GetSecret's `version`: 0 asks for the latest.
pub(crate) fn requested_version(version: u64) -> Option<u64> {
    Some(version).filter(|&v| v != 0)
}

/// GetSecret's reply: the value read, its secret's metadata, and the version served (the one
/// asked for, else the latest).
pub(crate) fn secret_reply(
    value: SecretValue,
    metadata: SecretMetadata,
    requested: Option<u64>,
) -> pbv::GetSecretResponse {
    let served = requested.unwrap_or(metadata.version);
    pbv::GetSecretResponse {
        // Moved, not copied. The vault's buffer was zeroizing; this one belongs to prost
        // and is freed without being wiped once encoded: a limit of the generated types.
        value: std::mem::take(&mut *value.into_inner()),
        metadata: Some(metadata.into()),
        version: served,
    }
}

impl From<Rotation> for pbv::RotateKeyResponse {
    fn from(r: Rotation) -> Self {
        pbv::RotateKeyResponse { generation: r.generation, rewrapped: r.rewrapped }
    }
}

/// One message of WatchSecrets: a change, or a progress marker (empty scope and key).
impl From<Watched> for pbv::WatchSecretsResponse {
    fn from(watched: Watched) -> Self {
        match watched {
            Watched::Change(c) => pbv::WatchSecretsResponse {
                scope: c.scope.into(),
                key: c.key.into(),
                version: c.version,
                change: match c.kind {
                    ChangeKind::Put => pbv::SecretChange::Put,
                    ChangeKind::Delete => pbv::SecretChange::Delete,
                    ChangeKind::Destroy => pbv::SecretChange::Destroy,
                }
                .into(),
                sequence: c.sequence,
                changed_at: Some(timestamp(c.at)),
            },
            Watched::Progress(sequence) => pbv::WatchSecretsResponse {
                change: pbv::SecretChange::Progress.into(),
                sequence,
                ..Default::default()
            },
        }
    }
}

/// What a page token is bound to: the listing it continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing<'a> {
    /// The scope listed; `None`: every scope.
    pub scope: Option<&'a Scope>,
    /// With sub-scopes.
    pub recursive: bool,
    /// With deleted secrets.
    pub include_deleted: bool,
}

impl Listing<'_> {
    fn binding(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.scope.map_or("", |s| s.as_str()),
            u8::from(self.recursive),
            u8::from(self.include_deleted)
        )
    }
}

/// Seals and opens ListSecrets page tokens. A token carries the position to resume after,
/// which may be a row the caller was not shown (a listing skips what it may not see), so the
/// position is encrypted (ChaCha20-Poly1305 under a key made at start, never stored) and bound
/// to the listing and the caller: a token cannot be read, forged, moved to another listing or
/// used by another principal. Tokens end with the process: a restarted node asks to list again.
pub struct PageTokens {
    key: ring::aead::LessSafeKey,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(..)")
    }
}

impl PageTokens {
    /// Tokens under a fresh random key.
    pub fn new() -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(key.as_mut())?;
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, key.as_ref())?;
        Ok(PageTokens { key: ring::aead::LessSafeKey::new(key), rng })
    }

    fn aad(listing: &Listing<'_>, principal: &str) -> String {
        format!("palyra.page-token.v1\n{principal}\n{}", listing.binding())
    }

    /// The token of `position` in `listing` for `principal`: base64url of nonce ‖ sealed
    /// `scope \n key`.
    pub fn seal(
        &self,
        listing: &Listing<'_>,
        principal: &str,
        position: &(Scope, SecretKey),
    ) -> Result<String, Status> {
        use base64::Engine as _;
        use ring::rand::SecureRandom;
        let failed = |_| crate::wire::status::internal("cannot seal a page token");
        let mut nonce = [0u8; ring::aead::NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(failed)?;
        let mut sealed = format!("{}\n{}", position.0, position.1).into_bytes();
        let aad = Self::aad(listing, principal);
        self.key
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad.as_bytes()),
                &mut sealed,
            )
            .map_err(failed)?;
        let mut token = nonce.to_vec();
        token.extend_from_slice(&sealed);
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token))
    }

    /// Opens a token for `listing` and `principal`; empty means "from the start". Anything
    /// else but a token this node sealed for the same listing and caller is refused.
    pub fn open(
        &self,
        listing: &Listing<'_>,
        principal: &str,
        token: &str,
    ) -> Result<Option<(Scope, SecretKey)>, Status> {
        use base64::Engine as _;
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || {
            invalid_argument(
                "page_token",
                "not a token this node returned for this ListSecrets request and caller (tokens end when the node restarts: list again from the start)",
            )
        };
        if token.len() > 4 * 1024 {
            return Err(bad());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        if bytes.len() < ring::aead::NONCE_LEN {
            return Err(bad());
        }
        let (nonce, sealed) = bytes.split_at(ring::aead::NONCE_LEN);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad())?;
        let mut sealed = sealed.to_vec();
        let aad = Self::aad(listing, principal);
        let plain = self
            .key
            .open_in_place(nonce, ring::aead::Aad::from(aad.as_bytes()), &mut sealed)
            .map_err(|_| bad())?;
        let text = std::str::from_utf8(plain).map_err(|_| bad())?;
        let (scope, key) = text.rsplit_once('\n').ok_or_else(bad)?;
        Ok(Some((Scope::parse(scope).map_err(|_| bad())?, SecretKey::parse(key).map_err(|_| bad())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_are_sealed_bound_and_reject_garbage() {
        let tokens = PageTokens::new().expect("key");
        let scope = Scope::parse("a").expect("scope");
        let listing = Listing { scope: Some(&scope), recursive: true, include_deleted: false };
        let pos =
            (Scope::parse("a/hidden-team").expect("scope"), SecretKey::parse("STRIPE_KEY").expect("key"));
        let token = tokens.seal(&listing, "device:01", &pos).expect("seal");
        assert_eq!(tokens.open(&listing, "device:01", &token).ok().flatten(), Some(pos.clone()));
        // The position cannot be read from the token.
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).expect("base64");
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains("hidden-team") && !text.contains("STRIPE_KEY"), "{text}");
        assert!(!token.contains(&hex::encode("hidden-team")));
        // Bound to the listing, the caller and this node's key.
        let flat = Listing { recursive: false, ..listing.clone() };
        assert!(tokens.open(&flat, "device:01", &token).is_err(), "a token of another listing");
        let other = Scope::parse("b").expect("scope");
        assert!(
            tokens.open(&Listing { scope: Some(&other), ..listing.clone() }, "device:01", &token).is_err()
        );
        assert!(tokens.open(&listing, "device:02", &token).is_err(), "another caller's token");
        assert!(
            PageTokens::new().expect("key").open(&listing, "device:01", &token).is_err(),
            "after a restart"
        );
        // The old plaintext form, a flipped bit, garbage.
        let plaintext = hex::encode(format!("a\n1\n0\n{}\n{}", pos.0, pos.1));
        let mut flipped = raw.clone();
        flipped[20] ^= 1;
        let flipped = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(flipped);
        for bad in [plaintext.as_str(), flipped.as_str(), "zz", "AAAA", &"A".repeat(5000)] {
            assert!(tokens.open(&listing, "device:01", bad).is_err(), "{bad}");
        }
        assert_eq!(tokens.open(&listing, "device:01", "").ok().flatten(), None);
    }
}
