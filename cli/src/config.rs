//! `edgecap config set-profile|show`: the config file's profiles (profile.rs reads them).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{ApiArgs, Token, resolve};
use crate::failure::usage;
use crate::output::{Output, fields};
use crate::profile::{self, Profile};

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Create or update a profile in the config file (only the settings given change).
    #[command(after_help = "Examples:
  edgecap config set-profile default --api https://edgecap.example.net/client/v4 --account acme \\
      --token-file ~/.config/edgecap/acme.token
  edgecap config set-profile lab --api http://127.0.0.1:9440/client/v4 --ca /etc/edgecap/ca.pem
  edgecap --profile lab capture list")]
    SetProfile {
        /// The profile's name (`default` is used when no --profile or EDGECAP_PROFILE says).
        name: String,
        /// API base URL.
        #[arg(long)]
        api: Option<String>,
        /// The account.
        #[arg(long)]
        account: Option<String>,
        /// A file holding the API token (the token itself is never kept in the config file).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// A CA certificate (PEM) to trust for an https:// API.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// A file holding an admin token, for `edgecap admin`.
        #[arg(long)]
        admin_token_file: Option<PathBuf>,
    },
    /// Show the config file, the profile in force and where each setting comes from (never a
    /// token).
    #[command(after_help = "Examples:
  edgecap config show
  EDGECAP_PROFILE=lab edgecap config show --output json")]
    Show {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A path as given, made absolute (the config file is read from anywhere).
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir().context("the current directory")?;
    Ok(profile::expand(&cwd, path))
}

pub fn run(command: ConfigCommand, profile_flag: Option<&str>, out: Output) -> anyhow::Result<()> {
    match command {
        ConfigCommand::SetProfile { name, api, account, token_file, ca, admin_token_file } => {
            if name.is_empty() || name.contains(['.', ']', '[', '"']) || name.chars().any(char::is_whitespace) {
                return Err(usage(format!("NAME: {name:?} is not a profile name (letters, digits, - and _)")));
            }
            let path = profile::config_path()
                .ok_or_else(|| usage("no config file: set EDGECAP_CONFIG, XDG_CONFIG_HOME or HOME"))?;
            let mut file = profile::load(&path)?.unwrap_or_default();
            let entry = file.profiles.entry(name.clone()).or_insert_with(Profile::default);
            if let Some(api) = api {
                entry.api = Some(api);
            }
            if let Some(account) = account {
                entry.account = Some(account);
            }
            for (slot, given, flag) in [
                (&mut entry.token_file, token_file, "--token-file"),
                (&mut entry.ca, ca, "--ca"),
                (&mut entry.admin_token_file, admin_token_file, "--admin-token-file"),
            ] {
                if let Some(given) = given {
                    let full = absolute(&given)?;
                    if !full.exists() {
                        eprintln!("edgecap: warning: {flag} {}: no such file (yet)", full.display());
                    }
                    *slot = Some(full);
                }
            }
            profile::save(&path, &file)?;
            eprintln!("profile {name:?} saved in {}", path.display());
            Ok(())
        }
        ConfigCommand::Show { api } => {
            let resolved = resolve(&api, profile_flag)?;
            let s = &resolved.selected;
            let (token, token_from) = match &resolved.token {
                Some(Token::Value(_, from)) => ("(given; not shown)".to_string(), from.to_string()),
                Some(Token::File(path, from)) => {
                    let state = if path.is_file() { "" } else { " (missing)" };
                    (format!("file {}{state}", path.display()), from.to_string())
                }
                None => ("none".to_string(), String::new()),
            };
            let with = |v: Option<(String, String)>| v.unwrap_or_else(|| ("none".into(), String::new()));
            let (account, account_from) = with(resolved.account.as_ref().map(|(a, f)| (a.clone(), f.to_string())));
            let (ca, ca_from) = with(resolved.ca.as_ref().map(|(p, f)| (p.display().to_string(), f.to_string())));
            let admin = s.profile.admin_token_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let file = s.path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
            let view = json!({
                "config_file": file,
                "config_file_exists": s.path.as_ref().is_some_and(|p| p.is_file()),
                "profile": s.name, "profile_from": s.named_by.to_string(), "profile_exists": s.found,
                "profiles": s.names,
                "api": resolved.api.0, "api_from": resolved.api.1.to_string(),
                "account": if account == "none" { Value::Null } else { account.clone().into() },
                "account_from": account_from,
                "token": token, "token_from": token_from,
                "ca": if ca == "none" { Value::Null } else { ca.clone().into() }, "ca_from": ca_from,
                "admin_token_file": if admin.is_empty() { Value::Null } else { admin.clone().into() },
            });
            let from = |v: &str, f: &str| if f.is_empty() { v.to_string() } else { format!("{v}  ({f})") };
            out.show(&view, |_| {
                let exists = if view["config_file_exists"] == true { "" } else { "  (does not exist)" };
                let named = match s.named_by {
                    crate::profile::Source::Default => "neither --profile nor EDGECAP_PROFILE".to_string(),
                    ref by => by.to_string(),
                };
                let profile_state = if s.found { "" } else { "; not in the file" };
                fields(&[
                    ("config file", format!("{file}{exists}")),
                    ("profile", format!("{}  ({named}{profile_state})", s.name)),
                    ("profiles", if s.names.is_empty() { "none".into() } else { s.names.join(", ") }),
                    ("api", from(&resolved.api.0, &resolved.api.1.to_string())),
                    ("account", from(&account, &account_from)),
                    ("token", from(&token, &token_from)),
                    ("ca", from(&ca, &ca_from)),
                    ("admin token file", admin.clone()),
                ])
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ConfigFile;

    #[test]
    fn a_saved_file_reads_back() {
        let dir = tempfile_dir();
        let path = dir.join("sub").join("config.toml");
        let mut file = ConfigFile::default();
        file.profiles.insert(
            "prod".into(),
            Profile { api: Some("https://x/client/v4".into()), account: Some("acme".into()), ..Default::default() },
        );
        profile::save(&path, &file).unwrap();
        let back = profile::load(&path).unwrap().unwrap();
        assert_eq!(back.profiles["prod"].account.as_deref(), Some("acme"));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("edgecap-cli-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
