//! Multipart uploads granted to agents and not completed yet, per capture.
//!
//! An agent cut off half-way through a shard's multipart upload is granted a fresh upload
//! when it retries; the first one never becomes an object, but its parts hold storage in the
//! user's bucket until they are aborted. So each upload is recorded when it is granted and
//! forgotten when its shard is committed, and the leader aborts what is left when the
//! capture ends (`full/uploads.rs`).

use serde::{Deserialize, Serialize};

use super::repo::{Repo, Result, decode, encode, keys, token_hash};

/// One multipart upload granted to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenUpload {
    /// The capture's `destination_conf` (which bucket, and how to reach it).
    pub destination_conf: String,
    /// The object key the upload is for.
    pub key: String,
    /// The bucket's id of the upload.
    pub upload_id: String,
}

/// Upload ids are the bucket's own text (any characters): keys use their SHA-256.
fn upload_key(capture: &str, upload_id: &str) -> String {
    keys::upload(capture, &token_hash(upload_id))
}

impl Repo {
    /// Records an upload granted for `capture`.
    pub(crate) async fn put_open_upload(&self, capture: &str, upload: &OpenUpload) -> Result<()> {
        self.store().put(&upload_key(capture, &upload.upload_id), encode(upload), None).await?;
        Ok(())
    }

    /// Forgets an upload (completed, or aborted).
    pub(crate) async fn delete_open_upload(&self, capture: &str, upload_id: &str) -> Result<()> {
        self.store().delete(&upload_key(capture, upload_id)).await?;
        Ok(())
    }

    /// The uploads of `capture` still recorded.
    pub(crate) async fn open_uploads(&self, capture: &str) -> Result<Vec<OpenUpload>> {
        let mut out = Vec::new();
        for kv in self.store().list(&keys::uploads_of(capture)).await? {
            out.push(decode(&kv.key, &kv.value)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_uploads_are_recorded_per_capture_and_forgotten() {
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let upload = |id: &str| OpenUpload {
            destination_conf: "s3://b/p".into(),
            key: "p/edgecap-shards/c1/ord01/a1/shard-000001.pcap".into(),
            // Bucket ids hold characters a key segment must not: '/', '+', '='.
            upload_id: id.into(),
        };
        repo.put_open_upload("c1", &upload("a/b+c=")).await.unwrap();
        repo.put_open_upload("c1", &upload("x")).await.unwrap();
        repo.put_open_upload("c2", &upload("y")).await.unwrap();
        let mut open = repo.open_uploads("c1").await.unwrap();
        open.sort_by(|a, b| a.upload_id.cmp(&b.upload_id));
        assert_eq!(open, [upload("a/b+c="), upload("x")]);
        repo.delete_open_upload("c1", "a/b+c=").await.unwrap();
        assert_eq!(repo.open_uploads("c1").await.unwrap(), [upload("x")]);
        assert_eq!(repo.open_uploads("c2").await.unwrap(), [upload("y")]);
    }
}
