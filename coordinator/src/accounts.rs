//! Account scopes: what each account may capture. The operator sets them (admin API,
//! `edgecap admin accounts`, `--accounts-file`); they live in the state store, so every
//! replica applies the same one from the next capture on. Every capture reads its account's
//! scope when it is created and carries it to its agents, which apply it themselves.

use std::path::Path;

use crate::config::UnscopedAccounts;
use crate::model::AccountScope;
use crate::store::{Repo, RepoError};

/// Why an account may not capture.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScopeError {
    #[error(
        "account: no IP prefixes are configured for account {0:?}, so it may capture nothing yet; the operator sets them with `edgecap admin accounts set`"
    )]
    Unscoped(String),
    #[error(transparent)]
    Store(#[from] RepoError),
}

/// The scope a new capture of `account` gets.
pub(crate) async fn resolve(
    repo: &Repo,
    account: &str,
    unscoped: UnscopedAccounts,
) -> Result<AccountScope, ScopeError> {
    match repo.get_account_scope(account).await? {
        Some(scope) => Ok(scope),
        None if unscoped == UnscopedAccounts::Unrestricted => Ok(AccountScope::unrestricted()),
        None => Err(ScopeError::Unscoped(account.to_string())),
    }
}

/// Stores `scope` for `account` after checking it (the message names the field).
pub(crate) async fn set(
    repo: &Repo,
    account: &str,
    mut scope: AccountScope,
    source: &str,
) -> Result<AccountScope, String> {
    if !crate::config::valid_account(account) {
        return Err(format!("account_id: {account:?}: use 1-32 of [A-Za-z0-9_-]"));
    }
    scope.validate()?;
    scope.updated = crate::model::rfc3339(time::OffsetDateTime::now_utc());
    scope.source = source.to_string();
    repo.put_account_scope(account, &scope).await.map_err(|e| e.to_string())?;
    tracing::info!(%account, unrestricted = scope.unrestricted, prefixes = scope.prefixes.len(),
        pops = ?scope.pops, %source, "account scope set");
    Ok(scope)
}

/// At start: the accounts made unrestricted by configuration, then those of the file.
pub(crate) async fn load(repo: &Repo, unrestricted: &[String], file: Option<&Path>) -> anyhow::Result<()> {
    for account in unrestricted {
        set(repo, account, AccountScope::unrestricted(), "config").await.map_err(anyhow::Error::msg)?;
    }
    let Some(path) = file else { return Ok(()) };
    let text = tokio::fs::read(path).await.map_err(|e| anyhow::anyhow!("--accounts-file {}: {e}", path.display()))?;
    let scopes: std::collections::BTreeMap<String, AccountScope> = serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "--accounts-file {}: not a JSON object of account -> {{\"prefixes\", \"pops\", \"unrestricted\"}}: {e}",
            path.display()
        )
    })?;
    let source = format!("file:{}", path.display());
    for (account, scope) in scopes {
        set(repo, &account, scope, &source)
            .await
            .map_err(|e| anyhow::anyhow!("--accounts-file {}: account {account}: {e}", path.display()))?;
    }
    Ok(())
}
