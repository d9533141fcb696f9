//! A broken or compromised agent cannot take the coordinator down or hurt the other agents:
//! a message flood, an oversized string and a sample answer with more packets than asked each
//! get that agent cut off with the reason, while a real agent beside it keeps answering.
//! Everything runs on loopback; the real agent's packets come from the replay source.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use edgecap_capture::source::SourceConfig;
use edgecap_capture::source::replay::ReplayConfig;
use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use edgecap_e2e::FakeAgent;
use edgecap_proto::agent::v1 as pb;
use edgecap_tls::{TlsFiles, pki};
use serde_json::json;

const TOKEN: &str = "hostile-agent-test-token-0123";

async fn coordinator(dir: &std::path::Path) -> Coordinator {
    let pki_dir = dir.join("pki");
    pki::init_ca(&pki_dir, "test ca").unwrap();
    pki::issue_coordinator(&pki_dir, "c1", &["127.0.0.1".into()]).unwrap();
    Coordinator::start(CoordinatorConfig {
        unscoped_accounts: edgecap_coordinator::UnscopedAccounts::Unrestricted,
        name: "c1".into(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsFiles::in_dir(&pki_dir, "coordinator"),
        tls_reload_interval: Duration::from_secs(60),
        state: edgecap_state::StateConfig::Memory,
        storage: edgecap_storage::StorageConfig::LocalDir { root: dir.join("objects") },
        tmp_dir: dir.join("tmp"),
        limits: Limits::default(),
        rate_limits: RateLimits::off(),
        sample_timeout: Duration::from_secs(5),
        agent_wait: Duration::ZERO,
        tokens: vec![("acct".into(), TOKEN.into())],
        s3_credentials: Default::default(),
        full: Default::default(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn api(coord: &Coordinator, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
    let client = edgecap_client::Client::new(edgecap_client::Endpoint {
        api: format!("http://{}/client/v4", coord.api_addr),
        account: "acct".into(),
        token: TOKEN.into(),
    })
    .unwrap();
    client.call(method, path, body.as_ref()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_agent_is_cut_off_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let coord = coordinator(dir.path()).await;
    let pki_dir = dir.path().join("pki");

    // A real agent, its lookback fed by generated packets.
    let good_files = pki::issue_agent(&pki_dir, "good", "pop-good").unwrap();
    let mut config = edgecap_agent::AgentConfig::new(
        vec![format!("https://127.0.0.1:{}", coord.grpc_addr.port())],
        good_files,
        vec!["sim0".into()],
    );
    config.source =
        SourceConfig::Replay(ReplayConfig { file: None, rate_pps: 200, frame_bytes: 100, clock_skew_ns: 0 });
    let agent = edgecap_agent::Agent::start(config).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let good = tokio::spawn(agent.run(stop.clone()));

    // 1. A flood of messages.
    let flooder_files = pki::issue_agent(&pki_dir, "flooder", "pop-flood").unwrap();
    let mut flooder = FakeAgent::connect(&coord, &flooder_files, "flooder", "pop-flood").await;
    let beat = pb::agent_message::Msg::Heartbeat(pb::Heartbeat {
        lookback: Some(Default::default()),
        spool_damaged: 0,
        clock: None,
    });
    for _ in 0..5000 {
        if !flooder.send(beat.clone()).await {
            break;
        }
    }
    let why = flooder.ended_with().await;
    assert!(why.contains("ResourceExhausted") && why.contains("messages per second"), "{why}");

    // 2. An oversized string.
    let talker_files = pki::issue_agent(&pki_dir, "talker", "pop-talk").unwrap();
    let mut talker = FakeAgent::connect(&coord, &talker_files, "talker", "pop-talk").await;
    let report = pb::CaptureReport { capture_id: "c".into(), error: "x".repeat(10_000), ..Default::default() };
    talker.send(pb::agent_message::Msg::CaptureReport(report)).await;
    let why = talker.ended_with().await;
    assert!(why.contains("report error of 10000 bytes"), "{why}");
    // An upload request whose checksum is longer than any CRC32C.
    let mut talker = FakeAgent::connect(&coord, &talker_files, "talker", "pop-talk").await;
    let ask = pb::UploadRequest { capture_id: "c".into(), crc32c: "A".repeat(100), ..Default::default() };
    talker.send(pb::agent_message::Msg::UploadRequest(ask)).await;
    let why = talker.ended_with().await;
    assert!(why.contains("shard crc32c of 100 bytes"), "{why}");

    // 3. A live-stream copy with more packets than any agent sends in one message, and one
    // with a packet longer than any snap length.
    let streamer_files = pki::issue_agent(&pki_dir, "streamer", "pop-stream").unwrap();
    let mut streamer = FakeAgent::connect(&coord, &streamer_files, "streamer", "pop-stream").await;
    let packets = vec![pb::StreamPacket { ts_ns: 1, orig_len: 0, data: Vec::new() }; 100_000];
    let copy = pb::StreamPackets { capture_id: "c".into(), packets, ..Default::default() };
    streamer.send(pb::agent_message::Msg::StreamPackets(copy)).await;
    let why = streamer.ended_with().await;
    assert!(why.contains("stream message of 100000 packets"), "{why}");
    let mut streamer = FakeAgent::connect(&coord, &streamer_files, "streamer", "pop-stream").await;
    let big = pb::StreamPacket { ts_ns: 1, orig_len: 300_000, data: vec![0; 300_000] };
    let copy = pb::StreamPackets { capture_id: "c".into(), packets: vec![big], ..Default::default() };
    streamer.send(pb::agent_message::Msg::StreamPackets(copy)).await;
    let why = streamer.ended_with().await;
    assert!(why.contains("stream packet of 300000 bytes"), "{why}");

    // A budget request for a capture it has no job in: refused in the answer, nothing
    // granted, and the agent stays connected (asking is not hostile).
    let mut asker = FakeAgent::connect(&coord, &streamer_files, "streamer", "pop-stream").await;
    let ask = pb::BudgetRequest { request_id: "r1".into(), capture_id: "f".repeat(32), ..Default::default() };
    asker.send(pb::agent_message::Msg::BudgetRequest(ask)).await;
    let grant = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), asker.inbound.message()).await.unwrap().unwrap();
        if let Some(pb::coordinator_message::Msg::BudgetGrant(grant)) = msg.and_then(|m| m.msg) {
            break grant;
        }
    };
    assert_eq!(grant.request_id, "r1");
    assert!(grant.error.contains("no job"), "{grant:?}");
    assert_eq!((grant.packet_allowance, grant.byte_allowance, grant.exhausted), (0, 0, false));
    drop(asker);

    // 4. A sample answer with more packets than asked.
    let liar_files = pki::issue_agent(&pki_dir, "liar", "pop-liar").unwrap();
    let mut liar = FakeAgent::connect(&coord, &liar_files, "liar", "pop-liar").await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while coord.connected_agents().iter().all(|a| a.agent_id != "good") {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // the good lookback holds packets
    let created = api(
        &coord,
        "POST",
        "",
        Some(json!({"system": "magic-transit", "type": "simple", "time_limit": 60, "packet_limit": 10})),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let query = loop {
        match liar.inbound.message().await.unwrap().unwrap().msg {
            Some(pb::coordinator_message::Msg::SampleQuery(q)) => break q,
            _ => continue,
        }
    };
    let packets: Vec<pb::Packet> = (0..query.packet_limit + 1)
        .map(|i| pb::Packet { ts_ns: u64::from(i) + 1, orig_len: 60, data: vec![0; 60], ..Default::default() })
        .collect();
    let chunk = pb::SampleChunk { request_id: query.request_id.clone(), packets, done: true, ..Default::default() };
    liar.send(pb::agent_message::Msg::SampleChunk(chunk)).await;
    let why = liar.ended_with().await;
    assert!(why.contains("more packets than the 10 still asked for"), "{why}");

    // The capture finished with the good agent's packets; the liar's PoP failed.
    let done = loop {
        let v = api(&coord, "GET", &format!("/{id}"), None).await;
        if v["status"] != "pending" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["packets_captured"], 10, "{done}");
    let pops = done["pops"].as_array().unwrap();
    let pop = |name: &str| pops.iter().find(|p| p["pop"] == name).cloned().unwrap_or_default();
    assert_eq!(pop("pop-good")["status"], "done", "{done}");
    assert_eq!(pop("pop-liar")["status"], "failed", "{done}");
    // Only the good agent is still connected.
    let connected: Vec<String> = coord.connected_agents().into_iter().map(|a| a.agent_id).collect();
    assert_eq!(connected, ["good"]);

    stop.cancel();
    good.await.unwrap().unwrap();
    coord.shutdown().await.unwrap();
}
