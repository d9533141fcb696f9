//! The web page in a real browser: `tests/web/test_page.py` drives Debian's headless Chromium
//! with Playwright (Python, sync API; never a downloaded browser) against `edgecap up` (a local
//! agent on `lo`) and s3s-fs: sign in, a sample capture created with the keyboard only, seen to
//! succeed with its per-PoP table and packet preview, downloaded (a pcap); the agents by PoP;
//! bucket ownership created, validated and deleted; a full capture's dry run (its answer shown,
//! no capture created), then its progress and end, with each PoP's clock offset; the API's
//! message next to the field it names; no console error; every field labelled and every
//! control reachable with Tab.
//!
//! Python comes from `EDGECAP_SDK_PYTHON` (scripts/setup.sh's venv, set by scripts/test.sh),
//! else `$HOME/.cache/edgecap/sdk-venv/bin/python`, else `python3`: the first that imports
//! `playwright`.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;

use edgecap_e2e::{bin, require_root, require_tool};

const TEST: &str = "the_web_page_works_in_headless_chromium";

fn playwright_python() -> Option<String> {
    let venv = std::env::var("HOME").ok().map(|home| format!("{home}/.cache/edgecap/sdk-venv/bin/python"));
    [std::env::var("EDGECAP_SDK_PYTHON").ok(), venv, Some("python3".to_string())].into_iter().flatten().find(|py| {
        Command::new(py).args(["-c", "import playwright.sync_api"]).output().is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_web_page_works_in_headless_chromium() {
    if !require_root(TEST) || !require_tool(TEST, "s3s-fs") || !require_tool(TEST, "chromium") {
        return;
    }
    let Some(python) = playwright_python() else {
        assert!(
            std::env::var("CI").is_err(),
            "{TEST}: the playwright Python package is missing; scripts/setup.sh installs it"
        );
        eprintln!("SKIP {TEST}: the playwright Python package is not installed (scripts/setup.sh installs it)");
        return;
    };
    let chromium = Command::new("sh").args(["-c", "command -v chromium"]).output().unwrap();
    let chromium = String::from_utf8(chromium.stdout).unwrap().trim().to_string();
    let out = Command::new(&python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/web/test_page.py"))
        .arg(bin("edgecap"))
        .env("EDGECAP_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(out.status.success(), "{TEST}: tests/web/test_page.py failed ({}):\n{stdout}\n{stderr}", out.status);
}
