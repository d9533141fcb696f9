//! A capture ends at its time limit and when stopped, even while its source has nothing to
//! read and waits far longer than that: the stop, or the process's deadline thread, interrupts
//! the wait. The source is an idle replay source whose read timeout is a minute.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::io;
use std::time::{Duration, Instant};

use edgecap_capture::session::{Counters, Limits, LiveCapture, LiveConfig, OnEnd, PacketSink, StopReason};
use edgecap_capture::source::SourceFactory;
use edgecap_capture::source::replay::{Replay, ReplayConfig};

struct Discard;

impl PacketSink for Discard {
    fn write(&mut self, _ts_ns: u64, _orig_len: u32, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self, _counters: &Counters) -> io::Result<()> {
        Ok(())
    }
}

/// An idle source (no packets) that waits up to a minute per read; and what its [`OnEnd`]
/// sends to.
fn idle_capture(limits: Limits) -> (LiveCapture, std::sync::mpsc::Receiver<()>) {
    let replay = Replay::new(ReplayConfig { rate_pps: 0, ..Default::default() });
    let mut config = LiveConfig::new("idle0", "");
    config.timeout_ms = 60_000;
    config.limits = limits;
    let (tx, ended) = std::sync::mpsc::sync_channel(4);
    config.on_end = Some(OnEnd::new(move || {
        let _ = tx.try_send(());
    }));
    let source = replay.open("idle0", &config.open_options()).unwrap();
    (LiveCapture::start(config, source, Box::new(Discard)).unwrap(), ended)
}

/// Waits for the capture's [`OnEnd`] (a bounded wait: a capture that does not end fails the
/// test instead of hanging it), then for the capture; and checks `OnEnd` came once.
fn ends(live: LiveCapture, ended: &std::sync::mpsc::Receiver<()>) -> Counters {
    ended.recv_timeout(ENDS_WITHIN).expect("the capture ended, and said so");
    let counters = live.wait();
    assert!(ended.try_recv().is_err(), "its end is told once");
    counters
}

/// Far below the source's minute: the end came through a wake, not a read timeout.
const ENDS_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn an_idle_capture_ends_at_its_time_limit() {
    let started = Instant::now();
    let (live, ended) = idle_capture(Limits { time: Some(Duration::from_millis(300)), ..Default::default() });
    let counters = ends(live, &ended);
    assert_eq!(counters.stop_reason, Some(StopReason::TimeLimit));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "not before its time limit: {took:?}");
    assert!(took < ENDS_WITHIN, "{took:?}");
}

#[test]
fn an_idle_capture_without_a_time_limit_ends_when_stopped() {
    let (live, ended) = idle_capture(Limits::default());
    let stop = live.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        stop.stop();
    });
    let started = Instant::now();
    let counters = ends(live, &ended);
    stopper.join().unwrap();
    assert_eq!(counters.stop_reason, Some(StopReason::Stopped));
    assert!(started.elapsed() < ENDS_WITHIN, "{:?}", started.elapsed());
}

#[test]
fn a_time_limit_too_far_to_reach_is_no_limit_not_a_panic() {
    // A `time_limit_ms` near u64::MAX in a start request reaches here as such a duration.
    let (live, ended) = idle_capture(Limits { time: Some(Duration::MAX), ..Default::default() });
    live.stop();
    let counters = ends(live, &ended);
    assert_eq!(counters.stop_reason, Some(StopReason::Stopped));
}
