//! Live viewers of a running full capture (`GET .../pcaps/{id}/stream`, extension): pcapng
//! over HTTP while the capture runs, one interface per PoP (`pop/agent/interface`), merged
//! across PoPs in timestamp order with a reordering window of [`WINDOW`].
//!
//! The replica serving a viewer asks the agents of the capture connected to it to copy their
//! packets up (StreamControl, repeated every [`CONTROL_EVERY`] while anyone watches, off when
//! the last viewer leaves); agents copy without ever slowing the capture (agent/src/full/
//! stream.rs) and count what they could not send. Here each viewer has its own bounded queue:
//! a slow or stalled viewer loses batches (counted), never delays the others, the agents or
//! the capture. A packet older than one already sent (later than the window) is dropped and
//! counted. At the end, each interface's Statistics Block carries everything dropped for
//! that viewer (`isb_ifdrop`: the agent's drops, this viewer's queue and late packets); the
//! agents' own drops are also in the capture's per-PoP results (`stream_dropped`).
//!
//! The stream ends when the capture stops running (after one more window for packets on
//! their way). Agents connected to another replica are not seen by this one's viewers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgecap_common::lock;
use edgecap_merge::write::{OutInterface, PcapNgWriter};
use edgecap_proto::agent::v1 as pb;
use tokio::sync::mpsc;

use super::FullCaptures;
use crate::model::{CaptureRecord, CaptureStatus};

/// How long a packet is held for packets of other PoPs with earlier timestamps.
pub(crate) const WINDOW: Duration = Duration::from_millis(1000);
/// How often the agents are told (again) to copy their packets up, and the capture's status
/// is read.
const CONTROL_EVERY: Duration = Duration::from_secs(2);
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// Batches a viewer's queue holds (each at most 1 MiB of packets).
const VIEWER_BATCHES: usize = 64;

/// One agent's packets as it sent them.
pub(crate) struct Batch {
    pop: String,
    agent: String,
    packets: pb::StreamPackets,
}

struct Viewer {
    id: u64,
    tx: mpsc::Sender<Arc<Batch>>,
    /// Packets this viewer's queue could not take, per `pop/agent/interface`.
    lost: Arc<Mutex<HashMap<String, u64>>>,
}

/// Viewers of one capture through one replica at most.
pub(crate) const MAX_VIEWERS: usize = 8;

/// The viewers of one capture, and the agents whose packets they take.
#[derive(Default)]
struct Watched {
    agents: std::collections::HashSet<String>,
    viewers: Vec<Viewer>,
}

/// The viewers of every capture watched through this replica.
#[derive(Default)]
pub(crate) struct Streams {
    viewers: Mutex<HashMap<String, Watched>>,
    next: AtomicU64,
}

fn key(pop: &str, agent: &str, interface: &str) -> String {
    format!("{pop}/{agent}/{interface}")
}

impl FullCaptures {
    /// Hands an agent's packets to the viewers of its capture (none: they are dropped; an
    /// agent not in that capture: ignored).
    pub(crate) fn publish_stream(&self, pop: &str, agent: &str, packets: pb::StreamPackets) {
        let viewers = lock(&self.streams.viewers);
        let Some(watched) = viewers.get(&packets.capture_id) else { return };
        if !watched.agents.contains(agent) {
            return;
        }
        let list = &watched.viewers;
        let count = packets.packets.len() as u64;
        let batch = Arc::new(Batch { pop: pop.into(), agent: agent.into(), packets });
        for viewer in list {
            if viewer.tx.try_send(batch.clone()).is_err() {
                *lock(&viewer.lost).entry(key(pop, agent, &batch.packets.interface)).or_default() += count;
            }
        }
    }

    /// Starts a viewer of a running full capture: the pcapng stream, chunk by chunk; `None`
    /// when it already has [`MAX_VIEWERS`] here.
    pub(crate) fn watch(self: &Arc<Self>, record: &CaptureRecord) -> Option<LiveStream> {
        let (tx, rx) = mpsc::channel(VIEWER_BATCHES);
        let id = self.streams.next.fetch_add(1, Ordering::Relaxed);
        let lost = Arc::new(Mutex::new(HashMap::new()));
        {
            let mut viewers = lock(&self.streams.viewers);
            let watched = viewers.entry(record.id.clone()).or_default();
            if watched.viewers.len() >= MAX_VIEWERS {
                return None;
            }
            watched.agents = record.pops.iter().map(|p| p.agent_id.clone()).collect();
            watched.viewers.push(Viewer { id, tx, lost: lost.clone() });
        }
        let comment = format!("edgecap live stream of capture {}", record.id);
        Some(LiveStream {
            full: self.clone(),
            account: record.account_id.clone(),
            capture: record.id.clone(),
            agents: record.pops.iter().map(|p| p.agent_id.clone()).collect(),
            viewer: id,
            rx,
            lost,
            held: BinaryHeap::new(),
            seq: 0,
            writer: PcapNgWriter::new(Vec::new(), Some(&comment)).ok(),
            interfaces: HashMap::new(),
            agent_dropped: HashMap::new(),
            late: HashMap::new(),
            last_ts: 0,
            clocks: record
                .pops
                .iter()
                .filter_map(|p| Some((p.agent_id.clone(), (p.clock_offset_us?, p.clock_uncertainty_us?))))
                .collect(),
            arrivals: std::collections::VecDeque::new(),
            ending: None,
            next_control: Instant::now(),
            next_status: Instant::now() + STATUS_EVERY,
        })
    }

    fn leave(&self, capture: &str, viewer: u64, agents: &[String]) {
        let mut viewers = lock(&self.streams.viewers);
        let Some(watched) = viewers.get_mut(capture) else { return };
        watched.viewers.retain(|v| v.id != viewer);
        if watched.viewers.is_empty() {
            viewers.remove(capture);
            drop(viewers);
            for agent in agents {
                self.registry.try_send(agent, control(capture, false));
            }
        }
    }
}

fn control(capture: &str, on: bool) -> pb::CoordinatorMessage {
    pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::StreamControl(pb::StreamControl {
            capture_id: capture.to_string(),
            on,
        })),
    }
}

struct Held {
    ts_ns: u64,
    seq: u64,
    interface: u32,
    key: String,
    packet: pb::StreamPacket,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.ts_ns, self.seq) == (other.ts_ns, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ts_ns, self.seq).cmp(&(other.ts_ns, other.seq))
    }
}

/// One viewer's stream; leaves the capture's viewers when dropped (the client went away, or
/// the stream ended).
pub(crate) struct LiveStream {
    full: Arc<FullCaptures>,
    account: String,
    capture: String,
    agents: Vec<String>,
    viewer: u64,
    rx: mpsc::Receiver<Arc<Batch>>,
    lost: Arc<Mutex<HashMap<String, u64>>>,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    /// `None` once finished.
    writer: Option<PcapNgWriter<Vec<u8>>>,
    interfaces: HashMap<String, u32>,
    /// Per interface: the agent's own count of packets it could not copy up, at this
    /// viewer's first copy and now.
    agent_dropped: HashMap<String, (u64, u64)>,
    /// Per interface: packets that came later than the window.
    late: HashMap<String, u64>,
    last_ts: u64,
    /// Per agent: its clock offset and uncertainty (µs) when the capture was created.
    clocks: HashMap<String, (i64, u64)>,
    /// When each held packet arrived, oldest first: a packet leaves after [`WINDOW`] whatever
    /// its timestamp (the earliest-stamped held packet goes out in its place), so what is held
    /// stays bounded by the window even when one PoP's stamps lag the others'.
    arrivals: std::collections::VecDeque<Instant>,
    /// When the capture was seen to have stopped running: the stream ends a window later.
    ending: Option<Instant>,
    next_control: Instant,
    next_status: Instant,
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.full.leave(&self.capture, self.viewer, &self.agents);
    }
}

impl LiveStream {
    /// The next bytes of the stream; `None` once it has ended.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let writer = self.writer.as_mut()?;
            let now = Instant::now();
            if now >= self.next_control {
                self.next_control = now + CONTROL_EVERY;
                // Without waiting: an agent whose queue is full gets it at the next round.
                for agent in &self.agents {
                    self.full.registry.try_send(agent, control(&self.capture, true));
                }
            }
            if now >= self.next_status && self.ending.is_none() {
                self.next_status = now + STATUS_EVERY;
                let record = self.full.repo.get_capture(&self.account, &self.capture).await;
                let running = match record {
                    Ok(Some(r)) => matches!(r.status, CaptureStatus::Pending | CaptureStatus::Running),
                    Ok(None) => false,
                    Err(_) => true, // the state store is down: keep streaming, ask again later
                };
                if !running {
                    self.ending = Some(now + WINDOW + STATUS_EVERY);
                }
            }
            let end = self.ending.is_some_and(|at| now >= at);
            // For each packet held long enough, the earliest-stamped one (all of it at the end).
            while let Some(arrived) = self.arrivals.front() {
                if !end && *arrived + WINDOW > now {
                    break;
                }
                self.arrivals.pop_front();
                let Some(Reverse(h)) = self.held.pop() else { break };
                if h.ts_ns < self.last_ts {
                    *self.late.entry(h.key).or_default() += 1;
                    continue;
                }
                self.last_ts = h.ts_ns;
                let p = &h.packet;
                if writer.packet(h.interface, p.ts_ns, p.orig_len, &p.data).is_err() {
                    return None;
                }
            }
            if end {
                return self.finish();
            }
            let ready = std::mem::take(writer.get_mut());
            if !ready.is_empty() {
                return Some(Bytes::from(ready));
            }
            tokio::select! {
                batch = self.rx.recv() => match batch {
                    Some(batch) => self.absorb(&batch),
                    None => return None,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    fn absorb(&mut self, batch: &Batch) {
        let Some(writer) = self.writer.as_mut() else { return };
        let msg = &batch.packets;
        let name = key(&batch.pop, &batch.agent, &msg.interface);
        let interface = match self.interfaces.get(&name) {
            Some(id) => *id,
            None => {
                let clock = self.clocks.get(&batch.agent).map(|(offset, uncertainty)| {
                    format!("; clock offset {offset} us (coordinator minus PoP) +/- {uncertainty} us")
                });
                let description = format!("PoP {}, agent {}{}", batch.pop, batch.agent, clock.unwrap_or_default());
                let iface = OutInterface {
                    linktype: u16::try_from(msg.linktype).unwrap_or(1),
                    snaplen: msg.snaplen,
                    name: name.clone(),
                    description: Some(description),
                    ..Default::default()
                };
                let Ok(id) = writer.add_interface(iface) else { return };
                self.interfaces.insert(name.clone(), id);
                id
            }
        };
        // The agent's count is since its capture started: this viewer's share is what it
        // grew by since the viewer's first copy of that interface (the first batch's own
        // count is taken as the start).
        let (first, latest) = self.agent_dropped.entry(name.clone()).or_insert((msg.dropped, msg.dropped));
        *latest = (*latest).max(msg.dropped).max(*first);
        let arrived = Instant::now();
        // A packet stamped further ahead than the window (a PoP whose clock runs ahead, or a
        // broken one) would hold back every other PoP's packets as late: dropped, counted.
        let ahead = edgecap_common::now_ns() + 10 * WINDOW.as_nanos() as u64;
        for packet in &msg.packets {
            if packet.ts_ns > ahead {
                *self.late.entry(name.clone()).or_default() += 1;
                continue;
            }
            self.arrivals.push_back(arrived);
            self.seq += 1;
            self.held.push(Reverse(Held {
                ts_ns: packet.ts_ns,
                seq: self.seq,
                interface,
                key: name.clone(),
                packet: packet.clone(),
            }));
        }
    }

    /// The last bytes: each interface's drops, then the end of the stream.
    fn finish(&mut self) -> Option<Bytes> {
        let mut writer = self.writer.take()?;
        let lost = lock(&self.lost).clone();
        for (name, id) in &self.interfaces {
            let dropped = self.agent_dropped.get(name).map_or(0, |(first, latest)| latest - first)
                + lost.get(name).copied().unwrap_or(0)
                + self.late.get(name).copied().unwrap_or(0);
            writer.set_counters(*id, None, Some(dropped));
        }
        let out = writer.finish().ok()?;
        tracing::info!(capture = %self.capture, interfaces = self.interfaces.len(), "live stream ended");
        Some(Bytes::from(out))
    }
}
