//! The coordinator's records in the state store. `repo.rs` holds the key layout (the only
//! place a key is built) and the typed reads and writes of accounts, captures and ownerships;
//! `work.rs` the working keys of running captures (jobs, shards) and agent presence
//! (`AgentPresence`); `pops.rs` per-PoP progress (a PoP's key is made by its first report); `batch.rs` unconditional puts of many callers gathered into
//! transactions (`PutBatch`, for shard records); `relay.rs` the keys of sample queries relayed between replicas; `follow.rs` the
//! restartable prefix watch that drives job forwarding and the relay; `enroll.rs` agent
//! enrollment's records; `index.rs` the active-capture and creation-day indexes; `uploads.rs` agents' multipart uploads not completed yet; `metered.rs` counts the store's failures in the metrics.

mod batch;
mod enroll;
mod follow;
mod index;
#[cfg(test)]
pub(crate) mod interloper;
mod metered;
mod pops;
mod relay;
mod repo;
mod uploads;
mod work;

pub(crate) use batch::PutBatch;
pub(crate) use enroll::{AgentRevocation, BootstrapToken, IssuedCert, Revocation};
pub(crate) use index::day_of;
pub(crate) use metered::Metered;
pub(crate) use repo::{Repo, RepoError, Result, TokenRecord, decode, token_hash};
pub(crate) use uploads::OpenUpload;
pub(crate) use work::{AgentPresence, POP_KEYS_BY_REPORT};

/// Most keys one transaction writes (and compares): etcd's `--max-txn-ops` default, which
/// counts a transaction's compares and its puts apart.
pub(crate) const MAX_TXN_KEYS: usize = 128;

/// `items` cut into the fewest transactions of at most [`MAX_TXN_KEYS`] keys, `keys_each`
/// keys an item, of even sizes (300 PoPs: three of 100, not 128 + 128 + 44). etcd applies
/// transactions one after another, and what one costs is mostly per transaction, not per
/// key: 300 jobs written in ten transactions took ~17 ms where three took ~7.
pub(crate) fn txn_chunks<T>(items: &[T], keys_each: usize) -> std::slice::Chunks<'_, T> {
    let per = (MAX_TXN_KEYS / keys_each.max(1)).max(1);
    let transactions = items.len().div_ceil(per).max(1);
    items.chunks(items.len().div_ceil(transactions).max(1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn transactions_are_few_and_even() {
        let sizes = |n: usize, each| super::txn_chunks(&vec![0u8; n], each).map(<[u8]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(300, 1), [100, 100, 100]);
        assert_eq!(sizes(128, 1), [128]);
        assert_eq!(sizes(129, 1), [65, 64]);
        assert_eq!(sizes(1000, 1), [125; 8]);
        assert_eq!(sizes(300, 2), [60; 5], "two keys an item: at most 64 items");
        assert!(sizes(0, 1).is_empty());
    }
}
