//! The embedded backend: one process, all state in memory, every durable change appended to
//! a log file (`state.log`) and fsynced before it is acknowledged.
//!
//! * Leased keys (agent presence) are ephemeral, as their leases are: they are not replayed
//!   after a restart. Revisions stay monotonic across restarts (leased writes still log their
//!   revision).
//! * The log is compacted into a snapshot (write temp, fsync, rename) when it grows past
//!   four times the number of live keys.
//! * A crash can leave a torn last line; it is ignored on replay (it was never acknowledged).
//!   A damaged line anywhere else is reported as [`StateError::Corrupt`], never skipped.
//! * Watch history is kept in memory for the last [`HISTORY_LEN`] changes; older revisions
//!   answer [`StateError::Compacted`], as etcd does after compaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::{KeyValue, LeaseId, Result, Revision, StateError, StateStore, WatchEvent, WatchStream};

/// Changes kept for watches that start in the past.
pub const HISTORY_LEN: usize = 10_000;
const LOG_FILE: &str = "state.log";
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// The embedded [`StateStore`]: the whole key space in this process's memory, durable
/// changes logged under a directory (or nowhere, [`EmbeddedStore::in_memory`]); see the
/// module docs for what survives a restart.
///
/// Create it inside a Tokio runtime: lease expiry is a background task, checked every
/// 100 ms, that stops when the store is dropped. Nothing locks the directory, so two stores
/// must never open the same one. A watcher that falls more than 4096 changes (under any
/// prefix) behind the live stream gets [`StateError::Compacted`], and its stream ends.
#[derive(Debug)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<WatchEvent>,
    expiry: tokio::task::AbortHandle,
}

#[derive(Debug)]
struct Inner {
    map: BTreeMap<String, KeyValue>,
    revision: Revision,
    history: VecDeque<WatchEvent>,
    leases: HashMap<i64, LeaseState>,
    next_lease: i64,
    log: Option<Log>,
}

#[derive(Debug)]
struct LeaseState {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug)]
struct Log {
    dir: PathBuf,
    file: File,
    records: usize,
}

/// One log line. `put`/`del` absent: a revision bump by an ephemeral (leased) change.
#[derive(Serialize, Deserialize)]
struct Record {
    rev: Revision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    put: Option<PutRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    del: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct PutRecord {
    k: String,
    /// Value, lowercase hex.
    v: String,
    /// Create revision.
    c: Revision,
}

impl EmbeddedStore {
    /// Opens (or creates) a store persisted under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut map = BTreeMap::new();
        let mut revision = 0;
        let mut records = 0;
        if path.exists() {
            let reader = BufReader::new(File::open(&path)?);
            let lines: Vec<String> = reader.lines().collect::<std::io::Result<_>>()?;
            let last = lines.len().saturating_sub(1);
            for (index, line) in lines.iter().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let record: Record = match serde_json::from_str(line) {
                    Ok(r) => r,
                    Err(_) if index == last => {
                        tracing::warn!(path = %path.display(), "ignoring torn last line of state log");
                        continue;
                    }
                    Err(e) => {
                        return Err(StateError::Corrupt(format!("{} line {}: {e}", path.display(), index + 1)));
                    }
                };
                records += 1;
                revision = revision.max(record.rev);
                if let Some(put) = record.put {
                    let value = hex_decode(&put.v).ok_or_else(|| {
                        StateError::Corrupt(format!("{} line {}: bad hex", path.display(), index + 1))
                    })?;
                    map.insert(
                        put.k.clone(),
                        KeyValue { key: put.k, value, create_revision: put.c, mod_revision: record.rev, lease: None },
                    );
                }
                if let Some(key) = record.del {
                    map.remove(&key);
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let log = Log { dir: dir.to_path_buf(), file, records };
        Ok(Self::with_inner(Inner {
            map,
            revision,
            history: VecDeque::new(),
            leases: HashMap::new(),
            next_lease: 1,
            log: Some(log),
        }))
    }

    /// A store that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self::with_inner(Inner {
            map: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            leases: HashMap::new(),
            next_lease: 1,
            log: None,
        })
    }

    fn with_inner(inner: Inner) -> Self {
        let inner = Arc::new(Mutex::new(inner));
        let (events, _) = broadcast::channel(4096);
        let expiry = tokio::spawn(expire_leases(Arc::downgrade(&inner), events.clone())).abort_handle();
        Self { inner, events, expiry }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every mutation is applied
        // after its log write), so a poisoned lock is safe to keep using.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.expiry.abort();
    }
}

async fn expire_leases(inner: std::sync::Weak<Mutex<Inner>>, events: broadcast::Sender<WatchEvent>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let mut guard = inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let expired: Vec<i64> = guard.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Err(error) = guard.end_lease(id, &events) {
                tracing::error!(%error, lease = id, "failed to expire lease");
            }
        }
    }
}

impl Inner {
    fn append(&mut self, record: &Record) -> Result<()> {
        let Some(log) = self.log.as_mut() else { return Ok(()) };
        let mut line = serde_json::to_vec(record).map_err(|e| StateError::Corrupt(e.to_string()))?;
        line.push(b'\n');
        log.file.write_all(&line)?;
        log.file.sync_data()?;
        log.records += 1;
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<()> {
        let live = self.map.values().filter(|kv| kv.lease.is_none()).count();
        let Some(log) = self.log.as_ref() else { return Ok(()) };
        if log.records < 1000 || log.records < live * 4 {
            return Ok(());
        }
        let dir = log.dir.clone();
        let tmp = dir.join(format!("{LOG_FILE}.tmp"));
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        let mut records = 0;
        for kv in self.map.values().filter(|kv| kv.lease.is_none()) {
            let record = Record {
                rev: kv.mod_revision,
                put: Some(PutRecord { k: kv.key.clone(), v: hex_encode(&kv.value), c: kv.create_revision }),
                del: None,
            };
            serde_json::to_writer(&mut out, &record).map_err(|e| StateError::Corrupt(e.to_string()))?;
            out.write_all(b"\n")?;
            records += 1;
        }
        // Keep the revision even if the newest change was ephemeral.
        serde_json::to_writer(&mut out, &Record { rev: self.revision, put: None, del: None })
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        out.write_all(b"\n")?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(LOG_FILE))?;
        File::open(&dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).open(dir.join(LOG_FILE))?;
        self.log = Some(Log { dir, file, records: records + 1 });
        Ok(())
    }

    fn emit(&mut self, event: WatchEvent, events: &broadcast::Sender<WatchEvent>) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(event.clone());
        // No receivers is fine.
        let _ = events.send(event);
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
        events: &broadcast::Sender<WatchEvent>,
    ) -> Result<Revision> {
        if let Some(l) = lease
            && !self.leases.contains_key(&l.0)
        {
            return Err(StateError::LeaseNotFound(l));
        }
        let rev = self.revision + 1;
        let previous = self.map.get(key);
        let create_revision = previous.map_or(rev, |kv| kv.create_revision);
        let was_durable = previous.is_some_and(|kv| kv.lease.is_none());
        let old_lease = previous.and_then(|kv| kv.lease);
        let record = match lease {
            None => Record {
                rev,
                put: Some(PutRecord { k: key.to_string(), v: hex_encode(&value), c: create_revision }),
                del: None,
            },
            // A durable key turning ephemeral must not come back on replay.
            Some(_) if was_durable => Record { rev, put: None, del: Some(key.to_string()) },
            Some(_) => Record { rev, put: None, del: None },
        };
        self.append(&record)?;
        self.revision = rev;
        if let Some(old) = old_lease
            && Some(old) != lease
            && let Some(state) = self.leases.get_mut(&old.0)
        {
            state.keys.remove(key);
        }
        if let Some(l) = lease
            && let Some(state) = self.leases.get_mut(&l.0)
        {
            state.keys.insert(key.to_string());
        }
        let kv = KeyValue { key: key.to_string(), value, create_revision, mod_revision: rev, lease };
        self.map.insert(key.to_string(), kv.clone());
        self.emit(WatchEvent::Put(kv), events);
        self.maybe_compact()?;
        Ok(rev)
    }

    fn delete(&mut self, key: &str, events: &broadcast::Sender<WatchEvent>) -> Result<bool> {
        let Some(previous) = self.map.get(key) else { return Ok(false) };
        let rev = self.revision + 1;
        let record = if previous.lease.is_none() {
            Record { rev, put: None, del: Some(key.to_string()) }
        } else {
            Record { rev, put: None, del: None }
        };
        self.append(&record)?;
        self.revision = rev;
        if let Some(kv) = self.map.remove(key)
            && let Some(l) = kv.lease
            && let Some(state) = self.leases.get_mut(&l.0)
        {
            state.keys.remove(key);
        }
        self.emit(WatchEvent::Delete { key: key.to_string(), mod_revision: rev }, events);
        Ok(true)
    }

    fn end_lease(&mut self, id: i64, events: &broadcast::Sender<WatchEvent>) -> Result<()> {
        let Some(state) = self.leases.remove(&id) else { return Err(StateError::LeaseNotFound(LeaseId(id))) };
        for key in state.keys {
            self.delete(&key, events)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().map.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let inner = self.lock();
        Ok(inner
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.lock().put(key, value, lease, &self.events)
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let mut inner = self.lock();
        let current = inner.map.get(key).map(|kv| kv.mod_revision);
        if current != expected {
            return Ok(None);
        }
        inner.put(key, value, lease, &self.events).map(Some)
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        self.lock().delete(key, &self.events)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let (backlog, rx) = {
            let inner = self.lock();
            // Subscribe under the lock: events are emitted under it too, so nothing is missed
            // or seen twice between the backlog and the live stream.
            let rx = self.events.subscribe();
            let mut backlog = Vec::new();
            if from != 0 && from <= inner.revision {
                let oldest = inner.history.front().map_or(inner.revision + 1, |e| e.revision());
                if from < oldest {
                    return Err(StateError::Compacted { requested: from, oldest });
                }
                backlog = inner
                    .history
                    .iter()
                    .filter(|e| e.revision() >= from && e.key().starts_with(prefix))
                    .cloned()
                    .collect();
            }
            (backlog, rx)
        };
        let prefix = prefix.to_string();
        let floor = backlog.last().map_or(from, |e: &WatchEvent| e.revision() + 1);
        let live = futures::stream::unfold(Some(rx), move |rx| {
            let prefix = prefix.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(event) if event.key().starts_with(&prefix) && event.revision() >= floor => {
                            return Some((Ok(event), Some(rx)));
                        }
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            // The watcher fell too far behind: tell it to re-list, then end.
                            return Some((Err(StateError::Compacted { requested: floor, oldest: 0 }), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        });
        Ok(Box::pin(futures::stream::iter(backlog.into_iter().map(Ok)).chain(live)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut inner = self.lock();
        let id = inner.next_lease;
        inner.next_lease += 1;
        inner.leases.insert(id, LeaseState { ttl, deadline: Instant::now() + ttl, keys: BTreeSet::new() });
        Ok(LeaseId(id))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut inner = self.lock();
        let state = inner.leases.get_mut(&lease.0).ok_or(StateError::LeaseNotFound(lease))?;
        state.deadline = Instant::now() + state.ttl;
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.lock().end_lease(lease.0, &self.events)
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }
}

use futures::StreamExt as _;

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_in_memory() {
        crate::testsuite::run_conformance(Arc::new(EmbeddedStore::in_memory())).await;
    }

    #[tokio::test]
    async fn conformance_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        crate::testsuite::run_conformance(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    }

    #[tokio::test]
    async fn survives_restart_but_drops_leased_keys() {
        let dir = tempfile::tempdir().unwrap();
        let rev = {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.put("/a", b"1".to_vec(), None).await.unwrap();
            store.put("/b", b"2".to_vec(), None).await.unwrap();
            store.delete("/a").await.unwrap();
            let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
            store.put("/agent", b"x".to_vec(), Some(lease)).await.unwrap()
        };
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.get("/a").await.unwrap(), None);
        assert_eq!(store.get("/b").await.unwrap().unwrap().value, b"2");
        assert_eq!(store.get("/agent").await.unwrap(), None, "ephemeral keys do not survive");
        assert_eq!(store.revision().await.unwrap(), rev, "revisions stay monotonic");
        // Watching history from before the restart is reported, not silently empty.
        assert!(matches!(store.watch("/", 1).await, Err(StateError::Compacted { .. })));
    }

    #[tokio::test]
    async fn compaction_keeps_data() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            for i in 0..1500u32 {
                store.put(&format!("/k{}", i % 10), i.to_be_bytes().to_vec(), None).await.unwrap();
            }
        }
        let lines = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap().lines().count();
        assert!(lines < 1000, "log was compacted ({lines} lines)");
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.list("/k").await.unwrap().len(), 10);
        assert_eq!(store.get("/k9").await.unwrap().unwrap().value, 1499u32.to_be_bytes());
        assert_eq!(store.revision().await.unwrap(), 1500);
    }

    #[tokio::test]
    async fn torn_last_line_is_ignored_but_corruption_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.put("/a", b"1".to_vec(), None).await.unwrap();
        }
        let path = dir.path().join(LOG_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"rev\":2,\"put\":{\"k\":\"/b\"").unwrap();
        drop(f);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"1");
        drop(store);
        std::fs::write(&path, "garbage\n{\"rev\":1}\n").unwrap();
        assert!(matches!(EmbeddedStore::open(dir.path()), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn hex_round_trip() {
        let data: Vec<u8> = (0..=255).collect();
        assert_eq!(hex_decode(&hex_encode(&data)).unwrap(), data);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }
}
