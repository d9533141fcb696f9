//! Rules of the codebase checked as tests (rust-analyzer's "tidy" idea): the layout that
//! ARCHITECTURE.md describes stays true.
//!
//! * no import cycle between the top-level modules of the apps (`crate::x` uses);
//! * no file in `coordinator/`, `agent/`, `cli/` over 400 lines;
//! * no PoP or capture status string literal outside the conversion modules and tests;
//! * nothing outside `crates/capture` uses libpcap;
//! * no task spawned outside an owner in the coordinator and agent libraries.
//!
//! Test code (from `#[cfg(test)]` on, and whole files named `tests.rs` or `*_tests.rs`, which
//! are only included under `#[cfg(test)]`) is exempt from the rules about code.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The code of a file without its trailing `#[cfg(test)]` module and without comments.
fn code_without_tests(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).expect("read source");
    let body = match text.find("#[cfg(test)]") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    body.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The top-level module a file of `src` belongs to (`None` for lib.rs and main.rs).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Some(module) = top_module(src, &file) else { continue };
        let code = code_without_tests(&file);
        let uses = graph.entry(module.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let target: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !target.is_empty() && target != module {
                uses.insert(target);
            }
        }
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_apps_have_no_import_cycle() {
    for app in ["coordinator", "agent", "cli", "bench"] {
        let graph = module_graph(&root().join(app).join("src"));
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{app}: modules import each other: {}", cycle.join(" -> "));
        }
    }
    // The check itself finds a cycle when there is one.
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(find_cycle(&g).is_some());
}

#[test]
fn the_agent_registry_is_a_leaf() {
    let graph = module_graph(&root().join("coordinator/src"));
    let uses = graph.get("agents").cloned().unwrap_or_default();
    let allowed: BTreeSet<String> = ["model"].iter().map(|s| s.to_string()).collect();
    assert!(uses.is_subset(&allowed), "coordinator/src/agents may use only {allowed:?}, uses {uses:?}");
}

#[test]
fn no_app_file_is_over_400_lines() {
    for app in ["coordinator", "agent", "cli"] {
        for file in rust_files(&root().join(app)) {
            let lines = std::fs::read_to_string(&file).expect("read").lines().count();
            assert!(lines <= 400, "{} has {lines} lines; split it by responsibility", file.display());
        }
    }
}

#[test]
fn status_strings_appear_only_in_the_conversion_modules() {
    let statuses = [
        "\"pending\"",
        "\"running\"",
        "\"uploading\"",
        "\"done\"",
        "\"failed\"",
        "\"skipped\"",
        "\"success\"",
        "\"conversion_pending\"",
        "\"conversion_running\"",
    ];
    for app in ["coordinator", "agent"] {
        for file in rust_files(&root().join(app).join("src")) {
            if file.file_name().is_some_and(|n| n == "convert.rs") {
                continue;
            }
            let code = code_without_tests(&file);
            for status in statuses {
                // As a value, not as a JSON key (`"success": true` in the envelope).
                let as_value =
                    code.match_indices(status).any(|(at, _)| !code[at + status.len()..].trim_start().starts_with(':'));
                assert!(
                    !as_value,
                    "{} uses the status literal {status}; use the enum (conversions live in convert.rs)",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn only_the_capture_crate_uses_libpcap() {
    for dir in ["coordinator", "agent", "cli", "bench", "crates/merge", "crates/storage", "crates/state"] {
        let manifest = std::fs::read_to_string(root().join(dir).join("Cargo.toml")).expect("manifest");
        assert!(
            !manifest.lines().any(|l| l.trim_start().starts_with("pcap.") || l.trim_start().starts_with("pcap =")),
            "{dir}/Cargo.toml depends on pcap; open sources through edgecap_capture::source"
        );
        for file in rust_files(&root().join(dir).join("src")) {
            let code = code_without_tests(&file);
            let uses = code.match_indices("pcap::").any(|(at, _)| {
                let before = code[..at].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            assert!(!uses, "{} uses libpcap directly; go through edgecap_capture::source", file.display());
        }
    }
}

#[test]
fn library_code_spawns_only_through_an_owner() {
    for app in ["coordinator", "agent"] {
        for file in rust_files(&root().join(app).join("src")) {
            if file.file_name().is_some_and(|n| n == "main.rs") {
                continue;
            }
            let code = code_without_tests(&file);
            for detached in ["tokio::spawn(", "std::thread::spawn(", "thread::spawn("] {
                assert!(
                    !code.contains(detached),
                    "{} calls {detached}; spawn on the owner's Tasks (edgecap_common::tasks) so shutdown awaits it",
                    file.display()
                );
            }
        }
    }
}
