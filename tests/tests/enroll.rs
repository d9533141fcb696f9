//! Agent enrollment end to end, with the real `edgecap-agent` and `edgecap` binaries against
//! a coordinator on loopback: an agent makes its own key and enrolls with a bootstrap token
//! (a PoP the token does not allow is refused), renews its short-lived certificate and stays
//! connected, and `edgecap pki revoke` ends its session and refuses it at the next
//! handshake; the old token cannot enroll it again, a new one can.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, EnrollSettings, RateLimits};
use edgecap_e2e::{Proc, bin, wait_for};
use edgecap_tls::{TlsFiles, pki};

const ADMIN: &str = "enroll-test-admin-token-0123456789";

/// `edgecap` with the admin token; its stdout, or the test fails with its stderr.
fn cli(api: &str, args: &[&str]) -> String {
    let out = Command::new(bin("edgecap"))
        .args(args)
        .env("EDGECAP_API", api)
        .env("EDGECAP_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "edgecap {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// An enrolling agent process for `agent` in `pop`, its key and certificate in `dir`.
fn agent(dir: &Path, grpc: &str, ca: &Path, agent: &str, pop: &str, token: &Path) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join(format!("{agent}-{pop}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin("edgecap-agent"))
        .arg("run")
        .args(["--coordinator", grpc, "--iface", "lo", "--pop", pop, "--agent-id", agent])
        .arg("--tls-ca")
        .arg(ca)
        .arg("--tls-cert")
        .arg(dir.join("agent.pem"))
        .arg("--tls-key")
        .arg(dir.join("agent-key.pem"))
        .arg("--enroll-token-file")
        .arg(token)
        .arg("--spool-dir")
        .arg(dir.join("spool"))
        .env("RUST_LOG", "info")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc { child, log }
}

fn serial(cert: &Path) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    edgecap_tls::enroll::serial(&der).ok()
}

fn connected(coordinator: &Coordinator, agent: &str) -> bool {
    coordinator.connected_agents().iter().any(|a| a.agent_id == agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_enroll_renew_and_are_refused_once_revoked() {
    if !edgecap_e2e::require_root("agents_enroll_renew_and_are_refused_once_revoked") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init_ca(&pki_dir, "enroll ca").unwrap();
    pki::issue_coordinator(&pki_dir, "c1", &["127.0.0.1".into()]).unwrap();
    let coordinator = Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: "c1".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsFiles::in_dir(&pki_dir, "coordinator"),
        tls_reload_interval: Duration::from_millis(200),
        tmp_dir: dir.path().join("tmp"),
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("objects") },
        rate_limits: RateLimits::off(),
        admin_tokens: vec![ADMIN.into()],
        // Certificates of 9 s: the agent renews about every 6 s.
        enroll: Some(EnrollSettings { ca_key: pki_dir.join("ca-key.pem"), cert_lifetime: Duration::from_secs(9) }),
        ..Default::default()
    })
    .await
    .unwrap();
    let api = format!("http://{}/client/v4", coordinator.api_addr);
    let grpc = format!("https://127.0.0.1:{}", coordinator.grpc_addr.port());
    let ca = pki_dir.join("ca.pem");

    let token = cli(&api, &["admin", "bootstrap-token", "create", "--pops", "ams*", "--ttl", "600"]);
    let token_file = dir.path().join("bootstrap-token");
    std::fs::write(&token_file, &token).unwrap();
    assert!(cli(&api, &["admin", "bootstrap-token", "list"]).contains("ams*"));

    // A PoP the token does not allow: a one-line refusal, and the agent exits.
    let fra = dir.path().join("fra");
    let mut refused = agent(&fra, &grpc, &ca, "node-9", "fra01", &token_file);
    let status = wait_for("the fra01 agent to exit", Duration::from_secs(30), || refused.child.try_wait().unwrap());
    assert!(!status.success());
    let log = refused.log_text();
    assert!(log.contains("enrollment refused") && log.contains("pop:"), "{log}");
    assert!(!fra.join("agent.pem").exists() && !connected(&coordinator, "node-9"));

    // ams01: enrolls, with a key only it has.
    let ams = dir.path().join("ams");
    let mut node = agent(&ams, &grpc, &ca, "node-1", "ams01", &token_file);
    wait_for("node-1 to connect", Duration::from_secs(30), || {
        node.assert_running("the ams01 agent");
        connected(&coordinator, "node-1").then_some(())
    });
    let mode = std::fs::metadata(ams.join("agent-key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    let first = serial(&ams.join("agent.pem")).unwrap();

    // Renewal: a new certificate before the first expires, and the agent stays connected.
    let renewed = wait_for("a renewed certificate", Duration::from_secs(30), || {
        serial(&ams.join("agent.pem")).filter(|s| *s != first)
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    wait_for("node-1 with its renewed certificate", Duration::from_secs(15), || {
        node.assert_running("the ams01 agent");
        connected(&coordinator, "node-1").then_some(())
    });
    let certs = cli(&api, &["admin", "certificates"]);
    assert!(certs.contains(&first) && certs.contains(&renewed), "{certs}");

    // Revocation: the session ends, and the agent is refused from then on (its renewal, and
    // after its certificate expires, its old bootstrap token).
    let revoked = cli(&api, &["pki", "revoke", "--agent", "node-1"]);
    assert!(revoked.contains(&renewed), "{revoked}");
    // Listed until the certificate expires (then the handshake refuses it anyway).
    assert!(cli(&api, &["admin", "revocations"]).contains(&renewed));
    wait_for("node-1 to be cut off", Duration::from_secs(15), || (!connected(&coordinator, "node-1")).then_some(()));
    for _ in 0..24 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!connected(&coordinator, "node-1"), "a revoked agent connected again:\n{}", node.log_text());
    }
    drop(node);

    // A token created after the revocation enrolls it again, with new files.
    let token = cli(&api, &["admin", "bootstrap-token", "create", "--pops", "ams01"]);
    std::fs::write(&token_file, token).unwrap();
    for file in ["agent.pem", "agent-key.pem"] {
        std::fs::remove_file(ams.join(file)).unwrap();
    }
    let mut node = agent(&ams, &grpc, &ca, "node-1", "ams01", &token_file);
    wait_for("node-1 to enroll again", Duration::from_secs(30), || {
        node.assert_running("the re-enrolled agent");
        connected(&coordinator, "node-1").then_some(())
    });
    drop(node);
    coordinator.shutdown().await.unwrap();
}

/// Bad enrollment input at the agent's command line: one line naming the flag.
#[test]
fn bad_enrollment_flags_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--pop", "../etc"], "--pop"),
        (&["--pop", "ams01", "--agent-id", "bad id"], "--agent-id"),
        (
            &["--pop", "ams01", "--agent-id", "n1", "--enroll-token-file", empty.to_str().unwrap()],
            "--enroll-token-file",
        ),
    ];
    let ca: PathBuf = dir.path().join("ca.pem");
    pki::init_ca(dir.path(), "flags").unwrap();
    for (args, flag) in cases {
        let out = Command::new(bin("edgecap-agent"))
            .args(["run", "--coordinator", "https://127.0.0.1:9", "--iface", "lo"])
            .arg("--tls-ca")
            .arg(&ca)
            .arg("--tls-cert")
            .arg(dir.path().join("agent.pem"))
            .arg("--tls-key")
            .arg(dir.path().join("agent-key.pem"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        let line = stderr.lines().find(|l| l.starts_with("edgecap-agent:")).unwrap_or_default();
        assert!(line.contains(flag), "{args:?}: {stderr}");
    }
}

/// Bad input to the enrollment admin API: a 4xx in Cloudflare's envelope naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn the_enrollment_admin_api_refuses_bad_input_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    pki::init_ca(&pki_dir, "enroll api ca").unwrap();
    pki::issue_coordinator(&pki_dir, "c1", &["127.0.0.1".into()]).unwrap();
    let coordinator = Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsFiles::in_dir(&pki_dir, "coordinator"),
        tmp_dir: dir.path().join("tmp"),
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.path().join("objects") },
        admin_tokens: vec![ADMIN.into()],
        tokens: vec![("acct".into(), "an-account-token-0123456789".into())],
        enroll: Some(EnrollSettings { ca_key: pki_dir.join("ca-key.pem"), cert_lifetime: Duration::from_secs(600) }),
        ..Default::default()
    })
    .await
    .unwrap();
    let base = format!("http://{}/edgecap/v1/admin", coordinator.api_addr);
    let tokens = format!("{base}/bootstrap-tokens");
    let revocations = format!("{base}/revocations");
    let cases = [
        (&tokens, serde_json::json!({}), 400, "pops"),
        (&tokens, serde_json::json!({"pops": "ams01"}), 400, "pops"),
        (&tokens, serde_json::json!({"pops": []}), 400, "pops"),
        (&tokens, serde_json::json!({"pops": ["../x"]}), 400, "pops"),
        (&tokens, serde_json::json!({"pops": [7]}), 400, "pops"),
        (&tokens, serde_json::json!({"pops": ["ams01"], "ttl_seconds": 10}), 400, "ttl_seconds"),
        (&tokens, serde_json::json!({"pops": ["ams01"], "ttl_seconds": "1h"}), 400, "ttl_seconds"),
        (&revocations, serde_json::json!({}), 400, "agent_id or serial"),
        (&revocations, serde_json::json!({"serial": "xyz"}), 400, "serial"),
        (&revocations, serde_json::json!({"agent_id": "a b"}), 400, "agent_id"),
        (&revocations, serde_json::json!({"agent_id": "never-enrolled"}), 404, "agent_id"),
    ];
    for (url, body, status, field) in cases {
        let (got, answer) = edgecap_e2e::api_call("POST", url, ADMIN, Some(body.clone())).await;
        let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["success"] == false && message.starts_with(field), "{body}: {answer}");
    }
    // An account token is not an admin token.
    let (got, _) = edgecap_e2e::api_call("GET", &tokens, "an-account-token-0123456789", None).await;
    assert_eq!(got, 403);
    coordinator.shutdown().await.unwrap();
}
