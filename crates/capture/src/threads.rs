//! The threads of live captures ([`crate::session`]), kept a while after a capture ends and
//! used again by the next capture whose thread has the same name (`capture-eth0`,
//! `writer-eth0`: the same role on the same interface).
//!
//! A new thread costs more than its `clone`: its stack and its signal stack are mapped, their
//! guard pages protected, and all of it unmapped again when it exits, each step under the
//! process's address-space lock. For an agent that starts one capture now and then, that is
//! nothing. For a process that starts many at once (a simulator with a hundred agents, each
//! starting a capture of the same fleet-wide request) it was a tenth of the start's CPU
//! (docs/benchmarks.md). A thread kept here waits for work for [`KEEP`], then exits.
//!
//! A thread whose work panicked is not kept: its [`Joiner`] reports the panic, as
//! [`std::thread::JoinHandle::join`] would, and the thread exits.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use edgecap_common::lock;

/// How long a thread with nothing to do waits for more before it exits.
#[cfg(not(test))]
const KEEP: Duration = Duration::from_secs(60);
#[cfg(test)]
const KEEP: Duration = Duration::from_secs(2);

type Work = Box<dyn FnOnce() -> bool + Send>;

/// The threads waiting for work, by name: each thread's id and the way to hand it work.
#[derive(Default)]
struct Idle {
    by_name: HashMap<String, Vec<(u64, Sender<Work>)>>,
    next_id: u64,
}

fn idle() -> &'static Mutex<Idle> {
    static IDLE: OnceLock<Mutex<Idle>> = OnceLock::new();
    IDLE.get_or_init(Mutex::default)
}

/// Waits for the end of work started by [`spawn`].
#[derive(Debug)]
pub(crate) struct Joiner<T>(Receiver<std::thread::Result<T>>);

impl<T> Joiner<T> {
    /// The work's result, or its panic; like [`std::thread::JoinHandle::join`].
    pub(crate) fn join(self) -> std::thread::Result<T> {
        self.0.recv().unwrap_or_else(|_| Err(Box::new("capture thread ended without a result")))
    }
}

/// Runs `f` on a thread named `name`: one of that name kept idle, or a new one.
pub(crate) fn spawn<T, F>(name: String, f: F) -> std::io::Result<Joiner<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (done_tx, done_rx) = sync_channel(1);
    let work: Work = Box::new(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let panicked = result.is_err();
        let _ = done_tx.send(result);
        !panicked
    });
    let waiting = {
        let mut idle = lock(idle());
        idle.by_name.get_mut(&name).and_then(Vec::pop)
    };
    // A thread taken from the list waits until it is handed work (see `serve`), so this
    // cannot fail; if it did, the work goes to a new thread.
    let work = match waiting {
        Some((_, tx)) => match tx.send(work) {
            Ok(()) => return Ok(Joiner(done_rx)),
            Err(returned) => returned.0,
        },
        None => work,
    };
    let id = {
        let mut idle = lock(idle());
        idle.next_id += 1;
        idle.next_id
    };
    let thread_name = name.clone();
    std::thread::Builder::new().name(thread_name).spawn(move || serve(name, id, work))?;
    Ok(Joiner(done_rx))
}

/// A thread's life: its first work, then whatever it is handed while it waits in the list,
/// until it waits [`KEEP`] in vain or its work panicked.
fn serve(name: String, id: u64, first: Work) {
    let (tx, rx) = channel::<Work>();
    let mut work = first;
    loop {
        if !work() {
            return;
        }
        lock(idle()).by_name.entry(name.clone()).or_default().push((id, tx.clone()));
        work = match rx.recv_timeout(KEEP) {
            Ok(next) => next,
            Err(RecvTimeoutError::Timeout) => {
                let mut idle = lock(idle());
                let waiting = idle.by_name.get_mut(&name);
                match waiting.as_ref().and_then(|w| w.iter().position(|(i, _)| *i == id)) {
                    Some(at) => {
                        let waiting = waiting.expect("found in it");
                        waiting.swap_remove(at);
                        if waiting.is_empty() {
                            idle.by_name.remove(&name);
                        }
                        return;
                    }
                    // Taken from the list just now: its work is on the way.
                    None => {
                        drop(idle);
                        match rx.recv() {
                            Ok(next) => next,
                            Err(_) => return,
                        }
                    }
                }
            }
            // (This thread holds a sender itself.)
            Err(RecvTimeoutError::Disconnected) => return,
        };
    }
}

/// How many threads of `name` wait for work now.
#[cfg(test)]
fn waiting(name: &str) -> usize {
    lock(idle()).by_name.get(name).map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn wait_for(what: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_thread_is_used_again_by_work_of_its_name_only() {
        let first = spawn("reuse-a".into(), || std::thread::current().id()).unwrap().join().unwrap();
        wait_for(|| waiting("reuse-a") == 1);
        let other = spawn("reuse-b".into(), || std::thread::current().id()).unwrap().join().unwrap();
        assert_ne!(other, first, "another name gets another thread");
        let again = spawn("reuse-a".into(), || {
            (std::thread::current().id(), std::thread::current().name().map(str::to_string))
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(again, (first, Some("reuse-a".to_string())), "the same thread, with its name");
    }

    #[test]
    fn many_at_once_run_side_by_side_and_are_all_kept() {
        // Eight pieces of work that can only end together: eight threads.
        let start = |barrier: Arc<Barrier>| {
            (0..8)
                .map(|_| {
                    let b = barrier.clone();
                    spawn("reuse-many".into(), move || {
                        b.wait();
                        std::thread::current().id()
                    })
                    .unwrap()
                })
                .collect::<Vec<_>>()
        };
        let first: std::collections::HashSet<_> =
            start(Arc::new(Barrier::new(8))).into_iter().map(|j| j.join().unwrap()).collect();
        assert_eq!(first.len(), 8);
        wait_for(|| waiting("reuse-many") == 8);
        let second: std::collections::HashSet<_> =
            start(Arc::new(Barrier::new(8))).into_iter().map(|j| j.join().unwrap()).collect();
        assert_eq!(second, first, "the second round ran on the first round's threads");
    }

    #[test]
    fn a_panic_is_reported_and_its_thread_not_kept() {
        let panicked = spawn("reuse-panic".into(), || -> u32 { panic!("on purpose") }).unwrap().join();
        let payload = panicked.expect_err("the panic reaches the joiner");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"on purpose"));
        // (Give a kept thread time to show up in the list: it must not.)
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(waiting("reuse-panic"), 0);
        assert_eq!(spawn("reuse-panic".into(), || 7).unwrap().join().unwrap(), 7, "the name works on");
    }

    #[test]
    fn an_idle_thread_exits_after_a_while() {
        spawn("reuse-idle".into(), || ()).unwrap().join().unwrap();
        wait_for(|| waiting("reuse-idle") == 1);
        wait_for(|| waiting("reuse-idle") == 0);
        assert!(!lock(idle()).by_name.contains_key("reuse-idle"), "an empty name is forgotten");
    }
}
