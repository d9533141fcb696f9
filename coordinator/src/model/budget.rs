//! A full capture's limits as a budget shared by its PoPs (stored under `budget/{capture}`):
//! what each agent may write so far, and how more is granted. The protocol around it is in
//! `full/budget.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::CaptureRecord;

/// The budget of one capture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Budget {
    /// The capture's limits (0: not limited).
    pub packets: u64,
    pub bytes: u64,
    /// The size of one portion.
    pub portion: (u64, u64),
    /// What each agent may write so far: (packets, bytes).
    pub granted: BTreeMap<String, (u64, u64)>,
    /// How many times each agent has asked for more: a busy PoP's grants grow (1, 2, 4 ...
    /// up to 32 portions), each at most a quarter of what is left once past the first, so
    /// a fast PoP is not held to one portion per round trip and others keep some.
    #[serde(default)]
    pub asks: BTreeMap<String, u32>,
}

impl Budget {
    /// The budget of a capture over `agents`, each granted its first portion; `None` when
    /// there is nothing to share: no limit but time, or one PoP (whose own limits, exact, are
    /// then the merged file's, and its `stop_reason` names the limit as before).
    pub(crate) fn new(record: &CaptureRecord, agents: &[String]) -> Option<Self> {
        let (packets, bytes) = (record.packet_limit.unwrap_or(0), record.byte_limit.unwrap_or(0));
        if (packets == 0 && bytes == 0) || agents.len() < 2 {
            return None;
        }
        let n = agents.len() as u64;
        let portion = |limit: u64| if limit == 0 { 0 } else { (limit / (4 * n)).max(1) };
        let portion = (portion(packets), portion(bytes));
        let mut budget = Budget { packets, bytes, portion, granted: BTreeMap::new(), asks: BTreeMap::new() };
        for agent in agents {
            let first = (budget.take(portion.0, packets, |g| g.0), budget.take(portion.1, bytes, |g| g.1));
            budget.granted.insert(agent.clone(), first);
        }
        Some(budget)
    }

    /// Up to `want` of what is left of `limit` (0 when the limit does not apply).
    fn take(&self, want: u64, limit: u64, part: impl Fn(&(u64, u64)) -> u64) -> u64 {
        if limit == 0 {
            return 0;
        }
        let used: u64 = self.granted.values().map(part).sum();
        want.min(limit.saturating_sub(used))
    }

    /// An allowance as agents are told it: `u64::MAX` for a limit that does not apply.
    pub(crate) fn limited(&self, granted: (u64, u64)) -> (u64, u64) {
        (if self.packets == 0 { u64::MAX } else { granted.0 }, if self.bytes == 0 { u64::MAX } else { granted.1 })
    }

    /// `agent`'s allowance so far, as agents are told it.
    pub(crate) fn allowance(&self, agent: &str) -> (u64, u64) {
        self.limited(self.granted.get(agent).copied().unwrap_or_default())
    }

    /// Grants `agent` another portion if any is left; its allowance (`u64::MAX` for a limit
    /// that does not apply) and whether the budget is now exhausted (of any limit that
    /// applies).
    pub(crate) fn grant(&mut self, agent: &str) -> ((u64, u64), bool) {
        let asks = self.asks.entry(agent.to_string()).or_default();
        let factor = 1u64 << (*asks).min(5);
        *asks += 1;
        let want = |portion: u64, limit: u64, part: fn(&(u64, u64)) -> u64| {
            let left = limit.saturating_sub(self.granted.values().map(part).sum());
            portion.saturating_mul(factor).min(portion.max(left / 4))
        };
        let want = (want(self.portion.0, self.packets, |g| g.0), want(self.portion.1, self.bytes, |g| g.1));
        let more = (self.take(want.0, self.packets, |g| g.0), self.take(want.1, self.bytes, |g| g.1));
        let mine = self.granted.entry(agent.to_string()).or_default();
        mine.0 += more.0;
        mine.1 += more.1;
        let mine = *mine;
        let allowance = self.limited(mine);
        let left = |limit: u64, part: fn(&(u64, u64)) -> u64| {
            limit == 0 || self.granted.values().map(part).sum::<u64>() < limit
        };
        let exhausted = !(left(self.packets, |g| g.0) && left(self.bytes, |g| g.1));
        (allowance, exhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(packets: Option<u64>, bytes: Option<u64>) -> CaptureRecord {
        let mut r = CaptureRecord::from_request(
            "acct",
            crate::model::CaptureRequest::for_test(crate::model::CaptureType::Full),
            time::OffsetDateTime::now_utc(),
        );
        r.packet_limit = packets;
        r.byte_limit = bytes;
        r
    }

    #[test]
    fn grants_never_pass_the_limits_and_busy_pops_get_more() {
        let agents: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut b = Budget::new(&record(Some(1000), None), &agents).unwrap();
        assert_eq!(b.portion, (83, 0));
        assert_eq!(b.granted["a"], (83, 0));
        // "a" is busy: it keeps asking; the others hold their first portions.
        let mut last = ((0, 0), false);
        for _ in 0..100 {
            last = b.grant("a");
            if last.1 {
                break;
            }
        }
        assert!(last.1, "exhausted");
        let total: u64 = b.granted.values().map(|g| g.0).sum();
        assert_eq!(total, 1000, "all of it granted, none past it");
        assert_eq!(b.granted["a"].0, 1000 - 2 * 83);
        // Once exhausted, more asking changes nothing.
        assert_eq!(b.grant("b"), ((83, u64::MAX), true));
        // A PoP that keeps asking gets more each time: 83, then 166, then 332 (under a
        // quarter of what is left), ...
        let mut g = Budget::new(&record(Some(1000), None), &agents).unwrap();
        assert_eq!(g.grant("a").0.0, 83 + 83);
        assert_eq!(g.grant("a").0.0, 83 + 83 + 166);
        let left = 1000 - (83 + 83 + 166) - 2 * 83;
        assert_eq!(g.grant("a").0.0, 83 + 83 + 166 + (332u64).min(left / 4));
        assert!(Budget::new(&record(None, None), &agents).is_none());
        assert!(Budget::new(&record(Some(10), None), &agents[..1]).is_none(), "one PoP: its own limits");
        let mut bytes = Budget::new(&record(None, Some(10)), &agents).unwrap();
        assert_eq!(bytes.portion, (0, 1));
        assert_eq!(bytes.grant("c").0, (u64::MAX, 2));
        // More PoPs than packets: some start with nothing, and ask.
        let many: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        let mut few = Budget::new(&record(Some(5), None), &many).unwrap();
        assert_eq!(few.allowance("7"), (0, u64::MAX));
        assert_eq!(few.granted.values().map(|g| g.0).sum::<u64>(), 5);
        assert_eq!(few.grant("7"), ((0, u64::MAX), true));
    }
}
