//! Long-lived server streams (WatchSecrets, ExportAuditLog): [`StreamSlots`], how many of one
//! kind each principal, and the node, may hold open at once (a slot is taken before the stream
//! starts and given back when its task ends), and [`forward`], how a stream's task hands an
//! item to its reader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::access::{DenialKind, Denied};

/// Open streams of one kind, per principal and in total.
#[derive(Debug, Clone)]
pub(crate) struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// The method, for the refusal.
    method: &'static str,
    per_principal: usize,
    total: usize,
}

/// One open stream's slot.
#[derive(Debug)]
pub(crate) struct StreamSlot {
    slots: StreamSlots,
    principal: String,
}

impl StreamSlots {
    /// At most `per_principal` streams of `method` for one principal, `total` on the node.
    pub(crate) fn new(method: &'static str, per_principal: usize, total: usize) -> Self {
        StreamSlots { open: Arc::default(), method, per_principal, total }
    }

    /// A slot for `principal`, or `RateLimited` when it (or the node) holds the most.
    pub(crate) fn take(&self, principal: String) -> Result<StreamSlot, Denied> {
        // Counts only: a panic elsewhere cannot leave them inconsistent.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = open.values().sum();
        let mine = open.get(&principal).copied().unwrap_or(0);
        if mine >= self.per_principal || total >= self.total {
            let message = if mine >= self.per_principal {
                format!("{principal} already has {} open {} streams; close one", self.per_principal, self.method)
            } else {
                format!("the node already serves {} {} streams; retry later", self.total, self.method)
            };
            return Err(Denied { kind: DenialKind::RateLimited, message });
        }
        *open.entry(principal.clone()).or_default() += 1;
        Ok(StreamSlot { slots: self.clone(), principal })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// Hands `item` to the stream's reader. False when the stream's task should end: the reader is
/// gone, `item` was an error (its last message), or the server stops while the reader takes
/// nothing (a reader that never reads does not hold the server's drain).
pub(crate) async fn forward<T>(
    tx: &mpsc::Sender<Result<T, Status>>,
    item: Result<T, Status>,
    stopping: &mut watch::Receiver<bool>,
) -> bool {
    let last = item.is_err();
    tokio::select! {
        biased;
        sent = tx.send(item) => sent.is_ok() && !last,
        _ = stopping.wait_for(|stop| *stop) => false,
    }
}
