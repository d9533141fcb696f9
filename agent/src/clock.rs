//! The agent's clock against its coordinator's, measured continuously on the control stream
//! (NTP-style, see `ClockProbe` in agent.proto): a probe every few seconds, the sample with
//! the least round-trip delay of the last [`WINDOW`] kept, its uncertainty half that delay.
//! The estimate goes up with heartbeats, sample answers and capture reports, so every
//! capture records each PoP's offset; it is reset when the agent connects to another
//! coordinator (the offset is relative to it).
//!
//! [`AgentClock`] is the clock the agent stamps its probes with: the system clock, or (for
//! tests and simulated agents) one deliberately off by a given amount.

use std::collections::{HashMap, VecDeque};

use edgecap_proto::agent::v1 as pb;

/// Samples kept; the one with the least delay wins.
const WINDOW: usize = 16;

/// The agent's clock: the system's, shifted by `skew_ns` (0 in production).
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentClock {
    /// Added to the system clock, nanoseconds.
    pub skew_ns: i64,
}

impl AgentClock {
    /// Now, nanoseconds since the Unix epoch, on this clock.
    pub fn now_ns(&self) -> u64 {
        edgecap_common::now_ns().saturating_add_signed(self.skew_ns)
    }
}

/// One session's measurement.
#[derive(Debug, Default)]
pub(crate) struct Estimator {
    next_seq: u64,
    sent: HashMap<u64, u64>,
    samples: VecDeque<(i64, u64)>,
}

impl Estimator {
    /// A probe to send now.
    pub(crate) fn probe(&mut self, clock: AgentClock) -> pb::ClockProbe {
        self.next_seq += 1;
        let t1 = clock.now_ns();
        // Unanswered probes are forgotten after a while.
        self.sent.retain(|seq, _| seq + (WINDOW as u64) > self.next_seq);
        self.sent.insert(self.next_seq, t1);
        pb::ClockProbe { seq: self.next_seq, t1_ns: t1 }
    }

    /// Takes an echo received at `t4` (agent clock); ignores one it did not ask for.
    pub(crate) fn echo(&mut self, echo: &pb::ClockEcho, t4: u64) {
        let Some(t1) = self.sent.remove(&echo.seq).filter(|t1| *t1 == echo.t1_ns) else { return };
        let (t1, t2, t3, t4) = (t1 as i128, echo.t2_ns as i128, echo.t3_ns as i128, t4 as i128);
        let delay = (t4 - t1) - (t3 - t2);
        if delay < 0 || t3 < t2 {
            return;
        }
        let offset = ((t2 - t1) + (t3 - t4)) / 2;
        self.samples.push_back((offset as i64, delay as u64));
        while self.samples.len() > WINDOW {
            self.samples.pop_front();
        }
    }

    /// The estimate: the least-delay sample's offset, uncertainty half its delay.
    pub(crate) fn estimate(&self) -> Option<pb::ClockOffset> {
        self.samples
            .iter()
            .min_by_key(|(_, delay)| *delay)
            .map(|(offset, delay)| pb::ClockOffset { offset_ns: *offset, uncertainty_ns: delay / 2 + 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_delayed_sample_wins_and_strangers_are_ignored() {
        let mut e = Estimator::default();
        let agent = AgentClock { skew_ns: 0 };
        // Coordinator 1 s ahead: probes with 10 ms and 2 ms of round trip.
        for (delay, t) in [(10_000_000u64, 0u64), (2_000_000, 100_000_000)] {
            let p = e.probe(agent);
            let t1 = p.t1_ns;
            let t2 = t1 + 1_000_000_000 + delay / 2;
            let echo = pb::ClockEcho { seq: p.seq, t1_ns: t1, t2_ns: t2, t3_ns: t2 + t };
            // t of processing between receipt and answer is not delay.
            e.echo(&echo, t1 + delay + t);
        }
        let est = e.estimate().unwrap();
        assert!((est.offset_ns - 1_000_000_000).abs() < 1_000, "{est:?}");
        assert_eq!(est.uncertainty_ns, 1_000_001);
        e.echo(&pb::ClockEcho { seq: 99, t1_ns: 1, t2_ns: 2, t3_ns: 3 }, 4);
        assert_eq!(e.samples.len(), 2);
        assert!(Estimator::default().estimate().is_none());
    }
}
