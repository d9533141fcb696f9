//! The agent's shard uploads in flight: a task per capture, at most [`PARALLEL_CAPTURES`]
//! at once, each remembered by its capture (`uploads.rs` runs them).

use std::collections::HashMap;

use tokio::task::JoinSet;

/// Captures whose shards upload at the same time (shards of one capture go in order).
pub(super) const PARALLEL_CAPTURES: usize = 4;

/// The uploads in flight, a task per capture. A task that panicked (or was aborted) still says
/// whose it was: its capture is freed and retried like any failed upload, not left busy.
#[derive(Default)]
pub(super) struct InFlight {
    tasks: JoinSet<anyhow::Result<()>>,
    whose: HashMap<tokio::task::Id, String>,
}

impl InFlight {
    pub(super) fn spawn(
        &mut self,
        capture_id: String,
        upload: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let task = self.tasks.spawn(upload);
        self.whose.insert(task.id(), capture_id);
    }

    /// Ends every upload in flight and waits for them.
    pub(super) async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        self.whose.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Whether `capture_id`'s upload is in flight, or [`PARALLEL_CAPTURES`] are.
    pub(super) fn busy_for(&self, capture_id: &str) -> bool {
        self.whose.len() >= PARALLEL_CAPTURES || self.whose.values().any(|c| c == capture_id)
    }

    /// The next upload to end: its capture and how it went. `None` when none is in flight.
    /// Cancel safe (a `select!` branch).
    pub(super) async fn next(&mut self) -> Option<(String, anyhow::Result<()>)> {
        loop {
            let (task, result) = match self.tasks.join_next_with_id().await? {
                Ok((task, result)) => (task, result),
                Err(e) => (e.id(), Err(anyhow::anyhow!("the upload task ended abnormally: {e}"))),
            };
            if let Some(capture_id) = self.whose.remove(&task) {
                return Some((capture_id, result));
            }
        }
    }
}
