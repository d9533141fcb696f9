//! The S3 client of each destination bucket, built once and cached, with the per-bucket
//! credentials the operator configured (else the AWS chain).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use edgecap_common::lock;
use edgecap_storage::StorageError;
use edgecap_storage::s3::{S3Store, StaticCredentials};

use crate::model::{DestinationConf, EndpointPolicy};

/// Bucket clients kept at most; the oldest is dropped first (it is rebuilt when needed).
const MAX_CACHED: usize = 256;

/// Clients by destination, and the order they were made in.
type Cache = (HashMap<String, Arc<S3Store>>, VecDeque<String>);

pub(super) struct Buckets {
    credentials: HashMap<String, StaticCredentials>,
    policy: EndpointPolicy,
    /// The AWS chain may ask the instance-metadata service.
    instance_metadata: bool,
    stores: Mutex<Cache>,
}

impl Buckets {
    pub(super) fn new(
        credentials: HashMap<String, StaticCredentials>,
        policy: EndpointPolicy,
        instance_metadata: bool,
    ) -> Self {
        Self { credentials, policy, instance_metadata, stores: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// The client of a destination; its endpoint must pass the operator's policy.
    pub(super) async fn store_for(&self, destination: &DestinationConf) -> Result<Arc<S3Store>, StorageError> {
        if let Some(store) = lock(&self.stores).0.get(&destination.uri) {
            return Ok(store.clone());
        }
        if let Some(endpoint) = &destination.endpoint {
            self.policy.check(endpoint).await.map_err(StorageError::Rejected)?;
        }
        let credentials = self.credentials.get(&destination.bucket).cloned();
        let store = Arc::new(S3Store::connect(destination.location(), credentials, self.instance_metadata).await?);
        let mut cache = lock(&self.stores);
        let (stores, order) = &mut *cache;
        if stores.insert(destination.uri.clone(), store.clone()).is_none() {
            order.push_back(destination.uri.clone());
        }
        while order.len() > MAX_CACHED {
            if let Some(oldest) = order.pop_front() {
                stores.remove(&oldest);
            }
        }
        Ok(store)
    }

    /// How many clients are cached.
    #[cfg(test)]
    pub(super) fn cached(&self) -> usize {
        lock(&self.stores).0.len()
    }

    /// The store of a `destination_conf` read back from the state store.
    pub(super) async fn store_for_uri(&self, uri: &str) -> Result<Arc<S3Store>, StorageError> {
        let destination = DestinationConf::parse(uri)
            .map_err(|e| StorageError::Rejected(format!("stored destination_conf does not parse: {e}")))?;
        self.store_for(&destination).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_cache_is_bounded() {
        let buckets = Buckets::new(HashMap::new(), EndpointPolicy { allow_private: true, ..Default::default() }, false);
        for i in 0..MAX_CACHED + 10 {
            let d = DestinationConf::parse(&format!("s3://bucket-{i}/p?region=us-east-1&endpoint=http://127.0.0.1:1"))
                .unwrap();
            buckets.store_for(&d).await.unwrap();
        }
        assert_eq!(buckets.cached(), MAX_CACHED);
    }

    #[tokio::test]
    async fn a_refused_endpoint_gets_no_client() {
        let buckets = Buckets::new(HashMap::new(), EndpointPolicy::default(), false);
        let d = DestinationConf::parse("s3://bucket-1/p?endpoint=http://169.254.169.254").unwrap();
        let e = buckets.store_for(&d).await.unwrap_err().to_string();
        assert!(e.contains("internal address"), "{e}");
        assert_eq!(buckets.cached(), 0);
    }
}
