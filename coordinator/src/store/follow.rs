//! Watches: a restartable prefix watch, and those the leader wakes on (a capture's PoPs, the
//! index of unfinished captures).

use super::repo::{Repo, keys};

impl Repo {
    /// Changes to a capture's PoP keys from now on (the leader's runner follows them).
    pub(crate) async fn watch_pops(&self, capture: &str) -> edgecap_state::Result<edgecap_state::WatchStream> {
        self.store().watch(&keys::pops_of(capture), 0).await
    }

    /// Changes to the index of unfinished captures from now on.
    pub(crate) async fn watch_actives(&self) -> edgecap_state::Result<edgecap_state::WatchStream> {
        self.store().watch(&keys::actives(), 0).await
    }

    /// Calls `on_put` for every key put under `prefix` from now on, until `cancel`. Each time
    /// the watch (re)starts, `catch_up` runs first, so nothing written while it was down is
    /// missed; a broken watch (store restart, compaction) is restarted after a second.
    pub(crate) async fn follow_puts<C, CF, P, PF>(
        &self,
        prefix: &str,
        what: &str,
        cancel: &tokio_util::sync::CancellationToken,
        mut catch_up: C,
        mut on_put: P,
    ) where
        C: FnMut() -> CF,
        CF: std::future::Future<Output = ()>,
        P: FnMut(edgecap_state::KeyValue) -> PF,
        PF: std::future::Future<Output = ()>,
    {
        use futures::StreamExt as _;
        while !cancel.is_cancelled() {
            let result: std::result::Result<(), String> = async {
                let revision = self.store().revision().await.map_err(|e| e.to_string())?;
                catch_up().await;
                let mut events = self.store().watch(prefix, revision + 1).await.map_err(|e| e.to_string())?;
                loop {
                    let event = tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        e = events.next() => e,
                    };
                    match event {
                        Some(Ok(edgecap_state::WatchEvent::Put(kv))) => on_put(kv).await,
                        Some(Ok(edgecap_state::WatchEvent::Delete { .. })) => {}
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("watch ended".into()),
                    }
                }
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, "{what} watch interrupted; restarting it");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
