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

/// Sends `pieces` (then the end, if `end`) into a channel, as a merge does; sends that find
/// the reader gone are dropped.
fn feed(pieces: Vec<Bytes>, end: bool) -> tokio::sync::mpsc::Receiver<crate::Piece> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        for piece in pieces {
            if tx.send(crate::Piece::Bytes(piece)).await.is_err() {
                return;
            }
        }
        if end {
            let _ = tx.send(crate::Piece::End).await;
        }
    });
    rx
}

/// `put_stream_sized`: committed when the pieces come to the size announced; otherwise, or
/// when the writer goes away after its last byte but before the end, nothing is.
async fn sized_streams(store: &dyn ObjectStore, whole: &[u8]) {
    let cancel = tokio_util::sync::CancellationToken::new();
    let size = whole.len() as u64;
    let pieces = || {
        let cut = crate::s3::PART_SIZE as usize;
        vec![Bytes::copy_from_slice(&whole[..cut]), Bytes::copy_from_slice(&whole[cut..])]
    };
    let key = "conformance/f/sized";
    assert_eq!(store.put_stream_sized(key, size, feed(pieces(), true), &cancel).await.unwrap(), size);
    assert_eq!(read_all(store, key).await, whole);
    store.delete(key).await.unwrap();
    for announced in [size - 1, size + 1] {
        let outcome = store.put_stream_sized(key, announced, feed(pieces(), true), &cancel).await;
        let Err(StorageError::SizeDiffers { announced: a, got, .. }) = outcome else { panic!("{outcome:?}") };
        assert_eq!(a, announced);
        assert!(got > announced || got == size, "{got}");
        assert!(store.head(key).await.unwrap().is_none(), "nothing committed for {announced}");
    }
    // Every byte, then the writer gone: not whole until the end says so.
    let outcome = store.put_stream_sized(key, size, feed(pieces(), false), &cancel).await;
    assert!(matches!(outcome, Err(StorageError::Unfinished(_))), "{outcome:?}");
    assert!(store.head(key).await.unwrap().is_none());
    assert_eq!(store.put_stream_sized(key, 0, feed(Vec::new(), true), &cancel).await.unwrap(), 0);
    assert_eq!(read_all(store, key).await, b"");
    store.delete(key).await.unwrap();
    let cancelled = tokio_util::sync::CancellationToken::new();
    cancelled.cancel();
    let outcome = store.put_stream_sized(key, size, feed(pieces(), true), &cancelled).await;
    assert!(matches!(outcome, Err(StorageError::Cancelled)), "{outcome:?}");
    assert!(store.head(key).await.unwrap().is_none());
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

    // Streamed in pieces: committed only at the end; a writer that goes away leaves nothing.
    let part: Vec<u8> = (0..(crate::s3::PART_SIZE as u32)).map(|i| (i % 253) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let writer = {
        let part = Bytes::from(part.clone());
        tokio::spawn(async move {
            for piece in [part.clone(), part, Bytes::from_static(b"tail")] {
                tx.send(crate::Piece::Bytes(piece)).await.unwrap();
            }
            tx.send(crate::Piece::End).await.unwrap();
        })
    };
    let size = store.put_stream("conformance/d/streamed", rx, &Default::default()).await.unwrap();
    writer.await.unwrap();
    let mut whole = part.clone();
    whole.extend_from_slice(&part);
    whole.extend_from_slice(b"tail");
    assert_eq!(size, whole.len() as u64);
    assert_eq!(read_all(store, "conformance/d/streamed").await, whole);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(crate::Piece::Bytes(Bytes::from(part))).await.unwrap();
    drop(tx);
    let outcome = store.put_stream("conformance/d/unfinished", rx, &Default::default()).await;
    assert!(matches!(outcome, Err(StorageError::Unfinished(_))), "{outcome:?}");
    assert!(store.head("conformance/d/unfinished").await.unwrap().is_none());
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(crate::Piece::End).await.unwrap();
    assert_eq!(store.put_stream("conformance/d/empty", rx, &Default::default()).await.unwrap(), 0);
    assert_eq!(read_all(store, "conformance/d/empty").await, b"");
    for key in ["conformance/d/streamed", "conformance/d/empty"] {
        store.delete(key).await.unwrap();
    }
    sized_streams(store, &whole).await;

    // Many at once: missing ones are not an error; a bad key refuses the whole call first.
    let many: Vec<String> = (0..5).map(|i| format!("conformance/e/{i}")).collect();
    for key in &many {
        store.put(key, Bytes::from_static(b"x")).await.unwrap();
    }
    let bad = vec![many[0].clone(), "a/../b".to_string()];
    assert!(matches!(store.delete_many(&bad).await, Err(StorageError::InvalidKey(..))));
    assert!(store.head(&many[0]).await.unwrap().is_some(), "nothing deleted");
    let doomed = vec![many[0].clone(), "conformance/e/missing".to_string(), many[2].clone(), many[4].clone()];
    store.delete_many(&doomed).await.unwrap();
    let left: Vec<String> = store.list("conformance/e/").await.unwrap().into_iter().map(|m| m.key).collect();
    assert_eq!(left, [many[1].clone(), many[3].clone()]);
    store.delete_many(&[]).await.unwrap();
    store.delete_many(&left).await.unwrap();
    assert!(store.list("conformance/e/").await.unwrap().is_empty());
}
