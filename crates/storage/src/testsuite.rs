#![allow(clippy::unwrap_used, reason = "a conformance suite: a failed unwrap is a failed check")]
//! One conformance suite for every [`ObjectStore`] backend.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncReadExt;

use crate::{ObjectStore, StorageError};

async fn read_all(store: &dyn ObjectStore, key: &str) -> Vec<u8> {
    let (meta, mut reader) = store.get(key).await.unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    assert_eq!(meta.size, out.len() as u64);
    out
}

/// Runs every check against `store`, which must be empty under `conformance/`.
pub async fn run_conformance(store: Arc<dyn ObjectStore>) {
    let store = &*store;
    store.put("conformance/a/one", Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(read_all(store, "conformance/a/one").await, b"hello");
    store.put("conformance/a/one", Bytes::from_static(b"again")).await.unwrap();
    assert_eq!(read_all(store, "conformance/a/one").await, b"again");

    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let src = std::env::temp_dir().join(format!("edgecap-conformance-{}", std::process::id()));
    std::fs::write(&src, &big).unwrap();
    assert_eq!(store.put_file("conformance/b/big", &src, &Default::default()).await.unwrap(), big.len() as u64);
    // A cancelled upload leaves nothing behind and says so.
    let cancelled = tokio_util::sync::CancellationToken::new();
    cancelled.cancel();
    let outcome = store.put_file("conformance/c/cancelled", &src, &cancelled).await;
    assert!(matches!(outcome, Err(StorageError::Cancelled)), "{outcome:?}");
    assert!(store.head("conformance/c/cancelled").await.unwrap().is_none());
    std::fs::remove_file(&src).unwrap();
    assert_eq!(read_all(store, "conformance/b/big").await, big);

    let keys: Vec<String> = store.list("conformance/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(keys, ["conformance/a/one", "conformance/b/big"]);
    assert_eq!(store.list("conformance/a").await.unwrap().len(), 1);
    assert_eq!(store.head("conformance/b/big").await.unwrap().unwrap().size, big.len() as u64);
    assert!(store.head("conformance/missing").await.unwrap().is_none());
    assert!(matches!(store.get("conformance/missing").await, Err(StorageError::NotFound(_))));

    store.delete("conformance/a/one").await.unwrap();
    store.delete("conformance/a/one").await.unwrap();
    assert!(store.head("conformance/a/one").await.unwrap().is_none());

    for bad in ["", "/abs", "a/../b", "a//b", "..", "a/./b"] {
        assert!(matches!(store.put(bad, Bytes::new()).await, Err(StorageError::InvalidKey(..))), "{bad:?}");
    }
    store.delete("conformance/b/big").await.unwrap();
}
