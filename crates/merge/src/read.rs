//! Streaming readers for classic pcap and pcapng, written for hostile input: every length is
//! checked against a bound before anything is allocated, every error carries the byte offset
//! where it was found, and nothing panics.
//!
//! Classic pcap: microsecond and nanosecond magic, either byte order, and the "modified"
//! (Kuznetzov, magic `a1b2cd34`) variant with 24-byte record headers.
//! pcapng: several sections (each with its own byte order), several interfaces with their own
//! `if_tsresol` (powers of 10 and of 2) and `if_tsoffset`, Enhanced, Simple and (obsolete)
//! Packet blocks; Interface Statistics Blocks are read for their counters; every other block
//! type is skipped.
//!
//! Timestamps become nanoseconds since the epoch (`u64`); finer resolutions are truncated to
//! the nanosecond. A Simple Packet Block has no timestamp: it takes the timestamp of the
//! packet before it in the same file (0 if none), which keeps it where it was in its file.
//! Out-of-range microsecond fields (>= 1 000 000) are taken arithmetically (1 000 000 us =
//! one more second), as tcpdump prints them.

use std::io::{self, Read};

/// The largest packet record accepted (Wireshark's and libpcap's bound for most link types).
pub const MAX_RECORD: u32 = 262_144;
/// The largest pcapng block accepted.
pub const MAX_BLOCK: u32 = 16 << 20;

/// Why an input cannot be read further: malformed, cut short, or an I/O error of the
/// underlying reader.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {message}")]
pub struct ReadError {
    /// Byte offset in the input of the damaged record or block (or of the field at fault;
    /// for an I/O error, how far reading had got).
    pub offset: u64,
    /// What is wrong, for people.
    pub message: String,
}

/// A result with a [`ReadError`].
pub type Result<T> = std::result::Result<T, ReadError>;

/// Timestamp resolution of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// 10^-n seconds.
    Decimal(u8),
    /// 2^-n seconds.
    Binary(u8),
}

impl Resolution {
    /// Microseconds: classic pcap's usual magic, and pcapng's default when an interface has
    /// no `if_tsresol`.
    pub const MICRO: Resolution = Resolution::Decimal(6);
    /// Nanoseconds: classic pcap's nanosecond magic (`a1b23c4d`).
    pub const NANO: Resolution = Resolution::Decimal(9);

    /// Whether microseconds cannot hold these timestamps exactly (2^-n s is a whole number
    /// of microseconds only for n <= 6).
    pub fn finer_than_micro(self) -> bool {
        match self {
            Resolution::Decimal(n) => n > 6,
            Resolution::Binary(n) => n > 6,
        }
    }

    fn to_ns(self, units: u64) -> u64 {
        match self {
            Resolution::Decimal(n) if n <= 9 => units.saturating_mul(10u64.pow(u32::from(9 - n))),
            Resolution::Decimal(n) => {
                let div = 10u128.checked_pow(u32::from(n - 9)).unwrap_or(u128::MAX);
                (u128::from(units) / div) as u64
            }
            Resolution::Binary(n) => {
                let ns = (u128::from(units) * 1_000_000_000) >> n.min(127);
                u64::try_from(ns).unwrap_or(u64::MAX)
            }
        }
    }
}

/// An interface of an input (the one interface of a classic pcap file, or a pcapng IDB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Link type (LINKTYPE_ value). The upper 16 bits of classic pcap's field (FCS length and
    /// reserved bits) are dropped.
    pub linktype: u16,
    /// 0 means "no limit" (pcapng).
    pub snaplen: u32,
    /// pcapng `if_name` (lossy UTF-8); `None` for classic pcap.
    pub name: Option<String>,
    /// pcapng `if_description` (lossy UTF-8); `None` for classic pcap.
    pub description: Option<String>,
    /// pcapng `if_filter`, when it is libpcap filter text (filter type 0); `None` otherwise.
    pub filter: Option<String>,
    /// Timestamp resolution: pcapng `if_tsresol`, or from the classic pcap magic.
    pub resolution: Resolution,
    /// pcapng `if_tsoffset`, seconds.
    pub ts_offset: i64,
    /// Counters from the last Interface Statistics Block for this interface.
    pub received: Option<u64>,
    /// Packets dropped (`isb_ifdrop`), from the last Interface Statistics Block that carried
    /// it; `None` if none did (yet: the blocks are read as the stream is).
    pub dropped: Option<u64>,
}

impl Interface {
    fn new(linktype: u16, snaplen: u32, resolution: Resolution) -> Self {
        Self {
            linktype,
            snaplen,
            name: None,
            description: None,
            filter: None,
            resolution,
            ts_offset: 0,
            received: None,
            dropped: None,
        }
    }
}

/// One packet. `data` is reused between records; the packet bytes are `data[start..start+len]`.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Timestamp, nanoseconds since the Unix epoch, with the interface's `if_tsoffset` applied;
    /// saturates at 0 and `u64::MAX` instead of wrapping.
    pub ts_ns: u64,
    /// Length on the wire, bytes, as the file says (not checked against `len`).
    pub orig_len: u32,
    /// Index into [`CaptureReader::interfaces`].
    pub iface: usize,
    /// Buffer the record was read into, reused from record to record; only
    /// `data[start..start + len]` is the packet.
    pub data: Vec<u8>,
    /// Where the packet bytes start in `data`.
    pub start: usize,
    /// Captured length, bytes.
    pub len: usize,
    /// Byte offset of the record (or block) in its file.
    pub offset: u64,
}

impl Record {
    /// The packet's captured bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }
}

/// The container format of an input, told by its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap.
    Pcap {
        /// Nanosecond timestamps (magic `a1b23c4d`) rather than microseconds.
        nanos: bool,
        /// The file's fields are big-endian.
        big_endian: bool,
        /// Kuznetzov's "modified" pcap (magic `a1b2cd34`), with 24-byte record headers.
        modified: bool,
    },
    /// pcapng; the byte order is each section's own.
    PcapNg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endian {
    Little,
    Big,
}

impl Endian {
    fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            Endian::Little => u16::from_le_bytes(a),
            Endian::Big => u16::from_be_bytes(a),
        }
    }
    fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            Endian::Little => u32::from_le_bytes(a),
            Endian::Big => u32::from_be_bytes(a),
        }
    }
    fn u64(self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            Endian::Little => u64::from_le_bytes(a),
            Endian::Big => u64::from_be_bytes(a),
        }
    }
}

/// Reads packets from a classic pcap or pcapng stream, one at a time.
pub struct CaptureReader<R: Read> {
    inner: R,
    offset: u64,
    format: Format,
    endian: Endian,
    interfaces: Vec<Interface>,
    /// pcapng: index of the current section's first interface.
    section_base: usize,
    sections: usize,
    last_ts: u64,
    scratch: Vec<u8>,
}

const PCAPNG_SHB: u32 = 0x0A0D_0D0A;

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (and, for pcapng, the first section's leading blocks lazily).
    pub fn open(inner: R) -> Result<Self> {
        let mut reader = Self {
            inner,
            offset: 0,
            format: Format::PcapNg,
            endian: Endian::Little,
            interfaces: Vec::new(),
            section_base: 0,
            sections: 0,
            last_ts: 0,
            scratch: Vec::new(),
        };
        let mut magic = [0u8; 4];
        reader.fill(&mut magic, "file header")?;
        let le = u32::from_le_bytes(magic);
        let (nanos, modified, endian) = match le {
            0xA1B2_C3D4 => (false, false, Endian::Little),
            0xD4C3_B2A1 => (false, false, Endian::Big),
            0xA1B2_3C4D => (true, false, Endian::Little),
            0x4D3C_B2A1 => (true, false, Endian::Big),
            0xA1B2_CD34 => (false, true, Endian::Little),
            0x34CD_B2A1 => (false, true, Endian::Big),
            PCAPNG_SHB => {
                let mut len_raw = [0u8; 4];
                reader.fill(&mut len_raw, "section header")?;
                reader.section_header(0, len_raw)?;
                return Ok(reader);
            }
            other => {
                return Err(ReadError { offset: 0, message: format!("not a pcap or pcapng file (magic {other:08x})") });
            }
        };
        let mut header = [0u8; 20];
        reader.fill(&mut header, "file header")?;
        let major = endian.u16(&header[0..]);
        let minor = endian.u16(&header[2..]);
        if major != 2 {
            return Err(ReadError {
                offset: 4,
                message: format!("pcap version {major}.{minor} is not supported (2.x is)"),
            });
        }
        let snaplen = endian.u32(&header[12..]);
        let linktype = (endian.u32(&header[16..]) & 0xFFFF) as u16;
        reader.endian = endian;
        reader.format = Format::Pcap { nanos, big_endian: endian == Endian::Big, modified };
        let resolution = if nanos { Resolution::NANO } else { Resolution::MICRO };
        reader.interfaces.push(Interface::new(linktype, snaplen, resolution));
        Ok(reader)
    }

    /// The input's format, known once [`CaptureReader::open`] has read the magic.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Interfaces seen so far (pcapng files can add interfaces as they go).
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads exactly `buf.len()` bytes, or fails naming what was cut short.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let got = self.read_up_to(buf)?;
        if got < buf.len() {
            return Err(ReadError {
                offset: self.offset,
                message: format!("file cut short in the {what} (needed {} more bytes)", buf.len() - got),
            });
        }
        Ok(())
    }

    /// Reads until `buf` is full or the stream ends; returns the bytes read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.inner.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadError { offset: self.offset, message: format!("read failed: {e}") }),
            }
        }
        Ok(got)
    }

    /// Reads the next packet into `record`; `Ok(false)` at a clean end of file.
    pub fn next_record(&mut self, record: &mut Record) -> Result<bool> {
        match self.format {
            Format::Pcap { modified, .. } => self.next_pcap(record, modified),
            Format::PcapNg => self.next_pcapng(record),
        }
    }

    fn next_pcap(&mut self, record: &mut Record, modified: bool) -> Result<bool> {
        let start = self.offset;
        let mut header = [0u8; 24];
        let header_len = if modified { 24 } else { 16 };
        let got = self.read_up_to(&mut header[..header_len])?;
        if got == 0 {
            return Ok(false);
        }
        if got < header_len {
            return Err(ReadError {
                offset: start,
                message: format!("file cut short in a record header ({got} of {header_len} bytes)"),
            });
        }
        let e = self.endian;
        let secs = u64::from(e.u32(&header[0..]));
        let frac = u64::from(e.u32(&header[4..]));
        let caplen = e.u32(&header[8..]);
        let orig_len = e.u32(&header[12..]);
        let iface = &self.interfaces[0];
        let max = MAX_RECORD.max(iface.snaplen.min(MAX_BLOCK));
        if caplen > max {
            return Err(ReadError {
                offset: start,
                message: format!("record of {caplen} bytes is larger than the maximum of {max}"),
            });
        }
        let frac_ns = if iface.resolution == Resolution::NANO { frac } else { frac.saturating_mul(1000) };
        record.ts_ns = secs.saturating_mul(1_000_000_000).saturating_add(frac_ns);
        record.orig_len = orig_len;
        record.iface = 0;
        record.offset = start;
        record.data.resize(caplen as usize, 0);
        record.start = 0;
        record.len = caplen as usize;
        let mut data = std::mem::take(&mut record.data);
        let result = self.fill(&mut data, "packet data");
        record.data = data;
        // Point at the damaged record, not at where the file ended.
        result.map_err(|e| ReadError { offset: start, message: format!("record: {}", e.message) })?;
        self.last_ts = record.ts_ns;
        Ok(true)
    }

    /// Reads a block header; `None` at a clean end of file. Returns (type, total length,
    /// offset of the block).
    fn block_header(&mut self) -> Result<Option<(u32, u32, u64)>> {
        let start = self.offset;
        let mut h = [0u8; 8];
        let got = self.read_up_to(&mut h)?;
        if got == 0 {
            return Ok(None);
        }
        if got < 8 {
            return Err(ReadError { offset: start, message: "file cut short in a block header".into() });
        }
        let block_type = self.endian.u32(&h[0..]);
        if block_type == PCAPNG_SHB {
            self.section_header(start, [h[4], h[5], h[6], h[7]])?;
            return Ok(Some((PCAPNG_SHB, 0, start)));
        }
        let len = self.endian.u32(&h[4..]);
        if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK {
            return Err(ReadError {
                offset: start,
                message: format!("block of type {block_type:#x} has an invalid length {len}"),
            });
        }
        Ok(Some((block_type, len, start)))
    }

    /// Reads a block's body into the reader's scratch buffer.
    fn scratch_block(&mut self, len: u32, start: u64) -> Result<()> {
        let mut body = std::mem::take(&mut self.scratch);
        let result = self.block_body(len, start, &mut body);
        self.scratch = body;
        result
    }

    /// Reads a block's body (after the 8-byte header) and checks the trailing length.
    fn block_body(&mut self, len: u32, start: u64, body: &mut Vec<u8>) -> Result<()> {
        body.resize(len as usize - 8, 0);
        let mut tmp = std::mem::take(body);
        let result = self.fill(&mut tmp, "block body");
        *body = tmp;
        result.map_err(|e| ReadError { offset: start, message: format!("block: {}", e.message) })?;
        let trailer = self.endian.u32(&body[body.len() - 4..]);
        if trailer != len {
            return Err(ReadError {
                offset: start,
                message: format!("block total length {len} in the header and {trailer} in the trailer differ"),
            });
        }
        body.truncate(body.len() - 4);
        Ok(())
    }

    /// Parses a Section Header Block whose type and length bytes (`len_raw`) were just read;
    /// `start` is the block's offset.
    fn section_header(&mut self, start: u64, len_raw: [u8; 4]) -> Result<()> {
        let mut bom = [0u8; 4];
        self.fill(&mut bom, "section header")?;
        self.endian = match u32::from_le_bytes(bom) {
            0x1A2B_3C4D => Endian::Little,
            0x4D3C_2B1A => Endian::Big,
            other => {
                return Err(ReadError {
                    offset: start + 8,
                    message: format!("bad byte-order magic {other:08x} in section header"),
                });
            }
        };
        let len = self.endian.u32(&len_raw);
        if len < 28 || !len.is_multiple_of(4) || len > MAX_BLOCK {
            return Err(ReadError { offset: start, message: format!("section header has an invalid length {len}") });
        }
        let mut body = std::mem::take(&mut self.scratch);
        body.resize(len as usize - 12, 0);
        let result = self.fill(&mut body, "section header");
        self.scratch = body;
        result?;
        let body = &self.scratch;
        let trailer = self.endian.u32(&body[body.len() - 4..]);
        if trailer != len {
            return Err(ReadError {
                offset: start,
                message: format!("section header length {len} in the header and {trailer} in the trailer differ"),
            });
        }
        let major = self.endian.u16(&body[0..]);
        let minor = self.endian.u16(&body[2..]);
        if major != 1 {
            return Err(ReadError {
                offset: start + 12,
                message: format!("pcapng version {major}.{minor} is not supported (1.x is)"),
            });
        }
        // Options follow the 8-byte section length; validate their framing.
        let options = &body[12..body.len() - 4];
        parse_options(self.endian, options, start + 24, |_, _| {})?;
        self.section_base = self.interfaces.len();
        self.sections += 1;
        Ok(())
    }

    fn next_pcapng(&mut self, record: &mut Record) -> Result<bool> {
        loop {
            let Some((block_type, len, start)) = self.block_header()? else { return Ok(false) };
            if block_type == PCAPNG_SHB {
                continue;
            }
            let e = self.endian;
            match block_type {
                // Interface Description Block
                1 => {
                    self.scratch_block(len, start)?;
                    let body = &self.scratch;
                    if body.len() < 8 {
                        return Err(ReadError {
                            offset: start,
                            message: "interface description block too short".into(),
                        });
                    }
                    let mut iface = Interface::new(e.u16(&body[0..]), e.u32(&body[4..]), Resolution::MICRO);
                    let mut failed = None;
                    parse_options(e, &body[8..], start + 16, |code, value| match code {
                        2 => iface.name = Some(String::from_utf8_lossy(value).into_owned()),
                        3 => iface.description = Some(String::from_utf8_lossy(value).into_owned()),
                        9 if value.len() == 1 => {
                            let v = value[0];
                            let n = v & 0x7F;
                            iface.resolution =
                                if v & 0x80 == 0 { Resolution::Decimal(n) } else { Resolution::Binary(n) };
                            if (v & 0x80 == 0 && n > 19) || (v & 0x80 != 0 && n > 63) {
                                failed = Some(format!("unsupported if_tsresol {v:#x}"));
                            }
                        }
                        11 if !value.is_empty() && value[0] == 0 => {
                            iface.filter = Some(String::from_utf8_lossy(&value[1..]).into_owned());
                        }
                        14 if value.len() == 8 => iface.ts_offset = e.u64(value) as i64,
                        _ => {}
                    })?;
                    if let Some(message) = failed {
                        return Err(ReadError { offset: start, message });
                    }
                    self.interfaces.push(iface);
                }
                // Enhanced Packet Block, (obsolete) Packet Block
                6 | 2 => {
                    let mut data = std::mem::take(&mut record.data);
                    let result = self.block_body(len, start, &mut data);
                    record.data = data;
                    result?;
                    let body = &record.data;
                    if body.len() < 20 {
                        return Err(ReadError { offset: start, message: "packet block too short".into() });
                    }
                    let id = if block_type == 6 { e.u32(&body[0..]) as usize } else { usize::from(e.u16(&body[0..])) };
                    let units = (u64::from(e.u32(&body[4..])) << 32) | u64::from(e.u32(&body[8..]));
                    let caplen = e.u32(&body[12..]) as usize;
                    let orig_len = e.u32(&body[16..]);
                    if caplen > body.len() - 20 {
                        return Err(ReadError {
                            offset: start,
                            message: format!("packet of {caplen} bytes overruns its block"),
                        });
                    }
                    let iface = self.section_iface(id, start)?;
                    let info = &self.interfaces[iface];
                    let offset_ns = info.ts_offset.saturating_mul(1_000_000_000);
                    record.ts_ns = info.resolution.to_ns(units).saturating_add_signed(offset_ns);
                    record.orig_len = orig_len;
                    record.iface = iface;
                    record.offset = start;
                    record.start = 20;
                    record.len = caplen;
                    self.last_ts = record.ts_ns;
                    return Ok(true);
                }
                // Simple Packet Block: interface 0 of the section, no timestamp.
                3 => {
                    let mut data = std::mem::take(&mut record.data);
                    let result = self.block_body(len, start, &mut data);
                    record.data = data;
                    result?;
                    let body = &record.data;
                    if body.len() < 4 {
                        return Err(ReadError { offset: start, message: "simple packet block too short".into() });
                    }
                    let iface = self.section_iface(0, start)?;
                    let orig_len = e.u32(&body[0..]);
                    let snaplen = self.interfaces[iface].snaplen;
                    let mut caplen = (orig_len as usize).min(body.len() - 4);
                    if snaplen != 0 {
                        caplen = caplen.min(snaplen as usize);
                    }
                    record.ts_ns = self.last_ts;
                    record.orig_len = orig_len;
                    record.iface = iface;
                    record.offset = start;
                    record.start = 4;
                    record.len = caplen;
                    return Ok(true);
                }
                // Interface Statistics Block
                5 => {
                    self.scratch_block(len, start)?;
                    let body = &self.scratch;
                    if body.len() < 12 {
                        return Err(ReadError {
                            offset: start,
                            message: "interface statistics block too short".into(),
                        });
                    }
                    let iface = self.section_iface(e.u32(&body[0..]) as usize, start)?;
                    let (mut received, mut dropped) = (None, None);
                    parse_options(e, &body[12..], start + 20, |code, value| match code {
                        4 if value.len() == 8 => received = Some(e.u64(value)),
                        5 if value.len() == 8 => dropped = Some(e.u64(value)),
                        _ => {}
                    })?;
                    let info = &mut self.interfaces[iface];
                    info.received = received.or(info.received);
                    info.dropped = dropped.or(info.dropped);
                }
                // Anything else (name resolution, custom, decryption secrets...): skip.
                _ => {
                    self.scratch_block(len, start)?;
                }
            }
        }
    }

    fn section_iface(&self, id: usize, at: u64) -> Result<usize> {
        let index = self.section_base + id;
        if index >= self.interfaces.len() {
            return Err(ReadError {
                offset: at,
                message: format!("packet refers to interface {id}, which this section has not described"),
            });
        }
        Ok(index)
    }
}

/// Walks pcapng options (code, length, value padded to 4), calling `each` for every option
/// until `opt_endofopt` or the end of the area; fails if one runs past the end.
fn parse_options(e: Endian, mut area: &[u8], mut offset: u64, mut each: impl FnMut(u16, &[u8])) -> Result<()> {
    while area.len() >= 4 {
        let code = e.u16(&area[0..]);
        let len = usize::from(e.u16(&area[2..]));
        if code == 0 {
            return Ok(());
        }
        let padded = (len + 3) & !3;
        if 4 + padded > area.len() {
            return Err(ReadError {
                offset,
                message: format!("option {code} of length {len} runs past the end of its block"),
            });
        }
        each(code, &area[4..4 + len]);
        area = &area[4 + padded..];
        offset += 4 + padded as u64;
    }
    Ok(())
}
