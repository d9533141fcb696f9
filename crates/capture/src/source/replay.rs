//! A source that plays packets at a fixed rate instead of reading a wire: the frames of a pcap
//! or pcapng file, looped, or (without a file) generated Ethernet/IPv4/UDP frames. Each packet
//! is stamped with the current time when it is played, so a lookback fed by it looks like one
//! fed by a live interface. The filter is applied in user space with libpcap's interpreter on
//! the wire length (as [`crate::offline`] does for the lookback).
//!
//! Used for demos and for the scale benchmarks' simulated agents (`edgecap-bench simulate`):
//! the agent code is the real one; only this source differs.

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};

use super::{ATTENTIVE, CaptureSource, Next, OpenOptions, PacketRef, SourceFactory, SourceStats, Waker, wait_limit};
use crate::CaptureError;

/// What to play, and how fast.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    /// A pcap or pcapng file whose frames are played in a loop; `None`: generated UDP frames.
    pub file: Option<PathBuf>,
    /// Packets per second; 0 plays nothing (an idle interface).
    pub rate_pps: u64,
    /// Size of generated frames, bytes (42 to 9000).
    pub frame_bytes: usize,
    /// Added to the time packets are stamped with, nanoseconds: a PoP whose clock is off
    /// (tests, simulated agents).
    pub clock_skew_ns: i64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self { file: None, rate_pps: 0, frame_bytes: 128, clock_skew_ns: 0 }
    }
}

/// Opens [`ReplaySource`]s; the file is read once and shared.
#[derive(Debug)]
pub struct Replay {
    config: ReplayConfig,
    frames: Mutex<Option<Arc<Frames>>>,
}

impl Replay {
    /// A factory playing `config`. The file is read (or the frame generated) at the first
    /// successful open and shared by every source opened after it; a file that fails to load
    /// is tried again at the next open.
    pub fn new(config: ReplayConfig) -> Self {
        Self { config, frames: Mutex::new(None) }
    }

    fn frames(&self) -> Result<Arc<Frames>, CaptureError> {
        let mut cached = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(frames) = cached.as_ref() {
            return Ok(frames.clone());
        }
        let frames = Arc::new(match &self.config.file {
            Some(path) => Frames::load(path)?,
            None => Frames::generated(self.config.frame_bytes),
        });
        *cached = Some(frames.clone());
        Ok(frames)
    }
}

impl SourceFactory for Replay {
    fn open(&self, _iface: &str, options: &OpenOptions) -> Result<Box<dyn CaptureSource>, CaptureError> {
        Ok(Box::new(ReplaySource::new(self.frames()?, self.config.rate_pps, self.config.clock_skew_ns, options)))
    }
}

/// Frames to play: (wire length, bytes) and their link type.
#[derive(Debug)]
struct Frames {
    linktype: i32,
    frames: Vec<(u32, Vec<u8>)>,
    /// Generated: the UDP source port changes per packet, so flows differ.
    vary_port: bool,
}

fn replay_error(path: &std::path::Path, message: impl std::fmt::Display) -> CaptureError {
    CaptureError::Replay(format!("{}: {message}", path.display()))
}

impl Frames {
    fn load(path: &std::path::Path) -> Result<Self, CaptureError> {
        let open = || File::open(path).map(BufReader::new).map_err(|e| replay_error(path, e));
        let mut frames = Vec::new();
        let linktype = match PcapReader::new(open()?) {
            Ok(mut reader) => {
                let linktype = u32::from(reader.header().datalink) as i32;
                while let Some(packet) = reader.next_packet() {
                    let packet = packet.map_err(|e| replay_error(path, e))?;
                    frames.push((packet.orig_len, packet.data.into_owned()));
                }
                linktype
            }
            Err(_) => {
                let mut reader = PcapNgReader::new(open()?).map_err(|e| replay_error(path, e))?;
                let mut linktype = None;
                while let Some(block) = reader.next_block() {
                    match block.map_err(|e| replay_error(path, e))? {
                        Block::InterfaceDescription(idb) => {
                            linktype.get_or_insert(u32::from(idb.linktype) as i32);
                        }
                        Block::EnhancedPacket(epb) if epb.interface_id == 0 => {
                            frames.push((epb.original_len, epb.data.into_owned()));
                        }
                        Block::SimplePacket(spb) => frames.push((spb.original_len, spb.data.into_owned())),
                        _ => {}
                    }
                }
                linktype.ok_or_else(|| replay_error(path, "no interface description"))?
            }
        };
        if frames.is_empty() {
            return Err(replay_error(path, "holds no packet to replay"));
        }
        Ok(Self { linktype, frames, vary_port: false })
    }

    /// One Ethernet/IPv4/UDP frame 10.0.0.1:1024 -> 10.0.0.2:53 of `bytes` bytes (the source
    /// port changes per packet as it is played).
    fn generated(bytes: usize) -> Self {
        let len = bytes.clamp(42, 9000);
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
        f[22] = 64;
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&1024u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
        Self { linktype: 1, frames: vec![(len as u32, f)], vary_port: true }
    }
}

#[derive(Debug, Default)]
struct WakeFlag {
    woken: Mutex<bool>,
    cond: Condvar,
}

/// Plays [`Frames`] at a fixed rate. See the module docs.
pub struct ReplaySource {
    frames: Arc<Frames>,
    /// Nanoseconds between two packets (`None`: idle).
    gap_ns: Option<u64>,
    snaplen: usize,
    timeout: Duration,
    /// How long a wait lasts when not attentive (see [`OpenOptions::idle_ms`]).
    idle: Duration,
    attentive_until: Option<Instant>,
    /// Woken: the next read answers at once, a packet if one is due, else a timeout.
    recheck: bool,
    /// A packet was handed out since the last timeout: when the next is not due within the
    /// read timeout, the next read says so at once (as a drained libpcap ring does) before it
    /// waits, so that readers learn the source is dry.
    played_since_timeout: bool,
    started: Instant,
    played: u64,
    received: u64,
    filter: Option<pcap::BpfProgram>,
    wake: Arc<WakeFlag>,
    /// The packet handed out last (a generated frame's port is rewritten per packet).
    scratch: Vec<u8>,
    /// Added to packets' timestamps (see [`ReplayConfig::clock_skew_ns`]).
    clock_skew_ns: i64,
}

impl ReplaySource {
    fn new(frames: Arc<Frames>, rate_pps: u64, clock_skew_ns: i64, options: &OpenOptions) -> Self {
        Self {
            frames,
            gap_ns: (rate_pps > 0).then(|| 1_000_000_000 / rate_pps.min(1_000_000_000)),
            snaplen: options.snaplen as usize,
            timeout: Duration::from_millis(options.timeout_ms.max(1) as u64),
            idle: Duration::from_millis(u64::from(options.idle_ms)),
            attentive_until: None,
            recheck: false,
            played_since_timeout: false,
            started: Instant::now(),
            played: 0,
            received: 0,
            filter: None,
            wake: Arc::default(),
            scratch: Vec::new(),
            clock_skew_ns,
        }
    }

    /// Waits until `until` or a wake; true if woken.
    fn wait(&self, until: Instant) -> bool {
        let mut woken = self.wake.woken.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if std::mem::take(&mut *woken) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            woken = self.wake.cond.wait_timeout(woken, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl CaptureSource for ReplaySource {
    fn linktype(&self) -> i32 {
        self.frames.linktype
    }

    fn set_filter(&mut self, expr: &str) -> Result<(), CaptureError> {
        self.filter = if expr.is_empty() {
            None
        } else {
            Some(crate::compile_offline(self.frames.linktype, self.snaplen as i32, expr)?)
        };
        Ok(())
    }

    fn next(&mut self) -> Result<Next<'_>, CaptureError> {
        let now = Instant::now();
        let deadline = if std::mem::take(&mut self.recheck) {
            now
        } else {
            now + wait_limit(self.timeout, self.idle, self.attentive_until)
        };
        let woken = |source: &mut Self| {
            source.recheck = true;
            source.attend(ATTENTIVE);
            Ok(Next::Woken)
        };
        loop {
            let Some(gap_ns) = self.gap_ns else {
                return if self.wait(deadline) { woken(self) } else { Ok(Next::Timeout) };
            };
            let due = self.started + Duration::from_nanos(gap_ns.saturating_mul(self.played));
            if due > Instant::now() {
                if std::mem::take(&mut self.played_since_timeout) && due > Instant::now() + self.timeout {
                    return Ok(Next::Timeout);
                }
                if self.wait(due.min(deadline)) {
                    return woken(self);
                }
                if Instant::now() < due {
                    return Ok(Next::Timeout);
                }
            }
            let index = (self.played % self.frames.frames.len() as u64) as usize;
            self.played += 1;
            self.played_since_timeout = true;
            let (orig_len, frame) = &self.frames.frames[index];
            let keep = frame.len().min(self.snaplen);
            self.scratch.clear();
            self.scratch.extend_from_slice(&frame[..keep]);
            if self.frames.vary_port && keep >= 36 {
                let port = 1024 + (self.played % 60_000) as u16;
                self.scratch[34..36].copy_from_slice(&port.to_be_bytes());
            }
            if let Some(program) = &self.filter
                && !crate::offline::matches(program, &self.scratch, *orig_len)
            {
                continue;
            }
            self.received += 1;
            let ts_ns = crate::now_ns().saturating_add_signed(self.clock_skew_ns);
            return Ok(Next::Packet(PacketRef { ts_ns, orig_len: *orig_len, data: &self.scratch }));
        }
    }

    fn stats(&mut self) -> Option<SourceStats> {
        Some(SourceStats { received: self.received, dropped: 0 })
    }

    fn waker(&self) -> Waker {
        let wake = self.wake.clone();
        Waker::new(move || {
            *wake.woken.lock().unwrap_or_else(|p| p.into_inner()) = true;
            wake.cond.notify_all();
        })
    }

    fn attend(&mut self, for_: Duration) {
        super::extend_attention(&mut self.attentive_until, for_);
    }

    /// Packets are made when they are due: nothing waits unread.
    fn lag(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(source: &mut dyn CaptureSource, for_: Duration) -> Vec<(u64, u32, Vec<u8>)> {
        let end = Instant::now() + for_;
        let mut out = Vec::new();
        while Instant::now() < end {
            if let Next::Packet(p) = source.next().unwrap() {
                out.push((p.ts_ns, p.orig_len, p.data.to_vec()));
            }
        }
        out
    }

    #[test]
    fn plays_generated_frames_at_the_rate_filtered_and_truncated() {
        let replay = Replay::new(ReplayConfig { file: None, rate_pps: 1000, frame_bytes: 200, clock_skew_ns: 0 });
        let options = OpenOptions { snaplen: 100, timeout_ms: 20, ..Default::default() };
        let mut source = replay.open("sim0", &options).unwrap();
        assert_eq!(source.linktype(), 1);
        let packets = drain(source.as_mut(), Duration::from_millis(300));
        // 1000 pps for 0.3 s: about 300 (the schedule is exact; the margin is for a slow CI).
        assert!((150..=320).contains(&packets.len()), "{}", packets.len());
        assert!(packets.iter().all(|(_, orig, data)| *orig == 200 && data.len() == 100));
        assert!(packets.windows(2).all(|w| w[0].0 <= w[1].0), "timestamps in order");
        source.set_filter("udp dst port 54").unwrap();
        assert!(drain(source.as_mut(), Duration::from_millis(100)).is_empty(), "nothing matches port 54");
        source.set_filter("udp dst port 53 and greater 150").unwrap();
        assert!(!drain(source.as_mut(), Duration::from_millis(100)).is_empty(), "length judged on the wire length");
    }

    #[test]
    fn an_idle_source_times_out_and_wakes() {
        let replay = Replay::new(ReplayConfig::default());
        let mut source = replay.open("idle", &OpenOptions { timeout_ms: 10_000, ..Default::default() }).unwrap();
        let waker = source.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        });
        let started = Instant::now();
        assert!(matches!(source.next().unwrap(), Next::Woken));
        assert!(started.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        let mut quick =
            replay.open("idle", &OpenOptions { timeout_ms: 10, idle_ms: 10, ..Default::default() }).unwrap();
        assert!(matches!(quick.next().unwrap(), Next::Timeout));
    }

    #[test]
    fn a_slow_source_says_it_is_dry_after_each_packet() {
        // 5 pps: the next packet is 200 ms away, longer than the 10 ms read timeout.
        let replay = Replay::new(ReplayConfig { rate_pps: 5, ..ReplayConfig::default() });
        let options = OpenOptions { timeout_ms: 10, idle_ms: 60_000, ..Default::default() };
        let mut source = replay.open("slow", &options).unwrap();
        let mut seen = Vec::new();
        let started = Instant::now();
        while seen.iter().filter(|&&p| p).count() < 3 {
            seen.push(matches!(source.next().unwrap(), Next::Packet(_)));
        }
        assert!(seen.windows(2).all(|w| !(w[0] && w[1])), "a timeout between packets: {seen:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn a_quiet_source_waits_its_idle_time_unless_woken() {
        let replay = Replay::new(ReplayConfig::default());
        let options = OpenOptions { timeout_ms: 10, idle_ms: 60_000, ..Default::default() };
        let mut source = replay.open("idle", &options).unwrap();
        let waker = source.waker();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            waker.wake();
        });
        // Not a timeout after 10 ms: a quiet source waits its idle time.
        assert!(matches!(source.next().unwrap(), Next::Woken));
        t.join().unwrap();
        // Woken, it looks again at once, and its waits are short for a while.
        let started = Instant::now();
        assert!(matches!(source.next().unwrap(), Next::Timeout));
        assert!(matches!(source.next().unwrap(), Next::Timeout));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        // Attending on its own (a capture handing the lookback back) does the same.
        let mut other = replay.open("idle", &options).unwrap();
        other.attend(Duration::from_secs(30));
        let started = Instant::now();
        assert!(matches!(other.next().unwrap(), Next::Timeout));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    #[test]
    fn replays_a_capture_file_and_refuses_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("edgecap-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("two.pcap");
        let frames = Frames::generated(60);
        let mut writer = pcap_file::pcap::PcapWriter::new(File::create(&path).unwrap()).unwrap();
        for i in 0..2u32 {
            let packet = pcap_file::pcap::PcapPacket::new(Duration::from_secs(u64::from(i)), 60, &frames.frames[0].1);
            writer.write_packet(&packet).unwrap();
        }
        drop(writer);
        let replay =
            Replay::new(ReplayConfig { file: Some(path.clone()), rate_pps: 2000, frame_bytes: 0, clock_skew_ns: 0 });
        let mut source = replay.open("x", &OpenOptions::default()).unwrap();
        assert!(!drain(source.as_mut(), Duration::from_millis(50)).is_empty());
        std::fs::write(&path, b"not a capture").unwrap();
        let e = Replay::new(ReplayConfig { file: Some(path), rate_pps: 1, frame_bytes: 0, clock_skew_ns: 0 })
            .open("x", &OpenOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("two.pcap"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
