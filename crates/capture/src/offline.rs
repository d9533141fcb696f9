//! Running a compiled filter over a stored packet, with libpcap's own interpreter.
//!
//! `pcap::BpfProgram::filter` passes the *captured* length as the packet's length, so
//! `greater 1000` or `len > 100` would be judged on a truncated lookback sample's 160 bytes
//! instead of the packet's real size. Calling libpcap's `bpf_filter` with the wire length
//! makes a filter mean the same on a stored (truncated) packet as on the wire.

// The one place this crate needs `unsafe`: a call into libpcap (already linked by `pcap`).
#![allow(unsafe_code)]

use pcap::{BpfInstruction, BpfProgram};

unsafe extern "C" {
    /// `u_int bpf_filter(const struct bpf_insn *pc, const u_char *pkt, u_int wirelen, u_int buflen)`
    /// from libpcap (pcap/bpf.h).
    fn bpf_filter(pc: *const BpfInstruction, pkt: *const u8, wirelen: u32, buflen: u32) -> u32;
}

/// Whether `program` accepts a packet of which `data` was captured and `wire_len` was sent.
pub fn matches(program: &BpfProgram, data: &[u8], wire_len: u32) -> bool {
    let insns = program.get_instructions();
    if insns.is_empty() {
        return true;
    }
    let buflen = u32::try_from(data.len()).unwrap_or(u32::MAX);
    // SAFETY: `insns` is the program's own `struct bpf_insn` array (`BpfInstruction` is
    // `#[repr(transparent)]` over `bpf_insn`), valid for as long as `program` is borrowed;
    // libpcap compiled it, so it is a valid program that ends in a return. `data` is valid for
    // `buflen` bytes, and bpf_filter checks every load against `buflen` (returning 0 on an
    // out-of-bounds load), never reading past it. Nothing is written through either pointer.
    unsafe { bpf_filter(insns.as_ptr(), data.as_ptr(), wire_len.max(buflen), buflen) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_length_decides_length_tests() {
        let program = crate::compile_offline(1, 65535, "greater 1000").unwrap();
        let truncated = vec![0u8; 160];
        assert!(matches(&program, &truncated, 1500), "a 1500-byte packet kept as 160 bytes is still greater than 1000");
        assert!(!matches(&program, &truncated, 160));
        assert!(!program.filter(&truncated), "what the pcap crate's filter says, for contrast");
        let empty = crate::compile_offline(1, 65535, "").unwrap();
        assert!(matches(&empty, &truncated, 160));
        // Loads beyond the captured bytes fail safely (the packet does not match).
        let deep = crate::compile_offline(1, 65535, "ether[1400] = 0").unwrap();
        assert!(!matches(&deep, &truncated, 1500));
    }
}
