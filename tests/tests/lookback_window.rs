//! The sampled lookback on a real interface (loopback, traffic only to 127.0.0.1): after
//! bursts of known traffic, a window query returns exactly the packets of that window that
//! match the filter, truncated as configured, through the agent's own query path.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgecap_capture::{Lookback, LookbackCapture, LookbackCaptureConfig, LookbackConfig, now_ns};
use edgecap_e2e::require_root;
use edgecap_proto::agent::v1 as pb;

#[test]
fn window_query_returns_exactly_the_windows_matching_packets_truncated() {
    if !require_root("window_query_returns_exactly_the_windows_matching_packets_truncated") {
        return;
    }
    let lookback = Arc::new(Mutex::new(Lookback::new(LookbackConfig {
        sample_rate: 1,
        snaplen: 100,
        max_bytes: 64 << 20,
        max_age_ns: 3600 * 1_000_000_000,
    })));
    let config = LookbackCaptureConfig { interfaces: vec!["lo".into()], ..LookbackCaptureConfig::default() };
    let sources = edgecap_capture::source::factory(&edgecap_capture::source::SourceConfig::Libpcap);
    let capture = LookbackCapture::start(&config, sources.clone(), lookback.clone()).unwrap();
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = receiver.local_addr().unwrap().port();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let burst = |n: u8, tag: u8| {
        for i in 0..n {
            sender.send_to(&[tag.wrapping_add(i); 300], ("127.0.0.1", port)).unwrap();
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    burst(3, 0x10);
    std::thread::sleep(Duration::from_millis(100));
    let t0 = now_ns();
    burst(5, 0x20);
    let t1 = now_ns();
    std::thread::sleep(Duration::from_millis(100));
    burst(2, 0x30);
    std::thread::sleep(Duration::from_millis(500));
    // The quiet interface's source ran dry since, and waits (up to its idle wait of 1 s)
    // without looking again. Woken, as a query wakes it, it looks at once: the lookback then
    // says everything up to a moment ago is in (the ring's 20 ms block timeout before the
    // wake), so a query need not wait for it.
    let woken_at = now_ns();
    lookback.lock().unwrap().wake_sources();
    let lag = u64::from(edgecap_capture::live::FEED_TIMEOUT_MS.unsigned_abs()) * 1_000_000;
    let end = std::time::Instant::now() + Duration::from_millis(200);
    let settled = loop {
        let settled = lookback.lock().unwrap().settled_ns().unwrap();
        if settled + lag >= woken_at || std::time::Instant::now() > end {
            break settled;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(
        settled + lag >= woken_at,
        "settled {} ms before the wake: the woken source did not look again",
        woken_at.saturating_sub(settled) / 1_000_000
    );
    assert!(settled > t1 + 100_000_000, "settled {} ns after t1", settled.saturating_sub(t1));

    let query = |from_ns, to_ns, limit| {
        let q = pb::SampleQuery {
            request_id: "q".into(),
            from_ns,
            to_ns,
            filter: Some(pb::FilterV1 {
                protocol: Some(17),
                destination_port: Some(u32::from(port)),
                ..Default::default()
            }),
            packet_limit: limit,
            scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }),
            ..Default::default()
        };
        let chunks = edgecap_agent::answer_sample(&lookback, q);
        let last = chunks.last().unwrap();
        assert!(last.done && last.error.is_empty(), "{:?}", last.error);
        (chunks.iter().flat_map(|c| c.packets.clone()).collect::<Vec<_>>(), last.matched)
    };

    // Ethernet (14) + IPv4 (20) + UDP (8) + 300 bytes of payload.
    let wire = 342;
    let (window, matched) = query(t0, t1, 100);
    assert_eq!((window.len(), matched), (5, 5), "exactly the middle burst");
    for (i, p) in window.iter().enumerate() {
        assert_eq!(p.data.len(), 100, "truncated to the lookback's snap length");
        assert_eq!(p.orig_len, wire);
        assert_eq!(p.data[99], 0x20 + i as u8, "payload byte of packet {i}");
        assert!((t0..=t1).contains(&p.ts_ns));
        assert_eq!(p.interface, "lo");
    }
    let (all, _) = query(t0 - 1_000_000_000, now_ns(), 100);
    assert_eq!(all.len(), 10);
    assert!(all.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    let (newest, matched) = query(t0, t1, 2);
    assert_eq!(matched, 5);
    assert_eq!(newest.iter().map(|p| p.data[99]).collect::<Vec<_>>(), [0x23, 0x24], "the newest 2 of the window");
    // A filter on the wire length sees the real size, not the stored 100 bytes.
    let q = pb::SampleQuery {
        request_id: "len".into(),
        from_ns: t0,
        to_ns: t1,
        filter_bpf: format!("udp dst port {port} and greater 300"),
        filter_bpf_hash: edgecap_capture::bpf::check(&format!("udp dst port {port} and greater 300"), 1, 262_144)
            .unwrap()
            .hash,
        packet_limit: 100,
        scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }),
        ..Default::default()
    };
    let chunks = edgecap_agent::answer_sample(&lookback, q);
    assert_eq!(chunks.last().unwrap().matched, 5, "{:?}", chunks.last().unwrap().error);
    capture.stop();
}
