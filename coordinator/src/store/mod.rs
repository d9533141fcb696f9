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
pub(crate) use work::AgentPresence;
