//! Per-PoP progress of running full captures (`pops/{capture}/{agent}`): a PoP's key is
//! created by its first report (or by the leader failing it); until then the capture record's
//! copy stands for it. Keys come from [`super::repo::keys`].

use edgecap_state::Revision;

use super::repo::{Repo, Result, decode, encode, keys};
use crate::model::PopResult;

impl Repo {
    /// One PoP's progress, with the revision to compare-and-swap against.
    pub(crate) async fn get_pop(&self, capture: &str, agent: &str) -> Result<Option<(PopResult, Revision)>> {
        let key = keys::pop(capture, agent);
        match self.store().get(&key).await? {
            Some(kv) => Ok(Some((decode(&key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Writes a PoP's progress if the key is still at `expected` (`None`: absent).
    pub(crate) async fn cas_pop(
        &self,
        capture: &str,
        agent: &str,
        expected: Option<Revision>,
        pop: &PopResult,
    ) -> Result<bool> {
        Ok(self.store().compare_and_put(&keys::pop(capture, agent), expected, encode(pop), None).await?.is_some())
    }

    /// Read-modify-write of one PoP's progress with compare-and-swap (like
    /// [`Repo::update_capture`]); nothing is written when `change` leaves it as it was.
    /// `initial`: what a PoP without a key is (its capture record's copy, before its first
    /// report); without it an absent key is left absent. Returns the new state if it was
    /// written; `None` if the key is absent (and no `initial`), unchanged, or lost the race
    /// five times in a row.
    pub(crate) async fn update_pop(
        &self,
        capture: &str,
        agent: &str,
        initial: Option<&PopResult>,
        mut change: impl FnMut(&mut PopResult),
    ) -> Result<Option<PopResult>> {
        for _ in 0..5 {
            let (before, revision) = match (self.get_pop(capture, agent).await?, initial) {
                (Some((pop, revision)), _) => (pop, Some(revision)),
                (None, Some(initial)) => (initial.clone(), None),
                (None, None) => return Ok(None),
            };
            let mut pop = before.clone();
            change(&mut pop);
            if pop == before {
                return Ok(None);
            }
            if self.cas_pop(capture, agent, revision, &pop).await? {
                return Ok(Some(pop));
            }
        }
        Ok(None)
    }

    /// A capture's PoPs with their keys' revisions, by agent id, in one read; keys that do
    /// not decode are left out (their writers go key by key).
    pub(crate) async fn pops_with_revisions(
        &self,
        capture: &str,
    ) -> Result<std::collections::HashMap<String, (PopResult, Revision)>> {
        let kvs = self.store().list(&keys::pops_of(capture)).await?;
        Ok(kvs
            .into_iter()
            .filter_map(|kv| {
                decode::<PopResult>(&kv.key, &kv.value).ok().map(|p| (p.agent_id.clone(), (p, kv.mod_revision)))
            })
            .collect())
    }

    /// Writes several PoPs' progress in one transaction, if none of their keys was written
    /// since its revision (`None`: created, if still absent); `false`: one was, and nothing
    /// was written.
    pub(crate) async fn cas_pops(&self, capture: &str, pops: &[(Option<Revision>, PopResult)]) -> Result<bool> {
        let puts = pops.iter().map(|(rev, pop)| (keys::pop(capture, &pop.agent_id), *rev, encode(pop))).collect();
        Ok(self.store().compare_and_put_all(puts).await?)
    }

    pub(crate) async fn list_pops(&self, capture: &str) -> Result<Vec<PopResult>> {
        self.list_json(&keys::pops_of(capture)).await
    }
}
