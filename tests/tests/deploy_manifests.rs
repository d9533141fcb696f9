//! The Kubernetes deployment as operators get it: `tests/deploy/check_manifests.py` renders
//! the kustomize base and every overlay with `kubectl kustomize`, validates every object with
//! kubernetes-validate in strict mode against the pinned Kubernetes version (offline: the
//! schemas ship in its wheel), and checks the properties docs/operations.md promises: nothing
//! privileged, the agent's capabilities exactly NET_RAW and NET_ADMIN, no Secret holding a
//! node's key, probes and resources everywhere, network policies, pinned images. It also
//! checks that the Grafana dashboard queries only metrics the binaries export.
//!
//! The Python comes from `EDGECAP_SDK_PYTHON` (scripts/test.sh sets it) or the venv
//! scripts/setup.sh makes, whichever can import `kubernetes_validate`.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::PathBuf;
use std::process::Command;

/// A Python that has kubernetes-validate (and PyYAML, its dependency).
fn validator_python() -> Option<PathBuf> {
    let venv = std::env::var("EDGECAP_SDK_VENV")
        .map(PathBuf::from)
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|home| PathBuf::from(home).join(".cache/edgecap/sdk-venv")));
    let candidates = [std::env::var("EDGECAP_SDK_PYTHON").ok().map(PathBuf::from), venv.map(|v| v.join("bin/python"))];
    candidates.into_iter().flatten().find(|py| {
        Command::new(py).args(["-c", "import kubernetes_validate, yaml"]).output().is_ok_and(|o| o.status.success())
    })
}

#[test]
fn kubernetes_overlays_validate_strictly_and_keep_their_security_properties() {
    let test = "kubernetes_overlays_validate_strictly_and_keep_their_security_properties";
    if !edgecap_e2e::require_tool(test, "kubectl") {
        return;
    }
    let Some(python) = validator_python() else {
        assert!(
            std::env::var("CI").is_err(),
            "{test}: kubernetes-validate is not installed; scripts/setup.sh installs it"
        );
        eprintln!("SKIP {test}: kubernetes-validate is not installed (scripts/setup.sh installs it)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/check_manifests.py");
    let out = Command::new(&python).arg(&script).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{} failed ({}):\n{text}", script.display(), out.status);
}
