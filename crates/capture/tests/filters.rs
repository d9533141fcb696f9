//! Filter semantics: the match counts tcpdump gave for every file and expression in
//! `../shared/testdata/pcaps/filters.tsv` are reproduced by the offline path the lookback
//! uses (libpcap compile for the file's link type + `offline::matches` on the wire length).

use std::path::{Path, PathBuf};

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGECAP_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/pcaps"));
    if dir.join("filters.tsv").exists() {
        return Some(dir);
    }
    assert!(std::env::var("CI").is_err(), "test data missing at {}", dir.display());
    eprintln!("SKIP: no test data at {}", dir.display());
    None
}

#[test]
fn tcpdump_counts_are_reproduced_for_every_file_and_expression() {
    let Some(dir) = testdata() else { return };
    let table = std::fs::read_to_string(dir.join("filters.tsv")).unwrap();
    let mut checked = 0;
    let mut mismatches = Vec::new();
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (file, expr, expected) = (f[0], f[1], f[2]);
        let Ok(expected) = expected.parse::<u64>() else { continue }; // tcpdump refused it too
        let mut capture = pcap::Capture::from_file(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        // Compiled with the file's own handle, as tcpdump does: for DLT_NULL, libpcap swaps the
        // address-family constants when the file was written in the other byte order (a live
        // capture, like the lookback's, is always in host order).
        let program = capture
            .compile(expr, true)
            .unwrap_or_else(|e| panic!("{file} {expr:?}: tcpdump compiled it, we did not: {e}"));
        // And our dead-handle compile agrees wherever byte order cannot matter.
        if capture.get_datalink().0 != 0 {
            edgecap_capture::compile_offline(capture.get_datalink().0, 262_144, expr)
                .unwrap_or_else(|e| panic!("{file} {expr:?}: {e}"));
        }
        let mut count = 0u64;
        loop {
            match capture.next_packet() {
                Ok(p) => {
                    if edgecap_capture::offline::matches(&program, p.data, p.header.len) {
                        count += 1;
                    }
                }
                Err(pcap::Error::NoMorePackets) => break,
                Err(e) => panic!("{file}: {e}"),
            }
        }
        if count != expected {
            mismatches.push(format!("{file} {expr:?}: {count}, tcpdump {expected}"));
        }
        checked += 1;
    }
    assert!(mismatches.is_empty(), "{mismatches:#?}");
    assert!(checked > 500, "{checked} (file, expression) pairs checked");
}
