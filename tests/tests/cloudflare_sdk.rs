//! The official Cloudflare Python SDK (`pip install cloudflare`), with only `base_url`
//! changed, creates, lists, gets and downloads a sample capture against `edgecap up`, then
//! validates a bucket (an S3-compatible server on loopback) and runs and stops full captures.
//!
//! The SDK's Python comes from `EDGECAP_SDK_PYTHON` (scripts/setup.sh makes a venv and sets
//! it in .ci/run), else `python3` if it can import `cloudflare`.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;
use std::time::Duration;

use edgecap_e2e::{bin, free_port, require_root, wait_for};

fn sdk_python() -> Option<String> {
    let candidates = [std::env::var("EDGECAP_SDK_PYTHON").ok(), Some("python3".to_string())];
    candidates
        .into_iter()
        .flatten()
        .find(|py| Command::new(py).args(["-c", "import cloudflare"]).output().is_ok_and(|o| o.status.success()))
}

#[test]
fn official_python_sdk_works_against_edgecap_up() {
    if !require_root("official_python_sdk_works_against_edgecap_up") {
        return;
    }
    let Some(python) = sdk_python() else {
        assert!(std::env::var("CI").is_err(), "the cloudflare SDK is not installed; .ci/run installs it");
        eprintln!("SKIP: the cloudflare Python SDK is not installed (scripts/setup.sh installs it)");
        return;
    };
    let Some(s3) = edgecap_e2e::S3Server::launch("official_python_sdk_works_against_edgecap_up") else { return };
    s3.create_bucket("sdk-bucket");
    let destination = format!("s3://sdk-bucket/pcaps?region=us-east-1&endpoint={}", s3.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let mut up = edgecap_e2e::Proc {
        child: Command::new(bin("edgecap"))
            .args(["up", "--data-dir", data.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--account", "sdkacct", "--token", "sdk-token-0123456789abcdef"])
            // The bucket's credentials come from the standard AWS environment variables.
            .env("AWS_ACCESS_KEY_ID", edgecap_e2e::S3Server::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", edgecap_e2e::S3Server::SECRET_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
        log: dir.path().join("up.log"),
    };
    wait_for("edgecap up's API", Duration::from_secs(30), || {
        up.assert_running("edgecap up");
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // Wait for the local agent, then make loopback traffic for its lookback.
    wait_for("the local agent", Duration::from_secs(30), || up.log_text().contains("agent connected").then_some(()));
    let ping = Command::new("ping").args(["-c", "3", "-i", "0.2", "127.0.0.1"]).output().unwrap();
    assert!(ping.status.success());

    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/sdk/cloudflare_sdk.py"))
        .args([&format!("http://127.0.0.1:{port}/client/v4"), "sdkacct", "sdk-token-0123456789abcdef"])
        .arg(&destination)
        .arg(s3.dir.path().join("sdk-bucket"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK script failed:\n{}\n{}\nedgecap up:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        up.log_text()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["status"], "success");
    assert_eq!(seen["packets_captured"], 6, "3 echo requests + 3 replies on lo: {seen}");
    assert_eq!(seen["bad_request_code"], 1004);
    assert_eq!(seen["bytes"], 24 + 6 * (16 + 98), "classic pcap of six 98-byte frames");
    let full = &seen["full"];
    assert_eq!(full["wrong_challenge_code"], 1108, "{seen}");
    assert_eq!(full["status"], "success", "{seen}\n{}", up.log_text());
    assert_eq!(full["packets_captured"], 50, "the 50 datagrams sent while it ran: {seen}");
    assert_eq!(full["merged_exists"], true, "{seen}");
    assert_eq!(full["stopped_status"], "success", "{seen}");
    assert_eq!(full["stop_requested"], true, "{seen}");
    assert_eq!(full["ownerships_after_delete"], 0, "{seen}");

    // SIGTERM stops the whole stack cleanly and promptly (the local agent's long-lived control
    // stream must not hold the coordinator's shutdown open).
    let _ = Command::new("kill").args(["-TERM", &up.child.id().to_string()]).status();
    let status =
        wait_for("edgecap up to exit after SIGTERM", Duration::from_secs(20), || up.child.try_wait().ok().flatten());
    assert!(status.success(), "edgecap up exited with {status}:\n{}", up.log_text());
}
