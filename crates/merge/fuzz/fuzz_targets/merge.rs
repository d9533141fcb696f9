//! Two fuzzed inputs merged to both formats, with and without salvage: never a panic.
#![no_main]

use edgecap_merge::{MergeInput, MergeOptions, OutputFormat, merge};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    for format in [OutputFormat::Pcap, OutputFormat::PcapNg] {
        for salvage in [false, true] {
            let inputs = vec![
                MergeInput { name: "a".into(), reader: a, provenance: None },
                MergeInput { name: "b".into(), reader: b, provenance: None },
            ];
            let _ = merge(inputs, Vec::new(), &MergeOptions { format: Some(format), salvage, comment: None });
        }
    }
});
