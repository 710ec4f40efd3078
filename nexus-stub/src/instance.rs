//! The user operations: create, start, stop and reboot an instance, and attach and
//! detach a disk (omicron's `app/instance.rs` and its disk calls).

use std::collections::BTreeMap;

use sled_agent_api::{
    DiskUuid, Generation, InstanceEnsureBody, InstanceUuid, PropolisUuid, SledAgentApi,
    SledAgentError, SledUuid, VmmPutStateBody, VmmRuntimeState, VmmState, VmmStateRequested,
};
use slog::{info, warn};

use crate::db::{
    DbVmmState, DiskState, DiskView, ExternalState, InstanceChange, InstanceRecord, InstanceState,
    InstanceView, IntendedState, Reservation, VmmRecord,
};
use crate::{NexusError, NexusStub, Started};

/// What a disk operation does to a disk, given where it is.
enum Change {
    /// Already as asked: nothing to do.
    Keep,
    /// On another instance (this one).
    Refuse(InstanceUuid),
    /// Move to this state, if the instance allows.
    To(DiskState),
}

/// Why an instance is being started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartReason {
    User,
    AutoRestart,
}

impl<S: SledAgentApi + 'static> NexusStub<S> {
    pub fn disk_create(&self, name: &str) -> Result<DiskView, NexusError> {
        let mut db = self.db();
        if db.disks.values().any(|(n, _)| n == name) {
            return Err(NexusError::NameInUse { name: name.to_string() });
        }
        let id = DiskUuid::from_u128(Self::mint(&mut db, 3));
        db.disks.insert(id, (name.to_string(), DiskState::Detached));
        Ok(DiskView { id, name: name.to_string(), state: DiskState::Detached })
    }

    pub async fn instance_create(
        &self,
        name: &str,
        start: bool,
    ) -> Result<InstanceView, NexusError> {
        let instance_id = {
            let mut db = self.db();
            if db.instances.values().any(|i| i.name == name) {
                return Err(NexusError::NameInUse { name: name.to_string() });
            }
            let id = InstanceUuid::from_u128(Self::mint(&mut db, 1));
            db.instances.insert(
                id,
                InstanceRecord {
                    id,
                    name: name.to_string(),
                    state: InstanceState::NoVmm,
                    propolis_id: None,
                    gen: Generation::new(),
                    intended: IntendedState::Stopped,
                    time_last_auto_restarted: None,
                    auto_restarts: 0,
                },
            );
            id
        };
        if start {
            let mut began = false;
            let r = self.start_saga(instance_id, StartReason::User, &mut began).await;
            self.logged(instance_id, began, r)
        } else {
            self.instance(instance_id)
        }
    }

    pub async fn instance_start(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<InstanceView, NexusError> {
        let mut began = false;
        let r = self.user_start(instance_id, &mut began).await;
        self.logged(instance_id, began, r)
    }

    /// omicron's `instance_start`: the request is checked, then the start saga
    /// runs, its first node as the saga executor (`TaskSpawner::start_node`) lets
    /// it. `began` is set once the start is logged as requested.
    async fn user_start(
        &self,
        instance_id: InstanceUuid,
        began: &mut bool,
    ) -> Result<InstanceView, NexusError> {
        if let Some(view) = self.start_allowed(instance_id)? {
            return Ok(view);
        }
        let node = Box::pin(async move { self.reserve_and_link(instance_id, StartReason::User) });
        let started = self.spawner.start_node(instance_id, node).await?;
        *began = true;
        self.finish_start(instance_id, started, StartReason::User).await
    }

    /// A start saga run straight through: a create's, and auto-restart's, which,
    /// as omicron's reincarnation task, asks no `instance_start_allowed` (the saga's
    /// own checks decide). `began` is set once the start is logged as requested.
    pub(crate) async fn start_saga(
        &self,
        instance_id: InstanceUuid,
        reason: StartReason,
        began: &mut bool,
    ) -> Result<InstanceView, NexusError> {
        let started = self.reserve_and_link(instance_id, reason)?;
        *began = true;
        self.finish_start(instance_id, started, reason).await
    }

    /// omicron's `instance_start`, up to its saga: the intended state becomes
    /// Running, then `instance_start_allowed` decides. `None` if a start saga is
    /// to run; the instance, if it is already going (nothing is started, so no
    /// request is logged: a stop still under way, its Running seen before its
    /// Stopping, ends the instance stopped, as in omicron); an error if it cannot
    /// start now, the intent Running all the same.
    fn start_allowed(&self, instance_id: InstanceUuid) -> Result<Option<InstanceView>, NexusError> {
        let mut db = self.db();
        let inst =
            db.instances.get_mut(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
        inst.intended = IntendedState::Running;
        db.log(instance_id, InstanceChange::StartIntended);
        let inst =
            db.instances.get(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
        if inst.state != InstanceState::Vmm {
            return Ok(None);
        }
        let state = db.external_state(inst);
        let going = matches!(
            state,
            ExternalState::Starting | ExternalState::Running | ExternalState::Rebooting
        );
        if !going {
            return Err(NexusError::InstanceNotStartable { instance_id, state });
        }
        Ok(Some(db.instance_view(inst)))
    }

    /// The start saga's database nodes, as one transaction here:
    /// `sis_alloc_server` reserves the sled's resources, `sis_create_vmm_record`
    /// inserts the VMM (Creating, gen 1), and `sis_move_to_starting` re-reads the
    /// instance and links the VMM, unless another VMM is active, when the saga
    /// unwinds (the VMM row SagaUnwound, the reservation deleted).
    fn reserve_and_link(
        &self,
        instance_id: InstanceUuid,
        reason: StartReason,
    ) -> Result<Started, NexusError> {
        let auto_restart = reason == StartReason::AutoRestart;
        let mut db = self.db();
        if !db.instances.contains_key(&instance_id) {
            return Err(NexusError::NoSuchInstance { instance_id });
        }
        // Since #10479 a second reservation for one instance is a unique
        // violation: the start fails before it makes anything.
        if db.reserved(instance_id) && !self.bugs().duplicate_reservations {
            return Err(NexusError::InstanceAlreadyStarting { instance_id });
        }
        let sled_id = *self.sleds.keys().next().ok_or(NexusError::NoSleds)?;
        let propolis_id = PropolisUuid::from_u128(Self::mint(&mut db, 2));
        db.reserve(propolis_id, Reservation { instance_id, sled_id });
        let now = self.clock.now();
        db.vmms.insert(
            propolis_id,
            VmmRecord {
                id: propolis_id,
                instance_id,
                sled_id,
                state: DbVmmState::Creating,
                gen: Generation::new(),
                time_state_updated: now,
                deleted: false,
            },
        );
        let db = &mut *db;
        let inst =
            db.instances.get_mut(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
        // An active VMM that is SagaUnwound may be replaced; any other wins.
        let taken = inst.propolis_id.is_some_and(|active| {
            db.vmms.get(&active).is_none_or(|v| v.state != DbVmmState::SagaUnwound)
        });
        if taken {
            // Never linked, so the instance is left as the winner made it.
            db.unwind_start(instance_id, propolis_id, auto_restart);
            info!(self.log, "start lost to another; unwound";
                "instance_id" => %instance_id, "propolis_id" => %propolis_id);
            return Err(NexusError::InstanceChangedState { instance_id });
        }
        inst.state = InstanceState::Vmm;
        inst.propolis_id = Some(propolis_id);
        inst.gen = inst.gen.next();
        if auto_restart {
            inst.auto_restarts += 1;
            inst.time_last_auto_restarted = Some(now);
        } else {
            // omicron's reincarnation runs the start saga itself and leaves
            // the intended state as the user last set it.
            inst.intended = IntendedState::Running;
        }
        db.log(instance_id, InstanceChange::StartRequested { auto_restart });
        info!(self.log, "starting instance";
            "instance_id" => %instance_id, "propolis_id" => %propolis_id, "reason" => ?reason);
        Ok((propolis_id, sled_id))
    }

    /// The rest of a start saga, once its VMM is linked: register it with its sled
    /// agent, then ask it to run; a failure unwinds the start.
    async fn finish_start(
        &self,
        instance_id: InstanceUuid,
        (propolis_id, sled_id): Started,
        reason: StartReason,
    ) -> Result<InstanceView, NexusError> {
        let sled = self.sleds.get(&sled_id).ok_or(NexusError::NoSleds)?;

        // Register at the row's gen + 1, as omicron's instance_ensure_registered does.
        let body = InstanceEnsureBody {
            instance_id,
            vmm_runtime: VmmRuntimeState {
                state: VmmState::Starting,
                gen: Generation::new().next(),
                time_updated: self.clock.now(),
            },
        };
        match sled.vmm_register(propolis_id, body).await {
            Ok(state) => {
                self.process_vmm_update(propolis_id, state)?;
            }
            Err(source) => {
                self.unwind_start(instance_id, propolis_id, reason);
                return Err(NexusError::SledAgent {
                    operation: "vmm_register",
                    propolis_id,
                    source,
                });
            }
        }
        // omicron's `sis_ensure_running`: any error, "gone" included, unwinds the
        // start (the registration's undo unregisters the VMM); nothing is marked
        // Failed on this path.
        let body = VmmPutStateBody { state: VmmStateRequested::Running };
        match sled.vmm_put_state(propolis_id, body).await {
            Ok(resp) => {
                if let Some(state) = resp.updated_runtime {
                    self.process_vmm_update(propolis_id, state)?;
                }
            }
            Err(source) => {
                warn!(self.log, "start failed at ensure-running; unwinding";
                    "instance_id" => %instance_id, "propolis_id" => %propolis_id,
                    "error" => %source);
                // The undo ignores what unregistering answers, as omicron's does.
                let _ = sled.vmm_unregister(propolis_id).await;
                self.unwind_start(instance_id, propolis_id, reason);
                return Err(NexusError::SledAgent {
                    operation: "vmm_put_state",
                    propolis_id,
                    source,
                });
            }
        }
        self.instance(instance_id)
    }

    /// omicron's `instance_request_state` for a stop or reboot: asks the sled agent
    /// and writes what it answers. A VMM the sled agent no longer has is marked
    /// Failed at the generation read before the call + 1 (`mark_vmm_failed`);
    /// every error is returned, and nothing else is written.
    async fn request_vmm_state(
        &self,
        sled: &S,
        (propolis_id, read_gen): (PropolisUuid, Generation),
        state: VmmStateRequested,
    ) -> Result<(), NexusError> {
        {
            let mut m = self.requests_in_flight();
            let gens = m.entry(propolis_id).or_default();
            gens.push(read_gen);
            gens.sort_unstable();
            let mut latest = self.latest_request.lock().unwrap_or_else(|p| p.into_inner());
            latest.insert(propolis_id, read_gen);
        }
        let answer = sled.vmm_put_state(propolis_id, VmmPutStateBody { state }).await;
        {
            let mut m = self.requests_in_flight();
            if let Some(gens) = m.get_mut(&propolis_id) {
                if let Some(i) = gens.iter().position(|g| *g == read_gen) {
                    gens.remove(i);
                }
                if gens.is_empty() {
                    m.remove(&propolis_id);
                }
            }
        }
        match answer {
            Ok(resp) => {
                if let Some(state) = resp.updated_runtime {
                    self.process_vmm_update(propolis_id, state)?;
                }
                Ok(())
            }
            Err(source) => {
                if source.vmm_gone() || (self.bugs().unhealthy_marks_failed && unhealthy(&source)) {
                    // Its own failure is logged; the user hears of the sled agent's.
                    if let Err(e) = self.mark_vmm_failed(propolis_id, read_gen) {
                        warn!(self.log, "marking VMM failed failed";
                            "propolis_id" => %propolis_id, "error" => %e);
                    }
                }
                Err(NexusError::SledAgent { operation: "vmm_put_state", propolis_id, source })
            }
        }
    }

    /// A start that failed after its link, undone (`Db::unwind_start`).
    fn unwind_start(
        &self,
        instance_id: InstanceUuid,
        propolis_id: PropolisUuid,
        reason: StartReason,
    ) {
        self.db().unwind_start(instance_id, propolis_id, reason == StartReason::AutoRestart);
    }

    /// Logs that a user's request, if it got as far as logging itself, returned;
    /// passes the result on.
    fn logged<T>(
        &self,
        instance_id: InstanceUuid,
        began: bool,
        r: Result<T, NexusError>,
    ) -> Result<T, NexusError> {
        if began {
            self.db().log(instance_id, InstanceChange::RequestEnded { ok: r.is_ok() });
        }
        r
    }

    pub async fn instance_stop(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<InstanceView, NexusError> {
        let mut began = false;
        let r = self.stop(instance_id, &mut began).await;
        self.logged(instance_id, began, r)
    }

    async fn stop(
        &self,
        instance_id: InstanceUuid,
        began: &mut bool,
    ) -> Result<InstanceView, NexusError> {
        let target = {
            let mut db = self.db();
            let db = &mut *db;
            if !db.instances.contains_key(&instance_id) {
                return Err(NexusError::NoSuchInstance { instance_id });
            }
            db.log(instance_id, InstanceChange::StopRequested);
            *began = true;
            let inst = db
                .instances
                .get_mut(&instance_id)
                .ok_or(NexusError::NoSuchInstance { instance_id })?;
            inst.intended = IntendedState::Stopped;
            match Self::active_vmm(&db.vmms, inst) {
                Some(target) => Some(target),
                // Stopping a Failed instance (or one whose link is already gone)
                // just puts it at rest.
                None => {
                    if inst.state != InstanceState::NoVmm {
                        inst.state = InstanceState::NoVmm;
                        inst.propolis_id = None;
                        inst.gen = inst.gen.next();
                        db.log(instance_id, InstanceChange::Stopped);
                    }
                    None
                }
            }
        };
        let Some((vmm, sled_id)) = target else { return self.instance(instance_id) };
        info!(self.log, "stopping instance"; "instance_id" => %instance_id, "propolis_id" => %vmm.0);
        let sled = self.sleds.get(&sled_id).ok_or(NexusError::NoSleds)?;
        self.request_vmm_state(sled, vmm, VmmStateRequested::Stopped).await?;
        self.instance(instance_id)
    }

    /// The active VMM a stop or reboot goes to, as omicron's
    /// `select_runtime_change_action` sends it: any linked VMM but an unwound one,
    /// with the generation read now (the basis of a Failed write if it is gone).
    fn active_vmm(
        vmms: &BTreeMap<PropolisUuid, VmmRecord>,
        inst: &InstanceRecord,
    ) -> Option<((PropolisUuid, Generation), SledUuid)> {
        let (InstanceState::Vmm, Some(propolis_id)) = (inst.state, inst.propolis_id) else {
            return None;
        };
        let vmm = vmms.get(&propolis_id)?;
        (vmm.state != DbVmmState::SagaUnwound).then_some(((propolis_id, vmm.gen), vmm.sled_id))
    }

    /// omicron's `instance_reboot`: the intended state becomes Running, and the
    /// reboot goes to the sled agent of any active VMM; with none, it is refused.
    pub async fn instance_reboot(
        &self,
        instance_id: InstanceUuid,
    ) -> Result<InstanceView, NexusError> {
        let mut began = false;
        let r = self.reboot(instance_id, &mut began).await;
        self.logged(instance_id, began, r)
    }

    async fn reboot(
        &self,
        instance_id: InstanceUuid,
        began: &mut bool,
    ) -> Result<InstanceView, NexusError> {
        let (vmm, sled_id) = {
            let mut db = self.db();
            let db = &mut *db;
            let inst =
                db.instances.get(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
            let state = db.external_state(inst);
            let target = Self::active_vmm(&db.vmms, inst)
                .ok_or(NexusError::InstanceNotRebootable { instance_id, state })?;
            db.log(instance_id, InstanceChange::RebootRequested);
            *began = true;
            if let Some(inst) = db.instances.get_mut(&instance_id) {
                inst.intended = IntendedState::Running;
            }
            target
        };
        info!(self.log, "rebooting instance"; "instance_id" => %instance_id, "propolis_id" => %vmm.0);
        let sled = self.sleds.get(&sled_id).ok_or(NexusError::NoSleds)?;
        self.request_vmm_state(sled, vmm, VmmStateRequested::Reboot).await?;
        self.instance(instance_id)
    }

    pub fn disk_attach(
        &self,
        disk_id: DiskUuid,
        instance_id: InstanceUuid,
    ) -> Result<DiskView, NexusError> {
        self.disk_change(disk_id, instance_id, "attach a disk", |state| match state {
            DiskState::Attached(to) if to == instance_id => Change::Keep,
            DiskState::Attached(attached_to) => Change::Refuse(attached_to),
            DiskState::Detached => Change::To(DiskState::Attached(instance_id)),
        })
    }

    pub fn disk_detach(
        &self,
        disk_id: DiskUuid,
        instance_id: InstanceUuid,
    ) -> Result<DiskView, NexusError> {
        self.disk_change(disk_id, instance_id, "detach a disk", |state| match state {
            DiskState::Detached => Change::Keep,
            DiskState::Attached(to) if to != instance_id => Change::Refuse(to),
            DiskState::Attached(_) => Change::To(DiskState::Detached),
        })
    }

    /// Attach and detach: idempotent where the disk already is where asked; refused
    /// if it is on another instance; otherwise allowed only while the instance has
    /// no VMM (omicron also allows Creating, which this model has no use for).
    fn disk_change(
        &self,
        disk_id: DiskUuid,
        instance_id: InstanceUuid,
        operation: &'static str,
        decide: impl FnOnce(DiskState) -> Change,
    ) -> Result<DiskView, NexusError> {
        let mut db = self.db();
        let inst =
            db.instances.get(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
        let external = db.external_state(inst);
        let no_vmm = inst.state == InstanceState::NoVmm;
        let (name, state) = db.disks.get_mut(&disk_id).ok_or(NexusError::NoSuchDisk { disk_id })?;
        match decide(*state) {
            Change::Keep => {}
            Change::Refuse(attached_to) => {
                return Err(NexusError::DiskAttachedToAnother { disk_id, attached_to })
            }
            Change::To(_) if !no_vmm => {
                return Err(NexusError::InstanceNotStopped {
                    instance_id,
                    state: external,
                    operation,
                })
            }
            Change::To(new) => *state = new,
        }
        Ok(DiskView { id: disk_id, name: name.clone(), state: *state })
    }
}

/// What omicron before #6455 took for an unhealthy sled agent: no answer at all,
/// or any answer but a client error.
fn unhealthy(e: &SledAgentError) -> bool {
    match e {
        SledAgentError::Communication { .. } => true,
        SledAgentError::UnexpectedResponse { status, .. } => !(400..500).contains(status),
        SledAgentError::NoSuchVmm { .. }
        | SledAgentError::Terminating { .. }
        | SledAgentError::InvalidTransition { .. }
        | SledAgentError::InvalidRegistration { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only what omicron before #6455 took for an unhealthy sled agent: no answer,
    /// or an answer that is not a client error.
    #[test]
    fn unhealthy_is_no_answer_or_a_server_error() {
        let vmm = PropolisUuid::from_u128(1);
        let status = |status| SledAgentError::UnexpectedResponse {
            operation: "vmm_put_state",
            status,
            message: String::new(),
        };
        let refused =
            SledAgentError::Communication { operation: "vmm_put_state", source: "x".into() };
        let transition = SledAgentError::InvalidTransition {
            propolis_id: vmm,
            current: VmmState::Stopping,
            resting: VmmState::Destroyed,
            requested: VmmStateRequested::Running,
        };
        let registration =
            SledAgentError::InvalidRegistration { propolis_id: vmm, reason: "x".into() };
        for (e, want) in [
            (refused, true),
            (status(500), true),
            (status(503), true),
            (status(409), false),
            (status(404), false),
            (SledAgentError::NoSuchVmm { propolis_id: vmm }, false),
            (SledAgentError::Terminating { propolis_id: vmm }, false),
            (transition, false),
            (registration, false),
        ] {
            assert_eq!(unhealthy(&e), want, "{e:?}");
        }
    }
}
