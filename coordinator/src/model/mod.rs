//! What the coordinator stores and shows: capture and ownership records, per-PoP results,
//! agents' jobs, ids and times. Plain data with serde; the API representation is built here
//! (`to_api`), the state-store keys in `store/repo.rs`, the wire messages in `convert.rs`.

mod account;
mod budget;
mod capture;
mod destination;
mod endpoints;
mod ids;
mod job;
mod ownership;
mod pop;
mod request;

pub(crate) use account::{AccountScope, CaptureScope};
pub(crate) use budget::Budget;
pub(crate) use capture::{CaptureRecord, CaptureStatus, CaptureType, OutputFormat};
pub(crate) use destination::{DestinationConf, DestinationError};
pub use endpoints::EndpointPolicy;
pub use ids::rfc3339;
pub(crate) use ids::{is_id, new_id};
pub(crate) use ids::{rfc3339_ns, rfc3339_secs};
pub(crate) use job::JobRecord;
pub(crate) use ownership::{OwnershipRecord, OwnershipStatus};
pub(crate) use pop::{PopResult, PopStatus, ShardRef, StopReason};
pub(crate) use request::CaptureRequest;
