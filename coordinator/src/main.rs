//! `edgecap-coordinator`: the coordinator as a daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use edgecap_coordinator::{Coordinator, CoordinatorConfig, Limits, RateLimits};
use edgecap_state::StateConfig;
use edgecap_tls::TlsFiles;

/// The edgecap coordinator: the Cloudflare-compatible PCAP API and the agent control plane.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where the embedded state store and the local object store keep their data.
    #[arg(long, env = "EDGECAP_DATA_DIR", required_unless_present = "openapi")]
    data_dir: Option<PathBuf>,
    /// Print the API's OpenAPI document (what docs/openapi.json holds) and exit.
    #[arg(long)]
    openapi: bool,
    /// Shared state: `embedded` (under --data-dir) or etcd://HOST:PORT[,HOST:PORT...][/PREFIX].
    #[arg(long, default_value = "embedded", env = "EDGECAP_STATE")]
    state: String,
    /// REST API listen address.
    #[arg(long, default_value = "127.0.0.1:9440", env = "EDGECAP_API_LISTEN")]
    api_listen: SocketAddr,
    /// Serve the API over HTTPS with this certificate (PEM, reloaded when it changes); with
    /// --api-tls-key. Without them the API is plain HTTP (behind a terminating proxy).
    #[arg(long, env = "EDGECAP_API_TLS_CERT", requires = "api_tls_key")]
    api_tls_cert: Option<PathBuf>,
    /// The API's HTTPS private key (PEM).
    #[arg(long, env = "EDGECAP_API_TLS_KEY", requires = "api_tls_cert")]
    api_tls_key: Option<PathBuf>,
    /// Agent control (mutual-TLS gRPC) listen address.
    #[arg(long, default_value = "0.0.0.0:7443", env = "EDGECAP_GRPC_LISTEN")]
    grpc_listen: SocketAddr,
    /// Directory made by `edgecap pki` (uses ca.pem, coordinator.pem, coordinator-key.pem).
    #[arg(long, env = "EDGECAP_PKI_DIR")]
    pki_dir: Option<PathBuf>,
    /// CA certificate (overrides --pki-dir).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Server certificate (overrides --pki-dir).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Server key (overrides --pki-dir).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Deprecated: a token on the command line shows in `ps`. Use --tokens-file,
    /// EDGECAP_TOKENS, or `edgecap admin tokens add`. Still works, with a warning.
    #[arg(long = "token", value_name = "ACCOUNT:TOKEN", hide = true)]
    tokens: Vec<String>,
    /// API tokens as ACCOUNT:TOKEN, comma-separated (from the environment, not `ps`).
    #[arg(long = "tokens-env", env = "EDGECAP_TOKENS", hide_env_values = true, value_delimiter = ',', hide = true)]
    env_tokens: Vec<String>,
    /// File of ACCOUNT:TOKEN lines (# comments allowed), re-read when it changes: tokens
    /// removed from it are revoked on every replica.
    #[arg(long, env = "EDGECAP_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// File of admin tokens (one per line) for the admin API (`edgecap admin ...`), re-read
    /// when it changes. Also EDGECAP_ADMIN_TOKEN.
    #[arg(long, env = "EDGECAP_ADMIN_TOKENS_FILE")]
    admin_tokens_file: Option<PathBuf>,
    /// An admin token, from the environment only.
    #[arg(long = "admin-token-env", env = "EDGECAP_ADMIN_TOKEN", hide_env_values = true, hide = true)]
    admin_token: Option<String>,
    /// Full captures that may run at once at one PoP; more are refused with 429 naming
    /// colo_name.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    max_captures_per_pop: u64,
    /// Sample captures one account may have running at once on one replica (429 beyond).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_running_samples: u64,
    /// What an account the operator gave no scope (`edgecap admin accounts set`) may capture:
    /// `refuse` (nothing: accounts are tenants) or `unrestricted` (everything: a
    /// single-tenant installation).
    #[arg(long, value_enum, env = "EDGECAP_UNSCOPED_ACCOUNTS", default_value_t = edgecap_coordinator::UnscopedAccounts::Refuse)]
    unscoped_accounts: edgecap_coordinator::UnscopedAccounts,
    /// A JSON file of account scopes, written into the state store at start:
    /// {"acct": {"prefixes": ["198.51.100.0/24"], "pops": ["ams*"]}, "ops": {"unrestricted": true}}.
    #[arg(long, env = "EDGECAP_ACCOUNTS_FILE")]
    accounts_file: Option<PathBuf>,
    /// Delete captures, their sample files and records this many days after they were
    /// submitted (0: keep them forever). Merged files in users' buckets are never deleted.
    #[arg(long, env = "EDGECAP_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=36_500))]
    retention_days: u64,
    /// Enroll agents: sign the certificate requests of agents that present a bootstrap
    /// token (`edgecap admin bootstrap-token create`) with this CA key (PEM; the CA
    /// certificate is --tls-ca). Agents then make their own keys; without it they need
    /// certificates made with `edgecap pki agent`.
    #[arg(long, env = "EDGECAP_ENROLL_CA_KEY")]
    enroll_ca_key: Option<PathBuf>,
    /// Validity of the certificates signed for enrolled agents, seconds (they renew at two
    /// thirds of it).
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(60..=31_536_000))]
    agent_cert_seconds: u64,
    /// Turn off Cloudflare's per-account limits (1 sample per minute, 1 active full capture).
    #[arg(long)]
    no_rate_limits: bool,
    /// Longest full capture, seconds (Cloudflare: 300).
    #[arg(long, default_value_t = 300)]
    full_time_limit_max: u64,
    /// How long to wait for each agent's sample answer, seconds.
    #[arg(long, default_value_t = 15)]
    sample_timeout: u64,
    /// JSON file of per-bucket S3 credentials for full captures:
    /// {"bucket": {"access_key_id": "...", "secret_access_key": "..."}}. Buckets not in it use
    /// the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    #[arg(long, env = "EDGECAP_S3_CREDENTIALS")]
    s3_credentials: Option<PathBuf>,
    /// Where sample captures' files are kept: `local` (under --data-dir) or a bucket,
    /// `s3://bucket/prefix?region=R[&endpoint=URL]`, which several replicas must share so
    /// any of them can serve a download. Credentials as for full captures' buckets.
    #[arg(long, default_value = "local", env = "EDGECAP_OBJECTS")]
    objects: String,
    /// Keep full captures' shards in the bucket after the merge.
    #[arg(long)]
    keep_shards: bool,
    /// Let `destination_conf` name S3 endpoints on private, loopback or link-local addresses
    /// (refused by default: a user could otherwise make the coordinator reach internal
    /// services, or the cloud metadata service).
    #[arg(long, env = "EDGECAP_ALLOW_PRIVATE_ENDPOINTS")]
    allow_private_endpoints: bool,
    /// Accept only these S3 endpoints in `destination_conf` (repeatable; an endpoint listed is
    /// accepted even on a private address).
    #[arg(long = "s3-endpoint-allow", value_name = "URL")]
    s3_endpoint_allow: Vec<String>,
    /// For buckets without credentials in --s3-credentials, let the AWS chain use the EC2
    /// instance-metadata service (the instance's role). Off by default: nothing probes
    /// 169.254.169.254 unless this is set (deployments on cloud instances that use the role).
    #[arg(long, env = "EDGECAP_AWS_INSTANCE_METADATA")]
    aws_instance_metadata: bool,
    /// Largest shard an agent may upload, MiB.
    #[arg(long, default_value_t = 4096)]
    max_shard_mib: u64,
    /// Full captures of at most this many agents are merged straight from the bucket (one GET
    /// open per agent, the merged file uploaded while it is produced, nothing on local disk);
    /// larger ones, or all with 0, go through the scratch directory.
    #[arg(long, default_value_t = 256)]
    merge_streams: usize,
    /// Seconds a PoP whose agent disconnected mid-capture may take to come back.
    #[arg(long, default_value_t = 15)]
    reconnect_grace: u64,
    /// Seconds after the time limit that PoPs may take to deliver their shards.
    #[arg(long, default_value_t = 600)]
    upload_grace: u64,
    /// Export traces over OTLP/gRPC to this collector (e.g. http://otel-collector:4317); also
    /// taken from OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, env = "EDGECAP_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// This replica's name.
    #[arg(long, default_value = "coordinator", env = "EDGECAP_NAME")]
    name: String,
}

/// The tokens given at start: `--token` (deprecated) and EDGECAP_TOKENS. The tokens file is
/// the coordinator's to read (and re-read).
fn parse_tokens(args: &Args) -> Vec<(String, String)> {
    if !args.tokens.is_empty() {
        eprintln!(
            "edgecap-coordinator: warning: --token is deprecated (tokens on the command line show in ps); use --tokens-file, EDGECAP_TOKENS or `edgecap admin tokens add`"
        );
    }
    let lines = args.tokens.iter().chain(&args.env_tokens).map(|l| l.trim()).filter(|l| !l.is_empty());
    lines
        .map(|l| match l.split_once(':') {
            Some((a, t)) => (a.to_string(), t.to_string()),
            None => usage_error("--token/EDGECAP_TOKENS: a token must be given as ACCOUNT:TOKEN"),
        })
        .collect()
}

fn usage_error(message: &str) -> ! {
    eprintln!("edgecap-coordinator: {message}");
    std::process::exit(64);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.openapi {
        use std::io::Write as _;
        // A closed pipe (`| head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(edgecap_coordinator::openapi_json().as_bytes());
        return Ok(());
    }
    let data_dir = args.data_dir.clone().unwrap_or_default();
    let telemetry = edgecap_telemetry::init("edgecap-coordinator", args.otlp_endpoint.as_deref(), "info", false)?;
    let tokens = parse_tokens(&args);
    let pki = args.pki_dir.clone().unwrap_or_else(|| data_dir.join("pki"));
    let defaults = TlsFiles::in_dir(&pki, "coordinator");
    let tls = TlsFiles {
        ca: args.tls_ca.clone().unwrap_or(defaults.ca),
        cert: args.tls_cert.clone().unwrap_or(defaults.cert),
        key: args.tls_key.clone().unwrap_or(defaults.key),
    };
    let config = CoordinatorConfig {
        name: args.name.clone(),
        api_listen: args.api_listen,
        api_tls: match (&args.api_tls_cert, &args.api_tls_key) {
            (Some(cert), Some(key)) => Some(edgecap_coordinator::ApiTls { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        grpc_listen: args.grpc_listen,
        tls,
        tls_reload_interval: Duration::from_secs(5),
        state: StateConfig::parse(&args.state, &data_dir).unwrap_or_else(|e| {
            eprintln!("edgecap-coordinator: {e}");
            std::process::exit(64);
        }),
        storage: edgecap_coordinator::objects_config(
            &args.objects,
            &data_dir,
            args.s3_credentials.as_deref(),
            args.aws_instance_metadata,
        )
        .unwrap_or_else(|e| {
            eprintln!("edgecap-coordinator: {e:#}");
            std::process::exit(64);
        }),
        tmp_dir: data_dir.join("tmp"),
        limits: Limits {
            full_time_limit_max: args.full_time_limit_max,
            max_running_samples_per_account: args.max_running_samples as usize,
            ..Limits::default()
        },
        rate_limits: if args.no_rate_limits { RateLimits::off() } else { RateLimits::cloudflare() },
        sample_timeout: Duration::from_secs(args.sample_timeout),
        agent_wait: Duration::from_secs(5),
        tokens,
        tokens_file: args.tokens_file.clone(),
        admin_tokens: args.admin_token.clone().into_iter().collect(),
        admin_tokens_file: args.admin_tokens_file.clone(),
        s3_credentials: match &args.s3_credentials {
            Some(path) => edgecap_coordinator::load_credentials(path).unwrap_or_else(|e| {
                eprintln!("edgecap-coordinator: {e:#}");
                std::process::exit(64);
            }),
            None => Default::default(),
        },
        full: edgecap_coordinator::FullSettings {
            keep_shards: args.keep_shards,
            reconnect_grace: Duration::from_secs(args.reconnect_grace),
            upload_grace: Duration::from_secs(args.upload_grace),
            max_shard_bytes: args.max_shard_mib.max(1) << 20,
            merge_streams: args.merge_streams,
            max_captures_per_pop: args.max_captures_per_pop as usize,
            instance_metadata: args.aws_instance_metadata,
            endpoints: edgecap_coordinator::EndpointPolicy {
                allow_private: args.allow_private_endpoints,
                allowed: args.s3_endpoint_allow.clone(),
            },
            ..Default::default()
        },
        unscoped_accounts: args.unscoped_accounts,
        unrestricted_accounts: Vec::new(),
        accounts_file: args.accounts_file.clone(),
        retention: (args.retention_days > 0).then(|| Duration::from_secs(args.retention_days * 86_400)),
        enroll: args.enroll_ca_key.clone().map(|ca_key| edgecap_coordinator::EnrollSettings {
            ca_key,
            cert_lifetime: Duration::from_secs(args.agent_cert_seconds),
        }),
    };
    let coordinator = match Coordinator::start(config).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edgecap-coordinator: {e:#}");
            std::process::exit(64);
        }
    };
    let scheme = if args.api_tls_cert.is_some() { "https" } else { "http" };
    println!(
        "edgecap-coordinator: API {scheme}://{}/client/v4, agents {}",
        coordinator.api_addr, coordinator.grpc_addr
    );
    let result = coordinator.run_until(edgecap_common::shutdown_signal()).await;
    telemetry.shutdown();
    result
}
