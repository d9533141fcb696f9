//! The etcd backend against a real etcd (Debian's `etcd-server`), started here on loopback
//! with a temporary data directory and stopped afterwards: the same conformance suite as
//! the embedded store, plus prefix isolation, a clear error when etcd is unreachable, and
//! the connection settings of `--state`: TLS with a client certificate, and a user.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

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
    drop(watch);

    // A watch its reader dropped ends in etcd, not at the next event under its prefix (which
    // may never come): etcd's own count of watchers goes back down. Within 30 s: on a loaded
    // machine etcd takes its time to notice the cancelled streams.
    let endpoint = endpoints[0].clone();
    let count = move || {
        let endpoint = endpoint.clone();
        async move { tokio::task::spawn_blocking(move || etcd_watchers(&endpoint)).await.unwrap() }
    };
    let settled = |want: fn(u64, u64) -> bool, base: u64| {
        let count = count.clone();
        async move {
            for _ in 0..600 {
                let now = count().await;
                if want(now, base) {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("etcd's watcher count stayed at {}, from {base}", count().await);
        }
    };
    // First the watches above are gone too (etcd ends them in its own time; a base taken
    // while one still counted made the check wait for a watcher that was never coming back).
    let base = settled(|now, _| now == 0, 0).await;
    let watches: Vec<_> = futures::future::join_all((0..20).map(|_| store.watch("/edgecap/quiet/", 0))).await;
    settled(|now, base| now >= base + 20, base).await;
    drop(watches);
    settled(|now, base| now <= base, base).await;
}

/// etcd's `etcd_debugging_mvcc_watcher_total` (its open watchers), from its `/metrics`.
fn etcd_watchers(endpoint: &str) -> u64 {
    use std::io::{Read, Write};
    let mut socket = std::net::TcpStream::connect(endpoint.trim_start_matches("http://")).unwrap();
    socket.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n").unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("etcd_debugging_mvcc_watcher_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no watcher count in etcd's metrics")) as u64
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

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "etcd test").unwrap();
    let server = edgecap_tls::pki::issue_coordinator(&pki, "etcd", &["127.0.0.1".into()]).unwrap();
    let client = edgecap_tls::pki::issue_agent(&pki, "coordinator-client", "core").unwrap();
    let Some(etcd) =
        EtcdServer::launch_tls("etcd_over_tls_with_a_client_certificate", &server.cert, &server.key, &server.ca)
    else {
        return;
    };
    let flag = format!(
        "etcd://{}/secure?ca={}&cert={}&key={}",
        etcd.client,
        server.ca.display(),
        client.cert.display(),
        client.key.display()
    );
    let config = edgecap_state::StateConfig::parse(&flag, dir.path()).unwrap();
    let store = edgecap_state::open(&config).await.unwrap();
    store.put("/k", b"over tls".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"over tls");

    // Without a client certificate etcd refuses the connection: a clear, retryable error.
    let no_cert = format!("etcd://{}/secure?ca={}", etcd.client, server.ca.display());
    let config = edgecap_state::StateConfig::parse(&no_cert, dir.path()).unwrap();
    let refused = match edgecap_state::open(&config).await {
        Err(e) => e,
        Ok(store) => store.get("/k").await.unwrap_err(),
    };
    assert!(refused.is_retryable(), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_with_a_user_and_password() {
    let Some(etcd) = EtcdServer::launch("etcd_with_a_user_and_password") else { return };
    let mut admin = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    admin.user_add("root", "rootpw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "rootpw\n").unwrap();

    let flag = format!("etcd://{}/authn?user=root&password_file={}", etcd.client, password.display());
    let config = edgecap_state::StateConfig::parse(&flag, dir.path()).unwrap();
    assert!(!format!("{config:?}").contains("rootpw"), "the password is never formatted: {config:?}");
    let store = edgecap_state::open(&config).await.unwrap();
    store.put("/k", b"authenticated".to_vec(), None).await.unwrap();
    assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"authenticated");

    // Without the user, etcd refuses the request.
    let anonymous = EtcdStore::connect(&etcd.endpoints(), "/authn").await.unwrap();
    assert!(anonymous.get("/k").await.is_err());
    // A password in the URL is refused outright (it would show in process lists).
    let e =
        edgecap_state::StateConfig::parse(&format!("etcd://{}/x?user=root&password=rootpw", etcd.client), dir.path())
            .unwrap_err();
    assert!(e.contains("password_file"), "{e}");
}
