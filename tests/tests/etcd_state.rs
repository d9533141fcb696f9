//! The etcd backend against a real etcd (Debian's `etcd-server`), started here on loopback
//! with a temporary data directory and stopped afterwards: the same conformance suite as
//! the embedded store, plus prefix isolation and a clear error when etcd is unreachable.

use std::sync::Arc;
use std::time::Duration;

use edgecap_e2e::{EtcdServer, free_port};

use edgecap_state::etcd::EtcdStore;
use edgecap_state::{StateError, StateStore};

#[tokio::test(flavor = "multi_thread")]
async fn etcd_passes_the_conformance_suite_and_isolates_prefixes() {
    let Some(etcd) = EtcdServer::launch("etcd_passes_the_conformance_suite_and_isolates_prefixes") else { return };
    let endpoints = etcd.endpoints();
    let store = EtcdStore::connect(&endpoints, "/installation-a").await.unwrap();
    edgecap_state::testsuite::run_conformance(Arc::new(store.clone())).await;

    // Two installations sharing one etcd do not see each other's keys.
    let other = EtcdStore::connect(&endpoints, "/installation-b").await.unwrap();
    store.put("/edgecap/v1/k", b"a".to_vec(), None).await.unwrap();
    assert!(other.get("/edgecap/v1/k").await.unwrap().is_none());
    assert!(other.list("/edgecap/").await.unwrap().is_empty());
    assert_eq!(store.list("/edgecap/").await.unwrap()[0].key, "/edgecap/v1/k");

    // A watch from a compacted revision is reported, not silently empty.
    let rev = store.revision().await.unwrap();
    let mut raw = etcd_client::Client::connect(&endpoints, None).await.unwrap();
    raw.compact(rev as i64, None).await.unwrap();
    let mut watch = store.watch("/edgecap/", 1).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut watch)).await.unwrap();
    assert!(matches!(first, Some(Err(StateError::Compacted { .. }))), "{first:?}");
}

#[tokio::test]
async fn unreachable_etcd_is_a_clear_retryable_error() {
    let port = free_port();
    let result = EtcdStore::connect(&[format!("127.0.0.1:{port}")], "/x").await;
    match result {
        Err(e) => assert!(e.is_retryable() && e.to_string().contains("unavailable"), "{e}"),
        Ok(store) => {
            let e = store.get("/k").await.unwrap_err();
            assert!(e.is_retryable() && e.to_string().contains("unavailable"), "{e}");
        }
    }
}
