//! `edgecap pki init|issue|revoke`: certificates for coordinators and agents, no openssl
//! needed; revocation through the admin API.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::admin;
use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a CA (ca.pem, ca-key.pem) in DIR.
    #[command(after_help = "Examples:
  edgecap pki init --dir pki
  edgecap pki init --dir /etc/edgecap/pki --name 'acme edgecap CA'")]
    Init {
        /// Where the CA's certificate and key are written.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name (its certificate's common name).
        #[arg(long, default_value = "edgecap CA")]
        name: String,
    },
    /// Issue a coordinator (--coordinator HOST...) or agent (--agent ID --pop NAME) certificate.
    #[command(after_help = "Examples:
  edgecap pki issue --dir pki --coordinator coord.example.net 10.0.0.5
  edgecap pki issue --dir pki --agent ams01-a --pop ams01")]
    Issue(IssueArgs),
    /// Revoke an agent's certificates (every coordinator refuses them at the next handshake
    /// and ends sessions using them); needs an admin token.
    #[command(after_help = "Examples:
  edgecap pki revoke --agent ams01-a
  edgecap pki revoke --serial 4f:1c:92:07   # as `openssl x509 -serial` or `edgecap admin certificates` shows it")]
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
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
pub struct IssueArgs {
    /// The CA's directory (from `edgecap pki init`); the certificate and key are written there.
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

pub async fn run(command: PkiCommand, profile: Option<&str>, out: Output) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init { dir, name } => {
            edgecap_tls::pki::init_ca(&dir, &name)?;
            println!("CA created: {}", edgecap_tls::pki::ca_cert_path(&dir).display());
            Ok(())
        }
        PkiCommand::Issue(args) => {
            let files = match (&args.agent, &args.pop) {
                (Some(agent), Some(pop)) => edgecap_tls::pki::issue_agent(&args.dir, agent, pop)?,
                _ if !args.coordinator.is_empty() => {
                    edgecap_tls::pki::issue_coordinator(&args.dir, &args.name, &args.coordinator)?
                }
                _ => {
                    return Err(crate::failure::usage(
                        "say what to issue: --coordinator HOST... or --agent ID --pop NAME",
                    ));
                }
            };
            println!("certificate: {}\nkey:         {}", files.cert.display(), files.key.display());
            Ok(())
        }
        PkiCommand::Revoke(args) => admin::revoke(args.api, args.agent, args.serial, profile, out).await,
    }
}
