//! Planning a full capture: the bucket must be this account's, the account under its limit of
//! active captures, and the colo must have agents. Then the record is written, with one PoP
//! per agent of the colo (offline ones named `skipped`), and the jobs (see [`super::jobs`]).

use edgecap_storage::StorageError;

use super::FullCaptures;
use crate::model::{CaptureRecord, CaptureRequest, CaptureType, OwnershipStatus, PopResult, PopStatus};
use crate::store::{AgentPresence, RepoError};

/// Why a full capture was not started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    #[error("destination_conf: required for full captures")]
    MissingDestination,
    #[error(
        "destination_conf: bucket {0:?} has not been validated for this account (POST .../pcaps/ownership, then .../ownership/validate)"
    )]
    NotValidated(String),
    #[error("type: this account already has {active} pending or running full capture(s); the limit is {max}")]
    TooManyActive { active: usize, max: usize },
    #[error("colo_name: {colo:?} names no PoP where this account may capture (it may capture at {allowed})")]
    OutOfScope { colo: String, allowed: String },
    #[error(
        "colo_name: PoP {pop:?} already runs {running} full capture(s); at most {max} run at one PoP at once (--max-captures-per-pop)"
    )]
    PopBusy { pop: String, running: usize, max: usize },
    #[error("colo_name: no agent is connected in a PoP named {0:?} or starting with it")]
    NoAgents(String),
    #[error("{field}: no PoP named {colo:?} or starting with it has ever connected")]
    UnknownColo { field: String, colo: String },
    #[error("destination_conf: the bucket could not be reached; try again later")]
    Bucket(StorageError),
    /// The endpoint is not one the operator allows (the message names the field).
    #[error("{0}")]
    Endpoint(String),
    #[error(transparent)]
    Store(#[from] RepoError),
}

/// Whether PoP `pop` is in colo `colo`: its exact name when `exact` (some present PoP has
/// that name), else any PoP whose name starts with it. Case-insensitive.
fn in_colo(pop: &str, colo: &str, exact: bool) -> bool {
    let (pop, colo) = (pop.to_ascii_lowercase(), colo.to_ascii_lowercase());
    if exact { pop == colo } else { pop.starts_with(&colo) }
}

impl FullCaptures {
    /// Checks, records and starts a full capture; returns its record.
    pub(crate) async fn create(
        &self,
        account: &str,
        request: CaptureRequest,
        now: time::OffsetDateTime,
        max_active: Option<usize>,
        scope: crate::model::CaptureScope,
    ) -> Result<CaptureRecord, PlanError> {
        let (agents, offline) = self.check(account, &request, &scope).await?;
        let destination = request.destination.clone().ok_or(PlanError::MissingDestination)?;
        let colo = request.colo_name.clone().unwrap_or_default();
        // Reachability of the bucket is checked when shards are granted; the store is built now
        // so a destination that cannot even be configured is refused at once.
        self.store_for(&destination).await.map_err(PlanError::Bucket)?;
        let mut record = CaptureRecord::from_request(account, request, now);
        // The steps of a capture's start, for `bench/scale.py full --timeline` (`pop=*`: the
        // capture's, not one PoP's).
        tracing::debug!(target: "edgecap_timeline", capture = %record.id, pop = "*", "checked");
        record.scope = Some(scope);
        if let Some(max) = max_active
            && let Err(active) = self.repo.reserve_active_full(account, &record.id, max).await?
        {
            return Err(PlanError::TooManyActive { active, max });
        }
        record.colo_name = Some(colo);
        record.pops = agents
            .iter()
            .map(|a| PopResult { sample_rate: 1, ..PopResult::new(&a.pop, &a.agent_id, PopStatus::Pending) })
            .chain(offline.iter().map(|a| PopResult {
                error: Some(format!("agent offline (last connected {}); nothing captured there", a.connected_at)),
                ..PopResult::new(&a.pop, &a.agent_id, PopStatus::Skipped)
            }))
            .collect();
        if let Err(error) = self.repo.create_capture(&record).await {
            if max_active.is_some() {
                let _ = self.repo.release_active_full(account, &record.id).await;
            }
            return Err(error.into());
        }
        tracing::info!(%account, capture = %record.id, pops = record.pops.len(), "full capture accepted");
        tracing::debug!(target: "edgecap_timeline", capture = %record.id, pop = "*", "record written");
        self.submit(&record).await?;
        tracing::debug!(target: "edgecap_timeline", capture = %record.id, pop = "*", "jobs written");
        Ok(record)
    }

    /// Everything a full capture is checked for before it starts (the destination, its
    /// ownership, the colos, the account's scope, the PoPs' capacity); the agents that would
    /// capture and those offline. A dry run stops here.
    pub(crate) async fn check(
        &self,
        account: &str,
        request: &CaptureRequest,
        scope: &crate::model::CaptureScope,
    ) -> Result<(Vec<AgentPresence>, Vec<AgentPresence>), PlanError> {
        debug_assert_eq!(request.capture_type, CaptureType::Full);
        let destination = request.destination.clone().ok_or(PlanError::MissingDestination)?;
        self.check_endpoint(&destination).await.map_err(PlanError::Endpoint)?;
        let colo = request.colo_name.clone().unwrap_or_default();
        let colos = if request.colo_names.is_empty() { vec![colo.clone()] } else { request.colo_names.clone() };
        // What is checked is read at once, not one read after another: each read waits for a
        // store that a start of hundreds of PoPs keeps busy, and the start waits for them all.
        // Their results are taken in the order the checks were made one by one, so that a
        // request refused for its bucket is refused so even if another read failed.
        // (The offline agents only name skipped PoPs: without them the capture still starts.)
        let (ownerships, present, known, jobs) = tokio::join!(
            self.repo.list_ownerships(account),
            self.repo.list_agents(),
            self.repo.list_known_agents(),
            self.repo.jobs_per_agent(),
        );
        // The bucket must have been proven to be this account's.
        let owned =
            ownerships?.iter().any(|o| o.destination_conf == destination.uri && o.status == OwnershipStatus::Success);
        if !owned {
            return Err(PlanError::NotValidated(destination.uri));
        }
        let (present, known) = (present?, known.unwrap_or_default());
        let (mut agents, mut offline) = (Vec::new(), Vec::new());
        for (i, name) in colos.iter().enumerate() {
            let (online, gone) = colo_agents(&present, &known, name);
            if colos.len() > 1 && online.is_empty() && gone.is_empty() {
                let field =
                    if i == 0 && request.colo_name.is_some() { "colo_name".into() } else { format!("colo_names[{i}]") };
                return Err(PlanError::UnknownColo { field, colo: name.clone() });
            }
            for a in online {
                if agents.iter().all(|b: &AgentPresence| b.agent_id != a.agent_id) {
                    agents.push(a);
                }
            }
            for a in gone {
                if offline.iter().all(|b: &AgentPresence| b.agent_id != a.agent_id) {
                    offline.push(a);
                }
            }
        }
        agents.sort_by(|a, b| (&a.pop, &a.agent_id).cmp(&(&b.pop, &b.agent_id)));
        if agents.is_empty() {
            return Err(PlanError::NoAgents(colos.join(", ")));
        }
        // Only the PoPs of the account's scope.
        agents.retain(|a| scope.pop_allowed(&a.pop));
        offline.retain(|a| scope.pop_allowed(&a.pop));
        if agents.is_empty() {
            return Err(PlanError::OutOfScope { colo, allowed: scope.pops.join(", ") });
        }
        // Each PoP's running captures.
        let max = self.settings.max_captures_per_pop;
        let jobs = jobs?;
        let busy = agents.iter().map(|a| (a, jobs.get(&a.agent_id).copied().unwrap_or(0))).find(|(_, n)| *n >= max);
        if let Some((agent, running)) = busy {
            return Err(PlanError::PopBusy { pop: agent.pop.clone(), running, max });
        }
        Ok((agents, offline))
    }
}

/// The agents of a colo connected now (`present`: to any replica, from the shared presence
/// keys), and those seen before (`known`) but offline now. A colo is an exact PoP name, or a
/// prefix of PoP names (`ord` covers `ord01` and `ord02`), case-insensitive.
fn colo_agents(
    present: &[AgentPresence],
    known: &[AgentPresence],
    colo: &str,
) -> (Vec<AgentPresence>, Vec<AgentPresence>) {
    let exact = present.iter().any(|a| in_colo(&a.pop, colo, true));
    // (In the order read: `check` sorts the agents of all its colos once.)
    let agents: Vec<AgentPresence> = present.iter().filter(|a| in_colo(&a.pop, colo, exact)).cloned().collect();
    let offline = known
        .iter()
        .filter(|k| in_colo(&k.pop, colo, exact) && agents.iter().all(|a| a.agent_id != k.agent_id))
        .cloned()
        .collect();
    (agents, offline)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::model::{CaptureRequest, DestinationConf, JobRecord, OwnershipRecord};

    #[tokio::test]
    async fn a_pop_running_its_limit_of_full_captures_is_refused_naming_colo_name() {
        let repo = crate::store::Repo::new(edgecap_state::open(&edgecap_state::StateConfig::Memory).await.unwrap());
        let destination =
            DestinationConf::parse("s3://bucket-1/p?region=us-east-1&endpoint=http://127.0.0.1:9").unwrap();
        repo.put_ownership(&OwnershipRecord {
            id: "o1".into(),
            account_id: "acct".into(),
            destination_conf: destination.uri.clone(),
            filename: "f".into(),
            status: OwnershipStatus::Success,
            submitted: String::new(),
            validated: None,
            challenge: String::new(),
        })
        .await
        .unwrap();
        let lease = repo.store().grant_lease(std::time::Duration::from_secs(60)).await.unwrap();
        let presence = AgentPresence {
            agent_id: "a1".into(),
            pop: "ord01".into(),
            interfaces: vec![],
            version: String::new(),
            coordinator: "c".into(),
            connected_at: String::new(),
            sample_rate: 1,
            announced: false,
            relay_batches: false,
        };
        repo.put_presence(&presence, lease).await.unwrap();
        repo.remember_agent(&presence).await.unwrap();
        // Two jobs at a1; another agent's (whose id a1's is a prefix of) are not a1's.
        for (i, agent) in [(0, "a1"), (1, "a1"), (2, "a10"), (3, "a10"), (4, "a10")] {
            let job: JobRecord = serde_json::from_value(serde_json::json!({
                "capture_id": format!("c{i}"), "agent_id": agent, "pop": "ord01", "account_id": "acct",
                "time_limit": 10, "not_after_ns": 0, "stop": false, "destination_conf": "s3://b/p"
            }))
            .unwrap_or_else(|e| panic!("job record: {e}"));
            repo.put_job(&job).await.unwrap();
        }
        let settings = crate::config::FullSettings {
            max_captures_per_pop: 2,
            endpoints: crate::model::EndpointPolicy { allow_private: true, allowed: vec![] },
            ..Default::default()
        };
        let full = FullCaptures::for_test(repo, settings);
        let request = CaptureRequest {
            colo_name: Some("ord01".into()),
            destination: Some(destination),
            ..CaptureRequest::for_test(CaptureType::Full)
        };
        let refused = full
            .create("acct", request, time::OffsetDateTime::now_utc(), None, crate::model::CaptureScope::everything())
            .await
            .unwrap_err();
        assert!(matches!(refused, PlanError::PopBusy { running: 2, max: 2, .. }), "{refused}");
        assert!(refused.to_string().starts_with("colo_name:"), "{refused}");
    }

    #[test]
    fn colos_are_exact_names_or_prefixes() {
        assert!(super::in_colo("ORD01", "ord01", true));
        assert!(!super::in_colo("ord011", "ord01", true));
        assert!(super::in_colo("ord02", "ord", false));
        assert!(!super::in_colo("ams01", "ord", false));
    }
}
