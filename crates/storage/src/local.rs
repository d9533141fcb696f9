//! Objects as files under a root directory. Writes go to a temporary file in the same
//! directory, are fsynced, then renamed into place, so readers see whole objects only.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::{ObjectMeta, ObjectReader, ObjectStore, Result, StorageError, validate_key};

/// The local-directory [`ObjectStore`]: object `key` is the file `root/key`.
///
/// A write goes to a hidden temporary file beside its target (`.{uuid}.edgecap-tmp`) and
/// is renamed into place after an fsync; a failed or cancelled write removes it, a crash may
/// leave it behind. Keys ending in `.edgecap-tmp` are refused and such files never listed.
/// `put_file` checks for cancellation before and after its copy, not during it. `list`
/// walks the whole tree under the root, whatever the prefix.
#[derive(Debug)]
pub struct LocalDirStore {
    root: PathBuf,
}

const TMP_SUFFIX: &str = ".edgecap-tmp";

impl LocalDirStore {
    /// A store rooted at `root`, created (with its parents) if missing; files already under
    /// it are its objects.
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)?;
        Ok(Self { root: root.to_path_buf() })
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        if key.ends_with(TMP_SUFFIX) {
            return Err(StorageError::InvalidKey(key.to_string(), "reserved suffix"));
        }
        Ok(self.root.join(key))
    }

    async fn temp_for(&self, path: &Path) -> Result<PathBuf> {
        let parent = path.parent().unwrap_or(&self.root);
        tokio::fs::create_dir_all(parent).await?;
        Ok(parent.join(format!(".{}{TMP_SUFFIX}", uuid::Uuid::new_v4().simple())))
    }

    async fn commit(tmp: &Path, path: &Path) -> Result<()> {
        tokio::fs::rename(tmp, path).await?;
        if let Some(parent) = path.parent() {
            tokio::fs::File::open(parent).await?.sync_all().await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalDirStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        let path = self.path(key)?;
        let tmp = self.temp_for(&path).await?;
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            file.write_all(&body).await?;
            file.sync_all().await?;
            Self::commit(&tmp, &path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn put_file(&self, key: &str, source: &Path, cancel: &CancellationToken) -> Result<u64> {
        let path = self.path(key)?;
        let tmp = self.temp_for(&path).await?;
        // A local copy is short: cancellation is checked before and after it rather than by
        // dropping it half-way (the copy runs on a blocking thread and would go on).
        let result = async {
            if cancel.is_cancelled() {
                return Err(StorageError::Cancelled);
            }
            let size = tokio::fs::copy(source, &tmp).await?;
            tokio::fs::File::open(&tmp).await?.sync_all().await?;
            if cancel.is_cancelled() {
                return Err(StorageError::Cancelled);
            }
            Self::commit(&tmp, &path).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn put_stream(
        &self,
        key: &str,
        mut pieces: tokio::sync::mpsc::Receiver<crate::Piece>,
        cancel: &CancellationToken,
    ) -> Result<u64> {
        use tokio::io::AsyncWriteExt as _;
        let path = self.path(key)?;
        let tmp = self.temp_for(&path).await?;
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut size = 0u64;
            loop {
                let piece = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(StorageError::Cancelled),
                    piece = pieces.recv() => piece,
                };
                match crate::piece_bytes(piece, key)? {
                    Some(bytes) => {
                        file.write_all(&bytes).await?;
                        size += bytes.len() as u64;
                    }
                    None => break,
                }
            }
            file.sync_all().await?;
            Self::commit(&tmp, &path).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn get(&self, key: &str) -> Result<(ObjectMeta, ObjectReader)> {
        let path = self.path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(key.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata().await?.len();
        Ok((ObjectMeta { key: key.to_string(), size }, Box::pin(file)))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { key: key.to_string(), size: m.len() })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        let walk = tokio::task::spawn_blocking(move || -> Result<Vec<ObjectMeta>> {
            let mut out = Vec::new();
            let mut stack = vec![root.clone()];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                for entry in entries {
                    let entry = entry?;
                    let path = entry.path();
                    let kind = entry.file_type()?;
                    if kind.is_dir() {
                        stack.push(path);
                        continue;
                    }
                    let Ok(rel) = path.strip_prefix(&root) else { continue };
                    let key = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
                    if key.ends_with(TMP_SUFFIX) || !key.starts_with(&prefix) {
                        continue;
                    }
                    out.push(ObjectMeta { key, size: entry.metadata()?.len() });
                }
            }
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        });
        walk.await.map_err(|e| StorageError::Io(std::io::Error::other(e)))?
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        let paths = keys.iter().map(|k| self.path(k)).collect::<Result<Vec<_>>>()?;
        // Every one is tried; the first failure is returned at the end.
        let mut first_error = None;
        for path in paths {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_error.get_or_insert(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())).into());
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::testsuite::run_conformance(std::sync::Arc::new(LocalDirStore::open(dir.path()).unwrap())).await;
    }

    /// An object that cannot be deleted does not keep the ones after it: each is tried, and
    /// the error names the first that failed.
    #[tokio::test]
    async fn delete_many_tries_every_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirStore::open(dir.path()).unwrap();
        store.put("a/one", Bytes::from_static(b"1")).await.unwrap();
        store.put("c/three", Bytes::from_static(b"3")).await.unwrap();
        // A directory where an object is named: remove_file refuses it.
        std::fs::create_dir_all(dir.path().join("b/stuck")).unwrap();
        let keys = ["a/one", "b/stuck", "c/three"].map(String::from);
        let error = store.delete_many(&keys).await.unwrap_err().to_string();
        assert!(error.contains("b/stuck"), "{error}");
        assert!(store.head("a/one").await.unwrap().is_none());
        assert!(store.head("c/three").await.unwrap().is_none(), "tried after the failure");
    }
}
