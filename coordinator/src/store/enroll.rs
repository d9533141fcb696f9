//! Records of agent enrollment: bootstrap tokens, the certificates signed, revocations.

use serde::{Deserialize, Serialize};

use super::repo::{Repo, Result, encode, keys};

/// A short-lived token an agent enrolls with (key: its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BootstrapToken {
    /// The PoPs it may enroll agents for: exact names, or prefixes ending in `*`.
    pub pops: Vec<String>,
    /// Unix seconds after which it is refused.
    pub expires: i64,
    /// RFC 3339.
    pub created: String,
    /// Unix milliseconds (0 in records from before it was kept).
    #[serde(default)]
    pub created_ms: i64,
}

/// An agent whose certificates were revoked: bootstrap tokens created before `revoked_ms`
/// cannot enroll it again (a token created afterwards, deliberately, can).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AgentRevocation {
    pub agent_id: String,
    /// Unix milliseconds.
    pub revoked_ms: i64,
}

/// A certificate signed for an enrolled agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IssuedCert {
    pub agent_id: String,
    pub pop: String,
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    /// RFC 3339.
    pub issued: String,
}

/// A revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Revocation {
    pub serial: String,
    /// The agent it was signed for, when known.
    #[serde(default)]
    pub agent_id: String,
    /// When the certificate expires (Unix seconds; 0: unknown). After that the handshake
    /// refuses it anyway, and the revocation is dropped.
    #[serde(default)]
    pub not_after: i64,
    /// RFC 3339.
    pub revoked: String,
}

impl Repo {
    pub(crate) async fn put_bootstrap_token(&self, hash: &str, token: &BootstrapToken) -> Result<()> {
        self.store().put(&keys::bootstrap_token(hash), encode(token), None).await?;
        Ok(())
    }

    pub(crate) async fn get_bootstrap_token(&self, hash: &str) -> Result<Option<BootstrapToken>> {
        self.get_json(&keys::bootstrap_token(hash)).await
    }

    /// Every bootstrap token, with its hash.
    pub(crate) async fn list_bootstrap_tokens(&self) -> Result<Vec<(String, BootstrapToken)>> {
        let prefix = keys::bootstrap_tokens();
        let mut out = Vec::new();
        for kv in self.store().list(&prefix).await? {
            out.push((kv.key[prefix.len()..].to_string(), super::decode(&kv.key, &kv.value)?));
        }
        Ok(out)
    }

    pub(crate) async fn delete_bootstrap_token(&self, hash: &str) -> Result<()> {
        self.store().delete(&keys::bootstrap_token(hash)).await?;
        Ok(())
    }

    pub(crate) async fn delete_issued_cert(&self, cert: &IssuedCert) -> Result<()> {
        self.store().delete(&keys::cert(&cert.agent_id, &cert.serial)).await?;
        Ok(())
    }

    pub(crate) async fn delete_revocation(&self, serial: &str) -> Result<()> {
        self.store().delete(&keys::revoked(serial)).await?;
        Ok(())
    }

    pub(crate) async fn put_issued_cert(&self, cert: &IssuedCert) -> Result<()> {
        self.store().put(&keys::cert(&cert.agent_id, &cert.serial), encode(cert), None).await?;
        Ok(())
    }

    /// Certificates signed for `agent` (every agent's with `None`).
    pub(crate) async fn list_issued_certs(&self, agent: Option<&str>) -> Result<Vec<IssuedCert>> {
        match agent {
            Some(agent) => self.list_json(&keys::certs_of(agent)).await,
            None => self.list_json(&keys::certs()).await,
        }
    }

    pub(crate) async fn put_revocation(&self, revocation: &Revocation) -> Result<()> {
        self.store().put(&keys::revoked(&revocation.serial), encode(revocation), None).await?;
        Ok(())
    }

    pub(crate) async fn put_agent_revocation(&self, revocation: &AgentRevocation) -> Result<()> {
        self.store().put(&keys::revoked_agent(&revocation.agent_id), encode(revocation), None).await?;
        Ok(())
    }

    pub(crate) async fn get_agent_revocation(&self, agent: &str) -> Result<Option<AgentRevocation>> {
        self.get_json(&keys::revoked_agent(agent)).await
    }

    pub(crate) async fn list_revocations(&self) -> Result<Vec<Revocation>> {
        self.list_json(&keys::revocations()).await
    }

    /// The prefix revocations live under (watched by every replica).
    pub(crate) fn revocations_prefix(&self) -> String {
        keys::revocations()
    }
}
