//! What a stored packet's headers say, read once when the lookback stores it, so that a
//! query can pass over packets that cannot match its `filter_v1` without touching their
//! bytes or running BPF on them.
//!
//! The summary only ever *excludes*: [`Prefilter::may_match`] is false only for a packet that
//! libpcap's own program for the same `filter_v1` ([`crate::FilterV1::to_bpf`]) would refuse,
//! and every packet it lets through is still judged by that program. So it reads the headers
//! exactly as the generated BPF does (the Ethernet type at offset 12, no VLAN tags; the IPv4
//! header length from its IHL; ports only of TCP, UDP and SCTP, and for IPv4 only in a first
//! fragment), and where it is unsure (another link type, a truncated header, an IPv6
//! fragment header) it says "unknown", which excludes nothing. A property test holds it to
//! libpcap's verdict on generated packets.

use crate::FilterV1;

/// The Ethernet link type (DLT_EN10MB), the only one summarized.
const DLT_EN10MB: i32 = 1;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPV6_FRAGMENT: u8 = 44;

/// How much of a packet's headers is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Known {
    /// Nothing: it is not summarized (other link types, short or unusual headers).
    #[default]
    Nothing,
    /// The IP protocol (IPv4's protocol, IPv6's fixed next header), no ports.
    Protocol,
    /// The IP protocol and TCP/UDP/SCTP ports.
    Ports,
}

/// A packet's headers as far as a `filter_v1` query needs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// What the other fields can be trusted for.
    pub known: Known,
    /// IP protocol number, when known.
    pub protocol: u8,
    /// Source port, when ports are known.
    pub source_port: u16,
    /// Destination port, when ports are known.
    pub destination_port: u16,
}

/// TCP, UDP and SCTP: the protocols whose ports BPF's `port` reads.
fn carries_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 132)
}

fn be16(data: &[u8], at: usize) -> Option<u16> {
    data.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

impl Summary {
    /// Reads the headers of a packet of link type `linktype` (its stored, maybe truncated,
    /// bytes).
    pub fn read(linktype: i32, data: &[u8]) -> Self {
        if linktype != DLT_EN10MB {
            return Self::default();
        }
        let Some(ethertype) = be16(data, 12) else { return Self::default() };
        let (protocol, ports_at) = match ethertype {
            ETHERTYPE_IPV4 => {
                let (Some(&vihl), Some(&protocol), Some(fragment)) = (data.get(14), data.get(23), be16(data, 20))
                else {
                    return Self::default();
                };
                // Ports only in a first fragment, at the offset the IHL gives (as BPF reads them).
                let first = fragment & 0x1fff == 0;
                (protocol, first.then_some(14 + 4 * usize::from(vihl & 0x0f)))
            }
            ETHERTYPE_IPV6 => {
                let Some(&next) = data.get(20) else { return Self::default() };
                if next == IPV6_FRAGMENT {
                    // libpcap's `ip6 proto` also looks past a fragment header: say nothing.
                    return Self::default();
                }
                (next, Some(14 + 40))
            }
            _ => return Self::default(),
        };
        let with_ports = carries_ports(protocol);
        match ports_at.filter(|_| with_ports).and_then(|at| Some((be16(data, at)?, be16(data, at + 2)?))) {
            Some((source_port, destination_port)) => {
                Self { known: Known::Ports, protocol, source_port, destination_port }
            }
            None => Self { known: Known::Protocol, protocol, ..Self::default() },
        }
    }
}

/// The parts of a `filter_v1` that a [`Summary`] can rule out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefilter {
    protocol: Option<u8>,
    source_port: Option<u16>,
    destination_port: Option<u16>,
}

impl Prefilter {
    /// The prefilter of a `filter_v1` (its fields are ANDed, so each is necessary).
    pub fn new(filter: &FilterV1) -> Self {
        Self { protocol: filter.protocol, source_port: filter.source_port, destination_port: filter.destination_port }
    }

    /// False only for a packet the filter cannot match.
    pub fn may_match(&self, s: &Summary) -> bool {
        let protocol_ok = match (s.known, self.protocol) {
            (Known::Nothing, _) | (_, None) => true,
            (_, Some(p)) => s.protocol == p,
        };
        let ports_ok = s.known != Known::Ports
            || (self.source_port.is_none_or(|p| p == s.source_port)
                && self.destination_port.is_none_or(|p| p == s.destination_port));
        // A port filter on a packet whose protocol is known to carry no ports cannot match.
        let no_ports = s.known == Known::Protocol
            && !carries_ports(s.protocol)
            && (self.source_port.is_some() || self.destination_port.is_some());
        protocol_ok && ports_ok && !no_ports
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn ipv4(ihl: u8, fragment: u16, protocol: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut h = vec![0u8; (4 * usize::from(ihl)).max(20)];
        h[0] = 0x40 | ihl;
        h[6..8].copy_from_slice(&fragment.to_be_bytes());
        h[9] = protocol;
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        h.extend_from_slice(&[0; 8]);
        h
    }

    #[test]
    fn reads_what_bpf_reads() {
        let udp = frame(ETHERTYPE_IPV4, &ipv4(5, 0, 17, 1000, 53));
        let s = Summary::read(1, &udp);
        assert_eq!(s, Summary { known: Known::Ports, protocol: 17, source_port: 1000, destination_port: 53 });
        // IP options: the ports move with the IHL.
        let s = Summary::read(1, &frame(ETHERTYPE_IPV4, &ipv4(7, 0, 6, 1, 2)));
        assert_eq!((s.source_port, s.destination_port), (1, 2));
        // A later fragment has no ports; a truncated header says nothing; ICMP has no ports.
        assert_eq!(Summary::read(1, &frame(ETHERTYPE_IPV4, &ipv4(5, 100, 17, 1, 2))).known, Known::Protocol);
        assert_eq!(Summary::read(1, &udp[..20]).known, Known::Nothing);
        assert_eq!(Summary::read(1, &udp[..36]).known, Known::Protocol);
        assert_eq!(Summary::read(1, &frame(ETHERTYPE_IPV4, &ipv4(5, 0, 1, 0, 0))).known, Known::Protocol);
        // Other link types and a VLAN tag are not summarized.
        assert_eq!(Summary::read(113, &udp).known, Known::Nothing);
        assert_eq!(Summary::read(1, &frame(0x8100, &ipv4(5, 0, 17, 1, 2))).known, Known::Nothing);
        let port53 = Prefilter::new(&FilterV1 { destination_port: Some(53), ..Default::default() });
        assert!(port53.may_match(&Summary::read(1, &udp)));
        assert!(!port53.may_match(&Summary::read(1, &frame(ETHERTYPE_IPV4, &ipv4(5, 0, 17, 53, 54)))));
        assert!(!port53.may_match(&Summary::read(1, &frame(ETHERTYPE_IPV4, &ipv4(5, 0, 1, 0, 53)))));
        assert!(port53.may_match(&Summary::default()));
    }

    fn packet() -> impl Strategy<Value = Vec<u8>> {
        let ethertype = prop_oneof![Just(ETHERTYPE_IPV4), Just(ETHERTYPE_IPV6), Just(0x8100u16), any::<u16>()];
        let protocol = prop_oneof![Just(6u8), Just(17), Just(132), Just(1), Just(44), Just(58), any::<u8>()];
        let port = prop_oneof![Just(53u16), Just(80), any::<u16>()];
        (
            ethertype,
            0u8..16,
            prop_oneof![Just(0u16), Just(0x2000), any::<u16>()],
            protocol,
            port.clone(),
            port,
            0usize..80,
        )
            .prop_map(|(ethertype, ihl, fragment, protocol, sport, dport, cut)| {
                let l3 = if ethertype == ETHERTYPE_IPV6 {
                    let mut h = vec![0u8; 40];
                    h[0] = 0x60;
                    h[6] = protocol;
                    if protocol == IPV6_FRAGMENT {
                        h.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
                    }
                    h.extend_from_slice(&sport.to_be_bytes());
                    h.extend_from_slice(&dport.to_be_bytes());
                    h.extend_from_slice(&[0; 8]);
                    h
                } else {
                    ipv4(ihl, fragment, protocol, sport, dport)
                };
                let mut f = frame(ethertype, &l3);
                f.truncate(f.len().saturating_sub(cut).max(1));
                f
            })
    }

    fn filter() -> impl Strategy<Value = FilterV1> {
        let protocol = prop_oneof![Just(None), Just(Some(6u8)), Just(Some(17)), Just(Some(1)), Just(Some(44))];
        let port = prop_oneof![Just(None), Just(Some(53u16)), Just(Some(80))];
        (protocol, port.clone(), port).prop_map(|(protocol, source_port, destination_port)| FilterV1 {
            protocol,
            source_port,
            destination_port,
            ..Default::default()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, max_global_rejects: 20_000, ..ProptestConfig::default() })]
        /// What the prefilter rules out, libpcap's program for the same filter refuses too.
        #[test]
        fn never_excludes_what_libpcap_matches(data in packet(), filter in filter()) {
            let expr = filter.to_bpf();
            prop_assume!(!expr.is_empty());
            // (Contradictions, such as a port with ICMP, do not compile: nothing to compare.)
            let program = crate::compile_offline(1, 65_535, &expr);
            prop_assume!(program.is_ok());
            let program = program.unwrap();
            let bpf = crate::offline::matches(&program, &data, data.len() as u32);
            let ours = Prefilter::new(&filter).may_match(&Summary::read(1, &data));
            prop_assert!(ours || !bpf, "{expr}: libpcap matches {data:02x?}, the prefilter excluded it");
        }
    }
}
