//! Time limits of every live capture in the process, kept by one thread.
//!
//! A capture's source waits for packets up to its timeout (a quiet one up to a second), so a
//! time limit cannot wait for the next read: something must end the capture at its deadline
//! and wake its source. Each capture had a thread of its own for that, sleeping until its
//! deadline or its stop; an agent starting captures at 300 simulated PoPs created 300 such
//! threads in a burst. Here one thread, started by the first capture with a time limit and
//! parked on a condition variable while there is nothing to do, keeps the deadlines of all.
//! A capture's entry goes when the capture ends ([`Entry`] dropped) or its deadline passes.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Instant;

/// What is done at a deadline (a capture ended with its time limit, its source woken). It
/// runs on the deadline thread and must not block (a panic is caught and logged).
pub(crate) trait Expire: Send + Sync {
    fn expire(&self);
}

#[derive(Default)]
struct Table {
    /// By deadline, then by a sequence number (two captures may share a deadline).
    entries: BTreeMap<(Instant, u64), Weak<dyn Expire>>,
    next: u64,
}

struct Deadlines {
    table: Mutex<Table>,
    /// Notified when an entry earlier than every other one is added.
    changed: Condvar,
}

/// A deadline being kept; dropping it takes it back (the capture ended first).
pub(crate) struct Entry {
    key: (Instant, u64),
    deadlines: Arc<Deadlines>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        edgecap_common::lock(&self.deadlines.table).entries.remove(&self.key);
    }
}

/// The process's table, once its thread has started (an error starting it is returned to
/// that caller, not kept: the next one tries again).
static DEADLINES: Mutex<Option<Arc<Deadlines>>> = Mutex::new(None);

/// Calls `target.expire()` at `at`, unless `target` is gone or the returned entry dropped by
/// then. The first call starts the process's deadline thread; an error is its spawn's.
pub(crate) fn at(at: Instant, target: Weak<dyn Expire>) -> std::io::Result<Entry> {
    let deadlines = {
        let mut process = edgecap_common::lock(&DEADLINES);
        match process.as_ref() {
            Some(d) => d.clone(),
            None => process.insert(Deadlines::start()?).clone(),
        }
    };
    Ok(deadlines.add(at, target))
}

impl Deadlines {
    /// A table and its thread (the process has one, [`DEADLINES`]; tests their own).
    fn start() -> std::io::Result<Arc<Self>> {
        let d = Arc::new(Deadlines { table: Mutex::new(Table::default()), changed: Condvar::new() });
        let run = d.clone();
        std::thread::Builder::new().name("capture-deadlines".into()).spawn(move || run.run())?;
        Ok(d)
    }

    fn add(self: &Arc<Self>, at: Instant, target: Weak<dyn Expire>) -> Entry {
        let mut table = edgecap_common::lock(&self.table);
        let key = (at, table.next);
        table.next += 1;
        let first = table.entries.first_key_value().is_none_or(|(k, _)| key < *k);
        table.entries.insert(key, target);
        drop(table);
        if first {
            self.changed.notify_one();
        }
        Entry { key, deadlines: self.clone() }
    }

    /// The thread: sleeps until the earliest deadline (or an earlier one is added), then
    /// expires every entry that is due, outside the lock.
    fn run(&self) {
        let mut table = edgecap_common::lock(&self.table);
        loop {
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(entry) = table.entries.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                due.push(entry.remove());
            }
            if !due.is_empty() {
                drop(table);
                for target in due.iter().filter_map(Weak::upgrade) {
                    // One capture's bug must not end every other capture's time limits.
                    let expired = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target.expire()));
                    if expired.is_err() {
                        tracing::error!("a capture's time limit could not be applied (panic)");
                    }
                }
                table = edgecap_common::lock(&self.table);
                continue;
            }
            table = match table.entries.first_key_value().map(|(k, _)| k.0) {
                Some(next) => {
                    self.changed
                        .wait_timeout(table, next.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(table).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Count(AtomicUsize, Mutex<Option<Instant>>);

    impl Expire for Count {
        fn expire(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            *edgecap_common::lock(&self.1) = Some(Instant::now());
        }
    }

    fn count() -> Arc<Count> {
        Arc::new(Count(AtomicUsize::new(0), Mutex::new(None)))
    }

    #[test]
    fn deadlines_expire_in_order_once_and_not_when_taken_back() {
        // A table of its own: no other test's entries wake its thread.
        let deadlines = Deadlines::start().unwrap();
        let at = |when, target: &Arc<Count>| deadlines.add(when, Arc::downgrade(target) as Weak<dyn Expire>);
        let start = Instant::now();
        let (late, early, taken_back, gone) = (count(), count(), count(), count());
        // The late one first, and the thread asleep on it: the earlier entry must wake it.
        let _late = at(start + Duration::from_secs(2), &late);
        std::thread::sleep(Duration::from_millis(100));
        let _early = at(start + Duration::from_millis(200), &early);
        let back = at(start + Duration::from_millis(250), &taken_back);
        let _gone = at(start + Duration::from_millis(250), &gone);
        drop(back);
        let gone_weak = Arc::downgrade(&gone);
        drop(gone);
        let give_up = start + Duration::from_secs(30);
        while late.0.load(Ordering::SeqCst) == 0 && Instant::now() < give_up {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(early.0.load(Ordering::SeqCst), 1);
        assert_eq!(late.0.load(Ordering::SeqCst), 1);
        assert_eq!(taken_back.0.load(Ordering::SeqCst), 0, "an entry dropped before its deadline is not kept");
        assert!(gone_weak.upgrade().is_none());
        let (e, l) = (edgecap_common::lock(&early.1).unwrap(), edgecap_common::lock(&late.1).unwrap());
        assert!(e >= start + Duration::from_millis(200) && l >= start + Duration::from_secs(2), "not before");
        assert!(e < start + Duration::from_secs(1), "the early one did not wait for the late one");
    }
}
