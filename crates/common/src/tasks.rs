//! Ownership of background work.
//!
//! Every task a component starts goes through its [`Tasks`]: tracked, so shutdown can wait
//! for all of them, and given a [`CancellationToken`] to stop on. Nothing is detached: a
//! shutdown cancels the token, then waits (up to a grace period) for every task to return,
//! so clean-up that runs on cancellation (scratch files, multipart aborts) has run when the
//! owner's shutdown returns.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A set of owned background tasks sharing one cancellation token. Clones share both.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// An empty set with a token of its own (no parent).
    pub fn new() -> Self {
        Self::default()
    }

    /// Tasks that stop when `parent` is cancelled (or when their own shutdown is called).
    pub fn child_of(parent: &CancellationToken) -> Self {
        Self { tracker: TaskTracker::new(), cancel: parent.child_token() }
    }

    /// The token the tasks stop on.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Whether the tasks have been told to stop: [`Tasks::shutdown`] ran, the token was
    /// cancelled, or (for [`Tasks::child_of`]) the parent's was.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Runs `task` in the background, tracked. It should watch [`Tasks::token`] for how long
    /// to keep going.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs blocking work (file I/O, fsync, libpcap) on the blocking pool, tracked.
    pub fn spawn_blocking<F, T>(&self, work: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.tracker.spawn_blocking(work)
    }

    /// How many tasks are running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Cancels the tasks and waits for them to return, at most `grace`; `true` if they all
    /// did. New tasks can still be spawned afterwards (they see the cancelled token).
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        let done = tokio::time::timeout(grace, self.tracker.wait()).await.is_ok();
        if !done {
            tracing::warn!(
                still_running = self.tracker.len(),
                ?grace,
                "background tasks still running after the grace period"
            );
        }
        self.tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new();
        let cleaned = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..3 {
            let (token, cleaned) = (tasks.token(), cleaned.clone());
            tasks.spawn(async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(20)).await; // clean-up takes a moment
                cleaned.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        assert!(tasks.shutdown(Duration::from_secs(5)).await);
        assert_eq!(cleaned.load(std::sync::atomic::Ordering::SeqCst), 3, "clean-up ran before shutdown returned");
        let stuck = Tasks::new();
        stuck.spawn(std::future::pending::<()>());
        assert!(!stuck.shutdown(Duration::from_millis(50)).await, "a task ignoring the token is reported");
    }
}
