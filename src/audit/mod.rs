//! The audit log: every authorization decision, hash-chained, recorded without making the
//! request wait.
//!
//! - [`chain`]: records, the HMAC chain, the [`Verifier`], the sealed [`AuditHead`] (pure).
//! - [`checkpoint`]: [`Checkpoint`], the head signed with the node's identity key: written
//!   when records are pruned, when a verification ends, and when a witness asks (pure).
//! - [`anonymous`]: [`AnonymousLimiter`] bounds how many records anonymous callers can add
//!   per address (pure).
//! - [`Audit`] (`service.rs`): the application service. A writer thread batches records into
//!   the store's own writer connection, keeps the chain head and its seal, refuses while it
//!   cannot record (and says so in its health), lists and verifies.
//! - [`export`]: the JSON line of a record and the [`Follower`] that pages through the table
//!   and then follows new commits (ExportAuditLog, sinks).
//! - [`sink`]: the file sink, delivering every committed record from a durable cursor;
//!   [`syslog`]: the same records as RFC 5424 messages to the local syslog socket.
//! - [`AuditStore`] (`store.rs`): what the service needs from the database; the SQLite layer
//!   implements it.
//!
//! What it does not do: decide (the gate asks the policy engine and records the outcome
//! here), SQL, transport.

mod anonymous;
mod chain;
pub mod export;
mod checkpoint;
mod service;
pub mod sink;
pub mod syslog;
mod store;

#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use anonymous::{Admission, AnonymousLimiter, AnonymousRate, DroppedSummary, address_bucket};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use chain::{
    ACTION_ANONYMOUS_DROPPED, ACTION_HEAD_SEALED, ACTION_PRUNED, AuditDecision, AuditEntry, AuditHead, AuditRecord, GENESIS,
    HeadMismatch, NODE_PRINCIPAL, Verification, Verifier, chain_hash, check_head,
};
pub use export::{ExportError, Follower};
pub use sink::{FileSinkConfig, SinkConfig, SinkCursorStore, SinkHandle};
pub use syslog::SyslogSinkConfig;
// The sink's monitor: what the metrics (lag) and the retention pruner (delivered_through) read.
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use sink::{SinkMonitor, SinkStatus};
pub use checkpoint::{Checkpoint, CheckpointKind, CheckpointSigner};
#[cfg_attr(not(feature = "testkit"), allow(unused_imports))]
pub use service::PRUNE_CHUNK;
pub use service::{Audit, AuditSlot, AuditUnavailable, PruneError, PruneReport, Retention};
#[cfg(test)]
pub(crate) use store::MemoryAuditStore;
pub(crate) use store::{
    AppendCheck, AuditStore, AuditWriter, BatchAppender, ChainScan, ChainedBatch, PruneBounds, PruneSeal, ScanStart,
    ScannedRow, StoredCheckpoint, StoredHead,
};
