//! Resolving `palyra://SCOPE/KEY[?version=N]` references to values with this data dir's
//! credentials: what `palyra run` and `palyra inject` share. Every reference is read before the
//! caller uses any, so one failure means nothing is used. Values stay in zeroizing buffers and
//! never reach an error or a log.

use std::collections::BTreeMap;

use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::output::CliError;
use crate::vault::reference::Reference;
use crate::wire::pb::vault::v1::{self as pb, vault_service_client::VaultServiceClient};

/// One secret as read.
pub(super) struct Resolved {
    /// The version read.
    pub version: u64,
    /// The value.
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resolved(version {}, value redacted)", self.version)
    }
}

/// Reads every distinct reference of `refs`, one after the other. The first failure is
/// returned with the reference it belongs to; the values read so far are wiped.
pub(super) async fn resolve<'a>(
    channel: Channel,
    refs: impl IntoIterator<Item = &'a Reference>,
) -> Result<BTreeMap<Reference, Resolved>, (Reference, CliError)> {
    let mut client = VaultServiceClient::new(channel);
    let mut resolved = BTreeMap::new();
    for reference in refs {
        if resolved.contains_key(reference) {
            continue;
        }
        let request = pb::GetSecretRequest {
            scope: reference.scope().to_string(),
            key: reference.key().to_string(),
            version: reference.version().unwrap_or(0),
        };
        match client.get_secret(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let value = Zeroizing::new(response.value);
                resolved.insert(reference.clone(), Resolved { version: response.version, value });
            }
            Err(status) => return Err((reference.clone(), CliError::from(status))),
        }
    }
    Ok(resolved)
}

/// The versions in `resolved`, to tell whether a re-resolution changed anything.
pub(super) fn versions(resolved: &BTreeMap<Reference, Resolved>) -> BTreeMap<Reference, u64> {
    resolved.iter().map(|(r, v)| (r.clone(), v.version)).collect()
}
