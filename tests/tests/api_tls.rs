//! The API over HTTPS (`--api-tls-cert/--api-tls-key`), against a real coordinator on
//! loopback and curl: the certificate is served, plain HTTP is not answered, and a new
//! certificate is taken without a restart.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;
use std::time::Duration;

use edgecap_coordinator::{ApiTls, Coordinator, CoordinatorConfig, RateLimits};
use edgecap_e2e::wait_for;

const TOKEN: &str = "api-tls-test-token-0123456789";

/// `curl` on `url` trusting `ca`: the HTTP status (0 when there was no answer).
fn curl(url: &str, ca: &std::path::Path) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}"), url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_serves_https_and_takes_a_new_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, other) = (dir.path().join("pki"), dir.path().join("other"));
    edgecap_tls::pki::init_ca(&pki, "api ca").unwrap();
    let served = edgecap_tls::pki::issue_coordinator(&pki, "api", &["127.0.0.1".into()]).unwrap();
    let coordinator = Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        api_tls: Some(ApiTls { cert: served.cert.clone(), key: served.key.clone() }),
        tls: served.clone(),
        tls_reload_interval: Duration::from_millis(200),
        tmp_dir: dir.path().join("tmp"),
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("objects") },
        rate_limits: RateLimits::off(),
        tokens: vec![("acct".into(), TOKEN.into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let url = format!("https://127.0.0.1:{}/client/v4/accounts/acct/pcaps", coordinator.api_addr.port());
    let ca = pki.join("ca.pem");
    assert_eq!(tokio::task::block_in_place(|| curl(&url, &ca)), 200);
    // Plain HTTP on the HTTPS port gets no API answer.
    let plain = url.replacen("https://", "http://", 1);
    assert_ne!(tokio::task::block_in_place(|| curl(&plain, &ca)), 200);
    // The CLI speaks HTTPS, trusting a private CA with --ca.
    let api = format!("https://127.0.0.1:{}/client/v4", coordinator.api_addr.port());
    let out = tokio::task::block_in_place(|| {
        Command::new(edgecap_e2e::bin("edgecap"))
            .args(["capture", "--api", &api, "--account", "acct", "--ca"])
            .arg(&ca)
            .arg("list")
            .env("EDGECAP_TOKEN", TOKEN)
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A certificate from another CA replaces the files: in force without a restart.
    edgecap_tls::pki::init_ca(&other, "new api ca").unwrap();
    let renewed = edgecap_tls::pki::issue_coordinator(&other, "api", &["127.0.0.1".into()]).unwrap();
    std::fs::copy(&renewed.key, &served.key).unwrap();
    std::fs::copy(&renewed.cert, &served.cert).unwrap();
    let new_ca = other.join("ca.pem");
    wait_for("the new certificate", Duration::from_secs(10), || {
        (tokio::task::block_in_place(|| curl(&url, &new_ca)) == 200).then_some(())
    });
    assert_ne!(tokio::task::block_in_place(|| curl(&url, &ca)), 200, "the old CA no longer verifies it");
    coordinator.shutdown().await.unwrap();
}
