//! Writers: classic pcap (one link type; microsecond or nanosecond) and pcapng (one
//! Interface Description Block per source interface, nanosecond timestamps, Interface
//! Statistics Blocks with the sources' counters, a section comment). Little-endian.

use std::io::{self, Write};

/// What an output interface says about where its packets came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutInterface {
    /// Link type (LINKTYPE_ value) of the interface's packets.
    pub linktype: u16,
    /// Snap length, bytes; 0: no limit.
    pub snaplen: u32,
    /// `pop/agent/iface` for capture shards, `file/iface` otherwise.
    pub name: String,
    /// Free text, written as `if_description`.
    pub description: Option<String>,
    /// The capture filter (libpcap syntax).
    pub filter: Option<String>,
    /// Packets the source received / dropped (written as an Interface Statistics Block).
    pub received: Option<u64>,
    /// Packets the source dropped. An interface gets a Statistics Block if this or
    /// `received` is set.
    pub dropped: Option<u64>,
}

fn secs_u32(ts_ns: u64) -> io::Result<u32> {
    u32::try_from(ts_ns / 1_000_000_000).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, "timestamp beyond what classic pcap can hold (year 2106)")
    })
}

/// Classic pcap.
pub struct PcapWriter<W: Write> {
    out: W,
    nanos: bool,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header (version 2.4) for `linktype` and `snaplen`; `nanos` chooses
    /// nanosecond timestamps (magic `a1b23c4d`) over microseconds.
    pub fn new(mut out: W, linktype: u16, snaplen: u32, nanos: bool) -> io::Result<Self> {
        let magic: u32 = if nanos { 0xA1B2_3C4D } else { 0xA1B2_C3D4 };
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&magic.to_le_bytes());
        h[4..6].copy_from_slice(&2u16.to_le_bytes());
        h[6..8].copy_from_slice(&4u16.to_le_bytes());
        h[16..20].copy_from_slice(&snaplen.to_le_bytes());
        h[20..24].copy_from_slice(&u32::from(linktype).to_le_bytes());
        out.write_all(&h)?;
        Ok(Self { out, nanos })
    }

    /// Writes one record: `ts_ns` (nanoseconds since the Unix epoch; truncated to the
    /// microsecond unless `nanos`), the wire length `orig_len` (raised to `data.len()` if
    /// smaller) and `data`. A timestamp past 2106 (beyond 32-bit seconds) is an
    /// `InvalidData` error, and nothing is written. `data` is not checked against the snap
    /// length.
    pub fn packet(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) -> io::Result<()> {
        let secs = secs_u32(ts_ns)?;
        let frac = (ts_ns % 1_000_000_000) as u32;
        let frac = if self.nanos { frac } else { frac / 1000 };
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&secs.to_le_bytes());
        h[4..8].copy_from_slice(&frac.to_le_bytes());
        h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
        h[12..16].copy_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)
    }

    /// Flushes, and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// pcapng.
pub struct PcapNgWriter<W: Write> {
    out: W,
    interfaces: Vec<OutInterface>,
    last_ts: Vec<u64>,
    block: Vec<u8>,
}

fn option(block: &mut Vec<u8>, code: u16, value: &[u8]) {
    block.extend_from_slice(&code.to_le_bytes());
    block.extend_from_slice(&(value.len() as u16).to_le_bytes());
    block.extend_from_slice(value);
    block.resize(block.len() + (4 - value.len() % 4) % 4, 0);
}

fn end_options(block: &mut Vec<u8>) {
    block.extend_from_slice(&[0, 0, 0, 0]);
}

/// pcapng option values are at most 65535 bytes.
fn clip(s: &str) -> &[u8] {
    let b = s.as_bytes();
    &b[..b.len().min(60_000)]
}

impl<W: Write> PcapNgWriter<W> {
    /// Writes the Section Header Block (version 1.0, section length unspecified) with
    /// `shb_userappl` `edgecap <version>` and `comment`, if any, as `opt_comment` (cut at
    /// 60 000 bytes).
    pub fn new(out: W, comment: Option<&str>) -> io::Result<Self> {
        let mut w = Self { out, interfaces: Vec::new(), last_ts: Vec::new(), block: Vec::new() };
        let mut body = Vec::new();
        body.extend_from_slice(&0x1A2B_3C4Du32.to_le_bytes());
        body.extend_from_slice(&1u16.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&(-1i64).to_le_bytes());
        if let Some(c) = comment {
            option(&mut body, 1, clip(c));
        }
        option(&mut body, 4, concat!("edgecap ", env!("CARGO_PKG_VERSION")).as_bytes());
        end_options(&mut body);
        w.write_block(0x0A0D_0D0A, &body)?;
        Ok(w)
    }

    fn write_block(&mut self, block_type: u32, body: &[u8]) -> io::Result<()> {
        let len = (12 + body.len()) as u32;
        self.out.write_all(&block_type.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&len.to_le_bytes())
    }

    /// Describes an interface (nanosecond `if_tsresol`; name, description and filter cut at
    /// 60 000 bytes); returns its id for [`Self::packet`]. An interface with the same name,
    /// link type and snap length as one already described is the same interface (several
    /// shards of one PoP's capture): its id is reused, so counters and provenance are not
    /// repeated.
    pub fn add_interface(&mut self, iface: OutInterface) -> io::Result<u32> {
        if let Some(id) = self
            .interfaces
            .iter()
            .position(|i| i.name == iface.name && i.linktype == iface.linktype && i.snaplen == iface.snaplen)
        {
            return Ok(id as u32);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&iface.linktype.to_le_bytes());
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&iface.snaplen.to_le_bytes());
        option(&mut body, 2, clip(&iface.name));
        if let Some(d) = &iface.description {
            option(&mut body, 3, clip(d));
        }
        option(&mut body, 9, &[9]); // if_tsresol: nanoseconds
        if let Some(f) = &iface.filter {
            let mut v = vec![0u8]; // libpcap filter string
            v.extend_from_slice(clip(f));
            option(&mut body, 11, &v);
        }
        end_options(&mut body);
        self.write_block(1, &body)?;
        self.interfaces.push(iface);
        self.last_ts.push(0);
        Ok((self.interfaces.len() - 1) as u32)
    }

    /// Writes one Enhanced Packet Block on interface `iface` (an id from
    /// [`Self::add_interface`]; not checked): `ts_ns` nanoseconds since the Unix epoch (any
    /// value fits), the wire length `orig_len` (raised to `data.len()` if smaller), and `data`.
    pub fn packet(&mut self, iface: u32, ts_ns: u64, orig_len: u32, data: &[u8]) -> io::Result<()> {
        let padded = (data.len() + 3) & !3;
        let len = (32 + padded) as u32;
        let b = &mut self.block;
        b.clear();
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&iface.to_le_bytes());
        b.extend_from_slice(&((ts_ns >> 32) as u32).to_le_bytes());
        b.extend_from_slice(&(ts_ns as u32).to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
        self.out.write_all(b)?;
        self.out.write_all(data)?;
        let pad = [0u8; 3];
        self.out.write_all(&pad[..padded - data.len()])?;
        self.out.write_all(&len.to_le_bytes())?;
        if let Some(t) = self.last_ts.get_mut(iface as usize) {
            *t = (*t).max(ts_ns);
        }
        Ok(())
    }

    /// The writer underneath (for example a buffer drained as a stream is sent).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Sets the counters written for interface `id` when the file is finished.
    pub fn set_counters(&mut self, id: u32, received: Option<u64>, dropped: Option<u64>) {
        if let Some(iface) = self.interfaces.get_mut(id as usize) {
            iface.received = received;
            iface.dropped = dropped;
        }
    }

    /// Writes an Interface Statistics Block for every interface with counters, then flushes.
    pub fn finish(mut self) -> io::Result<W> {
        for id in 0..self.interfaces.len() {
            let iface = &self.interfaces[id];
            if iface.received.is_none() && iface.dropped.is_none() {
                continue;
            }
            let ts = self.last_ts[id];
            let mut body = Vec::new();
            body.extend_from_slice(&(id as u32).to_le_bytes());
            body.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
            body.extend_from_slice(&(ts as u32).to_le_bytes());
            if let Some(r) = iface.received {
                option(&mut body, 4, &r.to_le_bytes());
            }
            if let Some(d) = iface.dropped {
                option(&mut body, 5, &d.to_le_bytes());
            }
            end_options(&mut body);
            self.write_block(5, &body)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}
