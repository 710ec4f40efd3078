//! Nexus's records (instances, VMMs, disks) and the views users see of them.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sled_agent_api::{
    DiskUuid, Generation, InstanceUuid, PropolisUuid, SledUuid, VmmRuntimeState, VmmState,
};

/// A VMM row's state. Nexus knows two states no sled agent reports: `Creating`
/// (inserted, not yet registered) and `SagaUnwound` (a start that was rolled back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DbVmmState {
    Creating,
    SagaUnwound,
    Reported(VmmState),
}

impl DbVmmState {
    pub fn is_terminal(self) -> bool {
        matches!(self, DbVmmState::Reported(s) if s.is_terminal())
    }
}

impl fmt::Display for DbVmmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbVmmState::Creating => f.write_str("creating"),
            DbVmmState::SagaUnwound => f.write_str("saga_unwound"),
            DbVmmState::Reported(s) => fmt::Display::fmt(s, f),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VmmRecord {
    pub id: PropolisUuid,
    pub instance_id: InstanceUuid,
    pub sled_id: SledUuid,
    pub state: DbVmmState,
    pub gen: Generation,
    pub time_state_updated: DateTime<Utc>,
    /// Soft-deleted by the update step; a deleted row takes no more writes.
    pub deleted: bool,
}

impl VmmRecord {
    /// The row as a sled-reported runtime state, if it is in one.
    pub fn runtime(&self) -> Option<VmmRuntimeState> {
        match self.state {
            DbVmmState::Reported(state) => Some(VmmRuntimeState {
                state,
                gen: self.gen,
                time_updated: self.time_state_updated,
            }),
            DbVmmState::Creating | DbVmmState::SagaUnwound => None,
        }
    }
}

/// Nexus's own instance state (omicron's `InstanceState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// No active VMM: the user sees Stopped.
    NoVmm,
    /// An active VMM; what the user sees depends on the VMM.
    Vmm,
    /// The last VMM failed; the instance may be auto-restarted.
    Failed,
}

/// What the user last asked for; decides auto-restart under the current policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IntendedState {
    Running,
    Stopped,
}

/// The instance state the external API shows (omicron's `InstanceStateComputer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExternalState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Rebooting,
    Migrating,
    Failed,
}

impl fmt::Display for ExternalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExternalState::Starting => "starting",
            ExternalState::Running => "running",
            ExternalState::Stopping => "stopping",
            ExternalState::Stopped => "stopped",
            ExternalState::Rebooting => "rebooting",
            ExternalState::Migrating => "migrating",
            ExternalState::Failed => "failed",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceRecord {
    pub id: InstanceUuid,
    pub name: String,
    pub state: InstanceState,
    pub propolis_id: Option<PropolisUuid>,
    pub gen: Generation,
    pub intended: IntendedState,
    pub time_last_auto_restarted: Option<DateTime<Utc>>,
    pub auto_restarts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
#[serde(tag = "state", content = "instance", rename_all = "snake_case")]
pub enum DiskState {
    Detached,
    Attached(InstanceUuid),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct DiskView {
    pub id: DiskUuid,
    pub name: String,
    #[serde(flatten)]
    pub state: DiskState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InstanceView {
    pub id: InstanceUuid,
    pub name: String,
    pub state: ExternalState,
    pub propolis_id: Option<PropolisUuid>,
    pub intended: IntendedState,
    pub auto_restarts: u32,
}

/// One attempted VMM write, kept so an observer can check generations and see
/// which report lost a race.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VmmWrite {
    pub propolis_id: PropolisUuid,
    pub state: VmmState,
    pub gen: Generation,
    /// The stored generation when the write arrived.
    pub prev_gen: Generation,
    pub applied: bool,
}

/// A change to an instance, logged in order so an observer sees each one even when
/// it looks only once a run is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct InstanceEvent {
    pub instance_id: InstanceUuid,
    pub change: InstanceChange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceChange {
    /// A user asked for the instance to stop.
    StopRequested,
    /// A start began: a user's, or auto-restart's.
    StartRequested { auto_restart: bool },
    /// A user asked for the instance to reboot.
    RebootRequested,
    /// A user's start set the intended state to Running, as omicron's
    /// `instance_start` does before it checks whether the start is allowed;
    /// whether anything was started is logged apart (`StartRequested`).
    StartIntended,
    /// A start that had linked its VMM failed and unwound, leaving the instance
    /// with no VMM (stopped): a user's, or auto-restart's.
    StartUnwound { auto_restart: bool },
    /// A user's stop, start or reboot that logged its request above returned,
    /// with an error or not.
    RequestEnded { ok: bool },
    /// The update step (or a stop of a Failed instance) left it with no VMM.
    Stopped,
    /// The update step moved it to Failed.
    Failed,
    /// A start saga reserved the sled's resources for the VMM
    /// (`sis_alloc_server`: a `sled_resource_vmm` row).
    Reserved { propolis_id: PropolisUuid },
    /// That reservation was deleted: the start unwound, or the VMM was unlinked.
    Released { propolis_id: PropolisUuid },
}

/// A VMM's hold on its sled's resources (omicron's `sled_resource_vmm` row),
/// from its start saga's first node until its instance lets go of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reservation {
    pub instance_id: InstanceUuid,
    pub sled_id: SledUuid,
}

#[derive(Debug, Default)]
pub(crate) struct Db {
    pub(crate) instances: BTreeMap<InstanceUuid, InstanceRecord>,
    pub(crate) vmms: BTreeMap<PropolisUuid, VmmRecord>,
    pub(crate) disks: BTreeMap<DiskUuid, (String, DiskState)>,
    pub(crate) reservations: BTreeMap<PropolisUuid, Reservation>,
    pub(crate) writes: Vec<VmmWrite>,
    pub(crate) instance_log: Vec<InstanceEvent>,
    pub(crate) next_id: u64,
    /// The VMM rows deleted, in order, with their instances (`delete_vmm`).
    pub(crate) deleted: Vec<(PropolisUuid, InstanceUuid)>,
    /// How many: shared with `NexusStub`, which reads it without the lock.
    pub(crate) deletions: Arc<AtomicUsize>,
}

impl Db {
    /// Empty, with room for a short run's logs: a model checker builds a
    /// Nexus for every schedule it runs, and growing these from nothing was
    /// a few allocations each time.
    pub(crate) fn new() -> Db {
        Db { writes: Vec::with_capacity(16), instance_log: Vec::with_capacity(16), ..Db::default() }
    }

    pub(crate) fn external_state(&self, inst: &InstanceRecord) -> ExternalState {
        match inst.state {
            InstanceState::NoVmm => ExternalState::Stopped,
            InstanceState::Failed => ExternalState::Failed,
            InstanceState::Vmm => {
                let vmm = inst.propolis_id.and_then(|id| self.vmms.get(&id));
                match vmm.map(|v| v.state) {
                    None | Some(DbVmmState::Creating) => ExternalState::Starting,
                    Some(DbVmmState::SagaUnwound) => ExternalState::Failed,
                    Some(DbVmmState::Reported(s)) => match s {
                        VmmState::Starting => ExternalState::Starting,
                        VmmState::Running => ExternalState::Running,
                        VmmState::Rebooting => ExternalState::Rebooting,
                        VmmState::Migrating => ExternalState::Migrating,
                        // A terminal VMM still linked: the update step has not run yet.
                        VmmState::Stopping
                        | VmmState::Stopped
                        | VmmState::Destroyed
                        | VmmState::Failed => ExternalState::Stopping,
                    },
                }
            }
        }
    }

    pub(crate) fn instance_view(&self, inst: &InstanceRecord) -> InstanceView {
        InstanceView {
            id: inst.id,
            name: inst.name.clone(),
            state: self.external_state(inst),
            propolis_id: inst.propolis_id,
            intended: inst.intended,
            auto_restarts: inst.auto_restarts,
        }
    }

    pub(crate) fn log(&mut self, instance_id: InstanceUuid, change: InstanceChange) {
        self.instance_log.push(InstanceEvent { instance_id, change });
    }

    /// Whether `instance_id` holds a reservation (omicron's unique index on
    /// `sled_resource_vmm (instance_id, state)`, since #10479, asks this).
    pub(crate) fn reserved(&self, instance_id: InstanceUuid) -> bool {
        self.reservations.values().any(|r| r.instance_id == instance_id)
    }

    pub(crate) fn reserve(&mut self, propolis_id: PropolisUuid, r: Reservation) {
        self.reservations.insert(propolis_id, r);
        self.log(r.instance_id, InstanceChange::Reserved { propolis_id });
    }

    /// Deletes the VMM's reservation by its id, as `sled_reservation_delete` does;
    /// a VMM without one is left as it is.
    pub(crate) fn release(&mut self, propolis_id: PropolisUuid) {
        if let Some(r) = self.reservations.remove(&propolis_id) {
            self.log(r.instance_id, InstanceChange::Released { propolis_id });
        }
    }

    /// A start saga's undo: its VMM row becomes SagaUnwound (and deleted: no
    /// report lands on it), its reservation goes, and an instance it had linked
    /// is left with no VMM, as omicron's undo of `sis_move_to_starting` leaves
    /// it: stopped, whatever the start was for.
    pub(crate) fn unwind_start(
        &mut self,
        instance_id: InstanceUuid,
        propolis_id: PropolisUuid,
        auto_restart: bool,
    ) {
        if let Some(vmm) = self.vmms.get_mut(&propolis_id) {
            vmm.state = DbVmmState::SagaUnwound;
        }
        self.delete_vmm(propolis_id);
        self.release(propolis_id);
        if let Some(inst) = self.instances.get_mut(&instance_id) {
            if inst.propolis_id == Some(propolis_id) {
                inst.propolis_id = None;
                inst.state = InstanceState::NoVmm;
                inst.gen = inst.gen.next();
                self.log(instance_id, InstanceChange::StartUnwound { auto_restart });
            }
        }
    }

    /// Soft-deletes a VMM row: it takes no more writes and is not listed. The
    /// one place a row is deleted, so the log of deletions (`deleted`) and its
    /// count, which a harness reads without the lock, miss none.
    pub(crate) fn delete_vmm(&mut self, propolis_id: PropolisUuid) {
        let Some(vmm) = self.vmms.get_mut(&propolis_id) else { return };
        if !std::mem::replace(&mut vmm.deleted, true) {
            self.deleted.push((propolis_id, vmm.instance_id));
            self.deletions.store(self.deleted.len(), Ordering::Release);
        }
    }

    /// Hashes what decides future behaviour. Timestamps and the logs are left out;
    /// the one decision time enters (auto-restart's cooldown) depends only on how
    /// long is left of each cooldown at `now`, so that is hashed instead, and only
    /// as "more than `horizon`" once it is: a caller that knows the clock cannot
    /// move on by `horizon` before the run ends knows such a cooldown will not end
    /// in it, whenever it began (which is what lets two orders of steps that read
    /// the clock meet in one situation).
    pub(crate) fn hash_state<H: Hasher>(
        &self,
        h: &mut H,
        now: DateTime<Utc>,
        cooldown: TimeDelta,
        horizon: TimeDelta,
    ) {
        self.next_id.hash(h);
        for (id, i) in &self.instances {
            (id, &i.name, i.state, i.propolis_id, i.gen, i.intended, i.auto_restarts).hash(h);
            let left = i.time_last_auto_restarted.map(|t| {
                let left = (t + cooldown - now).max(TimeDelta::zero());
                if left >= horizon {
                    -1
                } else {
                    left.num_milliseconds()
                }
            });
            left.hash(h);
        }
        for (id, v) in &self.vmms {
            (id, v.instance_id, v.sled_id, v.state, v.gen, v.deleted).hash(h);
        }
        for (id, (name, state)) in &self.disks {
            (id, name, state).hash(h);
        }
        self.reservations.hash(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::DefaultHasher;

    const INST: InstanceUuid = InstanceUuid::from_u128(1);
    const VMM: PropolisUuid = PropolisUuid::from_u128(2);
    const DISK: DiskUuid = DiskUuid::from_u128(3);

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_734_565_320, 0).unwrap_or_default() + TimeDelta::milliseconds(ms)
    }

    fn db() -> Db {
        let mut db = Db { next_id: 3, ..Db::default() };
        db.instances.insert(
            INST,
            InstanceRecord {
                id: INST,
                name: "inst1".into(),
                state: InstanceState::Vmm,
                propolis_id: Some(VMM),
                gen: Generation::new().next(),
                intended: IntendedState::Running,
                time_last_auto_restarted: Some(at(0)),
                auto_restarts: 1,
            },
        );
        db.vmms.insert(
            VMM,
            VmmRecord {
                id: VMM,
                instance_id: INST,
                sled_id: SledUuid::from_u128(4),
                state: DbVmmState::Reported(VmmState::Running),
                gen: Generation::new().next().next(),
                time_state_updated: at(1),
                deleted: false,
            },
        );
        db.disks.insert(DISK, ("disk".into(), DiskState::Detached));
        db.reservations
            .insert(VMM, Reservation { instance_id: INST, sled_id: SledUuid::from_u128(4) });
        db
    }

    fn hash(db: &Db, now: DateTime<Utc>) -> u64 {
        let mut h = DefaultHasher::new();
        db.hash_state(&mut h, now, TimeDelta::minutes(5), TimeDelta::MAX);
        h.finish()
    }

    /// The words the step log and JSON use, and which records are terminal.
    #[test]
    fn vmm_and_instance_states_read_as_omicron_names_them() {
        let cases = [
            (DbVmmState::Creating, "creating", false),
            (DbVmmState::SagaUnwound, "saga_unwound", false),
            (DbVmmState::Reported(VmmState::Running), "running", false),
            (DbVmmState::Reported(VmmState::Destroyed), "destroyed", true),
            (DbVmmState::Reported(VmmState::Failed), "failed", true),
        ];
        for (state, word, terminal) in cases {
            assert_eq!((state.to_string().as_str(), state.is_terminal()), (word, terminal));
        }
        let words: Vec<String> = [
            ExternalState::Starting,
            ExternalState::Running,
            ExternalState::Stopping,
            ExternalState::Stopped,
            ExternalState::Rebooting,
            ExternalState::Migrating,
            ExternalState::Failed,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        let want =
            ["starting", "running", "stopping", "stopped", "rebooting", "migrating", "failed"];
        assert_eq!(words, want);
    }

    /// Every field the fingerprint claims to cover moves it when perturbed; the
    /// ones it leaves out on purpose (timestamps, the logs) do not.
    #[test]
    fn the_hash_covers_every_field_that_decides_the_future() {
        let base = hash(&db(), at(10));
        type Perturb = fn(&mut Db);
        let covered: [(&str, Perturb); 16] = [
            ("next_id", |d| d.next_id += 1),
            ("instance name", |d| d.instances.get_mut(&INST).unwrap().name.push('x')),
            ("instance state", |d| {
                d.instances.get_mut(&INST).unwrap().state = InstanceState::Failed
            }),
            ("instance vmm", |d| d.instances.get_mut(&INST).unwrap().propolis_id = None),
            ("instance gen", |d| d.instances.get_mut(&INST).unwrap().gen = Generation::new()),
            ("intended", |d| d.instances.get_mut(&INST).unwrap().intended = IntendedState::Stopped),
            ("auto_restarts", |d| d.instances.get_mut(&INST).unwrap().auto_restarts = 2),
            ("cooldown", |d| {
                d.instances.get_mut(&INST).unwrap().time_last_auto_restarted = Some(at(5))
            }),
            ("vmm state", |d| d.vmms.get_mut(&VMM).unwrap().state = DbVmmState::Creating),
            ("vmm gen", |d| d.vmms.get_mut(&VMM).unwrap().gen = Generation::new()),
            ("vmm deleted", |d| d.vmms.get_mut(&VMM).unwrap().deleted = true),
            ("vmm instance", |d| {
                d.vmms.get_mut(&VMM).unwrap().instance_id = InstanceUuid::from_u128(9)
            }),
            ("disk state", |d| d.disks.get_mut(&DISK).unwrap().1 = DiskState::Attached(INST)),
            ("disk name", |d| d.disks.get_mut(&DISK).unwrap().0.push('x')),
            ("reservation", |d| d.release(VMM)),
            ("reservation's instance", |d| {
                d.reservations.get_mut(&VMM).unwrap().instance_id = InstanceUuid::from_u128(9)
            }),
        ];
        for (field, perturb) in covered {
            let mut d = db();
            perturb(&mut d);
            assert_ne!(hash(&d, at(10)), base, "{field} is not in the hash");
        }
        let left_out: [(&str, Perturb); 3] = [
            ("vmm timestamp", |d| d.vmms.get_mut(&VMM).unwrap().time_state_updated = at(7)),
            ("write log", |d| {
                d.writes.push(VmmWrite {
                    propolis_id: VMM,
                    state: VmmState::Running,
                    gen: Generation::new(),
                    prev_gen: Generation::new(),
                    applied: false,
                })
            }),
            ("instance log", |d| d.log(INST, InstanceChange::Stopped)),
        ];
        for (field, perturb) in left_out {
            let mut d = db();
            perturb(&mut d);
            assert_eq!(hash(&d, at(10)), base, "{field} is noise, not state");
        }
        // Time alone moves it only through what is left of a cooldown, and not at
        // all once the cooldown is over.
        assert_ne!(hash(&db(), at(11)), base);
        assert_eq!(hash(&db(), at(600_000)), hash(&db(), at(900_000)));
        // Beyond the horizon, how much is left is one value, whenever it began.
        let within = |d: &Db, now| {
            let mut h = DefaultHasher::new();
            d.hash_state(&mut h, now, TimeDelta::minutes(5), TimeDelta::seconds(1));
            h.finish()
        };
        let mut later = db();
        later.instances.get_mut(&INST).unwrap().time_last_auto_restarted = Some(at(5));
        assert_eq!(within(&db(), at(10)), within(&later, at(10)));
        assert_ne!(within(&db(), at(299_500)), within(&db(), at(10)));
    }
}
