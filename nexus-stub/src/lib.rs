//! `NexusStub`: the parts of Nexus that #7282 runs through.
//!
//! Instance, VMM and disk records; the generation-checked VMM write that every
//! report goes through; the user operations of the disk-move test (create, start,
//! stop, disk attach and detach); the instance update step; and auto-restart.
//! Sled agents are reached only through `SledAgentApi`.
//!
//! By concern, as omicron splits them: the records and their reads here; VMM
//! writes and the update step in `vmm`; the user operations in `instance`;
//! auto-restart in `reincarnation`; where update steps run in `spawner`; the
//! watcher and auto-restart on periods, as the Nexus process runs them, in
//! `background`.
//!
//! The one rule everything rests on: a VMM write applies iff its generation is
//! greater than the stored one and the row is not deleted. A stale write is not an
//! error: it returns "not updated" and triggers nothing.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use chrono::TimeDelta;
use sled_agent_api::{
    Clock, DiskUuid, Generation, InstanceUuid, PropolisUuid, SledAgentApi, SledAgentError, SledUuid,
};
use slog::{o, Logger};

pub mod background;
#[cfg(feature = "clap")]
pub mod cli;
mod db;
pub mod http;
mod instance;
mod reincarnation;
mod spawner;
mod vmm;

use db::Db;
pub use db::{
    DbVmmState, DiskState, DiskView, ExternalState, InstanceChange, InstanceEvent, InstanceRecord,
    InstanceState, InstanceView, IntendedState, Reservation, VmmRecord, VmmWrite,
};
pub use reincarnation::RestartCounts;
pub use spawner::{DeferredSpawner, StartNode, Started, TaskSpawner, TokioSpawner, UpdateTask};

/// Which Failed instances auto-restart may start again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RestartPolicy {
    /// omicron today (#8053): only instances whose intended state is Running.
    #[default]
    Current,
    /// omicron when #7282 was filed: any Failed instance, even one a user stopped.
    #[cfg_attr(feature = "clap", value(name = "2024"))]
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

/// Seeded bugs, for checking that the explorer catches them. They can be asked
/// for only with the `seeded-bugs` feature (`NexusConfig::bugs`), so a Nexus
/// built without it has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NexusBugs {
    /// Apply every VMM write, whatever its generation.
    pub skip_generation_check: bool,
    /// Let the watcher's listing include Destroyed VMMs.
    pub list_terminal_for_watcher: bool,
    /// Let the watcher's listing include VMMs still Creating (not yet registered
    /// with their sled agent), as Starting at their row's generation: omicron
    /// before #6455 inserted a starting VMM as Starting.
    pub list_creating_for_watcher: bool,
    /// A stop or reboot whose sled agent could not be reached, timed out, or
    /// answered with a server error marks the VMM Failed, as omicron's
    /// `instance_unhealthy` did before #6455.
    pub unhealthy_marks_failed: bool,
    /// A user operation whose sled agent says the VMM is gone marks it Failed at
    /// the generation stored *then* + 1, not the one the operation read + 1, so
    /// the Failed write lands on top of a terminal state recorded meanwhile.
    pub mark_failed_at_stored_gen: bool,
    /// A start saga reserves its sled's resources even while another start of
    /// the same instance holds a reservation, as omicron did before #10479
    /// made `sled_resource_vmm` unique per (instance, state).
    pub duplicate_reservations: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NexusConfig {
    pub restart_policy: RestartPolicy,
    /// How long after an auto-restart an instance may be restarted again.
    pub restart_cooldown: TimeDelta,
    #[cfg(feature = "seeded-bugs")]
    pub bugs: NexusBugs,
}

impl Default for NexusConfig {
    fn default() -> Self {
        NexusConfig {
            restart_policy: RestartPolicy::Current,
            restart_cooldown: TimeDelta::minutes(5),
            #[cfg(feature = "seeded-bugs")]
            bugs: NexusBugs::default(),
        }
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

    /// Another start holds the instance's reservation (omicron's "Instance
    /// already starting", a unique violation on `sled_resource_vmm`).
    #[error("instance {instance_id} is already starting")]
    InstanceAlreadyStarting { instance_id: InstanceUuid },

    /// The start saga found another VMM active when it came to link its own
    /// (`sis_move_to_starting`); it unwound.
    #[error("instance {instance_id} changed state before it could be started")]
    InstanceChangedState { instance_id: InstanceUuid },

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
    /// Per VMM, the generation the latest of those requests read, as it calls the
    /// sled agent: which request keeps which generation is not in `requests`,
    /// so a harness that parks the call takes it from here (`take_request_basis`).
    latest_request: Mutex<BTreeMap<PropolisUuid, Generation>>,
    /// How many VMM rows are soft-deleted (`Db::delete_vmm`): read without
    /// the lock, so a harness sees cheaply whether a step deleted one.
    rows_deleted: Arc<AtomicUsize>,
    this: Weak<Self>,
}

impl<S: SledAgentApi + 'static> NexusStub<S> {
    /// The seeded bugs in force: none, unless built with `seeded-bugs` and asked.
    fn bugs(&self) -> NexusBugs {
        #[cfg(feature = "seeded-bugs")]
        return self.config.bugs;
        #[cfg(not(feature = "seeded-bugs"))]
        NexusBugs::default()
    }

    pub fn new(
        log: &Logger,
        config: NexusConfig,
        sleds: BTreeMap<SledUuid, S>,
        clock: Arc<dyn Clock>,
        spawner: Arc<dyn TaskSpawner>,
    ) -> Arc<Self> {
        let log = log.new(o!("component" => "NexusStub"));
        let db = Db::new();
        let rows_deleted = Arc::clone(&db.deletions);
        Arc::new_cyclic(|this| NexusStub {
            log,
            config,
            sleds,
            clock,
            spawner,
            db: Mutex::new(db),
            requests: Mutex::default(),
            latest_request: Mutex::default(),
            rows_deleted,
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

    /// Every sled reservation Nexus holds, by VMM.
    pub fn reservations(&self) -> Vec<(PropolisUuid, Reservation)> {
        self.db().reservations.iter().map(|(id, r)| (*id, *r)).collect()
    }

    /// Every VMM write attempted so far, applied or not, in order.
    pub fn vmm_writes(&self) -> Vec<VmmWrite> {
        self.db().writes.clone()
    }

    /// How many VMM rows have been soft-deleted so far.
    pub fn rows_deleted(&self) -> usize {
        self.rows_deleted.load(Ordering::Acquire)
    }

    /// The VMM rows deleted from the `from`th on, in order, with their instances.
    pub fn deleted_rows_since(&self, from: usize) -> Vec<(PropolisUuid, InstanceUuid)> {
        self.db().deleted.get(from..).unwrap_or_default().to_vec()
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

    /// Feeds everything that decides Nexus's future behaviour into `h`, for a
    /// run whose clock moves on by less than `horizon` from now to its end (see
    /// `Db::hash_state`; `TimeDelta::MAX` promises nothing).
    pub fn hash_state<H: Hasher>(&self, h: &mut H, horizon: TimeDelta) {
        self.db().hash_state(h, self.clock.peek(), self.config.restart_cooldown, horizon);
        std::hash::Hash::hash(&*self.requests_in_flight(), h);
    }

    /// The generation the stop or reboot now calling the sled agent about `vmm`
    /// read: the basis of the Failed it writes if the VMM is gone. With two such
    /// requests in flight, which holds which decides what follows, so a harness
    /// that parks the call keeps it with the call. Taken, not read: once its
    /// call has it, the entry is no one's, and a later call about the VMM that
    /// is not such a request (a start's ensure-running) must not inherit it, or
    /// two paths alike in all Nexus holds would park that call differently.
    pub fn take_request_basis(&self, vmm: PropolisUuid) -> Option<Generation> {
        self.latest_request.lock().unwrap_or_else(|p| p.into_inner()).remove(&vmm)
    }

    fn requests_in_flight(&self) -> MutexGuard<'_, BTreeMap<PropolisUuid, Vec<Generation>>> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner())
    }
}
