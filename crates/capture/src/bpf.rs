//! User-supplied pcap-filter text (`filter_bpf`, the extension over `filter_v1`): compiled by
//! libpcap, bounded, and identified by the hash of its bytecode, so that a coordinator can
//! vouch for an expression and an agent can check it runs exactly that program.
//!
//! The text only ever reaches `pcap_compile`; it is never passed to a shell or put on a
//! command line. Names are refused: libpcap resolves a host, network, port or protocol name
//! while compiling (blocking DNS and NSS lookups, on the coordinator's API and on every
//! agent), so every word must be one of the filter language's own keywords, and addresses,
//! ports and protocols are given as numbers ([`names`]).

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
    /// A word that is not part of the filter language: libpcap would look it up as a host,
    /// network, port or protocol name. Use the number instead.
    #[error(
        "filter_bpf: {0:?} is a name; use numbers for hosts, networks, ports and protocols (names are looked up, which can block)"
    )]
    Name(String),
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
    if let Some(name) = names(text).into_iter().next() {
        return Err(BpfError::Name(name));
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

/// The words of the pcap-filter language (libpcap 1.10's scanner), which compile without a
/// lookup. A word not in this list, and not a number or an address, is a name.
const KEYWORDS: &[&str] = &[
    "dst",
    "src",
    "host",
    "net",
    "netmask",
    "mask",
    "port",
    "portrange",
    "proto",
    "protochain",
    "gateway",
    "type",
    "subtype",
    "dir",
    "direction",
    "address1",
    "addr1",
    "address2",
    "addr2",
    "address3",
    "addr3",
    "address4",
    "addr4",
    "ra",
    "ta",
    "less",
    "greater",
    "byte",
    "broadcast",
    "multicast",
    "and",
    "or",
    "not",
    "link",
    "ether",
    "ppp",
    "slip",
    "fddi",
    "tr",
    "wlan",
    "arp",
    "rarp",
    "ip",
    "sctp",
    "tcp",
    "udp",
    "icmp",
    "igmp",
    "igrp",
    "pim",
    "vrrp",
    "carp",
    "ip6",
    "icmp6",
    "ah",
    "esp",
    "atalk",
    "aarp",
    "decnet",
    "lat",
    "sca",
    "moprc",
    "mopdl",
    "iso",
    "esis",
    "es-is",
    "isis",
    "is-is",
    "l1",
    "l2",
    "iih",
    "lsp",
    "snp",
    "csnp",
    "psnp",
    "clnp",
    "stp",
    "ipx",
    "netbeui",
    "vlan",
    "mpls",
    "pppoed",
    "pppoes",
    "geneve",
    "vxlan",
    "lane",
    "llc",
    "metac",
    "bcpi",
    "mtp2",
    "mtp3",
    "opc",
    "dpc",
    "sls",
    "sio",
    "hsls",
    "hopc",
    "hdpc",
    "hsio",
    "inbound",
    "outbound",
    "ifindex",
    "ifname",
    "if",
    "on",
    "rnr",
    "rulenum",
    "reason",
    "rset",
    "ruleset",
    "srnr",
    "subrulenum",
    "action",
    "len",
    "length",
    "fisu",
    "lssu",
    "lsu",
    "msu",
    "radio",
    "icmptype",
    "icmpcode",
    "icmp6type",
    "icmp6code",
    "tcpflags",
    "icmp-echoreply",
    "icmp-unreach",
    "icmp-sourcequench",
    "icmp-redirect",
    "icmp-echo",
    "icmp-routeradvert",
    "icmp-routersolicit",
    "icmp-timxceed",
    "icmp-paramprob",
    "icmp-tstamp",
    "icmp-tstampreply",
    "icmp-ireq",
    "icmp-ireqreply",
    "icmp-maskreq",
    "icmp-maskreply",
    "icmp6-destinationunreach",
    "icmp6-packettoobig",
    "icmp6-timeexceeded",
    "icmp6-parameterproblem",
    "icmp6-echo",
    "icmp6-echoreply",
    "icmp6-multicastlistenerquery",
    "icmp6-multicastlistenerreportv1",
    "icmp6-multicastlistenerdone",
    "icmp6-routersolicit",
    "icmp6-routeradvert",
    "icmp6-neighborsolicit",
    "icmp6-neighboradvert",
    "icmp6-redirect",
    "icmp6-routerrenum",
    "icmp6-nodeinformationquery",
    "icmp6-nodeinformationresponse",
    "icmp6-ineighbordiscoverysolicit",
    "icmp6-ineighbordiscoveryadvert",
    "icmp6-multicastlistenerreportv2",
    "icmp6-homeagentdiscoveryrequest",
    "icmp6-homeagentdiscoveryreply",
    "icmp6-mobileprefixsolicit",
    "icmp6-mobileprefixadvert",
    "icmp6-certpathsolicit",
    "icmp6-certpathadvert",
    "icmp6-multicastrouteradvert",
    "icmp6-multicastroutersolicit",
    "icmp6-multicastrouterterm",
    "tcp-fin",
    "tcp-syn",
    "tcp-rst",
    "tcp-push",
    "tcp-ack",
    "tcp-urg",
    "tcp-ece",
    "tcp-cwr",
    "mgt",
    "ctl",
    "data",
    "assoc-req",
    "assoc-resp",
    "reassoc-req",
    "reassoc-resp",
    "probe-req",
    "probe-resp",
    "beacon",
    "atim",
    "disassoc",
    "auth",
    "deauth",
    "ps-poll",
    "rts",
    "cts",
    "ack",
    "cf-end",
    "cf-end-ack",
    "data-cf-ack",
    "data-cf-poll",
    "data-cf-ack-poll",
    "null",
    "cf-ack",
    "cf-poll",
    "cf-ack-poll",
    "qos-data",
    "qos-data-cf-ack",
    "qos-data-cf-poll",
    "qos-data-cf-ack-poll",
    "qos",
    "qos-cf-poll",
    "qos-cf-ack-poll",
    "nods",
    "tods",
    "fromds",
    "dstods",
];

/// Whether `word` is a number or an address in a form libpcap reads without a lookup:
/// decimal, `0x` hex, IPv4 (possibly partial, as libpcap allows), IPv6, a MAC address, with
/// an optional `/prefix`.
fn is_numeric(word: &str) -> bool {
    let body = word.split_once('/').map_or(word, |(a, p)| if p.bytes().all(|b| b.is_ascii_digit()) { a } else { "" });
    if body.is_empty() {
        return false;
    }
    if body.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return true;
    }
    if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    // IPv6 and MAC addresses always have separators; a bare hex word ("cafe") is a name.
    (body.contains(':') || body.contains('-') || body.matches('.').count() == 2)
        && body.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.' || b == b'-')
        && body.bytes().any(|b| b.is_ascii_digit() || b == b':')
}

/// The words of `text` that libpcap would look up as names (empty: none).
pub fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-' | '/')));
    // A "word" without a letter or digit is an operator (`-`, `/`).
    for word in words.filter(|w| w.bytes().any(|b| b.is_ascii_alphanumeric())) {
        let lower = word.to_ascii_lowercase();
        // libpcap reads `len-14` as one identifier (a name), like this: write `len - 14`.
        if !(KEYWORDS.contains(&lower.as_str()) || is_numeric(word)) {
            out.push(word.to_string());
        }
    }
    out
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
    fn names_are_refused_numbers_and_keywords_are_not() {
        for ok in [
            "udp and dst port 53",
            "host 10.0.0.1 or net 192.168.0.0/16",
            "ip6 and src net 2001:db8::/32",
            "ether host 00:11:22:33:44:55",
            "tcp[tcpflags] & (tcp-syn|tcp-ack) != 0",
            "icmp[icmptype] = icmp-echo",
            "ip[2:2] > 576 and len - 14 > 0",
            "greater 1000 and not broadcast",
            "vlan 100 and portrange 1000-2000",
            "ip proto 47",
            "ether[0] & 0x01 = 0",
        ] {
            assert_eq!(names(ok), Vec::<String>::new(), "{ok}");
            check(ok, 1, 65535).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        assert_eq!(names("host example.com or port http"), ["example.com", "http"]);
        assert_eq!(names("len-14 > 0"), ["len-14"], "libpcap reads it as one name");
        let e = check("src host gateway-7", 1, 65535).unwrap_err();
        assert!(matches!(e, BpfError::Name(ref n) if n == "gateway-7"), "{e}");
        assert!(e.to_string().starts_with("filter_bpf:") && e.to_string().contains("use numbers"), "{e}");
    }

    #[test]
    fn refuses_bad_filters() {
        for bad in [
            "tcp port 80; rm -rf /",
            "host example.com",
            "port http",
            "dst port domain and udp",
            "net corp-lan",
            "host cafe",
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
