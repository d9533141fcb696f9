//! `edgecap-bench lookback`: sample queries over a large lookback, as an agent answers them
//! (`edgecap_agent::answer_sample`: filter, account scope, newest `packet_limit`, chunks).
//!
//! The lookback is filled in this process with generated frames (Ethernet, IPv4, UDP or TCP;
//! IMIX 64/576/1500 on the wire, stored truncated to the lookback's snap length) spread
//! evenly over `--span-secs` and ending a few seconds ago, until it holds `--mib` MiB. One
//! packet in `100 / --match-percent` is UDP to port 5353, the rest go elsewhere; the query
//! asks for `protocol: 17, destination_port: 5353` over the whole span. Each query's time is
//! also the time the lookback's lock is held, during which its capture threads cannot insert.

use std::sync::Mutex;
use std::time::Instant;

use edgecap_capture::{Lookback, LookbackConfig};
use edgecap_proto::agent::v1 as pb;

/// The flags of `edgecap-bench lookback`.
#[derive(clap::Args, Debug)]
pub struct LookbackArgs {
    /// The lookback's memory bound (packet bytes and per-packet overhead), MiB.
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Time the stored packets span, seconds (the query's window covers all of it).
    #[arg(long, default_value_t = 3600)]
    span_secs: u64,
    /// Share of the packets the filter matches, percent.
    #[arg(long, default_value_t = 1.0)]
    match_percent: f64,
    /// Queries timed (after one untimed warm-up).
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Each query's packet_limit (Cloudflare's default for sample captures is 10 000).
    #[arg(long, default_value_t = 10_000)]
    packet_limit: u32,
    /// The lookback's snap length, bytes.
    #[arg(long, default_value_t = 160)]
    snaplen: u32,
}

fn frame(udp: bool, dst_port: u16, wire: usize, seq: u64) -> Vec<u8> {
    let mut f = vec![0u8; wire.min(160)];
    f[12] = 0x08; // IPv4
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((wire - 14) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = if udp { 17 } else { 6 };
    f[26..30].copy_from_slice(&[10, 1, (seq >> 8) as u8, seq as u8]);
    f[30..34].copy_from_slice(&[10, 2, 0, (seq % 251) as u8]);
    f[34..36].copy_from_slice(&(1024 + (seq % 50_000) as u16).to_be_bytes());
    f[36..38].copy_from_slice(&dst_port.to_be_bytes());
    f
}

pub fn run(args: LookbackArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.match_percent > 0.0 && args.match_percent <= 100.0, "--match-percent: between 0 and 100");
    anyhow::ensure!(args.queries > 0, "--queries: at least 1");
    let max_bytes = args.mib << 20;
    let config =
        LookbackConfig { sample_rate: 1, snaplen: args.snaplen, max_bytes, max_age_ns: 24 * 3600 * 1_000_000_000 };
    let lookback = Mutex::new(Lookback::new(config));
    let iface = edgecap_common::lock(&lookback).add_interface("bench0", 1);
    // How many packets fill it: IMIX 7:4:1 of 64/576/1500 bytes, each stored up to snaplen.
    let sizes = [64usize, 64, 64, 64, 64, 64, 64, 576, 576, 576, 576, 1500];
    let stored: usize = sizes.iter().map(|s| (*s).min(args.snaplen as usize)).sum::<usize>() / sizes.len();
    let overhead = std::mem::size_of::<edgecap_capture::StoredPacket>();
    let count = (max_bytes / (stored + overhead)) as u64;
    let every = (100.0 / args.match_percent).round().max(1.0) as u64;
    let end_ns = edgecap_common::now_ns() - 5_000_000_000;
    let span_ns = args.span_secs * 1_000_000_000;
    let start_ns = end_ns - span_ns;
    let filled = Instant::now();
    {
        let mut l = edgecap_common::lock(&lookback);
        for i in 0..count {
            let wire = sizes[(i % sizes.len() as u64) as usize];
            let matching = i % every == every / 2;
            let data =
                if matching { frame(true, 5353, wire, i) } else { frame(i % 3 == 0, 443 + (i % 7) as u16, wire, i) };
            let ts = start_ns + (u128::from(i) * u128::from(span_ns) / u128::from(count)) as u64;
            l.insert(ts, wire as u32, iface, &data);
        }
    }
    let (held, bytes) = {
        let l = edgecap_common::lock(&lookback);
        (l.len(), l.bytes())
    };
    eprintln!(
        "filled: {held} packets, {:.0} MiB, in {:.1} s; 1 in {every} matches",
        bytes as f64 / f64::from(1 << 20),
        filled.elapsed().as_secs_f64()
    );
    let query = |n: usize| pb::SampleQuery {
        request_id: format!("q{n}"),
        from_ns: start_ns,
        to_ns: end_ns,
        filter: Some(pb::FilterV1 { protocol: Some(17), destination_port: Some(5353), ..Default::default() }),
        packet_limit: args.packet_limit,
        scope: Some(pb::AccountScope { unrestricted: true, prefixes: vec![] }),
        ..Default::default()
    };
    let warm = edgecap_agent::answer_sample(&lookback, query(0));
    let last = warm.last().ok_or_else(|| anyhow::anyhow!("no answer"))?;
    anyhow::ensure!(last.error.is_empty(), "query failed: {}", last.error);
    let returned: usize = warm.iter().map(|c| c.packets.len()).sum();
    let mut times = Vec::with_capacity(args.queries);
    for n in 1..=args.queries {
        let t = Instant::now();
        let chunks = edgecap_agent::answer_sample(&lookback, query(n));
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        let got = chunks.last().map_or(0, |c| c.matched);
        anyhow::ensure!(got == last.matched, "query {n} matched {got}, the first {}", last.matched);
    }
    times.sort_by(f64::total_cmp);
    let at = |q: f64| times[((times.len() as f64 * q).ceil() as usize).clamp(1, times.len()) - 1];
    println!(
        "{}",
        serde_json::json!({
            "packets_held": held,
            "mib_held": bytes >> 20,
            "span_secs": args.span_secs,
            "matched": last.matched,
            "returned": returned,
            "chunks": warm.len(),
            "queries": times.len(),
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "max_ms": at(1.0),
        })
    );
    Ok(())
}
