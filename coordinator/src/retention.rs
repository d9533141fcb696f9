//! Retention: captures, their sample files and their records expire `retention` after they
//! were submitted. The leader sweeps the creation-day index (`created/{day}/...`) once a
//! minute from a cursor, so each sweep reads only the days that are due; the API answers an
//! expired capture with 404 at once, before the sweep gets to it. What users own is never
//! touched: the merged files (and any kept shards) of full captures are in their buckets.

use std::sync::Arc;
use std::time::Duration;

use edgecap_storage::ObjectStore;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::model::CaptureRecord;
use crate::store::Repo;

/// How often the leader sweeps (more often for a retention shorter than 4 minutes).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Whether `record` is past its retention at `now`.
pub(crate) fn expired(record: &CaptureRecord, retention: Option<Duration>, now: OffsetDateTime) -> bool {
    let Some(retention) = retention else { return false };
    let Ok(submitted) = OffsetDateTime::parse(&record.submitted, &time::format_description::well_known::Rfc3339) else {
        return false;
    };
    submitted + retention < now
}

/// Sweeps while this replica is the leader, until `cancel`.
pub(crate) async fn run(
    repo: Repo,
    objects: Arc<dyn ObjectStore>,
    retention: Option<Duration>,
    mut leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let Some(retention) = retention else { return };
    let every = SWEEP_EVERY.min(retention / 4).max(Duration::from_millis(100));
    loop {
        if *leader.borrow_and_update() {
            match sweep(&repo, objects.as_ref(), retention, OffsetDateTime::now_utc()).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "expired captures deleted"),
                Err(error) => tracing::warn!(%error, "retention sweep stopped; next one in a minute"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
            _ = leader.changed() => {}
        }
    }
}

fn day(t: OffsetDateTime) -> String {
    crate::store::day_of(&crate::model::rfc3339(t))
}

/// One sweep: deletes every final capture past its retention; returns how many.
pub(crate) async fn sweep(
    repo: &Repo,
    objects: &dyn ObjectStore,
    retention: Duration,
    now: OffsetDateTime,
) -> crate::store::Result<usize> {
    let due = day(now - retention);
    let stored = repo.retention_cursor().await?;
    let mut cursor = match stored.clone() {
        Some(cursor) => cursor,
        None => match repo.first_created_day().await? {
            Some(first) => first,
            None => return Ok(0),
        },
    };
    let start = cursor.clone();
    let mut deleted = 0;
    // The cursor moves to the first day that still holds something (a capture still
    // running, a file that could not be deleted); later days are swept all the same.
    let mut first_incomplete: Option<String> = None;
    let format = time::macros::format_description!("[year]-[month]-[day]");
    while cursor <= due {
        let mut left = 0;
        for (account, id) in repo.list_created(&cursor).await? {
            match repo.get_capture(&account, &id).await? {
                None => repo.delete_created(&cursor, &account, &id).await?,
                Some(record) if record.status.is_final() && expired(&record, Some(retention), now) => {
                    if let Some(key) = &record.object_key
                        && record.capture_type == crate::model::CaptureType::Simple
                        && let Err(error) = objects.delete(key).await
                    {
                        // Kept in the index: tried again at the next sweep.
                        tracing::warn!(capture = %id, %key, %error, "expired capture's file not deleted");
                        left += 1;
                        continue;
                    }
                    repo.delete_capture(&account, &id).await?;
                    repo.delete_created(&cursor, &account, &id).await?;
                    deleted += 1;
                }
                Some(_) => left += 1,
            }
        }
        if left > 0 && first_incomplete.is_none() {
            first_incomplete = Some(cursor.clone());
        }
        let Ok(date) = time::Date::parse(&cursor, &format) else { break };
        let Some(next) = date.next_day().and_then(|d| d.format(&format).ok()) else { break };
        cursor = next;
    }
    // The day that is due is only partly expired: sweeping starts there next time.
    let next = first_incomplete.unwrap_or(due);
    if stored.is_none() || next != start {
        repo.set_retention_cursor(&next).await?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CaptureStatus, CaptureType};

    fn record(id: &str, days_ago: i64, kind: CaptureType, status: CaptureStatus, now: OffsetDateTime) -> CaptureRecord {
        let request = crate::model::CaptureRequest::for_test(kind);
        let mut record = CaptureRecord::from_request("acct", request, now - time::Duration::days(days_ago));
        record.id = id.into();
        record.status = status;
        record.object_key = (kind == CaptureType::Simple).then(|| format!("acct/{id}.pcap"));
        record
    }

    #[tokio::test]
    async fn a_sweep_deletes_expired_final_captures_and_their_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let objects =
            edgecap_storage::open(&edgecap_storage::StorageConfig::LocalDir { root: dir.path().into() }).await.unwrap();
        let now = OffsetDateTime::now_utc();
        let old = record("00000000000000000000000000000001", 40, CaptureType::Simple, CaptureStatus::Success, now);
        let recent = record("00000000000000000000000000000002", 2, CaptureType::Simple, CaptureStatus::Success, now);
        let old_full = record("00000000000000000000000000000003", 35, CaptureType::Full, CaptureStatus::Failed, now);
        let stuck = record("00000000000000000000000000000004", 50, CaptureType::Full, CaptureStatus::Running, now);
        for r in [&old, &recent, &old_full, &stuck] {
            repo.create_capture(r).await.unwrap();
            if let Some(key) = &r.object_key {
                objects.put(key, bytes::Bytes::from_static(b"pcap")).await.unwrap();
            }
        }
        let retention = Duration::from_secs(30 * 86_400);
        assert_eq!(sweep(&repo, objects.as_ref(), retention, now).await.unwrap(), 2);
        assert!(repo.get_capture("acct", &old.id).await.unwrap().is_none());
        assert!(repo.get_capture("acct", &old_full.id).await.unwrap().is_none());
        assert!(objects.get(old.object_key.as_ref().unwrap()).await.is_err(), "the sample file went with it");
        assert!(repo.get_capture("acct", &recent.id).await.unwrap().is_some());
        assert!(objects.get(recent.object_key.as_ref().unwrap()).await.is_ok());
        // Still running: kept, and the cursor waits at its day.
        assert!(repo.get_capture("acct", &stuck.id).await.unwrap().is_some());
        assert_eq!(repo.retention_cursor().await.unwrap(), Some(crate::store::day_of(&stuck.submitted)));
        assert_eq!(sweep(&repo, objects.as_ref(), retention, now).await.unwrap(), 0);
        assert!(expired(&old, Some(retention), now) && !expired(&recent, Some(retention), now));
        assert!(!expired(&old, None, now));
    }
}
