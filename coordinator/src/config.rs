//! Everything a coordinator is told at start: listeners, TLS, backends, limits and the
//! tunables of sample and full captures. The binaries (`edgecap-coordinator`, `edgecap up`)
//! build it from their flags; this is the only input `Coordinator::start` takes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgecap_state::StateConfig;
use edgecap_storage::StorageConfig;
use edgecap_storage::s3::StaticCredentials;
use edgecap_tls::TlsFiles;

/// See `edgecap-coordinator --help` for the flags behind these.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Names this replica in logs, agent presence and certificates.
    pub name: String,
    /// Where the REST API listens.
    pub api_listen: SocketAddr,
    /// Serve the API over HTTPS with this certificate and key (PEM; reloaded when they
    /// change). `None`: plain HTTP, for an API behind a terminating proxy or on loopback.
    pub api_tls: Option<ApiTls>,
    /// Where agents' mutual-TLS control streams are accepted.
    pub grpc_listen: SocketAddr,
    /// CA (for agents' certificates), the coordinator's certificate and key.
    pub tls: TlsFiles,
    /// How often the TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// The shared state store.
    pub state: StateConfig,
    /// Where sample captures' files are kept.
    pub storage: StorageConfig,
    /// Scratch space for files being assembled.
    pub tmp_dir: PathBuf,
    /// What a request may ask for.
    pub limits: Limits,
    /// Per-account rate limits.
    pub rate_limits: RateLimits,
    /// How long to wait for one agent's sample answer.
    pub sample_timeout: Duration,
    /// How long a sample capture waits for a first agent when none is connected.
    pub agent_wait: Duration,
    /// `(account_id, token)` pairs to register at start.
    pub tokens: Vec<(String, String)>,
    /// `ACCOUNT:TOKEN` lines, re-read when the file changes (tokens removed from it are
    /// revoked).
    pub tokens_file: Option<PathBuf>,
    /// Admin tokens (the admin API only).
    pub admin_tokens: Vec<String>,
    /// A file of admin tokens, one per line, re-read when it changes.
    pub admin_tokens_file: Option<PathBuf>,
    /// Bucket name -> access key, for full captures' buckets (else the AWS default chain).
    pub s3_credentials: HashMap<String, StaticCredentials>,
    /// Tunables of full captures.
    pub full: FullSettings,
    /// Captures, their sample files and records are deleted this long after they were
    /// submitted (`None`: kept forever). Merged files in users' buckets are theirs and stay.
    pub retention: Option<Duration>,
    /// What an account without a scope (`edgecap admin accounts set`) may capture.
    pub unscoped_accounts: UnscopedAccounts,
    /// Accounts made unrestricted at start (`edgecap up`'s own account).
    pub unrestricted_accounts: Vec<String>,
    /// A JSON file of account scopes (`{"acct": {"prefixes": [...], "pops": [...]}}`, or
    /// `{"unrestricted": true}`), written into the state store at start.
    pub accounts_file: Option<PathBuf>,
    /// Sign enrolling agents' certificates (`None`: agents bring certificates made with
    /// `edgecap pki agent`, and the control port requires them).
    pub enroll: Option<EnrollSettings>,
}

impl Default for CoordinatorConfig {
    /// A coordinator on loopback with memory state and local objects under `./`; the
    /// binaries and tests set what they need and take the rest from here.
    fn default() -> Self {
        Self {
            name: "coordinator".into(),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 9440)),
            api_tls: None,
            grpc_listen: SocketAddr::from(([0, 0, 0, 0], 7443)),
            tls: TlsFiles::in_dir(std::path::Path::new("pki"), "coordinator"),
            tls_reload_interval: Duration::from_secs(5),
            state: StateConfig::Memory,
            storage: StorageConfig::LocalDir { root: PathBuf::from("objects") },
            tmp_dir: PathBuf::from("tmp"),
            limits: Limits::default(),
            rate_limits: RateLimits::cloudflare(),
            sample_timeout: Duration::from_secs(15),
            agent_wait: Duration::from_secs(5),
            tokens: Vec::new(),
            tokens_file: None,
            admin_tokens: Vec::new(),
            admin_tokens_file: None,
            s3_credentials: HashMap::new(),
            full: FullSettings::default(),
            enroll: None,
            unscoped_accounts: UnscopedAccounts::Refuse,
            unrestricted_accounts: Vec::new(),
            accounts_file: None,
            retention: Some(Duration::from_secs(30 * 86_400)),
        }
    }
}

/// What an account the operator gave no scope may capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnscopedAccounts {
    /// Nothing: its captures are refused (403, code 1203) until the operator sets its
    /// prefixes. For installations where accounts are tenants.
    #[default]
    Refuse,
    /// Everything, everywhere: single-tenant installations, where every account is the
    /// operator's.
    Unrestricted,
}

/// Agent enrollment: the CA key to sign with (its certificate is `tls.ca`) and how long
/// the certificates it signs are valid.
#[derive(Clone, Debug)]
pub struct EnrollSettings {
    /// The CA's private key, PEM (`edgecap pki` writes `ca-key.pem`).
    pub ca_key: PathBuf,
    /// Validity of a signed certificate; agents renew at two thirds of it.
    pub cert_lifetime: Duration,
}

/// The API's HTTPS certificate and key.
#[derive(Clone, Debug)]
pub struct ApiTls {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// Limits from Cloudflare's reference, with the full-capture time cap configurable.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest sample window, seconds (Cloudflare: 300).
    pub time_limit_max: u64,
    /// Longest full capture, seconds.
    pub full_time_limit_max: u64,
    /// Most packets a capture may ask for (also the default of sample captures).
    pub packet_limit_max: u64,
    /// Most bytes a full capture may ask for.
    pub byte_limit_max: u64,
    /// How far back `offset_time` may be, seconds.
    pub offset_max_age_secs: i64,
    /// Clock skew tolerated for an `offset_time` in the future, seconds.
    pub offset_future_skew_secs: i64,
    /// Sample captures one account may have running at once on one replica.
    pub max_running_samples_per_account: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time_limit_max: 300,
            full_time_limit_max: 300,
            packet_limit_max: 10_000,
            byte_limit_max: 1_000_000_000,
            offset_max_age_secs: 24 * 3600,
            offset_future_skew_secs: 60,
            max_running_samples_per_account: 10,
        }
    }
}

/// Per-account limits from Cloudflare's docs: one sample request per minute, one running or
/// pending full capture. `None` turns a limit off.
#[derive(Clone, Debug)]
pub struct RateLimits {
    /// At most one sample capture per account in this interval.
    pub sample_interval: Option<Duration>,
    /// At most this many pending or running full captures per account.
    pub max_active_full: Option<usize>,
}

impl RateLimits {
    /// Cloudflare's: one sample per minute, one active full capture.
    pub fn cloudflare() -> Self {
        Self { sample_interval: Some(Duration::from_secs(60)), max_active_full: Some(1) }
    }
    /// No limit (`edgecap up`, tests).
    pub fn off() -> Self {
        Self { sample_interval: None, max_active_full: None }
    }
}

/// Tunables of the full-capture flow.
#[derive(Clone, Debug)]
pub struct FullSettings {
    /// How long a PoP whose agent disconnected may take to come back.
    pub reconnect_grace: Duration,
    /// How long after the time limit PoPs may take to deliver their shards.
    pub upload_grace: Duration,
    /// Validity of presigned upload requests.
    pub presign_expiry: Duration,
    /// How long the merge keeps retrying an unreachable bucket.
    pub merge_retry: Duration,
    /// Keep the shards in the bucket after the merge.
    pub keep_shards: bool,
    /// Lease of the leader key: a dead leader is replaced within about this long.
    pub leader_ttl: Duration,
    /// Largest shard an agent may be granted an upload for (agents rotate shards at 64 MiB
    /// by default; the default spool holds 4 GiB).
    pub max_shard_bytes: u64,
    /// Full captures that may run at once at one PoP's agent (each holds a capture thread,
    /// a spool share and upload bandwidth there).
    pub max_captures_per_pop: usize,
    /// Most inputs one merge opens at once (0: from the file-descriptor limit); more are
    /// merged in stages.
    pub merge_fan_in: usize,
    /// Most agents whose shards are merged straight from the bucket (a GET open per agent,
    /// the merged file uploaded as it is produced); with more, or 0, the merge goes through
    /// the coordinator's scratch disk.
    pub merge_streams: usize,
    /// Which endpoints a `destination_conf` may name.
    pub endpoints: crate::model::EndpointPolicy,
    /// Buckets without configured credentials may use the EC2 instance-metadata service
    /// (169.254.169.254) for the instance's role; off by default.
    pub instance_metadata: bool,
}

impl Default for FullSettings {
    fn default() -> Self {
        Self {
            reconnect_grace: Duration::from_secs(15),
            upload_grace: Duration::from_secs(600),
            presign_expiry: Duration::from_secs(900),
            merge_retry: Duration::from_secs(600),
            keep_shards: false,
            leader_ttl: Duration::from_secs(5),
            max_shard_bytes: 4 << 30,
            max_captures_per_pop: 4,
            merge_fan_in: 0,
            merge_streams: 256,
            endpoints: Default::default(),
            instance_metadata: false,
        }
    }
}

/// Validates account ids (path segment, key segment): 1-32 of `[A-Za-z0-9_-]`.
pub fn valid_account(account: &str) -> bool {
    (1..=32).contains(&account.len()) && account.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The object store for sample captures' files from `--objects`: `local` (under
/// `data_dir/objects`) or `s3://bucket/prefix?region=R[&endpoint=URL]`, with that bucket's
/// credentials from the `--s3-credentials` file if it names it.
pub fn objects_config(
    objects: &str,
    data_dir: &std::path::Path,
    s3_credentials: Option<&std::path::Path>,
    instance_metadata: bool,
) -> anyhow::Result<StorageConfig> {
    if objects == "local" {
        return Ok(StorageConfig::LocalDir { root: data_dir.join("objects") });
    }
    let destination =
        crate::model::DestinationConf::parse(objects).map_err(|e| anyhow::anyhow!("--objects: {}", e.0))?;
    let credentials = match s3_credentials {
        Some(path) => load_credentials(path)?.remove(&destination.bucket),
        None => None,
    };
    Ok(StorageConfig::S3 { location: destination.location(), credentials, instance_metadata })
}

/// Reads a per-bucket credentials file (JSON object: bucket -> access key). The file should
/// be readable by the coordinator only; its contents are never logged.
pub fn load_credentials(path: &std::path::Path) -> anyhow::Result<HashMap<String, StaticCredentials>> {
    use anyhow::Context as _;
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a JSON object of bucket -> {{access_key_id, secret_access_key}}: line {} column {}",
            path.display(),
            e.line(),
            e.column()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_credentials_file_is_a_clear_error_without_its_contents() {
        let dir = std::env::temp_dir().join(format!("edgecap-creds-{}", std::process::id()));
        std::fs::write(&dir, r#"{"bucket": {"access_key_id": "AKIA", "secret": "s3cr3t"}}"#).unwrap();
        let e = load_credentials(&dir).unwrap_err().to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(e.contains("not a JSON object of bucket") && !e.contains("s3cr3t"), "{e}");
        assert!(load_credentials(std::path::Path::new("/nonexistent/creds.json")).is_err());
    }
}
