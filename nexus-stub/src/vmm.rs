//! VMM writes: the generation-checked write every report goes through, marking a
//! VMM Failed, the instance update step, and the two APIs that write VMMs (the
//! sled agents' reports and the instance watcher's datastore).

use async_trait::async_trait;
use sled_agent_api::{
    Generation, InstanceUuid, NexusApiError, NexusInternalApi, PropolisUuid, SledAgentApi,
    SledVmmState, VmmRuntimeState, VmmState,
};
use slog::{debug, info, warn};
use watcher::{DatastoreError, VmmWriteOutcome, WatchedVmm, WatcherDatastore};

use crate::db::{DbVmmState, InstanceChange, InstanceState, VmmWrite};
use crate::{NexusError, NexusStub, UpdateOutcome};

impl<S: SledAgentApi + 'static> NexusStub<S> {
    /// Applies `new` iff its generation is newer and the row is live. Returns whether
    /// it applied and whether the instance update step must now run.
    pub(crate) fn write_vmm(
        &self,
        propolis_id: PropolisUuid,
        new: VmmRuntimeState,
    ) -> Result<(bool, Option<InstanceUuid>), NexusError> {
        let mut db = self.db();
        let vmm = db.vmms.get_mut(&propolis_id).ok_or(NexusError::NoSuchVmm { propolis_id })?;
        let prev_gen = vmm.gen;
        let newer = new.gen > prev_gen || self.bugs().skip_generation_check;
        let applied = newer && !vmm.deleted;
        if applied {
            vmm.state = DbVmmState::Reported(new.state);
            vmm.gen = new.gen;
            vmm.time_state_updated = new.time_updated;
        }
        let instance_id = vmm.instance_id;
        db.writes.push(VmmWrite { propolis_id, state: new.state, gen: new.gen, prev_gen, applied });
        debug!(self.log, "VMM write";
            "propolis_id" => %propolis_id, "state" => %new.state, "gen" => new.gen.as_u64(),
            "prev_gen" => prev_gen.as_u64(), "applied" => applied);
        let update = (applied && new.state.is_terminal()).then_some(instance_id);
        Ok((applied, update))
    }

    /// omicron's `process_vmm_update`: the write, then, if it applied a terminal
    /// state, the update step, started and not awaited.
    pub fn process_vmm_update(
        &self,
        propolis_id: PropolisUuid,
        new: SledVmmState,
    ) -> Result<VmmWriteOutcome, NexusError> {
        let (updated, update) = self.write_vmm(propolis_id, new.vmm_state)?;
        if let Some(instance_id) = update {
            self.start_update(instance_id);
        }
        Ok(VmmWriteOutcome { updated, update_needed: update.is_some() })
    }

    pub(crate) fn start_update(&self, instance_id: InstanceUuid) {
        let this = self.this.clone();
        self.spawner.spawn_update(
            instance_id,
            Box::pin(async move {
                match this.upgrade() {
                    Some(nexus) => nexus.instance_update(instance_id),
                    None => Ok(UpdateOutcome::NothingToDo),
                }
            }),
        );
    }

    /// omicron's `mark_vmm_failed`: Failed at `read_gen` + 1, the generation the
    /// operation read before it called the sled agent, through the same checked
    /// write, then the update step, awaited (run here) as omicron awaits its saga.
    pub(crate) fn mark_vmm_failed(
        &self,
        propolis_id: PropolisUuid,
        read_gen: Generation,
    ) -> Result<(), NexusError> {
        let stored = self.vmm(propolis_id).ok_or(NexusError::NoSuchVmm { propolis_id })?;
        let basis = if self.bugs().mark_failed_at_stored_gen { stored.gen } else { read_gen };
        let failed = VmmRuntimeState {
            state: VmmState::Failed,
            gen: basis.next(),
            time_updated: self.clock.now(),
        };
        warn!(self.log, "sled agent says VMM is gone; marking it failed";
            "propolis_id" => %propolis_id, "gen" => failed.gen.as_u64());
        // As in omicron, the update step runs whether or not the write applied.
        self.write_vmm(propolis_id, failed)?;
        self.instance_update(stored.instance_id)?;
        Ok(())
    }

    // ---- the update step ----

    /// Unlinks a terminal active VMM: Destroyed -> no VMM (Stopped), Failed -> Failed.
    /// The VMM row is soft-deleted, so it takes no more writes and is not listed.
    pub fn instance_update(&self, instance_id: InstanceUuid) -> Result<UpdateOutcome, NexusError> {
        let mut db = self.db();
        let db = &mut *db;
        let inst =
            db.instances.get_mut(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
        let Some(propolis_id) = inst.propolis_id else { return Ok(UpdateOutcome::NothingToDo) };
        let vmm = db.vmms.get_mut(&propolis_id).ok_or(NexusError::NoSuchVmm { propolis_id })?;
        let outcome = match vmm.state {
            DbVmmState::Reported(VmmState::Destroyed) => {
                inst.state = InstanceState::NoVmm;
                UpdateOutcome::Stopped { propolis_id }
            }
            DbVmmState::Reported(VmmState::Failed) => {
                inst.state = InstanceState::Failed;
                UpdateOutcome::Failed { propolis_id }
            }
            _ => return Ok(UpdateOutcome::NothingToDo),
        };
        inst.propolis_id = None;
        inst.gen = inst.gen.next();
        info!(self.log, "instance update: unlinked terminal VMM";
            "instance_id" => %instance_id, "propolis_id" => %propolis_id,
            "vmm_state" => %vmm.state, "instance_gen" => inst.gen.as_u64());
        db.delete_vmm(propolis_id);
        db.log(
            instance_id,
            match outcome {
                UpdateOutcome::Failed { .. } => InstanceChange::Failed,
                _ => InstanceChange::Stopped,
            },
        );
        // The VMM's sled resources go with it. omicron's update saga deletes its
        // `sled_resource_vmm` row in a later node (the destroyed subsaga), so a
        // start in between is refused there; here both are one step.
        db.release(propolis_id);
        Ok(outcome)
    }
}

#[async_trait]
impl<S: SledAgentApi + 'static> NexusInternalApi for NexusStub<S> {
    async fn cpapi_instances_put(
        &self,
        propolis_id: PropolisUuid,
        new_runtime_state: SledVmmState,
    ) -> Result<(), NexusApiError> {
        debug!(self.log, "received new VMM runtime state from sled agent";
            "propolis_id" => %propolis_id, "vmm_state" => %new_runtime_state);
        // Every failure is a 500, an unknown VMM too: omicron's write of an id it
        // does not have is a database NotFound, which its report path turns
        // into an internal error (`ErrorHandler::Server`), and which a sled
        // agent sends again.
        match self.process_vmm_update(propolis_id, new_runtime_state) {
            Ok(_) => Ok(()),
            Err(e) => Err(NexusApiError::UnexpectedResponse {
                operation: "cpapi_instances_put",
                status: 500,
                message: e.to_string(),
            }),
        }
    }
}

#[async_trait]
impl<S: SledAgentApi + 'static> WatcherDatastore for NexusStub<S> {
    async fn vmm_list_for_watcher(&self) -> Result<Vec<WatchedVmm>, DatastoreError> {
        let bugs = self.bugs();
        let db = self.db();
        let mut rows: Vec<WatchedVmm> =
            db.vmms
                .values()
                .filter(|v| !v.deleted)
                .filter_map(|v| {
                    let runtime = match v.state {
                        DbVmmState::Creating if bugs.list_creating_for_watcher => VmmRuntimeState {
                            state: VmmState::Starting,
                            gen: v.gen,
                            time_updated: v.time_state_updated,
                        },
                        _ => v.runtime()?,
                    };
                    (runtime.state != VmmState::Destroyed || bugs.list_terminal_for_watcher)
                        .then_some(WatchedVmm {
                            instance_id: v.instance_id,
                            propolis_id: v.id,
                            sled_id: v.sled_id,
                            runtime,
                        })
                })
                .collect();
        rows.sort_by_key(|w| (w.sled_id, w.propolis_id));
        Ok(rows)
    }

    async fn vmm_update_runtime(
        &self,
        propolis_id: PropolisUuid,
        new_state: SledVmmState,
    ) -> Result<VmmWriteOutcome, DatastoreError> {
        // The watcher runs the update step itself and waits for it, as omicron's
        // does with the saga `process_vmm_update` hands it.
        let (updated, update) =
            self.write_vmm(propolis_id, new_state.vmm_state).map_err(|e| match e {
                NexusError::NoSuchVmm { propolis_id } => DatastoreError::NoSuchVmm { propolis_id },
                other => DatastoreError::Unavailable {
                    operation: "vmm_update_runtime",
                    source: Box::new(other),
                },
            })?;
        Ok(VmmWriteOutcome { updated, update_needed: update.is_some() })
    }

    async fn run_instance_update(&self, instance_id: InstanceUuid) -> Result<(), DatastoreError> {
        NexusStub::instance_update(self, instance_id).map(|_| ()).map_err(|e| {
            DatastoreError::Unavailable { operation: "instance_update", source: Box::new(e) }
        })
    }
}
