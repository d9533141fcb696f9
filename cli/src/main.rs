//! `edgecap`: the operator CLI.
//!
//! * `edgecap up`: a whole stack on one machine (coordinator with embedded state and
//!   storage, a generated PKI, one agent on the local interface).
//! * `edgecap pki init|issue|revoke`: certificates for coordinators and agents, no openssl needed.
//! * `edgecap capture create|list|get|wait|download|stop`, `edgecap ownership
//!   create|validate|list|delete`, `edgecap account scope` and `edgecap agents`: the API, from
//!   a shell; tables on a terminal, JSON for scripts (`--output`).
//! * `edgecap config set-profile|show`: named profiles in a config file.
//! * `edgecap completions SHELL`, `edgecap man`: from the clap definitions below.
//!
//! Exit codes and errors: failure.rs; docs/cli.md tells it all.

mod admin;
mod capture;
mod client;
mod config;
mod docs;
mod failure;
mod merge;
mod output;
mod ownership;
mod pki;
mod profile;
mod up;
mod views;
mod wait;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::output::{Format, Output};

/// The top-level help's end: examples, output, configuration, exit codes.
const ABOUT_USE: &str = "Examples:
  edgecap up --data-dir edgecap-data                 # a coordinator and an agent on this machine
  source edgecap-data/env                            # EDGECAP_API, EDGECAP_ACCOUNT, EDGECAP_TOKEN
  edgecap capture create --time-limit 60 --packet-limit 100 --protocol 1 --wait
  edgecap capture download ID -o sample.pcap
  edgecap capture list --output json | jq '.[0]'
  edgecap --profile prod agents

Output:
  Tables when stdout is a terminal, JSON (the API's result) otherwise; --output json|table
  or EDGECAP_OUTPUT chooses. Progress bars go to stderr, only when it is a terminal.

Configuration:
  Profiles in $EDGECAP_CONFIG or ~/.config/edgecap/config.toml ([profiles.NAME]: api, account,
  token_file, ca, admin_token_file); --profile or EDGECAP_PROFILE picks one (default: default).
  Flags win over environment variables (EDGECAP_API, EDGECAP_ACCOUNT, EDGECAP_TOKEN,
  EDGECAP_TOKEN_FILE, EDGECAP_CA), which win over the profile. See `edgecap config --help`.";

#[derive(Parser, Debug)]
#[command(
    name = "edgecap",
    version,
    about = "Packet captures across many PoPs at once",
    after_help = format!("{ABOUT_USE}\n\n{}", failure::EXIT_CODES),
)]
struct Cli {
    /// The config file's profile to use [env: EDGECAP_PROFILE] [default: default]
    #[arg(long, global = true, value_name = "NAME")]
    profile: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator and one local agent on this machine, with embedded state and storage.
    #[command(after_help = "Examples:
  edgecap up --data-dir edgecap-data
  edgecap up --data-dir /var/lib/edgecap --iface eth0 --pop ams01 --listen 0.0.0.0:9440")]
    Up(up::UpArgs),
    /// Certificates for mutual TLS between coordinators and agents.
    #[command(after_help = "Examples:
  edgecap pki init --dir pki
  edgecap pki issue --dir pki --coordinator coord.example.net
  edgecap pki issue --dir pki --agent ams01-a --pop ams01")]
    Pki {
        #[command(subcommand)]
        command: pki::PkiCommand,
    },
    /// Create, inspect and download captures through the API.
    #[command(after_help = "Examples:
  edgecap capture create --time-limit 60 --packet-limit 100 --protocol 1 --wait
  edgecap capture list
  edgecap capture --api https://edgecap.example.net/client/v4 --account acme get ID")]
    Capture {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: capture::CaptureCommand,
    },
    /// Buckets for full captures: prove ownership with a challenge file written into them.
    #[command(after_help = "Examples:
  edgecap ownership create --destination-conf 's3://my-bucket/pcaps?region=eu-west-1'
  edgecap ownership list")]
    Ownership {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: ownership::OwnershipCommand,
    },
    /// This account, as the API sees it.
    #[command(after_help = "Examples:
  edgecap account scope")]
    Account {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: ownership::AccountCommand,
    },
    /// Operator commands with an admin token: API tokens, account scopes, agent enrollment.
    #[command(after_help = "Examples:
  export EDGECAP_ADMIN_TOKEN=$(cat admin-token)
  edgecap admin tokens add --account acme --name ci
  edgecap admin accounts set acme --prefix 198.51.100.0/24 --pop 'ams*'
  edgecap admin bootstrap-token create --pops 'ams*'")]
    Admin {
        #[command(flatten)]
        api: admin::AdminArgs,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// List the agents connected to the coordinators, by PoP, with their lookback.
    #[command(after_help = "Examples:
  edgecap agents
  edgecap agents --output json | jq -r '.[].pop' | sort -u")]
    Agents {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Merge pcap/pcapng files into one, in timestamp order (a drop-in for mergecap).
    #[command(after_help = "Examples:
  edgecap merge -o all.pcap ams01.pcap fra02.pcap
  edgecap merge -o all.pcapng --format pcapng --comment 'capture 0123abcd' shards/*.pcap")]
    Merge(merge::MergeArgs),
    /// Profiles in the config file: where the API is, the account, the token's file.
    #[command(after_help = "Examples:
  edgecap config set-profile prod --api https://edgecap.example.net/client/v4 --account acme \\
      --token-file ~/.config/edgecap/acme.token
  edgecap config show --profile prod")]
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  edgecap completions bash > /etc/bash_completion.d/edgecap
  edgecap completions zsh > \"${fpath[1]}/_edgecap\"
  edgecap completions fish > ~/.config/fish/completions/edgecap.fish")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Man pages: the top page on stdout, or one page per command into --dir.
    #[command(after_help = "Examples:
  edgecap man | man -l -
  edgecap man --dir /usr/local/share/man/man1")]
    Man {
        /// Write every command's page (edgecap.1, edgecap-capture-create.1, ...) into DIR.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Deprecated: moved to `edgecap-bench status` (run through it when installed beside).
    #[command(hide = true, disable_help_flag = true)]
    BenchStatus {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Deprecated: moved to `edgecap-bench fanout` (run through it when installed beside).
    #[command(hide = true, disable_help_flag = true)]
    BenchFanout {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// The commands whose output `--output` chooses (with all their subcommands).
const PRINTING: [&str; 6] = ["capture", "ownership", "account", "agents", "admin", "config"];

/// The whole command line: the derive's definitions plus `--output` on every command that
/// prints what the API answered (not on `capture download`, whose `--output` is its file).
fn command() -> clap::Command {
    fn add(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
        let cmd = if cmd.get_arguments().any(|a| a.get_long() == Some("output")) {
            cmd
        } else {
            cmd.arg(output::format_arg())
        };
        names.into_iter().fold(cmd, |cmd, name| cmd.mut_subcommand(name, add))
    }
    let mut cmd = Cli::command().arg(output::format_arg());
    for name in PRINTING {
        cmd = cmd.mut_subcommand(name, add);
    }
    cmd.mut_subcommand("pki", |pki| pki.mut_subcommand("revoke", |r| r.arg(output::format_arg())))
}

/// `--output` as given at the deepest level of the command line that has it.
fn format_flag(matches: &clap::ArgMatches) -> Option<Format> {
    let mut found = None;
    let mut m = Some(matches);
    while let Some(level) = m {
        if let Ok(Some(f)) = level.try_get_one::<Format>(output::FORMAT_ARG) {
            found = Some(*f);
        }
        m = level.subcommand().map(|(_, sub)| sub);
    }
    found
}

#[tokio::main]
async fn main() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("edgecap: internal error{place}: {} (a bug: please report it)", failure::one_line(&message));
    }));
    let matches = command().try_get_matches().unwrap_or_else(|e| failure::clap_exit(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| failure::clap_exit(e));
    let out = match Output::resolve(format_flag(&matches)) {
        Ok(out) => out,
        Err(e) => {
            failure::report(&e, false);
            std::process::exit(failure::exit_code(&e));
        }
    };
    if let Err(e) = run(cli, out).await {
        failure::report(&e, out.json() && out.chosen);
        std::process::exit(failure::exit_code(&e));
    }
}

async fn run(cli: Cli, out: Output) -> anyhow::Result<()> {
    let profile = cli.profile.as_deref();
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Pki { command } => pki::run(command, profile, out).await,
        Command::Capture { api, command } => capture::run(client::Api::new(&api, profile, out)?, command).await,
        Command::Ownership { api, command } => ownership::run(client::Api::new(&api, profile, out)?, command).await,
        Command::Account { api, command } => ownership::account(client::Api::new(&api, profile, out)?, command).await,
        Command::Agents { api } => ownership::agents(client::Api::new(&api, profile, out)?).await,
        Command::Merge(args) => merge::run(args),
        Command::Admin { api, command } => admin::run(api, command, profile, out).await,
        Command::Config { command } => config::run(command, profile, out),
        Command::Completions { shell } => {
            docs::completions(shell, command());
            Ok(())
        }
        Command::Man { dir } => docs::man(dir.as_deref(), command()),
        Command::BenchStatus { args } => bench("status", args),
        Command::BenchFanout { args } => bench("fanout", args),
    }
}

/// The benchmark hooks moved to `edgecap-bench`: hand the same arguments to it.
fn bench(command: &str, args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    eprintln!("edgecap: warning: `edgecap bench-{command}` is deprecated; use `edgecap-bench {command}`");
    let bench = std::env::current_exe()?.parent().map(|d| d.join("edgecap-bench")).filter(|b| b.exists());
    let bench = bench.context("edgecap-bench is not installed beside edgecap")?;
    use std::os::unix::process::CommandExt as _;
    let error = std::process::Command::new(&bench).arg(command).args(args).exec();
    anyhow::bail!("run {}: {error}", bench.display())
}

#[cfg(test)]
mod tests;
