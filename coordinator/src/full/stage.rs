//! The merge within the process's file-descriptor limit. An agent's shards follow each other
//! in time, so they are read as one stream ([`Chained`]: one open file per agent, not per
//! shard). When even the agents are more than `fan_in`, they are merged in stages: groups of
//! `fan_in` into intermediate pcapng files (keeping each PoP's interface, name and counters),
//! then those, until one file is left.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use edgecap_merge::{MergeInput, MergeOptions, MergeReport, OutputFormat, Provenance};

/// Classic pcap's file header: the part of every shard after an agent's first that is
/// skipped (here and when merging straight from the bucket).
pub(super) const PCAP_HEADER: usize = 24;

/// One agent's shards, in order, and where they came from.
#[derive(Clone, Debug)]
pub(super) struct AgentInput {
    /// Names the input in errors (the first shard's key).
    pub name: String,
    pub files: Vec<PathBuf>,
    pub provenance: Provenance,
}

/// Reads shard files one after another as one classic pcap stream: the first whole, the
/// others without their file header. Only files whose header is the first one's are chained
/// ([`split_by_header`] makes sure of it).
pub(super) struct Chained {
    files: VecDeque<PathBuf>,
    current: Option<BufReader<File>>,
    first: bool,
}

impl Chained {
    pub(super) fn new(files: Vec<PathBuf>) -> Self {
        Self { files: files.into(), current: None, first: true }
    }
}

impl Read for Chained {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.current.is_none() {
                let Some(path) = self.files.pop_front() else { return Ok(0) };
                let mut file = BufReader::with_capacity(32 << 10, File::open(&path)?);
                if !std::mem::take(&mut self.first) {
                    let mut header = [0u8; PCAP_HEADER];
                    file.read_exact(&mut header)?;
                }
                self.current = Some(file);
            }
            let n = self.current.as_mut().map_or(Ok(0), |f| f.read(buf))?;
            if n > 0 {
                return Ok(n);
            }
            self.current = None;
        }
    }
}

fn header(path: &Path) -> std::io::Result<[u8; PCAP_HEADER]> {
    let mut header = [0u8; PCAP_HEADER];
    File::open(path)?.read_exact(&mut header)?;
    Ok(header)
}

/// Splits an agent's shards into runs with the same file header (one run unless the agent's
/// capture settings changed), so each run can be [`Chained`].
pub(super) fn split_by_header(input: AgentInput) -> std::io::Result<Vec<AgentInput>> {
    let mut runs: Vec<AgentInput> = Vec::new();
    let mut last: Option<[u8; PCAP_HEADER]> = None;
    for file in input.files {
        let this = header(&file)?;
        match runs.last_mut() {
            Some(run) if last == Some(this) => run.files.push(file),
            _ => runs.push(AgentInput {
                name: input.name.clone(),
                files: vec![file],
                provenance: input.provenance.clone(),
            }),
        }
        last = Some(this);
    }
    Ok(runs)
}

/// How many inputs one merge may open: the soft file-descriptor limit (raised to the hard
/// one at start) less a reserve for sockets and the store.
pub(super) fn fan_in() -> usize {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    usize::try_from(soft.saturating_sub(256)).unwrap_or(usize::MAX).clamp(16, 4096)
}

/// Merges `inputs` into `out`, in stages of at most `fan_in` open inputs, with scratch files
/// in `scratch`.
pub(super) fn merge<W: Write>(
    inputs: Vec<AgentInput>,
    out: W,
    options: &MergeOptions,
    fan_in: usize,
    scratch: &Path,
) -> anyhow::Result<(W, MergeReport)> {
    let fan_in = fan_in.max(2);
    let mut runs = Vec::new();
    for input in inputs {
        runs.extend(split_by_header(input)?);
    }
    if runs.len() <= fan_in {
        let readers = runs
            .into_iter()
            .map(|r| MergeInput { name: r.name, reader: Chained::new(r.files), provenance: Some(r.provenance) })
            .collect();
        return Ok(edgecap_merge::merge(readers, out, options)?);
    }
    // First stage: groups of agents into pcapng files that keep every interface.
    let stage_options = MergeOptions { format: Some(OutputFormat::PcapNg), salvage: options.salvage, comment: None };
    let mut stages: Vec<PathBuf> = Vec::new();
    for (i, group) in runs.chunks(fan_in).enumerate() {
        let path = scratch.join(format!("stage-0-{i:05}.pcapng"));
        let readers = group
            .iter()
            .cloned()
            .map(|r| MergeInput { name: r.name, reader: Chained::new(r.files), provenance: Some(r.provenance) })
            .collect();
        let (file, _) = edgecap_merge::merge(readers, BufWriter::new(File::create(&path)?), &stage_options)?;
        file.into_inner().map_err(|e| e.into_error())?;
        stages.push(path);
    }
    // Then the stage files (an empty name keeps their interfaces' names), again in stages
    // while there are too many.
    let mut level = 1;
    while stages.len() > fan_in {
        let mut next = Vec::new();
        for (i, group) in stages.chunks(fan_in).enumerate() {
            let path = scratch.join(format!("stage-{level}-{i:05}.pcapng"));
            let (file, _) =
                edgecap_merge::merge(stage_inputs(group)?, BufWriter::new(File::create(&path)?), &stage_options)?;
            file.into_inner().map_err(|e| e.into_error())?;
            next.push(path);
        }
        for old in &stages {
            let _ = std::fs::remove_file(old);
        }
        stages = next;
        level += 1;
    }
    Ok(edgecap_merge::merge(stage_inputs(&stages)?, out, options)?)
}

fn stage_inputs(paths: &[PathBuf]) -> std::io::Result<Vec<MergeInput<Chained>>> {
    Ok(paths
        .iter()
        .map(|p| MergeInput { name: String::new(), reader: Chained::new(vec![p.clone()]), provenance: None })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard of `n` packets from `agent`, timestamps `start + 10 * i` ns... in ms steps.
    fn shard(path: &Path, start_ms: u64, n: u64) {
        let mut w = edgecap_merge::write::PcapWriter::new(File::create(path).unwrap(), 1, 65535, true).unwrap();
        for i in 0..n {
            w.packet((start_ms + 10 * i) * 1_000_000, 60, &[0u8; 60]).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn many_agents_merge_in_stages_into_one_ordered_file_that_keeps_every_pop() {
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = Vec::new();
        // 7 agents x 3 shards x 5 packets, interleaved in time; at most 2 inputs open at once.
        for a in 0..7u64 {
            let files: Vec<PathBuf> = (0..3u64)
                .map(|s| {
                    let p = dir.path().join(format!("a{a}-s{s}.pcap"));
                    shard(&p, 1000 * s + a, 5);
                    p
                })
                .collect();
            let provenance = Provenance { pop: format!("pop{a}"), agent: format!("agent{a}"), ..Default::default() };
            inputs.push(AgentInput { name: format!("a{a}"), files, provenance });
        }
        let options = MergeOptions { format: Some(OutputFormat::PcapNg), salvage: false, comment: None };
        let (out, report) = merge(inputs, Vec::new(), &options, 2, dir.path()).unwrap();
        assert_eq!(report.packets, 7 * 3 * 5);
        let mut reader = edgecap_merge::read::CaptureReader::open(&out[..]).unwrap();
        let mut record = edgecap_merge::read::Record::default();
        let (mut last, mut n) = (0, 0);
        while reader.next_record(&mut record).unwrap() {
            assert!(record.ts_ns >= last, "out of order");
            last = record.ts_ns;
            n += 1;
        }
        assert_eq!(n, 105);
        let names: Vec<String> = reader.interfaces().iter().filter_map(|i| i.name.clone()).collect();
        for a in 0..7 {
            assert!(names.contains(&format!("pop{a}/agent{a}/if0")), "{names:?}");
        }
    }

    #[test]
    fn shards_with_another_header_are_not_chained() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.pcap"), dir.path().join("b.pcap"));
        shard(&a, 0, 2);
        let mut w = edgecap_merge::write::PcapWriter::new(File::create(&b).unwrap(), 101, 65535, true).unwrap();
        w.packet(5_000_000_000, 60, &[0u8; 60]).unwrap();
        w.finish().unwrap();
        let input = AgentInput { name: "x".into(), files: vec![a, b], provenance: Provenance::default() };
        assert_eq!(split_by_header(input).unwrap().len(), 2);
    }
}
