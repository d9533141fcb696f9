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

/// Packets and captured bytes of a classic pcap file, read with the merge's own reader;
/// `(0, 0)` (unknown) for anything else, or a file it cannot read to its end.
fn count_records(file: &[u8]) -> (u64, u64) {
    use edgecap_merge::read::{CaptureReader, Format, Record};
    let Ok(mut reader) = CaptureReader::open(file) else { return (0, 0) };
    if !matches!(reader.format(), Format::Pcap { modified: false, .. }) {
        return (0, 0);
    }
    let (mut record, mut packets, mut bytes) = (Record::default(), 0u64, 0u64);
    loop {
        match reader.next_record(&mut record) {
            Ok(true) => {
                packets += 1;
                bytes += record.bytes().len() as u64;
            }
            Ok(false) => return (packets, bytes),
            Err(_) => return (0, 0),
        }
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn records_are_counted_in_whole_classic_pcap_files_only() {
        let mut w = edgecap_merge::write::PcapWriter::new(Vec::new(), 1, 65535, true).unwrap();
        for len in [60usize, 1500, 9] {
            w.packet(1_000, len as u32, &vec![0u8; len]).unwrap();
        }
        let file = w.finish().unwrap();
        assert_eq!(super::count_records(&file), (3, 1569));
        assert_eq!(super::count_records(&file[..file.len() - 1]), (0, 0), "a record cut short");
        assert_eq!(super::count_records(b"not a capture"), (0, 0));
    }
}
