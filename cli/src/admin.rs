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

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::client::{Api, DEFAULT_API, source_of};
use crate::output::{Output, emit, json};
use crate::profile::{self, Source};
use crate::views;

/// Where the API is, and the admin token.
#[derive(Args, Debug, Clone)]
pub struct AdminArgs {
    /// API base URL [default: the profile's api, else http://127.0.0.1:9440/client/v4]
    #[arg(long, global = true, env = "EDGECAP_API")]
    pub api: Option<String>,
    /// The admin token (from the environment, so it does not show in `ps`).
    #[arg(long = "admin-token-env", global = true, env = "EDGECAP_ADMIN_TOKEN", hide_env_values = true, hide = true)]
    admin_token: Option<String>,
    /// A file holding the admin token [default: the profile's admin_token_file]
    #[arg(long, global = true, env = "EDGECAP_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// API, besides the system's [default: the
    /// profile's ca]
    #[arg(long, global = true, env = "EDGECAP_CA")]
    ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// API tokens: bound to an account, named, revocable on every replica.
    #[command(
        subcommand,
        after_help = "Examples:
  edgecap admin tokens add --account acme --name ci > acme.token
  edgecap admin tokens list
  edgecap admin tokens revoke ci"
    )]
    Tokens(TokensCommand),
    /// Bootstrap tokens: short-lived, for agents to enroll with (coordinators with
    /// --enroll-ca-key).
    #[command(
        subcommand,
        name = "bootstrap-token",
        after_help = "Examples:
  edgecap admin bootstrap-token create --pops 'ams*,ord01' --ttl 3600 > bootstrap-token
  edgecap admin bootstrap-token list"
    )]
    BootstrapToken(BootstrapCommand),
    /// Account scopes: the IP prefixes an account's captures are restricted to, and where it
    /// may capture.
    #[command(
        subcommand,
        after_help = "Examples:
  edgecap admin accounts set acme --prefix 198.51.100.0/24 --pop 'ams*'
  edgecap admin accounts list"
    )]
    Accounts(AccountsCommand),
    /// The certificates signed for enrolled agents.
    #[command(after_help = "Examples:
  edgecap admin certificates
  edgecap admin certificates --output json | jq -r '.[] | select(.revoked == false) | .agent_id'")]
    Certificates,
    /// The certificates revoked (`edgecap pki revoke`).
    #[command(after_help = "Examples:
  edgecap admin revocations")]
    Revocations,
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Set an account's scope (replacing it); in force on every replica from the next capture.
    #[command(after_help = "Examples:
  edgecap admin accounts set acme --prefix 198.51.100.0/24 --prefix 2001:db8:acme::/48 --pop 'ams*' --pop ord01
  edgecap admin accounts set ops --unrestricted")]
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
    #[command(after_help = "Examples:
  edgecap admin accounts list
  edgecap admin accounts list --output json")]
    List,
    /// One account's scope.
    #[command(after_help = "Examples:
  edgecap admin accounts show acme")]
    Show {
        /// The account.
        account: String,
    },
    /// Remove an account's scope (it then captures nothing, unless the coordinators run with
    /// `--unscoped-accounts unrestricted`).
    #[command(after_help = "Examples:
  edgecap admin accounts delete acme")]
    Delete {
        /// The account.
        account: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BootstrapCommand {
    /// Create a bootstrap token; it is printed once.
    #[command(after_help = "Examples:
  edgecap admin bootstrap-token create --pops 'ams*' > token     # then: edgecap-agent run --enroll-token-file token ...
  edgecap admin bootstrap-token create --pops ams01,ams02 --ttl 600")]
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
    #[command(after_help = "Examples:
  edgecap admin bootstrap-token list")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create a token for an account; it is printed once.
    #[command(after_help = "Examples:
  (umask 077; edgecap admin tokens add --account acme --name ci > ~/.config/edgecap/acme.token)")]
    Add {
        /// The account the token acts for.
        #[arg(long)]
        account: String,
        /// A unique name to list and revoke it by.
        #[arg(long)]
        name: String,
    },
    /// List the tokens (names, accounts, sources; never the tokens).
    #[command(after_help = "Examples:
  edgecap admin tokens list
  edgecap admin tokens list --output json | jq -r '.[].name'")]
    List,
    /// Revoke a token by name.
    #[command(after_help = "Examples:
  edgecap admin tokens revoke ci")]
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// A client with the admin token: `--admin-token-file` (or `EDGECAP_ADMIN_TOKEN_FILE`), else
/// `EDGECAP_ADMIN_TOKEN`, else the profile's `admin_token_file`.
fn client(args: &AdminArgs, profile: Option<&str>, out: Output) -> anyhow::Result<Api> {
    let selected = profile::select(profile)?;
    let p = &selected.profile;
    let token = match (&args.admin_token_file, &args.admin_token, &p.admin_token_file) {
        (Some(path), _, _) => profile::read_token(path, "--admin-token-file")?,
        (None, Some(token), _) => token.clone(),
        (None, None, Some(path)) => {
            profile::read_token(path, &format!("profile {:?} admin_token_file", selected.name))?
        }
        (None, None, None) => {
            return Err(crate::failure::usage(
                "an admin token is needed: set EDGECAP_ADMIN_TOKEN, --admin-token-file, or admin_token_file in a profile",
            ));
        }
    };
    let api = match (&args.api, &p.api) {
        (Some(api), _) => (api.clone(), source_of(api, "--api", "EDGECAP_API")),
        (None, Some(api)) => (api.clone(), Source::Profile(selected.name.clone())),
        (None, None) => (DEFAULT_API.to_string(), Source::Default),
    };
    let ca = args.ca.clone().or_else(|| p.ca.clone());
    Ok(Api { client: crate::client::client(&api, String::new(), token, ca.as_deref())?, out })
}

/// `edgecap pki revoke`: revokes one certificate by serial, or every one signed for an agent.
pub async fn revoke(
    args: AdminArgs,
    agent: Option<String>,
    serial: Option<String>,
    profile: Option<&str>,
    out: Output,
) -> anyhow::Result<()> {
    let api = client(&args, profile, out)?;
    let answer = api
        .extension("POST", "/edgecap/v1/admin/revocations", Some(&json!({"agent_id": agent, "serial": serial})))
        .await?;
    if structured(out) {
        emit(&json(&answer));
    } else {
        for serial in answer["revoked"].as_array().into_iter().flatten() {
            emit(serial.as_str().unwrap_or_default());
        }
    }
    eprintln!("revoked: refused at the next handshake on every coordinator");
    Ok(())
}

/// JSON asked for: the admin commands print text by default (tables, or a new token alone on
/// its line), wherever stdout goes, as they always have.
fn structured(out: Output) -> bool {
    out.json() && out.chosen
}

fn table(list: &serde_json::Value, columns: &[(&str, &str, usize)]) {
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for ((_, _, width), cell) in columns.iter().zip(cells) {
            out.push_str(&format!("{cell:<width$} "));
        }
        emit(out.trim_end());
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

/// A list as JSON when asked for, else as a table of `columns`.
fn list(out: Output, list: &serde_json::Value, columns: &[(&str, &str, usize)]) {
    if structured(out) { emit(&json(list)) } else { table(list, columns) }
}

pub async fn run(args: AdminArgs, command: AdminCommand, profile: Option<&str>, out: Output) -> anyhow::Result<()> {
    let api = client(&args, profile, out)?;
    let tokens = "/edgecap/v1/admin/tokens";
    match command {
        AdminCommand::Tokens(TokensCommand::Add { account, name }) => {
            let body = json!({"account_id": account, "name": name});
            let created = api.extension("POST", tokens, Some(&body)).await?;
            emit(&if structured(out) { json(&created) } else { created["token"].as_str().unwrap_or_default().into() });
            eprintln!("token {name:?} created for account {account}: shown only this once");
        }
        AdminCommand::Tokens(TokensCommand::List) => {
            let listed = api.extension("GET", tokens, None).await?;
            list(
                out,
                &listed,
                &[
                    ("NAME", "name", 32),
                    ("ACCOUNT", "account_id", 32),
                    ("CREATED", "created", 27),
                    ("SOURCE", "source", 0),
                ],
            );
        }
        AdminCommand::Tokens(TokensCommand::Revoke { name }) => {
            api.extension("DELETE", &format!("{tokens}/{name}"), None).await?;
            eprintln!("token {name:?} revoked");
        }
        AdminCommand::BootstrapToken(BootstrapCommand::Create { pops, ttl }) => {
            let body = json!({"pops": pops, "ttl_seconds": ttl});
            let created = api.extension("POST", "/edgecap/v1/admin/bootstrap-tokens", Some(&body)).await?;
            emit(&if structured(out) { json(&created) } else { created["token"].as_str().unwrap_or_default().into() });
            eprintln!(
                "bootstrap token for PoPs {} until {}: shown only this once",
                pops.join(","),
                created["expires_on"].as_str().unwrap_or_default()
            );
        }
        AdminCommand::BootstrapToken(BootstrapCommand::List) => {
            let listed = api.extension("GET", "/edgecap/v1/admin/bootstrap-tokens", None).await?;
            list(
                out,
                &listed,
                &[("ID", "id", 16), ("EXPIRES", "expires_on", 27), ("CREATED", "created_on", 27), ("POPS", "pops", 0)],
            );
        }
        AdminCommand::Accounts(command) => {
            let base = "/edgecap/v1/admin/accounts";
            match command {
                AccountsCommand::Set { account, prefixes, pops, unrestricted } => {
                    let body = if unrestricted {
                        json!({"unrestricted": true, "pops": pops})
                    } else {
                        json!({"prefixes": prefixes, "pops": pops})
                    };
                    let set = api.extension("PUT", &format!("{base}/{account}"), Some(&body)).await?;
                    out.show(&set, views::scope);
                }
                AccountsCommand::List => {
                    let listed = api.extension("GET", base, None).await?;
                    list(
                        out,
                        &listed,
                        &[
                            ("ACCOUNT", "account_id", 24),
                            ("UNRESTRICTED", "unrestricted", 12),
                            ("POPS", "pops", 24),
                            ("PREFIXES", "prefixes", 0),
                        ],
                    );
                }
                AccountsCommand::Show { account } => {
                    out.show(&api.extension("GET", &format!("{base}/{account}"), None).await?, views::scope);
                }
                AccountsCommand::Delete { account } => {
                    api.extension("DELETE", &format!("{base}/{account}"), None).await?;
                    eprintln!("scope of account {account:?} removed");
                }
            }
        }
        AdminCommand::Certificates => {
            let listed = api.extension("GET", "/edgecap/v1/admin/certificates", None).await?;
            list(
                out,
                &listed,
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
            let listed = api.extension("GET", "/edgecap/v1/admin/revocations", None).await?;
            list(out, &listed, &[("SERIAL", "serial", 32), ("AGENT", "agent_id", 24), ("REVOKED", "revoked", 0)]);
        }
    }
    Ok(())
}
