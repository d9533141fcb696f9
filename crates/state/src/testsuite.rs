#![allow(clippy::unwrap_used, reason = "a conformance suite: a failed unwrap is a failed check")]
//! One conformance suite for every [`StateStore`] backend (embedded now, etcd with its
//! issue): compare-and-swap, prefix reads, watches from a revision, leases and expiry.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::{StateError, StateStore, WatchEvent};

/// Runs every check against `store`, which must be empty under `/conformance/`.
pub async fn run_conformance(store: Arc<dyn StateStore>) {
    cas(&*store).await;
    prefix_list(&*store).await;
    watch_from_revision(&*store).await;
    leases(&*store).await;
    too_large(&*store).await;
}

/// A value over etcd's request limit is refused as `TooLarge` (not retryable), by the
/// embedded store too, and nothing is written; so is a transaction of values each under it
/// but over it together.
async fn too_large(store: &dyn StateStore) {
    let key = "/conformance/large";
    let value = vec![b'x'; 2 << 20];
    let e = store.put(key, value.clone(), None).await.unwrap_err();
    assert!(matches!(e, StateError::TooLarge { .. }) && !e.is_retryable(), "{e}");
    let e = store.compare_and_put(key, None, value, None).await.unwrap_err();
    assert!(matches!(e, StateError::TooLarge { .. }), "{e}");
    assert!(store.get(key).await.unwrap().is_none());
    let (a, b) = ("/conformance/large/a".to_string(), "/conformance/large/b".to_string());
    let halves = || vec![(a.clone(), vec![b'x'; 1 << 20]), (b.clone(), vec![b'y'; 1 << 20])];
    let e = store.put_all_if_absent(&[], halves()).await.unwrap_err();
    assert!(matches!(e, StateError::TooLarge { .. }) && !e.is_retryable(), "{e}");
    let created = halves().into_iter().map(|(k, v)| (k, None, v)).collect();
    assert!(matches!(store.compare_and_put_all(created).await, Err(StateError::TooLarge { .. })));
    assert!(store.get(&a).await.unwrap().is_none() && store.get(&b).await.unwrap().is_none());
}

async fn cas(store: &dyn StateStore) {
    let key = "/conformance/cas";
    let r1 = store.compare_and_put(key, None, b"a".to_vec(), None).await.unwrap().expect("create");
    assert!(store.compare_and_put(key, None, b"b".to_vec(), None).await.unwrap().is_none(), "create twice");
    assert!(store.compare_and_put(key, Some(r1 + 1000), b"b".to_vec(), None).await.unwrap().is_none());
    let r2 = store.compare_and_put(key, Some(r1), b"b".to_vec(), None).await.unwrap().expect("swap");
    assert!(r2 > r1);
    let kv = store.get(key).await.unwrap().unwrap();
    assert_eq!(kv.value, b"b");
    assert_eq!(kv.mod_revision, r2);
    assert_eq!(kv.create_revision, r1);
    assert!(store.delete(key).await.unwrap());
    assert!(!store.delete(key).await.unwrap());
    assert_eq!(store.get(key).await.unwrap(), None);

    // Compare-and-delete: only the revision last written deletes the key.
    let r1 = store.put(key, b"a".to_vec(), None).await.unwrap();
    let r2 = store.put(key, b"b".to_vec(), None).await.unwrap();
    assert!(!store.compare_and_delete(key, r1).await.unwrap(), "written since");
    assert_eq!(store.get(key).await.unwrap().unwrap().value, b"b");
    assert!(store.compare_and_delete(key, r2).await.unwrap());
    assert_eq!(store.get(key).await.unwrap(), None);
    assert!(!store.compare_and_delete(key, r2).await.unwrap(), "absent");

    // Several keys in one transaction, only if the guarded ones are absent.
    let (a, b) = ("/conformance/all/a".to_string(), "/conformance/all/b".to_string());
    let puts = || vec![(a.clone(), b"1".to_vec()), (b.clone(), b"2".to_vec())];
    assert!(store.put_all_if_absent(std::slice::from_ref(&a), puts()).await.unwrap());
    assert_eq!(store.get(&b).await.unwrap().unwrap().value, b"2");
    store.delete(&b).await.unwrap();
    assert!(!store.put_all_if_absent(std::slice::from_ref(&a), puts()).await.unwrap(), "a exists");
    assert!(store.get(&b).await.unwrap().is_none(), "nothing written");

    // Compare-and-put of several keys: all written only if none was written since.
    let ra = store.put(&a, b"a1".to_vec(), None).await.unwrap();
    let rb = store.put(&b, b"b1".to_vec(), None).await.unwrap();
    assert!(
        store
            .compare_and_put_all(vec![(a.clone(), Some(ra), b"a2".to_vec()), (b.clone(), Some(rb), b"b2".to_vec())])
            .await
            .unwrap()
    );
    let (ka, kb) = (store.get(&a).await.unwrap().unwrap(), store.get(&b).await.unwrap().unwrap());
    assert_eq!((ka.value.as_slice(), kb.value.as_slice()), (&b"a2"[..], &b"b2"[..]));
    // b written meanwhile: nothing of the batch is written, a included.
    let rb = store.put(&b, b"b3".to_vec(), None).await.unwrap();
    let stale =
        vec![(a.clone(), Some(ka.mod_revision), b"a4".to_vec()), (b.clone(), Some(kb.mod_revision), b"b4".to_vec())];
    assert!(!store.compare_and_put_all(stale).await.unwrap(), "b was written since");
    assert_eq!(store.get(&a).await.unwrap().unwrap().value, b"a2", "nothing written");
    store.delete(&b).await.unwrap();
    assert!(!store.compare_and_put_all(vec![(b.clone(), Some(rb), b"b5".to_vec())]).await.unwrap(), "b is gone");
    assert!(store.get(&b).await.unwrap().is_none());
    // `None`: the key must be absent. With a present key beside it, nothing is written.
    let ra = store.get(&a).await.unwrap().unwrap().mod_revision;
    let created = vec![(b.clone(), None, b"b6".to_vec()), (a.clone(), None, b"a6".to_vec())];
    assert!(!store.compare_and_put_all(created).await.unwrap(), "a exists");
    assert!(store.get(&b).await.unwrap().is_none(), "nothing written");
    let created = vec![(b.clone(), None, b"b6".to_vec()), (a.clone(), Some(ra), b"a6".to_vec())];
    assert!(store.compare_and_put_all(created).await.unwrap(), "b created, a updated");
    assert_eq!(store.get(&b).await.unwrap().unwrap().value, b"b6");
    assert!(!store.compare_and_put_all(vec![(b.clone(), None, b"b7".to_vec())]).await.unwrap(), "b exists now");
    // Back to what the checks below expect: a = "a2", b absent.
    store.put(&a, b"a2".to_vec(), None).await.unwrap();
    store.delete(&b).await.unwrap();

    // A key named twice in one write is refused by both backends, and nothing is written.
    let twice = vec![(b.clone(), b"x".to_vec()), (a.clone(), b"y".to_vec()), (b.clone(), b"z".to_vec())];
    match store.put_all_if_absent(&[], twice).await {
        Err(e @ StateError::DuplicateKey(_)) => {
            assert!(e.to_string().contains(&b) && !e.is_retryable(), "{e}");
        }
        other => panic!("a key twice: {other:?}"),
    }
    let ra = store.get(&a).await.unwrap().unwrap().mod_revision;
    let twice = vec![(a.clone(), Some(ra), b"a6".to_vec()), (a.clone(), Some(ra), b"a7".to_vec())];
    assert!(matches!(store.compare_and_put_all(twice).await, Err(StateError::DuplicateKey(_))));
    assert_eq!(store.get(&a).await.unwrap().unwrap().value, b"a2", "nothing written");
    assert!(store.get(&b).await.unwrap().is_none(), "nothing written");

    // Several keys deleted in one transaction; absent ones are passed over, a key named
    // twice is refused and nothing is deleted.
    store.put(&b, b"b".to_vec(), None).await.unwrap();
    let absent = "/conformance/all/absent".to_string();
    let twice = [a.clone(), b.clone(), a.clone()];
    assert!(matches!(store.delete_all(&twice).await, Err(StateError::DuplicateKey(k)) if k == a));
    assert!(store.get(&a).await.unwrap().is_some() && store.get(&b).await.unwrap().is_some(), "nothing deleted");
    let before = store.revision().await.unwrap();
    assert_eq!(store.delete_all(&[a.clone(), absent, b.clone()]).await.unwrap(), 2);
    assert!(store.get(&a).await.unwrap().is_none() && store.get(&b).await.unwrap().is_none());
    assert!(store.revision().await.unwrap() > before);
    assert_eq!(store.delete_all(std::slice::from_ref(&a)).await.unwrap(), 0, "already gone");
    assert_eq!(store.delete_all(&[]).await.unwrap(), 0);
}

async fn prefix_list(store: &dyn StateStore) {
    for k in ["/conformance/list/b", "/conformance/list/a", "/conformance/listx", "/conformance/lis"] {
        store.put(k, k.as_bytes().to_vec(), None).await.unwrap();
    }
    let keys: Vec<String> = store.list("/conformance/list/").await.unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/conformance/list/a", "/conformance/list/b"]);
    assert_eq!(store.list_keys("/conformance/list/").await.unwrap(), keys, "names only, the same keys");
    assert!(store.list_keys("/conformance/none/").await.unwrap().is_empty());

    // More keys than one etcd read of names returns (10 000): read on, in order, none twice.
    // Written 128 to a transaction, each compared (etcd's limit of 128 operations counts the
    // compares and the puts apart, not together).
    let many: Vec<String> = (0..10_050).map(|i| format!("/conformance/many/{i:05}")).collect();
    for (i, chunk) in many.chunks(128).enumerate() {
        if i == 0 {
            let puts = chunk.iter().map(|k| (k.clone(), None, Vec::new())).collect();
            assert!(store.compare_and_put_all(puts).await.unwrap());
        } else {
            let puts = chunk.iter().map(|k| (k.clone(), Vec::new())).collect();
            assert!(store.put_all_if_absent(chunk, puts).await.unwrap());
        }
    }
    store.put("/conformance/manyx", Vec::new(), None).await.unwrap();
    assert_eq!(store.list_keys("/conformance/many/").await.unwrap(), many);
    for chunk in many.chunks(128) {
        store.delete_all(chunk).await.unwrap();
    }
    store.delete("/conformance/manyx").await.unwrap();
}

async fn watch_from_revision(store: &dyn StateStore) {
    let start = store.revision().await.unwrap() + 1;
    store.put("/conformance/w/1", b"1".to_vec(), None).await.unwrap();
    store.put("/conformance/other", b"x".to_vec(), None).await.unwrap();
    store.delete("/conformance/w/1").await.unwrap();
    let mut watch = store.watch("/conformance/w/", start).await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert!(matches!(&first, WatchEvent::Put(kv) if kv.key == "/conformance/w/1" && kv.value == b"1"));
    let second = watch.next().await.unwrap().unwrap();
    assert!(matches!(&second, WatchEvent::Delete { key, .. } if key == "/conformance/w/1"));
    // Live events follow the backlog.
    store.put("/conformance/w/2", b"2".to_vec(), None).await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(third.key(), "/conformance/w/2");
    assert!(third.revision() > second.revision());
}

async fn leases(store: &dyn StateStore) {
    let lease = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    store.put("/conformance/lease/k", b"v".to_vec(), Some(lease)).await.unwrap();
    let mut watch = store.watch("/conformance/lease/", 0).await.unwrap();
    // Kept alive past its TTL, it stays.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        store.keep_alive(lease).await.unwrap();
    }
    assert!(store.get("/conformance/lease/k").await.unwrap().is_some());
    // Not kept alive, it expires and its key is deleted (seen by the watch).
    let event = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(event, WatchEvent::Delete { ref key, .. } if key == "/conformance/lease/k"));
    assert!(store.get("/conformance/lease/k").await.unwrap().is_none());
    assert!(matches!(store.keep_alive(lease).await, Err(StateError::LeaseNotFound(_))));
    // Revoke deletes at once.
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    store.put("/conformance/lease/r", b"v".to_vec(), Some(lease)).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert!(store.get("/conformance/lease/r").await.unwrap().is_none());
    // A put on a dead lease is refused.
    assert!(matches!(
        store.put("/conformance/lease/z", b"v".to_vec(), Some(lease)).await,
        Err(StateError::LeaseNotFound(_))
    ));
}
