//! `edgecap-bench`: the benchmarks' own binary, kept out of the operator binaries.
//!
//! * `fanout`: sample-capture latency against the number of agents (one coordinator and N real
//!   agents in this process);
//! * `status`: per-PoP status writes against etcd, for `bench/etcd.sh`;
//! * `simulate`: N simulated agents (the real agent code with a replayed packet source) for
//!   the scale benchmarks and tests;
//! * `capture`: `edgecap-agent capture` with the agent's lookback fed from the same interface
//!   (`--with-lookback`), for `bench/capture.sh`;
//! * `lookback`: sample queries over a large lookback filled in-process, as an agent answers
//!   them;
//! * `s3merge`: the leader's merge of a full capture's shards already in an S3 bucket.
//!
//! Commands and figures are in `docs/benchmarks.md`.

use clap::{Parser, Subcommand};

mod capture;
mod fanout;
mod lookback;
mod s3merge;
mod simulate;
mod status;

#[derive(Parser, Debug)]
#[command(name = "edgecap-bench", version, about = "edgecap's benchmarks (see docs/benchmarks.md)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sample-capture latency against the number of agents.
    Fanout(fanout::FanoutArgs),
    /// Simulated agents (the real agent code, replayed packets) until SIGTERM.
    Simulate(simulate::SimulateArgs),
    /// Per-PoP status writes against etcd (bench/etcd.sh).
    Status(status::StatusArgs),
    /// `edgecap-agent capture`, optionally with the lookback fed too (bench/capture.sh).
    Capture(Box<capture::CaptureCommand>),
    /// Sample queries over a large lookback, as an agent answers them.
    Lookback(lookback::LookbackArgs),
    /// The end of a full capture alone: the leader's merge of shards in an S3 bucket.
    S3merge(s3merge::S3MergeArgs),
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    // (A running full capture holds no blocking thread, so thousands of simulated agents'
    // captures in one process need no more than tokio's default pool.)
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Fanout(args) => fanout::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Simulate(args) => {
            let _telemetry = edgecap_telemetry::init("edgecap-bench", None, "warn", true)?;
            simulate::run(args).await
        }
        Command::Lookback(args) => lookback::run(args),
        Command::S3merge(args) => s3merge::run(args).await,
        Command::Capture(command) => {
            let _telemetry = edgecap_telemetry::init("edgecap-bench", None, "info", true)?;
            let code = capture::run(*command).await?;
            std::process::exit(code)
        }
    }
}
