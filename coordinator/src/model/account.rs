//! Accounts' scopes: which traffic an account may capture (its own IP prefixes, or all of
//! it when the operator made it unrestricted) and where (PoP names or prefixes of them).

use serde::{Deserialize, Serialize};

/// An account's scope as the operator set it (`accounts/{account}` in the state store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountScope {
    /// Captures everything, wherever it may capture.
    #[serde(default)]
    pub unrestricted: bool,
    /// The account's own networks (CIDR, IPv4 or IPv6), as given; checked on the way in.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Where it may capture: PoP names, prefixes ending in `*`, or `*` (everywhere).
    #[serde(default = "everywhere")]
    pub pops: Vec<String>,
    /// RFC 3339; set when stored.
    #[serde(default)]
    pub updated: String,
    /// `api`, `config` or `file:PATH`: where it was set.
    #[serde(default)]
    pub source: String,
}

fn everywhere() -> Vec<String> {
    vec!["*".into()]
}

impl AccountScope {
    /// What `edgecap up` and `--unscoped-accounts unrestricted` give an account without a
    /// scope of its own.
    pub(crate) fn unrestricted() -> Self {
        Self {
            unrestricted: true,
            prefixes: Vec::new(),
            pops: everywhere(),
            updated: String::new(),
            source: "default".into(),
        }
    }

    /// The restriction a capture carries (to its agents: the prefixes).
    pub(crate) fn capture_scope(&self) -> CaptureScope {
        CaptureScope { unrestricted: self.unrestricted, prefixes: self.prefixes.clone(), pops: self.pops.clone() }
    }

    /// Checks the scope; the message names the field.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.pops.is_empty() || self.pops.len() > 1000 {
            return Err("pops: name 1 to 1000 PoPs, prefixes ending in *, or *".into());
        }
        for p in &self.pops {
            let name = p.strip_suffix('*').unwrap_or(p);
            if !(name.is_empty() && p == "*") {
                edgecap_tls::validate_name(name).map_err(|e| format!("pops: {p:?}: {e}"))?;
            }
        }
        if self.unrestricted {
            if !self.prefixes.is_empty() {
                return Err("prefixes: an unrestricted account captures everything; give no prefixes".into());
            }
            return Ok(());
        }
        if self.prefixes.len() > 10_000 {
            return Err("prefixes: at most 10000".into());
        }
        edgecap_capture::scope::parse_prefixes(&self.prefixes).map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The restriction a capture was created with, kept on its record and its jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CaptureScope {
    #[serde(default)]
    pub unrestricted: bool,
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Where the account may capture (see [`AccountScope::pops`]).
    #[serde(default = "everywhere")]
    pub pops: Vec<String>,
}

impl CaptureScope {
    /// Unrestricted, everywhere (records and jobs from before scopes existed).
    pub(crate) fn everything() -> Self {
        Self { unrestricted: true, prefixes: Vec::new(), pops: everywhere() }
    }

    /// Whether the account may capture at `pop` (exact, case-insensitive; `prefix*`; `*`).
    pub(crate) fn pop_allowed(&self, pop: &str) -> bool {
        let pop = pop.to_ascii_lowercase();
        self.pops.iter().any(|p| {
            let p = p.to_ascii_lowercase();
            match p.strip_suffix('*') {
                Some(prefix) => pop.starts_with(prefix),
                None => p == pop,
            }
        })
    }

    /// Its pcap-filter text (`net a or net b`, from prefixes checked when the scope was
    /// set; agents parse them again themselves); empty when unrestricted.
    pub(crate) fn to_bpf(&self) -> String {
        if self.unrestricted {
            return String::new();
        }
        self.prefixes.iter().map(|p| format!("net {p}")).collect::<Vec<_>>().join(" or ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(prefixes: &[&str], pops: &[&str]) -> AccountScope {
        AccountScope {
            unrestricted: false,
            prefixes: prefixes.iter().map(|s| s.to_string()).collect(),
            pops: pops.iter().map(|s| s.to_string()).collect(),
            updated: String::new(),
            source: String::new(),
        }
    }

    #[test]
    fn scopes_are_checked_field_by_field() {
        assert!(scope(&["198.51.100.0/24"], &["ams*", "ord01"]).validate().is_ok());
        assert!(scope(&[], &["*"]).validate().unwrap_err().starts_with("prefixes"));
        assert!(scope(&["10.0.0.0/8", "10.2.0.0/16"], &["*"]).validate().unwrap_err().starts_with("prefixes"));
        assert!(scope(&["10.0.0.1/8"], &["*"]).validate().unwrap_err().starts_with("prefixes"));
        assert!(scope(&["10.0.0.0/8"], &[]).validate().unwrap_err().starts_with("pops"));
        assert!(scope(&["10.0.0.0/8"], &["../x"]).validate().unwrap_err().starts_with("pops"));
        let mut open = AccountScope::unrestricted();
        assert!(open.validate().is_ok());
        open.prefixes = vec!["10.0.0.0/8".into()];
        assert!(open.validate().unwrap_err().starts_with("prefixes"));
        let s = scope(&["198.51.100.0/24"], &["ams*", "ord01"]).capture_scope();
        assert!(s.pop_allowed("AMS02") && s.pop_allowed("ord01") && !s.pop_allowed("ord02"));
        assert_eq!(s.to_bpf(), "net 198.51.100.0/24");
        assert_eq!(AccountScope::unrestricted().capture_scope().to_bpf(), "");
    }
}
