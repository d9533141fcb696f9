//! Indexes that keep the leader's work proportional to what is live, not to what is
//! stored: the unfinished full captures (`active/`, what the leader follows) and captures by
//! creation day (`created/`, what retention sweeps a day at a time).

use serde::{Deserialize, Serialize};

use super::repo::{Repo, Result, decode, encode, keys};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Active {
    account: String,
}

/// The creation day of a capture, `yyyy-mm-dd` (UTC), from its RFC 3339 `submitted`.
pub(crate) fn day_of(submitted: &str) -> String {
    submitted.get(..10).unwrap_or("0000-00-00").to_string()
}

impl Repo {
    /// Marks a full capture as one the leader must follow.
    pub(crate) async fn put_active(&self, account: &str, capture: &str) -> Result<()> {
        let value = encode(&Active { account: account.to_string() });
        self.store().put(&keys::active(capture), value, None).await?;
        Ok(())
    }

    /// The capture is final: the leader no longer follows it.
    pub(crate) async fn delete_active(&self, capture: &str) -> Result<()> {
        self.store().delete(&keys::active(capture)).await?;
        Ok(())
    }

    /// The unfinished full captures, as (id, account).
    pub(crate) async fn list_active(&self) -> Result<Vec<(String, String)>> {
        let prefix = keys::actives();
        let mut out = Vec::new();
        for kv in self.store().list(&prefix).await? {
            let active: Active = decode(&kv.key, &kv.value)?;
            out.push((kv.key[prefix.len()..].to_string(), active.account));
        }
        Ok(out)
    }

    /// An unfinished full capture's record, found by its id alone (through the active index);
    /// `None` once it is final or if it never existed.
    pub(crate) async fn active_capture(&self, capture: &str) -> Result<Option<crate::model::CaptureRecord>> {
        let key = keys::active(capture);
        let Some(kv) = self.store().get(&key).await? else { return Ok(None) };
        let active: Active = decode(&key, &kv.value)?;
        self.get_capture(&active.account, capture).await
    }

    /// Whether the active index was built from the records (stores written before it
    /// existed have unfinished captures that are not in it).
    pub(crate) async fn active_index_built(&self) -> Result<bool> {
        Ok(self.store().get(&keys::active_index_built()).await?.is_some())
    }

    pub(crate) async fn mark_active_index_built(&self) -> Result<()> {
        self.store().put(&keys::active_index_built(), b"{}".to_vec(), None).await?;
        Ok(())
    }

    /// Files a capture under its creation day, for retention.
    pub(crate) async fn put_created(&self, day: &str, account: &str, id: &str) -> Result<()> {
        self.store().put(&keys::created(day, account, id), b"{}".to_vec(), None).await?;
        Ok(())
    }

    /// The captures created on `day`, as (account, id).
    pub(crate) async fn list_created(&self, day: &str) -> Result<Vec<(String, String)>> {
        let prefix = keys::created_on(day);
        let mut out = Vec::new();
        for kv in self.store().list(&prefix).await? {
            if let Some((account, id)) = kv.key[prefix.len()..].split_once('/') {
                out.push((account.to_string(), id.to_string()));
            }
        }
        Ok(out)
    }

    /// The earliest creation day in the index (a one-off full read, when no cursor exists).
    pub(crate) async fn first_created_day(&self) -> Result<Option<String>> {
        let prefix = keys::created_all();
        let all = self.store().list(&prefix).await?;
        Ok(all.first().and_then(|kv| kv.key[prefix.len()..].split('/').next().map(str::to_string)))
    }

    pub(crate) async fn delete_created(&self, day: &str, account: &str, id: &str) -> Result<()> {
        self.store().delete(&keys::created(day, account, id)).await?;
        Ok(())
    }

    /// The first creation day retention has not swept completely.
    pub(crate) async fn retention_cursor(&self) -> Result<Option<String>> {
        self.get_json(&keys::retention_cursor()).await
    }

    pub(crate) async fn set_retention_cursor(&self, day: &str) -> Result<()> {
        self.store().put(&keys::retention_cursor(), encode(&day), None).await?;
        Ok(())
    }

    /// Deletes a capture's record and every key kept with it (shards, working keys).
    pub(crate) async fn delete_capture(&self, account: &str, id: &str) -> Result<()> {
        let mut doomed: Vec<String> =
            self.store().list(&keys::shards_of(id)).await?.into_iter().map(|kv| kv.key).collect();
        doomed.extend(self.store().list(&keys::pops_of(id)).await?.into_iter().map(|kv| kv.key));
        // Uploads the leader could not abort when the capture ended (the bucket's lifecycle
        // rule removes them): their records go with the capture.
        doomed.extend(self.store().list(&keys::uploads_of(id)).await?.into_iter().map(|kv| kv.key));
        // The record last: a sweep cut short finds it and deletes the rest again.
        doomed.extend([keys::active(id), keys::budget(id), keys::capture(account, id)]);
        self.delete_keys(&doomed).await?;
        Ok(())
    }
}
