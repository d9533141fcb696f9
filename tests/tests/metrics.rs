//! Prometheus metrics from the real binaries: a coordinator (`/metrics` on its API
//! listener) and an agent capturing on loopback (`--metrics-listen`) are scraped after a
//! sample capture; both pass `promtool check metrics`, carry the figures the capture made
//! (a capture created and finished, one agent connected, packets received on `lo`), and
//! answer `/readyz` as ready. No capture id appears as a label.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgecap_e2e::{Proc, api_call, bin, free_port, wait_for};
use serde_json::json;

/// A plain HTTP GET on loopback with curl: (status, body); status 0 when nothing answered.
fn get(url: &str) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.parse().unwrap_or(0), body.to_string())
}

/// `promtool check metrics` on `text`: its complaints, if any.
fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// The value of the first sample of `name` whose labels contain `labels`.
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let matches = series == name || (series.starts_with(&format!("{name}{{")) && series.contains(labels));
        matches.then(|| v.parse().ok()).flatten()
    })
}

fn spawn(program: &str, args: &[String], log: std::path::PathBuf) -> Proc {
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin(program)).args(args).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
    Proc { child, log }
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_and_agent_metrics_pass_promtool_after_a_capture() {
    if !edgecap_e2e::require_root("coordinator_and_agent_metrics_pass_promtool_after_a_capture")
        || !edgecap_e2e::require_tool("coordinator_and_agent_metrics_pass_promtool_after_a_capture", "promtool")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "metrics").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let agent_files = edgecap_tls::pki::issue_agent(&pki, "m1", "ams01").unwrap();
    let (api_port, grpc_port, agent_port) = (free_port(), free_port(), free_port());
    let token = "metrics-token-0123456789abcdef";
    let path = |p: &std::path::Path| p.display().to_string();
    std::fs::write(dir.path().join("tokens"), format!("acct:{token}\n")).unwrap();
    let coordinator = spawn(
        "edgecap-coordinator",
        &[
            "--data-dir".into(),
            path(&dir.path().join("data")),
            "--pki-dir".into(),
            path(&pki),
            "--api-listen".into(),
            format!("127.0.0.1:{api_port}"),
            "--grpc-listen".into(),
            format!("127.0.0.1:{grpc_port}"),
            "--no-rate-limits".into(),
            "--unscoped-accounts".into(),
            "unrestricted".into(),
            "--tokens-file".into(),
            path(&dir.path().join("tokens")),
        ],
        dir.path().join("coordinator.log"),
    );
    let mut agent = spawn(
        "edgecap-agent",
        &[
            "run".into(),
            "--coordinator".into(),
            format!("https://127.0.0.1:{grpc_port}"),
            "--iface".into(),
            "lo".into(),
            "--tls-ca".into(),
            path(&agent_files.ca),
            "--tls-cert".into(),
            path(&agent_files.cert),
            "--tls-key".into(),
            path(&agent_files.key),
            "--spool-dir".into(),
            path(&dir.path().join("spool")),
            "--metrics-listen".into(),
            format!("127.0.0.1:{agent_port}"),
        ],
        dir.path().join("agent.log"),
    );
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    let api = format!("http://127.0.0.1:{api_port}");
    let mut coordinator = coordinator;
    wait_for("the agent to be ready", Duration::from_secs(30), || {
        agent.assert_running("agent");
        coordinator.assert_running("coordinator");
        (get(&format!("{agent_url}/readyz")).0 == 200).then_some(())
    });
    assert_eq!(get(&format!("{api}/readyz")), (200, "ready\n".to_string()));
    let url = format!("{api}/client/v4/accounts/acct/pcaps");
    let body = json!({"system": "magic-transit", "type": "simple", "time_limit": 5, "packet_limit": 50});
    let (status, created) = api_call("POST", &url, token, Some(body)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["result"]["id"].as_str().unwrap().to_string();
    let mut final_status = String::new();
    for _ in 0..120 {
        let (_, v) = api_call("GET", &format!("{url}/{id}"), token, None).await;
        final_status = v["result"]["status"].as_str().unwrap_or_default().to_string();
        if final_status != "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(final_status, "success");

    let (status, text) = get(&format!("{api}/metrics"));
    assert_eq!(status, 200);
    promtool(&text).unwrap_or_else(|e| panic!("promtool on the coordinator's metrics: {e}\n{text}"));
    assert_eq!(value(&text, "edgecap_captures_created_total", "type=\"simple\""), Some(1.0), "{text}");
    assert_eq!(value(&text, "edgecap_captures_finished_total", "status=\"success\""), Some(1.0), "{text}");
    assert_eq!(value(&text, "edgecap_agents_connected", ""), Some(1.0), "{text}");
    assert!(value(&text, "edgecap_api_requests_total", "status=\"200\"").is_some_and(|v| v >= 1.0), "{text}");
    assert!(value(&text, "edgecap_sample_fanout_duration_seconds_count", "").is_some_and(|v| v >= 1.0));
    assert!(!text.contains(&id), "a capture id is a label:\n{text}");

    let (status, text) = get(&format!("{agent_url}/metrics"));
    assert_eq!(status, 200);
    promtool(&text).unwrap_or_else(|e| panic!("promtool on the agent's metrics: {e}\n{text}"));
    assert!(
        value(&text, "edgecap_agent_packets_received_total", "interface=\"lo\"").is_some_and(|v| v > 0.0),
        "{text}"
    );
    assert!(value(&text, "edgecap_agent_lookback_bytes", "").is_some_and(|v| v > 0.0), "{text}");
    assert_eq!(value(&text, "edgecap_agent_connected", ""), Some(1.0), "{text}");
    assert_eq!(value(&text, "edgecap_agent_captures_active", ""), Some(0.0), "{text}");
    assert!(value(&text, "edgecap_agent_spool_scans_total", "").is_some(), "{text}");

    // Without its coordinator the agent is alive but not ready.
    drop(coordinator);
    wait_for("the agent to report not ready", Duration::from_secs(30), || {
        (get(&format!("{agent_url}/readyz")).0 == 503).then_some(())
    });
    assert_eq!(get(&format!("{agent_url}/healthz")).0, 200);
    drop(agent);
}
