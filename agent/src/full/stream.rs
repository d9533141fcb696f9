//! Live viewers of a running full capture (`GET .../pcaps/{id}/stream` at the coordinator):
//! while the coordinator has turned the copy on (StreamControl), the capture's writer thread
//! hands each packet it writes to a [`StreamTap`] as well, without ever waiting: the tap's
//! queue is bounded (packets and bytes) and a packet that does not fit is dropped and
//! counted. [`Jobs::stream_loop`] drains the queues into StreamPackets messages when the
//! control stream has room (else those packets are dropped and counted too). It looks only
//! at the taps turned on ([`Streaming`]), and sleeps while there are none. The shards, and
//! so the delivered file, are written before the copy and never depend on it.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_capture::records::{Framing, Records};
use edgecap_capture::session::{Counters, PacketSink};
use edgecap_capture::shard::ShardWriter;
use edgecap_common::lock;
use edgecap_proto::agent::v1 as pb;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Jobs;

/// Packets and bytes a tap holds at most before dropping.
const QUEUE_PACKETS: usize = 8192;
const QUEUE_BYTES: u64 = 8 << 20;
/// Packet data per StreamPackets message at most (well under the 4 MiB message bound).
const MESSAGE_BYTES: usize = 1 << 20;
/// How long one "on" lasts unless repeated.
const ON_FOR: Duration = Duration::from_secs(6);
/// How often the queues are drained.
const DRAIN_EVERY: Duration = Duration::from_millis(50);

/// One capture's copy of its packets for live viewers.
pub(crate) struct StreamTap {
    /// Copy until this time (ns since the epoch; 0: off). The coordinator repeats "on" every
    /// 2 s while anyone watches, so a lost "off" (its replica gone) ends the copy by itself.
    on_until_ns: AtomicU64,
    /// Grown only while copying: a channel of QUEUE_PACKETS slots made with every capture
    /// (~450 KiB written at its start) had been a fifth of an agent's work starting one.
    queue: Mutex<Queue>,
    dropped: AtomicU64,
    interface: String,
    linktype: u32,
    snaplen: u32,
}

impl StreamTap {
    pub(crate) fn new(interface: &str, linktype: u32, snaplen: u32) -> Arc<Self> {
        Arc::new(Self {
            on_until_ns: AtomicU64::new(0),
            queue: Mutex::default(),
            dropped: AtomicU64::new(0),
            interface: interface.to_string(),
            linktype,
            snaplen,
        })
    }

    /// Turns the copy on (for [`ON_FOR`]) or off.
    pub(crate) fn set(&self, on: bool) {
        let until = if on { edgecap_common::now_ns() + ON_FOR.as_nanos() as u64 } else { 0 };
        self.on_until_ns.store(until, Ordering::Release);
    }

    /// Whether the copy is on or packets are still queued.
    fn live(&self) -> bool {
        let until = self.on_until_ns.load(Ordering::Acquire);
        (until != 0 && edgecap_common::now_ns() <= until) || !lock(&self.queue).packets.is_empty()
    }

    /// Packets not copied so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Called by the writer thread for each packet written: never blocks.
    fn offer(&self, ts_ns: u64, orig_len: u32, data: &[u8]) {
        let until = self.on_until_ns.load(Ordering::Acquire);
        if until == 0 || edgecap_common::now_ns() > until {
            return;
        }
        let len = data.len() as u64;
        let mut queue = lock(&self.queue);
        if queue.packets.len() >= QUEUE_PACKETS || queue.bytes + len > QUEUE_BYTES {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes += len;
        queue.packets.push_back(pb::StreamPacket { ts_ns, orig_len, data: data.to_vec() });
    }

    /// Takes up to [`MESSAGE_BYTES`] of queued packets.
    fn take(&self) -> Vec<pb::StreamPacket> {
        let mut queue = lock(&self.queue);
        let (mut out, mut bytes) = (Vec::new(), 0);
        while bytes < MESSAGE_BYTES {
            let Some(packet) = queue.packets.pop_front() else { break };
            bytes += packet.data.len();
            queue.bytes -= packet.data.len() as u64;
            out.push(packet);
        }
        // Its memory is kept while the capture runs (at most QUEUE_PACKETS slots): a busy
        // stream would otherwise grow it again at every drain.
        out
    }
}

/// The taps turned on and not yet drained after they went off: all the drain loop looks at.
/// It had gone through every capture kept (finished ones for an hour) 20 times a second,
/// in every agent, whether anyone watched or not.
#[derive(Default)]
pub(super) struct Streaming {
    taps: Mutex<Vec<(String, Arc<StreamTap>)>>,
    /// Woken when a tap is turned on.
    wake: tokio::sync::Notify,
}

/// Packets copied and not yet sent, and their bytes.
#[derive(Default)]
struct Queue {
    packets: VecDeque<pb::StreamPacket>,
    bytes: u64,
}

/// The capture's sink: the shards first, then the copy.
pub(super) struct TeeSink {
    inner: ShardWriter,
    tap: Arc<StreamTap>,
    /// Notified when `inner` has closed a shard (its manifest written): the upload loop.
    shard_closed: Arc<tokio::sync::Notify>,
    /// Shards closed so far, as last seen.
    closed: usize,
}

impl TeeSink {
    pub(super) fn new(inner: ShardWriter, tap: Arc<StreamTap>, shard_closed: Arc<tokio::sync::Notify>) -> Self {
        Self { inner, tap, shard_closed, closed: 0 }
    }

    /// After a write: a shard closed by it (a rotation) wakes the upload loop. (At the end,
    /// [`Jobs::end_job`] wakes it.)
    fn tell_if_closed(&mut self) {
        let closed = self.inner.completed().len();
        if closed != self.closed {
            self.closed = closed;
            self.shard_closed.notify_one();
        }
    }
}

impl PacketSink for TeeSink {
    fn write(&mut self, ts_ns: u64, orig_len: u32, data: &[u8]) -> io::Result<()> {
        let written = self.inner.write(ts_ns, orig_len, data);
        self.tell_if_closed();
        written?;
        self.tap.offer(ts_ns, orig_len, data);
        Ok(())
    }

    fn finish(&mut self, counters: &Counters) -> io::Result<()> {
        self.inner.finish(counters)
    }

    fn framing(&self) -> Framing {
        self.inner.framing()
    }

    fn write_records(&mut self, records: Records<'_>) -> io::Result<()> {
        let written = self.inner.write_records(records.clone());
        self.tell_if_closed();
        written?;
        for (ts_ns, orig_len, data) in records.iter() {
            self.tap.offer(ts_ns, orig_len, data);
        }
        Ok(())
    }
}

impl Jobs {
    /// Turns the copy of a capture's packets on or off (StreamControl).
    pub(crate) fn set_streaming(&self, capture_id: &str, on: bool) {
        if let Some(tap) = lock(&self.jobs).get(capture_id).and_then(|j| j.tap.clone()) {
            tracing::info!(capture = %capture_id, on, "live stream");
            tap.set(on);
            if on {
                let mut taps = lock(&self.streaming.taps);
                if !taps.iter().any(|(id, _)| id == capture_id) {
                    taps.push((capture_id.to_string(), tap));
                }
                drop(taps);
                self.streaming.wake.notify_one();
            }
        }
    }

    /// Sends the queued copies while the control stream is up; a message that finds the
    /// stream's queue more than half full is not sent (its packets are counted as dropped),
    /// so reports, grants and answers always find room.
    pub(crate) async fn stream_loop(self: Arc<Self>, out: mpsc::Sender<pb::AgentMessage>, cancel: CancellationToken) {
        while !cancel.is_cancelled() && !out.is_closed() {
            // A tap that went off (or whose "on" ran out) is dropped once drained.
            let taps = {
                let mut taps = lock(&self.streaming.taps);
                taps.retain(|(_, tap)| tap.live());
                taps.clone()
            };
            if taps.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = out.closed() => return,
                    _ = self.streaming.wake.notified() => continue,
                }
            }
            for (capture_id, tap) in taps {
                loop {
                    let packets = tap.take();
                    if packets.is_empty() {
                        break;
                    }
                    if out.capacity() * 2 < out.max_capacity() {
                        tap.dropped.fetch_add(packets.len() as u64, Ordering::Relaxed);
                        continue;
                    }
                    let msg = pb::StreamPackets {
                        capture_id: capture_id.clone(),
                        interface: tap.interface.clone(),
                        linktype: tap.linktype,
                        snaplen: tap.snaplen,
                        packets,
                        dropped: tap.dropped(),
                    };
                    let message = pb::AgentMessage { msg: Some(pb::agent_message::Msg::StreamPackets(msg)) };
                    if out.send(message).await.is_err() {
                        return;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(DRAIN_EVERY) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_bounded_and_never_blocks() {
        let tap = StreamTap::new("eth0", 1, 65535);
        tap.offer(1, 10, &[0; 10]);
        assert!(tap.take().is_empty(), "off: nothing copied");
        tap.set(true);
        for i in 0..(QUEUE_PACKETS as u64 + 10) {
            tap.offer(i, 10, &[0; 10]);
        }
        assert_eq!(tap.dropped(), 10, "the packets past the queue are dropped and counted");
        let first = tap.take();
        assert_eq!(first.len(), QUEUE_PACKETS);
        assert_eq!(first[0].ts_ns, 0);
        // Bytes bound: big packets stop at 8 MiB queued.
        let big = vec![0u8; 1 << 20];
        for i in 0..10 {
            tap.offer(i, big.len() as u32, &big);
        }
        assert_eq!(tap.dropped(), 12);
        assert_eq!(tap.take().len(), 1, "1 MiB per message");
    }

    #[test]
    fn a_tap_is_looked_at_while_on_or_holding_packets() {
        let tap = StreamTap::new("eth0", 1, 65535);
        assert!(!tap.live(), "never turned on");
        tap.set(true);
        assert!(tap.live());
        tap.offer(1, 10, &[0; 10]);
        tap.set(false);
        assert!(tap.live(), "off, one packet still queued");
        assert_eq!(tap.take().len(), 1);
        assert!(!tap.live(), "off and drained");
        tap.on_until_ns.store(1, Ordering::Release);
        assert!(!tap.live(), "an on that ran out");
    }

    #[test]
    fn a_shard_closed_by_a_rotation_wakes_the_upload_loop() {
        use edgecap_capture::shard::{ShardChecksum, ShardConfig, ShardFormat, ShardIdentity};
        use std::future::Future as _;
        let dir = tempfile::tempdir().unwrap();
        let config = ShardConfig {
            path: dir.path().join("shard.pcap"),
            format: ShardFormat::Pcap,
            rotate_bytes: Some(1000),
            rotate_every: None,
            checksum: ShardChecksum::Crc32c,
        };
        let closed = Arc::new(tokio::sync::Notify::new());
        let mut sink = TeeSink::new(
            ShardWriter::new(config, ShardIdentity::default()),
            StreamTap::new("eth0", 1, 65535),
            closed.clone(),
        );
        // As the writer thread writes: runs of packets framed as the shard's records.
        let write = |sink: &mut TeeSink, ts_ns: u64| {
            let mut batch = edgecap_capture::records::Batch::with_capacity(sink.framing(), 1);
            batch.push(ts_ns, 400, &[0; 400]);
            sink.write_records(batch.records(0..1)).unwrap();
        };
        write(&mut sink, 1);
        write(&mut sink, 2);
        // Whether a wake is waiting: a notified() that is ready at its first poll.
        let woken = || {
            let waiting = std::pin::pin!(closed.notified());
            waiting.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())).is_ready()
        };
        assert!(!woken(), "nothing closed yet: no wake");
        // The third would take the shard past 1000 bytes: the first is closed before it.
        write(&mut sink, 3);
        assert!(woken(), "a closed shard wakes the loop");
        assert!(!woken(), "once");
        assert!(dir.path().join("shard-000001.pcap.json").is_file(), "its manifest is there to find");
    }
}
