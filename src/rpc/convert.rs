//! Proto ↔ domain conversions. Parsing of untrusted request fields happens here, so handlers
//! only ever see domain types; every failure is `INVALID_ARGUMENT` naming the field.

use std::time::{SystemTime, UNIX_EPOCH};

use tonic::Status;

use super::pb::vault::v1 as pbv;
use super::status::invalid_argument;
use crate::identity::DeviceId;
use crate::vault::{Scope, SecretKey, SecretMetadata, SecretVersion};

/// A timestamp on the wire.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// Parses the `scope` field.
pub fn scope(field: &str, text: &str) -> Result<Scope, Status> {
    Scope::parse(text).map_err(|e| invalid_argument(field, e))
}

/// Parses the `key` field.
pub fn secret_key(field: &str, text: &str) -> Result<SecretKey, Status> {
    SecretKey::parse(text).map_err(|e| invalid_argument(field, e))
}

/// Parses a device id field.
pub fn device_id(field: &str, text: &str) -> Result<DeviceId, Status> {
    DeviceId::parse(text).map_err(|e| invalid_argument(field, e))
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

/// The opaque page token of a listing position: hex of `scope \n key`.
pub fn page_token(position: &(Scope, SecretKey)) -> String {
    hex::encode(format!("{}\n{}", position.0, position.1))
}

/// Parses a page token; empty means "from the start".
pub fn parse_page_token(token: &str) -> Result<Option<(Scope, SecretKey)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || invalid_argument("page_token", "not a token returned by ListSecrets");
    if token.len() > 2 * 1024 {
        return Err(bad());
    }
    let bytes = hex::decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (scope, key) = text.split_once('\n').ok_or_else(bad)?;
    Ok(Some((Scope::parse(scope).map_err(|_| bad())?, SecretKey::parse(key).map_err(|_| bad())?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let pos = (Scope::parse("a/b").expect("scope"), SecretKey::parse("K").expect("key"));
        assert_eq!(parse_page_token(&page_token(&pos)).ok().flatten(), Some(pos));
        for bad in ["zz", "00", &hex::encode("a/b"), &hex::encode("A\nk"), &"0".repeat(5000)] {
            assert!(parse_page_token(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_page_token("").ok(), Some(None));
    }
}
