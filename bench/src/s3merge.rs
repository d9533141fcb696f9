//! `edgecap-bench s3merge`: the end of a full capture alone. The leader's merge of shards
//! already in an S3 bucket into the merged object, timed from the call to the object in the
//! bucket: straight from the bucket (the default since issue #16), or with `--via-scratch`
//! through a scratch directory (download, merge, upload, as before). One PoP per object under
//! `--prefix`. Prints one JSON line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use edgecap_storage::ObjectStore;
use edgecap_storage::s3::{S3Location, S3Store, StaticCredentials};

/// The flags of `edgecap-bench s3merge`.
#[derive(clap::Args, Debug)]
pub struct S3MergeArgs {
    /// The S3-compatible endpoint, e.g. http://127.0.0.1:18014 (path-style).
    #[arg(long)]
    endpoint: String,
    /// The bucket holding the shards; the merged object is written there too.
    #[arg(long)]
    bucket: String,
    /// The shards: every object under this prefix, one PoP each, in key order.
    #[arg(long)]
    prefix: String,
    /// Access key of the bucket.
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key: String,
    /// Its secret.
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret_key: String,
    /// Merge through a scratch directory instead (download, merge, upload).
    #[arg(long)]
    via_scratch: bool,
    /// Where the scratch directory goes.
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
    /// Delete the merged object afterwards.
    #[arg(long)]
    delete: bool,
}

pub async fn run(args: S3MergeArgs) -> anyhow::Result<()> {
    let location = S3Location {
        bucket: args.bucket.clone(),
        prefix: String::new(),
        region: None,
        endpoint: Some(args.endpoint.clone()),
    };
    let credentials = StaticCredentials {
        access_key_id: args.access_key.clone(),
        secret_access_key: args.secret_key.clone(),
        session_token: None,
    };
    let store: Arc<dyn ObjectStore> = Arc::new(S3Store::connect(location, Some(credentials), false).await?);
    let objects: Vec<(String, u64)> = store.list(&args.prefix).await?.into_iter().map(|m| (m.key, m.size)).collect();
    anyhow::ensure!(!objects.is_empty(), "--prefix {}: no objects", args.prefix);
    let bytes: u64 = objects.iter().map(|o| o.1).sum();
    let shards = objects.len();
    let started = Instant::now();
    let (packets, key) =
        edgecap_coordinator::bench::merge_objects(store.clone(), objects, args.via_scratch, args.scratch.clone())
            .await?;
    let seconds = started.elapsed().as_secs_f64();
    let merged = store.head(&key).await?.map_or(0, |m| m.size);
    if args.delete {
        store.delete(&key).await?;
    }
    println!(
        "{}",
        serde_json::json!({
            "mode": if args.via_scratch { "via_scratch" } else { "from_bucket" },
            "shards": shards,
            "input_bytes": bytes,
            "merged_bytes": merged,
            "packets": packets,
            "key": key,
            "seconds": seconds,
        })
    );
    Ok(())
}
