//! Bucket ownership: the challenge written into a bucket and whether it was read back.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OwnershipStatus {
    Pending,
    Success,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OwnershipRecord {
    pub id: String,
    pub account_id: String,
    pub destination_conf: String,
    pub filename: String,
    pub status: OwnershipStatus,
    pub submitted: String,
    #[serde(default)]
    pub validated: Option<String>,
    /// The secret written into the bucket; never returned by the API.
    #[serde(default)]
    pub challenge: String,
}

impl OwnershipRecord {
    /// The challenge file's name in the bucket.
    pub(crate) fn challenge_file(id: &str) -> String {
        format!("ownership-challenge-{id}.txt")
    }

    pub(crate) fn to_api(&self) -> Value {
        json!({
            "id": self.id,
            "destination_conf": self.destination_conf,
            "filename": self.filename,
            "status": self.status,
            "submitted": self.submitted,
            "validated": self.validated,
        })
    }
}
