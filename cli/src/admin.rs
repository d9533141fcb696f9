//! `edgecap admin`: the operator's side of the API, with an admin token.
//!
//! * `edgecap admin tokens add --account ACCOUNT --name NAME`: a new API token (printed once);
//! * `edgecap admin tokens list`: every token by name, account and source (never the token);
//! * `edgecap admin tokens revoke NAME`: refused by every replica from its next request;
//! * `edgecap admin accounts set ACCOUNT --prefix P --pop X | --unrestricted`, `list`, `show`,
//!   `delete`: what each account may capture;
//! * `edgecap admin bootstrap-token create --pops P,Q* [--ttl S]`: a token agents enroll with;
//! * `edgecap admin certificates`, `edgecap admin revocations`: enrolled agents' certificates;
//! * `edgecap pki revoke --agent ID | --serial HEX` ([`revoke`]): refused at the next handshake.

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
    /// Bootstrap tokens: short-lived, for agents to enroll with (coordinators with
    /// --enroll-ca-key).
    #[command(subcommand, name = "bootstrap-token")]
    BootstrapToken(BootstrapCommand),
    /// Account scopes: the IP prefixes an account's captures are restricted to, and where it
    /// may capture.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// The certificates signed for enrolled agents.
    Certificates,
    /// The certificates revoked (`edgecap pki revoke`).
    Revocations,
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Set an account's scope (replacing it); in force on every replica from the next capture.
    Set {
        /// The account.
        account: String,
        /// Its networks (CIDR, IPv4 or IPv6; repeat or comma-separate): its captures hold only
        /// packets from or to them.
        #[arg(long = "prefix", value_delimiter = ',', required_unless_present = "unrestricted")]
        prefixes: Vec<String>,
        /// Where it may capture: PoP names, prefixes ending in `*`, or `*` (repeat or
        /// comma-separate).
        #[arg(long = "pop", value_delimiter = ',', default_value = "*")]
        pops: Vec<String>,
        /// It may capture all traffic (no prefix restriction).
        #[arg(long, conflicts_with = "prefixes")]
        unrestricted: bool,
    },
    /// Every account's scope.
    List,
    /// One account's scope.
    Show {
        /// The account.
        account: String,
    },
    /// Remove an account's scope (it then captures nothing, unless the coordinators run with
    /// `--unscoped-accounts unrestricted`).
    Delete {
        /// The account.
        account: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// Create a bootstrap token; it is printed once.
    Create {
        /// The PoPs agents may enroll for with it: names, or prefixes ending in `*`
        /// (comma-separated or repeated; `*` is any PoP).
        #[arg(long, value_delimiter = ',', required = true)]
        pops: Vec<String>,
        /// How long it may be used, seconds (60 to 604800).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// List the unexpired bootstrap tokens (never the tokens).
    List,
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

/// `edgecap pki revoke`: revokes one certificate by serial, or every one signed for an agent.
pub async fn revoke(args: AdminArgs, agent: Option<String>, serial: Option<String>) -> anyhow::Result<()> {
    let client = client(&args)?;
    let url = client.extension_url("/edgecap/v1/admin/revocations");
    let answer = client.call_url("POST", &url, Some(&json!({"agent_id": agent, "serial": serial}))).await?;
    for serial in answer["revoked"].as_array().into_iter().flatten() {
        println!("{}", serial.as_str().unwrap_or_default());
    }
    eprintln!("revoked: refused at the next handshake on every coordinator");
    Ok(())
}

fn table(list: &serde_json::Value, columns: &[(&str, &str, usize)]) {
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for ((_, _, width), cell) in columns.iter().zip(cells) {
            out.push_str(&format!("{cell:<width$} "));
        }
        println!("{}", out.trim_end());
    };
    line(columns.iter().map(|(title, _, _)| title.to_string()).collect());
    for item in list.as_array().into_iter().flatten() {
        line(
            columns
                .iter()
                .map(|(_, key, _)| match &item[*key] {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                })
                .collect(),
        );
    }
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
        AdminCommand::BootstrapToken(BootstrapCommand::Create { pops, ttl }) => {
            let url = client.extension_url("/edgecap/v1/admin/bootstrap-tokens");
            let created = client.call_url("POST", &url, Some(&json!({"pops": pops, "ttl_seconds": ttl}))).await?;
            println!("{}", created["token"].as_str().unwrap_or_default());
            eprintln!(
                "bootstrap token for PoPs {} until {}: shown only this once",
                pops.join(","),
                created["expires_on"].as_str().unwrap_or_default()
            );
        }
        AdminCommand::BootstrapToken(BootstrapCommand::List) => {
            let list =
                client.call_url("GET", &client.extension_url("/edgecap/v1/admin/bootstrap-tokens"), None).await?;
            table(
                &list,
                &[("ID", "id", 16), ("EXPIRES", "expires_on", 27), ("CREATED", "created_on", 27), ("POPS", "pops", 0)],
            );
        }
        AdminCommand::Accounts(command) => {
            let base = client.extension_url("/edgecap/v1/admin/accounts");
            match command {
                AccountsCommand::Set { account, prefixes, pops, unrestricted } => {
                    let body = if unrestricted {
                        json!({"unrestricted": true, "pops": pops})
                    } else {
                        json!({"prefixes": prefixes, "pops": pops})
                    };
                    let set = client.call_url("PUT", &format!("{base}/{account}"), Some(&body)).await?;
                    println!("{}", serde_json::to_string_pretty(&set)?);
                }
                AccountsCommand::List => {
                    let list = client.call_url("GET", &base, None).await?;
                    table(
                        &list,
                        &[
                            ("ACCOUNT", "account_id", 24),
                            ("UNRESTRICTED", "unrestricted", 12),
                            ("POPS", "pops", 24),
                            ("PREFIXES", "prefixes", 0),
                        ],
                    );
                }
                AccountsCommand::Show { account } => {
                    let one = client.call_url("GET", &format!("{base}/{account}"), None).await?;
                    println!("{}", serde_json::to_string_pretty(&one)?);
                }
                AccountsCommand::Delete { account } => {
                    client.call_url("DELETE", &format!("{base}/{account}"), None).await?;
                    eprintln!("scope of account {account:?} removed");
                }
            }
        }
        AdminCommand::Certificates => {
            let list = client.call_url("GET", &client.extension_url("/edgecap/v1/admin/certificates"), None).await?;
            table(
                &list,
                &[
                    ("AGENT", "agent_id", 24),
                    ("POP", "pop", 12),
                    ("SERIAL", "serial", 32),
                    ("EXPIRES", "expires_on", 27),
                    ("REVOKED", "revoked", 0),
                ],
            );
        }
        AdminCommand::Revocations => {
            let list = client.call_url("GET", &client.extension_url("/edgecap/v1/admin/revocations"), None).await?;
            table(&list, &[("SERIAL", "serial", 32), ("AGENT", "agent_id", 24), ("REVOKED", "revoked", 0)]);
        }
    }
    Ok(())
}
