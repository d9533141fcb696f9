//! `edgecap admin`: the operator's side of the API, with an admin token.
//!
//! * `edgecap admin tokens add --account ACCOUNT --name NAME`: a new API token (printed once);
//! * `edgecap admin tokens list`: every token by name, account and source (never the token);
//! * `edgecap admin tokens revoke NAME`: refused by every replica from its next request.

use clap::{Args, Subcommand};
use edgecap_client::{Client, Endpoint};
use serde_json::json;

/// Where the API is, and the admin token.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// API base URL, e.g. http://127.0.0.1:9440/client/v4
    #[arg(long, env = "EDGECAP_API", default_value = "http://127.0.0.1:9440/client/v4")]
    pub api: String,
    /// The admin token (from the environment, so it does not show in `ps`).
    #[arg(long = "admin-token-env", env = "EDGECAP_ADMIN_TOKEN", hide_env_values = true, hide = true)]
    admin_token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, env = "EDGECAP_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// API, besides the system's.
    #[arg(long, env = "EDGECAP_CA")]
    ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// API tokens: bound to an account, named, revocable on every replica.
    #[command(subcommand)]
    Tokens(TokensCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token for an account; it is printed once.
    Add {
        /// The account the token acts for.
        #[arg(long)]
        account: String,
        /// A unique name to list and revoke it by.
        #[arg(long)]
        name: String,
    },
    /// List the tokens (names, accounts, sources; never the tokens).
    List,
    /// Revoke a token by name.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn client(args: &AdminArgs) -> anyhow::Result<Client> {
    let token = match (&args.admin_token, &args.admin_token_file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--admin-token-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (Some(token), None) => token.clone(),
        (None, None) => anyhow::bail!("an admin token is needed: set EDGECAP_ADMIN_TOKEN or --admin-token-file"),
    };
    Ok(Client::with_ca(Endpoint { api: args.api.clone(), account: String::new(), token }, args.ca.as_deref())?)
}

pub async fn run(args: AdminArgs, command: AdminCommand) -> anyhow::Result<()> {
    let client = client(&args)?;
    let tokens = client.extension_url("/edgecap/v1/admin/tokens");
    match command {
        AdminCommand::Tokens(TokensCommand::Add { account, name }) => {
            let body = json!({"account_id": account, "name": name});
            let created = client.call_url("POST", &tokens, Some(&body)).await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!("token {name:?} created for account {account}: shown only this once");
        }
        AdminCommand::Tokens(TokensCommand::List) => {
            let list = client.call_url("GET", &tokens, None).await?;
            println!("{:<32} {:<32} {:<27} SOURCE", "NAME", "ACCOUNT", "CREATED");
            for t in list.as_array().into_iter().flatten() {
                let field = |k: &str| t[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:<32} {:<32} {:<27} {}",
                    field("name"),
                    field("account_id"),
                    field("created"),
                    field("source")
                );
            }
        }
        AdminCommand::Tokens(TokensCommand::Revoke { name }) => {
            client.call_url("DELETE", &format!("{tokens}/{name}"), None).await?;
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}
