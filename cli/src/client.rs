//! The API flags shared by the commands that call it, resolved with the environment and the
//! profile into a client (`edgecap-client`), and calls whose errors keep the API's envelope.

use std::path::PathBuf;

use clap::Args;
use edgecap_client::{Client, Endpoint};
use serde_json::Value;

use crate::failure::{Refusal, usage};
use crate::output::Output;
use crate::profile::{self, Selected, Source};

/// Where the API is when nothing says otherwise.
pub const DEFAULT_API: &str = "http://127.0.0.1:9440/client/v4";

#[derive(Args, Debug, Clone, Default)]
pub struct ApiArgs {
    /// API base URL [default: the profile's api, else http://127.0.0.1:9440/client/v4]
    #[arg(long, global = true, env = "EDGECAP_API")]
    pub api: Option<String>,
    /// The account [default: the profile's account]
    #[arg(long, global = true, env = "EDGECAP_ACCOUNT")]
    pub account: Option<String>,
    /// The API token. Prefer EDGECAP_TOKEN or --token-file: a token on the command line shows
    /// in `ps`.
    #[arg(long, global = true, env = "EDGECAP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token [default: the profile's token_file]
    #[arg(long, global = true, env = "EDGECAP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an https:// API, besides the system's [default: the
    /// profile's ca]
    #[arg(long, global = true, env = "EDGECAP_CA")]
    pub ca: Option<PathBuf>,
}

/// Where the token comes from.
#[derive(Clone, Debug)]
pub enum Token {
    Value(String, Source),
    File(PathBuf, Source),
}

/// The settings in force, each with where it came from.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub selected: Selected,
    pub api: (String, Source),
    pub account: Option<(String, Source)>,
    pub token: Option<Token>,
    pub ca: Option<(PathBuf, Source)>,
}

/// Flag or environment variable: clap gives one value for both; the variable's value tells.
pub fn source_of(value: &str, flag: &'static str, var: &'static str) -> Source {
    match std::env::var_os(var) {
        Some(v) if v == value => Source::Env(var),
        _ => Source::Flag(flag),
    }
}

fn source_of_path(value: &std::path::Path, flag: &'static str, var: &'static str) -> Source {
    source_of(&value.to_string_lossy(), flag, var)
}

/// Flags, then environment variables, then the profile, then the built-in defaults.
pub fn resolve(args: &ApiArgs, profile: Option<&str>) -> anyhow::Result<Resolved> {
    let selected = profile::select(profile)?;
    let p = &selected.profile;
    let from_profile = || Source::Profile(selected.name.clone());
    let api = match (&args.api, &p.api) {
        (Some(api), _) => (api.clone(), source_of(api, "--api", "EDGECAP_API")),
        (None, Some(api)) => (api.clone(), from_profile()),
        (None, None) => (DEFAULT_API.to_string(), Source::Default),
    };
    let account = match (&args.account, &p.account) {
        (Some(a), _) => Some((a.clone(), source_of(a, "--account", "EDGECAP_ACCOUNT"))),
        (None, Some(a)) => Some((a.clone(), from_profile())),
        (None, None) => None,
    };
    let flag_token = args.token.clone().map(|t| {
        let source = source_of(&t, "--token", "EDGECAP_TOKEN");
        Token::Value(t, source)
    });
    let flag_file = args.token_file.clone().map(|f| {
        let source = source_of_path(&f, "--token-file", "EDGECAP_TOKEN_FILE");
        Token::File(f, source)
    });
    let is_flag =
        |t: &Option<Token>| matches!(t, Some(Token::Value(_, Source::Flag(_)) | Token::File(_, Source::Flag(_))));
    let token = if is_flag(&flag_token) {
        flag_token
    } else if is_flag(&flag_file) {
        flag_file
    } else {
        flag_token.or(flag_file).or_else(|| p.token_file.clone().map(|f| Token::File(f, from_profile())))
    };
    let ca = match (&args.ca, &p.ca) {
        (Some(ca), _) => Some((ca.clone(), source_of_path(ca, "--ca", "EDGECAP_CA"))),
        (None, Some(ca)) => Some((ca.clone(), from_profile())),
        (None, None) => None,
    };
    Ok(Resolved { selected, api, account, token, ca })
}

/// Where a missing setting could come from, for the error saying it is missing.
fn missing(what: &str, flag: &str, var: &str, key: &str, selected: &Selected) -> anyhow::Error {
    let place = selected.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the config file".into());
    usage(format!("{what} is needed: {flag}, {var}, or {key} in profile {:?} of {place}", selected.name))
}

impl Resolved {
    /// The token: read from its file, or as given (with a warning when on the command line).
    pub fn token(&self) -> anyhow::Result<String> {
        match &self.token {
            Some(Token::Value(token, source)) => {
                if matches!(source, Source::Flag(_)) {
                    eprintln!(
                        "edgecap: warning: --token shows in `ps`; use EDGECAP_TOKEN, --token-file or a profile's token_file"
                    );
                }
                Ok(token.clone())
            }
            Some(Token::File(path, source)) => {
                let what = match source {
                    Source::Profile(name) => format!("profile {name:?} token_file"),
                    Source::Env(_) => "EDGECAP_TOKEN_FILE".to_string(),
                    _ => "--token-file".to_string(),
                };
                profile::read_token(path, &what)
            }
            None => Err(missing("an API token", "--token-file", "EDGECAP_TOKEN", "token_file", &self.selected)),
        }
    }

    /// A client for these settings (account and token required).
    pub fn client(&self) -> anyhow::Result<Client> {
        let account = match &self.account {
            Some((a, _)) => a.clone(),
            None => return Err(missing("an account", "--account", "EDGECAP_ACCOUNT", "account", &self.selected)),
        };
        let token = self.token()?;
        client(&self.api, account, token, self.ca.as_ref().map(|(p, _)| p.as_path()))
    }
}

/// A client of `api`; an API URL that is not http(s) is a usage error naming where it came from.
pub fn client(
    api: &(String, Source),
    account: String,
    token: String,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<Client> {
    let (url, source) = api;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(usage(format!("api ({source}): {url:?} must be an http:// or https:// URL")));
    }
    Ok(Client::with_ca(Endpoint { api: url.clone(), account, token }, ca)?)
}

/// A client and how to print: what every API command runs with.
pub struct Api {
    pub client: Client,
    pub out: Output,
}

impl Api {
    /// From the API flags, the environment and the profile.
    pub fn new(args: &ApiArgs, profile: Option<&str>, out: Output) -> anyhow::Result<Self> {
        Ok(Self { client: resolve(args, profile)?.client()?, out })
    }

    /// Calls `url`: the envelope's `result`, or a [`Refusal`] keeping the envelope.
    pub async fn call_url(&self, method: &str, url: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, bytes) = self.client.send(method, url, body).await?;
        match edgecap_client::answer(status, &bytes) {
            Ok(v) => Ok(v),
            Err(edgecap_client::ClientError::Api { status, .. }) => Err(Refusal::new(status, &bytes).into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Calls a path under this account's `/pcaps`.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.call_url(method, &self.client.pcaps_url(path), body).await
    }

    /// Calls an edgecap extension outside `/client/v4` (`/edgecap/v1/...`).
    pub async fn extension(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.call_url(method, &self.client.extension_url(path), body).await
    }
}
