//! Upload grants and shard commits: an agent asks for presigned requests for one closed shard
//! (the coordinator holds the bucket's credentials, the agent none), uploads it, and reports
//! it; the coordinator completes the multipart upload, checks the object's size in the bucket
//! and records the shard. Only then may the agent delete its spooled copy.
//!
//! Every multipart upload granted is recorded (`store/uploads.rs`) until its shard is
//! committed; when the capture ends, the leader aborts those left ([`FullCaptures::abort_open_uploads`]),
//! so an agent cut off half-way does not leave parts holding storage in the user's bucket.

use edgecap_proto::agent::v1 as pb;
use edgecap_storage::StorageError;
use edgecap_storage::s3::{MULTIPART_THRESHOLD, PART_SIZE};

use super::{FullCaptures, shard_key};
use crate::convert;
use crate::model::JobRecord;
use crate::store::OpenUpload;

/// Bytes of a classic pcap file header, and of each record's header.
const PCAP_HEADER: u64 = 24;
const PCAP_RECORD_HEADER: u64 = 16;

/// The largest shard a job can produce: the configured bound, and no more than the capture's
/// byte limit allows (each packet at least one byte, so at most that many record headers).
fn max_shard(job: &JobRecord, configured: u64) -> u64 {
    match job.byte_limit {
        Some(bytes) => {
            let packets = job.packet_limit.map_or(bytes, |p| p.min(bytes));
            configured.min(PCAP_HEADER.saturating_add(packets.saturating_mul(PCAP_RECORD_HEADER)).saturating_add(bytes))
        }
        None => configured,
    }
}

/// A CRC32C in S3's form: base64 of 4 bytes (6 characters and `==`).
fn valid_crc32c(text: &str) -> bool {
    text.len() == 8
        && text.ends_with("==")
        && text.bytes().take(6).all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn valid_shard_name(name: &str) -> bool {
    (1..=80).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

impl FullCaptures {
    /// The job of `agent_id` for a capture, if its PoP is still open; else why not, and
    /// whether asking again later can help.
    async fn open_job(&self, agent_id: &str, pop: &str, capture_id: &str) -> Result<JobRecord, (String, bool)> {
        let job = match self.repo.get_job(agent_id, capture_id).await {
            Ok(Some(job)) if job.pop == pop => job,
            Ok(_) => return Err((format!("capture {capture_id} has no job for agent {agent_id}"), false)),
            Err(e) => return Err((e.to_string(), true)),
        };
        // A PoP without a key has not reported yet (its job shows it is part of the capture).
        match self.repo.get_pop(capture_id, agent_id).await {
            Ok(None) => Ok(job),
            Ok(Some((p, _))) if !p.is_final() => Ok(job),
            Ok(_) => Err(("this PoP's part of the capture is already closed".into(), false)),
            Err(e) => Err((e.to_string(), true)),
        }
    }

    /// Presigned requests for one shard of one agent.
    #[tracing::instrument(name = "upload_grant", skip_all, fields(capture = %request.capture_id, agent = %agent_id))]
    pub(crate) async fn grant(&self, agent_id: &str, pop: &str, request: pb::UploadRequest) -> pb::UploadGrant {
        let refuse = |error: String, retryable: bool| pb::UploadGrant {
            request_id: request.request_id.clone(),
            error,
            retryable,
            ..Default::default()
        };
        let job = match self.open_job(agent_id, pop, &request.capture_id).await {
            Ok(job) => job,
            Err((error, retryable)) => return refuse(error, retryable),
        };
        if !valid_shard_name(&request.shard) {
            return refuse(format!("shard name {:?} is not acceptable", request.shard), false);
        }
        let store = match self.buckets.store_for_uri(&job.destination_conf).await {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string(), true),
        };
        let max = max_shard(&job, self.settings.max_shard_bytes);
        if request.size > max {
            return refuse(
                format!("shard of {} bytes is larger than this capture's shards can be ({max} bytes)", request.size),
                false,
            );
        }
        if let Some(bad) =
            std::iter::once(&request.crc32c).chain(&request.part_crc32c).find(|c| !c.is_empty() && !valid_crc32c(c))
        {
            return refuse(format!("crc32c {bad:?} is not a CRC32C in S3's form (base64 of 4 bytes)"), false);
        }
        let key = shard_key(&request.capture_id, pop, agent_id, &request.shard);
        let expiry = self.settings.presign_expiry;
        let crc32c = (!request.crc32c.is_empty()).then_some(request.crc32c.as_str());
        let result = async {
            if request.size <= MULTIPART_THRESHOLD {
                let put = store.presign_put(&key, expiry, crc32c).await?;
                Ok::<_, StorageError>(pb::UploadGrant { put: Some(convert::presigned(put)), ..Default::default() })
            } else {
                let count = request.size.div_ceil(PART_SIZE);
                // Each part checked by the bucket when the agent's parts are the grant's
                // (an agent of another version may cut them otherwise: then none are sent).
                let part_checksums = crc32c.is_some()
                    && request.checksum_part_size == PART_SIZE
                    && request.part_crc32c.len() as u64 == count;
                let upload_id = store.create_multipart(&key, part_checksums).await?;
                let open = OpenUpload {
                    destination_conf: job.destination_conf.clone(),
                    key: key.clone(),
                    upload_id: upload_id.clone(),
                };
                if let Err(e) = self.repo.put_open_upload(&request.capture_id, &open).await {
                    // Not handed out unless it can be aborted later.
                    let _ = store.abort_multipart(&key, &upload_id).await;
                    return Err(StorageError::Unavailable(format!("could not record the upload: {e}")));
                }
                // The capture may have ended meanwhile, its open uploads aborted before this
                // one was recorded: then it is aborted here and not handed out.
                if let Err((reason, retryable)) = self.open_job(agent_id, pop, &request.capture_id).await {
                    let _ = store.abort_multipart(&key, &upload_id).await;
                    let _ = self.repo.delete_open_upload(&request.capture_id, &upload_id).await;
                    return Err(if retryable {
                        StorageError::Unavailable(reason)
                    } else {
                        StorageError::Rejected(reason)
                    });
                }
                let mut parts = Vec::with_capacity(count as usize);
                for n in 1..=count {
                    let crc = part_checksums.then(|| request.part_crc32c[n as usize - 1].as_str());
                    parts.push(convert::presigned(store.presign_part(&key, &upload_id, n as i32, expiry, crc).await?));
                }
                Ok(pb::UploadGrant { upload_id, part_size: PART_SIZE, parts, part_checksums, ..Default::default() })
            }
        }
        .await;
        match result {
            Ok(grant) => pb::UploadGrant { request_id: request.request_id.clone(), key, ..grant },
            Err(e) => refuse(e.to_string(), e.is_retryable()),
        }
    }

    /// Records a delivered shard: completes its multipart upload, checks its size in the
    /// bucket, and records it (idempotent by key).
    #[tracing::instrument(name = "shard_commit", skip_all, fields(capture = %uploaded.capture_id, agent = %agent_id))]
    pub(crate) async fn commit(&self, agent_id: &str, pop: &str, uploaded: pb::ShardUploaded) -> pb::ShardCommitted {
        let answer = |error: String, retryable: bool| pb::ShardCommitted {
            request_id: uploaded.request_id.clone(),
            capture_id: uploaded.capture_id.clone(),
            shard: uploaded.shard.clone(),
            error,
            retryable,
        };
        let job = match self.open_job(agent_id, pop, &uploaded.capture_id).await {
            Ok(job) => job,
            Err((error, retryable)) => return answer(error, retryable),
        };
        let expected = shard_key(&uploaded.capture_id, pop, agent_id, &uploaded.shard);
        if uploaded.key != expected || !valid_shard_name(&uploaded.shard) {
            return answer(format!("key {:?} was not granted for this shard", uploaded.key), false);
        }
        let store = match self.buckets.store_for_uri(&job.destination_conf).await {
            Ok(s) => s,
            Err(e) => return answer(e.to_string(), true),
        };
        if !uploaded.upload_id.is_empty() {
            let parts: Vec<(i32, String)> =
                uploaded.part_etags.iter().enumerate().map(|(i, e)| (i as i32 + 1, e.clone())).collect();
            if let Err(e) =
                store.complete_multipart(&uploaded.key, &uploaded.upload_id, &parts, &uploaded.part_crc32c).await
            {
                // A retried commit finds the upload already completed.
                let done = matches!(store.head(&uploaded.key).await, Ok(Some(m)) if m.size == uploaded.file_bytes);
                if !done {
                    return answer(e.to_string(), true);
                }
            }
            // Left recorded, it would only be aborted for nothing when the capture ends.
            if let Err(error) = self.repo.delete_open_upload(&uploaded.capture_id, &uploaded.upload_id).await {
                tracing::debug!(capture = %uploaded.capture_id, %error, "completed upload not forgotten");
            }
        }
        use edgecap_storage::ObjectStore as _;
        match store.head(&uploaded.key).await {
            Ok(Some(meta)) if meta.size == uploaded.file_bytes => {}
            Ok(Some(meta)) => {
                return answer(format!("object has {} bytes, the shard {}", meta.size, uploaded.file_bytes), true);
            }
            Ok(None) => return answer("object not found in the bucket after upload".into(), true),
            Err(e) => return answer(e.to_string(), true),
        }
        let shard = convert::shard_ref(&uploaded);
        match self
            .repo
            .put_shard_batched(&self.shard_records, &uploaded.capture_id, agent_id, &uploaded.shard, &shard)
            .await
        {
            Ok(()) => answer(String::new(), false),
            Err(e) => answer(format!("could not record the shard: {e}"), true),
        }
    }
}

impl FullCaptures {
    /// Aborts the multipart uploads of `capture` granted to agents and never completed (an
    /// agent cut off half-way and granted a fresh upload on retry, a shard set aside as
    /// damaged), and forgets them. An upload the bucket no longer knows (completed, aborted:
    /// `NoSuchUpload`) counts as aborted. One it refuses to abort (say a policy without
    /// `s3:AbortMultipartUpload`) is forgotten with a warning, and one it cannot be asked about
    /// now (unreachable) stays recorded with a warning: the bucket's lifecycle rule is then
    /// what removes them.
    pub(crate) async fn abort_open_uploads(&self, capture: &str) {
        let open = match self.repo.open_uploads(capture).await {
            Ok(open) => open,
            Err(error) => {
                tracing::warn!(%capture, %error, "open uploads of a finished capture not read");
                return;
            }
        };
        for upload in open {
            let aborted = match self.buckets.store_for_uri(&upload.destination_conf).await {
                Ok(store) => store.abort_multipart(&upload.key, &upload.upload_id).await,
                Err(e) => Err(e),
            };
            match aborted {
                Ok(()) => tracing::info!(%capture, key = %upload.key, "abandoned multipart upload aborted"),
                Err(StorageError::Rejected(reason)) => {
                    tracing::warn!(%capture, key = %upload.key, %reason, "the bucket refused to abort an abandoned multipart upload; its lifecycle rule must remove it")
                }
                Err(error) => {
                    tracing::warn!(%capture, key = %upload.key, %error, "abandoned multipart upload not aborted");
                    continue;
                }
            }
            if let Err(error) = self.repo.delete_open_upload(capture, &upload.upload_id).await {
                tracing::warn!(%capture, %error, "aborted upload not forgotten");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::agents::Registry;
    use crate::model::{PopResult, PopStatus};
    use crate::store::Repo;

    async fn captures() -> FullCaptures {
        captures_with(None, None).await
    }

    async fn captures_with(packet_limit: Option<u64>, byte_limit: Option<u64>) -> FullCaptures {
        let store = edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap();
        let repo = Repo::new(store);
        let job = JobRecord {
            capture_id: "c1".into(),
            account_id: "acct".into(),
            agent_id: "a1".into(),
            pop: "ord01".into(),
            destination_conf: "s3://bucket-1/p?endpoint=http://127.0.0.1:1".into(),
            filter_v1: Default::default(),
            filter_bpf: None,
            filter_bpf_hash: None,
            time_limit: 10,
            packet_limit,
            byte_limit,
            not_after_ns: 0,
            stop: false,
            scope: None,
            traceparent: String::new(),
            first_allowance: None,
        };
        repo.put_job(&job).await.unwrap();
        let pop = PopResult::new("ord01", "a1", PopStatus::Running);
        repo.cas_pop("c1", "a1", None, &pop).await.unwrap();
        FullCaptures::new(
            repo,
            Arc::new(Registry::default()),
            "t".into(),
            crate::config::FullSettings {
                endpoints: crate::model::EndpointPolicy { allow_private: true, allowed: vec![] },
                ..Default::default()
            },
            [(
                "bucket-1".to_string(),
                serde_json::from_value(serde_json::json!({"access_key_id": "k", "secret_access_key": "s"})).unwrap(),
            )]
            .into(),
            std::env::temp_dir(),
            Default::default(),
        )
    }

    #[tokio::test]
    async fn grants_are_bounded_by_the_capture_and_the_configured_shard_size() {
        let unlimited = captures().await;
        let absurd = pb::UploadRequest { size: u64::MAX, ..request("c1", "shard-000001.pcap") };
        let grant = unlimited.grant("a1", "ord01", absurd).await;
        assert!(grant.error.contains("larger than this capture's shards can be") && !grant.retryable, "{grant:?}");
        assert!(grant.parts.is_empty() && grant.put.is_none());
        let four_gib = pb::UploadRequest { size: (4 << 30) + 1, ..request("c1", "shard-000001.pcap") };
        assert!(unlimited.grant("a1", "ord01", four_gib).await.error.contains("larger"));
        // 1000 bytes in at most 10 packets: 24 + 10 x 16 + 1000 bytes of file at the most.
        let limited = captures_with(Some(10), Some(1000)).await;
        let over = pb::UploadRequest { size: 24 + 160 + 1000 + 1, ..request("c1", "shard-000001.pcap") };
        assert!(limited.grant("a1", "ord01", over).await.error.contains("(1184 bytes)"));
        let fits = pb::UploadRequest { size: 24 + 160 + 1000, ..request("c1", "shard-000001.pcap") };
        let grant = limited.grant("a1", "ord01", fits).await;
        assert!(grant.error.is_empty() && grant.put.is_some(), "{grant:?}");
    }

    fn request(capture: &str, shard: &str) -> pb::UploadRequest {
        pb::UploadRequest {
            request_id: "r".into(),
            capture_id: capture.into(),
            shard: shard.into(),
            size: 10,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_shards_crc32c_is_signed_into_its_put_and_a_malformed_one_is_refused() {
        let full = captures().await;
        let with = pb::UploadRequest { crc32c: "TVUQaA==".into(), ..request("c1", "shard-000001.pcap") };
        let grant = full.grant("a1", "ord01", with).await;
        let put = grant.put.expect("a single PUT");
        assert!(
            put.headers.iter().any(|h| h.name.eq_ignore_ascii_case("x-amz-checksum-crc32c") && h.value == "TVUQaA=="),
            "{put:?}"
        );
        assert!(put.url.to_ascii_lowercase().contains("x-amz-checksum-crc32c"), "signed: {}", put.url);
        for bad in ["TVUQaA", "TVUQaA=!", "TVU-aA==", "TVUQaA==TVUQaA=="] {
            let req = pb::UploadRequest { crc32c: bad.into(), ..request("c1", "shard-000001.pcap") };
            let grant = full.grant("a1", "ord01", req).await;
            assert!(grant.error.starts_with("crc32c ") && !grant.retryable && grant.put.is_none(), "{bad}: {grant:?}");
        }
        let req = pb::UploadRequest { part_crc32c: vec!["x".into()], ..request("c1", "shard-000001.pcap") };
        assert!(full.grant("a1", "ord01", req).await.error.starts_with("crc32c \"x\""));
    }

    #[tokio::test]
    async fn upload_grants_are_refused_for_anything_but_the_agents_own_open_capture() {
        let full = captures().await;
        for (agent, pop, req, says) in [
            ("a1", "ord01", request("other", "shard-000001.pcap"), "no job"),
            ("a2", "ord01", request("c1", "shard-000001.pcap"), "no job"),
            ("a1", "ams01", request("c1", "shard-000001.pcap"), "no job"),
            ("a1", "ord01", request("c1", "../escape.pcap"), "not acceptable"),
            ("a1", "ord01", request("c1", ".hidden"), "not acceptable"),
        ] {
            let grant = full.grant(agent, pop, req).await;
            assert!(grant.put.is_none() && grant.parts.is_empty(), "{grant:?}");
            assert!(grant.error.contains(says) && !grant.retryable, "{agent} {pop}: {}", grant.error);
        }
        // A shard reported under a key that was not granted for it is refused.
        let uploaded = pb::ShardUploaded {
            request_id: "r".into(),
            capture_id: "c1".into(),
            shard: "shard-000001.pcap".into(),
            key: "edgecap-shards/c1/ord02/a9/shard-000001.pcap".into(),
            ..Default::default()
        };
        let committed = full.commit("a1", "ord01", uploaded).await;
        assert!(committed.error.contains("was not granted") && !committed.retryable, "{}", committed.error);
        // A PoP whose first report is not written yet has no key: its job makes it open.
        let keys = full.repo.store().list_keys("").await.unwrap();
        let pop_key = keys.iter().find(|k| k.ends_with("/pops/c1/a1")).expect("a1's PoP key");
        full.repo.store().delete(pop_key).await.unwrap();
        let grant = full.grant("a1", "ord01", request("c1", "shard-000001.pcap")).await;
        assert!(grant.error.is_empty() && grant.put.is_some(), "{grant:?}");
        let pop = PopResult::new("ord01", "a1", PopStatus::Running);
        full.repo.cas_pop("c1", "a1", None, &pop).await.unwrap();
        // Once the PoP is final, its capture takes no more shards.
        full.repo.update_pop("c1", "a1", None, |p| p.status = PopStatus::Done).await.unwrap();
        let grant = full.grant("a1", "ord01", request("c1", "shard-000002.pcap")).await;
        assert!(grant.error.contains("already closed") && !grant.retryable, "{}", grant.error);
    }
}
