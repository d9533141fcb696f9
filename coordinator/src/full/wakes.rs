//! The leader's wake-ups: watches that end its waits between reads as soon as something it
//! acts on is written (from whichever replica wrote it), instead of at its next periodic read.
//! The reads stay: they alone notice agents gone and deadlines passed, and they take over when
//! a watch cannot be opened or ends.

use edgecap_state::{KeyValue, WatchEvent, WatchStream};
use tokio_util::sync::CancellationToken;

use crate::model::PopResult;
use crate::store::Repo;

/// Puts under a prefix that matter to the one waiting.
pub(super) struct Wakes {
    stream: Option<WatchStream>,
    wanted: fn(&KeyValue) -> bool,
}

impl Wakes {
    /// A capture's PoP keys, written in a final state: its last one done, it can be merged.
    pub(super) async fn final_pops(repo: &Repo, capture: &str) -> Self {
        let stream = repo.watch_pops(capture).await;
        Self::new(stream, |kv| serde_json::from_slice::<PopResult>(&kv.value).is_ok_and(|pop| pop.is_final()), capture)
    }

    /// Nothing yet (never wakes).
    pub(super) fn none() -> Self {
        Self { stream: None, wanted: |_| false }
    }

    /// The index of unfinished captures, added to: a new capture to follow.
    pub(super) async fn new_captures(repo: &Repo) -> Self {
        Self::new(repo.watch_actives().await, |_| true, "the active index")
    }

    fn new(stream: edgecap_state::Result<WatchStream>, wanted: fn(&KeyValue) -> bool, what: &str) -> Self {
        let stream = stream
            .inspect_err(|error| tracing::debug!(%what, %error, "no watch; following by periodic reads alone"))
            .ok();
        Self { stream, wanted }
    }

    /// After [`Wakes::next`]: waits `gather` for more of the same (`false`: cancelled
    /// meanwhile), then takes the events already waiting (the read that follows covers them),
    /// so that PoPs ending together cost one read, not one each.
    pub(super) async fn gather(&mut self, gather: std::time::Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => return false,
            _ = tokio::time::sleep(gather) => {}
        }
        self.skip_ready();
        true
    }

    fn skip_ready(&mut self) {
        use futures::FutureExt as _;
        use futures::StreamExt as _;
        while let Some(stream) = self.stream.as_mut() {
            match stream.next().now_or_never() {
                Some(Some(Ok(_))) => {}
                Some(Some(Err(_)) | None) => self.stream = None,
                None => return,
            }
        }
    }

    /// Returns when a wanted put is seen; never, once the watch has ended.
    pub(super) async fn next(&mut self) {
        use futures::StreamExt as _;
        while let Some(stream) = self.stream.as_mut() {
            match stream.next().await {
                Some(Ok(WatchEvent::Put(kv))) if (self.wanted)(&kv) => return,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => self.stream = None,
            }
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::model::PopStatus;

    #[tokio::test]
    async fn a_pop_written_final_wakes_its_runner_and_other_writes_do_not() {
        let store: Arc<dyn edgecap_state::StateStore> = Arc::new(edgecap_state::embedded::EmbeddedStore::in_memory());
        let repo = Repo::new(store);
        let pops =
            [PopResult::new("ord001", "a1", PopStatus::Running), PopResult::new("ord002", "a2", PopStatus::Running)];
        let mut finals = Wakes::final_pops(&repo, "c1").await;
        let mut added = Wakes::new_captures(&repo).await;
        assert!(repo.cas_pop("c1", "a1", None, &pops[0]).await.unwrap());
        assert!(repo.cas_pop("c1", "a2", None, &pops[1]).await.unwrap());
        // Another capture's PoP, final: not this runner's.
        let other = PopResult { status: PopStatus::Done, ..PopResult::new("ord001", "a1", PopStatus::Running) };
        assert!(repo.cas_pop("c2", "a1", None, &other).await.unwrap());
        // Running PoPs, and their counters, do not end the wait.
        repo.update_pop("c1", "a1", |p| p.packets = 5).await.unwrap().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), finals.next()).await.is_err());
        repo.update_pop("c1", "a2", |p| p.status = PopStatus::Done).await.unwrap().unwrap();
        repo.update_pop("c1", "a1", |p| p.status = PopStatus::Done).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), finals.next()).await.expect("woken by the final state");
        // The second final, already waiting, is taken with the first: one read for both.
        assert!(finals.gather(Duration::from_millis(50), &CancellationToken::new()).await);
        assert!(tokio::time::timeout(Duration::from_millis(200), finals.next()).await.is_err());
        // None of that was a new capture; one is.
        assert!(tokio::time::timeout(Duration::from_millis(200), added.next()).await.is_err());
        repo.put_active("acct", "c3").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), added.next()).await.expect("woken by the new capture");
    }
}
