//! `edgecap`: the operator CLI.
//!
//! * `edgecap up`: a whole stack on one machine (coordinator with embedded state and
//!   storage, a generated PKI, one agent on the local interface).
//! * `edgecap pki init|issue`: certificates for coordinators and agents, no openssl needed.
//! * `edgecap capture create|list|get|download|stop`, `edgecap ownership create|validate|list|delete`
//!   and `edgecap agents`: the API, from a shell.

mod admin;
mod client;
mod merge;
mod up;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "edgecap", version, about = "Packet captures across many PoPs at once")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator and one local agent on this machine, with embedded state and storage.
    Up(up::UpArgs),
    /// Certificates for mutual TLS between coordinators and agents.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Create, inspect and download captures through the API.
    Capture {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: CaptureCommand,
    },
    /// Buckets for full captures: prove ownership with a challenge file written into them.
    Ownership {
        #[command(flatten)]
        api: client::ApiArgs,
        #[command(subcommand)]
        command: OwnershipCommand,
    },
    /// Operator commands with an admin token: API tokens, agent enrollment.
    Admin {
        #[command(flatten)]
        api: admin::AdminArgs,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// List the agents connected to the coordinator.
    Agents {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Merge pcap/pcapng files into one, in timestamp order (a drop-in for mergecap).
    Merge(merge::MergeArgs),
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

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create a CA (ca.pem, ca-key.pem) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "edgecap CA")]
        name: String,
    },
    /// Issue a coordinator (--coordinator HOST...) or agent (--agent ID --pop NAME) certificate.
    Issue(IssueArgs),
    /// Revoke an agent's certificates (every coordinator refuses them at the next handshake
    /// and ends sessions using them); needs an admin token.
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
struct RevokeArgs {
    #[command(flatten)]
    api: admin::AdminArgs,
    /// Every certificate signed for this enrolled agent.
    #[arg(long, required_unless_present = "serial")]
    agent: Option<String>,
    /// One certificate by serial (hex; `edgecap admin certificates` lists them, and
    /// `openssl x509 -serial` shows those made with `edgecap pki issue`).
    #[arg(long)]
    serial: Option<String>,
}

#[derive(Args, Debug)]
struct IssueArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Host names / IP addresses the coordinator is reached at.
    #[arg(long = "coordinator", num_args = 1.., conflicts_with_all = ["agent", "pop"])]
    coordinator: Vec<String>,
    /// Coordinator name (in its certificate identity).
    #[arg(long, default_value = "coordinator")]
    name: String,
    /// Agent id.
    #[arg(long, requires = "pop")]
    agent: Option<String>,
    /// The PoP the agent may act for.
    #[arg(long, requires = "agent")]
    pop: Option<String>,
}

#[derive(Subcommand, Debug)]
enum CaptureCommand {
    /// Request a capture (sample by default). Prints the capture as JSON.
    Create(Box<client::CreateArgs>),
    /// List captures, newest first.
    List,
    /// Show one capture.
    Get { id: String },
    /// Wait until a capture is final, then show it.
    Wait {
        id: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Download a sample capture's PCAP.
    Download {
        id: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Stop a full capture.
    Stop { id: String },
}

#[derive(Subcommand, Debug)]
enum OwnershipCommand {
    /// Add a bucket: the coordinator writes ownership-challenge-<id>.txt into it.
    Create {
        #[arg(long)]
        destination_conf: String,
    },
    /// Validate a bucket with the text read from its challenge file.
    Validate {
        #[arg(long)]
        destination_conf: String,
        #[arg(long)]
        ownership_challenge: String,
    },
    /// List this account's buckets.
    List,
    /// Remove a bucket.
    Delete { id: String },
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("edgecap: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Pki { command: PkiCommand::Init { dir, name } } => {
            edgecap_tls::pki::init_ca(&dir, &name)?;
            println!("CA created: {}", edgecap_tls::pki::ca_cert_path(&dir).display());
            Ok(())
        }
        Command::Pki { command: PkiCommand::Issue(args) } => {
            let files = match (&args.agent, &args.pop) {
                (Some(agent), Some(pop)) => edgecap_tls::pki::issue_agent(&args.dir, agent, pop)?,
                _ if !args.coordinator.is_empty() => {
                    edgecap_tls::pki::issue_coordinator(&args.dir, &args.name, &args.coordinator)?
                }
                _ => anyhow::bail!("say what to issue: --coordinator HOST... or --agent ID --pop NAME"),
            };
            println!("certificate: {}\nkey:         {}", files.cert.display(), files.key.display());
            Ok(())
        }
        Command::Pki { command: PkiCommand::Revoke(args) } => admin::revoke(args.api, args.agent, args.serial).await,
        Command::Capture { api, command } => {
            let client = client::client(api)?;
            match command {
                CaptureCommand::Create(args) => client::print(&client::create(&client, &args).await?),
                CaptureCommand::List => client::print(&client.call("GET", "", None).await?),
                CaptureCommand::Get { id } => client::print(&client.call("GET", &format!("/{id}"), None).await?),
                CaptureCommand::Wait { id, timeout } => {
                    client::print(&client.wait(&id, std::time::Duration::from_secs(timeout.min(86_400)), |_| {}).await?)
                }
                CaptureCommand::Download { id, output } => {
                    let n = client.download(&id, &output).await?;
                    eprintln!("{n} bytes written to {}", output.display());
                    Ok(())
                }
                CaptureCommand::Stop { id } => {
                    client.call("PUT", &format!("/{id}/stop"), None).await?;
                    eprintln!("stop requested");
                    Ok(())
                }
            }
        }
        Command::Ownership { api, command } => {
            let client = client::client(api)?;
            match command {
                OwnershipCommand::Create { destination_conf } => client::print(
                    &client.call("POST", "/ownership", Some(&serde_json::json!({"destination_conf": destination_conf}))).await?,
                ),
                OwnershipCommand::Validate { destination_conf, ownership_challenge } => client::print(
                    &client
                        .call(
                            "POST",
                            "/ownership/validate",
                            Some(&serde_json::json!({"destination_conf": destination_conf, "ownership_challenge": ownership_challenge})),
                        )
                        .await?,
                ),
                OwnershipCommand::List => client::print(&client.call("GET", "/ownership", None).await?),
                OwnershipCommand::Delete { id } => {
                    client.call("DELETE", &format!("/ownership/{id}"), None).await?;
                    eprintln!("ownership deleted");
                    Ok(())
                }
            }
        }
        Command::Merge(args) => merge::run(args),
        Command::Admin { api, command } => admin::run(api, command).await,
        Command::BenchStatus { args } => bench("status", args),
        Command::BenchFanout { args } => bench("fanout", args),
        Command::Agents { api } => {
            let client = client::client(api)?;
            client::print(&client.agents().await.context("list agents")?)
        }
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
