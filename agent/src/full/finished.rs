//! Captures that are over and delivered (drained: no shard left to upload), kept for
//! `keep_finished` (an hour) so that their final state can be reported again: to a new
//! connection, and now and then in case the coordinator missed it ([`next_final`]). Each is
//! one line of `<spool>/finished.jsonl` and an entry in memory, not a directory.
//!
//! They had kept their directories (`job.json`, `end.json`) and their place among the
//! running captures: every agent's once-a-second report and spool measure visited every
//! capture of the last hour, and the spool held a directory and two files for each. Over 300
//! back-to-back captures the simulated agents' CPU per start grew by half from those walks,
//! their allocations and the file system's growing inode tables. Here the reports visit
//! only the captures whose repeat is due (a queue by time), the spool's top directory holds
//! the captures still writing or uploading, and the file is rewritten without the forgotten
//! lines once they outnumber the kept ones.
//!
//! A line is appended (and synced) before the capture's directory is removed, so a crash in
//! between leaves both, and the directory, recovered at the next start, wins. Each append
//! begins with a newline, so a line torn by a crash or a failed write never joins the next
//! one. Lines that do not parse are set aside in `finished.jsonl.damaged` and counted. At
//! start the file is written only on a best-effort basis (a full or read-only spool must not
//! keep the agent from starting and delivering). Blocking file I/O: the callers run on
//! blocking threads.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgecap_common::lock;
use serde::{Deserialize, Serialize};

use super::spool::{EndFile, is_capture_id, write_atomic};

/// The file's name in the spool.
pub(super) const FILE: &str = "finished.jsonl";

/// How often a final state is repeated at most (in case the coordinator missed it).
pub(super) const REPEAT_FINAL: Duration = Duration::from_secs(30);

/// When a final state reported at `reported` (of a capture that ended at `ended`) is due
/// again: [`REPEAT_FINAL`] later at first, then after half of the capture's age by then
/// (`reported + max(30 s, reported - ended)`). A reconnection re-reports every final state
/// anyway; repeated every 30 s for the hour a finished capture is kept, the repeats of an
/// agent's kept captures had outnumbered its other reports.
pub(super) fn next_final(ended: Instant, reported: Instant) -> Instant {
    reported + REPEAT_FINAL.max(reported.saturating_duration_since(ended))
}

/// One finished capture: all its final report says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Record {
    pub capture_id: String,
    /// When it began running, ns since the epoch (0: it never ran).
    pub started_ns: u64,
    /// When it ended, ns since the epoch.
    pub ended_ns: u64,
    pub shards_uploaded: u32,
    #[serde(default)]
    pub stream_dropped: u64,
    pub end: EndFile,
}

/// A capture handed over by the reports or the upload scan once drained.
pub(super) struct Moved {
    pub record: Record,
    pub ended_at: Instant,
    /// When its final state was last reported, if it was.
    pub reported: Option<Instant>,
    /// Its directory, removed once its line is written.
    pub dir: PathBuf,
}

/// The finished captures kept (see the module docs).
pub(super) struct Finished {
    path: PathBuf,
    keep: Duration,
    index: Mutex<Index>,
    /// The file's state. Held while the file is written.
    file: Mutex<FileState>,
}

#[derive(Default)]
struct FileState {
    /// Lines in the file (kept and forgotten ones).
    lines: usize,
    /// When a rewrite last failed (tried again a minute later, not at every report).
    failed: Option<Instant>,
}

#[derive(Default)]
struct Index {
    kept: HashMap<String, Kept>,
    /// Each kept capture by when it is next due: a repeat of its final state, or forgetting it.
    due: BTreeSet<(Instant, String)>,
}

struct Kept {
    record: Record,
    ended_at: Instant,
    due_at: Instant,
}

impl Index {
    /// Keeps `record`, due at the repeat after `reported` (now if never), or when it is to
    /// be forgotten if that comes first.
    fn keep(&mut self, record: Record, ended_at: Instant, reported: Option<Instant>, keep: Duration) {
        let repeat = reported.map_or_else(Instant::now, |at| next_final(ended_at, at));
        let due_at = ended_at.checked_add(keep).map_or(repeat, |forget| repeat.min(forget));
        if let Some(before) = self.kept.remove(&record.capture_id) {
            self.due.remove(&(before.due_at, record.capture_id.clone()));
        }
        self.due.insert((due_at, record.capture_id.clone()));
        self.kept.insert(record.capture_id.clone(), Kept { record, ended_at, due_at });
    }
}

impl Finished {
    /// Reads what a previous run kept, but the captures in `skip` (whose directories are
    /// still there: they win) and those ended longer than `keep` ago, and rewrites the file
    /// with only those. Returns how many lines were set aside as damaged. Never fails: what
    /// cannot be read or written is logged (see the module docs).
    pub(super) fn open(spool: &Path, keep: Duration, skip: &HashSet<String>) -> (Self, u64) {
        let path = spool.join(FILE);
        let mut index = Index::default();
        let mut damaged = Vec::new();
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            // Not a reason to stay down: the captures still in the spool are delivered.
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "finished captures not read; their final states are not repeated");
                Vec::new()
            }
        };
        let (now, now_ns) = (Instant::now(), edgecap_common::now_ns());
        let mut lines = 0;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            lines += 1;
            match serde_json::from_slice::<Record>(line) {
                Ok(record) if is_capture_id(&record.capture_id) => {
                    let age = Duration::from_nanos(now_ns.saturating_sub(record.ended_ns));
                    if age > keep || skip.contains(&record.capture_id) {
                        index.kept.remove(&record.capture_id);
                        continue;
                    }
                    // Due at once: a restarted agent reports every final state anyway.
                    let ended_at = now.checked_sub(age).unwrap_or(now);
                    index.kept.insert(record.capture_id.clone(), Kept { record, ended_at, due_at: now });
                }
                _ => damaged.push(line),
            }
        }
        index.due = index.kept.iter().map(|(id, k)| (k.due_at, id.clone())).collect();
        if !damaged.is_empty() {
            let aside = spool.join(format!("{FILE}.damaged"));
            let set_aside = std::fs::OpenOptions::new().create(true).append(true).open(&aside).and_then(|mut f| {
                damaged.iter().try_for_each(|line| f.write_all(&[b"\n", *line].concat()))?;
                f.sync_all()
            });
            match set_aside {
                Ok(()) => {
                    tracing::warn!(lines = damaged.len(), file = %aside.display(), "damaged lines of the finished captures set aside")
                }
                Err(error) => {
                    tracing::warn!(lines = damaged.len(), %error, "damaged lines of the finished captures dropped (not set aside)")
                }
            }
        }
        let kept = index.kept.len();
        let finished =
            Finished { path, keep, index: Mutex::new(index), file: Mutex::new(FileState { lines, failed: None }) };
        // Rewritten only when something was dropped, and only if it can be: the lines left
        // are read again (and dropped again) at the next start.
        if lines != kept
            && let Err(error) = finished.rewrite()
        {
            tracing::warn!(file = %finished.path.display(), %error, "finished captures' file not rewritten");
        }
        (finished, damaged.len() as u64)
    }

    /// Whether `id` is kept here.
    pub(super) fn contains(&self, id: &str) -> bool {
        lock(&self.index).kept.contains_key(id)
    }

    /// Takes the captures over in memory (quick: the caller may hold the jobs' lock, so that
    /// a capture is always in one of the two).
    pub(super) fn take(&self, moved: &[Moved]) {
        let mut index = lock(&self.index);
        for m in moved {
            index.keep(m.record.clone(), m.ended_at, m.reported, self.keep);
        }
    }

    /// Writes the lines of captures taken over by [`Finished::take`], synced; then removes
    /// their directories' two files and the directories (one that still holds something,
    /// a shard set aside as damaged, stays for an operator). When the write fails the
    /// directories stay, and a restart takes them over again.
    pub(super) fn persist(&self, moved: Vec<Moved>) {
        if moved.is_empty() {
            return;
        }
        // A newline first: a line torn before (a crash, a failed write) ends there.
        let mut lines = vec![b'\n'];
        for m in &moved {
            lines.extend(serde_json::to_vec(&m.record).unwrap_or_default());
            lines.push(b'\n');
        }
        let written = {
            let mut file = lock(&self.file);
            let result = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(&lines).and_then(|()| f.sync_data()));
            if result.is_ok() {
                file.lines += moved.len();
            }
            result
        };
        if let Err(error) = written {
            tracing::error!(file = %self.path.display(), %error, "finished captures not recorded; their directories stay");
            return;
        }
        for m in moved {
            // job.json first: a directory without it is not taken over at the next start
            // (one with only job.json would be, as a capture cut short).
            for file in ["job.json", "end.json"] {
                let _ = std::fs::remove_file(m.dir.join(file));
            }
            if std::fs::remove_dir(&m.dir).is_err() && m.dir.exists() {
                tracing::info!(dir = %m.dir.display(), "finished capture's directory kept: something was left in it");
            }
        }
    }

    /// The captures whose final state is to be reported now (`all`: every one kept), each
    /// rescheduled; those kept long enough are forgotten, and the file is rewritten once the
    /// lines of forgotten captures outnumber the others.
    pub(super) fn due(&self, all: bool) -> Vec<Record> {
        let now = Instant::now();
        let mut out = Vec::new();
        let kept = {
            let mut index = lock(&self.index);
            let due: Vec<(Instant, String)> = if all {
                std::mem::take(&mut index.due).into_iter().collect()
            } else {
                let later = index.due.split_off(&(now, String::new()));
                std::mem::replace(&mut index.due, later).into_iter().collect()
            };
            for (_, id) in due {
                let Some(kept) = index.kept.remove(&id) else { continue };
                if now.saturating_duration_since(kept.ended_at) >= self.keep {
                    tracing::debug!(capture = %id, "finished capture forgotten");
                    continue;
                }
                out.push(kept.record.clone());
                index.keep(kept.record, kept.ended_at, Some(now), self.keep);
            }
            index.kept.len()
        };
        let (lines, failed) = {
            let file = lock(&self.file);
            (file.lines, file.failed)
        };
        if lines > 64
            && lines > 2 * kept
            && failed.is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            && let Err(error) = self.rewrite()
        {
            tracing::warn!(file = %self.path.display(), %error, "finished captures' file not rewritten");
        }
        out
    }

    /// Replaces the file by the kept captures' lines.
    fn rewrite(&self) -> std::io::Result<()> {
        let mut file = lock(&self.file);
        let written = self.write_kept();
        match &written {
            Ok(lines) => *file = FileState { lines: *lines, failed: None },
            Err(_) => file.failed = Some(Instant::now()),
        }
        written.map(|_| ())
    }

    /// Writes the kept captures' lines to a new file put in the old one's place; how many.
    fn write_kept(&self) -> std::io::Result<usize> {
        let records: Vec<Record> = lock(&self.index).kept.values().map(|k| k.record.clone()).collect();
        let mut bytes = Vec::new();
        for record in &records {
            bytes.extend(serde_json::to_vec(record).map_err(std::io::Error::other)?);
            bytes.push(b'\n');
        }
        write_atomic(&self.path, &bytes)?;
        Ok(records.len())
    }

    /// How many are kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.index).kept.len()
    }
}

#[cfg(test)]
#[path = "finished_tests.rs"]
mod tests;
