//! Shard files reserve their disk blocks ahead of the writes ([`Reserving`]).

use std::fs::File;
use std::io::{self, Write};

/// A file that reserves its disk blocks ahead of the writes once it holds [`RESERVE_FROM`]
/// bytes: ahead by what it holds, at most [`RESERVE_MAX`] (`fallocate` with
/// `FALLOC_FL_KEEP_SIZE`: the file's size stays what was written, so a crash leaves no
/// padding). On ext4 a write into reserved blocks skips the per-page delayed allocation:
/// about a quarter of a busy shard's write cost (docs/benchmarks.md). Not on tmpfs, where
/// reserving would zero the pages that the write then fills. Whatever is left reserved past
/// the end is released when the shard closes; a filesystem that refuses gets plain writes.
pub(crate) struct Reserving {
    file: File,
    written: u64,
    reserved: u64,
    enabled: bool,
    /// A reservation was asked for (one that failed may still have left blocks behind).
    asked: bool,
}

/// Quiet shards are written as they are: no reservation below this size.
const RESERVE_FROM: u64 = 1 << 20;
/// At most this much is reserved past what is written.
const RESERVE_MAX: u64 = 8 << 20;
/// `statfs` magic numbers of the memory filesystems (`linux/magic.h`).
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

impl Reserving {
    pub(crate) fn new(file: File) -> Self {
        let memory =
            rustix::fs::fstatfs(&file).map(|s| matches!(s.f_type as u64, TMPFS_MAGIC | RAMFS_MAGIC)).unwrap_or(true);
        Self { file, written: 0, reserved: 0, enabled: !memory, asked: false }
    }

    fn reserve_for(&mut self, len: u64) {
        let end = self.written + len;
        if !self.enabled || end <= self.reserved || end < RESERVE_FROM {
            return;
        }
        // Ahead by what is written so far (it doubles), at most RESERVE_MAX.
        let from = self.reserved.max(self.written);
        let to = end.max(self.written + self.written.min(RESERVE_MAX));
        self.asked = true;
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::KEEP_SIZE, from, to - from) {
            Ok(()) => self.reserved = to,
            // Not supported here, or no room for the reserve: the write itself says whether
            // there is room for it.
            Err(_) => self.enabled = false,
        }
    }

    /// Releases the blocks reserved past the end, then flushes to the disk. The shard is whole
    /// either way: a release that fails only leaves the reserve on the disk until the shard is
    /// deleted, so it is logged, not returned.
    pub(crate) fn close(self) -> io::Result<()> {
        if self.asked
            && let Err(e) = self.file.set_len(self.written)
        {
            tracing::warn!(error = %e, "could not release the disk blocks reserved past a shard's end");
        }
        self.file.sync_all()
    }
}

impl Write for Reserving {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reserve_for(buf.len() as u64);
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocated(file: &File) -> u64 {
        use std::os::unix::fs::MetadataExt;
        file.metadata().unwrap().blocks() * 512
    }

    #[test]
    fn reserves_ahead_keeps_the_size_and_releases_the_rest_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.pcap");
        // Reservation forced on, whatever the test's filesystem (tmpfs reserves too).
        let mut r = Reserving { enabled: true, ..Reserving::new(File::create(&path).unwrap()) };
        let chunk: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
        let mut expected = Vec::new();
        for _ in 0..40 {
            r.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
        }
        // 2.5 MiB written: reserved ahead (to twice what was written, within RESERVE_MAX)...
        assert!(r.enabled, "fallocate refused here");
        assert!(r.reserved > r.written && r.reserved <= r.written + RESERVE_MAX, "{} {}", r.reserved, r.written);
        assert!(allocated(&r.file) >= r.reserved, "blocks reserved: {}", allocated(&r.file));
        // ... while the file's size is what was written, as a crash would leave it.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), expected.len() as u64);
        let file = r.file.try_clone().unwrap();
        r.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        let page = 4096;
        let used = (expected.len() as u64).div_ceil(page) * page;
        assert!(allocated(&file) <= used, "reserve released at close: {} > {used}", allocated(&file));
    }

    #[test]
    fn small_files_reserve_nothing_and_a_refusal_means_plain_writes() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserving { enabled: true, ..Reserving::new(File::create(dir.path().join("a")).unwrap()) };
        r.write_all(&[7; 100 << 10]).unwrap();
        assert_eq!(r.reserved, 0, "under RESERVE_FROM");
        // A file opened read-only cannot be reserved for: the reservation turns itself off.
        std::fs::write(dir.path().join("b"), b"").unwrap();
        let mut r =
            Reserving { enabled: true, written: 2 << 20, ..Reserving::new(File::open(dir.path().join("b")).unwrap()) };
        r.reserve_for(1 << 20);
        assert!(!r.enabled);
        assert_eq!(r.reserved, 0);
    }
}
