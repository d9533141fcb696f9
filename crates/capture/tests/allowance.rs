//! A capture drawing on a shared budget ([`Allowance`]): it never writes past what it was
//! allowed, waits at its allowance while more may come, goes on when more is granted, and
//! ends with the `budget` stop reason once none is left. The source is the replay source
//! (generated frames at a fixed rate), the sink counts what it is given.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgecap_capture::session::{Allowance, Counters, Limits, LiveCapture, LiveConfig, PacketSink, StopReason};
use edgecap_capture::source::SourceFactory;
use edgecap_capture::source::replay::{Replay, ReplayConfig};

struct Count(Arc<AtomicU64>, Arc<AtomicU64>);

impl PacketSink for Count {
    fn write(&mut self, _ts_ns: u64, _orig_len: u32, data: &[u8]) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::AcqRel);
        self.1.fetch_add(data.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    fn finish(&mut self, _counters: &Counters) -> io::Result<()> {
        Ok(())
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_capture_stays_within_its_allowance_and_ends_when_the_budget_is_spent() {
    let replay = Replay::new(ReplayConfig { rate_pps: 5_000, frame_bytes: 100, ..Default::default() });
    let mut config = LiveConfig::new("sim0", "");
    let allowance = Arc::new(Allowance::new(50, u64::MAX));
    config.limits =
        Limits { time: Some(Duration::from_secs(60)), allowance: Some(allowance.clone()), ..Default::default() };
    let source = replay.open("sim0", &config.open_options()).unwrap();
    let (packets, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let live = LiveCapture::start(config, source, Box::new(Count(packets.clone(), bytes.clone()))).unwrap();

    // At its allowance it waits: no more is written while nothing is granted.
    wait_until("the first allowance to be written", || packets.load(Ordering::Acquire) == 50);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(packets.load(Ordering::Acquire), 50, "nothing past the allowance");
    assert_eq!(live.counters().stop_reason, None, "still running, waiting for more");

    // More granted: it goes on, up to the new allowance.
    allowance.grant(120, u64::MAX, false);
    wait_until("the second allowance to be written", || packets.load(Ordering::Acquire) == 120);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(packets.load(Ordering::Acquire), 120);

    // The last of the budget: it writes it and ends for the budget.
    allowance.grant(130, u64::MAX, true);
    let counters = live.wait();
    assert_eq!(counters.stop_reason, Some(StopReason::Budget));
    assert_eq!((counters.written, packets.load(Ordering::Acquire)), (130, 130));
    assert_eq!(bytes.load(Ordering::Acquire), 130 * 100);
}

#[test]
fn a_byte_allowance_is_never_passed_even_by_part_of_a_packet() {
    let replay = Replay::new(ReplayConfig { rate_pps: 5_000, frame_bytes: 100, ..Default::default() });
    let mut config = LiveConfig::new("sim1", "");
    // 10.5 packets' worth, and no more to come: 10 packets, then the budget ends it.
    let allowance = Arc::new(Allowance::new(u64::MAX, 1050));
    allowance.grant(u64::MAX, 1050, true);
    config.limits = Limits { time: Some(Duration::from_secs(60)), allowance: Some(allowance), ..Default::default() };
    let source = replay.open("sim1", &config.open_options()).unwrap();
    let (packets, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counters = LiveCapture::start(config, source, Box::new(Count(packets.clone(), bytes.clone()))).unwrap().wait();
    assert_eq!(counters.stop_reason, Some(StopReason::Budget));
    assert_eq!((packets.load(Ordering::Acquire), bytes.load(Ordering::Acquire)), (10, 1000));
}
