//! A multipart upload an agent abandons does not stay in the user's bucket: a hand-driven
//! agent is granted a three-part upload for a 20 MiB shard, sends the first part straight
//! to the S3-compatible server (s3s-fs, on loopback) and then gives up (its capture fails).
//! When the capture ends, the coordinator aborts that upload: the part is gone from the
//! server and the remaining presigned parts are refused.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::time::Duration;

use bytes::Bytes;
use edgecap_coordinator::Coordinator;
use edgecap_e2e::{FakeAgent, S3Server, api_call};
use edgecap_proto::agent::v1 as pb;
use pb::{agent_message::Msg as Up, coordinator_message::Msg as Down};
use serde_json::json;

const TOKEN: &str = "abandoned-uploads-token-0123";
const BUCKET: &str = "users-bucket";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_an_agent_abandons_is_aborted_when_its_capture_ends() {
    let Some(s3) = S3Server::launch("an_upload_an_agent_abandons_is_aborted_when_its_capture_ends") else { return };
    s3.create_bucket(BUCKET);
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "abandoned").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let c = Coordinator::start(edgecap_e2e::bucket_config(dir.path(), "c", TOKEN, &s3, BUCKET)).await.unwrap();
    let files = edgecap_tls::pki::issue_agent(&pki, "quitter", "ams001").unwrap();
    let mut agent = FakeAgent::connect(&c, &files, "quitter", "ams001").await;

    let url = format!("http://{}/client/v4/accounts/acct/pcaps", c.api_addr);
    let destination = edgecap_e2e::own_bucket(&url, TOKEN, &s3, BUCKET, "edge").await;
    let body = json!({"system": "magic-transit", "type": "full", "time_limit": 60, "colo_name": "ams001",
        "destination_conf": destination});
    let (status, created) = api_call("POST", &url, TOKEN, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    let start = agent
        .next(Duration::from_secs(20), |m| match m {
            Down::StartCapture(s) => Some(s),
            _ => None,
        })
        .await;
    assert_eq!(start.capture_id, id);
    let running = |state: pb::CaptureState, error: &str| pb::CaptureReport {
        capture_id: id.clone(),
        capture_state: state as i32,
        error: error.into(),
        ..Default::default()
    };
    assert!(agent.send(Up::CaptureReport(running(pb::CaptureState::Running, ""))).await);

    // A shard above the multipart threshold: three presigned parts.
    let size = 20u64 << 20;
    let ask = pb::UploadRequest {
        request_id: "u1".into(),
        capture_id: id.clone(),
        shard: "shard-000001.pcap".into(),
        size,
        ..Default::default()
    };
    assert!(agent.send(Up::UploadRequest(ask)).await);
    let grant = agent
        .next(Duration::from_secs(20), |m| match m {
            Down::UploadGrant(g) => Some(g),
            _ => None,
        })
        .await;
    assert!(grant.error.is_empty(), "{grant:?}");
    assert_eq!(grant.parts.len(), 3, "{grant:?}");
    let part = |n: u32| s3.dir.path().join(format!(".upload_id-{}.part-{n}", grant.upload_id));
    let upload_info = s3.dir.path().join(format!(".upload-{}.json", grant.upload_id));

    let http = edgecap_agent::http::HttpClient::new().unwrap();
    let part_bytes = Bytes::from(vec![0x5a; grant.part_size as usize]);
    http.send(&grant.parts[0], part_bytes.clone()).await.unwrap();
    assert!(part(1).exists() && upload_info.exists(), "the first part is held by the server");

    // The agent gives up half-way (as one cut off and never back would leave it).
    let gave_up = running(pb::CaptureState::Failed, "cut off half-way through an upload");
    assert!(agent.send(Up::CaptureReport(gave_up)).await);
    let result = edgecap_e2e::wait_final(&url, TOKEN, &id, Duration::from_secs(60)).await;
    assert_eq!(result["status"], "failed", "{result:#}");

    // The leader aborts it right after the final status is written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while part(1).exists() || upload_info.exists() {
        assert!(tokio::time::Instant::now() < deadline, "the abandoned upload was not aborted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused: with 403 (s3s-fs; S3 says NoSuchUpload), or, when the server answers before
    // reading the 8 MiB body and closes, as a connection error (the first part, the same
    // request to a live upload, went through).
    let err = format!("{:#}", http.send(&grant.parts[1], part_bytes).await.unwrap_err());
    assert!(!err.contains("HTTP") || err.contains("403") || err.contains("404"), "{err}");
    assert!(!part(2).exists());
    // Only the ownership challenge is left in the bucket: no object was made from the part.
    let keys = s3.keys(BUCKET, "");
    assert!(keys.iter().all(|k| !k.contains(&id)), "{keys:?}");
}
