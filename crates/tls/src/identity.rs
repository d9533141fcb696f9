//! Identity carried in certificates as a URI SAN.

use crate::{Result, TlsError, validate_name};

const AGENT_PREFIX: &str = "spiffe://edgecap/pop/";
const COORDINATOR_PREFIX: &str = "spiffe://edgecap/coordinator/";

/// Who a certificate says its holder is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// An agent (`spiffe://edgecap/pop/{pop}/agent/{agent_id}`): it may act for its PoP and
    /// no other.
    Agent {
        /// The agent's id; a valid name ([`validate_name`]), as is `pop`.
        agent_id: String,
        /// The PoP the agent runs in.
        pop: String,
    },
    /// A coordinator (`spiffe://edgecap/coordinator/{name}`).
    Coordinator {
        /// The coordinator's name, as given to [`crate::pki::issue_coordinator`].
        name: String,
    },
}

impl PeerIdentity {
    /// The URI SAN for this identity.
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Agent { agent_id, pop } => format!("{AGENT_PREFIX}{pop}/agent/{agent_id}"),
            PeerIdentity::Coordinator { name } => format!("{COORDINATOR_PREFIX}{name}"),
        }
    }

    /// Parses a URI SAN; `None` if it is not an edgecap identity.
    pub fn from_uri(uri: &str) -> Option<Self> {
        if let Some(rest) = uri.strip_prefix(AGENT_PREFIX) {
            let (pop, agent_id) = rest.split_once("/agent/")?;
            validate_name(pop).ok()?;
            validate_name(agent_id).ok()?;
            return Some(PeerIdentity::Agent { agent_id: agent_id.to_string(), pop: pop.to_string() });
        }
        let name = uri.strip_prefix(COORDINATOR_PREFIX)?;
        validate_name(name).ok()?;
        Some(PeerIdentity::Coordinator { name: name.to_string() })
    }
}

/// Reads the edgecap identity from a DER certificate (the first matching URI SAN).
/// The certificate's chain must already have been verified by the TLS layer.
pub fn peer_identity(der: &[u8]) -> Result<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::NoIdentity(format!("unparseable certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::NoIdentity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| TlsError::NoIdentity("no subjectAltName".into()))?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(identity) = PeerIdentity::from_uri(uri)
        {
            return Ok(identity);
        }
    }
    Err(TlsError::NoIdentity("no spiffe://edgecap/ URI in subjectAltName".into()))
}
