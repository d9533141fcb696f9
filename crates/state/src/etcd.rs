//! The etcd backend: a thin mapping of [`StateStore`] onto etcd v3.
//!
//! * Every key is stored under a configurable prefix, so several edgecap installations can
//!   share one etcd.
//! * Compare-and-swap is an etcd transaction on `mod_revision` (or `create_revision == 0` for
//!   "must not exist").
//! * Watches start at a revision; a start that etcd has compacted away is reported as
//!   [`StateError::Compacted`], as the embedded store does.
//! * Any transport or server error is [`StateError::Unavailable`]: callers answer 503 and retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use edgecap_common::lock;
use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt as _;

use crate::{KeyValue, LeaseId, Result, Revision, StateError, StateStore, WatchEvent, WatchStream};

/// The etcd [`StateStore`]: a handle on an etcd v3 cluster, every key stored under this
/// installation's prefix (which reads and watches strip again). Clones share one connection.
///
/// Connecting gives up after 5 s and each request after 10 s; every transport or server
/// failure is [`StateError::Unavailable`], for the caller to retry. `Debug` shows only the
/// prefix.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// One keep-alive stream per lease being renewed, kept open between renewals (a
    /// replica renews one lease per connected agent: a thousand agents are a thousand
    /// renewals every 5 s, each then one message on an open stream instead of a TTL query and
    /// a new stream).
    keepers: Arc<std::sync::Mutex<HashMap<i64, Keeper>>>,
}

type Keeper = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

fn unavailable(e: etcd_client::Error) -> StateError {
    StateError::Unavailable(e.to_string())
}

/// A keep-alive's error: an unknown lease is [`StateError::LeaseNotFound`].
fn lease_error(e: etcd_client::Error, lease: LeaseId) -> StateError {
    if e.to_string().contains("not found") { StateError::LeaseNotFound(lease) } else { unavailable(e) }
}

/// A write's error: a value over etcd's request limit is [`StateError::TooLarge`] (retrying
/// cannot help), an unknown lease [`StateError::LeaseNotFound`], anything else unavailable.
fn write_error(key: &str, bytes: usize, lease: Option<LeaseId>, e: etcd_client::Error) -> StateError {
    let text = e.to_string();
    // etcd refuses a request over --max-request-bytes ("request is too large"), and gRPC one
    // over its message limit ("received message larger than max").
    if text.contains("request is too large") || text.contains("larger than max") {
        return StateError::TooLarge { key: key.to_string(), bytes, max: 0 };
    }
    match lease {
        Some(l) if text.contains("lease not found") => StateError::LeaseNotFound(l),
        _ => unavailable(e),
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`host:port`); every key lives under `prefix`.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_with(endpoints, prefix, &crate::EtcdAuth::default()).await
    }

    /// Same, with TLS (and a client certificate) and/or a user, as `auth` says.
    pub async fn connect_with(endpoints: &[String], prefix: &str, auth: &crate::EtcdAuth) -> Result<Self> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).map_err(|e| StateError::Unavailable(format!("etcd TLS file {}: {e}", p.display())))
        };
        let mut endpoints: Vec<String> = endpoints.to_vec();
        if let Some(ca) = &auth.ca {
            let mut tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&auth.cert, &auth.key) {
                tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
            endpoints = endpoints.iter().map(|e| format!("https://{e}")).collect();
        }
        if let (Some(user), Some(password)) = (&auth.user, &auth.password) {
            options = options.with_user(user.clone(), password.clone());
        }
        let client = Client::connect(endpoints, Some(options)).await.map_err(unavailable)?;
        Ok(Self { client, prefix: prefix.trim_end_matches('/').to_string(), keepers: Default::default() })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Writes every `(key, value)` of `puts` (durable) in one transaction if all `compares`
    /// hold; `Ok(false)` when one did not, and nothing was written.
    async fn put_all_when(&self, compares: Vec<Compare>, puts: Vec<(String, Vec<u8>)>) -> Result<bool> {
        // etcd would refuse it too ("duplicate key given in txn request"), as an error that
        // reads like any other; this one says which key.
        crate::distinct(puts.iter().map(|(k, _)| k.as_str()))?;
        let bytes = puts.iter().map(|(k, v)| k.len() + v.len()).sum();
        let first = puts.first().map(|(k, _)| k.clone()).unwrap_or_default();
        let ops: Vec<TxnOp> = puts.into_iter().map(|(k, v)| TxnOp::put(self.full(&k), v, None)).collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let response = self.client.clone().txn(txn).await.map_err(|e| write_error(&first, bytes, None, e))?;
        Ok(response.succeeded())
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = std::str::from_utf8(kv.key())
            .map_err(|e| StateError::Corrupt(format!("non-UTF-8 key: {e}")))?
            .strip_prefix(&self.prefix)
            .unwrap_or_default()
            .to_string();
        Ok(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision() as Revision,
            mod_revision: kv.mod_revision() as Revision,
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        })
    }
}

#[async_trait::async_trait]
impl StateStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let response = self.client.clone().get(self.full(key), None).await.map_err(unavailable)?;
        response.kvs().first().map(|kv| self.convert(kv)).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let response = self
            .client
            .clone()
            .get(self.full(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        response.kvs().iter().map(|kv| self.convert(kv)).collect()
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let full = self.full(prefix).into_bytes();
        let end = prefix_end(&full);
        let (mut from, mut out) = (full, Vec::new());
        // Every page at the first one's revision: one consistent listing.
        let mut revision = 0;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(KEYS_PER_READ)
                .with_revision(revision);
            let response = self.client.clone().get(from.clone(), Some(options)).await.map_err(unavailable)?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                out.push(self.convert(kv)?.key);
            }
            match response.kvs().last() {
                // The next read starts just after the last key read.
                Some(last) if response.more() => from = [last.key(), &[0]].concat(),
                _ => return Ok(out),
            }
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        let options = lease.map(|l| PutOptions::new().with_lease(l.0));
        let bytes = value.len();
        let response = self
            .client
            .clone()
            .put(self.full(key), value, options)
            .await
            .map_err(|e| write_error(key, bytes, lease, e))?;
        Ok(response.header().map_or(0, |h| h.revision() as Revision))
    }

    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>> {
        let full = self.full(key);
        let compare = match expected {
            None => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(full.clone(), CompareOp::Equal, rev as i64),
        };
        let options = lease.map(|l| PutOptions::new().with_lease(l.0));
        let bytes = value.len();
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(full, value, options)]);
        let response = self.client.clone().txn(txn).await.map_err(|e| write_error(key, bytes, lease, e))?;
        if !response.succeeded() {
            return Ok(None);
        }
        Ok(Some(response.header().map_or(0, |h| h.revision() as Revision)))
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let response = self.client.clone().delete(self.full(key), None).await.map_err(unavailable)?;
        Ok(response.deleted() > 0)
    }

    async fn delete_all(&self, keys: &[String]) -> Result<u64> {
        crate::distinct(keys.iter().map(String::as_str))?;
        if keys.is_empty() {
            return Ok(0);
        }
        let ops: Vec<TxnOp> = keys.iter().map(|k| TxnOp::delete(self.full(k), None)).collect();
        let response = self.client.clone().txn(Txn::new().and_then(ops)).await.map_err(unavailable)?;
        Ok(response
            .op_responses()
            .iter()
            .map(|r| match r {
                etcd_client::TxnOpResponse::Delete(d) => d.deleted().max(0) as u64,
                _ => 0,
            })
            .sum())
    }

    async fn put_all_if_absent(&self, absent: &[String], puts: Vec<(String, Vec<u8>)>) -> Result<bool> {
        let compares = absent.iter().map(|k| Compare::create_revision(self.full(k), CompareOp::Equal, 0)).collect();
        self.put_all_when(compares, puts).await
    }

    async fn compare_and_put_all(&self, puts: Vec<(String, Option<Revision>, Vec<u8>)>) -> Result<bool> {
        let compares = puts
            .iter()
            .map(|(k, expected, _)| match expected {
                None => Compare::create_revision(self.full(k), CompareOp::Equal, 0),
                Some(rev) => Compare::mod_revision(self.full(k), CompareOp::Equal, *rev as i64),
            })
            .collect();
        self.put_all_when(compares, puts.into_iter().map(|(k, _, v)| (k, v)).collect()).await
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool> {
        let full = self.full(key);
        let compare = Compare::mod_revision(full.clone(), CompareOp::Equal, expected as i64);
        let txn = Txn::new().when([compare]).and_then([TxnOp::delete(full, None)]);
        let response = self.client.clone().txn(txn).await.map_err(unavailable)?;
        Ok(response.succeeded())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream> {
        let mut options = WatchOptions::new().with_prefix();
        if from != 0 {
            options = options.with_start_revision(from as i64);
        }
        let mut stream = self.client.clone().watch(self.full(prefix), Some(options)).await.map_err(unavailable)?;
        let store = self.clone();
        let events = async_stream(move |tx| async move {
            loop {
                let message = tokio::select! {
                    // Nobody reads the events any more: end the watch (dropping its stream
                    // cancels it in etcd) instead of waiting for the next event to notice.
                    () = tx.closed() => return,
                    message = stream.message() => message,
                };
                match message {
                    Ok(Some(response)) => {
                        if response.compact_revision() > 0 || response.canceled() {
                            let oldest = response.compact_revision().max(0) as Revision;
                            let _ = tx.send(Err(StateError::Compacted { requested: from, oldest })).await;
                            return;
                        }
                        for event in response.events() {
                            let Some(kv) = event.kv() else { continue };
                            let item = store.convert(kv).map(|kv| match event.event_type() {
                                EventType::Put => WatchEvent::Put(kv),
                                EventType::Delete => WatchEvent::Delete { key: kv.key, mod_revision: kv.mod_revision },
                            });
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(unavailable(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(events)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let secs = ttl.as_secs().max(1) as i64;
        let response = self.client.clone().lease_grant(secs, None).await.map_err(unavailable)?;
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        // Taken out while in use and put back only after a full exchange: a call cancelled
        // half-way (a caller's timeout) drops its stream rather than leave an answer unread
        // for the next call.
        let cached = lock(&self.keepers).remove(&lease.0);
        let mut keeper = match cached {
            Some(keeper) => keeper,
            None => self.client.clone().lease_keep_alive(lease.0).await.map_err(|e| lease_error(e, lease))?,
        };
        // etcd answers a keep-alive for an expired lease with a zero TTL (or an error, on a
        // new stream): either way it is gone. A stream that fails is dropped, and the next
        // renewal opens another.
        let renewed = async {
            let (sender, responses) = &mut keeper;
            sender.keep_alive().await.map_err(|e| lease_error(e, lease))?;
            match responses.message().await.map_err(|e| lease_error(e, lease))? {
                Some(r) if r.ttl() > 0 => Ok(()),
                _ => Err(StateError::LeaseNotFound(lease)),
            }
        }
        .await;
        if renewed.is_ok() {
            lock(&self.keepers).insert(lease.0, keeper);
        }
        renewed
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        lock(&self.keepers).remove(&lease.0);
        match self.client.clone().lease_revoke(lease.0).await {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("not found") => Err(StateError::LeaseNotFound(lease)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn revision(&self) -> Result<Revision> {
        let response = self
            .client
            .clone()
            .get(self.full("/"), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(unavailable)?;
        Ok(response.header().map_or(0, |h| h.revision() as Revision))
    }
}

/// A stream fed by a task through a channel (keeps the watch loop readable).
fn async_stream<F, Fut>(body: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<WatchEvent>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(body(tx));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed())
}

/// Keys per keys-only read of [`StateStore::list_keys`].
const KEYS_PER_READ: i64 = 10_000;

/// The first key after every key starting with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|b| *b < 0xff) {
        Some(i) => {
            let mut end = prefix[..=i].to_vec();
            end[i] += 1;
            end
        }
        // Every key: etcd's "\0" end.
        None => vec![0],
    }
}
