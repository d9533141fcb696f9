//! Writing behind the merge, on a thread of its own.
//!
//! A merge to a file spends about as much time in `write(2)` (the kernel copying the output
//! into the page cache) as in reading and choosing packets. [`WriteBehind`] hands full
//! buffers to a writer thread, so that copy runs on another core while the merge goes on: the
//! merge thread copies each record once into a buffer, the writer thread passes whole
//! buffers to the inner `Write`. Memory: `depth` buffers of `capacity` bytes, allocated as
//! needed; the merge waits when all of them are with the writer.
//!
//! Errors: the first error of the inner writer ends the writer thread; the next `write` or
//! `flush` (or [`WriteBehind::finish`]) returns it. Nothing written after it reaches the inner
//! writer.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

/// A `Write` whose writes are carried out by a thread of its own (see the module docs).
pub struct WriteBehind<W: Write + Send + 'static> {
    current: Vec<u8>,
    capacity: usize,
    depth: usize,
    /// Buffers handed to the writer thread and not yet returned.
    outstanding: usize,
    free: Vec<Vec<u8>>,
    to_writer: Option<Sender<Vec<u8>>>,
    returned: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<io::Result<W>>>,
    /// Set once the writer thread has ended with an error (kept for every later call).
    failed: Option<(io::ErrorKind, String)>,
}

impl<W: Write + Send + 'static> WriteBehind<W> {
    /// Starts the writer thread (named `name`) over `inner`, with at most `depth` buffers of
    /// `capacity` bytes (at least 1 and 4 KiB).
    pub fn new(inner: W, name: &str, capacity: usize, depth: usize) -> io::Result<Self> {
        let capacity = capacity.max(4096);
        let depth = depth.max(1);
        let (to_writer, from_merge) = channel::<Vec<u8>>();
        let (to_merge, returned) = channel::<Vec<u8>>();
        let thread = std::thread::Builder::new().name(name.to_owned()).spawn(move || {
            let mut inner = inner;
            for mut buf in from_merge {
                if buf.is_empty() {
                    // An empty buffer asks for a flush of the inner writer.
                    inner.flush()?;
                } else {
                    inner.write_all(&buf)?;
                }
                buf.clear();
                // The merge side may have ended (dropped): the buffer is then freed here.
                let _ = to_merge.send(buf);
            }
            inner.flush()?;
            Ok(inner)
        })?;
        Ok(Self {
            current: Vec::with_capacity(capacity),
            capacity,
            depth,
            outstanding: 0,
            free: Vec::new(),
            to_writer: Some(to_writer),
            returned,
            thread: Some(thread),
            failed: None,
        })
    }

    /// The writer thread's error, once it has ended with one.
    fn failure(&mut self) -> io::Error {
        if self.failed.is_none() {
            // The thread has ended (its channel is gone): join it for its error.
            self.to_writer = None;
            let error = match self.thread.take().map(JoinHandle::join) {
                Some(Ok(Err(e))) => (e.kind(), e.to_string()),
                Some(Err(_)) => (io::ErrorKind::Other, "the writer thread panicked".to_owned()),
                _ => (io::ErrorKind::Other, "the writer thread stopped".to_owned()),
            };
            self.failed = Some(error);
        }
        let (kind, message) = self.failed.clone().expect("set above");
        io::Error::new(kind, message)
    }

    fn send(&mut self, buf: Vec<u8>) -> io::Result<()> {
        if self.failed.is_some() {
            return Err(self.failure());
        }
        let sent = self.to_writer.as_ref().map(|tx| tx.send(buf));
        if !matches!(sent, Some(Ok(()))) {
            return Err(self.failure());
        }
        self.outstanding += 1;
        Ok(())
    }

    /// An empty buffer: a free one, a new one while fewer than `depth` exist, else the next
    /// one the writer returns.
    fn take_free(&mut self) -> io::Result<Vec<u8>> {
        if let Some(buf) = self.free.pop() {
            return Ok(buf);
        }
        if self.outstanding < self.depth {
            return Ok(Vec::with_capacity(self.capacity));
        }
        match self.returned.recv() {
            Ok(buf) => {
                self.outstanding -= 1;
                Ok(buf)
            }
            Err(_) => Err(self.failure()),
        }
    }

    /// Hands the current buffer to the writer thread.
    fn hand_over(&mut self) -> io::Result<()> {
        let next = self.take_free()?;
        let full = std::mem::replace(&mut self.current, next);
        self.send(full)
    }

    /// Waits until the writer thread has written everything handed to it.
    fn drain(&mut self) -> io::Result<()> {
        while self.outstanding > 0 {
            match self.returned.recv() {
                Ok(buf) => {
                    self.outstanding -= 1;
                    // Flush markers (never allocated) are not buffers: at most `depth` exist.
                    if buf.capacity() > 0 {
                        self.free.push(buf);
                    }
                }
                Err(_) => return Err(self.failure()),
            }
        }
        Ok(())
    }

    /// Writes what is buffered, stops the writer thread and hands back the inner writer
    /// (flushed).
    pub fn finish(mut self) -> io::Result<W> {
        if !self.current.is_empty() {
            let full = std::mem::take(&mut self.current);
            self.send(full)?;
        }
        if self.failed.is_some() {
            return Err(self.failure());
        }
        self.to_writer = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the writer thread panicked")),
            None => Err(self.failure()),
        }
    }
}

impl<W: Write + Send + 'static> Write for WriteBehind<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed.is_some() {
            return Err(self.failure());
        }
        if self.current.len() + data.len() > self.capacity && !self.current.is_empty() {
            self.hand_over()?;
        }
        // A write larger than a buffer still goes whole into one (its own).
        self.current.extend_from_slice(data);
        if self.current.len() >= self.capacity {
            self.hand_over()?;
        }
        Ok(data.len())
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.write(data).map(|_| ())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.current.is_empty() {
            self.hand_over()?;
        }
        self.send(Vec::new())?;
        self.drain()
    }
}

impl<W: Write + Send + 'static> Drop for WriteBehind<W> {
    fn drop(&mut self) {
        // Unfinished (an error elsewhere): let the thread write what it has and end.
        self.to_writer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer that records what reached it, and fails after `fail_after` bytes.
    #[derive(Clone, Debug, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        flushes: Arc<Mutex<usize>>,
        fail_after: Option<usize>,
    }

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let mut bytes = self.bytes.lock().unwrap();
            if self.fail_after.is_some_and(|limit| bytes.len() + data.len() > limit) {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
            }
            bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    #[test]
    fn everything_arrives_in_order() {
        let sink = Sink::default();
        let mut w = WriteBehind::new(sink.clone(), "t", 4096, 3).unwrap();
        let mut expected = Vec::new();
        for i in 0..20_000u32 {
            // Sizes from 1 byte to more than a buffer.
            let piece: Vec<u8> = (0..(i % 97) * (1 + i % 61)).map(|j| (i ^ j) as u8).collect();
            w.write_all(&piece).unwrap();
            expected.extend_from_slice(&piece);
        }
        let back = w.finish().unwrap();
        assert_eq!(*back.bytes.lock().unwrap(), expected);
        assert!(*sink.flushes.lock().unwrap() >= 1, "finish flushes the inner writer");
    }

    #[test]
    fn flush_waits_for_the_writer() {
        let sink = Sink::default();
        let mut w = WriteBehind::new(sink.clone(), "t", 4096, 2).unwrap();
        w.write_all(b"abc").unwrap();
        w.flush().unwrap();
        assert_eq!(&*sink.bytes.lock().unwrap(), b"abc");
        assert_eq!(*sink.flushes.lock().unwrap(), 1);
    }

    #[test]
    fn the_inner_error_comes_back_and_stays() {
        let sink = Sink { fail_after: Some(10_000), ..Default::default() };
        let mut w = WriteBehind::new(sink.clone(), "t", 4096, 2).unwrap();
        let chunk = [7u8; 1000];
        let error = (0..1000).find_map(|_| w.write_all(&chunk).err()).expect("the error reaches the merge");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert!(error.to_string().contains("disk full"), "{error}");
        assert_eq!(w.write_all(&chunk).unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(w.flush().unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert!(sink.bytes.lock().unwrap().len() <= 10_000);
        assert_eq!(w.finish().unwrap_err().kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn an_error_at_the_last_buffer_is_reported_by_finish() {
        let sink = Sink { fail_after: Some(10), ..Default::default() };
        let mut w = WriteBehind::new(sink, "t", 4096, 2).unwrap();
        w.write_all(&[1u8; 100]).unwrap();
        assert_eq!(w.finish().unwrap_err().kind(), io::ErrorKind::StorageFull);
    }

    #[test]
    fn dropped_unfinished_does_not_hang() {
        let sink = Sink::default();
        let mut w = WriteBehind::new(sink.clone(), "t", 4096, 2).unwrap();
        w.write_all(&[1u8; 10_000]).unwrap();
        drop(w);
        assert_eq!(sink.bytes.lock().unwrap().len(), 10_000, "what was handed over is written");
    }
}
