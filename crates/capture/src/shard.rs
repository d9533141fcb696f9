//! Shard files: what a live capture writes, rotated by size and by time, in classic pcap
//! (nanosecond) or pcapng, written with `pcap-file`.
//!
//! A shard is complete when it has been flushed and fsynced *and* its manifest
//! (`<shard>.json`, written to a temporary name, fsynced and renamed) exists; readers and
//! uploaders only take shards that have a manifest. The manifest carries the capture id,
//! PoP, agent, interface, packets, bytes, first/last timestamp, the drop counters at the time
//! the shard was closed, the filter and its bytecode hash, and the file's checksum: CRC32C by
//! default (of the whole file and of each [`CHECKSUM_PART_SIZE`] part, so that an S3 bucket
//! can verify a single or a multipart upload against it), or SHA-256.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edgecap_common::crc32c_text;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::blocks::interface_statistics::{InterfaceStatisticsBlock, InterfaceStatisticsOption};
use serde::{Deserialize, Serialize};

use crate::records::{Batch, Framing, Records};
use crate::reserving::Reserving;
use crate::session::{Counters, PacketSink};

/// File format of the shards (`pcap` or `pcapng` in JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardFormat {
    /// Classic pcap with nanosecond timestamps (magic `a1b23c4d`), in the host's byte order.
    Pcap,
    /// pcapng: one interface named `pop/agent/interface`, with the filter as `if_filter` and
    /// nanosecond timestamps. Each shard ends with an Interface Statistics Block: the
    /// capture's received and dropped (kernel + agent) counters on the last shard, zeros on
    /// the shards closed by rotation.
    Pcapng,
}

/// The checksum a [`ShardWriter`] computes while it writes, for the manifest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShardChecksum {
    /// None: the manifest says `crc32c: null` and `sha256: null`.
    None,
    /// CRC32C (Castagnoli), S3's `x-amz-checksum-crc32c`: of the whole file and of each
    /// [`CHECKSUM_PART_SIZE`] part. A few percent of SHA-256's cost (SIMD), and the bucket
    /// checks it on upload, so it covers the shard from the agent's disk into the bucket.
    #[default]
    Crc32c,
    /// SHA-256 of the whole file (hex). About a quarter of the capture path's CPU at high
    /// rates (docs/benchmarks.md), and nothing downstream verifies it.
    Sha256,
}

/// The part size the manifest's `part_crc32c` are computed for: the multipart part size the
/// coordinator grants (`edgecap_storage::s3::PART_SIZE`; a test there keeps them equal).
pub const CHECKSUM_PART_SIZE: u64 = 8 << 20;

/// Who and what a shard belongs to (written into its manifest, and into pcapng interfaces).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardIdentity {
    /// The capture the shard belongs to.
    pub capture_id: String,
    /// The PoP of the agent that captured it.
    pub pop: String,
    /// The agent that captured it.
    pub agent: String,
    /// The capture interface's name.
    pub interface: String,
    /// The interface's link type (libpcap DLT value), written into the file header.
    pub linktype: u16,
    /// The capture's snap length, bytes, written into the file header.
    pub snaplen: u32,
    /// The pcap-filter expression the capture runs; empty: every packet.
    pub filter: String,
    /// SHA-256 (hex) of `filter`'s compiled program ([`crate::bpf::CheckedFilter::hash`]);
    /// empty when the filter is.
    pub filter_hash: String,
}

/// Where and how a [`ShardWriter`] writes.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// Without rotation: the file itself. With rotation: `stem-000001.ext` beside it.
    pub path: PathBuf,
    /// File format of every shard.
    pub format: ShardFormat,
    /// Rotate when a shard reaches this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Rotate when a shard is this old.
    pub rotate_every: Option<Duration>,
    /// The checksum computed while writing, for the manifest (on the writer thread, never
    /// the capture thread).
    pub checksum: ShardChecksum,
}

/// What a manifest says.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardManifest {
    #[serde(flatten)]
    /// Who and what the shard belongs to (its fields are at the manifest's top level).
    pub identity: ShardIdentity,
    /// The shard's file name, without its directory; the manifest is `<file>.json` beside it.
    pub file: String,
    /// The shard's number in its capture, from 1 (also in the file name when rotating).
    pub sequence: u64,
    /// The shard's file format.
    pub format: ShardFormat,
    /// Packets in the shard.
    pub packets: u64,
    /// Captured packet bytes in the shard (caplen), without file or record headers.
    pub bytes: u64,
    /// Size of the file, bytes, headers included.
    pub file_bytes: u64,
    /// Timestamp of the shard's first packet, nanoseconds since the Unix epoch; `None` when
    /// it has none.
    pub first_ts_ns: Option<u64>,
    /// Timestamp of the shard's last packet, nanoseconds since the Unix epoch; `None` when
    /// it has none.
    pub last_ts_ns: Option<u64>,
    /// The capture's drop counters: on the last shard only (earlier shards close mid-capture).
    pub kernel_dropped: Option<u64>,
    /// Packets the agent dropped (the queue to the writer was full); on the last shard only.
    pub agent_dropped: Option<u64>,
    /// SHA-256 of the whole file, lowercase hex; `None` unless [`ShardConfig::checksum`] is
    /// [`ShardChecksum::Sha256`].
    pub sha256: Option<String>,
    /// CRC32C of the whole file, as S3 writes it (base64 of the 4 big-endian bytes); `None`
    /// unless [`ShardConfig::checksum`] is [`ShardChecksum::Crc32c`].
    #[serde(default)]
    pub crc32c: Option<String>,
    /// CRC32C of each [`CHECKSUM_PART_SIZE`] part of the file, in order (the last may be
    /// shorter), in the same form; empty without `crc32c`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_crc32c: Vec<String>,
    /// Set on the last shard of a capture.
    pub stop_reason: Option<String>,
}

/// CRC32C of a file, whole and by part, as the bytes go by.
struct Crc32cParts {
    part: crc_fast::Digest,
    /// (CRC, length) of the parts done.
    parts: Vec<(u32, u64)>,
}

impl Crc32cParts {
    fn new() -> Self {
        Self { part: crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi), parts: Vec::new() }
    }

    fn update(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let room = (CHECKSUM_PART_SIZE - self.part.get_amount()) as usize;
            let take = room.min(buf.len());
            self.part.update(&buf[..take]);
            buf = &buf[take..];
            if self.part.get_amount() == CHECKSUM_PART_SIZE {
                self.parts.push((self.part.finalize_reset() as u32, CHECKSUM_PART_SIZE));
            }
        }
    }

    /// (whole file, each part), in S3's form.
    fn finish(mut self) -> (String, Vec<String>) {
        let tail = self.part.get_amount();
        if tail > 0 || self.parts.is_empty() {
            self.parts.push((self.part.finalize() as u32, tail));
        }
        let whole = self.parts[1..].iter().fold(u64::from(self.parts[0].0), |whole, (crc, len)| {
            crc_fast::checksum_combine(crc_fast::CrcAlgorithm::Crc32Iscsi, whole, u64::from(*crc), *len)
        });
        (crc32c_text(whole as u32), self.parts.iter().map(|(c, _)| crc32c_text(*c)).collect())
    }
}

/// The CRC32C of a whole file, in S3's form (reads it: call it off async workers).
pub fn file_crc32c(path: &Path) -> io::Result<String> {
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match io::Read::read(&mut file, &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => other?,
        };
        if n == 0 {
            return Ok(crc32c_text(digest.finalize() as u32));
        }
        digest.update(&buf[..n]);
    }
}

/// A CRC32C as S3 writes it: base64 of its 4 big-endian bytes.
/// The checksum being computed.
enum Digesting {
    None,
    Crc32c(Box<Crc32cParts>),
    Sha256(aws_lc_rs::digest::Context),
}

/// Counts and checksums what goes to the file.
struct Hashing<W: Write> {
    inner: W,
    digest: Digesting,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        match &mut self.digest {
            Digesting::None => {}
            Digesting::Crc32c(c) => c.update(&buf[..n]),
            Digesting::Sha256(d) => d.update(&buf[..n]),
        }
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Out = BufWriter<Hashing<Reserving>>;

/// Output buffer. Kept small: for the merge, cache-resident buffers halved the copy cost
/// (docs/benchmarks.md); for captures 64 KiB measured the same as 1 MiB, with less memory.
const SHARD_BUFFER: usize = 64 << 10;

/// An open shard's file, after its header. Packets go in as records framed by the capture
/// thread ([`crate::records`]); pcap-file writes the headers and the closing statistics.
enum Open {
    Pcap(Out),
    Pcapng(PcapNgWriter<Out>),
}

impl Open {
    fn out(&mut self) -> &mut Out {
        match self {
            Open::Pcap(out) => out,
            Open::Pcapng(w) => w.get_mut(),
        }
    }
}

struct Current {
    writer: Open,
    path: PathBuf,
    opened: Instant,
    packets: u64,
    bytes: u64,
    first: Option<u64>,
    last: Option<u64>,
}

/// A [`PacketSink`] writing rotating shard files and their manifests.
///
/// A shard is created at its first packet. Rotation is decided when a packet arrives: the
/// shard is closed (flushed, fsynced, manifest written) before a packet that would take its
/// packet bytes past `rotate_bytes` (a shard holds at least one packet, however large), or
/// once it is `rotate_every` old; a quiet shard stays open until the next packet.
/// [`PacketSink::finish`] closes the last shard with the capture's counters and stop reason;
/// a capture that wrote nothing still leaves one empty shard with its manifest. Existing
/// files of the same names are overwritten.
pub struct ShardWriter {
    config: ShardConfig,
    identity: ShardIdentity,
    sequence: u64,
    current: Option<Current>,
    written: Vec<ShardManifest>,
    /// One packet framed, for [`PacketSink::write`].
    scratch: Batch,
}

fn pcap_err(e: pcap_file::PcapError) -> io::Error {
    match e {
        pcap_file::PcapError::IoError(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl ShardWriter {
    /// A writer for `config`, stamping `identity` into every manifest. No file is created
    /// until the first packet (or [`PacketSink::finish`]).
    pub fn new(config: ShardConfig, identity: ShardIdentity) -> Self {
        let scratch = Batch::with_capacity(framing(config.format), 1);
        Self { config, identity, sequence: 0, current: None, written: Vec::new(), scratch }
    }

    /// Manifests of the shards completed so far.
    pub fn completed(&self) -> &[ShardManifest] {
        &self.written
    }

    fn rotating(&self) -> bool {
        self.config.rotate_bytes.is_some() || self.config.rotate_every.is_some()
    }

    fn next_path(&self) -> PathBuf {
        if !self.rotating() {
            return self.config.path.clone();
        }
        let stem = self.config.path.file_stem().and_then(|s| s.to_str()).unwrap_or("shard");
        let ext = self.config.path.extension().and_then(|s| s.to_str()).unwrap_or(match self.config.format {
            ShardFormat::Pcap => "pcap",
            ShardFormat::Pcapng => "pcapng",
        });
        self.config.path.with_file_name(format!("{stem}-{:06}.{ext}", self.sequence))
    }

    fn open(&mut self) -> io::Result<()> {
        self.sequence += 1;
        let path = self.next_path();
        let file = File::create(&path)?;
        let out = BufWriter::with_capacity(
            SHARD_BUFFER,
            Hashing {
                inner: Reserving::new(file),
                digest: match self.config.checksum {
                    ShardChecksum::None => Digesting::None,
                    ShardChecksum::Crc32c => Digesting::Crc32c(Box::new(Crc32cParts::new())),
                    ShardChecksum::Sha256 => {
                        Digesting::Sha256(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
                    }
                },
                bytes: 0,
            },
        );
        let id = &self.identity;
        let mut out = out;
        let writer = match self.config.format {
            ShardFormat::Pcap => {
                let header = PcapHeader {
                    version_major: 2,
                    version_minor: 4,
                    ts_correction: 0,
                    ts_accuracy: 0,
                    snaplen: id.snaplen,
                    datalink: DataLink::from(u32::from(id.linktype)),
                    ts_resolution: pcap_file::TsResolution::NanoSecond,
                    endianness: pcap_file::Endianness::native(),
                };
                PcapWriter::with_header(&mut out, header).map_err(pcap_err)?;
                Open::Pcap(out)
            }
            ShardFormat::Pcapng => {
                let mut w = PcapNgWriter::new(out).map_err(pcap_err)?;
                let mut options = vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(format!("{}/{}/{}", id.pop, id.agent, id.interface))),
                    InterfaceDescriptionOption::IfTsResol(9),
                ];
                if !id.filter.is_empty() {
                    let mut f = vec![0u8];
                    f.extend_from_slice(id.filter.as_bytes());
                    options.push(InterfaceDescriptionOption::IfFilter(Cow::Owned(f)));
                }
                w.write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::from(u32::from(id.linktype)),
                    snaplen: id.snaplen,
                    options,
                })
                .map_err(pcap_err)?;
                Open::Pcapng(w)
            }
        };
        self.current =
            Some(Current { writer, path, opened: Instant::now(), packets: 0, bytes: 0, first: None, last: None });
        Ok(())
    }

    /// Closes the open shard: ISB (pcapng), flush, fsync, then its manifest.
    fn close(&mut self, counters: &Counters, last: bool) -> io::Result<()> {
        let Some(mut current) = self.current.take() else { return Ok(()) };
        let out = match current.writer {
            Open::Pcap(out) => out,
            Open::Pcapng(mut w) => {
                let ts = current.last.unwrap_or(0);
                w.write_pcapng_block(InterfaceStatisticsBlock {
                    interface_id: 0,
                    timestamp: ts,
                    options: vec![
                        InterfaceStatisticsOption::IsbIfRecv(counters.received),
                        InterfaceStatisticsOption::IsbIfDrop(counters.kernel_dropped + counters.agent_dropped),
                    ],
                })
                .map_err(pcap_err)?;
                w.into_inner()
            }
        };
        let hashing = out.into_inner().map_err(|e| e.into_error())?;
        hashing.inner.close()?;
        let (sha256, crc32c, part_crc32c) = match hashing.digest {
            Digesting::None => (None, None, Vec::new()),
            Digesting::Crc32c(c) => {
                let (whole, parts) = c.finish();
                (None, Some(whole), parts)
            }
            Digesting::Sha256(d) => (Some(crate::hex(d.finish().as_ref())), None, Vec::new()),
        };
        let manifest = ShardManifest {
            identity: self.identity.clone(),
            file: current.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            sequence: self.sequence,
            format: self.config.format,
            packets: current.packets,
            bytes: current.bytes,
            file_bytes: hashing.bytes,
            first_ts_ns: current.first.take(),
            last_ts_ns: current.last,
            kernel_dropped: last.then_some(counters.kernel_dropped),
            agent_dropped: last.then_some(counters.agent_dropped),
            sha256,
            crc32c,
            part_crc32c,
            stop_reason: if last { counters.stop_reason.as_ref().map(|r| r.to_string()) } else { None },
        };
        write_manifest(&current.path, &manifest)?;
        self.written.push(manifest);
        Ok(())
    }
}

fn write_manifest(shard: &Path, manifest: &ShardManifest) -> io::Result<()> {
    let path = PathBuf::from(format!("{}.json", shard.display()));
    let tmp = PathBuf::from(format!("{}.json.tmp", shard.display()));
    let mut f = File::create(&tmp)?;
    serde_json::to_writer_pretty(&mut f, manifest).map_err(io::Error::other)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The records a shard of `format` holds.
fn framing(format: ShardFormat) -> Framing {
    match format {
        ShardFormat::Pcap => Framing::Pcap,
        ShardFormat::Pcapng => Framing::Pcapng,
    }
}

impl PacketSink for ShardWriter {
    fn write(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) -> io::Result<()> {
        let mut one = std::mem::replace(&mut self.scratch, Batch::with_capacity(Framing::Bare, 0));
        one.clear();
        one.push(ts_ns, orig_len, data);
        let written = self.write_records(one.records(0..1));
        self.scratch = one;
        written
    }

    fn framing(&self) -> Framing {
        framing(self.config.format)
    }

    /// Rotation is decided per packet, as [`ShardWriter`] says; each stretch of the run that
    /// goes into one shard is written with one call.
    fn write_records(&mut self, records: Records<'_>) -> io::Result<()> {
        if records.framing() != framing(self.config.format) {
            return records.iter().try_for_each(|(ts_ns, orig_len, data)| {
                let mut one = Batch::with_capacity(framing(self.config.format), 1);
                one.push(ts_ns, orig_len, data);
                self.write_records(one.records(0..1))
            });
        }
        let mut rest = records;
        while !rest.is_empty() {
            let stale = self.current.as_ref().is_some_and(|c| {
                let (_, _, data) = rest.get(0);
                self.config.rotate_bytes.is_some_and(|max| c.bytes > 0 && c.bytes + data.len() as u64 > max)
                    || self.config.rotate_every.is_some_and(|every| c.opened.elapsed() >= every)
            });
            if stale {
                self.close(&Counters::default(), false)?;
            }
            if self.current.is_none() {
                self.open()?;
            }
            let current = self.current.as_mut().expect("opened above");
            // The packets that fit this shard (at least the first, which the check above let in).
            let (mut take, mut bytes) = (0, current.bytes);
            while take < rest.len() {
                let len = rest.get(take).2.len() as u64;
                if take > 0 && self.config.rotate_bytes.is_some_and(|max| bytes + len > max) {
                    break;
                }
                bytes += len;
                take += 1;
            }
            let run = rest.slice(0..take);
            current.writer.out().write_all(run.bytes())?;
            current.packets += take as u64;
            current.bytes = bytes;
            current.first.get_or_insert(run.get(0).0);
            current.last = Some(run.get(take - 1).0);
            rest = rest.slice(take..rest.len());
        }
        Ok(())
    }

    fn finish(&mut self, counters: &Counters) -> io::Result<()> {
        // A capture that wrote nothing still leaves one (empty, valid) shard and manifest.
        if self.current.is_none() && self.written.is_empty() {
            self.open()?;
        }
        self.close(counters, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(data: &[u8]) -> String {
        crc32c_text(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32)
    }

    fn write_shard(dir: &Path, checksum: ShardChecksum, packets: usize, len: usize) -> (ShardManifest, Vec<u8>) {
        let config = ShardConfig {
            path: dir.join("s.pcap"),
            format: ShardFormat::Pcap,
            rotate_bytes: None,
            rotate_every: None,
            checksum,
        };
        let identity = ShardIdentity { linktype: 1, snaplen: 65535, ..Default::default() };
        let mut w = ShardWriter::new(config, identity);
        let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        for i in 0..packets {
            w.write(1_000_000_000 + i as u64, len as u32, &data).unwrap();
        }
        w.finish(&Counters::default()).unwrap();
        let manifest = w.completed()[0].clone();
        let file = std::fs::read(dir.join("s.pcap")).unwrap();
        (manifest, file)
    }

    #[test]
    fn a_run_of_records_rotates_and_writes_as_packets_one_by_one_do() {
        for format in [ShardFormat::Pcap, ShardFormat::Pcapng] {
            let (one_by_one, in_runs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let config = |dir: &Path| ShardConfig {
                path: dir.join("s.pcap"),
                format,
                rotate_bytes: Some(1000),
                rotate_every: None,
                checksum: ShardChecksum::Crc32c,
            };
            let identity = ShardIdentity { linktype: 1, snaplen: 65535, ..Default::default() };
            // 0..700-byte packets: some fill a shard alone, some share one.
            let packets: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; (i * 97) % 700]).collect();
            let mut a = ShardWriter::new(config(one_by_one.path()), identity.clone());
            for (i, p) in packets.iter().enumerate() {
                a.write(1_000 + i as u64, 1500, p).unwrap();
            }
            a.finish(&Counters::default()).unwrap();
            let mut b = ShardWriter::new(config(in_runs.path()), identity);
            let mut batch = Batch::with_capacity(b.framing(), 8);
            for (i, p) in packets.iter().enumerate() {
                batch.push(1_000 + i as u64, 1500, p);
            }
            b.write_records(batch.records(0..17)).unwrap();
            b.write_records(batch.records(17..packets.len())).unwrap();
            b.finish(&Counters::default()).unwrap();
            assert!(a.completed().len() > 10, "{format:?}: rotated");
            assert_eq!(a.completed().len(), b.completed().len(), "{format:?}");
            for (x, y) in a.completed().iter().zip(b.completed()) {
                assert_eq!(
                    (x.packets, x.bytes, &x.crc32c, x.first_ts_ns),
                    (y.packets, y.bytes, &y.crc32c, y.first_ts_ns)
                );
                let read = |dir: &Path| std::fs::read(dir.join(&x.file)).unwrap();
                assert_eq!(read(one_by_one.path()), read(in_runs.path()), "{format:?} {}", x.file);
            }
        }
    }

    #[test]
    fn crc32c_in_s3s_form() {
        // S3's documented example: CRC32C of "Hello, World!" is 0x4d551068, "TVUQaA==".
        assert_eq!(crc(b"Hello, World!"), "TVUQaA==");
    }

    #[test]
    fn manifest_crc32c_covers_the_file_whole_and_by_part() {
        let dir = tempfile::tempdir().unwrap();
        // 20 MiB and a bit: two whole parts and a short one.
        let (m, file) = write_shard(dir.path(), ShardChecksum::Crc32c, 1400, 15_000);
        assert!(file.len() as u64 > 2 * CHECKSUM_PART_SIZE);
        assert_eq!(m.file_bytes, file.len() as u64);
        assert_eq!(m.crc32c.as_deref(), Some(crc(&file).as_str()));
        let parts: Vec<String> = file.chunks(CHECKSUM_PART_SIZE as usize).map(crc).collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(m.part_crc32c, parts);
        assert_eq!(m.sha256, None);
    }

    #[test]
    fn exactly_one_part_and_empty_shards() {
        let dir = tempfile::tempdir().unwrap();
        let (m, file) = write_shard(dir.path(), ShardChecksum::Crc32c, 3, 100);
        assert_eq!(m.part_crc32c, vec![crc(&file)]);
        assert_eq!(m.crc32c, Some(crc(&file)));
        let dir = tempfile::tempdir().unwrap();
        let (m, file) = write_shard(dir.path(), ShardChecksum::Crc32c, 0, 100);
        assert_eq!(file.len(), 24, "just the header");
        assert_eq!(m.crc32c, Some(crc(&file)));
    }

    #[test]
    fn sha256_and_none() {
        let dir = tempfile::tempdir().unwrap();
        let (m, file) = write_shard(dir.path(), ShardChecksum::Sha256, 10, 100);
        let want = crate::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &file).as_ref());
        assert_eq!(m.sha256, Some(want));
        assert_eq!((m.crc32c, m.part_crc32c.len()), (None, 0));
        let (m, _) = write_shard(dir.path(), ShardChecksum::None, 10, 100);
        assert_eq!((m.sha256, m.crc32c), (None, None));
    }
}
