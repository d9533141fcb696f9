//! The etcd backend against a real etcd (Debian's `etcd-server`), started here on loopback
//! with a temporary data directory and stopped afterwards: the same conformance suite as
//! the embedded store, plus prefix isolation and a clear error when etcd is unreachable.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgecap_state::etcd::EtcdStore;
use edgecap_state::{StateError, StateStore};

struct Etcd {
    child: Child,
    client: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_etcd() -> Option<Etcd> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "etcd is missing; .ci/run installs etcd-server");
        eprintln!("SKIP: etcd is not installed (scripts/setup.sh installs etcd-server)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = (free_port(), free_port());
    let client = format!("127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let child = Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &format!("http://{client}"), "--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("t={peer}"), "--log-level", "error"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let etcd = Etcd { child, client, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&etcd.client).is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(etcd)
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_passes_the_conformance_suite_and_isolates_prefixes() {
    let Some(etcd) = start_etcd() else { return };
    let endpoints = vec![etcd.client.clone()];
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
