//! Agent enrollment: per-node keys instead of certificates made by hand.
//!
//! An agent makes its own key and sends a certificate signing request on the control port
//! (TLS verifies the coordinator; the agent has no client certificate yet) with a
//! short-lived **bootstrap token**. The token names the PoPs it may enroll agents for (exact
//! names or `prefix*`: the allow-list); the coordinator checks the PoP the agent asks for
//! against it and signs a certificate for that agent and PoP, valid `cert_lifetime`. The agent
//! renews before it expires, authenticated by its current certificate (no token). The CA key
//! stays on the coordinators; no node ever holds another node's key.
//!
//! Revocation (`edgecap pki revoke`): a revoked serial is refused at the next handshake, on
//! every replica (revocations live in the state store and are followed by a watch).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use edgecap_proto::agent::v1 as pb;
use edgecap_tls::PeerIdentity;
use edgecap_tls::enroll::CaSigner;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::store::{AgentRevocation, BootstrapToken, IssuedCert, Repo, Revocation, token_hash};

/// What enrollment needs; see [`crate::config::EnrollSettings`].
pub(crate) struct Enrollment {
    repo: Repo,
    signer: Option<CaSigner>,
    cert_lifetime: Duration,
    revoked: Revoked,
}

/// Serials refused at the handshake; shared with the control listener.
#[derive(Clone, Debug, Default)]
pub(crate) struct Revoked(Arc<RwLock<HashSet<String>>>);

impl Revoked {
    pub(crate) fn contains(&self, serial: &str) -> bool {
        self.0.read().unwrap_or_else(|p| p.into_inner()).contains(serial)
    }

    fn insert(&self, serial: String) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).insert(serial);
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn now_ms() -> i64 {
    i64::try_from(edgecap_common::now_ns() / 1_000_000).unwrap_or(i64::MAX)
}

/// Whether `pop` is one of `patterns` (exact, or a prefix ending in `*`; `*` is any PoP).
fn pop_allowed(patterns: &[String], pop: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => pop.starts_with(prefix),
        None => p == pop,
    })
}

impl Enrollment {
    pub(crate) fn new(repo: Repo, signer: Option<CaSigner>, cert_lifetime: Duration) -> Self {
        Self { repo, signer, cert_lifetime, revoked: Revoked::default() }
    }

    /// The revoked serials, for the control listener.
    pub(crate) fn revoked(&self) -> Revoked {
        self.revoked.clone()
    }

    /// Signs an agent's request. `peer` is the caller's verified certificate identity, if it
    /// presented one (a renewal).
    pub(crate) async fn enroll(
        &self,
        peer: Option<&PeerIdentity>,
        request: &pb::EnrollRequest,
    ) -> Result<pb::EnrollResponse, Status> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            Status::failed_precondition("this coordinator does not enroll agents (it has no --enroll-ca-key)")
        })?;
        edgecap_tls::validate_name(&request.agent_id)
            .map_err(|e| Status::invalid_argument(format!("agent_id: {e}")))?;
        edgecap_tls::validate_name(&request.pop).map_err(|e| Status::invalid_argument(format!("pop: {e}")))?;
        if request.csr_pem.len() > 16 << 10 {
            return Err(Status::invalid_argument("csr_pem: larger than 16 KiB"));
        }
        match (peer, request.bootstrap_token.is_empty()) {
            // Renewal: the current certificate's identity, and only that one.
            (Some(PeerIdentity::Agent { agent_id, pop }), true) => {
                if *agent_id != request.agent_id || *pop != request.pop {
                    return Err(Status::permission_denied(format!(
                        "a certificate for agent {agent_id:?} of PoP {pop:?} renews only itself"
                    )));
                }
            }
            (_, true) => return Err(Status::unauthenticated("bootstrap_token: required to enroll")),
            (_, false) => {
                let token = self
                    .repo
                    .get_bootstrap_token(&token_hash(&request.bootstrap_token))
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?
                    .ok_or_else(|| Status::unauthenticated("bootstrap_token: not a valid token"))?;
                if now() > token.expires {
                    return Err(Status::unauthenticated("bootstrap_token: expired"));
                }
                let revoked = self
                    .repo
                    .get_agent_revocation(&request.agent_id)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                if let Some(revoked) = revoked.filter(|r| r.revoked_ms > token.created_ms) {
                    return Err(Status::permission_denied(format!(
                        "agent_id: agent {:?} was revoked at {}; enroll it again with a bootstrap token created after that",
                        request.agent_id,
                        crate::model::rfc3339_secs(revoked.revoked_ms / 1000)
                    )));
                }
                if !pop_allowed(&token.pops, &request.pop) {
                    return Err(Status::permission_denied(format!(
                        "pop: this bootstrap token may not enroll agents for PoP {:?} (it allows {})",
                        request.pop,
                        token.pops.join(", ")
                    )));
                }
            }
        }
        let signed = signer
            .sign_agent(&request.csr_pem, &request.agent_id, &request.pop, self.cert_lifetime)
            .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
        let record = IssuedCert {
            agent_id: request.agent_id.clone(),
            pop: request.pop.clone(),
            serial: signed.serial.clone(),
            not_after: signed.not_after.unix_timestamp(),
            issued: crate::model::rfc3339(time::OffsetDateTime::now_utc()),
        };
        self.repo.put_issued_cert(&record).await.map_err(|e| Status::unavailable(e.to_string()))?;
        // Renewals would pile up records: the agent's expired certificates go now.
        if let Ok(certs) = self.repo.list_issued_certs(Some(&request.agent_id)).await {
            for old in certs.iter().filter(|c| c.not_after < now()) {
                let _ = self.repo.delete_issued_cert(old).await;
            }
        }
        tracing::info!(agent_id = %request.agent_id, pop = %request.pop, serial = %signed.serial,
            renewal = peer.is_some(), "agent certificate signed");
        Ok(pb::EnrollResponse {
            certificate_pem: signed.pem,
            serial: signed.serial,
            not_after: u64::try_from(record.not_after).unwrap_or(0),
        })
    }

    /// A bootstrap token for the PoPs `pops`, valid `ttl`; returns the token (shown once).
    pub(crate) async fn create_bootstrap_token(
        &self,
        pops: Vec<String>,
        ttl: Duration,
    ) -> crate::store::Result<(String, i64)> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| {
            crate::store::RepoError::State(edgecap_state::StateError::Unavailable("no randomness".into()))
        })?;
        let token = edgecap_common::hex(&bytes);
        let expires = time::OffsetDateTime::now_utc().unix_timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(0);
        let record = BootstrapToken {
            pops,
            expires,
            created: crate::model::rfc3339(time::OffsetDateTime::now_utc()),
            created_ms: now_ms(),
        };
        self.repo.put_bootstrap_token(&token_hash(&token), &record).await?;
        Ok((token, expires))
    }

    /// Revokes a serial (any certificate of this CA, enrolled or made with `edgecap pki
    /// agent`), or every certificate signed for an agent; returns the serials.
    pub(crate) async fn revoke(
        &self,
        agent_id: Option<&str>,
        serial: Option<&str>,
    ) -> crate::store::Result<Vec<String>> {
        let issued = self.repo.list_issued_certs(agent_id).await?;
        let mut revocations: Vec<Revocation> = Vec::new();
        let stamp = crate::model::rfc3339(time::OffsetDateTime::now_utc());
        match serial.map(edgecap_tls::enroll::normalize_serial) {
            Some(serial) => {
                let known = match agent_id {
                    Some(_) => issued.iter().find(|c| c.serial == serial).cloned(),
                    None => self.repo.list_issued_certs(None).await?.into_iter().find(|c| c.serial == serial),
                };
                revocations.push(Revocation {
                    agent_id: known
                        .as_ref()
                        .map_or_else(|| agent_id.unwrap_or_default().to_string(), |c| c.agent_id.clone()),
                    not_after: known.map_or(0, |c| c.not_after),
                    serial,
                    revoked: stamp,
                });
            }
            None => revocations.extend(issued.iter().cloned().map(|c| Revocation {
                serial: c.serial,
                agent_id: c.agent_id,
                not_after: c.not_after,
                revoked: stamp.clone(),
            })),
        }
        if let (Some(agent_id), None) = (agent_id, serial) {
            if issued.is_empty() {
                return Ok(Vec::new());
            }
            // Tokens made before now cannot enroll it again.
            let record = AgentRevocation { agent_id: agent_id.to_string(), revoked_ms: now_ms() };
            self.repo.put_agent_revocation(&record).await?;
        }
        for revocation in &revocations {
            self.repo.put_revocation(revocation).await?;
            self.revoked.insert(revocation.serial.clone());
            tracing::warn!(serial = %revocation.serial, agent_id = %revocation.agent_id, "certificate revoked");
        }
        Ok(revocations.into_iter().map(|r| r.serial).collect())
    }

    /// The unexpired bootstrap tokens with their hashes; expired ones are deleted on the way.
    pub(crate) async fn bootstrap_tokens(&self) -> crate::store::Result<Vec<(String, BootstrapToken)>> {
        let mut live = Vec::new();
        for (hash, token) in self.repo.list_bootstrap_tokens().await? {
            if token.expires < now() {
                self.repo.delete_bootstrap_token(&hash).await?;
            } else {
                live.push((hash, token));
            }
        }
        Ok(live)
    }

    /// Every unexpired certificate signed for an agent; expired ones are deleted on the way.
    pub(crate) async fn certificates(&self) -> crate::store::Result<Vec<IssuedCert>> {
        let mut live = Vec::new();
        for cert in self.repo.list_issued_certs(None).await? {
            if cert.not_after < now() {
                self.repo.delete_issued_cert(&cert).await?;
            } else {
                live.push(cert);
            }
        }
        Ok(live)
    }

    /// The revocations in force; those of certificates past their expiry are deleted (the
    /// handshake refuses an expired certificate anyway).
    pub(crate) async fn revocations(&self) -> crate::store::Result<Vec<Revocation>> {
        let mut live = Vec::new();
        for revocation in self.repo.list_revocations().await? {
            if revocation.not_after != 0 && revocation.not_after < now() {
                self.repo.delete_revocation(&revocation.serial).await?;
            } else {
                live.push(revocation);
            }
        }
        Ok(live)
    }

    /// Keeps the revoked set in step with the state store until `cancel`.
    pub(crate) async fn follow_revocations(self: Arc<Self>, cancel: CancellationToken) {
        let this: &Self = &self;
        let catch_up = move || async move {
            match this.repo.list_revocations().await {
                Ok(all) => all.into_iter().for_each(|r| this.revoked.insert(r.serial)),
                Err(error) => tracing::warn!(%error, "revocations not read"),
            }
        };
        let on_put = move |kv: edgecap_state::KeyValue| async move {
            if let Ok(r) = crate::store::decode::<Revocation>(&kv.key, &kv.value) {
                this.revoked.insert(r.serial);
            }
        };
        self.repo.follow_puts(&self.repo.revocations_prefix(), "revocation", &cancel, catch_up, on_put).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn enrollment(dir: &std::path::Path) -> Enrollment {
        edgecap_tls::pki::init_ca(dir, "enroll unit").unwrap();
        let signer = CaSigner::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).unwrap();
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        Enrollment::new(repo, Some(signer), Duration::from_secs(3600))
    }

    fn request(token: &str, agent: &str, pop: &str) -> pb::EnrollRequest {
        let (_, csr_pem) = edgecap_tls::enroll::key_and_csr(agent, pop).unwrap();
        pb::EnrollRequest { bootstrap_token: token.into(), agent_id: agent.into(), pop: pop.into(), csr_pem }
    }

    #[tokio::test]
    async fn tokens_enroll_only_their_pops_until_they_expire_or_the_agent_is_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let e = enrollment(dir.path()).await;
        let (token, _) = e.create_bootstrap_token(vec!["ams*".into()], Duration::from_secs(600)).await.unwrap();
        let signed = e.enroll(None, &request(&token, "n1", "ams01")).await.unwrap();
        assert!(signed.certificate_pem.contains("BEGIN CERTIFICATE") && !signed.serial.is_empty());
        let refused = e.enroll(None, &request(&token, "n1", "fra01")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().starts_with("pop:"), "{}", refused.message());
        let bad = e.enroll(None, &request("not-a-token", "n1", "ams01")).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        let none = e.enroll(None, &request("", "n1", "ams01")).await.unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let mut garbage = request(&token, "n1", "ams01");
        garbage.csr_pem = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
        assert!(e.enroll(None, &garbage).await.unwrap_err().message().starts_with("csr_pem:"));
        let mut traversal = request(&token, "n1", "ams01");
        traversal.agent_id = "../x".into();
        assert!(e.enroll(None, &traversal).await.unwrap_err().message().starts_with("agent_id:"));

        // An expired token is refused.
        let (old, _) = e.create_bootstrap_token(vec!["*".into()], Duration::ZERO).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let expired = e.enroll(None, &request(&old, "n2", "ams01")).await.unwrap_err();
        assert!(expired.message().contains("expired"), "{}", expired.message());
        assert!(e.bootstrap_tokens().await.unwrap().len() == 1, "the expired token was pruned");

        // Renewal: the certificate's own identity, no token, and only that identity.
        let me = PeerIdentity::Agent { agent_id: "n1".into(), pop: "ams01".into() };
        e.enroll(Some(&me), &request("", "n1", "ams01")).await.unwrap();
        let other = e.enroll(Some(&me), &request("", "n9", "ams01")).await.unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert_eq!(e.certificates().await.unwrap().len(), 2);

        // Revoking the agent revokes both serials; the older token cannot enroll it again,
        // a token made afterwards can.
        let serials = e.revoke(Some("n1"), None).await.unwrap();
        assert_eq!(serials.len(), 2);
        assert!(serials.iter().all(|s| e.revoked().contains(s)));
        let again = e.enroll(None, &request(&token, "n1", "ams01")).await.unwrap_err();
        assert!(again.message().contains("was revoked"), "{}", again.message());
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (fresh, _) = e.create_bootstrap_token(vec!["ams01".into()], Duration::from_secs(60)).await.unwrap();
        e.enroll(None, &request(&fresh, "n1", "ams01")).await.unwrap();
        assert_eq!(e.revocations().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_coordinator_without_a_ca_key_does_not_enroll() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let e = Enrollment::new(repo, None, Duration::from_secs(60));
        let refused = e.enroll(None, &request("t", "n1", "ams01")).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn pops_are_allowed_by_name_or_prefix() {
        let allow = vec!["ams01".to_string(), "ord*".to_string()];
        assert!(super::pop_allowed(&allow, "ams01") && super::pop_allowed(&allow, "ord07"));
        assert!(!super::pop_allowed(&allow, "ams02") && !super::pop_allowed(&allow, "fra01"));
        assert!(super::pop_allowed(&["*".to_string()], "anything"));
    }
}
