//! The S3 client of each destination bucket, built once and cached, with the per-bucket
//! credentials the operator configured (else the AWS chain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use edgecap_common::lock;
use edgecap_storage::StorageError;
use edgecap_storage::s3::{S3Store, StaticCredentials};

use crate::model::DestinationConf;

pub(super) struct Buckets {
    credentials: HashMap<String, StaticCredentials>,
    stores: Mutex<HashMap<String, Arc<S3Store>>>,
}

impl Buckets {
    pub(super) fn new(credentials: HashMap<String, StaticCredentials>) -> Self {
        Self { credentials, stores: Mutex::new(HashMap::new()) }
    }

    pub(super) async fn store_for(&self, destination: &DestinationConf) -> Result<Arc<S3Store>, StorageError> {
        if let Some(store) = lock(&self.stores).get(&destination.uri) {
            return Ok(store.clone());
        }
        let credentials = self.credentials.get(&destination.bucket).cloned();
        let store = Arc::new(S3Store::connect(destination.location(), credentials).await?);
        lock(&self.stores).insert(destination.uri.clone(), store.clone());
        Ok(store)
    }

    /// The store of a `destination_conf` read back from the state store.
    pub(super) async fn store_for_uri(&self, uri: &str) -> Result<Arc<S3Store>, StorageError> {
        let destination = DestinationConf::parse(uri)
            .map_err(|e| StorageError::Rejected(format!("stored destination_conf does not parse: {e}")))?;
        self.store_for(&destination).await
    }
}
