//! A full capture's limits as a budget shared by its PoPs: the merged file never holds more
//! packets or bytes than asked for, whatever the number of PoPs. Each PoP starts with a
//! portion (a quarter of the budget split evenly: `limit / (4 x PoPs)`); its agent asks for
//! more before it runs out, and gets another portion while any is left (busy PoPs ask more
//! often, so they get more; an idle PoP holds at most its first portion). The grants are
//! kept in the state store under `budget/{capture}` and changed by compare-and-swap, so
//! agents on different replicas draw from one budget; allowances only grow and their sum
//! never passes the limits. When nothing is left, an agent is told so and stops at its
//! allowance (stop reason `budget`). A PoP that never needs more keeps its unused portion
//! (so the merged file can hold somewhat less than the limits while a quiet PoP runs to its
//! time limit); what is delivered never holds more.

use edgecap_proto::agent::v1 as pb;

use super::FullCaptures;

impl FullCaptures {
    /// Answers an agent's request for more of its capture's budget.
    pub(crate) async fn grant_budget(&self, agent: &str, request: pb::BudgetRequest) -> pb::BudgetGrant {
        let mut answer = pb::BudgetGrant {
            request_id: request.request_id.clone(),
            capture_id: request.capture_id.clone(),
            ..Default::default()
        };
        // Only for a capture this agent has a job in.
        match self.repo.get_job(agent, &request.capture_id).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                answer.error = "no job of this agent in that capture".into();
                return answer;
            }
            Err(e) => {
                answer.error = format!("state store: {e}");
                return answer;
            }
        }
        match self.repo.update_budget(&request.capture_id, |b| b.grant(agent)).await {
            Ok(Some(((packets, bytes), exhausted))) => {
                answer.packet_allowance = packets;
                answer.byte_allowance = bytes;
                answer.exhausted = exhausted;
            }
            Ok(None) => answer.error = "this capture has no shared budget".into(),
            Err(e) => answer.error = format!("state store: {e}"),
        }
        answer
    }
}
