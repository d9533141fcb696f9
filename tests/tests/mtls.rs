//! Mutual TLS on the agent control plane, against a real coordinator on loopback:
//! no certificate, another CA's certificate, a server certificate used as a client, and an
//! agent of PoP A claiming PoP B are all refused; certificates reload without a restart.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::sync::Arc;
use std::time::Duration;

use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use edgecap_proto::agent::v1 as pb;
use edgecap_tls::{TlsFiles, pki};
use rustls_pki_types::pem::PemObject;

async fn start(dir: &std::path::Path) -> Coordinator {
    let pki_dir = dir.join("pki");
    pki::init_ca(&pki_dir, "test ca").unwrap();
    pki::issue_coordinator(&pki_dir, "c1", &["127.0.0.1".into()]).unwrap();
    Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: "c1".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsFiles::in_dir(&pki_dir, "coordinator"),
        tls_reload_interval: Duration::from_millis(100),
        state: edgecap_state::StateConfig::Memory,
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join("objects") },
        tmp_dir: dir.join("tmp"),
        limits: Limits::default(),
        rate_limits: RateLimits::off(),
        sample_timeout: Duration::from_secs(5),
        agent_wait: Duration::ZERO,
        tokens: vec![],
        s3_credentials: Default::default(),
        full: Default::default(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn roots(ca: &std::path::Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

fn client_without_cert(ca: &std::path::Path) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(edgecap_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

/// Opens a control stream and sends Hello; returns the first message or the error text.
async fn hello(
    coord: &Coordinator,
    config: rustls::ClientConfig,
    agent_id: &str,
    pop: &str,
) -> Result<pb::CoordinatorMessage, String> {
    let endpoint = format!("https://127.0.0.1:{}", coord.grpc_addr.port());
    // With TLS 1.3 a refused client certificate may only show on the first RPC: assert on
    // the RPC, never on connect alone.
    let channel = edgecap_agent::connect(&endpoint, Arc::new(config)).await.map_err(|e| format!("{e:#}"))?;
    let mut client = pb::agent_control_client::AgentControlClient::new(channel);
    let hello = pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_id: agent_id.into(),
            pop: pop.into(),
            interfaces: vec!["lo".into()],
            version: "test".into(),
            sample_rate: 1,
            lookback_snaplen: 160,
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.unwrap();
    let response = client.control(tokio_stream::wrappers::ReceiverStream::new(rx)).await.map_err(|s| s.to_string())?;
    let mut inbound = response.into_inner();
    let first = inbound.message().await.map_err(|s| s.to_string())?.ok_or("stream ended")?;
    drop(tx);
    Ok(first)
}

fn is_welcome(m: &pb::CoordinatorMessage) -> bool {
    matches!(m.msg, Some(pb::coordinator_message::Msg::Welcome(_)))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_agents_with_a_certificate_from_our_ca_for_their_own_pop_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let coord = start(dir.path()).await;
    let pki_dir = dir.path().join("pki");
    let good = pki::issue_agent(&pki_dir, "a1", "pop-a").unwrap();

    let welcome = hello(&coord, edgecap_tls::client_config(&good).unwrap(), "a1", "pop-a").await.unwrap();
    assert!(is_welcome(&welcome), "{welcome:?}");

    // PoP A's certificate claiming PoP B (or another agent id) is refused.
    let err = hello(&coord, edgecap_tls::client_config(&good).unwrap(), "a1", "pop-b").await.unwrap_err();
    assert!(err.contains("PermissionDenied") || err.contains("permission"), "{err}");
    assert!(err.contains("cannot act as"), "{err}");
    let err = hello(&coord, edgecap_tls::client_config(&good).unwrap(), "a2", "pop-a").await.unwrap_err();
    assert!(err.contains("cannot act as"), "{err}");

    // No client certificate.
    let err = hello(&coord, client_without_cert(&good.ca), "a1", "pop-a").await.unwrap_err();
    assert!(!err.is_empty());

    // A certificate from another CA (whose holder trusts our CA for the server).
    let other = dir.path().join("other");
    pki::init_ca(&other, "other ca").unwrap();
    let foreign = pki::issue_agent(&other, "a1", "pop-a").unwrap();
    let foreign = TlsFiles { ca: good.ca.clone(), ..foreign };
    let err = hello(&coord, edgecap_tls::client_config(&foreign).unwrap(), "a1", "pop-a").await.unwrap_err();
    assert!(!err.is_empty());

    // The coordinator's own (server-auth) certificate cannot act as an agent.
    let server_as_client = TlsFiles::in_dir(&pki_dir, "coordinator");
    assert!(hello(&coord, edgecap_tls::client_config(&server_as_client).unwrap(), "c1", "pop-a").await.is_err());

    // Nothing refused was registered.
    let agents: Vec<_> = coord.connected_agents().into_iter().map(|a| (a.agent_id, a.pop)).collect();
    assert!(agents.iter().all(|(id, pop)| id == "a1" && pop == "pop-a"), "{agents:?}");
    coord.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let coord = start(dir.path()).await;
    let pki_dir = dir.path().join("pki");
    let old_agent = pki::issue_agent(&pki_dir, "a1", "pop-a").unwrap();
    let old_config = edgecap_tls::client_config(&old_agent).unwrap();
    assert!(hello(&coord, old_config.clone(), "a1", "pop-a").await.is_ok());

    // Rotate the whole PKI in place: new CA, new coordinator certificate.
    let fresh = dir.path().join("fresh");
    pki::init_ca(&fresh, "rotated ca").unwrap();
    pki::issue_coordinator(&fresh, "c1", &["127.0.0.1".into()]).unwrap();
    let new_agent = pki::issue_agent(&fresh, "a1", "pop-a").unwrap();
    for name in ["coordinator-key.pem", "coordinator.pem", "ca.pem"] {
        std::fs::copy(fresh.join(name), pki_dir.join(format!("{name}.new"))).unwrap();
        std::fs::rename(pki_dir.join(format!("{name}.new")), pki_dir.join(name)).unwrap();
    }
    let new_config = edgecap_tls::client_config(&new_agent).unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if hello(&coord, new_config.clone(), "a1", "pop-a").await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "the new CA's agent is accepted after the reload");
    assert!(hello(&coord, old_config, "a1", "pop-a").await.is_err(), "the old CA is no longer trusted");
    coord.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_picks_up_a_reissued_certificate_without_a_restart() {
    if !edgecap_e2e::require_root("an_agent_picks_up_a_reissued_certificate_without_a_restart") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let coord = start(dir.path()).await;
    let pki_dir = dir.path().join("pki");
    let files = pki::issue_agent(&pki_dir, "mover", "pop-a").unwrap();
    let mut config = edgecap_agent::AgentConfig::new(
        vec![format!("https://127.0.0.1:{}", coord.grpc_addr.port())],
        files,
        vec!["lo".into()],
    );
    config.tls_reload_interval = Duration::from_millis(100);
    let agent = edgecap_agent::Agent::start(config).unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(agent.run(cancel.clone()));
    let pop_of = |coord: &Coordinator| coord.connected_agents().first().map(|a| a.pop.clone());
    for _ in 0..100 {
        if pop_of(&coord).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pop_of(&coord).as_deref(), Some("pop-a"));
    // The operator moves the agent to another PoP by issuing it a new certificate in place.
    tokio::time::sleep(Duration::from_millis(20)).await;
    pki::issue_agent(&pki_dir, "mover", "pop-b").unwrap();
    let mut moved = false;
    for _ in 0..100 {
        if pop_of(&coord).as_deref() == Some("pop-b") {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the running agent reconnected with its new certificate: {:?}", pop_of(&coord));
    cancel.cancel();
    task.await.unwrap().unwrap();
    coord.shutdown().await.unwrap();
}
