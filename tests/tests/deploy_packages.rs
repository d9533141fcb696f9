//! The Debian packages as operators get them: `tests/deploy/check_packages.sh` builds
//! edgecap-agent, edgecap-coordinator and edgecap with cargo-deb from the binaries this
//! workspace built, installs them with dpkg, checks their files, conffiles, system users and
//! systemd units (`systemd-analyze verify`, the least-privilege settings), starts the
//! installed binaries as their units would (setpriv with the units' user, capabilities and
//! no_new_privs when systemd is not running), enrolls the agent with a bootstrap token, takes
//! a sample capture of ping traffic on loopback through the installed CLI, then removes and
//! purges the packages and checks that nothing of theirs is left.
//!
//! Needs root, and a machine where edgecap is not installed (the script refuses otherwise).

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn debian_packages_install_run_a_capture_and_purge_cleanly() {
    let test = "debian_packages_install_run_a_capture_and_purge_cleanly";
    if !edgecap_e2e::require_root(test) {
        return;
    }
    for tool in ["dpkg", "systemd-analyze", "setpriv", "unshare", "tshark", "curl"] {
        if !edgecap_e2e::require_tool(test, tool) {
            return;
        }
    }
    // The binaries this build made: the packages are built from them (no release build).
    let agent = edgecap_e2e::bin("edgecap-agent");
    let bin_dir = agent.parent().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/check_packages.sh");
    let out = Command::new("bash").arg(&script).env("EDGECAP_BIN_DIR", bin_dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{} failed ({}):\n{text}", script.display(), out.status);
}
