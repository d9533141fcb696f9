//! The object-store seam: where PCAPs (merged sample captures now; full-capture shards and
//! merged files with the S3 issue) are kept.
//!
//! Keys are `/`-separated relative paths (`accounts/{account}/pcaps/{id}.pcap`); backends map
//! them to files or objects. Writes are all-or-nothing: a reader never sees half an object.
//! Large bodies are streamed from a local file ([`ObjectStore::put_file`]) so that a backend
//! can use multipart upload; reads are streamed ([`ObjectStore::get`]).
//!
//! Backends: [`local::LocalDirStore`] (the default, for sample captures) and [`s3::S3Store`]
//! (full captures' buckets, one store per `destination_conf`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncRead;
use tokio_util::sync::CancellationToken;

pub mod local;
pub mod s3;
mod sized;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

/// A streamed object body.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// Facts about a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The store-relative key (without an S3 store's prefix).
    pub key: String,
    /// Size of the body in bytes.
    pub size: u64,
}

/// Errors, sorted by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object does not exist. Carries the key, or for S3 calls other than `get` the
    /// operation and object (`complete multipart upload s3://bucket/key`).
    #[error("object not found: {0}")]
    NotFound(String),
    /// The key is not a safe relative path ([`validate_key`]), or uses a name the backend
    /// reserves; carries the key and the reason. Retrying will not help.
    #[error("invalid object key {0:?}: {1}")]
    InvalidKey(String, &'static str),
    /// The store cannot be reached now; retry with backoff.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The store answered and refused (no such bucket, access denied, ...): retrying will not help.
    #[error("storage refused: {0}")]
    Rejected(String),
    /// A local file operation failed: reading the file given to `put_file`, or, for the
    /// local backend, the store's own directory (full disk, permissions). Not retryable: a
    /// missing file or a full disk does not fix itself within a backoff.
    #[error("storage i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The caller cancelled the operation; whatever it had started was cleaned up.
    #[error("cancelled")]
    Cancelled,
    /// [`ObjectStore::put_stream`]: the writer went away before [`Piece::End`]; nothing was
    /// committed (the writer's own error says why).
    #[error("{0}: its writer stopped before the end; nothing was written")]
    Unfinished(String),
    /// [`ObjectStore::put_stream_sized`]: the pieces did not come to the size announced;
    /// nothing was committed. `got` is what came before the end, or the first count past
    /// `announced`.
    #[error("{key}: {got} bytes were written where {announced} were announced; nothing was committed")]
    SizeDiffers {
        /// The object's key.
        key: String,
        /// The size given to `put_stream_sized`.
        announced: u64,
        /// What the pieces came to.
        got: u64,
    },
}

impl StorageError {
    /// Whether retrying the same call later may succeed: only for
    /// [`StorageError::Unavailable`]. The S3 backend has already made up to three attempts
    /// before it returns one.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }
}

/// This crate's result; the error is [`StorageError`] unless said otherwise.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A piece of an object written by [`ObjectStore::put_stream`].
#[derive(Debug)]
pub enum Piece {
    /// The next bytes. On S3 each is one part of a multipart upload, so every piece but the
    /// last must be at least 5 MiB ([`s3::PART_SIZE`] is a good size).
    Bytes(Bytes),
    /// The object is whole: commit it.
    End,
}

/// What a received piece means for `key`: bytes, the end (`None`), or (the sender gone
/// before the end) [`StorageError::Unfinished`].
pub(crate) fn piece_bytes(piece: Option<Piece>, key: &str) -> Result<Option<Bytes>> {
    match piece {
        Some(Piece::Bytes(bytes)) => Ok(Some(bytes)),
        Some(Piece::End) => Ok(None),
        None => Err(StorageError::Unfinished(key.to_string())),
    }
}

/// Where objects are kept: whole bodies under `/`-separated keys (see [`validate_key`]).
/// Every write replaces an object at once, so a reader sees the old body or the new one,
/// never a mix. A method given a key refuses an invalid one with [`StorageError::InvalidKey`]
/// before doing anything (`list` takes any prefix).
#[async_trait::async_trait]
pub trait ObjectStore: fmt::Debug + Send + Sync + 'static {
    /// Stores a small body in one call.
    async fn put(&self, key: &str, body: Bytes) -> Result<()>;
    /// Streams a local file into `key` (multipart where the backend has it); returns its size.
    /// When `cancel` fires the upload stops and what it started is cleaned up (temporary file
    /// removed, multipart upload aborted) before [`StorageError::Cancelled`] is returned.
    async fn put_file(&self, key: &str, path: &Path, cancel: &CancellationToken) -> Result<u64>;
    /// Writes `key` from pieces produced while it is written (no local copy of the whole):
    /// a multipart upload on S3, a temporary file renamed in on a local directory. The object
    /// appears only when [`Piece::End`] arrives; if the sender goes away without it, a write
    /// fails, or `cancel` fires, nothing is committed (the upload is aborted, the temporary
    /// file removed). Returns the object's size.
    async fn put_stream(
        &self,
        key: &str,
        pieces: tokio::sync::mpsc::Receiver<Piece>,
        cancel: &CancellationToken,
    ) -> Result<u64>;
    /// [`ObjectStore::put_stream`] for an object whose size is known before its first byte
    /// (a merge of files whose sizes were recorded). The pieces must come to exactly `size`
    /// bytes before [`Piece::End`]; otherwise nothing is committed and the call fails with
    /// [`StorageError::SizeDiffers`]. A backend may use the size to write the object in one
    /// request: S3 sends up to [`s3::SINGLE_PUT_MAX`] as one streamed `PutObject` when its
    /// payload is not signed, so no multipart completion follows the last byte (some stores,
    /// s3s-fs among them, complete one by copying the whole object). By default, `put_stream`
    /// with the size checked on the way.
    async fn put_stream_sized(
        &self,
        key: &str,
        size: u64,
        pieces: tokio::sync::mpsc::Receiver<Piece>,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        sized::through_put_stream(self, key, size, pieces, cancel).await
    }
    /// Streams an object. `NotFound` if it does not exist.
    async fn get(&self, key: &str) -> Result<(ObjectMeta, ObjectReader)>;
    /// The object's key and size without its body; `None` if it does not exist.
    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>>;
    /// Objects whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Deletes several objects in as few requests as the backend allows (S3: `DeleteObjects`,
    /// 1000 keys to a request, one request per object where the store refuses those);
    /// missing objects are not an error. Every key is checked before anything is deleted;
    /// then every object is tried, and the error (the first) names one that was not deleted.
    async fn delete_many(&self, keys: &[String]) -> Result<()>;
}

/// Which backend to use.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// Files under a local directory ([`local::LocalDirStore`]): the default, for sample
    /// captures.
    LocalDir {
        /// The directory objects live in (created if missing); keys are paths under it.
        root: PathBuf,
    },
    /// A bucket and prefix (what several coordinator replicas share); credentials from the
    /// configuration, else the AWS chain.
    S3 {
        /// Bucket, key prefix, region and endpoint.
        location: s3::S3Location,
        /// The bucket's access key; `None` uses the standard AWS credential chain.
        credentials: Option<s3::StaticCredentials>,
        /// Whether that chain may ask the EC2 instance-metadata service (off by default).
        instance_metadata: bool,
    },
}

/// Opens the configured backend. A local directory is created if missing (failing with
/// `Io`); an S3 store sends no request here, so a wrong bucket or bad credentials show on
/// first use.
pub async fn open(config: &StorageConfig) -> Result<Arc<dyn ObjectStore>> {
    match config {
        StorageConfig::LocalDir { root } => Ok(Arc::new(local::LocalDirStore::open(root)?)),
        StorageConfig::S3 { location, credentials, instance_metadata } => {
            Ok(Arc::new(s3::S3Store::connect(location.clone(), credentials.clone(), *instance_metadata).await?))
        }
    }
}

/// Checks that a key is a relative path of plain segments (no `..`, no empty segment, no
/// leading `/`, no NUL), so no backend can be steered outside its root.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |why| Err(StorageError::InvalidKey(key.to_string(), why));
    if key.is_empty() || key.len() > 1024 {
        return bad("length must be 1..=1024");
    }
    if key.starts_with('/') {
        return bad("must be relative");
    }
    for segment in key.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return bad("empty, '.' or '..' segment");
        }
        if segment.contains('\0') || segment.contains('\\') {
            return bad("NUL or backslash");
        }
    }
    Ok(())
}
