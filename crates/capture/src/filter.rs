//! `filter_v1`: source/destination address, source/destination port, IP protocol.
//!
//! Fields are ANDed; an absent field matches everything. Addresses are IPv4 or IPv6, with an
//! optional CIDR prefix (an extension over Cloudflare's single addresses). Port and protocol
//! filters match both IPv4 and IPv6 traffic.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a filter field is not acceptable. Each names its field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text is not an IP address, or what follows its `/` is not a prefix length of 1 to
    /// 3 decimal digits.
    #[error("{field}: {value:?} is not an IPv4 or IPv6 address (optionally with a /prefix)")]
    Address {
        /// The field, as the caller names it (`source_address`, ...).
        field: &'static str,
        /// The text, as given.
        value: String,
    },
    /// The prefix length is longer than the address (more than 32 for IPv4, 128 for IPv6).
    #[error("{field}: prefix length {prefix} is out of range for {value} (max {max})")]
    PrefixRange {
        /// The field, as the caller names it.
        field: &'static str,
        /// The text, as given.
        value: String,
        /// The prefix length given.
        prefix: u32,
        /// The longest prefix for that address family.
        max: u8,
    },
    /// The address has bits set after the prefix (`10.0.0.1/24`), so it is not a network.
    #[error("{field}: {value} has bits set outside the /{prefix} prefix; did you mean {network}/{prefix}?")]
    HostBits {
        /// The field, as the caller names it.
        field: &'static str,
        /// The text, as given.
        value: String,
        /// The prefix length given.
        prefix: u8,
        /// The address with the bits after the prefix cleared: what was probably meant.
        network: IpAddr,
    },
    /// Source and destination addresses are one IPv4 and one IPv6.
    #[error("source_address and destination_address are of different IP versions; no packet can match")]
    MixedFamilies,
    /// A port is set together with a protocol that has none (not TCP, UDP or SCTP: see
    /// [`PORT_PROTOCOLS`]).
    #[error(
        "protocol: {protocol} has no ports, so no packet can match a port filter with it (ports exist for 6 TCP, 17 UDP, 132 SCTP)"
    )]
    PortsWithoutPorts {
        /// The IP protocol number given.
        protocol: u8,
    },
}

/// IP protocols that libpcap's `port` keywords look at.
pub const PORT_PROTOCOLS: [u8; 3] = [6, 17, 132];

/// An address with a prefix length (a single host when the prefix is full).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IpPrefix {
    /// The network address. From [`IpPrefix::parse`] (and deserializing), no bit after
    /// `prefix` is set.
    pub addr: IpAddr,
    /// Prefix length, bits: at most 32 for IPv4, 128 for IPv6.
    pub prefix: u8,
}

impl IpPrefix {
    fn max_prefix(addr: &IpAddr) -> u8 {
        if addr.is_ipv4() { 32 } else { 128 }
    }

    /// Whether the prefix is full (/32, /128): one address, written without a prefix and
    /// filtered as `host` rather than `net`.
    pub fn is_host(&self) -> bool {
        self.prefix == Self::max_prefix(&self.addr)
    }

    /// Parses `addr` or `addr/len`, naming `field` in errors.
    pub fn parse(field: &'static str, text: &str) -> Result<Self, FilterError> {
        let bad = || FilterError::Address { field, value: text.to_string() };
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = IpAddr::from_str(addr_text).map_err(|_| bad())?;
        let max = Self::max_prefix(&addr);
        let prefix = match prefix_text {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let n: u32 = p.parse().map_err(|_| bad())?;
                if n > u32::from(max) {
                    return Err(FilterError::PrefixRange { field, value: text.to_string(), prefix: n, max });
                }
                n as u8
            }
        };
        let network = mask(addr, prefix);
        if network != addr {
            return Err(FilterError::HostBits { field, value: text.to_string(), prefix, network });
        }
        Ok(IpPrefix { addr, prefix })
    }

    /// Whether `ip` falls inside this prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() { write!(f, "{}", self.addr) } else { write!(f, "{}/{}", self.addr, self.prefix) }
    }
}

impl From<IpPrefix> for String {
    fn from(p: IpPrefix) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for IpPrefix {
    type Error = FilterError;
    fn try_from(s: String) -> Result<Self, FilterError> {
        IpPrefix::parse("address", &s)
    }
}

/// A validated `filter_v1`. Construct it from parsed parts only; its BPF is built from
/// those parts, never from user text.
///
/// Deserializing refuses unknown fields: a misspelt field would otherwise silently widen a
/// capture to everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterV1 {
    /// Packets from this address or network (`src host` / `src net`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_source")]
    pub source_address: Option<IpPrefix>,
    /// Packets to this address or network (`dst host` / `dst net`).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "de_destination")]
    pub destination_address: Option<IpPrefix>,
    /// Packets from this TCP, UDP or SCTP port (`src port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_port: Option<u16>,
    /// Packets to this TCP, UDP or SCTP port (`dst port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<u16>,
    /// IP protocol number (6 TCP, 17 UDP, ...), in IPv4 or IPv6. For IPv6 it is the fixed
    /// header's next header: libpcap does not follow extension headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
}

fn de_address<'de, D: serde::Deserializer<'de>>(d: D, field: &'static str) -> Result<Option<IpPrefix>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| IpPrefix::parse(field, &t)).transpose().map_err(serde::de::Error::custom)
}

fn de_source<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpPrefix>, D::Error> {
    de_address(d, "source_address")
}

fn de_destination<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<IpPrefix>, D::Error> {
    de_address(d, "destination_address")
}

impl FilterV1 {
    /// Refuses combinations that can never match a packet (libpcap would reject them too,
    /// with a less helpful message).
    pub fn check_satisfiable(&self) -> Result<(), FilterError> {
        if let (Some(s), Some(d)) = (&self.source_address, &self.destination_address)
            && s.addr.is_ipv4() != d.addr.is_ipv4()
        {
            return Err(FilterError::MixedFamilies);
        }
        if let Some(protocol) = self.protocol
            && (self.source_port.is_some() || self.destination_port.is_some())
            && !PORT_PROTOCOLS.contains(&protocol)
        {
            return Err(FilterError::PortsWithoutPorts { protocol });
        }
        Ok(())
    }

    /// Whether no field is set: the filter matches every packet and its BPF text is empty.
    pub fn is_empty(&self) -> bool {
        *self == FilterV1::default()
    }

    /// The pcap-filter expression for this filter; empty when it matches everything.
    pub fn to_bpf(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let addr = |dir: &str, p: &IpPrefix| {
            if p.is_host() { format!("{dir} host {}", p.addr) } else { format!("{dir} net {}/{}", p.addr, p.prefix) }
        };
        if let Some(p) = &self.source_address {
            parts.push(addr("src", p));
        }
        if let Some(p) = &self.destination_address {
            parts.push(addr("dst", p));
        }
        if let Some(port) = self.source_port {
            parts.push(format!("src port {port}"));
        }
        if let Some(port) = self.destination_port {
            parts.push(format!("dst port {port}"));
        }
        if let Some(proto) = self.protocol {
            parts.push(format!("(ip proto {proto} or ip6 proto {proto})"));
        }
        parts.join(" and ")
    }
}

/// The expression a capture runs: `filter_v1`'s BPF text and the `filter_bpf` extension, both
/// already validated, ANDed (either may be empty; empty matches everything).
pub fn combine(v1: &str, bpf: &str) -> String {
    match (v1, bpf) {
        (v1, "") => v1.to_string(),
        ("", bpf) => bpf.to_string(),
        (v1, bpf) => format!("({v1}) and ({bpf})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_combined_with_parentheses() {
        assert_eq!(combine("", ""), "");
        assert_eq!(combine("udp", ""), "udp");
        assert_eq!(combine("", "tcp or udp"), "tcp or udp");
        assert_eq!(combine("src port 1", "tcp or udp"), "(src port 1) and (tcp or udp)");
    }

    #[test]
    fn bpf_is_built_from_typed_parts() {
        assert_eq!(FilterV1::default().to_bpf(), "");
        let f = FilterV1 {
            source_address: Some(IpPrefix::parse("s", "10.0.0.1").unwrap()),
            destination_address: Some(IpPrefix::parse("d", "2001:db8::/32").unwrap()),
            source_port: Some(0),
            destination_port: Some(65535),
            protocol: Some(17),
        };
        assert_eq!(
            f.to_bpf(),
            "src host 10.0.0.1 and dst net 2001:db8::/32 and src port 0 and dst port 65535 and (ip proto 17 or ip6 proto 17)"
        );
    }

    #[test]
    fn json_refuses_unknown_fields_and_names_bad_ones() {
        let ok: FilterV1 = serde_json::from_str(r#"{"protocol":17,"source_address":"10.0.0.0/8"}"#).unwrap();
        assert_eq!(ok.to_bpf(), "src net 10.0.0.0/8 and (ip proto 17 or ip6 proto 17)");
        let round: FilterV1 = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
        assert_eq!(round, ok);
        assert!(serde_json::from_str::<FilterV1>(r#"{"portz":80}"#).unwrap_err().to_string().contains("portz"));
        let e = serde_json::from_str::<FilterV1>(r#"{"destination_address":"1.2.3.4 or 1=1"}"#).unwrap_err();
        assert!(e.to_string().contains("destination_address"), "{e}");
        assert!(serde_json::from_str::<FilterV1>(r#"{"source_port":70000}"#).is_err());
    }

    #[test]
    fn address_parsing() {
        assert!(IpPrefix::parse("f", "192.0.2.1").unwrap().is_host());
        assert_eq!(IpPrefix::parse("f", "192.0.2.0/24").unwrap().prefix, 24);
        assert_eq!(IpPrefix::parse("f", "::1").unwrap().prefix, 128);
        for bad in [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "host 1.2.3.4",
            "1.2.3.4 or 1=1",
            "1.2.3.4/",
            "1.2.3.4/x",
            "1.2.3.4/+1",
            "::g",
            "1.2.3.4; rm -rf /",
            "$(id)",
            "1.2.3.4/0024",
        ] {
            assert!(IpPrefix::parse("f", bad).is_err(), "{bad:?}");
        }
        assert!(matches!(IpPrefix::parse("f", "1.2.3.4/33"), Err(FilterError::PrefixRange { .. })));
        assert!(matches!(IpPrefix::parse("f", "10.0.0.1/24"), Err(FilterError::HostBits { .. })));
        let err = IpPrefix::parse("source_address", "nope").unwrap_err().to_string();
        assert!(err.starts_with("source_address:"), "{err}");
    }

    #[test]
    fn contains() {
        let p = IpPrefix::parse("f", "10.1.0.0/16").unwrap();
        assert!(p.contains("10.1.200.3".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        assert!(!p.contains("::1".parse().unwrap()));
        assert!(IpPrefix::parse("f", "0.0.0.0/0").unwrap().contains("1.1.1.1".parse().unwrap()));
    }

    #[test]
    fn satisfiable_expressions_compile_and_unsatisfiable_ones_are_refused_first() {
        let p = |s| IpPrefix::parse("f", s).unwrap();
        let mut f = FilterV1 {
            source_address: Some(p("fe80::/10")),
            destination_address: Some(p("2001:db8::7")),
            source_port: Some(53),
            destination_port: Some(0),
            protocol: Some(17),
        };
        f.check_satisfiable().unwrap();
        crate::compile_offline(1, 160, &f.to_bpf()).unwrap();
        crate::compile_offline(1, 160, "").unwrap();
        for proto in [0u8, 1, 58, 255] {
            let g = FilterV1 { protocol: Some(proto), ..Default::default() };
            g.check_satisfiable().unwrap();
            crate::compile_offline(1, 160, &g.to_bpf()).unwrap();
        }
        f.destination_address = Some(p("192.0.2.7"));
        assert_eq!(f.check_satisfiable(), Err(FilterError::MixedFamilies));
        assert!(crate::compile_offline(1, 160, &f.to_bpf()).is_err(), "libpcap agrees");
        let g = FilterV1 { protocol: Some(1), destination_port: Some(80), ..Default::default() };
        assert_eq!(g.check_satisfiable(), Err(FilterError::PortsWithoutPorts { protocol: 1 }));
        assert!(crate::compile_offline(1, 160, &g.to_bpf()).is_err(), "libpcap agrees");
    }
}
