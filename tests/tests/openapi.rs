//! The OpenAPI document: `docs/openapi.json` is what the code generates and what the API
//! serves at `/client/v4/openapi.json`; and Schemathesis (pinned, from PyPI) runs every
//! operation against `edgecap up` — coverage, fuzzing and stateful phases following the
//! document's links, a fixed seed and a bounded number of examples — finding no 5xx, no
//! status code, content type or body the document does not allow, and no crash.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use edgecap_e2e::{Proc, bin, free_port, require_root, wait_for};

fn docs_openapi() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = std::fs::read_to_string(docs_openapi()).unwrap();
    assert!(
        committed == edgecap_coordinator::openapi_json(),
        "docs/openapi.json is stale: regenerate it with `edgecap-coordinator --openapi > docs/openapi.json`"
    );
    let out = Command::new(bin("edgecap-coordinator")).arg("--openapi").output().unwrap();
    assert!(out.status.success() && out.stdout == committed.as_bytes());
    let doc: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // Cloudflare's surface, and the extensions marked.
    for path in ["/client/v4/accounts/{account_id}/pcaps", "/client/v4/accounts/{account_id}/pcaps/{pcap_id}/download"]
    {
        assert!(doc["paths"][path].is_object(), "{path}");
    }
    assert_eq!(doc["paths"]["/edgecap/v1/agents"]["get"]["x-edgecap-extension"], true);
}

fn schemathesis() -> Option<PathBuf> {
    let venv = std::env::var_os("EDGECAP_SDK_VENV")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgecap/sdk-venv")))?;
    let st = venv.join("bin/schemathesis");
    if st.exists() {
        return Some(st);
    }
    assert!(std::env::var_os("CI").is_none(), "schemathesis is not installed at {} (scripts/setup.sh)", st.display());
    eprintln!("skipping: schemathesis is not installed at {}", st.display());
    None
}

#[test]
fn schemathesis_finds_nothing_against_edgecap_up() {
    // `edgecap up` runs a local agent on `lo` (libpcap: root).
    if !require_root("schemathesis_finds_nothing_against_edgecap_up") {
        return;
    }
    let Some(st) = schemathesis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let log = dir.path().join("up.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut up = Proc {
        child: Command::new(bin("edgecap"))
            .arg("up")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
        log,
    };
    let credentials: serde_json::Value = wait_for("edgecap up", Duration::from_secs(60), || {
        up.assert_running("edgecap up");
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        serde_json::from_slice(&std::fs::read(data.join("credentials.json")).ok()?).ok()
    });
    let account = credentials["account_id"].as_str().unwrap();
    let token = credentials["token"].as_str().unwrap();
    // Path parameters the token can reach: the account's own id.
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, format!("[parameters]\n\"path.account_id\" = \"{account}\"\n")).unwrap();
    let out = Command::new(st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/client/v4/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--seed", "42", "--max-examples", "30", "--request-timeout", "30", "--report-dir"])
        .arg(dir.path().join("report"))
        .env("NO_COLOR", "1")
        // Its example database (.hypothesis/) stays in the temporary directory.
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n--- edgecap up\n{}", up.log_text());
    assert!(text.contains("No issues found"), "{text}");
    assert!(!text.contains("Runtime Error"), "{text}");
}
