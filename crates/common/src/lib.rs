//! Small pieces that every edgecap crate would otherwise write again: the wall clock in
//! nanoseconds, lowercase hex, a lock that survives a poisoned mutex, and (feature `runtime`)
//! the future that resolves on SIGTERM or Ctrl-C and [`tasks::Tasks`], the owner of a
//! component's background work; [`prometheus`] turns OpenMetrics text into the older
//! Prometheus text format that edgecap serves.
//!
//! Nothing here knows about captures, agents or coordinators; no async runtime unless the
//! `runtime` feature is on.

use std::sync::{Mutex, MutexGuard};

pub mod prometheus;
#[cfg(feature = "runtime")]
pub mod tasks;

/// Nanoseconds since the Unix epoch, from the system clock (0 before 1970).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Lowercase hex of `bytes` (digests, tokens' hashes).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A CRC32C in S3's form (`x-amz-checksum-crc32c`): base64 of its four bytes, big-endian.
pub fn crc32c_text(crc: u32) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = crc.to_be_bytes();
    let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
    let mut out = String::with_capacity(8);
    for shift in [18, 12, 6, 0] {
        out.push(ALPHABET[(n >> shift & 63) as usize] as char);
    }
    let m = u32::from(b[3]) << 16;
    out.push(ALPHABET[(m >> 18 & 63) as usize] as char);
    out.push(ALPHABET[(m >> 12 & 63) as usize] as char);
    out.push_str("==");
    out
}

/// Decodes lowercase or uppercase hex; `None` if `text` is not hex of whole bytes.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes.chunks(2).map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

/// Locks `mutex`, taking the data even if a thread panicked while holding it. Every mutex
/// in edgecap guards data that a panic cannot leave half-changed (each critical section
/// makes one consistent change), so a poisoned lock is safe to keep using; an agent or a
/// coordinator must not die of another thread's bug.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Resolves when the process is asked to stop: SIGTERM (systemd, Kubernetes) or SIGINT
/// (Ctrl-C). If the SIGTERM handler cannot be installed, only Ctrl-C is awaited.
#[cfg(feature = "runtime")]
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(unhex("0001abFF"), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), Some(vec![]));
    }

    #[test]
    fn crc32c_in_s3s_form() {
        // S3's documented example: CRC32C of "Hello, World!" is 0x4d551068, "TVUQaA==".
        assert_eq!(crc32c_text(0x4d55_1068), "TVUQaA==");
        assert_eq!(crc32c_text(0), "AAAAAA==");
        assert_eq!(crc32c_text(u32::MAX), "/////w==");
    }

    #[test]
    fn a_poisoned_lock_is_still_usable() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn the_clock_is_after_2020() {
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
