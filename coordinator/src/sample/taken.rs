//! Relayed requests (queries, batches) a replica has taken up, so that each runs once here
//! although it can be seen twice: by a watch's catch-up, which reads every request still
//! stored when the watch (re)starts, and by the watch itself, for a request written between
//! the two.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgecap_common::lock;
use edgecap_state::{KeyValue, Revision};

use crate::store::Repo;

/// Hands `take_up` every request put under `prefix` until `cancel`, and, each time the
/// watch (re)starts, every request still stored there (which `take_up` passes over if it
/// took it up already: [`TakenUp::first`]).
pub(super) async fn follow_requests(
    repo: &Repo,
    prefix: &str,
    what: &str,
    cancel: &tokio_util::sync::CancellationToken,
    take_up: impl Fn(KeyValue),
) {
    let catch_up = || async {
        match repo.store().list(prefix).await {
            Ok(kvs) => kvs.into_iter().for_each(&take_up),
            Err(error) => tracing::warn!(%error, "{what}: requests not read again after the watch restarted"),
        }
    };
    let on_put = |kv| {
        take_up(kv);
        async {}
    };
    repo.follow_puts(prefix, what, cancel, catch_up, on_put).await;
}

/// See the module docs.
pub(super) struct TakenUp {
    /// Longer than a request lives in the store (its lease).
    remember: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (key, its creation) -> when it was taken up.
    seen: HashMap<(String, Revision), Instant>,
    pruned: Option<Instant>,
}

impl TakenUp {
    /// Remembers each request for `remember` (at least as long as its key lives).
    pub(super) fn new(remember: Duration) -> Self {
        Self { remember, state: Mutex::default() }
    }

    /// For requests answered within `timeout`: remembered longer than their lease (at least
    /// the asker's timeout, shared for a few seconds).
    pub(super) fn for_timeout(timeout: Duration) -> Self {
        Self::new(timeout * 2 + Duration::from_secs(60))
    }

    /// Whether `kv` is taken up now for the first time (the same key written again, with a
    /// new creation revision, is a new request).
    pub(super) fn first(&self, kv: &KeyValue) -> bool {
        let now = Instant::now();
        let mut state = lock(&self.state);
        // At most once a second, so that a busy relay does not scan its memory at every put.
        if state.pruned.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            let remember = self.remember;
            state.seen.retain(|_, at| now.duration_since(*at) < remember);
            state.pruned = Some(now);
        }
        state.seen.insert((kv.key.clone(), kv.create_revision), now).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, create_revision: Revision) -> KeyValue {
        KeyValue { key: key.into(), value: vec![], create_revision, mod_revision: create_revision, lease: None }
    }

    #[test]
    fn a_request_is_taken_up_once_until_forgotten() {
        let taken = TakenUp::new(Duration::from_millis(50));
        assert!(taken.first(&kv("q/1", 7)));
        assert!(!taken.first(&kv("q/1", 7)), "seen again (catch-up and watch)");
        assert!(taken.first(&kv("q/1", 9)), "the key made again is another request");
        assert!(taken.first(&kv("q/2", 7)));
        std::thread::sleep(Duration::from_millis(1100));
        assert!(taken.first(&kv("q/1", 7)), "forgotten after `remember`");
    }

    /// A relayed query stored while the answering replica's watch was not running (here:
    /// before it started) is taken up by the watch's catch-up, and run once.
    #[tokio::test]
    async fn a_query_stored_before_the_watch_started_is_answered_once() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use edgecap_proto::agent::v1 as pb;

        use crate::agents::{AgentInfo, Registry};
        use crate::sample::relay::{self, Relay};

        let repo = crate::store::Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let cancel = tokio_util::sync::CancellationToken::new();
        // The asking replica writes its query; nobody serves relayed queries yet.
        let asking = Arc::new(Relay::new(repo.clone(), Duration::from_secs(5)));
        tokio::spawn(asking.clone().run(cancel.clone()));
        let ask = {
            let asking = asking.clone();
            let query = pb::SampleQuery { packet_limit: 100, ..Default::default() };
            tokio::spawn(async move { asking.sample("ams01-a", query, Duration::from_secs(5)).await })
        };
        while repo.store().list(&repo.sample_jobs_prefix()).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The agent, connected to the other replica, answers each query with 3 packets.
        let registry = Arc::new(Registry::default());
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        registry.register(AgentInfo::for_test("ams01-a", "ams01"), tx);
        let asked = Arc::new(AtomicUsize::new(0));
        {
            let (registry, asked) = (registry.clone(), asked.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = rx.recv().await {
                    if let Some(pb::coordinator_message::Msg::SampleQuery(query)) = message.msg {
                        asked.fetch_add(1, Ordering::SeqCst);
                        let packets = crate::sample::relay::tests::packets(3, 100);
                        for chunk in pb::SampleChunk::split(&query.request_id, packets, 3, Default::default()) {
                            registry.route_chunk("ams01-a", chunk).unwrap();
                        }
                    }
                }
            });
        }
        let tasks = edgecap_common::tasks::Tasks::new();
        let other = Arc::new(Relay::new(repo.clone(), Duration::from_secs(5)));
        tokio::spawn(relay::serve(other, registry, Duration::from_secs(5), tasks.clone()));
        let answer = ask.await.unwrap().expect("answered through the catch-up");
        assert_eq!(answer.packets.len(), 3);
        assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once");
        tasks.shutdown(Duration::from_secs(1)).await;
        cancel.cancel();
    }
}
