//! User-supplied pcap-filter text (`filter_bpf`, the extension over `filter_v1`): compiled by
//! libpcap, bounded, and identified by the hash of its bytecode, so that a coordinator can
//! vouch for an expression and an agent can check it runs exactly that program.
//!
//! The text only ever reaches `pcap_compile`; it is never passed to a shell or put on a
//! command line.

use crate::CaptureError;

/// libpcap's own bound on a BPF program (`BPF_MAXINSNS`).
pub const MAX_INSTRUCTIONS: usize = 4096;
/// Longest expression accepted, bytes.
pub const MAX_TEXT: usize = 4096;

/// Why a `filter_bpf` expression is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BpfError {
    /// The text is longer than [`MAX_TEXT`] bytes, contains a control character (a tab is
    /// allowed, a newline is not), or libpcap does not compile it; the message says which.
    #[error("filter_bpf: {0}")]
    Invalid(String),
    /// The program compiles to more than [`MAX_INSTRUCTIONS`] instructions (how many).
    #[error("filter_bpf: the program has {0} instructions, more than the {MAX_INSTRUCTIONS} allowed")]
    TooLong(usize),
    /// The text compiles, but not to the program that was vouched for (another text, or
    /// another libpcap that compiles it differently).
    #[error("filter_bpf: the compiled program's hash {actual} is not the expected {expected}")]
    HashMismatch {
        /// The hash that was vouched for.
        expected: String,
        /// The hash of the program compiled here.
        actual: String,
    },
}

/// A compiled, bounded filter and the SHA-256 of its bytecode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedFilter {
    /// The expression, exactly as given.
    pub text: String,
    /// SHA-256 of the program, lowercase hex (64 characters), over each instruction's text
    /// followed by a newline. It depends on the link type and on libpcap's code generation,
    /// not on how the expression is spelt: texts that compile to one program share a hash.
    pub hash: String,
    /// Instructions in the program, at most [`MAX_INSTRUCTIONS`].
    pub instructions: usize,
}

/// Compiles `text` for `linktype` and checks the bounds.
pub fn check(text: &str, linktype: i32, snaplen: i32) -> Result<CheckedFilter, BpfError> {
    if text.len() > MAX_TEXT {
        return Err(BpfError::Invalid(format!("longer than {MAX_TEXT} bytes")));
    }
    if text.chars().any(|c| c.is_control() && c != ' ' && c != '\t') {
        return Err(BpfError::Invalid("control characters are not allowed".into()));
    }
    let program = crate::compile_offline(linktype, snaplen, text).map_err(|e| match e {
        CaptureError::Compile { source, .. } => BpfError::Invalid(format!("does not compile: {source}")),
        other => BpfError::Invalid(other.to_string()),
    })?;
    let instructions = program.get_instructions();
    if instructions.len() > MAX_INSTRUCTIONS {
        return Err(BpfError::TooLong(instructions.len()));
    }
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for insn in instructions {
        digest.update(insn.to_string().as_bytes());
        digest.update(b"\n");
    }
    let hash = crate::hex(digest.finish().as_ref());
    Ok(CheckedFilter { text: text.to_string(), hash, instructions: instructions.len() })
}

/// Compiles `text` and refuses it unless its bytecode hash is `expected` (what the
/// coordinator validated).
pub fn verify(text: &str, linktype: i32, snaplen: i32, expected: &str) -> Result<CheckedFilter, BpfError> {
    let checked = check(text, linktype, snaplen)?;
    if checked.hash != expected {
        return Err(BpfError::HashMismatch { expected: expected.to_string(), actual: checked.hash });
    }
    Ok(checked)
}

/// Checks a `filter_bpf` the coordinator vouched for, on an interface of `linktype`. The
/// coordinator sends the hash of the program compiled for Ethernet; on an Ethernet interface
/// ours must be that very program (another libpcap could compile it differently). Other link
/// types compile to other programs by nature: there it only has to compile within bounds.
pub fn verify_for_linktype(
    text: &str,
    linktype: i32,
    snaplen: i32,
    ethernet_hash: &str,
) -> Result<CheckedFilter, BpfError> {
    if linktype == 1 {
        verify(text, 1, crate::source::MAX_SNAPLEN as i32, ethernet_hash)
    } else {
        check(text, linktype, snaplen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_hashes_and_verifies() {
        let a = check("udp and dst port 53", 1, 65535).unwrap();
        assert_eq!(a.hash.len(), 64);
        assert_eq!(check("udp and dst port 53", 1, 65535).unwrap().hash, a.hash, "deterministic");
        assert_ne!(check("udp and dst port 54", 1, 65535).unwrap().hash, a.hash);
        verify("udp and dst port 53", 1, 65535, &a.hash).unwrap();
        assert!(matches!(verify("udp", 1, 65535, &a.hash), Err(BpfError::HashMismatch { .. })));
        // The same text on another link type (Linux SLL: DLT and LINKTYPE 113) is another program.
        assert_ne!(check("udp and dst port 53", 113, 65535).unwrap().hash, a.hash);
    }

    #[test]
    fn refuses_bad_filters() {
        for bad in [
            "tcp port 80; rm -rf /",
            "port 70000",
            // (libpcap 1.10 accepts "ip proto 300"; filter_v1's own validation refuses 300.)
            "host 1.2.3.4 or",
            "udp and (",
            "$(reboot)",
            "tcp\nport 80",
        ] {
            assert!(check(bad, 1, 65535).is_err(), "{bad:?}");
        }
        assert!(matches!(check(&"a".repeat(MAX_TEXT + 1), 1, 65535), Err(BpfError::Invalid(_))));
        // An expression that compiles to more than BPF_MAXINSNS instructions.
        let huge = (0..1500).map(|i| format!("host 10.0.{}.{}", i / 250, i % 250)).collect::<Vec<_>>().join(" or ");
        assert!(check(&huge, 1, 65535).is_err());
    }
}
