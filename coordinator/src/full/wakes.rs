//! The leader's wake-ups: watches that end its waits between reads as soon as something it
//! acts on is written (from whichever replica wrote it), instead of at its next periodic read.
//! The reads stay: they alone notice agents gone and deadlines passed, and they take over while
//! a watch cannot be opened or has ended (a store restart, a compaction); it is opened again
//! [`REOPEN_AFTER`] later, and the wake that follows has the next read cover the gap.

use edgecap_state::{KeyValue, WatchEvent, WatchStream};
use tokio_util::sync::CancellationToken;

use crate::model::PopResult;
use crate::store::Repo;

/// How long after a watch ended (or could not be opened) it is opened again.
const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Puts under a prefix that matter to the one waiting.
pub(super) struct Wakes {
    stream: Option<WatchStream>,
    wanted: fn(&KeyValue) -> bool,
    /// How to open the watch again once it has ended (`None`: never wakes).
    reopen: Option<Reopen>,
}

/// What a [`Wakes`] watches, to open it again.
struct Reopen {
    repo: Repo,
    watched: Watched,
    /// Not before then.
    at: tokio::time::Instant,
}

enum Watched {
    /// One capture's PoP keys.
    Pops(String),
    /// The index of unfinished captures.
    Actives,
}

impl Reopen {
    async fn open(&self) -> edgecap_state::Result<WatchStream> {
        match &self.watched {
            Watched::Pops(capture) => self.repo.watch_pops(capture).await,
            Watched::Actives => self.repo.watch_actives().await,
        }
    }
}

impl Wakes {
    /// A capture's PoP keys, written in a final state: its last one done, it can be merged.
    pub(super) async fn final_pops(repo: &Repo, capture: &str) -> Self {
        let wanted = |kv: &KeyValue| serde_json::from_slice::<PopResult>(&kv.value).is_ok_and(|pop| pop.is_final());
        Self::new(repo, Watched::Pops(capture.to_string()), wanted).await
    }

    /// Nothing yet (never wakes).
    pub(super) fn none() -> Self {
        Self { stream: None, wanted: |_| false, reopen: None }
    }

    /// The index of unfinished captures, added to: a new capture to follow.
    pub(super) async fn new_captures(repo: &Repo) -> Self {
        Self::new(repo, Watched::Actives, |_| true).await
    }

    async fn new(repo: &Repo, watched: Watched, wanted: fn(&KeyValue) -> bool) -> Self {
        let reopen = Reopen { repo: repo.clone(), watched, at: tokio::time::Instant::now() };
        let stream = reopen
            .open()
            .await
            .inspect_err(|error| tracing::debug!(%error, "no watch; following by periodic reads until it opens"))
            .ok();
        let mut wakes = Self { stream, wanted, reopen: Some(reopen) };
        if wakes.stream.is_none() {
            wakes.ended();
        }
        wakes
    }

    /// The watch has ended: open it again later.
    fn ended(&mut self) {
        self.stream = None;
        if let Some(reopen) = self.reopen.as_mut() {
            reopen.at = tokio::time::Instant::now() + REOPEN_AFTER;
        }
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
                Some(Some(Err(_)) | None) => self.ended(),
                None => return,
            }
        }
    }

    /// Returns when a wanted put is seen, or when the watch has been opened again after it
    /// ended (the read that follows covers what it missed meanwhile). Cancel-safe.
    pub(super) async fn next(&mut self) {
        use futures::StreamExt as _;
        loop {
            if let Some(stream) = self.stream.as_mut() {
                match stream.next().await {
                    Some(Ok(WatchEvent::Put(kv))) if (self.wanted)(&kv) => return,
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => self.ended(),
                }
                continue;
            }
            let Some(reopen) = self.reopen.as_mut() else { return std::future::pending().await };
            tokio::time::sleep_until(reopen.at).await;
            // The next try is due a while from now, even if this one is cancelled half-way
            // (the caller's periodic read came first).
            reopen.at = tokio::time::Instant::now() + REOPEN_AFTER;
            match reopen.open().await {
                Ok(stream) => {
                    self.stream = Some(stream);
                    return;
                }
                Err(error) => tracing::debug!(%error, "watch not open again yet; following by periodic reads"),
            }
        }
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
        repo.update_pop("c1", "a1", None, |p| p.packets = 5).await.unwrap().unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), finals.next()).await.is_err());
        repo.update_pop("c1", "a2", None, |p| p.status = PopStatus::Done).await.unwrap().unwrap();
        repo.update_pop("c1", "a1", None, |p| p.status = PopStatus::Done).await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_secs(10), finals.next()).await.expect("woken by the final state");
        // The second final, already waiting, is taken with the first: one read for both.
        assert!(finals.gather(Duration::from_millis(50), &CancellationToken::new()).await);
        assert!(tokio::time::timeout(Duration::from_millis(200), finals.next()).await.is_err());
        // None of that was a new capture; one is.
        assert!(tokio::time::timeout(Duration::from_millis(200), added.next()).await.is_err());
        repo.put_active("acct", "c3").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), added.next()).await.expect("woken by the new capture");
    }

    /// A watch that ends (a store restart, a compaction) is opened again a second later: the
    /// wake then has the next read cover the gap, and later writes wake again.
    #[tokio::test]
    async fn an_ended_watch_is_opened_again_and_wakes_again() {
        let store: Arc<dyn edgecap_state::StateStore> = Arc::new(edgecap_state::embedded::EmbeddedStore::in_memory());
        let repo = Repo::new(store);
        let mut added = Wakes::new_captures(&repo).await;
        // Its stream ends, as a broken watch's does.
        added.stream = Some(Box::pin(futures::stream::empty()));
        tokio::time::timeout(Duration::from_secs(10), added.next()).await.expect("opened again, one wake");
        assert!(added.stream.is_some());
        assert!(tokio::time::timeout(Duration::from_millis(200), added.next()).await.is_err(), "then only on writes");
        repo.put_active("acct", "c1").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), added.next()).await.expect("woken by the reopened watch");
        // Nothing to reopen: never wakes.
        let mut none = Wakes::none();
        assert!(tokio::time::timeout(Duration::from_millis(200), none.next()).await.is_err());
    }
}
