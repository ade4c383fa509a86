//! A transaction's write-through SESSION.* writes in one script call.
//!
//! EXEC runs the sidecar's queued writes inside a [`Batch`]'s scope: each
//! script operation they would send on their own (through
//! [`WriteThrough::run`](super::WriteThrough), a creation, a deletion's
//! per-shard calls) joins the batch instead and waits. When EXEC reaches a
//! command that is not such a write (or one that must talk to the upstream
//! first, such as a cross-shard connection's lock), it closes the batch:
//! every operation joined so far goes in one call of the script's `multi`
//! operation, which applies them in the order they were queued, atomically.
//! On a single server (or behind Sentinel) that is one call for every
//! shard; on a cluster, one call per hash slot (a script can only change
//! the keys of one slot), the calls of different masters in parallel.
//!
//! The follow-ups a write's call hands back (the other shards' halves of a
//! cross-shard change, recorded as intents in the same call) run after it,
//! as they do outside a transaction.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::store::Reply;
use crate::store::StoreError;

tokio::task_local! {
    static BATCH: Arc<Batch>;
}

/// The script operations joined so far, until the batch is closed.
#[derive(Default)]
pub struct Batch {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    operations: Vec<Operation>,
}

/// One script operation waiting for the batch's call.
pub(crate) struct Operation {
    pub op: String,
    pub shard: u32,
    /// The key it is routed by (one of its shard's), or empty.
    pub key: Vec<u8>,
    pub args: Vec<Vec<u8>>,
    pub now: u64,
    pub reply: oneshot::Sender<Result<Reply, StoreError>>,
}

impl Batch {
    pub fn new() -> Arc<Batch> {
        Arc::default()
    }

    /// Runs `future` with this batch as the one its script operations join.
    pub fn scope<F: Future>(
        self: &Arc<Self>,
        future: F,
    ) -> impl Future<Output = F::Output> + use<F> {
        BATCH.scope(self.clone(), future)
    }

    /// How many operations have joined.
    pub fn len(&self) -> usize {
        self.lock().operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes the batch: the operations to send, in the order they joined.
    /// Any operation after this runs on its own.
    pub(crate) fn close(&self) -> Vec<Operation> {
        let mut state = self.lock();
        state.closed = true;
        std::mem::take(&mut state.operations)
    }

    /// Joins the open batch of the task's scope, if any: the receiver of
    /// the operation's reply. `None`: run it now, alone.
    pub(crate) fn join(
        op: &str,
        shard: u32,
        key: &[u8],
        args: impl FnOnce() -> Vec<Vec<u8>>,
        now: u64,
    ) -> Option<oneshot::Receiver<Result<Reply, StoreError>>> {
        let batch = BATCH.try_with(Arc::clone).ok()?;
        let mut state = batch.lock();
        if state.closed {
            return None;
        }
        let (reply, replied) = oneshot::channel();
        state.operations.push(Operation {
            op: op.to_string(),
            shard,
            key: key.to_vec(),
            args: args(),
            now,
            reply,
        });
        Some(replied)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits for a joined operation's reply. The batch's sender always
/// answers; should it be dropped unsent, the operation may have run.
pub(crate) async fn joined(
    replied: oneshot::Receiver<Result<Reply, StoreError>>,
) -> Result<Reply, StoreError> {
    replied.await.unwrap_or(Err(StoreError::OutcomeUnknown))
}
