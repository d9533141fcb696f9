use std::time::Duration;

use super::*;

#[test]
fn names() {
    for ok in ["ord01", "local", "a", "pop_1.x-y", "ORD"] {
        validate_name(ok).unwrap();
    }
    for bad in ["", "-a", ".a", "a/b", "a b", "a\"", &"x".repeat(64), "é"] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn identity_uri_round_trip() {
    let agent = PeerIdentity::Agent { agent_id: "a1".into(), pop: "ord01".into() };
    assert_eq!(PeerIdentity::from_uri(&agent.uri()), Some(agent));
    let coord = PeerIdentity::Coordinator { name: "c1".into() };
    assert_eq!(PeerIdentity::from_uri(&coord.uri()), Some(coord));
    for bad in [
        "spiffe://edgecap/pop/ord01/agent/",
        "spiffe://edgecap/pop/ord/01/agent/a",
        "spiffe://other/pop/ord01/agent/a",
        "spiffe://edgecap/pop/ord01/agent/a/b",
    ] {
        assert_eq!(PeerIdentity::from_uri(bad), None, "{bad}");
    }
}

#[tokio::test]
async fn pki_issues_certificates_that_carry_identity_and_load() {
    let dir = tempfile::tempdir().unwrap();
    pki::init_ca(dir.path(), "test ca").unwrap();
    assert!(pki::init_ca(dir.path(), "again").is_err(), "never overwrite a CA");
    let coord = pki::issue_coordinator(dir.path(), "c1", &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let agent = pki::issue_agent(dir.path(), "a1", "ord01").unwrap();
    server_config(&coord).unwrap();
    client_config(&agent).unwrap();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_file_iter(&agent.cert).unwrap().next().unwrap().unwrap();
    assert_eq!(peer_identity(&der).unwrap(), PeerIdentity::Agent { agent_id: "a1".into(), pop: "ord01".into() });
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&agent.key).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "keys are private");
    assert!(pki::issue_agent(dir.path(), "a1", "bad/pop").is_err());
    assert!(pki::issue_coordinator(dir.path(), "c1", &[]).is_err());
}

#[tokio::test]
async fn bad_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::in_dir(dir.path(), "nothing");
    let err = server_config(&files).unwrap_err().to_string();
    assert!(err.contains("ca.pem"), "{err}");
    std::fs::write(dir.path().join("ca.pem"), "not a pem").unwrap();
    let err = client_config(&files).unwrap_err().to_string();
    assert!(err.contains("ca.pem"), "{err}");
}

#[tokio::test]
async fn watched_config_reloads_on_change_and_keeps_old_on_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    pki::init_ca(dir.path(), "test ca").unwrap();
    let files = pki::issue_agent(dir.path(), "a1", "ord01").unwrap();
    let mut rx = watch_client_config(files.clone(), Duration::from_millis(50)).unwrap();
    let first = rx.borrow_and_update().clone();
    // mtime granularity: make sure the rewrite is seen as a change.
    tokio::time::sleep(Duration::from_millis(20)).await;
    pki::issue_agent(dir.path(), "a1", "ord01").unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed()).await.unwrap().unwrap();
    assert!(!Arc::ptr_eq(&first, &rx.borrow_and_update()));
    // Broken files: no new configuration is published.
    std::fs::write(&files.cert, "garbage").unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(400), rx.changed()).await.is_err());
}
