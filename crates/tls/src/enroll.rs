//! Certificates for agents that enroll: the agent makes its key and a certificate signing
//! request ([`key_and_csr`]) and never sends the key anywhere; the coordinator signs the
//! request's public key into a short-lived certificate whose identity it chooses itself
//! ([`CaSigner::sign_agent`]); anything the request claims (subject, names) is ignored.

use std::path::Path;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::{PeerIdentity, Result, TlsError, validate_name};

/// A new private key (PEM, to keep on the node) and a certificate signing request for it.
pub fn key_and_csr(agent_id: &str, pop: &str) -> Result<(String, String)> {
    validate_name(agent_id)?;
    validate_name(pop)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{agent_id}.{pop}"));
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// A certificate the CA signed.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The certificate, PEM.
    pub pem: String,
    /// Its serial number, lowercase hex (what revocation names).
    pub serial: String,
    /// When it stops being valid.
    pub not_after: OffsetDateTime,
}

/// The CA's certificate and key, to sign agents' requests with (coordinators that enroll
/// agents hold it; nodes never do).
pub struct CaSigner {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaSigner")
    }
}

impl CaSigner {
    /// Loads `ca.pem` and its key.
    pub fn load(ca_cert: &Path, ca_key: &Path) -> Result<Self> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Io { path: p.display().to_string(), source })
        };
        let key = KeyPair::from_pem(&read(ca_key)?)
            .map_err(|e| TlsError::Pem { path: ca_key.display().to_string(), message: e.to_string() })?;
        let issuer = Issuer::from_ca_cert_pem(&read(ca_cert)?, key)
            .map_err(|e| TlsError::Pem { path: ca_cert.display().to_string(), message: e.to_string() })?;
        Ok(Self { issuer })
    }

    /// Signs the public key of `csr_pem` into a client certificate for agent `agent_id` of
    /// `pop`, valid for `lifetime` (from five minutes ago, for clock skew).
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        agent_id: &str,
        pop: &str,
        lifetime: std::time::Duration,
    ) -> Result<Signed> {
        validate_name(agent_id)?;
        validate_name(pop)?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{agent_id}.{pop}"));
        dn.push(DnType::OrganizationName, "edgecap");
        params.distinguished_name = dn;
        let uri = PeerIdentity::Agent { agent_id: agent_id.to_string(), pop: pop.to_string() }.uri();
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).map_err(|_| TlsError::Verifier("no randomness for a serial".into()))?;
        // 0x40..=0x7f first: positive, and no leading zero for DER to drop, so the hex of
        // these bytes is the hex of the serial as encoded.
        serial[0] = 0x40 | (serial[0] & 0x3f);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = OffsetDateTime::now_utc();
        let not_after = now + Duration::seconds(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
        params.not_before = now - Duration::minutes(5);
        params.not_after = not_after;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer)?;
        Ok(Signed { pem: cert.pem(), serial: edgecap_common::hex(&serial), not_after })
    }
}

/// The serial number of a DER certificate, as [`normalize_serial`] writes it (and as
/// [`Signed::serial`] gives it).
pub fn serial(der: &[u8]) -> Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::NoIdentity(format!("unparseable certificate: {e}")))?;
    Ok(normalize_serial(&edgecap_common::hex(cert.tbs_certificate.raw_serial())))
}

/// A serial number as edgecap compares them: lowercase hex without `0x`, colons or leading
/// zeros (so `openssl x509 -serial` output and DER's sign byte compare equal).
pub fn normalize_serial(text: &str) -> String {
    let hex: String = text.trim().trim_start_matches("0x").chars().filter(|c| *c != ':').collect();
    let trimmed = hex.to_ascii_lowercase().trim_start_matches('0').to_string();
    if trimmed.is_empty() { "0".into() } else { trimmed }
}

/// When a PEM certificate file stops being valid (Unix seconds), for renewal.
pub fn not_after(pem_path: &Path) -> Result<i64> {
    validity(pem_path).map(|(_, not_after)| not_after)
}

/// The validity of a PEM certificate file: not before, not after (Unix seconds).
pub fn validity(pem_path: &Path) -> Result<(i64, i64)> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::pem_file_iter(pem_path)
        .map_err(|e| TlsError::Pem { path: pem_path.display().to_string(), message: e.to_string() })?
        .next()
        .ok_or_else(|| TlsError::Pem { path: pem_path.display().to_string(), message: "no certificate".into() })?
        .map_err(|e| TlsError::Pem { path: pem_path.display().to_string(), message: e.to_string() })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| TlsError::NoIdentity(format!("unparseable certificate: {e}")))?;
    Ok((cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_a_certificate_with_the_identity_the_ca_chooses() {
        let dir = tempfile::tempdir().unwrap();
        crate::pki::init_ca(dir.path(), "enroll test").unwrap();
        let signer = CaSigner::load(&dir.path().join("ca.pem"), &dir.path().join("ca-key.pem")).unwrap();
        // The request says ams01; the CA signs what its policy chose (ord01).
        let (key, csr) = key_and_csr("node-7", "ams01").unwrap();
        let signed = signer.sign_agent(&csr, "node-7", "ord01", std::time::Duration::from_secs(3600)).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(signed.pem.as_bytes());
        let der: rustls_pki_types::CertificateDer<'static> = der.unwrap();
        assert_eq!(
            crate::peer_identity(&der).unwrap(),
            PeerIdentity::Agent { agent_id: "node-7".into(), pop: "ord01".into() }
        );
        assert_eq!(serial(&der).unwrap(), signed.serial);
        assert!(signed.not_after > OffsetDateTime::now_utc() + Duration::minutes(59));
        // The key and the certificate make a working client identity.
        std::fs::write(dir.path().join("agent.pem"), &signed.pem).unwrap();
        std::fs::write(dir.path().join("agent-key.pem"), &key).unwrap();
        let files = crate::TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("agent.pem"),
            key: dir.path().join("agent-key.pem"),
        };
        crate::client_config(&files).unwrap();
        assert!(not_after(&files.cert).unwrap() > OffsetDateTime::now_utc().unix_timestamp());
        assert!(signer.sign_agent("not a csr", "a", "b", std::time::Duration::from_secs(1)).is_err());
    }
}
