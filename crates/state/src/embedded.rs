//! The embedded backend: one process, all state in memory, every durable change appended to
//! a log file (`state.log`) and fsynced before it is acknowledged.
//!
//! * Leased keys (agent presence) are ephemeral, as their leases are: they are not replayed
//!   after a restart. Revisions stay monotonic across restarts (leased writes still log their
//!   revision).
//! * The log is compacted into a snapshot (write temp, fsync, rename) when it grows past
//!   four times the number of live keys.
//! * A crash can leave a torn last line (no newline, or one that does not parse): it was
//!   never acknowledged, and it is cut off when the store opens, so the next record starts on
//!   a clean line. A damaged line anywhere else is reported as [`StateError::Corrupt`], never
//!   skipped.
//! * The directory is locked (`LOCK`, an advisory lock held while the store is open): a second
//!   store on the same directory is refused with [`StateError::Locked`].
//! * A value, and a transaction's keys and values together, may be at most
//!   [`MAX_VALUE_BYTES`], as etcd's request limit ([`StateError::TooLarge`]).
//! * Writes (log append and fsync) run on a blocking thread, never on an async worker.
//! * Watch history is kept in memory for the last [`HISTORY_LEN`] changes; older revisions
//!   answer [`StateError::Compacted`], as etcd does after compaction.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
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
const LOCK_FILE: &str = "LOCK";
/// Largest value a key may hold: etcd's default request limit (1.5 MiB), so that what works
/// here works on etcd too.
pub const MAX_VALUE_BYTES: usize = 1536 << 10;
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// The embedded [`StateStore`]: the whole key space in this process's memory, durable
/// changes logged under a directory (or nowhere, [`EmbeddedStore::in_memory`]); see the
/// module docs for what survives a restart.
///
/// Create it inside a Tokio runtime: lease expiry is a background task, checked every
/// 100 ms, that stops when the store is dropped. The directory is locked while the store is
/// open. A watcher that falls more than 4096 changes (under any
/// prefix) behind the live stream gets [`StateError::Compacted`], and its stream ends.
#[derive(Debug)]
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<WatchEvent>,
    expiry: tokio::task::AbortHandle,
    /// Writes go to a log (and are done on a blocking thread).
    persistent: bool,
    /// Holds the directory's lock for as long as the store is open.
    _lock: Option<File>,
}

#[derive(Debug)]
struct Inner {
    map: BTreeMap<String, KeyValue>,
    revision: Revision,
    history: VecDeque<WatchEvent>,
    leases: HashMap<i64, LeaseState>,
    next_lease: i64,
    log: Option<Log>,
    /// Largest value accepted.
    max_value: usize,
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
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        if lock.try_lock().is_err() {
            return Err(StateError::Locked(dir.display().to_string()));
        }
        let path = dir.join(LOG_FILE);
        let mut map = BTreeMap::new();
        let mut revision = 0;
        let mut records = 0;
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            // Only whole lines (ending in a newline) were ever acknowledged: a last line
            // without its newline, or one that does not parse, is a torn write and is cut
            // off, so the next record starts on a clean line.
            let mut good_end = 0usize;
            let mut start = 0usize;
            let mut number = 0usize;
            while start < bytes.len() {
                number += 1;
                let Some(len) = bytes[start..].iter().position(|b| *b == b'\n') else {
                    tracing::warn!(path = %path.display(), line = number, "cutting off a torn last line of the state log");
                    break;
                };
                let line = &bytes[start..start + len];
                let end = start + len + 1;
                let is_last = end >= bytes.len();
                if line.iter().all(u8::is_ascii_whitespace) {
                    start = end;
                    good_end = end;
                    continue;
                }
                let record: Record = match serde_json::from_slice(line) {
                    Ok(r) => r,
                    Err(_) if is_last => {
                        tracing::warn!(path = %path.display(), line = number, "cutting off a torn last line of the state log");
                        break;
                    }
                    Err(e) => {
                        return Err(StateError::Corrupt(format!("{} line {number}: {e}", path.display())));
                    }
                };
                let value = match &record.put {
                    Some(put) => Some(
                        edgecap_common::unhex(&put.v)
                            .ok_or_else(|| StateError::Corrupt(format!("{} line {number}: bad hex", path.display())))?,
                    ),
                    None => None,
                };
                records += 1;
                revision = revision.max(record.rev);
                if let (Some(put), Some(value)) = (record.put, value) {
                    map.insert(
                        put.k.clone(),
                        KeyValue { key: put.k, value, create_revision: put.c, mod_revision: record.rev, lease: None },
                    );
                }
                if let Some(key) = record.del {
                    map.remove(&key);
                }
                start = end;
                good_end = end;
            }
            if good_end < bytes.len() {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(good_end as u64)?;
                file.sync_all()?;
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let log = Log { dir: dir.to_path_buf(), file, records };
        let inner = Inner {
            map,
            revision,
            history: VecDeque::new(),
            leases: HashMap::new(),
            next_lease: 1,
            log: Some(log),
            max_value: MAX_VALUE_BYTES,
        };
        let mut store = Self::with_inner(inner);
        store._lock = Some(lock);
        Ok(store)
    }

    /// A store that keeps nothing on disk.
    pub fn in_memory() -> Self {
        Self::in_memory_with_limit(MAX_VALUE_BYTES)
    }

    /// A store that keeps nothing on disk and takes values of at most `max_value` bytes (to
    /// test what writers do when a record outgrows the store).
    pub fn in_memory_with_limit(max_value: usize) -> Self {
        Self::with_inner(Inner {
            map: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            leases: HashMap::new(),
            next_lease: 1,
            log: None,
            max_value,
        })
    }

    fn with_inner(inner: Inner) -> Self {
        let persistent = inner.log.is_some();
        let inner = Arc::new(Mutex::new(inner));
        let (events, _) = broadcast::channel(4096);
        let expiry = tokio::spawn(expire_leases(Arc::downgrade(&inner), events.clone(), persistent)).abort_handle();
        Self { inner, events, expiry, persistent, _lock: None }
    }

    /// Runs a change: on a blocking thread when it writes to the log (append and fsync), in
    /// place otherwise.
    async fn mutate<T, F>(&self, change: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Inner, &broadcast::Sender<WatchEvent>) -> Result<T> + Send + 'static,
    {
        let (inner, events) = (self.inner.clone(), self.events.clone());
        let run = move || change(&mut edgecap_common::lock(&inner), &events);
        if !self.persistent {
            return run();
        }
        tokio::task::spawn_blocking(run).await.map_err(|e| StateError::Io(std::io::Error::other(e)))?
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

async fn expire_leases(inner: std::sync::Weak<Mutex<Inner>>, events: broadcast::Sender<WatchEvent>, persistent: bool) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        let any = edgecap_common::lock(&inner).leases.values().any(|l| l.deadline <= now);
        if !any {
            continue;
        }
        let events = events.clone();
        let expire = move || {
            let mut guard = edgecap_common::lock(&inner);
            let expired: Vec<i64> = guard.leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
            for id in expired {
                if let Err(error) = guard.end_lease(id, &events) {
                    tracing::error!(%error, lease = id, "failed to expire lease");
                }
            }
        };
        // Ending a lease writes to the log: not on an async worker.
        if persistent {
            let _ = tokio::task::spawn_blocking(expire).await;
        } else {
            expire();
        }
    }
}

impl Inner {
    /// The keys starting with `prefix`, in key order.
    fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.map.range(prefix.to_string()..).take_while(move |(k, _)| k.starts_with(prefix)).map(|(_, kv)| kv)
    }

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
                put: Some(PutRecord { k: kv.key.clone(), v: edgecap_common::hex(&kv.value), c: kv.create_revision }),
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
        if value.len() > self.max_value {
            return Err(StateError::TooLarge { key: key.to_string(), bytes: value.len(), max: self.max_value });
        }
        let rev = self.revision + 1;
        let previous = self.map.get(key);
        let create_revision = previous.map_or(rev, |kv| kv.create_revision);
        let was_durable = previous.is_some_and(|kv| kv.lease.is_none());
        let old_lease = previous.and_then(|kv| kv.lease);
        let record = match lease {
            None => Record {
                rev,
                put: Some(PutRecord { k: key.to_string(), v: edgecap_common::hex(&value), c: create_revision }),
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

    /// Writes every `(key, value)` (durable): all or nothing; a transaction whose keys and
    /// values together are over the limit is refused before anything is written, as etcd
    /// refuses a request over its size.
    fn put_all(&mut self, puts: Vec<(String, Vec<u8>)>, events: &broadcast::Sender<WatchEvent>) -> Result<()> {
        crate::distinct(puts.iter().map(|(k, _)| k.as_str()))?;
        let bytes: usize = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > self.max_value {
            let key = puts.first().map(|(k, _)| k.clone()).unwrap_or_default();
            return Err(StateError::TooLarge { key, bytes, max: self.max_value });
        }
        for (key, value) in puts {
            self.put(&key, value, None, events)?;
        }
        Ok(())
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
        Ok(self.lock().under(prefix).cloned().collect())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.lock().under(prefix).map(|kv| kv.key.clone()).collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let key = key.to_string();
        self.mutate(move |inner, events| inner.put(&key, value, lease, events)).await
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let key = key.to_string();
        self.mutate(move |inner, events| {
            let current = inner.map.get(&key).map(|kv| kv.mod_revision);
            if current != expected {
                return Ok(None);
            }
            inner.put(&key, value, lease, events).map(Some)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.mutate(move |inner, events| inner.delete(&key, events)).await
    }

    async fn delete_all(&self, keys: &[String]) -> Result<u64> {
        crate::distinct(keys.iter().map(String::as_str))?;
        let keys = keys.to_vec();
        self.mutate(move |inner, events| {
            let mut deleted = 0;
            for key in &keys {
                deleted += u64::from(inner.delete(key, events)?);
            }
            Ok(deleted)
        })
        .await
    }

    async fn put_all_if_absent(&self, absent: &[String], puts: Vec<(String, Vec<u8>)>) -> Result<bool> {
        let absent = absent.to_vec();
        self.mutate(move |inner, events| {
            if absent.iter().any(|k| inner.map.contains_key(k)) {
                return Ok(false);
            }
            inner.put_all(puts, events).map(|()| true)
        })
        .await
    }

    async fn compare_and_put_all(&self, puts: Vec<(String, Option<Revision>, Vec<u8>)>) -> Result<bool> {
        self.mutate(move |inner, events| {
            if puts.iter().any(|(k, expected, _)| inner.map.get(k).map(|kv| kv.mod_revision) != *expected) {
                return Ok(false);
            }
            inner.put_all(puts.into_iter().map(|(k, _, v)| (k, v)).collect(), events).map(|()| true)
        })
        .await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        let key = key.to_string();
        self.mutate(move |inner, events| {
            if inner.map.get(&key).map(|kv| kv.mod_revision) != Some(expected) {
                return Ok(false);
            }
            inner.delete(&key, events)
        })
        .await
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
        self.mutate(move |inner, events| inner.end_lease(lease.0, events)).await
    }

    async fn revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }
}

use futures::StreamExt as _;

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

    /// Tears the log at every byte offset of its last record, as a crash during that append
    /// would, then writes after the restart: the new write (acknowledged) survives the next
    /// restart, and everything acknowledged before the torn record is there.
    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_writes_after_it_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.put("/a", b"1".to_vec(), None).await.unwrap();
            store.put("/b", b"2".to_vec(), None).await.unwrap();
        }
        let before_last = std::fs::metadata(&path).unwrap().len();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store.put("/c", b"3".to_vec(), None).await.unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        assert!(whole.len() as u64 > before_last + 10);
        for cut in before_last..whole.len() as u64 {
            let case = tempfile::tempdir().unwrap();
            std::fs::write(case.path().join(LOG_FILE), &whole[..cut as usize]).unwrap();
            {
                let store = EmbeddedStore::open(case.path()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
                assert_eq!(store.get("/c").await.unwrap(), None, "cut at {cut}: the torn record is not there");
                store.put("/after", b"x".to_vec(), None).await.unwrap();
            }
            let store = EmbeddedStore::open(case.path()).unwrap_or_else(|e| panic!("cut at {cut}, reopened: {e}"));
            assert_eq!(store.get("/after").await.unwrap().unwrap().value, b"x", "cut at {cut}");
            assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"1", "cut at {cut}");
            assert_eq!(store.get("/b").await.unwrap().unwrap().value, b"2", "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn a_directory_is_used_by_one_store_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedStore::open(dir.path()).unwrap();
        assert!(matches!(EmbeddedStore::open(dir.path()), Err(StateError::Locked(_))));
        drop(first);
        EmbeddedStore::open(dir.path()).unwrap();
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
        assert!(std::fs::read(&path).unwrap().ends_with(b"\n"), "the torn line was cut off");
        std::fs::write(&path, "garbage\n{\"rev\":1}\n").unwrap();
        assert!(matches!(EmbeddedStore::open(dir.path()), Err(StateError::Corrupt(_))));
    }
}
