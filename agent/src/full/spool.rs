//! The spool on disk, one directory per capture (`<spool>/<capture_id>/`):
//!
//! ```text
//! job.json                 what was asked (written before the capture starts)
//! shard-000001.pcap        closed shards, fsynced ...
//! shard-000001.pcap.json   ... and complete once their manifest exists
//! end.json                 how the capture ended (counters, stop reason, error)
//! ```
//!
//! Once it is over and its shards are delivered, a capture's directory is replaced by a
//! line of `<spool>/finished.jsonl` (`finished.rs`).
//!
//! Everything here is blocking file I/O: callers run it on a blocking thread.

use std::path::{Path, PathBuf};

use edgecap_capture::session::Counters;
use edgecap_capture::shard::ShardManifest;
use serde::{Deserialize, Serialize};

use crate::convert::StopReason;

/// `job.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct JobFile {
    pub capture_id: String,
    pub interface: String,
    pub started_ns: u64,
    /// The capture's trace context: uploads after a restart still join its trace.
    #[serde(default)]
    pub traceparent: String,
}

/// `end.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct EndFile {
    /// The capture's counters (its own stop reason inside is not used: see `stop_reason`).
    pub counters: Counters,
    pub stop_reason: StopReason,
    pub error: String,
    pub interrupted: bool,
}

pub(super) fn is_capture_id(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_manifest(name: &str) -> bool {
    name.ends_with(".pcap.json") || name.ends_with(".pcapng.json")
}

/// Whether a capture's directory may be drained (never read by the scans again): the job was
/// over when listed, the caller's read of its manifests found none, good or damaged, and no
/// shard file is left that could still change ([`settled`]). The one condition both scans
/// apply.
pub(super) fn drainable(over: bool, good: &[(PathBuf, ShardManifest)], damaged: &[PathBuf], dir: &Path) -> bool {
    over && good.is_empty() && damaged.is_empty() && settled(dir)
}

/// Whether `name` in an ended capture's directory is a shard file that can never be delivered:
/// it has no manifest (cut short by a failed write or a restart, or delivered and half
/// forgotten, which loses its manifest before its file). One whose manifest was set aside as
/// damaged stays for an operator, and a check that fails keeps the file.
fn undeliverable(dir: &Path, name: &str) -> bool {
    let kept = |suffix: &str| dir.join(format!("{name}{suffix}")).try_exists().unwrap_or(true);
    (name.ends_with(".pcap") || name.ends_with(".pcapng")) && !kept(".json") && !kept(".json.damaged")
}

/// Whether an ended capture's directory, with no manifest left, could be read and holds no
/// shard file that may still go: [`undeliverable`] ones are removed, as after a restart
/// ([`recover`]). (A directory that cannot be read now, or a file that cannot be removed,
/// keeps it open: draining counts its size as it is.)
fn settled(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_manifest(&name) {
            return false;
        }
        if undeliverable(dir, &name) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %entry.path().display(), "undeliverable shard (no manifest) removed"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => return false,
            }
        }
    }
    true
}

/// Writes `value` as JSON atomically ([`write_atomic`]).
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomic(path, &serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?)
}

/// Puts `bytes` in `path` atomically: a temporary file beside it (`<path>.tmp`), fsync,
/// rename, fsync of the directory.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Completed shards (those with a manifest) in a capture directory, in sequence order; and
/// the manifests that do not parse.
pub(super) fn manifests(dir: &Path) -> (Vec<(PathBuf, ShardManifest)>, Vec<PathBuf>) {
    let (mut good, mut damaged) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir(dir) else { return (good, damaged) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_manifest(&name) {
            continue;
        }
        match read_json::<ShardManifest>(&entry.path()) {
            // A manifest names its shard by file name only; anything else is not ours.
            Some(m) if !m.file.contains('/') && !m.file.starts_with('.') => good.push((entry.path(), m)),
            _ => damaged.push(entry.path()),
        }
    }
    good.sort_by_key(|(_, m)| m.sequence);
    (good, damaged)
}

/// How old a measure of the spool may be for a start's check and a report (reports come
/// every second, so they measure again each time; a start and the report it triggers reuse it).
pub(super) const SPOOL_FRESH: std::time::Duration = std::time::Duration::from_millis(500);

/// How often the whole spool directory is listed, for what is in it besides the captures'
/// own directories (entries set aside as damaged, an operator's files).
pub(super) const SURVEY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The spool's size, measured again only when the last measure is older than `max_age`: a
/// burst of starts (each checks for room) and the reports they trigger had each walked the
/// whole spool.
///
/// A measure is the sum of two parts, so that its cost follows the captures that are
/// still writing or uploading, not the spool's other entries:
/// - the live capture directories the caller names, walked;
/// - everything else in the spool (the finished captures' file, entries set aside as
///   damaged, an operator's files), from a listing of it at most every `survey_every`.
pub(super) struct SpoolMeter {
    /// Bytes as last measured.
    bytes: std::sync::atomic::AtomicU64,
    /// When (`None`: never). Not held while the spool is walked, so that readers of the last
    /// measure (metrics) never wait for a walk.
    measured: std::sync::Mutex<Option<std::time::Instant>>,
    /// Everything else.
    parts: std::sync::Mutex<Parts>,
    survey_every: std::time::Duration,
}

#[derive(Default)]
struct Parts {
    /// Bytes of the entries that are not live, as last surveyed, and when.
    others: u64,
    surveyed: Option<std::time::Instant>,
}

impl Default for SpoolMeter {
    fn default() -> Self {
        Self::surveying_every(SURVEY_EVERY)
    }
}

impl SpoolMeter {
    /// A meter that lists the whole spool at most every `survey_every`.
    pub(super) fn surveying_every(survey_every: std::time::Duration) -> Self {
        SpoolMeter { bytes: Default::default(), measured: Default::default(), parts: Default::default(), survey_every }
    }

    /// The size of the spool `dir`, at most `max_age` old; `live` are the directories in it
    /// of the captures still writing or uploading. Blocking when it measures.
    pub(super) fn bytes(&self, dir: &Path, max_age: std::time::Duration, live: &[PathBuf]) -> u64 {
        use std::sync::atomic::Ordering;
        if edgecap_common::lock(&self.measured).is_some_and(|at| at.elapsed() <= max_age) {
            return self.bytes.load(Ordering::Relaxed);
        }
        let bytes = {
            let mut parts = edgecap_common::lock(&self.parts);
            let live_names: std::collections::HashSet<&std::ffi::OsStr> =
                live.iter().filter_map(|d| d.file_name()).collect();
            if parts.surveyed.is_none_or(|at| at.elapsed() >= self.survey_every) {
                // (A directory removed or made while the spool is listed may be counted among
                // the others until the next listing.)
                let mut others = 0;
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for entry in entries.flatten() {
                        if !live_names.contains(entry.file_name().as_os_str()) {
                            others += entry_bytes(&entry);
                        }
                    }
                }
                parts.others = others;
                parts.surveyed = Some(std::time::Instant::now());
            }
            let walked: u64 = live_names.iter().map(|name| dir_bytes(&dir.join(name))).sum();
            parts.others + walked
        };
        self.bytes.store(bytes, Ordering::Relaxed);
        *edgecap_common::lock(&self.measured) = Some(std::time::Instant::now());
        bytes
    }

    /// The last measure, without measuring (0 before the first).
    pub(super) fn last(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Bytes under `dir`, recursively.
pub(super) fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for entry in entries.flatten() {
        total += entry_bytes(&entry);
    }
    total
}

/// Bytes of one directory entry: a file's size, a directory's contents.
fn entry_bytes(entry: &std::fs::DirEntry) -> u64 {
    match entry.metadata() {
        Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// What a capture directory left by a previous run says: its end (written now if the capture
/// was cut short by the restart). Partial shards (no manifest) are removed: they cannot be
/// delivered.
pub(super) fn recover(name: &str, dir: &Path) -> std::io::Result<EndFile> {
    let end = match read_json::<EndFile>(&dir.join("end.json")) {
        Some(end) => end,
        None => {
            // Cut short by a restart: the completed shards are delivered; the shard being
            // written had no manifest and is not trusted.
            let (shards, _) = manifests(dir);
            let mut counters = Counters::default();
            for (_, m) in &shards {
                counters.written += m.packets;
                counters.bytes_written += m.bytes;
            }
            counters.received = counters.written;
            counters.matched = counters.written;
            let end = EndFile {
                counters,
                stop_reason: StopReason::Interrupted,
                error: format!(
                    "agent restarted mid-capture; the {} completed shards are delivered, the shard being written was lost",
                    shards.len()
                ),
                interrupted: true,
            };
            write_json(&dir.join("end.json"), &end)?;
            tracing::warn!(capture = %name, shards = shards.len(), "capture interrupted by a restart; delivering its completed shards");
            end
        }
    };
    for file in std::fs::read_dir(dir)?.flatten() {
        if undeliverable(dir, &file.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(file.path());
        }
    }
    Ok(end)
}

#[cfg(test)]
#[path = "spool_tests.rs"]
mod tests;
