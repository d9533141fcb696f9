//! A small certificate authority, so operators need no openssl.
//!
//! Directory layout (`--dir`):
//! `ca.pem`, `ca-key.pem`; `coordinator.pem`, `coordinator-key.pem`;
//! `agent-{id}.pem`, `agent-{id}-key.pem`. Keys are written with mode 0600.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{PeerIdentity, Result, TlsError, TlsFiles, validate_name};

/// CA lifetime.
pub const CA_DAYS: i64 = 3650;
/// Leaf certificate lifetime; rotate by issuing again (files are reloaded without a restart).
pub const LEAF_DAYS: i64 = 397;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.display().to_string(), source }
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(if secret { 0o600 } else { 0o644 });
    let mut file = options.open(&tmp).map_err(io(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    // Rename so a watcher never sees a half-written file.
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

/// Where the CA certificate of a PKI directory is: `dir/ca.pem`, the file both sides trust.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// Creates `ca.pem` and `ca-key.pem` in `dir`. Refuses to overwrite an existing CA.
pub fn init_ca(dir: &Path, common_name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let cert_path = dir.join("ca.pem");
    if cert_path.exists() {
        return Err(TlsError::Io {
            path: cert_path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a CA already exists here"),
        });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "edgecap");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key)?;
    write_file(&dir.join("ca-key.pem"), &key.serialize_pem(), true)?;
    write_file(&cert_path, &cert.pem(), false)?;
    Ok(())
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca-key.pem");
    let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
    let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| TlsError::Pem { path: key_path.display().to_string(), message: e.to_string() })?;
    Issuer::from_ca_cert_pem(&cert_pem, key)
        .map_err(|e| TlsError::Pem { path: cert_path.display().to_string(), message: e.to_string() })
}

fn issue(
    dir: &Path,
    file_stem: &str,
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<TlsFiles> {
    let issuer = load_issuer(dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "edgecap");
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    let cert = params.signed_by(&key, &issuer)?;
    let files = TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{file_stem}.pem")),
        key: dir.join(format!("{file_stem}-key.pem")),
    };
    // Key first: a watcher that sees the new certificate must also find its key.
    write_file(&files.key, &key.serialize_pem(), true)?;
    write_file(&files.cert, &cert.pem(), false)?;
    Ok(files)
}

/// Issues the coordinator's server certificate for the given host names / IP addresses.
pub fn issue_coordinator(dir: &Path, name: &str, hosts: &[String]) -> Result<TlsFiles> {
    validate_name(name)?;
    if hosts.is_empty() {
        return Err(TlsError::InvalidName { name: String::new(), why: "at least one host is required" });
    }
    let mut sans = Vec::new();
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => sans.push(SanType::IpAddress(ip)),
            Err(_) => sans.push(SanType::DnsName(
                host.clone()
                    .try_into()
                    .map_err(|_| TlsError::InvalidName { name: host.clone(), why: "not a DNS name or IP address" })?,
            )),
        }
    }
    let uri = PeerIdentity::Coordinator { name: name.to_string() }.uri();
    sans.push(SanType::URI(uri.try_into()?));
    issue(dir, "coordinator", name, sans, ExtendedKeyUsagePurpose::ServerAuth)
}

/// Issues an agent's client certificate. The PoP it names is the only PoP it can act for.
pub fn issue_agent(dir: &Path, agent_id: &str, pop: &str) -> Result<TlsFiles> {
    validate_name(agent_id)?;
    validate_name(pop)?;
    let uri = PeerIdentity::Agent { agent_id: agent_id.to_string(), pop: pop.to_string() }.uri();
    let sans = vec![SanType::URI(uri.try_into()?)];
    issue(dir, &format!("agent-{agent_id}"), &format!("{agent_id}.{pop}"), sans, ExtendedKeyUsagePurpose::ClientAuth)
}
