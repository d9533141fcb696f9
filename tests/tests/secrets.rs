//! Nothing secret in logs or traces. A coordinator on a real etcd with a user and password,
//! an S3-compatible server with a secret key, API and admin tokens from files, and an agent,
//! all exporting traces to a real OTLP collector and logging at debug level, run a full
//! capture on loopback to its end; then every log line and every exported span is searched
//! for the secrets (and for presigned signatures, which are bearer credentials).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::{Command, Stdio};
use std::time::Duration;

use edgecap_e2e::otlp::Collector;
use edgecap_e2e::{EtcdServer, Proc, S3Server, bin, free_port, require_root, wait_for};
use serde_json::Value;

const TOKEN: &str = "api-token-secret-ff00ee11dd22cc33";
const ADMIN: &str = "admin-token-secret-99aa88bb77cc66dd";
const ETCD_PASSWORD: &str = "etcd-password-secret-5544332211";
const BUCKET: &str = "secrets";

fn spawn(program: &str, args: &[String], log: &std::path::Path, otlp: &str) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    let child = Command::new(bin(program))
        .args(args)
        .env("RUST_LOG", "debug")
        .env("EDGECAP_OTLP_ENDPOINT", otlp)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc { child, log: log.to_path_buf() }
}

fn cli(api: &str, args: &[&str]) -> Value {
    let out = Command::new(bin("edgecap"))
        .args(args)
        .env("EDGECAP_API", api)
        .env("EDGECAP_ACCOUNT", "acct")
        .env("EDGECAP_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "edgecap {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_reaches_a_log_line_or_a_span() {
    let test = "no_secret_reaches_a_log_line_or_a_span";
    if !require_root(test) {
        return;
    }
    let Some(etcd) = EtcdServer::launch(test) else { return };
    let Some(s3) = S3Server::launch(test) else { return };
    s3.create_bucket(BUCKET);
    let mut admin = etcd_client::Client::connect(etcd.endpoints(), None).await.unwrap();
    admin.user_add("root", ETCD_PASSWORD, None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let (collector, otlp, server) = Collector::start().await;

    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    std::fs::write(path("etcd-password"), format!("{ETCD_PASSWORD}\n")).unwrap();
    std::fs::write(path("tokens"), format!("acct:{TOKEN}\n")).unwrap();
    std::fs::write(path("admin-tokens"), format!("{ADMIN}\n")).unwrap();
    s3.write_credentials(std::path::Path::new(&path("s3.json")), BUCKET);
    let pki = dir.path().join("pki");
    edgecap_tls::pki::init_ca(&pki, "secrets").unwrap();
    edgecap_tls::pki::issue_coordinator(&pki, "c", &["127.0.0.1".into()]).unwrap();
    let agent_tls = edgecap_tls::pki::issue_agent(&pki, "local-agent", "local").unwrap();
    let (api_port, grpc_port) = (free_port(), free_port());
    let state = format!("etcd://{}/secrets?user=root&password_file={}", etcd.client, path("etcd-password"));
    let coordinator_args: Vec<String> = [
        "--data-dir",
        &path("data"),
        "--pki-dir",
        pki.to_str().unwrap(),
        "--state",
        &state,
        "--api-listen",
        &format!("127.0.0.1:{api_port}"),
        "--grpc-listen",
        &format!("127.0.0.1:{grpc_port}"),
        "--tokens-file",
        &path("tokens"),
        "--admin-tokens-file",
        &path("admin-tokens"),
        "--s3-credentials",
        &path("s3.json"),
        "--allow-private-endpoints",
        "--no-rate-limits",
        "--unscoped-accounts",
        "unrestricted",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut coordinator = spawn("edgecap-coordinator", &coordinator_args, &dir.path().join("coordinator.log"), &otlp);
    let agent_args: Vec<String> = [
        "run",
        "--coordinator",
        &format!("https://127.0.0.1:{grpc_port}"),
        "--iface",
        "lo",
        "--tls-ca",
        agent_tls.ca.to_str().unwrap(),
        "--tls-cert",
        agent_tls.cert.to_str().unwrap(),
        "--tls-key",
        agent_tls.key.to_str().unwrap(),
        "--spool-dir",
        &path("spool"),
        "--shard-rotate-seconds",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = spawn("edgecap-agent", &agent_args, &dir.path().join("agent.log"), &otlp);

    let api = format!("http://127.0.0.1:{api_port}/client/v4");
    wait_for("the agent to connect", Duration::from_secs(30), || {
        coordinator.assert_running("coordinator");
        agent.assert_running("agent");
        let out = Command::new(bin("edgecap"))
            .args(["agents"])
            .env("EDGECAP_API", &api)
            .env("EDGECAP_ACCOUNT", "acct")
            .env("EDGECAP_TOKEN", TOKEN)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).contains("local-agent").then_some(())
    });

    // The bucket's ownership, then a full capture of UDP on loopback.
    let destination = format!("s3://{BUCKET}/p?region=us-east-1&endpoint={}", s3.endpoint());
    let created = cli(&api, &["ownership", "create", "--destination-conf", &destination]);
    let challenge =
        std::fs::read_to_string(s3.object_path(BUCKET, &format!("p/{}", created["filename"].as_str().unwrap())))
            .unwrap();
    cli(
        &api,
        &["ownership", "validate", "--destination-conf", &destination, "--ownership-challenge", challenge.trim()],
    );
    let capture = cli(
        &api,
        &[
            "capture",
            "create",
            "--type",
            "full",
            "--colo-name",
            "local",
            "--destination-conf",
            &destination,
            "--time-limit",
            "3",
            "--protocol",
            "17",
        ],
    );
    let id = capture["id"].as_str().unwrap().to_string();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..200u32 {
        let _ = sender.send_to(&i.to_be_bytes(), "127.0.0.1:9");
        std::thread::sleep(Duration::from_millis(10));
    }
    let done = wait_for("the capture to finish", Duration::from_secs(90), || {
        let v = cli(&api, &["capture", "get", &id]);
        matches!(v["status"].as_str(), Some("success" | "failed")).then_some(v)
    });
    assert_eq!(done["status"], "success", "{done}\n{}", coordinator.log_text());
    // A sample capture too, for its trace across the agent.
    for i in 0..20u32 {
        let _ = sender.send_to(&i.to_be_bytes(), "127.0.0.1:9");
    }
    std::thread::sleep(Duration::from_millis(500));
    let sample = cli(&api, &["capture", "create", "--time-limit", "60", "--packet-limit", "10", "--wait"]);
    let sample_id = sample["id"].as_str().unwrap().to_string();
    // The admin API was used too (its token passed in a header).
    let out = Command::new(bin("edgecap"))
        .args(["admin", "--api", &api, "tokens", "list"])
        .env("EDGECAP_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(out.status.success());

    // Stop both (SIGTERM flushes the spans), then search.
    for p in [&coordinator, &agent] {
        let _ = Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status();
    }
    wait_for("both to exit", Duration::from_secs(30), || {
        (coordinator.child.try_wait().ok().flatten().is_some() && agent.child.try_wait().ok().flatten().is_some())
            .then_some(())
    });
    let spans = collector.spans();
    server.abort();
    assert!(spans.iter().any(|s| s.service == "edgecap-agent"), "the agent exported spans");
    assert!(spans.iter().any(|s| s.name == "merge"), "the merge's span was exported");
    // One trace per capture: the API request that created it, the leader's follow-up and
    // merge, and the agent's capture and uploads (another process) share its trace id.
    let with = |name: &str, attr: &str| -> Vec<&edgecap_e2e::otlp::SeenSpan> {
        spans.iter().filter(|s| s.name == name && s.attrs.iter().any(|a| a == attr)).collect()
    };
    let followed = with("full_capture", &format!("capture={id}"));
    let trace = &followed.first().unwrap_or_else(|| panic!("the capture's span: {spans:#?}")).trace_id;
    let created = spans.iter().filter(|s| s.name == "api" && &s.trace_id == trace).count();
    assert_eq!(created, 1, "the creating API request is the trace's root");
    for (name, service) in [("agent_capture", "edgecap-agent"), ("shard_upload", "edgecap-agent")] {
        let mine = with(name, &format!("capture={id}"));
        assert!(!mine.is_empty(), "no {name} span");
        assert!(mine.iter().all(|s| &s.trace_id == trace && s.service == service), "{name}: {mine:#?}");
    }
    assert!(spans.iter().any(|s| s.name == "merge" && &s.trace_id == trace), "the merge is in the capture's trace");
    let sampled = with("sample_capture", &format!("capture={sample_id}"));
    let sample_trace = &sampled.first().unwrap_or_else(|| panic!("the sample's span: {spans:#?}")).trace_id;
    assert!(sample_trace != trace);
    let queries: Vec<_> = spans.iter().filter(|s| s.name == "lookback_query" && &s.trace_id == sample_trace).collect();
    assert!(
        !queries.is_empty() && queries.iter().all(|s| s.service == "edgecap-agent"),
        "the agent's lookback query is in the sample's trace: {spans:#?}"
    );
    assert_eq!(spans.iter().filter(|s| s.name == "api" && &s.trace_id == sample_trace).count(), 1);
    let logs = format!("{}\n{}", coordinator.log_text(), agent.log_text());
    assert!(logs.lines().count() > 50, "debug logs were written");
    for (what, secret) in [
        ("the S3 secret key", S3Server::SECRET_KEY),
        ("the etcd password", ETCD_PASSWORD),
        ("the API token", TOKEN),
        ("the admin token", ADMIN),
        ("a presigned signature", "X-Amz-Signature="),
    ] {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("{what} is in a log line: {line}");
        }
        if let Some(span) = spans.iter().find(|s| s.raw.contains(secret)) {
            panic!("{what} is in the span {}: {}", span.name, span.raw);
        }
    }
}
