//! The account's other resources: bucket ownerships (`edgecap ownership`), its own scope
//! (`edgecap account scope`), and the agents it can capture at (`edgecap agents`).

use clap::Subcommand;
use serde_json::json;

use crate::client::Api;
use crate::views;

#[derive(Subcommand, Debug)]
pub enum OwnershipCommand {
    /// Add a bucket: the coordinator writes ownership-challenge-<id>.txt into it.
    #[command(after_help = "Examples:
  edgecap ownership create --destination-conf 's3://my-bucket/pcaps?region=eu-west-1'
  edgecap ownership create --destination-conf 's3://b?region=us-east-1&endpoint=https://minio.example.net'")]
    Create {
        /// The bucket: s3://bucket[/prefix][?region=R][&endpoint=URL].
        #[arg(long)]
        destination_conf: String,
    },
    /// Validate a bucket with the text read from its challenge file.
    #[command(after_help = "Examples:
  edgecap ownership validate --destination-conf 's3://my-bucket/pcaps?region=eu-west-1' \\
      --ownership-challenge \"$(aws s3 cp s3://my-bucket/pcaps/ownership-challenge-ID.txt -)\"")]
    Validate {
        /// The bucket, as given to `ownership create`.
        #[arg(long)]
        destination_conf: String,
        /// The challenge file's text.
        #[arg(long)]
        ownership_challenge: String,
    },
    /// List this account's buckets.
    #[command(after_help = "Examples:
  edgecap ownership list
  edgecap ownership list --output json | jq -r '.[] | select(.status == \"success\") | .destination_conf'")]
    List,
    /// Remove a bucket.
    #[command(after_help = "Examples:
  edgecap ownership delete 0123456789abcdef0123456789abcdef")]
    Delete {
        /// The ownership's id (`edgecap ownership list`).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AccountCommand {
    /// This account's scope: the prefixes its captures are restricted to, and its PoPs.
    #[command(after_help = "Examples:
  edgecap account scope
  edgecap account scope --output json | jq .prefixes")]
    Scope,
}

pub async fn run(api: Api, command: OwnershipCommand) -> anyhow::Result<()> {
    match command {
        OwnershipCommand::Create { destination_conf } => {
            let body = json!({"destination_conf": destination_conf});
            api.out.show(&api.call("POST", "/ownership", Some(&body)).await?, views::ownership);
        }
        OwnershipCommand::Validate { destination_conf, ownership_challenge } => {
            let body = json!({"destination_conf": destination_conf, "ownership_challenge": ownership_challenge});
            api.out.show(&api.call("POST", "/ownership/validate", Some(&body)).await?, views::ownership);
        }
        OwnershipCommand::List => api.out.show(&api.call("GET", "/ownership", None).await?, views::ownerships),
        OwnershipCommand::Delete { id } => {
            api.call("DELETE", &format!("/ownership/{id}"), None).await?;
            eprintln!("ownership deleted");
        }
    }
    Ok(())
}

pub async fn account(api: Api, command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Scope => {
            let account = api.client.endpoint().account.clone();
            let scope = api.extension("GET", &format!("/edgecap/v1/accounts/{account}/scope"), None).await?;
            api.out.show(&scope, views::scope);
        }
    }
    Ok(())
}

pub async fn agents(api: Api) -> anyhow::Result<()> {
    api.out.show(&api.extension("GET", "/edgecap/v1/agents", None).await?, views::agents);
    Ok(())
}
