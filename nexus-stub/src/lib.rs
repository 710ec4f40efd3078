//! `NexusStub`: the parts of Nexus that #7282 runs through.
//!
//! Instance, VMM and disk records; the generation-checked VMM write that every
//! report goes through; the user operations of the disk-move test (create, start,
//! stop, disk attach and detach); the instance update step; and auto-restart.
//! Sled agents are reached only through `SledAgentApi`.
//!
//! The one rule everything rests on: a VMM write applies iff its generation is
//! greater than the stored one and the row is not deleted. A stale write is not an
//! error: it returns "not updated" and triggers nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::Hasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use async_trait::async_trait;
use chrono::TimeDelta;
use sled_agent_api::{
    Clock, DiskUuid, Generation, InstanceEnsureBody, InstanceUuid, NexusApiError, NexusInternalApi,
    PropolisUuid, SledAgentApi, SledAgentError, SledUuid, SledVmmState, VmmPutStateBody,
    VmmRuntimeState, VmmState, VmmStateRequested,
};
use slog::{debug, info, o, warn, Logger};
use watcher::{DatastoreError, VmmWriteOutcome, WatchedVmm, WatcherDatastore};

mod db;
pub mod http;

use db::Db;
pub use db::{
    DbVmmState, DiskState, DiskView, ExternalState, InstanceChange, InstanceEvent, InstanceRecord,
    InstanceState, InstanceView, IntendedState, VmmRecord, VmmWrite,
};

/// Which Failed instances auto-restart may start again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RestartPolicy {
    /// omicron today (#8053): only instances whose intended state is Running.
    #[default]
    Current,
    /// omicron when #7282 was filed: any Failed instance, even one a user stopped.
    Policy2024,
}

impl RestartPolicy {
    pub const fn label(self) -> &'static str {
        match self {
            RestartPolicy::Current => "current",
            RestartPolicy::Policy2024 => "2024",
        }
    }
}

/// Seeded bugs, for checking that the explorer catches them. All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NexusFaults {
    /// Apply every VMM write, whatever its generation.
    pub skip_generation_check: bool,
    /// Let the watcher's listing include Destroyed VMMs.
    pub list_terminal_for_watcher: bool,
    /// A user operation whose sled agent says the VMM is gone marks it Failed at
    /// the generation stored *then* + 1, not the one the operation read + 1, so
    /// the Failed write lands on top of a terminal state recorded meanwhile.
    pub mark_failed_at_stored_gen: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NexusConfig {
    pub restart_policy: RestartPolicy,
    /// How long after an auto-restart an instance may be restarted again.
    pub restart_cooldown: TimeDelta,
    pub faults: NexusFaults,
}

impl Default for NexusConfig {
    fn default() -> Self {
        NexusConfig {
            restart_policy: RestartPolicy::Current,
            restart_cooldown: TimeDelta::minutes(5),
            faults: NexusFaults::default(),
        }
    }
}

/// The instance update step as a task: Nexus starts it and does not wait for it.
pub type UpdateTask = Pin<Box<dyn Future<Output = Result<UpdateOutcome, NexusError>> + Send>>;

/// Runs instance update steps in the background, as omicron's saga executor does.
pub trait TaskSpawner: Send + Sync + std::fmt::Debug {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask);
}

/// Runs each update step as a tokio task.
#[derive(Debug)]
pub struct TokioSpawner {
    log: Logger,
    runtime: tokio::runtime::Handle,
    /// Update steps started and not yet finished.
    in_flight: Arc<AtomicUsize>,
}

impl TokioSpawner {
    /// Fails outside a tokio runtime.
    pub fn new(log: &Logger) -> Result<TokioSpawner, NexusError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NexusError::NoRuntime)?;
        Ok(TokioSpawner {
            log: log.new(o!("component" => "TokioSpawner")),
            runtime,
            in_flight: Arc::default(),
        })
    }

    /// How many update steps are still running, so a caller can wait for them.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl TaskSpawner for TokioSpawner {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask) {
        let log = self.log.clone();
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::SeqCst);
        self.runtime.spawn(async move {
            if let Err(e) = task.await {
                warn!(log, "instance update failed"; "instance_id" => %instance_id, "error" => %e);
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Keeps update steps until the owner runs them; for tests and for harnesses that
/// decide when each one runs.
#[derive(Debug, Default)]
pub struct DeferredSpawner {
    queued: Mutex<Vec<(InstanceUuid, DebugTask)>>,
}

struct DebugTask(UpdateTask);

impl std::fmt::Debug for DebugTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpdateTask")
    }
}

impl DeferredSpawner {
    /// The update steps started since the last call, in the order they started.
    pub fn take(&self) -> Vec<(InstanceUuid, UpdateTask)> {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            return Vec::new();
        }
        q.drain(..).map(|(id, t)| (id, t.0)).collect()
    }
}

impl TaskSpawner for DeferredSpawner {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask) {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).push((instance_id, DebugTask(task)));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NexusError {
    #[error("no instance {instance_id}")]
    NoSuchInstance { instance_id: InstanceUuid },

    #[error("no disk {disk_id}")]
    NoSuchDisk { disk_id: DiskUuid },

    #[error("no VMM record {propolis_id}")]
    NoSuchVmm { propolis_id: PropolisUuid },

    #[error("name {name:?} is already in use")]
    NameInUse { name: String },

    #[error("no sled to place the instance on")]
    NoSleds,

    #[error("instance {instance_id} is {state}; it must be stopped to {operation}")]
    InstanceNotStopped { instance_id: InstanceUuid, state: ExternalState, operation: &'static str },

    #[error("instance {instance_id} cannot be started while {state}")]
    InstanceNotStartable { instance_id: InstanceUuid, state: ExternalState },

    #[error("instance {instance_id} cannot be rebooted while {state}")]
    InstanceNotRebootable { instance_id: InstanceUuid, state: ExternalState },

    #[error("disk {disk_id} is attached to another instance ({attached_to})")]
    DiskAttachedToAnother { disk_id: DiskUuid, attached_to: InstanceUuid },

    #[error("sled agent call {operation} for VMM {propolis_id} failed")]
    SledAgent {
        operation: &'static str,
        propolis_id: PropolisUuid,
        #[source]
        source: SledAgentError,
    },

    #[error("background tasks need a tokio runtime")]
    NoRuntime,
}

/// What an instance update step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// The active VMM was Destroyed: the instance has no VMM and shows Stopped.
    Stopped { propolis_id: PropolisUuid },
    /// The active VMM Failed: the instance is Failed.
    Failed { propolis_id: PropolisUuid },
    /// The active VMM is not terminal (or there is none): nothing to do.
    NothingToDo,
}

/// What one auto-restart pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RestartCounts {
    pub found: usize,
    pub started: usize,
    pub errors: usize,
}

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
enum StartReason {
    User,
    AutoRestart,
}

#[derive(Debug)]
pub struct NexusStub<S> {
    log: Logger,
    config: NexusConfig,
    sleds: BTreeMap<SledUuid, S>,
    clock: Arc<dyn Clock>,
    spawner: Arc<dyn TaskSpawner>,
    db: Mutex<Db>,
    /// Stops and reboots waiting on the sled agent, by VMM: the generation each
    /// read, which a 404 turns into Failed at + 1. It is what those requests keep
    /// across the call, so it is state (hashed), sorted, one entry a request.
    requests: Mutex<BTreeMap<PropolisUuid, Vec<Generation>>>,
    this: Weak<Self>,
}

impl<S: SledAgentApi + 'static> NexusStub<S> {
    pub fn new(
        log: &Logger,
        config: NexusConfig,
        sleds: BTreeMap<SledUuid, S>,
        clock: Arc<dyn Clock>,
        spawner: Arc<dyn TaskSpawner>,
    ) -> Arc<Self> {
        let log = log.new(o!("component" => "NexusStub"));
        Arc::new_cyclic(|this| NexusStub {
            log,
            config,
            sleds,
            clock,
            spawner,
            db: Mutex::new(Db::default()),
            requests: Mutex::default(),
            this: this.clone(),
        })
    }

    pub fn config(&self) -> NexusConfig {
        self.config
    }

    // Never held across an await. A poisoned lock means a panic inside one of this
    // file's short critical sections; the records are still whole, so keep serving.
    fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ids come from a counter (kind in the top bits), so runs are reproducible.
    fn mint(db: &mut Db, kind: u128) -> u128 {
        db.next_id += 1;
        (kind << 96) | u128::from(db.next_id)
    }

    // ---- reads ----

    pub fn instance(&self, instance_id: InstanceUuid) -> Result<InstanceView, NexusError> {
        let db = self.db();
        let inst =
            db.instances.get(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
        Ok(db.instance_view(inst))
    }

    /// The user-visible state and auto-restart count, without building a view.
    pub fn instance_status(&self, instance_id: InstanceUuid) -> Option<(ExternalState, u32)> {
        let db = self.db();
        db.instances.get(&instance_id).map(|i| (db.external_state(i), i.auto_restarts))
    }

    /// The state of the instance's active VMM record, if it has one; read at every
    /// scheduling step by a harness, so it allocates nothing.
    pub fn active_vmm_state(&self, instance_id: InstanceUuid) -> Option<DbVmmState> {
        let db = self.db();
        let vmm = db.instances.get(&instance_id)?.propolis_id?;
        db.vmms.get(&vmm).map(|v| v.state)
    }

    pub fn instance_record(&self, instance_id: InstanceUuid) -> Option<InstanceRecord> {
        self.db().instances.get(&instance_id).cloned()
    }

    pub fn instances(&self) -> Vec<InstanceView> {
        let db = self.db();
        db.instances.values().map(|i| db.instance_view(i)).collect()
    }

    pub fn disk(&self, disk_id: DiskUuid) -> Result<DiskView, NexusError> {
        let db = self.db();
        let (name, state) = db.disks.get(&disk_id).ok_or(NexusError::NoSuchDisk { disk_id })?;
        Ok(DiskView { id: disk_id, name: name.clone(), state: *state })
    }

    pub fn vmm(&self, propolis_id: PropolisUuid) -> Option<VmmRecord> {
        self.db().vmms.get(&propolis_id).copied()
    }

    /// Every VMM row, deleted or not, in id order.
    pub fn vmms(&self) -> Vec<VmmRecord> {
        self.db().vmms.values().copied().collect()
    }

    /// Every VMM write attempted so far, applied or not, in order.
    pub fn vmm_writes(&self) -> Vec<VmmWrite> {
        self.db().writes.clone()
    }

    pub fn vmm_writes_len(&self) -> usize {
        self.db().writes.len()
    }

    /// Visits the writes from index `from` on (so an observer can poll cheaply);
    /// returns the log's length.
    pub fn visit_writes_since(&self, from: usize, mut f: impl FnMut(&VmmWrite)) -> usize {
        let db = self.db();
        db.writes.get(from..).unwrap_or_default().iter().for_each(&mut f);
        db.writes.len()
    }

    /// Every instance change so far, in order.
    pub fn instance_log(&self) -> Vec<InstanceEvent> {
        self.db().instance_log.clone()
    }

    /// Visits the instance changes from index `from` on; returns the log's length.
    pub fn visit_instance_log_since(
        &self,
        from: usize,
        mut f: impl FnMut(&InstanceEvent),
    ) -> usize {
        let db = self.db();
        db.instance_log.get(from..).unwrap_or_default().iter().for_each(&mut f);
        db.instance_log.len()
    }

    /// Feeds everything that decides Nexus's future behaviour into `h`.
    pub fn hash_state<H: Hasher>(&self, h: &mut H) {
        self.db().hash_state(h, self.clock.peek(), self.config.restart_cooldown);
        std::hash::Hash::hash(&*self.requests_in_flight(), h);
    }

    fn requests_in_flight(&self) -> MutexGuard<'_, BTreeMap<PropolisUuid, Vec<Generation>>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- the generation-checked write ----

    /// Applies `new` iff its generation is newer and the row is live. Returns whether
    /// it applied and whether the instance update step must now run.
    fn write_vmm(
        &self,
        propolis_id: PropolisUuid,
        new: VmmRuntimeState,
    ) -> Result<(bool, Option<InstanceUuid>), NexusError> {
        let mut db = self.db();
        let vmm = db.vmms.get_mut(&propolis_id).ok_or(NexusError::NoSuchVmm { propolis_id })?;
        let prev_gen = vmm.gen;
        let newer = new.gen > prev_gen || self.config.faults.skip_generation_check;
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

    fn start_update(&self, instance_id: InstanceUuid) {
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
    fn mark_vmm_failed(
        &self,
        propolis_id: PropolisUuid,
        read_gen: Generation,
    ) -> Result<(), NexusError> {
        let stored = self.vmm(propolis_id).ok_or(NexusError::NoSuchVmm { propolis_id })?;
        let basis =
            if self.config.faults.mark_failed_at_stored_gen { stored.gen } else { read_gen };
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
        vmm.deleted = true;
        info!(self.log, "instance update: unlinked terminal VMM";
            "instance_id" => %instance_id, "propolis_id" => %propolis_id,
            "vmm_state" => %vmm.state, "instance_gen" => inst.gen.as_u64());
        db.log(
            instance_id,
            match outcome {
                UpdateOutcome::Failed { .. } => InstanceChange::Failed,
                _ => InstanceChange::Stopped,
            },
        );
        Ok(outcome)
    }

    // ---- user operations ----

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
            let r = self.start(instance_id, StartReason::User, &mut began).await;
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
        let r = self.start(instance_id, StartReason::User, &mut began).await;
        self.logged(instance_id, began, r)
    }

    /// `began` is set once the start is logged as requested.
    async fn start(
        &self,
        instance_id: InstanceUuid,
        reason: StartReason,
        began: &mut bool,
    ) -> Result<InstanceView, NexusError> {
        // Insert the VMM row (Creating, gen 1) and link it, under one lock.
        let (propolis_id, sled_id) = {
            let mut db = self.db();
            let inst =
                db.instances.get(&instance_id).ok_or(NexusError::NoSuchInstance { instance_id })?;
            match inst.state {
                InstanceState::NoVmm | InstanceState::Failed => {}
                InstanceState::Vmm => {
                    let state = db.external_state(inst);
                    let view = db.instance_view(inst);
                    // omicron's `instance_start_allowed`: already going, nothing to do
                    // but record that the user wants it running.
                    let going = matches!(
                        state,
                        ExternalState::Starting | ExternalState::Running | ExternalState::Rebooting
                    );
                    if !going {
                        return Err(NexusError::InstanceNotStartable { instance_id, state });
                    }
                    // Nothing is started, so nothing is logged: a stop still under
                    // way (its Running seen before its Stopping) ends the instance
                    // stopped, as in omicron.
                    if reason == StartReason::User {
                        if let Some(inst) = db.instances.get_mut(&instance_id) {
                            inst.intended = IntendedState::Running;
                        }
                    }
                    return Ok(view);
                }
            }
            let sled_id = *self.sleds.keys().next().ok_or(NexusError::NoSleds)?;
            let propolis_id = PropolisUuid::from_u128(Self::mint(&mut db, 2));
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
            let inst = db
                .instances
                .get_mut(&instance_id)
                .ok_or(NexusError::NoSuchInstance { instance_id })?;
            inst.state = InstanceState::Vmm;
            inst.propolis_id = Some(propolis_id);
            inst.gen = inst.gen.next();
            inst.intended = IntendedState::Running;
            let auto_restart = reason == StartReason::AutoRestart;
            if auto_restart {
                inst.auto_restarts += 1;
                inst.time_last_auto_restarted = Some(now);
            }
            db.log(instance_id, InstanceChange::StartRequested { auto_restart });
            *began = true;
            (propolis_id, sled_id)
        };
        info!(self.log, "starting instance";
            "instance_id" => %instance_id, "propolis_id" => %propolis_id, "reason" => ?reason);
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
                self.unwind_start(instance_id, propolis_id);
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
                self.unwind_start(instance_id, propolis_id);
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
                if source.vmm_gone() {
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

    /// A start whose registration failed: the VMM row becomes SagaUnwound and the
    /// instance goes back to having no VMM.
    fn unwind_start(&self, instance_id: InstanceUuid, propolis_id: PropolisUuid) {
        let mut db = self.db();
        if let Some(vmm) = db.vmms.get_mut(&propolis_id) {
            vmm.state = DbVmmState::SagaUnwound;
            vmm.deleted = true;
        }
        if let Some(inst) = db.instances.get_mut(&instance_id) {
            if inst.propolis_id == Some(propolis_id) {
                inst.propolis_id = None;
                inst.state = InstanceState::NoVmm;
                inst.gen = inst.gen.next();
            }
        }
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

    // ---- auto-restart ----

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
        let r = self.start(instance_id, StartReason::AutoRestart, &mut false).await;
        if let Err(e) = &r {
            warn!(self.log, "auto-restart failed"; "instance_id" => %instance_id, "error" => %e);
        }
        r
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
        match self.process_vmm_update(propolis_id, new_runtime_state) {
            Ok(_) => Ok(()),
            Err(NexusError::NoSuchVmm { propolis_id }) => {
                Err(NexusApiError::NoSuchVmm { propolis_id })
            }
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
        let list_destroyed = self.config.faults.list_terminal_for_watcher;
        let db = self.db();
        let mut rows: Vec<WatchedVmm> = db
            .vmms
            .values()
            .filter(|v| !v.deleted)
            .filter_map(|v| {
                let runtime = v.runtime()?;
                (runtime.state != VmmState::Destroyed || list_destroyed).then_some(WatchedVmm {
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
