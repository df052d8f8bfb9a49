//! `palyra audit verify --peer HOST:PORT`: witness another node's audit log, like Certificate
//! Transparency gossip. Local verification cannot see a node whose whole database was rolled
//! back to an older, consistent copy; a witness that kept a signed checkpoint from before can.
//!
//! The peer's latest checkpoint comes over QUIC (`node.audit_checkpoint`) with this data dir's
//! device credentials (as `palyra node events --peer`). Its signing key is pinned the first
//! time (trust on first use), together with the peer's CA fingerprint, in
//! `<data dir>/witness/<CA fingerprint>.json` (0600, written atomically: the CLI may run while
//! `serve` holds the data dir). Each later run checks the signature under the pinned key, that
//! the peer's log did not go backwards, and that it still holds the same hash at every
//! checkpoint witnessed before (its record's, or the checkpoint it stored when it served it,
//! once pruned); then stores the new checkpoint. A peer whose log no longer extends what was
//! witnessed is exit 5. `palyra serve` with `[audit] witness = ["HOST:PORT", ...]` does the
//! same every 10 minutes and logs the outcome.

use std::path::{Path, PathBuf};

use ring::digest;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::output::{CliError, Context, Exit};
use crate::audit::{AuditHead, Checkpoint, CheckpointKind};
use crate::config::Layout;
use crate::wire::pb::audit::v1 as pb;

/// Witnessed checkpoints kept per peer (the newest); each is checked at every run.
const KEEP: usize = 16;
/// Largest witness file read.
const MAX_FILE: u64 = 256 * 1024;

/// What this data dir knows of one peer.
#[derive(Debug, Serialize, Deserialize)]
struct Witnessed {
    /// The address last used.
    peer: String,
    /// Hex SHA-256 of the peer's CA certificate (the file's name).
    ca_fingerprint: String,
    /// The peer's Ed25519 signing key, pinned the first time.
    public_key: String,
    /// The checkpoints seen, oldest first.
    checkpoints: Vec<Seen>,
}

/// One checkpoint as seen.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Seen {
    sequence: u64,
    head: String,
    at_unix_ms: i64,
    kind: String,
    signature: String,
}

impl Seen {
    fn of(c: &pb::AuditCheckpoint) -> Self {
        Seen {
            sequence: c.sequence,
            head: c.head.clone(),
            at_unix_ms: c.at_unix_ms,
            kind: c.kind.clone(),
            signature: c.signature.clone(),
        }
    }

    /// Whether it is signed by `public_key` (bounded parsing of every field).
    fn verifies(&self, public_key: &[u8; 32]) -> bool {
        let hash = hex::decode(&self.head).ok().and_then(|h| <[u8; 32]>::try_from(h).ok());
        let signature = hex::decode(&self.signature).ok().and_then(|s| <[u8; 64]>::try_from(s).ok());
        let kind = CheckpointKind::parse(&self.kind);
        match (hash, signature, kind) {
            (Some(hash), Some(signature), Some(kind)) => Checkpoint {
                head: AuditHead { sequence: self.sequence, hash },
                at_millis: self.at_unix_ms,
                kind,
                signature,
            }
            .verify(public_key),
            _ => false,
        }
    }
}

fn integrity(peer: &str, what: String) -> CliError {
    CliError::of(Exit::Integrity, format!("AUDIT LOG OF {peer} NO LONGER EXTENDS WHAT THIS NODE WITNESSED: {what}"))
        .hint("the peer's audit log was truncated, rewritten or rolled back to an older copy; keep its data dir for investigation")
}

fn witness_file(ctx: &Context, ca_fingerprint: &str) -> PathBuf {
    Layout::new(&ctx.data_dir).root().join("witness").join(format!("{ca_fingerprint}.json"))
}

fn read_witnessed(path: &Path) -> Result<Option<Witnessed>, CliError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CliError::new(format!("cannot read {}: {e}", path.display()))),
    };
    if meta.len() > MAX_FILE {
        return Err(CliError::new(format!("{} is larger than {MAX_FILE} bytes", path.display())));
    }
    let bytes = crate::fsutil::read_private(path).map_err(|e| CliError::new(e.to_string()))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CliError::new(format!("{} does not parse: {e}", path.display())))
}

/// `palyra audit verify --peer`.
pub(super) async fn verify_peer(
    ctx: &Context,
    peer: &str,
    credentials: Option<&Path>,
) -> Result<(), CliError> {
    let out = witness(ctx, peer, credentials).await?;
    ctx.print(&out, || {
        let pinned = if out.first_witness { " (signing key pinned now: first witness)" } else { "" };
        format!(
            "audit log of {} ok: it still extends the {} checkpoint(s) witnessed; now at record {}{pinned}",
            out.peer, out.checked, out.checkpoint.sequence
        )
    })
}

/// `[audit] witness` of `palyra serve`: witnesses each peer now and every `every` (with the
/// data dir's credentials), logging the outcome: an ERROR when a peer's log no longer extends
/// what was witnessed.
pub(super) fn spawn_witnesses(
    ctx: &Context,
    peers: Vec<String>,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            for peer in &peers {
                match witness(&ctx, peer, None).await {
                    Ok(out) => tracing::info!(
                        peer = %out.peer,
                        sequence = out.checkpoint.sequence,
                        checked = out.checked,
                        "witnessed the peer's audit log: it extends every checkpoint seen"
                    ),
                    Err(e) if e.exit_code() == Exit::Integrity.code() => {
                        tracing::error!(%peer, problem = %e, "WITNESSED AUDIT LOG BROKEN");
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "could not witness the peer's audit log; retrying later");
                    }
                }
            }
        }
    })
}

/// What one witnessing found.
#[derive(Debug, Serialize)]
struct WitnessOut {
    ok: bool,
    peer: String,
    ca_fingerprint: String,
    first_witness: bool,
    checked: usize,
    checkpoint: Seen,
}

/// Witnesses `peer` once: checks, then stores the new checkpoint.
async fn witness(ctx: &Context, peer: &str, credentials: Option<&Path>) -> Result<WitnessOut, CliError> {
    let (client, creds_dir) = super::node::connect_with_dir(ctx, peer, credentials).await?;
    let ca_pem = std::fs::read(creds_dir.join("ca.pem"))
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", creds_dir.join("ca.pem").display())))?;
    let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(&ca_pem)
        .map_err(|e| CliError::new(format!("ca.pem in {}: {e}", creds_dir.display())))?;
    let ca_fingerprint = hex::encode(digest::digest(&digest::SHA256, ca_der.as_ref()));
    let path = witness_file(ctx, &ca_fingerprint);
    let before = read_witnessed(&path)?;

    let quic = |e: crate::quic::ClientError| CliError::of(Exit::of_quic(&e), e.to_string());
    let latest = client.audit_checkpoint(None).await.map_err(quic)?;
    let checkpoint = latest.checkpoint.clone().ok_or_else(|| CliError::new("the peer sent no checkpoint"))?;
    let key_text = latest.public_key.clone();
    let public_key: [u8; 32] = hex::decode(&key_text)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| CliError::new("the peer sent a malformed signing key"))?;
    if let Some(before) = &before
        && before.public_key != key_text
    {
        client.close().await;
        return Err(integrity(
            peer,
            format!("its audit signing key changed (pinned {}, now {key_text})", before.public_key),
        ));
    }
    let seen = Seen::of(&checkpoint);
    if !seen.verifies(&public_key) {
        client.close().await;
        return Err(integrity(
            peer,
            format!("its checkpoint at {} does not verify under its key", seen.sequence),
        ));
    }
    let mut problems = Vec::new();
    let earlier: &[Seen] = before.as_ref().map_or(&[], |b| &b.checkpoints);
    for old in earlier {
        if seen.sequence < old.sequence {
            problems.push(format!(
                "its log went backwards: it ends at {} now, but this node witnessed it at {} ({})",
                seen.sequence, old.sequence, old.head
            ));
            break;
        }
        let answer = client.audit_checkpoint(Some(old.sequence)).await.map_err(quic)?;
        match answer.hash_at_sequence {
            Some(hash) if hash == old.head => {}
            Some(hash) => problems.push(format!(
                "record {} is not the one witnessed (hash {hash}, witnessed {}): rewritten or rolled back",
                old.sequence, old.head
            )),
            None => problems.push(format!(
                "it holds neither record {} nor a checkpoint of it (witnessed with hash {})",
                old.sequence, old.head
            )),
        }
    }
    client.close().await;
    if let Some(first) = problems.first() {
        return Err(integrity(peer, first.clone()));
    }

    let mut checkpoints = earlier.to_vec();
    if checkpoints.last() != Some(&seen) {
        checkpoints.push(seen.clone());
    }
    let skip = checkpoints.len().saturating_sub(KEEP);
    let witnessed = Witnessed {
        peer: peer.to_owned(),
        ca_fingerprint: ca_fingerprint.clone(),
        public_key: key_text,
        checkpoints: checkpoints.split_off(skip),
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    crate::fsutil::ensure_private_dir(&dir).map_err(|e| CliError::new(e.to_string()))?;
    let bytes = serde_json::to_vec_pretty(&witnessed).map_err(|e| CliError::new(e.to_string()))?;
    crate::fsutil::write_private_atomic(&path, &bytes, true).map_err(|e| CliError::new(e.to_string()))?;

    Ok(WitnessOut {
        ok: true,
        peer: peer.to_owned(),
        ca_fingerprint,
        first_witness: before.is_none(),
        checked: earlier.len(),
        checkpoint: seen,
    })
}
