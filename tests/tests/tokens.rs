//! API tokens can be revoked, and revocation is in force on every replica: two coordinators
//! on one real etcd; a token created with `edgecap admin tokens add` on one works on the
//! other, `edgecap admin tokens revoke` on one refuses it on the other at its next request; a
//! token removed from a tokens file is revoked; an account's token cannot use the admin API.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, RateLimits};
use edgecap_e2e::{EtcdServer, bin, wait_for};

const ADMIN: &str = "admin-token-for-the-tokens-test-0123";

async fn replica(dir: &std::path::Path, name: &str, etcd: &EtcdServer, tokens_file: &std::path::Path) -> Coordinator {
    let pki = dir.join("pki");
    if !pki.join("ca.pem").exists() {
        edgecap_tls::pki::init_ca(&pki, "tokens").unwrap();
        edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    }
    let endpoints = etcd.endpoints().iter().map(|e| e.trim_start_matches("http://").to_string()).collect();
    Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: name.into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: edgecap_tls::TlsFiles::in_dir(&pki, "coordinator"),
        state: edgecap_state::StateConfig::Etcd { endpoints, prefix: "/tokens-test".into(), auth: Default::default() },
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join(name).join("objects") },
        tmp_dir: dir.join(name).join("tmp"),
        rate_limits: RateLimits::off(),
        tokens_file: Some(tokens_file.to_path_buf()),
        admin_tokens: vec![ADMIN.into()],
        ..Default::default()
    })
    .await
    .unwrap()
}

/// `GET /pcaps` with `token` on `coordinator`: the HTTP status.
fn status(coordinator: &Coordinator, account: &str, token: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("http://{}/client/v4/accounts/{account}/pcaps", coordinator.api_addr))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

fn admin(coordinator: &Coordinator, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("edgecap"))
        .arg("admin")
        .args(["--api", &format!("http://{}/client/v4", coordinator.api_addr)])
        .args(args)
        .env("EDGECAP_ADMIN_TOKEN", token)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_revocable_on_every_replica() {
    let Some(etcd) = EtcdServer::launch("tokens_are_revocable_on_every_replica") else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, "acct-f:file-token-0123456789abcdef\n").unwrap();
    let a = replica(dir.path(), "a", &etcd, &file).await;
    let b = replica(dir.path(), "b", &etcd, &file).await;

    // Created through the CLI on replica A, usable on replica B.
    let out =
        tokio::task::block_in_place(|| admin(&a, ADMIN, &["tokens", "add", "--account", "acct-x", "--name", "robot"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(token.len(), 64);
    assert_eq!(tokio::task::block_in_place(|| status(&b, "acct-x", &token)), 200);
    let listed = tokio::task::block_in_place(|| admin(&b, ADMIN, &["tokens", "list"]));
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("robot") && listed.contains("acct-x") && !listed.contains(&token), "{listed}");

    // An account's token cannot use the admin API: 403, said in one line.
    let out = tokio::task::block_in_place(|| admin(&a, &token, &["tokens", "list"]));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("403") && err.contains("admin token"), "{err}");

    // Revoked on B, refused on A at its next request.
    let out = tokio::task::block_in_place(|| admin(&b, ADMIN, &["tokens", "revoke", "robot"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(tokio::task::block_in_place(|| status(&a, "acct-x", &token)), 401);

    // A token removed from the tokens file is revoked (both replicas re-read it).
    assert_eq!(tokio::task::block_in_place(|| status(&a, "acct-f", "file-token-0123456789abcdef")), 200);
    std::fs::write(&file, "# emptied\n").unwrap();
    wait_for("the file token revoked", Duration::from_secs(20), || {
        (tokio::task::block_in_place(|| status(&b, "acct-f", "file-token-0123456789abcdef")) == 401).then_some(())
    });
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
