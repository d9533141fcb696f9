//! pcapng output says where every packet came from: one interface per PoP/agent/interface
//! (named `pop/agent/iface`), the capture filter, each PoP's counters in an Interface
//! Statistics Block, and the capture id in the section comment; Wireshark's tools agree.

#![allow(clippy::unwrap_used, reason = "a test: a failed unwrap is a failed test")]

use std::process::Command;

use edgecap_merge::write::PcapWriter;
use edgecap_merge::{CaptureReader, MergeInput, MergeOptions, OutputFormat, Provenance, Record, merge};

fn shard(ts: &[u64], tag: u8) -> Vec<u8> {
    let mut w = PcapWriter::new(Vec::new(), 1, 65535, false).unwrap();
    for &t in ts {
        w.packet(t, 60, &[tag; 60]).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn pcapng_output_carries_per_pop_provenance_and_counters() {
    let a = shard(&[1_000_000_000, 3_000_000_000], 0xaa);
    let b = shard(&[2_000_000_000], 0xbb);
    let provenance = |pop: &str, agent: &str, received, dropped| Provenance {
        pop: pop.into(),
        agent: agent.into(),
        iface: Some("eth0".into()),
        filter: Some("udp and dst port 53".into()),
        received: Some(received),
        dropped: Some(dropped),
        ..Default::default()
    };
    let inputs = vec![
        MergeInput { name: "a.pcap".into(), reader: &a[..], provenance: Some(provenance("ams01", "ams01-a", 1000, 7)) },
        MergeInput { name: "b.pcap".into(), reader: &b[..], provenance: Some(provenance("fra02", "fra02-a", 500, 0)) },
    ];
    let options = MergeOptions {
        format: Some(OutputFormat::PcapNg),
        comment: Some("edgecap capture 0123456789abcdef0123456789abcdef".into()),
        ..Default::default()
    };
    let (out, report) = merge(inputs, Vec::new(), &options).unwrap();
    assert_eq!(report.packets, 3);

    let mut reader = CaptureReader::open(&out[..]).unwrap();
    let mut r = Record::default();
    let mut seen = Vec::new();
    while reader.next_record(&mut r).unwrap() {
        seen.push((r.ts_ns, r.iface, r.bytes()[0]));
    }
    assert_eq!(seen, [(1_000_000_000, 0, 0xaa), (2_000_000_000, 1, 0xbb), (3_000_000_000, 0, 0xaa)]);
    let ifaces = reader.interfaces();
    assert_eq!(ifaces[0].name.as_deref(), Some("ams01/ams01-a/eth0"));
    assert_eq!(ifaces[1].name.as_deref(), Some("fra02/fra02-a/eth0"));
    assert_eq!(ifaces[0].filter.as_deref(), Some("udp and dst port 53"));
    assert_eq!((ifaces[0].received, ifaces[0].dropped), (Some(1000), Some(7)));
    assert_eq!((ifaces[1].received, ifaces[1].dropped), (Some(500), Some(0)));

    // Wireshark's own tools read the same facts.
    let path = std::env::temp_dir().join(format!("edgecap-provenance-{}.pcapng", std::process::id()));
    std::fs::write(&path, &out).unwrap();
    let tool = |cmd: &mut Command| {
        cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let capinfos = tool(Command::new("capinfos").arg(&path));
    let tshark =
        tool(Command::new("tshark").args(["-n", "-r"]).arg(&path).args(["-T", "fields", "-e", "frame.interface_name"]));
    std::fs::remove_file(&path).unwrap();
    match (capinfos, tshark) {
        (Some(capinfos), Some(tshark)) => {
            assert!(capinfos.contains("edgecap capture 0123456789abcdef0123456789abcdef"), "{capinfos}");
            assert!(capinfos.contains("ams01/ams01-a/eth0") && capinfos.contains("fra02/fra02-a/eth0"), "{capinfos}");
            assert!(capinfos.contains("udp and dst port 53"), "{capinfos}");
            assert!(capinfos.contains("Number of stat entries = 1"), "{capinfos}");
            let names: Vec<&str> = tshark.lines().collect();
            assert_eq!(names, ["ams01/ams01-a/eth0", "fra02/fra02-a/eth0", "ams01/ams01-a/eth0"]);
        }
        _ => assert!(std::env::var("CI").is_err(), "capinfos/tshark missing"),
    }
}

#[test]
fn a_clock_offset_shifts_an_inputs_timestamps_and_describes_its_interface() {
    // b's clock runs 1.5 s ahead: as recorded it comes after a's second packet, corrected
    // (shifted back 1.5 s) it falls between a's two.
    let a = shard(&[1_000_000_000, 3_000_000_000], 0xaa);
    let b = shard(&[3_500_000_000], 0xbb);
    let inputs = vec![
        MergeInput {
            name: "a".into(),
            reader: &a[..],
            provenance: Some(Provenance { pop: "a".into(), agent: "a".into(), ..Default::default() }),
        },
        MergeInput {
            name: "b".into(),
            reader: &b[..],
            provenance: Some(Provenance {
                pop: "b".into(),
                agent: "b".into(),
                description: Some("clock offset -1500000 us".into()),
                ts_offset_ns: -1_500_000_000,
                ..Default::default()
            }),
        },
    ];
    let options = MergeOptions { format: Some(OutputFormat::PcapNg), ..Default::default() };
    let (out, _) = merge(inputs, Vec::new(), &options).unwrap();
    let mut reader = edgecap_merge::CaptureReader::open(&out[..]).unwrap();
    let mut record = edgecap_merge::Record::default();
    let mut seen = Vec::new();
    while reader.next_record(&mut record).unwrap() {
        seen.push((record.ts_ns, record.bytes()[0]));
    }
    assert_eq!(seen, [(1_000_000_000, 0xaa), (2_000_000_000, 0xbb), (3_000_000_000, 0xaa)]);
    let described = reader.interfaces().iter().find_map(|i| i.description.clone());
    assert_eq!(described.as_deref(), Some("clock offset -1500000 us"));
}
