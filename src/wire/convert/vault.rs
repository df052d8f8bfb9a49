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
            scope: m.scope.to_string(),
            key: m.key.to_string(),
            object_id: m.object_id.to_string(),
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
                scope: c.scope.as_str().to_owned(),
                key: c.key.as_str().to_owned(),
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

/// The opaque page token of a listing position, bound to the listing: hex of
/// `scope \n recursive \n include_deleted \n position scope \n position key`.
pub fn page_token(listing: &Listing<'_>, position: &(Scope, SecretKey)) -> String {
    hex::encode(format!("{}\n{}\n{}", listing.binding(), position.0, position.1))
}

/// Parses a page token for `listing`; empty means "from the start". A token of another
/// listing is refused.
pub fn parse_page_token(listing: &Listing<'_>, token: &str) -> Result<Option<(Scope, SecretKey)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid_argument("page_token", "not a token returned by this ListSecrets request");
    if token.len() > 4 * 1024 {
        return Err(bad());
    }
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.rsplitn(3, '\n');
    let (Some(key), Some(scope), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if rest != listing.binding() {
        return Err(bad());
    }
    Ok(Some((Scope::parse(scope).map_err(|_| bad())?, SecretKey::parse(key).map_err(|_| bad())?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_are_bound_and_reject_garbage() {
        let scope = Scope::parse("a").expect("scope");
        let listing = Listing { scope: Some(&scope), recursive: true, include_deleted: false };
        let pos = (Scope::parse("a/b").expect("scope"), SecretKey::parse("K").expect("key"));
        let token = page_token(&listing, &pos);
        assert_eq!(parse_page_token(&listing, &token).ok().flatten(), Some(pos));
        let flat = Listing { recursive: false, ..listing.clone() };
        assert!(parse_page_token(&flat, &token).is_err(), "a token of another listing");
        let other = Scope::parse("b").expect("scope");
        assert!(parse_page_token(&Listing { scope: Some(&other), ..listing.clone() }, &token).is_err());
        for bad in ["zz", "00", &hex::encode("a/b"), &hex::encode("a\n1\n0\nA\nk"), &"0".repeat(9000)] {
            assert!(parse_page_token(&listing, bad).is_err(), "{bad}");
        }
        assert_eq!(parse_page_token(&listing, "").ok(), Some(None));
    }
}
