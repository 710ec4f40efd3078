//! Auto-restart: which Failed instances may start again, and the passes that start
//! them (omicron's `background/tasks/instance_reincarnation.rs`).

use sled_agent_api::{InstanceUuid, SledAgentApi};
use slog::warn;

use crate::db::{InstanceState, InstanceView, IntendedState};
use crate::instance::StartReason;
use crate::{NexusError, NexusStub, RestartPolicy};

/// What one auto-restart pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RestartCounts {
    pub found: usize,
    pub started: usize,
    pub errors: usize,
}

impl<S: SledAgentApi + 'static> NexusStub<S> {
    /// Failed instances with no active VMM that the policy and cooldown allow.
    pub fn restart_candidates(&self) -> Vec<InstanceUuid> {
        // A decision, not a stored timestamp: looking must not move a logical clock.
        let now = self.clock.peek();
        let db = self.db();
        db.instances
            .values()
            .filter(|i| i.state == InstanceState::Failed && i.propolis_id.is_none())
            .filter(|i| match self.config.restart_policy {
                RestartPolicy::Current => i.intended == IntendedState::Running,
                RestartPolicy::Policy2024 => true,
            })
            .filter(|i| {
                i.time_last_auto_restarted.is_none_or(|t| now - t >= self.config.restart_cooldown)
            })
            .map(|i| i.id)
            .collect()
    }

    /// One activation of the reincarnation task.
    pub async fn reincarnation_pass(&self) -> RestartCounts {
        let candidates = self.restart_candidates();
        let mut counts = RestartCounts { found: candidates.len(), ..RestartCounts::default() };
        for instance_id in candidates {
            match self.reincarnate(instance_id).await {
                Ok(_) => counts.started += 1,
                Err(_) => counts.errors += 1,
            }
        }
        counts
    }

    /// Auto-restart's start of one instance it found (one of `restart_candidates`);
    /// a pass is the candidates, then this for each.
    pub async fn reincarnate(&self, instance_id: InstanceUuid) -> Result<InstanceView, NexusError> {
        let r = self.start_saga(instance_id, StartReason::AutoRestart, &mut false).await;
        if let Err(e) = &r {
            warn!(self.log, "auto-restart failed"; "instance_id" => %instance_id, "error" => %e);
        }
        r
    }
}
