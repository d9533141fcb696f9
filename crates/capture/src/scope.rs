//! An account's scope on the packets: only traffic from or to its own prefixes, or
//! everything when the operator made it unrestricted. It is applied in user space, after the
//! capture's own filter, so the packets it leaves out are counted (`excluded`); the filter
//! text is printed from parsed prefixes only.

use crate::filter::{FilterError, IpPrefix};

/// What one account may capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the operator's choice for this account).
    Unrestricted,
    /// Packets whose source or destination is in one of these prefixes (never empty).
    Prefixes(Vec<IpPrefix>),
}

/// Why a scope is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    /// No scope came with the work: it is refused rather than run unrestricted.
    #[error("the work carries no account scope; it is refused (a coordinator must send the account's prefixes)")]
    Missing,
    /// Restricted, with no prefix: it could capture nothing.
    #[error("prefixes: an account restricted to its prefixes needs at least one")]
    Empty,
    /// A prefix does not parse.
    #[error("{0}")]
    Prefix(#[from] FilterError),
    /// One prefix lies inside another.
    #[error("prefixes: {inner} lies inside {outer}; list each network once")]
    Overlap {
        /// The smaller one.
        inner: String,
        /// The one containing it.
        outer: String,
    },
}

impl Scope {
    /// Builds a scope from the wire form (`None`: none was sent).
    pub fn from_parts(present: bool, unrestricted: bool, prefixes: &[String]) -> Result<Scope, ScopeError> {
        if !present {
            return Err(ScopeError::Missing);
        }
        if unrestricted {
            return Ok(Scope::Unrestricted);
        }
        Ok(Scope::Prefixes(parse_prefixes(prefixes)?))
    }

    /// The pcap-filter expression matching the scope's traffic (`net a or net b ...`);
    /// empty for an unrestricted scope.
    pub fn to_bpf(&self) -> String {
        match self {
            Scope::Unrestricted => String::new(),
            Scope::Prefixes(prefixes) => {
                prefixes.iter().map(|p| format!("net {}/{}", p.addr, p.prefix)).collect::<Vec<_>>().join(" or ")
            }
        }
    }
}

/// Parses and checks a list of prefixes: at least one, each valid, none inside another.
pub fn parse_prefixes(texts: &[String]) -> Result<Vec<IpPrefix>, ScopeError> {
    if texts.is_empty() {
        return Err(ScopeError::Empty);
    }
    let prefixes = texts.iter().map(|t| IpPrefix::parse("prefixes", t.trim())).collect::<Result<Vec<IpPrefix>, _>>()?;
    for (i, a) in prefixes.iter().enumerate() {
        for (j, b) in prefixes.iter().enumerate() {
            if i != j && b.prefix <= a.prefix && b.contains(a.addr) {
                return Err(ScopeError::Overlap { inner: texts[i].clone(), outer: texts[j].clone() });
            }
        }
    }
    Ok(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scopes_parse_print_and_refuse_what_they_should() {
        let scope = Scope::from_parts(true, false, &strings(&["198.51.100.0/24", "2001:db8::/32"])).unwrap();
        assert_eq!(scope.to_bpf(), "net 198.51.100.0/24 or net 2001:db8::/32");
        crate::compile_offline(1, 160, &scope.to_bpf()).unwrap();
        assert_eq!(Scope::from_parts(true, true, &[]).unwrap(), Scope::Unrestricted);
        assert_eq!(Scope::from_parts(false, true, &[]), Err(ScopeError::Missing));
        assert_eq!(Scope::from_parts(true, false, &[]), Err(ScopeError::Empty));
        let overlap = parse_prefixes(&strings(&["10.0.0.0/8", "10.1.0.0/16"])).unwrap_err();
        assert!(overlap.to_string().contains("10.1.0.0/16 lies inside 10.0.0.0/8"), "{overlap}");
        assert!(matches!(parse_prefixes(&strings(&["10.0.0.0/8", "10.0.0.0/8"])), Err(ScopeError::Overlap { .. })));
        assert!(parse_prefixes(&strings(&["10.0.0.1/8"])).unwrap_err().to_string().contains("prefixes"));
        assert!(parse_prefixes(&strings(&["not an address"])).is_err());
        assert!(parse_prefixes(&strings(&["10.0.0.0/8", "2001:db8::/32"])).is_ok());
    }
}
