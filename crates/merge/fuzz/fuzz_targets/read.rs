//! Any bytes through the reader: an error or records, never a panic or a huge allocation.
#![no_main]

use edgecap_merge::{CaptureReader, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = CaptureReader::open(data) else { return };
    let mut record = Record::default();
    while let Ok(true) = reader.next_record(&mut record) {
        assert!(record.bytes().len() <= edgecap_merge::read::MAX_BLOCK as usize);
    }
});
