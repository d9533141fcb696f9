//! The streaming k-way merge.
//!
//! Memory is bounded by the number of inputs: each input holds one record (its current head)
//! plus its reader's buffer; the output is written as packets are chosen. Inputs are never
//! read ahead beyond one record.
//!
//! **Order.** The next packet written is the head with the smallest timestamp; on equal
//! timestamps the head of the earlier input (in the order given) goes first; within one
//! input, its own order is kept. So the output is sorted whenever every input is sorted, and
//! an input that is not (a packet older than its predecessor) is merged without loss, its
//! late packet written when it is reached; such packets are counted in
//! [`InputReport::out_of_order`]. (mergecap 4.0 differs on ties only: it writes the *last*
//! input's packet first. Ours is stable, so merging shards listed in PoP order keeps that
//! order among simultaneous packets.)
//!
//! **Damage.** A malformed input stops the merge with an error naming the input and the
//! byte offset. With [`MergeOptions::salvage`], the packets before the damage are kept, the
//! input ends there, and the damage is reported in [`InputReport::damage`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{Read, Write};

use crate::read::{CaptureReader, MAX_RECORD, ReadError, Record};
use crate::write::{OutInterface, PcapNgWriter, PcapWriter};

/// Format of the merged output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Classic pcap: one link type for all inputs.
    Pcap,
    /// pcapng: one interface per source interface, with provenance.
    PcapNg,
}

/// Where an input's packets came from (a capture shard's PoP and agent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The PoP; first part of the pcapng interface name `pop/agent/iface`.
    pub pop: String,
    /// The agent; second part of the pcapng interface name.
    pub agent: String,
    /// Capture interface name (default: the input's own, or `ifN`).
    pub iface: Option<String>,
    /// The capture filter, written as the interface's `if_filter` (default: the input's own).
    pub filter: Option<String>,
    /// Packets received, for the interface's Statistics Block (default: the counter from the
    /// input's own statistics blocks, if any).
    pub received: Option<u64>,
    /// Packets dropped, for the interface's Statistics Block (default: as for `received`).
    pub dropped: Option<u64>,
    /// The interface's `if_description` (default: the input's own).
    pub description: Option<String>,
    /// Added to every timestamp of this input (a clock correction), nanoseconds.
    pub ts_offset_ns: i64,
}

/// One input of [`merge()`].
pub struct MergeInput<R: Read> {
    /// Names the input in errors and in pcapng interface names (a file name).
    pub name: String,
    /// The capture, classic pcap or pcapng, read once from start to end in small pieces
    /// (buffer it: a `BufReader`).
    pub reader: R,
    /// Where its packets came from, for pcapng interface names, filters and counters; unused
    /// in classic pcap. `None`: interfaces are named `name/iface` (their own name when `name`
    /// is empty: the input is a stage of a larger merge).
    pub provenance: Option<Provenance>,
}

/// How [`merge()`] writes, and whether it tolerates damaged inputs.
#[derive(Clone, Debug, Default)]
pub struct MergeOptions {
    /// Output format; `None`: classic pcap.
    pub format: Option<OutputFormat>,
    /// Keep the packets before damage in an input instead of failing.
    pub salvage: bool,
    /// pcapng section comment (e.g. the capture id).
    pub comment: Option<String>,
}

/// What became of one input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InputReport {
    /// The input's [`MergeInput::name`].
    pub name: String,
    /// Packets written from this input.
    pub packets: u64,
    /// Packets older than the packet before them in this input; each was written when it was
    /// reached, so the output is out of order around it.
    pub out_of_order: u64,
    /// With [`MergeOptions::salvage`]: the damage that ended this input early, or kept it from
    /// being opened (then it gave no packet). `None`: read to its end.
    pub damage: Option<ReadError>,
}

/// What [`merge()`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Packets written.
    pub packets: u64,
    /// Captured packet bytes written, without file, block or record headers.
    pub bytes: u64,
    /// One report per input, in the order given.
    pub inputs: Vec<InputReport>,
}

/// Why a merge stopped. The output written until then is incomplete.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// An input is malformed, cut short or unreadable (without [`MergeOptions::salvage`]),
    /// or, in classic pcap output, has a timestamp past 2106, which 32-bit seconds cannot
    /// hold.
    #[error("{name}: {error}")]
    Input {
        /// The input's [`MergeInput::name`].
        name: String,
        /// What is wrong, and at which byte of the input.
        error: ReadError,
    },
    /// Classic pcap output, but the inputs (or the interfaces of one pcapng input) have more
    /// than one link type.
    #[error(
        "classic pcap holds one link type, but {first_name} has {first} and {other_name} has {other}; write pcapng instead (--format pcapng)"
    )]
    LinkTypes {
        /// The input whose link type the output took.
        first_name: String,
        /// The output's link type.
        first: u16,
        /// An input with another link type.
        other_name: String,
        /// That other link type.
        other: u16,
    },
    /// Writing the output failed (an error of the `Write` given, or of flushing it).
    #[error("write: {0}")]
    Write(#[from] std::io::Error),
}

enum Sink<W: Write> {
    Pcap { writer: PcapWriter<W>, linktype: u16, first_name: String },
    PcapNg { writer: PcapNgWriter<W>, ids: HashMap<(usize, usize), u32> },
}

struct Source<R: Read> {
    name: String,
    reader: Option<CaptureReader<R>>,
    /// Ended (cleanly, or at salvaged damage).
    done: bool,
    head: Record,
    last_ts: u64,
    provenance: Option<Provenance>,
    report: InputReport,
}

impl<R: Read> Source<R> {
    /// Moves to the next record; false when the input is done (end, or salvaged damage).
    fn advance(&mut self, salvage: bool) -> Result<bool, MergeError> {
        let Some(reader) = self.reader.as_mut().filter(|_| !self.done) else { return Ok(false) };
        match reader.next_record(&mut self.head) {
            Ok(true) => {
                if let Some(offset) = self.provenance.as_ref().map(|p| p.ts_offset_ns).filter(|o| *o != 0) {
                    self.head.ts_ns = self.head.ts_ns.saturating_add_signed(offset);
                }
                if self.head.ts_ns < self.last_ts {
                    self.report.out_of_order += 1;
                }
                self.last_ts = self.head.ts_ns;
                Ok(true)
            }
            Ok(false) => {
                self.done = true;
                Ok(false)
            }
            Err(error) if salvage => {
                self.report.damage = Some(error);
                self.done = true;
                Ok(false)
            }
            Err(error) => Err(MergeError::Input { name: self.name.clone(), error }),
        }
    }

    fn out_interface(&self, iface: usize) -> OutInterface {
        let info = &self.reader.as_ref().expect("open reader").interfaces()[iface];
        let own = info.name.clone().unwrap_or_else(|| format!("if{iface}"));
        match &self.provenance {
            Some(p) => OutInterface {
                linktype: info.linktype,
                snaplen: info.snaplen,
                name: format!("{}/{}/{}", p.pop, p.agent, p.iface.clone().unwrap_or(own)),
                description: p.description.clone().or_else(|| info.description.clone()),
                filter: p.filter.clone().or_else(|| info.filter.clone()),
                received: p.received.or(info.received),
                dropped: p.dropped.or(info.dropped),
            },
            None => OutInterface {
                linktype: info.linktype,
                snaplen: info.snaplen,
                // An unnamed input (a stage of a larger merge) keeps its interfaces' names.
                name: if self.name.is_empty() { own } else { format!("{}/{own}", self.name) },
                description: info.description.clone(),
                filter: info.filter.clone(),
                received: info.received,
                dropped: info.dropped,
            },
        }
    }
}

/// Merges `inputs` into `out`. See the module docs for order and damage handling.
pub fn merge<R: Read, W: Write>(
    inputs: Vec<MergeInput<R>>,
    out: W,
    options: &MergeOptions,
) -> Result<(W, MergeReport), MergeError> {
    let mut sources = Vec::with_capacity(inputs.len());
    for input in inputs {
        let mut report = InputReport { name: input.name.clone(), ..Default::default() };
        let reader = match CaptureReader::open(input.reader) {
            Ok(r) => Some(r),
            Err(error) if options.salvage => {
                report.damage = Some(error);
                None
            }
            Err(error) => return Err(MergeError::Input { name: input.name, error }),
        };
        sources.push(Source {
            name: input.name,
            reader,
            done: false,
            head: Record::default(),
            last_ts: 0,
            provenance: input.provenance,
            report,
        });
    }
    let mut heap = BinaryHeap::with_capacity(sources.len());
    for (index, source) in sources.iter_mut().enumerate() {
        if source.advance(options.salvage)? {
            heap.push(Reverse((source.head.ts_ns, index)));
        }
    }

    // Interfaces known now (pcapng files may describe more later).
    let known: Vec<(usize, usize)> = sources
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..s.reader.as_ref().map_or(0, |r| r.interfaces().len())).map(move |f| (i, f)))
        .collect();
    let format = options.format.unwrap_or(OutputFormat::Pcap);
    let mut sink = match format {
        OutputFormat::Pcap => {
            let mut linktype: Option<(u16, String)> = None;
            let mut nanos = false;
            let mut snaplen = 0u32;
            for &(i, f) in &known {
                let info = &sources[i].reader.as_ref().expect("open reader").interfaces()[f];
                match &linktype {
                    None => linktype = Some((info.linktype, sources[i].name.clone())),
                    Some((lt, first_name)) if *lt != info.linktype => {
                        return Err(MergeError::LinkTypes {
                            first_name: first_name.clone(),
                            first: *lt,
                            other_name: sources[i].name.clone(),
                            other: info.linktype,
                        });
                    }
                    Some(_) => {}
                }
                nanos |= info.resolution.finer_than_micro();
                let s = if info.snaplen == 0 { MAX_RECORD } else { info.snaplen.min(MAX_RECORD) };
                snaplen = snaplen.max(s);
            }
            let (linktype, first_name) = linktype.unwrap_or((1, String::new()));
            let snaplen = if snaplen == 0 { 65535 } else { snaplen };
            Sink::Pcap { writer: PcapWriter::new(out, linktype, snaplen, nanos)?, linktype, first_name }
        }
        OutputFormat::PcapNg => {
            let mut writer = PcapNgWriter::new(out, options.comment.as_deref())?;
            let mut ids = HashMap::new();
            for &(i, f) in &known {
                ids.insert((i, f), writer.add_interface(sources[i].out_interface(f))?);
            }
            Sink::PcapNg { writer, ids }
        }
    };

    let mut report = MergeReport::default();
    while let Some(mut top) = heap.peek_mut() {
        let index = top.0.1;
        let source = &mut sources[index];
        let record = &source.head;
        match &mut sink {
            Sink::Pcap { writer, linktype, first_name } => {
                // pcapng inputs can describe interfaces late: every packet's link type must
                // be the file's.
                let other = source.reader.as_ref().map_or(*linktype, |r| r.interfaces()[record.iface].linktype);
                if other != *linktype {
                    return Err(MergeError::LinkTypes {
                        first_name: first_name.clone(),
                        first: *linktype,
                        other_name: source.name.clone(),
                        other,
                    });
                }
                if record.ts_ns / 1_000_000_000 > u64::from(u32::MAX) {
                    return Err(MergeError::Input {
                        name: source.name.clone(),
                        error: ReadError {
                            offset: record.offset,
                            message: format!(
                                "timestamp {} s is beyond what classic pcap can hold (2106); write pcapng instead",
                                record.ts_ns / 1_000_000_000
                            ),
                        },
                    });
                }
                writer.packet(record.ts_ns, record.orig_len, record.bytes())?;
            }
            Sink::PcapNg { writer, ids } => {
                let key = (index, record.iface);
                let id = match ids.get(&key) {
                    Some(id) => *id,
                    None => {
                        let id = writer.add_interface(source.out_interface(record.iface))?;
                        ids.insert(key, id);
                        id
                    }
                };
                writer.packet(id, record.ts_ns, record.orig_len, record.bytes())?;
            }
        }
        report.packets += 1;
        report.bytes += record.len as u64;
        source.report.packets += 1;
        if source.advance(options.salvage)? {
            top.0.0 = source.head.ts_ns;
        } else {
            std::collections::binary_heap::PeekMut::pop(top);
        }
    }

    let out = match sink {
        Sink::Pcap { writer, .. } => writer.finish()?,
        Sink::PcapNg { mut writer, ids } => {
            // Statistics blocks usually come at the end of an input, after its interfaces
            // were described: the counters read last are the final ones.
            for ((index, iface), id) in ids {
                let source = &sources[index];
                let Some(reader) = source.reader.as_ref() else { continue };
                let info = &reader.interfaces()[iface];
                let p = source.provenance.as_ref();
                writer.set_counters(
                    id,
                    p.and_then(|p| p.received).or(info.received),
                    p.and_then(|p| p.dropped).or(info.dropped),
                );
            }
            writer.finish()?
        }
    };
    report.inputs = sources.into_iter().map(|s| s.report).collect();
    Ok((out, report))
}
