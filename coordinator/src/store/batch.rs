//! Unconditional puts from many callers gathered into transactions.
//!
//! A full capture's agents each commit a shard every few seconds, and each commit recorded
//! its shard with a put of its own: at 900 running PoP-captures that was ~330 etcd writes a
//! second, most of etcd's write load. Callers of [`PutBatch::put`] wait until their key is
//! written; the runner writes what came within [`LINGER`] of the first, up to [`PER_WRITE`]
//! keys, in one transaction. Without a runner (or once it has ended) a put is written on its
//! own, so a caller never waits for a batch that will not come.

use std::sync::Mutex;
use std::time::Duration;

use edgecap_common::lock;
use edgecap_state::StateError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::repo::Repo;

/// How long the first put of a batch waits for others.
pub(crate) const LINGER: Duration = Duration::from_millis(20);
/// Keys per transaction (under etcd's 128 operations, and well under its request size for
/// values of a few hundred bytes; a batch over the size is written key by key).
const PER_WRITE: usize = 64;

type Item = (String, Vec<u8>, oneshot::Sender<Result<(), String>>);

/// See the module docs.
pub(crate) struct PutBatch {
    tx: mpsc::Sender<Item>,
    rx: Mutex<Option<mpsc::Receiver<Item>>>,
}

impl Default for PutBatch {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(4096);
        Self { tx, rx: Mutex::new(Some(rx)) }
    }
}

impl PutBatch {
    /// Writes `key` (in a batch when the runner runs); returns once it is written.
    pub(crate) async fn put(&self, repo: &Repo, key: String, value: Vec<u8>) -> Result<(), String> {
        // The receiver still here: no runner has taken it.
        if lock(&self.rx).is_some() {
            return put_one(repo, &key, value).await;
        }
        let (done, written) = oneshot::channel();
        match self.tx.try_send((key, value, done)) {
            // An Err: the runner was dropped with this put unwritten (the caller's answer says
            // to try again).
            Ok(()) => written.await.unwrap_or_else(|_| Err("the coordinator is shutting down; try again".into())),
            // A full queue, or the runner has ended: on its own.
            Err(
                mpsc::error::TrySendError::Full((key, value, _)) | mpsc::error::TrySendError::Closed((key, value, _)),
            ) => put_one(repo, &key, value).await,
        }
    }

    /// Writes queued puts in batches until `cancel`, then what is still queued. Runs once (a
    /// second call returns at once).
    pub(crate) async fn run(&self, repo: Repo, cancel: CancellationToken) {
        let Some(mut rx) = lock(&self.rx).take() else { return };
        loop {
            let first = tokio::select! {
                _ = cancel.cancelled() => break,
                item = rx.recv() => match item { Some(item) => item, None => return },
            };
            let mut batch = vec![first];
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while batch.len() < PER_WRITE {
                tokio::select! {
                    _ = &mut linger => break,
                    item = rx.recv() => match item { Some(item) => batch.push(item), None => break },
                }
            }
            write(&repo, batch).await;
        }
        rx.close();
        while let Ok(item) = rx.try_recv() {
            write(&repo, vec![item]).await;
        }
    }
}

async fn put_one(repo: &Repo, key: &str, value: Vec<u8>) -> Result<(), String> {
    repo.store().put(key, value, None).await.map(|_| ()).map_err(|e| e.to_string())
}

/// One transaction; key by key if it is too large for one. A key put twice in the batch (a
/// commit retried within the linger) is written once, with its last value: etcd refuses a
/// transaction that names a key twice.
async fn write(repo: &Repo, batch: Vec<Item>) {
    let mut last: std::collections::HashMap<&str, &[u8]> = std::collections::HashMap::new();
    for (key, value, _) in &batch {
        last.insert(key, value);
    }
    let puts: Vec<(String, Vec<u8>)> = last.into_iter().map(|(k, v)| (k.to_owned(), v.to_vec())).collect();
    match repo.store().put_all_if_absent(&[], puts).await {
        Ok(_) => {
            for (_, _, done) in batch {
                let _ = done.send(Ok(()));
            }
        }
        Err(StateError::TooLarge { .. }) if batch.len() > 1 => {
            for (key, value, done) in batch {
                let _ = done.send(put_one(repo, &key, value).await);
            }
        }
        Err(e) => {
            let error = e.to_string();
            for (_, _, done) in batch {
                let _ = done.send(Err(error.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn every_put_is_written_with_a_runner_and_without_one() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let batch = Arc::new(PutBatch::default());
        // No runner yet: written at once.
        batch.put(&repo, "/b/solo".into(), b"1".to_vec()).await.unwrap();
        assert_eq!(repo.store().get("/b/solo").await.unwrap().unwrap().value, b"1");

        let cancel = CancellationToken::new();
        let runner = tokio::spawn({
            let (batch, repo, cancel) = (batch.clone(), repo.clone(), cancel.clone());
            async move { batch.run(repo, cancel).await }
        });
        // Wait until the runner has taken the queue.
        while lock(&batch.rx).is_some() {
            tokio::task::yield_now().await;
        }
        let before = repo.store().revision().await.unwrap();
        let puts: Vec<_> = (0..100)
            .map(|i| {
                let (batch, repo) = (batch.clone(), repo.clone());
                tokio::spawn(async move { batch.put(&repo, format!("/b/k{i:03}"), vec![i as u8]).await })
            })
            .collect();
        for put in puts {
            put.await.unwrap().unwrap();
        }
        let written = repo.store().list("/b/k").await.unwrap();
        assert_eq!(written.len(), 100);
        assert!(written.iter().enumerate().all(|(i, kv)| kv.value == [i as u8]));
        assert!(repo.store().revision().await.unwrap() > before);
        // A key put twice within one batch (a commit retried): written once, with the last
        // value, and both callers are answered (the stores refuse a transaction naming a key
        // twice).
        let twice: Vec<_> = [b"first".to_vec(), b"second".to_vec()]
            .into_iter()
            .map(|value| {
                let (batch, repo) = (batch.clone(), repo.clone());
                tokio::spawn(async move { batch.put(&repo, "/b/twice".into(), value).await })
            })
            .collect();
        for put in twice {
            put.await.unwrap().unwrap();
        }
        assert_eq!(repo.store().get("/b/twice").await.unwrap().unwrap().value, b"second");
        cancel.cancel();
        runner.await.unwrap();
        // The runner is gone: on its own again.
        batch.put(&repo, "/b/after".into(), b"2".to_vec()).await.unwrap();
        assert!(repo.store().get("/b/after").await.unwrap().is_some());
    }
}
