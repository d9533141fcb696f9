//! The merge engine against the shared real-world captures (`../shared/testdata/pcaps`) and
//! their manifest, and against Wireshark's mergecap.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::path::{Path, PathBuf};
use std::process::Command;

use edgecap_merge::{CaptureReader, MergeError, MergeInput, MergeOptions, OutputFormat, Record, merge};

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("EDGECAP_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/pcaps"));
    if dir.join("manifest.tsv").exists() {
        return Some(dir);
    }
    assert!(std::env::var("CI").is_err(), "test data missing at {}", dir.display());
    eprintln!("SKIP: no test data at {}", dir.display());
    None
}

struct Row {
    file: String,
    packets: u64,
    first_ts: String,
    last_ts: String,
    malformed: bool,
    note: String,
}

fn manifest(dir: &Path) -> Vec<Row> {
    std::fs::read_to_string(dir.join("manifest.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Row {
                file: f[0].into(),
                packets: f[3].parse().unwrap(),
                first_ts: f[4].into(),
                last_ts: f[5].into(),
                malformed: f[6] == "yes",
                note: f[7].into(),
            }
        })
        .collect()
}

/// (ts_ns, orig_len, bytes, interface index, link type)
type Packet = (u64, u32, Vec<u8>, usize, u16);

/// Every record of a capture: (ts_ns, orig_len, bytes, interface).
fn read_all(bytes: &[u8]) -> Result<Vec<Packet>, edgecap_merge::ReadError> {
    let mut reader = CaptureReader::open(bytes)?;
    let mut record = Record::default();
    let mut out = Vec::new();
    while reader.next_record(&mut record)? {
        let linktype = reader.interfaces()[record.iface].linktype;
        out.push((record.ts_ns, record.orig_len, record.bytes().to_vec(), record.iface, linktype));
    }
    Ok(out)
}

/// "1213789568.367761" -> (ns, tolerance in ns from the digits printed).
fn parse_ts(text: &str) -> Option<(u64, u64)> {
    let (secs, frac) = text.split_once('.')?;
    let digits = frac.len().min(9) as u32;
    let frac_ns: u64 = frac[..digits as usize].parse::<u64>().ok()? * 10u64.pow(9 - digits);
    Some((secs.parse::<u64>().ok()? * 1_000_000_000 + frac_ns, 10u64.pow(9 - digits)))
}

fn merge_one(
    name: &str,
    bytes: &[u8],
    format: OutputFormat,
    salvage: bool,
) -> Result<(Vec<u8>, edgecap_merge::MergeReport), MergeError> {
    let input = MergeInput { name: name.to_string(), reader: bytes, provenance: None };
    let options = MergeOptions { format: Some(format), salvage, comment: Some("test".into()) };
    merge(vec![input], Vec::new(), &options)
}

/// Runs [`tshark_clean`] over many outputs, a few at a time.
fn tshark_clean_all(outputs: &[(String, Vec<u8>)]) {
    if Command::new("tshark").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "tshark missing");
        eprintln!("SKIP tshark checks: tshark is not installed");
        return;
    }
    let chunk = outputs.len().div_ceil(4).max(1);
    std::thread::scope(|scope| {
        for part in outputs.chunks(chunk) {
            scope.spawn(move || part.iter().for_each(|(what, bytes)| tshark_clean(bytes, what)));
        }
    });
}

fn tshark_clean(bytes: &[u8], what: &str) {
    let path =
        std::env::temp_dir().join(format!("edgecap-merge-{}-{}.out", std::process::id(), what.replace('/', "_")));
    std::fs::write(&path, bytes).unwrap();
    let out = Command::new("tshark").args(["-n", "-r"]).arg(&path).output().unwrap();
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> =
        stderr.lines().filter(|l| !l.contains("Running as user") && !l.trim().is_empty()).collect();
    assert!(out.status.success() && warnings.is_empty(), "tshark on {what}: {warnings:?}");
}

#[test]
fn every_valid_file_reads_with_the_manifest_count_and_time_range() {
    let Some(dir) = testdata() else { return };
    let mut checked = 0;
    for row in manifest(&dir).iter().filter(|r| !r.malformed) {
        let bytes = std::fs::read(dir.join(&row.file)).unwrap();
        let packets = read_all(&bytes).unwrap_or_else(|e| panic!("{}: {e}", row.file));
        assert_eq!(packets.len() as u64, row.packets, "{}", row.file);
        // capinfos reports the earliest and latest timestamps. (Not for the EDGE file whose
        // out-of-range microseconds the tools read differently, nor files with SPBs.)
        if let (Some((first, tol)), Some((last, _))) = (parse_ts(&row.first_ts), parse_ts(&row.last_ts))
            && !row.note.contains("out-of-range usec")
        {
            let min = packets.iter().map(|p| p.0).min().unwrap();
            let max = packets.iter().map(|p| p.0).max().unwrap();
            assert!(min.abs_diff(first) < tol, "{}: first {min} vs {first}", row.file);
            assert!(max.abs_diff(last) < tol, "{}: last {max} vs {last}", row.file);
        }
        checked += 1;
    }
    assert!(checked >= 40, "{checked} files checked");
}

#[test]
fn every_valid_file_round_trips_through_both_writers_and_tshark_reads_them() {
    let Some(dir) = testdata() else { return };
    let mut outputs = Vec::new();
    for row in manifest(&dir).iter().filter(|r| !r.malformed) {
        let bytes = std::fs::read(dir.join(&row.file)).unwrap();
        let original = read_all(&bytes).unwrap();
        let strip = |v: &[Packet]| v.iter().map(|p| (p.0, p.1, p.2.clone(), p.4)).collect::<Vec<_>>();

        let (ng, report) = merge_one(&row.file, &bytes, OutputFormat::PcapNg, false).unwrap();
        assert_eq!(report.packets, row.packets, "{}", row.file);
        let back = read_all(&ng).unwrap_or_else(|e| panic!("{} as pcapng: {e}", row.file));
        assert!(strip(&back) == strip(&original), "{} through pcapng: records differ", row.file);
        outputs.push((format!("{}.pcapng", row.file), ng));

        let mut linktypes: Vec<u16> = original.iter().map(|p| p.4).collect();
        linktypes.dedup();
        linktypes.sort_unstable();
        linktypes.dedup();
        match merge_one(&row.file, &bytes, OutputFormat::Pcap, false) {
            Ok((pcap, _)) => {
                let back = read_all(&pcap).unwrap();
                let (a, b) = (strip(&back), strip(&original));
                let first_diff = a.iter().zip(&b).position(|(x, y)| x != y);
                assert!(
                    a == b,
                    "{} through classic pcap: {} vs {} records, first difference at {first_diff:?}: ts {:?} vs {:?}",
                    row.file,
                    a.len(),
                    b.len(),
                    first_diff.map(|i| a[i].0),
                    first_diff.map(|i| b[i].0)
                );
                outputs.push((format!("{}.pcap", row.file), pcap));
            }
            Err(MergeError::LinkTypes { .. }) => {
                assert!(linktypes.len() > 1, "{}: refused although it has one link type", row.file);
            }
            Err(e) => panic!("{} to classic pcap: {e}", row.file),
        }
    }
    tshark_clean_all(&outputs);
}

#[test]
fn every_malformed_file_is_a_clear_error_and_salvage_keeps_what_came_before() {
    let Some(dir) = testdata() else { return };
    let mut checked = 0;
    for row in manifest(&dir).iter().filter(|r| r.malformed) {
        let bytes = std::fs::read(dir.join(&row.file)).unwrap();
        for format in [OutputFormat::Pcap, OutputFormat::PcapNg] {
            let err = merge_one(&row.file, &bytes, format, false).expect_err(&row.file).to_string();
            assert!(err.starts_with(&format!("{}: at byte ", row.file)), "{}: {err}", row.file);
            let (_, report) = merge_one(&row.file, &bytes, format, true).unwrap();
            assert_eq!(report.packets, row.packets, "{}: packets before the damage", row.file);
            assert!(report.inputs[0].damage.is_some(), "{}: damage reported", row.file);
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn merge_groups_match_mergecap() {
    let Some(dir) = testdata() else { return };
    if Command::new("mergecap").arg("-v").output().is_err() {
        assert!(std::env::var("CI").is_err(), "mergecap missing");
        eprintln!("SKIP: mergecap is not installed");
        return;
    }
    let groups = std::fs::read_to_string(dir.join("merge_groups.tsv")).unwrap();
    for line in groups.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (group, files, merged, switches): (&str, Vec<&str>, u64, usize) =
            (f[0], f[1].split(',').collect(), f[3].parse().unwrap(), f[7].parse().unwrap());
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        let theirs_path = std::env::temp_dir().join(format!("edgecap-mergecap-{}-{group}.pcap", std::process::id()));
        let status =
            Command::new("mergecap").args(["-F", "pcap", "-w"]).arg(&theirs_path).args(&paths).status().unwrap();
        assert!(status.success());
        let theirs = read_all(&std::fs::read(&theirs_path).unwrap()).unwrap();
        std::fs::remove_file(&theirs_path).unwrap();

        let contents: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let inputs = || {
            contents
                .iter()
                .zip(&files)
                .map(|(b, n)| MergeInput { name: n.to_string(), reader: &b[..], provenance: None })
                .collect::<Vec<_>>()
        };
        let options = MergeOptions { format: Some(OutputFormat::Pcap), ..Default::default() };
        let (ours, report) = merge(inputs(), Vec::new(), &options).unwrap();
        let ours = read_all(&ours).unwrap();
        assert_eq!(report.packets, merged, "{group}");
        // Same packets in the same order up to the tie rule: mergecap 4.0 puts the LAST input
        // first on equal timestamps, we put the first input first (stable). So compare each run
        // of equal timestamps as a multiset.
        let key = |v: &[Packet]| {
            let mut k: Vec<(u64, Vec<u8>)> = v.iter().map(|p| (p.0, p.2.clone())).collect();
            k.sort(); // sorts within equal timestamps only, as both are time-ordered
            k
        };
        assert!(theirs.windows(2).all(|w| w[0].0 <= w[1].0), "{group}: mergecap time order");
        assert_eq!(ours.len(), theirs.len(), "{group}: packet count");
        let same = key(&ours) == key(&theirs);
        assert!(same, "{group}: our merge and mergecap's differ beyond the order of ties");
        let times = |v: &[Packet]| v.iter().map(|p| p.0).collect::<Vec<_>>();
        assert_eq!(times(&ours), times(&theirs), "{group}: same timestamp sequence");
        assert!(ours.windows(2).all(|w| w[0].0 <= w[1].0), "{group}: time order");

        // Which input each packet came from: the pcapng interfaces say.
        let options = MergeOptions { format: Some(OutputFormat::PcapNg), ..Default::default() };
        let (ng, _) = merge(inputs(), Vec::new(), &options).unwrap();
        let sources: Vec<usize> = read_all(&ng).unwrap().iter().map(|p| p.3).collect();
        let observed = sources.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(observed, switches, "{group}: source switches under the stable tie rule");
    }
}
