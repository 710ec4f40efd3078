//! `SimSledAgent`: a simulated sled agent whose VMM-table removal ordering is a setting.
//!
//! It implements `SledAgentApi` for Nexus and reports state through any
//! `NexusInternalApi`. The sim-only controls (poke, single step, table inspection)
//! are inherent methods, never part of the API trait.
//!
//! The ordering setting is the subject of omicron#7282. `RemoveThenPublish` is what
//! omicron's sim does: it drops a destroyed VMM from its table, then reports
//! Destroyed to Nexus, so a `vmm_get_state` in between answers `NoSuchVmm` while
//! Nexus still holds the VMM as live. `PublishThenRemove` (RFD 486 §6.1) removes
//! the VMM only once Nexus has acknowledged the terminal state.

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sled_agent_api::{
    Clock, Generation, InstanceEnsureBody, NexusApiError, NexusInternalApi, PropolisUuid,
    SledAgentApi, SledAgentError, SledUuid, SledVmmState, VmmPutStateBody, VmmPutStateResponse,
    VmmRuntimeState, VmmState, VmmStateRequested, VmmUnregisterResponse,
};
use slog::{debug, info, o, warn, Logger};
use tokio::sync::Notify;

#[cfg(feature = "clap")]
pub mod cli;
pub mod http;
mod vmm;

use vmm::SimVmm;

/// When a VMM that reached Destroyed leaves the table, relative to reporting it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RemovalOrdering {
    /// Report the terminal state, wait for Nexus to acknowledge it, then remove
    /// (RFD 486 §6.1). A later `NoSuchVmm` can then only reach a caller whose view
    /// of the VMM is older than the terminal generation Nexus already holds.
    #[default]
    PublishThenRemove,
    /// Remove, then report: omicron's sim at the time of #7282, kept to reproduce it.
    RemoveThenPublish,
}

impl RemovalOrdering {
    pub const fn label(self) -> &'static str {
        match self {
            RemovalOrdering::PublishThenRemove => "publish-then-remove",
            RemovalOrdering::RemoveThenPublish => "remove-then-publish",
        }
    }
}

/// How queued transitions get executed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimMode {
    /// Only when someone pokes the sim, as in omicron's integration tests.
    #[default]
    Explicit,
    /// A per-VMM task drains the queue `delay` after each state change, as in
    /// omicron-dev (1.5 s there), plus up to `jitter` more, drawn from a generator
    /// seeded with `seed` and the VMM's id. Needs a tokio runtime when built.
    /// `teardown` is how long a VMM that reached Destroyed takes to go before its
    /// state is reported: the real sled agent tears the zone down first
    /// (omicron#7927); omicron's sim takes no time (zero).
    Auto { delay: Duration, jitter: Duration, seed: u64, teardown: Duration },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimConfig {
    pub ordering: RemovalOrdering,
    pub mode: SimMode,
}

/// How far one poke goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PokeMode {
    /// Execute and report queued transitions until none is left.
    Drain,
    /// Execute and report one.
    SingleStep,
}

/// Seeded bugs, for checking that the explorer catches them; set only with the
/// `seeded-bugs` feature (`SimSledAgent::seed_bugs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimBugs {
    /// A stop or reboot sent to a VMM that is terminating is dropped and
    /// answered 500, as omicron's sled agent did before #6166 (the fix answers
    /// 410 Gone).
    pub terminating_drops_requests: bool,
    /// A sled agent that restarts leaves its Propolis zones running, unknown to
    /// it: what omicron#6763 feared. omicron's sled agent removes every zone
    /// before it serves again (`cleanup_all_old_global_state`), so there a
    /// restart ends the VMs with the table.
    pub restart_keeps_vms: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("no such VMM {propolis_id} on this sled")]
    NoSuchVmm { propolis_id: PropolisUuid },

    /// Nexus could not be reached, or answered with a server error, on every
    /// send (`REPORT_ATTEMPTS`). The VMM is kept in the table at `state`, so
    /// the next poke reports it again.
    #[error("reporting VMM {propolis_id} at {state} to Nexus failed; kept in the table")]
    ReportFailed {
        propolis_id: PropolisUuid,
        state: VmmRuntimeState,
        #[source]
        source: NexusApiError,
    },

    #[error("Auto mode needs a tokio runtime to run its stepper tasks")]
    NoRuntime,
}

/// What a poke did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PokeOutcome {
    /// Every state reported to Nexus, in order; each was acknowledged.
    pub published: Vec<SledVmmState>,
    /// States Nexus refused with a client error (4xx), given up on: sending one
    /// again would get the same answer (omicron's `publish_state_to_nexus`
    /// takes a 4xx as permanent since #3256).
    pub refused: Vec<SledVmmState>,
    /// Whether the VMM left the table.
    pub removed: bool,
}

#[derive(Debug)]
struct Entry {
    vmm: SimVmm,
    /// The Auto-mode stepper; `None` in Explicit mode.
    stepper: Option<Stepper>,
}

/// Handle on a VMM's Auto-mode stepper task; dropping it (the VMM left the table,
/// or the sim was dropped) ends the task, so no stepper outlives its VMM.
#[derive(Debug)]
struct Stepper {
    wake: Arc<Notify>,
    task: tokio::task::AbortHandle,
}

impl Drop for Stepper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
pub struct SimSledAgent<N> {
    log: Logger,
    sled_id: SledUuid,
    config: SimConfig,
    nexus: N,
    clock: Arc<dyn Clock>,
    vmms: Mutex<BTreeMap<PropolisUuid, Entry>>,
    /// Pokes waiting on a report, and what each will do once it is answered:
    /// carry on (`more`), and, for a VMM already taken out of the table, the VMM
    /// as it would come back if the report failed. It is state a poke keeps
    /// across an await, so it is part of the sim's state.
    in_flight: Mutex<BTreeMap<PropolisUuid, InFlight>>,
    runtime: Option<tokio::runtime::Handle>,
    this: Weak<Self>,
    bugs: Mutex<SimBugs>,
    /// VMs still running that the table lost in a restart, and the instance
    /// each runs (only with `SimBugs::restart_keeps_vms`).
    orphans: Mutex<BTreeMap<PropolisUuid, sled_agent_api::InstanceUuid>>,
}

#[derive(Debug)]
struct InFlight {
    more: bool,
    taken: Option<SimVmm>,
    /// Reports of this state Nexus has already failed.
    failures: u32,
}

/// How many times one poke sends a report Nexus fails with a retryable error
/// (unreachable, or a 5xx) before it gives up and keeps the VMM for the next
/// poke. omicron's sled agent retries forever with backoff; a poke must end.
pub const REPORT_ATTEMPTS: u32 = 8;

/// The sim's locks are never held across an await, so a poisoned one can only
/// come from a panic in this file's own short critical sections; what it guards
/// is still consistent then, so keep serving rather than spread the panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<N: NexusInternalApi + 'static> SimSledAgent<N> {
    pub fn new(
        log: &Logger,
        sled_id: SledUuid,
        config: SimConfig,
        nexus: N,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, SimError> {
        let runtime = match config.mode {
            SimMode::Explicit => None,
            SimMode::Auto { .. } => {
                Some(tokio::runtime::Handle::try_current().map_err(|_| SimError::NoRuntime)?)
            }
        };
        let log = log.new(o!(
            "component" => "SimSledAgent",
            // Formatted only if a line is actually logged.
            "sled_id" => slog::FnValue(move |_| sled_id.to_string()),
            "ordering" => config.ordering.label(),
        ));
        Ok(Arc::new_cyclic(|this| SimSledAgent {
            log,
            sled_id,
            config,
            nexus,
            clock,
            vmms: Mutex::new(BTreeMap::new()),
            in_flight: Mutex::new(BTreeMap::new()),
            runtime,
            this: this.clone(),
            bugs: Mutex::new(SimBugs::default()),
            orphans: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn sled_id(&self) -> SledUuid {
        self.sled_id
    }

    #[cfg(feature = "seeded-bugs")]
    pub fn seed_bugs(&self, bugs: SimBugs) {
        *lock(&self.bugs) = bugs;
    }

    /// The seeded bugs in force: none, unless built with `seeded-bugs` and asked.
    fn bugs(&self) -> SimBugs {
        *lock(&self.bugs)
    }

    pub fn config(&self) -> SimConfig {
        self.config
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<PropolisUuid, Entry>> {
        lock(&self.vmms)
    }

    /// Sim-only: whether a poke is waiting on a report of the VMM to Nexus.
    pub fn reporting(&self, propolis_id: PropolisUuid) -> bool {
        lock(&self.in_flight).contains_key(&propolis_id)
    }

    /// Sim-only: whether any poke is waiting on a report to Nexus.
    pub fn reporting_any(&self) -> bool {
        !lock(&self.in_flight).is_empty()
    }

    /// Sim-only: VMs a restart left running, unknown to the table, with their
    /// instances, in id order.
    pub fn orphans(&self) -> Vec<(PropolisUuid, sled_agent_api::InstanceUuid)> {
        let orphans = lock(&self.orphans);
        orphans.iter().map(|(v, i)| (*v, *i)).collect()
    }

    /// Sim-only: the VMM the table holds for an instance, if any.
    pub fn vmm_of(&self, instance_id: sled_agent_api::InstanceUuid) -> Option<PropolisUuid> {
        self.table().iter().find(|(_, e)| e.vmm.instance_id == instance_id).map(|(id, _)| *id)
    }

    /// Sim-only: the VMM leaves the table without any report, as when its
    /// Propolis dies or the sled agent loses it: the case the instance watcher
    /// exists for. Returns whether it was there.
    pub fn vanish(&self, propolis_id: PropolisUuid) -> bool {
        let gone = self.table().remove(&propolis_id).is_some();
        if gone {
            warn!(self.log, "VMM vanished without a report"; "propolis_id" => %propolis_id);
        }
        gone
    }

    /// Sim-only: the sled agent restarts, and its table and any report it had in
    /// flight are lost (the explorer restarts it only with none in flight).
    /// Before it serves again it removes every Propolis zone, as omicron's does,
    /// so the VMs end with it; with the seeded bug `restart_keeps_vms` they run
    /// on, unknown to it. Returns the VMMs the table held, with their
    /// instances, in id order.
    pub fn restart(&self) -> Vec<(PropolisUuid, sled_agent_api::InstanceUuid)> {
        let lost = std::mem::take(&mut *self.table());
        lock(&self.in_flight).clear();
        let keeps = self.bugs().restart_keeps_vms;
        let mut orphans = lock(&self.orphans);
        let mut gone = Vec::with_capacity(lost.len());
        for (id, entry) in lost {
            let instance = entry.vmm.instance_id;
            if keeps && !entry.vmm.runtime.state.is_terminal() {
                orphans.insert(id, instance);
            }
            gone.push((id, instance));
        }
        warn!(self.log, "sled agent restarted; its table is lost";
            "vmms" => gone.len(), "still_running" => orphans.len());
        gone
    }

    /// Sim-only: an instance two of whose VMs run at once on this sled, if any,
    /// with the two: VMMs of the table not yet terminal, and VMs a restart left
    /// running. Two VMs of one instance run two copies of its guest.
    pub fn two_vms_of_one_instance(
        &self,
    ) -> Option<(sled_agent_api::InstanceUuid, PropolisUuid, PropolisUuid)> {
        let table = self.table();
        let orphans = lock(&self.orphans);
        let live = table
            .iter()
            .filter(|(_, e)| !e.vmm.runtime.state.is_terminal())
            .map(|(id, e)| (*id, e.vmm.instance_id))
            .chain(orphans.iter().map(|(id, i)| (*id, *i)));
        // A handful of VMs at most, and asked after every step a search takes:
        // each against those before it, with nothing allocated.
        live.clone().enumerate().find_map(|(k, (vmm, instance))| {
            let earlier = live.clone().take(k).find(|&(_, i)| i == instance);
            earlier.map(|(other, _)| (instance, other, vmm))
        })
    }

    /// Sim-only: whether the VMM is in the table.
    pub fn contains_vmm(&self, propolis_id: PropolisUuid) -> bool {
        self.table().contains_key(&propolis_id)
    }

    /// Sim-only: the VMMs in the table, in id order.
    pub fn vmm_ids(&self) -> Vec<PropolisUuid> {
        self.table().keys().copied().collect()
    }

    /// Sim-only: a VMM's current state and generation, as its table holds them.
    pub fn vmm_runtime(&self, propolis_id: PropolisUuid) -> Option<(VmmState, Generation)> {
        self.table().get(&propolis_id).map(|e| (e.vmm.runtime.state, e.vmm.runtime.gen))
    }

    /// Sim-only: how many observations are queued for a VMM.
    pub fn queued(&self, propolis_id: PropolisUuid) -> Option<usize> {
        self.table().get(&propolis_id).map(|e| e.vmm.queued())
    }

    /// Sim-only: feeds everything that decides the sim's future behaviour into `h`
    /// (timestamps excluded), so an explorer can tell two situations apart.
    pub fn hash_state<H: Hasher>(&self, h: &mut H) {
        for (id, entry) in self.table().iter() {
            std::hash::Hash::hash(id, h);
            entry.vmm.hash_state(h);
        }
        // A VM a restart left running: it decides whether a second one starts.
        std::hash::Hash::hash(&*lock(&self.orphans), h);
        let in_flight = lock(&self.in_flight);
        for (id, f) in in_flight.iter() {
            std::hash::Hash::hash(&(id, f.more, f.taken.is_some(), f.failures), h);
            if let Some(vmm) = &f.taken {
                vmm.hash_state(h);
            }
        }
    }

    /// Sim-only: executes queued transitions and reports each to Nexus, awaiting
    /// each report before the next. At least one step always runs, so a poke with
    /// nothing queued reports the current state again (which is how a failed report
    /// gets retried).
    pub async fn poke(
        &self,
        propolis_id: PropolisUuid,
        mode: PokeMode,
    ) -> Result<PokeOutcome, SimError> {
        let mut outcome =
            PokeOutcome { published: Vec::new(), refused: Vec::new(), removed: false };
        loop {
            // One step under the lock; the lock is released before Nexus is called.
            let (state, finished, more, taken) = {
                let mut table = self.table();
                let entry =
                    table.get_mut(&propolis_id).ok_or(SimError::NoSuchVmm { propolis_id })?;
                entry.vmm.execute_next(&*self.clock);
                let state = entry.vmm.current();
                let finished = entry.vmm.ready_to_destroy();
                let more = mode == PokeMode::Drain && entry.vmm.desired().is_some();
                // A taken entry lives until this iteration ends, after the report, so
                // dropping its stepper handle cannot cancel the report in flight.
                let taken =
                    if finished && self.config.ordering == RemovalOrdering::RemoveThenPublish {
                        // The #7282 window opens here: the VMM is gone from the table
                        // while Nexus still holds it at an earlier generation.
                        table.remove(&propolis_id)
                    } else {
                        None
                    };
                (state, finished, more, taken)
            };
            if let (true, SimMode::Auto { teardown, .. }) = (finished, self.config.mode) {
                if !teardown.is_zero() {
                    tokio::time::sleep(teardown).await;
                }
            }
            debug!(self.log, "reporting VMM state";
                "propolis_id" => %propolis_id, "state" => %state.vmm_state.state,
                "gen" => state.vmm_state.gen.as_u64());
            match self.report(propolis_id, state, more, taken.as_ref()).await {
                Ok(()) => outcome.published.push(state),
                // omicron's sled agent gives a refused report up and goes on: a
                // VMM that has finished is deregistered all the same.
                Err(source) if !source.retryable() => {
                    warn!(self.log, "Nexus refused the report; giving it up";
                        "propolis_id" => %propolis_id, "gen" => state.vmm_state.gen.as_u64(),
                        "error" => %source);
                    outcome.refused.push(state);
                }
                Err(source) => {
                    warn!(self.log, "report to Nexus failed; keeping VMM";
                        "propolis_id" => %propolis_id, "gen" => state.vmm_state.gen.as_u64(),
                        "error" => %source);
                    if let Some(entry) = taken {
                        self.table().entry(propolis_id).or_insert(entry);
                    }
                    return Err(SimError::ReportFailed {
                        propolis_id,
                        state: state.vmm_state,
                        source,
                    });
                }
            }
            if finished {
                outcome.removed = match self.config.ordering {
                    RemovalOrdering::RemoveThenPublish => true,
                    RemovalOrdering::PublishThenRemove => self.remove_if_at(propolis_id, state),
                };
                info!(self.log, "VMM destroyed and removed";
                    "propolis_id" => %propolis_id, "gen" => state.vmm_state.gen.as_u64());
                return Ok(outcome);
            }
            if !more {
                return Ok(outcome);
            }
        }
    }

    /// Sends one report, again while Nexus fails it with a retryable error, up to
    /// `REPORT_ATTEMPTS` sends.
    async fn report(
        &self,
        propolis_id: PropolisUuid,
        state: SledVmmState,
        more: bool,
        taken: Option<&Entry>,
    ) -> Result<(), NexusApiError> {
        let mut failures = 0;
        let reported = loop {
            let taken = taken.map(|e| e.vmm.clone());
            self.in_flight_set(propolis_id, Some(InFlight { more, taken, failures }));
            match self.nexus.cpapi_instances_put(propolis_id, state).await {
                Err(e) if e.retryable() && failures + 1 < REPORT_ATTEMPTS => {
                    failures += 1;
                    warn!(self.log, "report to Nexus failed; sending it again";
                        "propolis_id" => %propolis_id, "gen" => state.vmm_state.gen.as_u64(),
                        "failures" => failures, "error" => %e);
                }
                r => break r,
            }
        };
        self.in_flight_set(propolis_id, None);
        reported
    }

    fn in_flight_set(&self, propolis_id: PropolisUuid, f: Option<InFlight>) {
        let mut m = lock(&self.in_flight);
        match f {
            Some(f) => m.insert(propolis_id, f),
            None => m.remove(&propolis_id),
        };
    }

    /// Removes the VMM if it is still at the acknowledged state; a concurrent poke
    /// may have removed it already.
    fn remove_if_at(&self, propolis_id: PropolisUuid, acked: SledVmmState) -> bool {
        let mut table = self.table();
        match table.get(&propolis_id) {
            Some(e) if e.vmm.runtime.gen == acked.vmm_state.gen => {
                table.remove(&propolis_id);
                true
            }
            _ => false,
        }
    }

    fn start_stepper(&self, propolis_id: PropolisUuid) -> Option<Stepper> {
        let (SimMode::Auto { delay, jitter, seed, .. }, Some(runtime)) =
            (self.config.mode, &self.runtime)
        else {
            return None;
        };
        let wake = Arc::new(Notify::new());
        let delays =
            Delays::new(delay, jitter, seed ^ (propolis_id.into_untyped().as_u128() as u64));
        let task = runtime
            .spawn(stepper(self.this.clone(), propolis_id, Arc::clone(&wake), delays))
            .abort_handle();
        Some(Stepper { wake, task })
    }
}

/// Auto mode's delays: a base plus a pseudo-random share of the jitter (xorshift64*,
/// so a seed gives the same sequence every time).
#[derive(Debug, Clone, Copy)]
struct Delays {
    base: Duration,
    jitter: Duration,
    state: u64,
}

impl Delays {
    fn new(base: Duration, jitter: Duration, seed: u64) -> Self {
        // xorshift has one fixed point, zero; keep away from it.
        Delays { base, jitter, state: seed | 1 }
    }

    fn next(&mut self) -> Duration {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let r = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let jitter_ns = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        let extra = if jitter_ns == 0 { 0 } else { r % jitter_ns };
        self.base + Duration::from_nanos(extra)
    }
}

/// Auto mode: drains a VMM's queue a delay after each wake-up, until the VMM is gone.
/// A failed report is retried after another delay; nothing is dropped.
async fn stepper<N: NexusInternalApi + 'static>(
    sim: Weak<SimSledAgent<N>>,
    propolis_id: PropolisUuid,
    wake: Arc<Notify>,
    mut delays: Delays,
) {
    loop {
        wake.notified().await;
        tokio::time::sleep(delays.next()).await;
        let Some(sim) = sim.upgrade() else { return };
        match sim.poke(propolis_id, PokeMode::Drain).await {
            Ok(outcome) if outcome.removed => return,
            Ok(_) => {}
            Err(SimError::NoSuchVmm { .. }) => return,
            Err(error) => {
                warn!(sim.log, "auto step failed; will retry";
                    "propolis_id" => %propolis_id, "error" => %error);
                wake.notify_one();
            }
        }
    }
}

#[async_trait]
impl<N: NexusInternalApi + 'static> SledAgentApi for SimSledAgent<N> {
    async fn vmm_register(
        &self,
        propolis_id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        let mut table = self.table();
        if let Some(existing) = table.get(&propolis_id) {
            return Ok(existing.vmm.current());
        }
        let vmm = SimVmm::new(propolis_id, body.instance_id, body.vmm_runtime)?;
        let state = vmm.current();
        let stepper = self.start_stepper(propolis_id);
        table.insert(propolis_id, Entry { vmm, stepper });
        debug!(self.log, "VMM registered";
            "propolis_id" => %propolis_id, "instance_id" => %body.instance_id,
            "gen" => state.vmm_state.gen.as_u64());
        Ok(state)
    }

    async fn vmm_unregister(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        let Some(mut entry) = self.table().remove(&propolis_id) else {
            return Ok(VmmUnregisterResponse { updated_runtime: None });
        };
        entry.vmm.terminate(&*self.clock);
        debug!(self.log, "VMM unregistered"; "propolis_id" => %propolis_id);
        Ok(VmmUnregisterResponse { updated_runtime: Some(entry.vmm.current()) })
    }

    async fn vmm_put_state(
        &self,
        propolis_id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        let mut table = self.table();
        let entry = table.get_mut(&propolis_id).ok_or(SledAgentError::NoSuchVmm { propolis_id })?;
        // Destroyed and still here: its runner is terminating (reporting, then
        // leaving the table). omicron's answers the stops and reboots it is sent
        // then with 410 Gone, not 404: Nexus must not take the VMM for lost.
        let waits = matches!(body.state, VmmStateRequested::Stopped | VmmStateRequested::Reboot);
        if waits && entry.vmm.ready_to_destroy() {
            return Err(if self.bugs().terminating_drops_requests {
                SledAgentError::UnexpectedResponse {
                    operation: "vmm_put_state",
                    status: 500,
                    message: "the VMM's runner dropped the request".into(),
                }
            } else {
                SledAgentError::Terminating { propolis_id }
            });
        }
        let queued = entry.vmm.queued();
        let bumped = entry.vmm.request_transition(propolis_id, body.state, &*self.clock)?;
        // A transition that moved the generation or queued more work wakes the
        // stepper, so a started VMM runs by itself. omicron's sim wakes only on a
        // moved generation: its Running from Starting waits for a test's poke.
        if (bumped || entry.vmm.queued() > queued) && entry.vmm.desired().is_some() {
            if let Some(stepper) = &entry.stepper {
                stepper.wake.notify_one();
            }
        }
        let state = entry.vmm.current();
        debug!(self.log, "VMM state requested";
            "propolis_id" => %propolis_id, "requested" => %body.state,
            "state" => %state.vmm_state.state, "gen" => state.vmm_state.gen.as_u64());
        Ok(VmmPutStateResponse { updated_runtime: Some(state) })
    }

    async fn vmm_get_state(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<SledVmmState, SledAgentError> {
        self.table()
            .get(&propolis_id)
            .map(|e| e.vmm.current())
            .ok_or(SledAgentError::NoSuchVmm { propolis_id })
    }
}
