//! The config file and its named profiles, like other cloud CLIs':
//!
//! ```toml
//! [profiles.default]
//! api = "https://edgecap.example.net/client/v4"
//! account = "acme"
//! token_file = "~/.config/edgecap/acme.token"   # the token itself is never in this file
//! ca = "/etc/edgecap/ca.pem"
//! admin_token_file = "/etc/edgecap/admin-token"
//! ```
//!
//! `$EDGECAP_CONFIG`, else `$XDG_CONFIG_HOME/edgecap/config.toml`, else
//! `~/.config/edgecap/config.toml`. The profile is `--profile`, else `EDGECAP_PROFILE`, else
//! `default`. Flags win over environment variables, which win over the profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::failure::usage;

/// One profile: where the API is and who calls it. Relative paths are relative to the
/// config file's directory; `~/` is the home directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

/// The file: `[profiles.NAME]` tables.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

/// Where a setting came from (`edgecap config show` says it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag(&'static str),
    Env(&'static str),
    Profile(String),
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag(flag) => write!(f, "flag {flag}"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::Profile(name) => write!(f, "profile {name}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The profile in force for this command.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The config file (it may not exist).
    pub path: Option<PathBuf>,
    pub name: String,
    /// Where the name came from (`Default` when neither --profile nor EDGECAP_PROFILE).
    pub named_by: Source,
    /// Empty when the file or the profile does not exist.
    pub profile: Profile,
    /// Every profile in the file.
    pub names: Vec<String>,
    pub found: bool,
}

/// The config file's path: `$EDGECAP_CONFIG`, `$XDG_CONFIG_HOME/edgecap/config.toml` or
/// `~/.config/edgecap/config.toml` (`None` without a home directory).
pub fn config_path() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(path) = var("EDGECAP_CONFIG") {
        return Some(path);
    }
    let base = var("XDG_CONFIG_HOME").filter(|p| p.is_absolute()).or_else(|| Some(var("HOME")?.join(".config")))?;
    Some(base.join("edgecap").join("config.toml"))
}

/// Reads the config file; `None` if there is none.
pub fn load(path: &Path) -> anyhow::Result<Option<ConfigFile>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read the config file {}", path.display())),
    };
    parse(&text).map(Some).map_err(|e| usage(format!("config file {}: {e}", path.display())))
}

/// A config file's text, checked: every key known, no token in it.
pub fn parse(text: &str) -> Result<ConfigFile, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    if let Some(toml::Value::Table(profiles)) = table.get("profiles") {
        for (name, profile) in profiles {
            if let toml::Value::Table(p) = profile
                && p.contains_key("token")
            {
                return Err(format!(
                    "profiles.{name}.token: tokens are not kept in the config file; write the token into a file \
                     only you can read and name it with token_file"
                ));
            }
        }
    }
    toml::from_str(text).map_err(|e| toml_error(text, &e))
}

/// A TOML error in one line, with its line number.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = crate::failure::one_line(e.message());
    match e.span() {
        Some(span) => format!("line {}: {message}", text[..span.start.min(text.len())].matches('\n').count() + 1),
        None => message,
    }
}

/// The profile `flag` (`--profile`), else `EDGECAP_PROFILE`, else `default`. A profile named
/// on purpose must exist; `default` may be missing (then every setting comes from flags,
/// the environment and the built-in defaults).
pub fn select(flag: Option<&str>) -> anyhow::Result<Selected> {
    let env = std::env::var("EDGECAP_PROFILE").ok().filter(|v| !v.is_empty());
    let (name, named_by) = match (flag, env) {
        (Some(name), _) => (name.to_string(), Source::Flag("--profile")),
        (None, Some(name)) => (name, Source::Env("EDGECAP_PROFILE")),
        (None, None) => ("default".to_string(), Source::Default),
    };
    let path = config_path();
    let file = match &path {
        Some(path) => load(path)?,
        None => None,
    };
    let names: Vec<String> = file.iter().flat_map(|f| f.profiles.keys().cloned()).collect();
    let profile = file.and_then(|mut f| f.profiles.remove(&name));
    if profile.is_none() && named_by != Source::Default {
        let which = match named_by {
            Source::Flag(_) => format!("--profile {name}"),
            _ => format!("EDGECAP_PROFILE={name}"),
        };
        let place = path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "no config file".into());
        let known = if names.is_empty() { "none".to_string() } else { names.join(", ") };
        return Err(usage(format!(
            "{which}: no such profile in {place} (profiles: {known}; `edgecap config set-profile {name} ...` makes it)"
        )));
    }
    let found = profile.is_some();
    let mut profile = profile.unwrap_or_default();
    let dir = path.as_ref().and_then(|p| p.parent()).map(Path::to_path_buf).unwrap_or_default();
    for file in [&mut profile.token_file, &mut profile.ca, &mut profile.admin_token_file].into_iter().flatten() {
        *file = expand(&dir, file);
    }
    Ok(Selected { path, name, named_by, profile, names, found })
}

/// `~/x` under the home directory; a relative path under `dir`.
pub fn expand(dir: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if path.is_relative() { dir.join(path) } else { path.to_path_buf() }
}

/// A token from a file: its first line, trimmed; an empty file is an error naming it.
pub fn read_token(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{what} {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        return Err(usage(format!("{what} {}: empty (it should hold the token)", path.display())));
    }
    Ok(token)
}

/// Writes the config file (0600, in a 0700 directory it creates), replacing it whole.
pub fn save(path: &Path, file: &ConfigFile) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let text = toml::to_string(file).context("write the config file")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("create {}", dir.display()))?;
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "config.toml".into());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_are_checked_and_name_the_line() {
        let ok =
            parse("[profiles.prod]\napi = \"https://x/client/v4\"\naccount = \"acme\"\ntoken_file = \"t\"\n").unwrap();
        assert_eq!(ok.profiles["prod"].account.as_deref(), Some("acme"));
        let token = parse("[profiles.prod]\ntoken = \"secret\"\n").unwrap_err();
        assert!(token.starts_with("profiles.prod.token: tokens are not kept") && !token.contains("secret"), "{token}");
        let unknown = parse("[profiles.prod]\napi = \"x\"\nacount = \"a\"\n").unwrap_err();
        assert!(unknown.starts_with("line 3:") && unknown.contains("acount"), "{unknown}");
        let broken = parse("[profiles.prod\n").unwrap_err();
        assert!(broken.starts_with("line 1:") && !broken.contains('\n'), "{broken}");
        assert_eq!(expand(Path::new("/etc/edgecap"), Path::new("token")), PathBuf::from("/etc/edgecap/token"));
    }
}
