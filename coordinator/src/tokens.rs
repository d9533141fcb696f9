//! Who may call the API. Account tokens are named, bound to one account and revocable; they
//! live in the state store (only their SHA-256), so a token created or revoked on one replica
//! is in force on every replica at its next request. Three sources:
//!
//! * the admin API (`edgecap admin tokens add|list|revoke`): source `api`;
//! * a tokens file (`--tokens-file`, lines `ACCOUNT:TOKEN`), re-read when it changes: tokens
//!   added to it are added, tokens removed from it are revoked (source `file:{path}`);
//! * flags and the environment at start (source `config`).
//!
//! Admin tokens (`EDGECAP_ADMIN_TOKEN`, `--admin-tokens-file`) reach the admin API only; they
//! are configuration, the same on every replica, and are not in the state store.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Repo, RepoError, TokenRecord, token_hash};

/// How often token files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Why a token operation was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    #[error("name: {0:?} must be 1-64 of [A-Za-z0-9_-]")]
    BadName(String),
    #[error("name: a token named {0:?} exists already")]
    NameTaken(String),
    #[error("account_id: {0:?} must be 1-32 of [A-Za-z0-9_-]")]
    BadAccount(String),
    #[error("{0}: {1}")]
    File(String, String),
    #[error("the system's random number generator failed")]
    Random,
    #[error(transparent)]
    Store(#[from] RepoError),
}

/// A token as the admin API lists it (never the token itself).
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct TokenInfo {
    pub name: String,
    pub account_id: String,
    pub created: String,
    pub source: String,
}

/// One replica's view of the tokens; see the module docs.
pub(crate) struct Tokens {
    repo: Repo,
    tokens_file: Option<PathBuf>,
    admin_file: Option<PathBuf>,
    /// Admin tokens from the configuration.
    admin_config: Vec<String>,
    /// SHA-256 of every admin token in force.
    admin: RwLock<HashSet<String>>,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `ACCOUNT:TOKEN` lines (blank lines and `#` comments skipped).
fn parse_lines(path: &Path, text: &str) -> Result<Vec<(String, String)>, TokenError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (account, token) = line.split_once(':').ok_or_else(|| {
            TokenError::File(path.display().to_string(), format!("line {}: expected ACCOUNT:TOKEN", n + 1))
        })?;
        if !crate::config::valid_account(account) || token.len() < 16 {
            return Err(TokenError::File(
                path.display().to_string(),
                format!(
                    "line {}: the account must be 1-32 of [A-Za-z0-9_-] and the token at least 16 characters",
                    n + 1
                ),
            ));
        }
        out.push((account.to_string(), token.to_string()));
    }
    Ok(out)
}

/// A new token: 32 random bytes from the system's CSPRNG, hex.
fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| TokenError::Random)?;
    Ok(edgecap_common::hex(&bytes))
}

impl Tokens {
    pub(crate) fn new(
        repo: Repo,
        tokens_file: Option<PathBuf>,
        admin_config: Vec<String>,
        admin_file: Option<PathBuf>,
    ) -> Self {
        Self { repo, tokens_file, admin_file, admin_config, admin: RwLock::new(HashSet::new()) }
    }

    /// Registers the configured tokens, reads the files; errors here stop the coordinator.
    pub(crate) async fn start(&self, config: &[(String, String)]) -> Result<(), TokenError> {
        let now = crate::model::rfc3339(time::OffsetDateTime::now_utc());
        for (account, token) in config {
            if !crate::config::valid_account(account) {
                return Err(TokenError::BadAccount(account.clone()));
            }
            let hash = token_hash(token);
            let record = TokenRecord {
                account_id: account.clone(),
                name: format!("{account}-{}", &hash[..8]),
                created: now.clone(),
                source: "config".into(),
            };
            self.repo.put_token(&hash, &record).await?;
        }
        self.reload().await
    }

    /// Reads the tokens file and the admin tokens file again, putting them in force.
    pub(crate) async fn reload(&self) -> Result<(), TokenError> {
        let mut admin: HashSet<String> = self.admin_config.iter().map(|t| token_hash(t)).collect();
        if let Some(path) = &self.admin_file {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| TokenError::File(path.display().to_string(), e.to_string()))?;
            admin.extend(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(token_hash));
        }
        *self.admin.write().unwrap_or_else(|p| p.into_inner()) = admin;
        if let Some(path) = &self.tokens_file {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| TokenError::File(path.display().to_string(), e.to_string()))?;
            let wanted = parse_lines(path, &text)?;
            self.sync_file(path, &wanted).await?;
        }
        Ok(())
    }

    /// Makes the tokens from `path` exactly `wanted`: new ones added, ones no longer there
    /// revoked (only those that came from this file).
    async fn sync_file(&self, path: &Path, wanted: &[(String, String)]) -> Result<(), TokenError> {
        let source = format!("file:{}", path.display());
        let wanted: BTreeMap<String, String> =
            wanted.iter().map(|(account, token)| (token_hash(token), account.clone())).collect();
        let present = self.repo.list_tokens().await?;
        for (hash, record) in &present {
            if record.source == source && !wanted.contains_key(hash) {
                self.repo.delete_token(hash).await?;
                tracing::info!(name = %record.name, account = %record.account_id, "token revoked: no longer in the tokens file");
            }
        }
        let now = crate::model::rfc3339(time::OffsetDateTime::now_utc());
        for (hash, account) in wanted {
            let same = present.iter().any(|(h, r)| *h == hash && r.account_id == account && r.source == source);
            if !same {
                let record = TokenRecord {
                    account_id: account.clone(),
                    name: format!("{account}-{}", &hash[..8]),
                    created: now.clone(),
                    source: source.clone(),
                };
                self.repo.put_token(&hash, &record).await?;
            }
        }
        Ok(())
    }

    /// Re-reads the token files every few seconds until `cancel` (a file that does not
    /// read or parse is logged and the tokens in force stay as they were).
    pub(crate) async fn watch_files(self: Arc<Self>, cancel: CancellationToken) {
        if self.tokens_file.is_none() && self.admin_file.is_none() {
            return;
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            if let Err(error) = self.reload().await {
                tracing::warn!(%error, "token files not reloaded; the tokens in force stay");
            }
        }
    }

    /// Whether `token` is an admin token.
    pub(crate) fn is_admin(&self, token: &str) -> bool {
        let hash = token_hash(token);
        let admin = self.admin.read().unwrap_or_else(|p| p.into_inner());
        admin.iter().any(|h| aws_lc_rs::constant_time::verify_slices_are_equal(h.as_bytes(), hash.as_bytes()).is_ok())
    }

    /// Creates a token for `account`; returns it (the only time it is shown).
    pub(crate) async fn create(&self, account: &str, name: &str) -> Result<(String, TokenInfo), TokenError> {
        if !valid_name(name) {
            return Err(TokenError::BadName(name.to_string()));
        }
        if !crate::config::valid_account(account) {
            return Err(TokenError::BadAccount(account.to_string()));
        }
        if self.repo.list_tokens().await?.iter().any(|(_, r)| r.name == name) {
            return Err(TokenError::NameTaken(name.to_string()));
        }
        let token = generate()?;
        let record = TokenRecord {
            account_id: account.to_string(),
            name: name.to_string(),
            created: crate::model::rfc3339(time::OffsetDateTime::now_utc()),
            source: "api".into(),
        };
        self.repo.put_token(&token_hash(&token), &record).await?;
        tracing::info!(%name, %account, "token created");
        Ok((token, info(&record)))
    }

    /// Every token, by name.
    pub(crate) async fn list(&self) -> Result<Vec<TokenInfo>, TokenError> {
        let mut out: Vec<TokenInfo> = self.repo.list_tokens().await?.iter().map(|(_, r)| info(r)).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Revokes the token named `name`; whether there was one.
    pub(crate) async fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        let mut revoked = false;
        for (hash, record) in self.repo.list_tokens().await? {
            if record.name == name {
                revoked |= self.repo.delete_token(&hash).await?;
                tracing::info!(%name, account = %record.account_id, "token revoked");
            }
        }
        Ok(revoked)
    }
}

fn info(record: &TokenRecord) -> TokenInfo {
    TokenInfo {
        name: record.name.clone(),
        account_id: record.account_id.clone(),
        created: record.created.clone(),
        source: record.source.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tokens(dir: &Path) -> Tokens {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        Tokens::new(repo, Some(dir.join("tokens")), vec!["admin-token-0123456789".into()], None)
    }

    #[tokio::test]
    async fn a_tokens_file_is_followed_and_tokens_are_revocable_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokens"),
            "# two\nacct-a:token-a-0123456789abcdef\nacct-b:token-b-0123456789abcdef\n",
        )
        .unwrap();
        let t = tokens(dir.path()).await;
        t.start(&[]).await.unwrap();
        assert_eq!(t.repo.account_for_token("token-a-0123456789abcdef").await.unwrap().as_deref(), Some("acct-a"));
        // Removed from the file: revoked at the next reload; the other stays.
        std::fs::write(dir.path().join("tokens"), "acct-b:token-b-0123456789abcdef\n").unwrap();
        t.reload().await.unwrap();
        assert_eq!(t.repo.account_for_token("token-a-0123456789abcdef").await.unwrap(), None);
        assert!(t.repo.account_for_token("token-b-0123456789abcdef").await.unwrap().is_some());
        // A file that does not parse changes nothing and says where.
        std::fs::write(dir.path().join("tokens"), "no colon here\n").unwrap();
        let e = t.reload().await.unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("ACCOUNT:TOKEN"), "{e}");
        assert!(t.repo.account_for_token("token-b-0123456789abcdef").await.unwrap().is_some());
        // Created by name, listed without the token, revoked by name.
        let (token, info) = t.create("acct-c", "ci-robot").await.unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!((info.name.as_str(), info.source.as_str()), ("ci-robot", "api"));
        assert!(matches!(t.create("acct-c", "ci-robot").await, Err(TokenError::NameTaken(_))));
        assert!(matches!(t.create("acct-c", "bad name").await, Err(TokenError::BadName(_))));
        assert!(t.list().await.unwrap().iter().any(|i| i.name == "ci-robot"));
        assert!(t.revoke("ci-robot").await.unwrap());
        assert_eq!(t.repo.account_for_token(&token).await.unwrap(), None);
        assert!(!t.revoke("ci-robot").await.unwrap());
        // Admin tokens are not account tokens and the other way round.
        assert!(t.is_admin("admin-token-0123456789") && !t.is_admin("token-b-0123456789abcdef"));
        assert_eq!(t.repo.account_for_token("admin-token-0123456789").await.unwrap(), None);
    }
}
