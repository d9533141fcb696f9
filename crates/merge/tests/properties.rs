//! Property tests of the streaming merge: for random inputs (classic pcap and pcapng, with
//! ties and out-of-order packets), the output holds exactly the input packets, in time order
//! when the inputs are, with ties in input order. And damaged input never panics.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use edgecap_merge::write::{OutInterface, PcapNgWriter, PcapWriter};
use edgecap_merge::{CaptureReader, MergeInput, MergeOptions, OutputFormat, Record, merge};
use proptest::prelude::*;

/// (ts_ns, payload) with the payload tagging (input, position).
fn encode(input: usize, packets: &[u64], pcapng: bool) -> Vec<u8> {
    let payload = |i: usize, j: usize| {
        let mut p = vec![0u8; 14 + (j % 7)];
        p[0..4].copy_from_slice(&(i as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(j as u32).to_le_bytes());
        p
    };
    if pcapng {
        let mut w = PcapNgWriter::new(Vec::new(), None).unwrap();
        let id = w
            .add_interface(OutInterface { linktype: 1, snaplen: 0, name: format!("in{input}"), ..Default::default() })
            .unwrap();
        for (j, &ts) in packets.iter().enumerate() {
            w.packet(id, ts, 100, &payload(input, j)).unwrap();
        }
        w.finish().unwrap()
    } else {
        let mut w = PcapWriter::new(Vec::new(), 1, 65535, true).unwrap();
        for (j, &ts) in packets.iter().enumerate() {
            w.packet(ts, 100, &payload(input, j)).unwrap();
        }
        w.finish().unwrap()
    }
}

/// (ts, input, position) of every packet of a merged capture.
fn decode(bytes: &[u8]) -> Vec<(u64, u32, u32)> {
    let mut reader = CaptureReader::open(bytes).unwrap();
    let mut r = Record::default();
    let mut out = Vec::new();
    while reader.next_record(&mut r).unwrap() {
        let b = r.bytes();
        out.push((
            r.ts_ns,
            u32::from_le_bytes(b[0..4].try_into().unwrap()),
            u32::from_le_bytes(b[4..8].try_into().unwrap()),
        ));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn merge_preserves_packets_orders_by_time_and_keeps_ties_stable(
        mut inputs in prop::collection::vec(prop::collection::vec(1_000_000_000u64..1_000_000_040, 0..30), 0..8),
        pcapng_mask in any::<u8>(),
        out_ng in any::<bool>(),
        sorted in any::<bool>(),
    ) {
        if sorted {
            for v in &mut inputs { v.sort(); }
        }
        let encoded: Vec<Vec<u8>> = inputs.iter().enumerate().map(|(i, v)| encode(i, v, pcapng_mask & (1 << i) != 0)).collect();
        let merge_inputs = encoded.iter().enumerate()
            .map(|(i, b)| MergeInput { name: format!("in{i}"), reader: &b[..], provenance: None }).collect();
        let format = if out_ng { OutputFormat::PcapNg } else { OutputFormat::Pcap };
        let (out, report) = merge(merge_inputs, Vec::new(), &MergeOptions { format: Some(format), ..Default::default() }).unwrap();
        let merged = decode(&out);
        let total: usize = inputs.iter().map(Vec::len).sum();
        prop_assert_eq!(merged.len(), total);
        prop_assert_eq!(report.packets as usize, total);
        // The multiset of (ts, input, position) is preserved.
        let mut got = merged.clone();
        got.sort();
        let mut want: Vec<(u64, u32, u32)> = inputs.iter().enumerate()
            .flat_map(|(i, v)| v.iter().enumerate().map(move |(j, &t)| (t, i as u32, j as u32))).collect();
        want.sort();
        prop_assert_eq!(got, want);
        // Each input's own order is kept.
        for i in 0..inputs.len() as u32 {
            let positions: Vec<u32> = merged.iter().filter(|p| p.1 == i).map(|p| p.2).collect();
            prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "input {} reordered", i);
        }
        if sorted {
            for w in merged.windows(2) {
                prop_assert!(w[0].0 < w[1].0 || (w[0].0 == w[1].0 && (w[0].1, w[0].2) < (w[1].1, w[1].2)),
                    "order or tie rule broken: {:?} then {:?}", w[0], w[1]);
            }
            prop_assert!(report.inputs.iter().all(|r| r.out_of_order == 0));
        }
    }

    #[test]
    fn damaged_input_never_panics_and_salvage_keeps_a_prefix(
        packets in prop::collection::vec(1_000_000_000u64..1_000_100_000, 1..40),
        pcapng in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let mut sorted = packets.clone();
        sorted.sort();
        let mut bytes = encode(0, &sorted, pcapng);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        let end = cut.index(bytes.len() + 1);
        let bytes = &bytes[..end];
        let input = || vec![MergeInput { name: "damaged".to_string(), reader: bytes, provenance: None }];
        // Without salvage: a result or an error naming the input, never a panic.
        match merge(input(), Vec::new(), &MergeOptions::default()) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.to_string().starts_with("damaged"), "{}", e),
        }
        // With salvage: a readable file, or (for what salvage cannot fix, such as a damaged
        // timestamp classic pcap cannot hold) an error naming the input.
        let options = MergeOptions { salvage: true, ..Default::default() };
        let salvaged = merge(input(), Vec::new(), &options);
        if let Err(e) = &salvaged {
            prop_assert!(e.to_string().starts_with("damaged: at byte"), "{}", e);
        }
        if let Ok((out, report)) = salvaged {
            let mut reader = CaptureReader::open(&out[..]).unwrap();
            let mut r = Record::default();
            let mut n = 0u64;
            while reader.next_record(&mut r).unwrap() {
                n += 1;
            }
            prop_assert_eq!(n, report.packets);
        }
    }
}
