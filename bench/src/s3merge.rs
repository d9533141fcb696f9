//! `edgecap-bench s3merge`: the end of a full capture alone. The leader's merge of shards
//! already in an S3 bucket into the merged object, timed from the call to the object in the
//! bucket: straight from the bucket (the default since issue #16), or with `--via-scratch`
//! through a scratch directory (download, merge, upload, as before). One PoP per object under
//! `--prefix`. Prints one JSON line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use edgecap_coordinator::bench::BenchShard;
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
    /// Leave the shards' packet and byte counts out (as if their records had none), so the
    /// merged size is not known beforehand and it goes up as a multipart upload. By default
    /// they are counted first, untimed, as an agent's shard record gives them.
    #[arg(long)]
    unknown_size: bool,
}

/// Packets and captured bytes of a classic pcap file; `(0, 0)` for anything else.
fn count_records(file: &[u8]) -> (u64, u64) {
    let Some(magic) = file.get(..4) else { return (0, 0) };
    let little = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return (0, 0),
    };
    let (mut at, mut packets, mut bytes) = (24usize, 0u64, 0u64);
    while let Some(field) = file.get(at + 8..at + 12) {
        let field: [u8; 4] = field.try_into().unwrap_or_default();
        let caplen = if little { u32::from_le_bytes(field) } else { u32::from_be_bytes(field) };
        packets += 1;
        bytes += u64::from(caplen);
        at += 16 + caplen as usize;
    }
    (packets, bytes)
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
    let mut objects = Vec::new();
    for meta in store.list(&args.prefix).await? {
        let (packets, bytes) = if args.unknown_size {
            (0, 0)
        } else {
            let (_, mut reader) = store.get(&meta.key).await?;
            let mut file = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut file).await?;
            count_records(&file)
        };
        objects.push(BenchShard { key: meta.key, file_bytes: meta.size, packets, bytes });
    }
    anyhow::ensure!(!objects.is_empty(), "--prefix {}: no objects", args.prefix);
    let bytes: u64 = objects.iter().map(|o| o.file_bytes).sum();
    let counted = objects.iter().all(|o| o.packets > 0);
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
            "shards_counted": counted,
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
