//! The state-store seam: everything the coordinators share (captures, per-PoP jobs, agents,
//! bucket ownerships, hashed tokens) lives behind [`StateStore`].
//!
//! The trait is shaped after etcd's data model so the etcd backend is a thin mapping:
//! a flat, ordered key space; a global, monotonically increasing revision; per-key
//! `mod_revision` for compare-and-swap; prefix watches that can start at a past revision;
//! and leases that delete their keys when they are not kept alive.
//!
//! Backends: [`embedded::EmbeddedStore`] (one process, persisted to a local directory; the
//! default) and [`etcd::EtcdStore`] (shared by several coordinators). Both pass the same
//! conformance suite ([`testsuite`]). The backend is chosen in exactly one place: [`open`].
//!
//! What this crate does not do: it knows nothing about captures or accounts; the typed key
//! layout lives with the coordinator (`coordinator/src/repo.rs`).

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;

pub mod embedded;
pub mod etcd;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

#[cfg(test)]
mod config_tests {
    use super::StateConfig;
    use std::path::Path;

    #[test]
    fn parses_state_flag() {
        let d = Path::new("/d");
        assert!(matches!(StateConfig::parse("embedded", d), Ok(StateConfig::Embedded { .. })));
        let StateConfig::Etcd { endpoints, prefix, .. } =
            StateConfig::parse("etcd://a:2379,b:2379/edge/cap/", d).unwrap()
        else {
            panic!()
        };
        assert_eq!(endpoints, ["a:2379", "b:2379"]);
        assert_eq!(prefix, "/edge/cap");
        let StateConfig::Etcd { prefix, .. } = StateConfig::parse("etcd://127.0.0.1:23790", d).unwrap() else {
            panic!()
        };
        assert_eq!(prefix, "");
        for bad in
            ["etcd://", "etcd://host", "etcd://host:0", "etcd://:1", "redis://x:1", "etcd://a:1/x y", "etcd://a:1/a//b"]
        {
            assert!(StateConfig::parse(bad, d).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_bad_connection_settings_with_the_reason() {
        let d = Path::new("/d");
        for (bad, says) in [
            ("etcd://a:1?bogus=1", "unknown parameter"),
            ("etcd://a:1?ca=", "needs a value"),
            ("etcd://a:1?ca=/c&cert=/x", "cert and key go together"),
            ("etcd://a:1?cert=/x&key=/y", "needs ca="),
            ("etcd://a:1?user=u&password=p", "password_file"),
            ("etcd://a:1?user=u&password_file=/nonexistent/edgecap-password", "password_file"),
        ] {
            let e = StateConfig::parse(bad, d).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let StateConfig::Etcd { auth, .. } = StateConfig::parse("etcd://a:1/p?ca=/c&cert=/x&key=/y", d).unwrap() else {
            panic!()
        };
        assert_eq!(auth.ca.as_deref(), Some(Path::new("/c")));
        assert!(auth.user.is_none() && auth.password.is_none());
    }
}

/// A store-wide revision. Every mutation increases it by one.
pub type Revision = u64;

/// A lease id. Keys attached to a lease are deleted when the lease expires or is revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// One stored key with its revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key as the caller wrote it (the etcd backend strips its installation prefix).
    pub key: String,
    /// The stored bytes; the store never looks inside them.
    pub value: Vec<u8>,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to this key; the token for [`StateStore::compare_and_put`].
    pub mod_revision: Revision,
    /// The lease the key was written with; `None` for a durable key. A leased key is deleted
    /// when its lease ends, and the embedded store does not bring it back after a restart.
    pub lease: Option<LeaseId>,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created or overwritten; carries the key as it is now.
    Put(KeyValue),
    /// A key was deleted, by [`StateStore::delete`] or because its lease ended.
    Delete {
        /// The deleted key.
        key: String,
        /// Revision of the deletion.
        mod_revision: Revision,
    },
}

impl WatchEvent {
    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }

    /// The revision of the change (a put's new `mod_revision`, a deletion's revision). A
    /// watcher that restarts after this event passes `revision() + 1` as `from`.
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// Errors, sorted by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store cannot be reached now; retry with backoff (API writes answer 503).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that is gone; re-list and watch from the current revision.
    #[error("revision {requested} is compacted (oldest available {oldest})")]
    Compacted {
        /// The revision the watch asked to start from.
        requested: Revision,
        /// The oldest revision still available, or `0` when unknown (a watcher that fell
        /// behind the live stream, or etcd cancelling the watch).
        oldest: Revision,
    },
    /// The lease expired or never existed.
    #[error("lease {0:?} not found")]
    LeaseNotFound(LeaseId),
    /// Local persistence failed.
    #[error("state store i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Persisted data could not be read back.
    #[error("state store data is corrupt: {0}")]
    Corrupt(String),
    /// The value is larger than the store takes (etcd's request limit, 1.5 MiB by default).
    /// Retrying the same write cannot help: write less.
    #[error("state store refuses {key}: {bytes} bytes, more than the {max} it takes")]
    TooLarge {
        /// The key that was being written.
        key: String,
        /// The size of the refused value (0 when the store did not say).
        bytes: usize,
        /// The store's limit (0 when the store did not say).
        max: usize,
    },
    /// A write of several keys names this key twice: etcd refuses such a transaction, and
    /// the embedded store does the same so the two agree. Retrying the same write cannot help.
    #[error("state store refuses a write that names {0} twice")]
    DuplicateKey(String),
    /// Another process holds the embedded store's directory.
    #[error("state directory {0} is in use by another process (is another coordinator running on it?)")]
    Locked(String),
}

impl StateError {
    /// Whether retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StateError::Unavailable(_) | StateError::Io(_))
    }
}

/// Refuses keys of one multi-key write that repeat ([`StateError::DuplicateKey`]).
pub(crate) fn distinct<'a>(keys: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if !seen.insert(key) {
            return Err(StateError::DuplicateKey(key.to_string()));
        }
    }
    Ok(())
}

/// This crate's result; the error is [`StateError`] unless said otherwise.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// A stream of changes under a prefix, in revision order.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent>> + Send>>;

/// The shared, revisioned key-value store. See the crate docs.
#[async_trait::async_trait]
pub trait StateStore: fmt::Debug + Send + Sync + 'static {
    /// The key as it is now; `None` if it does not exist (never written, deleted, or its
    /// lease ended).
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// All keys starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;
    /// The names of the keys starting with `prefix`, in key order, without their values
    /// (etcd: keys-only reads of at most 10 000 keys each).
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>>;
    /// Unconditional write. Returns the new revision.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision>;
    /// Writes only if the key's `mod_revision` equals `expected` (`None`: the key must not
    /// exist). `Ok(None)` means the comparison failed and nothing was written.
    async fn compare_and_put(
        &self,
        key: &str,
        expected: Option<Revision>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Option<Revision>>;
    /// Deletes a key; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// Deletes every key of `keys` in one transaction (those absent are passed over); returns
    /// how many existed. etcd takes at most 128 keys; a key named twice is refused
    /// ([`StateError::DuplicateKey`]) and nothing is deleted.
    async fn delete_all(&self, keys: &[String]) -> Result<u64>;
    /// Writes every `(key, value)` of `puts` (durable) in one transaction, if no key of
    /// `absent` exists; `Ok(false)`: one did, and nothing was written. etcd takes at most 128
    /// keys in `puts` (and in `absent`), and the whole under its request limit (`TooLarge`);
    /// a key named twice in `puts` is refused ([`StateError::DuplicateKey`]).
    async fn put_all_if_absent(&self, absent: &[String], puts: Vec<(String, Vec<u8>)>) -> Result<bool>;
    /// Writes every `(key, expected, value)` in one transaction if each key's `mod_revision`
    /// is still its `expected`, `None` meaning the key must be absent (compare-and-put of many
    /// keys, all or nothing); `Ok(false)`: one was written since (or is gone, or exists), and
    /// nothing was written. Same limits as [`StateStore::put_all_if_absent`].
    async fn compare_and_put_all(&self, puts: Vec<(String, Option<Revision>, Vec<u8>)>) -> Result<bool>;
    /// Deletes a key only if its `mod_revision` is `expected` (it was not written since);
    /// returns whether it was deleted.
    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool>;
    /// Changes under `prefix` with revision `>= from` (`from == 0`: only future changes).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream>;
    /// A new lease that ends `ttl` after it was granted or last kept alive, deleting every
    /// key written with it. etcd counts in whole seconds (`ttl` is rounded down, at least
    /// one); the embedded store checks expiry every 100 ms, so a lease may outlive its TTL by
    /// that much.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Renews a lease for its full TTL. `LeaseNotFound` once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Ends a lease now, deleting its keys.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// The store's current revision.
    async fn revision(&self) -> Result<Revision>;
}

/// Which backend to use; the only place backends are named.
#[derive(Clone, Debug)]
pub enum StateConfig {
    /// Persist under this directory (created if missing).
    Embedded {
        /// Holds the log, `state.log`; one store at a time may use it (nothing locks it).
        dir: PathBuf,
    },
    /// In memory only (tests).
    Memory,
    /// etcd: endpoints (`host:port`), the key prefix this installation uses, and how to
    /// authenticate (TLS client certificate, user and password).
    Etcd {
        /// One `host:port` per etcd member; `https://` is put in front when `auth.ca` is set.
        endpoints: Vec<String>,
        /// Put in front of every key: empty, or `/`-led without a trailing `/` (as
        /// [`StateConfig::parse`] makes it). Installations sharing an etcd use different ones.
        prefix: String,
        /// TLS and user settings; the default is plaintext and no authentication.
        auth: EtcdAuth,
    },
}

/// How a coordinator proves itself to etcd. `Debug` never shows the password.
#[derive(Clone, Default)]
pub struct EtcdAuth {
    /// CA that signed etcd's server certificate: TLS to etcd (endpoints become https).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (etcd's `--client-cert-auth`).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`, PEM. [`StateConfig::parse`] refuses one without the other; a
    /// `cert` without `key` (or the reverse) is ignored by the etcd backend.
    pub key: Option<PathBuf>,
    /// etcd user (role-based access); the password comes from `password_file` or the
    /// `EDGECAP_ETCD_PASSWORD` environment variable, never from the URL.
    pub user: Option<String>,
    /// The password of `user`, filled in by [`StateConfig::parse`] whenever `user` is set;
    /// used only together with `user`.
    pub password: Option<String>,
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl StateConfig {
    /// Parses `--state`: `embedded` (under `data_dir`) or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?ca=PATH&cert=PATH&key=PATH&user=NAME&password_file=PATH]`
    /// (`ca` turns TLS on; `cert`+`key` are a client certificate; the password is read from
    /// `password_file`, else from `EDGECAP_ETCD_PASSWORD`).
    pub fn parse(text: &str, data_dir: &std::path::Path) -> std::result::Result<Self, String> {
        if text == "embedded" {
            return Ok(StateConfig::Embedded { dir: data_dir.join("state") });
        }
        let rest = text
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("--state {text:?}: use embedded or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut auth = EtcdAuth::default();
        let mut password_file = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if v.is_empty() {
                return Err(format!("--state: parameter {k:?} needs a value"));
            }
            match k {
                "ca" => auth.ca = Some(PathBuf::from(v)),
                "cert" => auth.cert = Some(PathBuf::from(v)),
                "key" => auth.key = Some(PathBuf::from(v)),
                "user" => auth.user = Some(v.to_string()),
                "password_file" => password_file = Some(PathBuf::from(v)),
                "password" => return Err("--state: a password in the URL would show in process lists; use password_file=PATH or EDGECAP_ETCD_PASSWORD".into()),
                other => return Err(format!("--state: unknown parameter {other:?} (known: ca, cert, key, user, password_file)")),
            }
        }
        if auth.cert.is_some() != auth.key.is_some() {
            return Err("--state: cert and key go together".into());
        }
        if auth.cert.is_some() && auth.ca.is_none() {
            return Err("--state: a client certificate needs ca= (TLS to etcd)".into());
        }
        if auth.user.is_some() {
            auth.password = match password_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| format!("--state: password_file {}: {e}", path.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .to_string(),
                ),
                None => Some(
                    std::env::var("EDGECAP_ETCD_PASSWORD")
                        .map_err(|_| "--state: user= needs password_file=PATH or EDGECAP_ETCD_PASSWORD".to_string())?,
                ),
            };
        }
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoints: Vec<String> = hosts.split(',').map(str::trim).map(String::from).collect();
        for e in &endpoints {
            let valid = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !valid {
                return Err(format!("--state {text:?}: endpoint {e:?} is not HOST:PORT"));
            }
        }
        if prefix.contains("//") || prefix.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("--state {text:?}: prefix {prefix:?} is not a clean key prefix"));
        }
        let prefix = if prefix.is_empty() { String::new() } else { format!("/{}", prefix.trim_end_matches('/')) };
        Ok(StateConfig::Etcd { endpoints, prefix, auth })
    }
}

/// Opens the configured backend. Must be called inside a Tokio runtime (lease expiry runs
/// as a background task).
pub async fn open(config: &StateConfig) -> Result<Arc<dyn StateStore>> {
    match config {
        StateConfig::Embedded { dir } => Ok(Arc::new(embedded::EmbeddedStore::open(dir)?)),
        StateConfig::Memory => Ok(Arc::new(embedded::EmbeddedStore::in_memory())),
        StateConfig::Etcd { endpoints, prefix, auth } => {
            Ok(Arc::new(etcd::EtcdStore::connect_with(endpoints, prefix, auth).await?))
        }
    }
}
