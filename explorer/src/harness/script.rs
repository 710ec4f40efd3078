//! The actors' scripts: the scenario (the omicron test's steps), the watcher, and
//! auto-restart. Each runs real component code; only the gates are the harness's.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};

use std::future::Future;

use futures::FutureExt;

use nexus_stub::{
    DbVmmState, DiskState, DiskView, ExternalState, InstanceView, NexusError, NexusStub,
};
use sled_agent_api::{
    BoxError, DiskUuid, InstanceUuid, PropolisUuid, SledAgentApi, SledUuid, VmmState,
};
use sledsim_http::error_chain;

use super::invariants::{End, Ending};
use super::sched::{self, HarnessError, Sched};
use super::step::{Answer, Arg, Call, CallKind, Component, ErrorKind};
use super::transport::SimPort;
use super::{Nexus, Watcher};

/// Which scenario to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ScenarioKind {
    /// omicron's `test_disk_move_between_instances`, up to the disk sitting on
    /// instance 2.
    #[default]
    DiskMove,
    /// One instance started and stopped: the smallest case of #7282.
    StopRace,
}

impl ScenarioKind {
    pub const fn label(self) -> &'static str {
        match self {
            ScenarioKind::DiskMove => "disk-move",
            ScenarioKind::StopRace => "stop-race",
        }
    }

    /// The instances the scenario creates, by name, in order.
    pub const fn instance_names(self) -> &'static [&'static str] {
        match self {
            ScenarioKind::DiskMove => &["inst1", "inst2"],
            ScenarioKind::StopRace => &["inst1"],
        }
    }
}

/// What the scenario did, for the observer and the report.
#[derive(Debug, Default)]
pub struct ScenarioProgress {
    /// Instances the scenario created, by name, in order.
    pub instances: Vec<(String, InstanceUuid)>,
    pub disk: Option<DiskUuid>,
    /// `None` while running (or stuck); the failure message if a step failed.
    pub outcome: Option<Result<(), String>>,
    /// Instances an auto-restart pass has listed and not yet tried to start: the
    /// window of the `restart-after-stop` finding.
    pub restarting: BTreeSet<InstanceUuid>,
    /// The instance an auto-restart pass is starting, until its start returns:
    /// the window of the `restart-unwound` finding.
    pub restart_starting: Option<InstanceUuid>,
}

impl ScenarioProgress {
    /// Of the outcome, what a situation holds: whether the scenario got to its
    /// end (`None`: not yet) and passed. Rule 9 weighs a failure alike whatever
    /// its message says, and the message tells paths apart that are one
    /// situation (a start refused with 503 and one whose answer was lost both
    /// fail the create, and a sled agent's restart then leaves nothing else to
    /// tell them by).
    pub fn passed(&self) -> Option<bool> {
        self.outcome.as_ref().map(Result::is_ok)
    }

    /// Feeds it into a fingerprint: the end-of-run rules read it; of the
    /// outcome, only `passed`.
    pub fn hash_state<H: std::hash::Hasher>(&self, h: &mut H) {
        use std::hash::Hash;
        let ScenarioProgress { instances, disk, outcome: _, restarting, restart_starting } = self;
        instances.hash(h);
        disk.hash(h);
        self.passed().hash(h);
        restarting.hash(h);
        restart_starting.hash(h);
    }

    /// What the end-of-run rules read, from what the scenario did and what Nexus
    /// holds: the same for a gated run and a stress run.
    pub fn end<S: SledAgentApi + 'static>(
        &self,
        kind: ScenarioKind,
        nexus: &NexusStub<S>,
        ending: Ending,
    ) -> End {
        let disk_on_second = (kind == ScenarioKind::DiskMove).then(|| {
            match (self.disk.and_then(|d| nexus.disk(d).ok()), self.instances.get(1)) {
                (Some(d), Some((_, i2))) => d.state == DiskState::Attached(*i2),
                _ => false,
            }
        });
        let instances = nexus.instances();
        End {
            ending,
            outcome: self.outcome.clone(),
            instances: instances.iter().map(|i| (i.id, i.state)).collect(),
            vmms: nexus.vmms().iter().map(|v| (v.id, v.state, v.gen)).collect(),
            active: instances.iter().filter_map(|i| Some((i.id, i.propolis_id?))).collect(),
            disk_on_second,
        }
    }
}

/// A scenario step that did not go as the real test expects.
#[derive(Debug, thiserror::Error)]
pub enum StepFailed {
    #[error("{step}: {source}")]
    Nexus {
        step: String,
        #[source]
        source: NexusError,
    },
    #[error("{step}: expected {expected}, got {got}")]
    Unexpected { step: String, expected: String, got: String },
    #[error("{step}: the sim could not finish the transitions")]
    Sim {
        step: String,
        #[source]
        source: sled_agent_api::BoxError,
    },
}

/// How a scenario reaches the system: Nexus's user operations, finishing the
/// sim's transitions, and waiting for an instance to settle. The harness gates
/// every one of them; `cargo xtask stress` calls straight through in real time.
pub trait Driver {
    /// Create an instance and start it (`start: true`, as the test does).
    fn instance_create(
        &self,
        name: &'static str,
    ) -> impl Future<Output = Result<InstanceView, NexusError>>;

    fn instance_stop(
        &self,
        id: InstanceUuid,
    ) -> impl Future<Output = Result<InstanceView, NexusError>>;

    fn disk_create(&self, name: &'static str)
        -> impl Future<Output = Result<DiskView, NexusError>>;

    fn disk_attach(
        &self,
        disk: DiskUuid,
        id: InstanceUuid,
    ) -> impl Future<Output = Result<DiskView, NexusError>>;

    fn disk_detach(
        &self,
        disk: DiskUuid,
        id: InstanceUuid,
    ) -> impl Future<Output = Result<DiskView, NexusError>>;

    /// The test's `instance_simulate`: finish the transitions of whichever VMM
    /// is the instance's active one now.
    fn simulate(&self, id: InstanceUuid) -> impl Future<Output = Result<(), BoxError>>;

    /// Waits for the instance to come to rest after a stop; returns the state it
    /// rests in (Stopped, unless something went wrong).
    fn settle(&self, id: InstanceUuid) -> impl Future<Output = Result<ExternalState, NexusError>>;
}

struct Ctx<'a, D> {
    driver: &'a D,
    progress: &'a Mutex<ScenarioProgress>,
}

impl<D: Driver> Ctx<'_, D> {
    fn progress(&self) -> std::sync::MutexGuard<'_, ScenarioProgress> {
        lock(self.progress)
    }

    /// Create, start, stop, finish the sim's transitions, wait for the instance to
    /// settle: the test's `instance_simulate` + `instance_wait_for_state(Stopped)`.
    async fn create_and_stop(&self, name: &'static str) -> Result<InstanceUuid, StepFailed> {
        // The step name is only built when a step fails.
        let nexus_err = |step: &'static str| {
            move |source| StepFailed::Nexus { step: format!("{step} {name}"), source }
        };
        let view = self.driver.instance_create(name).await.map_err(nexus_err("create"))?;
        self.progress().instances.push((name.to_string(), view.id));
        self.driver.instance_stop(view.id).await.map_err(nexus_err("stop"))?;
        self.driver
            .simulate(view.id)
            .await
            .map_err(|source| StepFailed::Sim { step: format!("simulate {name}"), source })?;
        let state = self.driver.settle(view.id).await.map_err(nexus_err("wait for"))?;
        if state != ExternalState::Stopped {
            return Err(StepFailed::Unexpected {
                step: format!("wait for {name} to stop"),
                expected: "stopped (the real test would time out after 320 s)".into(),
                got: state.to_string(),
            });
        }
        Ok(view.id)
    }
}

/// The harness's driver: every operation parks at a gate first.
struct GatedDriver {
    nexus: Arc<Nexus>,
    sim: SimPort,
    /// The sim itself, to read whether a poke of a VMM is under way.
    sim_state: Weak<super::Sim>,
    sched: Arc<Sched>,
    /// Whether stops may land in the windows of the known findings.
    findings: bool,
    progress: Arc<Mutex<ScenarioProgress>>,
}

/// Races the explorer found that omicron's own design has too. Explore and
/// scenario leave them out (a stop or reboot waits until the instance is out of
/// the window), so a proof is scoped around them and says so; `--findings`
/// explores them.
pub const FINDINGS: [(&str, &str); 4] = [
    (
        "stop-after-destroyed",
        "no stop or reboot is sent while the instance's VMM is recorded Destroyed but not yet unlinked by the update step (omicron sends it to the sled agent, which has forgotten the VMM and answers 404, and Nexus marks the VMM Failed)",
    ),
    (
        "stop-while-creating",
        "no stop or reboot is sent while the instance's VMM record is Creating, between a start inserting it and registering it with the sled agent (the sled agent answers 404, and Nexus marks the VMM Failed)",
    ),
    (
        "restart-after-stop",
        "no stop is sent while an auto-restart pass has found the instance Failed and not yet started it (omicron's reincarnation starts what its query found without reading the intended state again, so the instance runs though its user stopped it)",
    ),
    (
        "restart-unwound",
        "no fault makes an auto-restart's start fail before it returns: no request of it is refused or lost, and its VMM does not vanish, nor the sled agent restart while it holds that VMM (omicron's start saga then unwinds, and its own undo leaves the instance stopped with its intent Running, where no reincarnation query looks again: #9174)",
    ),
];

/// Whether a stop (`stop`) or reboot of an instance would land in the window of
/// a known finding: its active VMM is recorded Destroyed (not yet unlinked), or
/// still Creating; or, for a stop, an auto-restart pass is about to start it.
fn in_finding_window(
    nexus: &Nexus,
    progress: &Mutex<ScenarioProgress>,
    id: InstanceUuid,
    stop: bool,
) -> bool {
    let vmm = matches!(
        nexus.active_vmm_state(id),
        Some(DbVmmState::Creating | DbVmmState::Reported(VmmState::Destroyed))
    );
    vmm || (stop && lock(progress).restarting.contains(&id))
}

/// The scenario's stop's wait: until the instance is out of every finding's window.
fn outside_findings(
    nexus: &Arc<Nexus>,
    progress: &Arc<Mutex<ScenarioProgress>>,
    id: InstanceUuid,
) -> sched::WaitPred {
    let (weak, progress) = (Arc::downgrade(nexus), Arc::clone(progress));
    Box::new(move || weak.upgrade().is_none_or(|n| !in_finding_window(&n, &progress, id, true)))
}

fn lock(progress: &Mutex<ScenarioProgress>) -> std::sync::MutexGuard<'_, ScenarioProgress> {
    progress.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a Nexus error reads in the step log.
pub(super) fn nexus_error_kind(e: &NexusError) -> ErrorKind {
    match e {
        NexusError::NoSuchInstance { .. } => ErrorKind::NoSuchInstance,
        NexusError::NoSuchDisk { .. } => ErrorKind::NoSuchDisk,
        NexusError::NoSuchVmm { .. } => ErrorKind::NoSuchVmm,
        NexusError::NameInUse { .. } => ErrorKind::NameInUse,
        NexusError::NoSleds => ErrorKind::NoSleds,
        NexusError::InstanceNotStopped { .. } => ErrorKind::InstanceNotStopped,
        NexusError::InstanceNotStartable { .. } => ErrorKind::InstanceNotStartable,
        NexusError::InstanceNotRebootable { .. } => ErrorKind::InstanceNotRebootable,
        NexusError::InstanceAlreadyStarting { .. } => ErrorKind::InstanceAlreadyStarting,
        NexusError::InstanceChangedState { .. } => ErrorKind::InstanceChangedState,
        NexusError::DiskAttachedToAnother { .. } => ErrorKind::DiskAttachedToAnother,
        NexusError::SledAgent { .. } => ErrorKind::SledAgent,
        NexusError::NoRuntime => ErrorKind::NoRuntime,
    }
}

fn instance_answer(r: &Result<InstanceView, NexusError>) -> Answer {
    match r {
        Ok(v) => Answer::Instance(v.state),
        Err(e) => Answer::Error(nexus_error_kind(e)),
    }
}

fn disk_answer(r: &Result<DiskView, NexusError>) -> Answer {
    match r {
        Ok(d) => Answer::Disk(d.state),
        Err(e) => Answer::Error(nexus_error_kind(e)),
    }
}

impl GatedDriver {
    /// Parks as the scenario's call `kind` to Nexus, then runs it.
    async fn call<T, Fut: Future<Output = T>>(
        &self,
        kind: CallKind,
        arg: Arg,
        run: impl FnOnce() -> Fut,
        describe: impl FnOnce(&T) -> Answer,
    ) -> T {
        let call = Call { kind, from: Component::Scenario, to: Component::Nexus, vmm: None, arg };
        self.sched.gate(call, None, None, run, describe).await
    }
}

impl Driver for GatedDriver {
    async fn instance_create(&self, name: &'static str) -> Result<InstanceView, NexusError> {
        let n = &self.nexus;
        let describe = |r: &Result<InstanceView, NexusError>| match r {
            Ok(v) => Answer::Created(v.id, v.propolis_id, v.state),
            Err(e) => Answer::Error(nexus_error_kind(e)),
        };
        self.call(
            CallKind::InstanceCreate,
            Arg::Name(name),
            || n.instance_create(name, true),
            describe,
        )
        .await
    }

    async fn instance_stop(&self, id: InstanceUuid) -> Result<InstanceView, NexusError> {
        let n = &self.nexus;
        let call = Call {
            kind: CallKind::InstanceStop,
            from: Component::Scenario,
            to: Component::Nexus,
            vmm: None,
            arg: Arg::Instance(id),
        };
        let wait = (!self.findings).then(|| outside_findings(&self.nexus, &self.progress, id));
        self.sched.gate(call, wait, None, || n.instance_stop(id), instance_answer).await
    }

    async fn disk_create(&self, name: &'static str) -> Result<DiskView, NexusError> {
        let n = &self.nexus;
        let run = || async { n.disk_create(name) };
        self.call(CallKind::DiskCreate, Arg::Name(name), run, disk_answer).await
    }

    async fn disk_attach(&self, disk: DiskUuid, id: InstanceUuid) -> Result<DiskView, NexusError> {
        let n = &self.nexus;
        let run = || async { n.disk_attach(disk, id) };
        self.call(CallKind::DiskAttach, Arg::Instance(id), run, disk_answer).await
    }

    async fn disk_detach(&self, disk: DiskUuid, id: InstanceUuid) -> Result<DiskView, NexusError> {
        let n = &self.nexus;
        let run = || async { n.disk_detach(disk, id) };
        self.call(CallKind::DiskDetach, Arg::Instance(id), run, disk_answer).await
    }

    async fn simulate(&self, id: InstanceUuid) -> Result<(), BoxError> {
        // As the test's helper, which looks the VMM up when it is called (and
        // panics if there is none).
        let Some(vmm) = self.nexus.instance_record(id).and_then(|i| i.propolis_id) else {
            return Err("instance must be on a sled to simulate a state change".into());
        };
        let call = Call {
            kind: CallKind::VmmPoke,
            from: Component::Scenario,
            to: Component::SledAgent,
            vmm: Some(vmm),
            arg: Arg::None,
        };
        let wait = Some(one_poke_at_a_time(&self.sim_state, vmm));
        self.sched.gate(call, wait, None, || self.sim.poke(vmm), poke_answer).await
    }

    /// Parks until the instance is no longer Stopping, then reads its state. The
    /// gate's condition stands in for the real test's one-second polling loop.
    async fn settle(&self, id: InstanceUuid) -> Result<ExternalState, NexusError> {
        let weak = Arc::downgrade(&self.nexus);
        let settled = Box::new(move || {
            // Read at every scheduling step while the scenario waits: no allocation.
            weak.upgrade().is_none_or(|n| {
                n.instance_status(id).is_none_or(|(state, _)| state != ExternalState::Stopping)
            })
        });
        let call = Call {
            kind: CallKind::WaitForState,
            from: Component::Scenario,
            to: Component::Nexus,
            vmm: None,
            arg: Arg::Instance(id),
        };
        let nexus = &self.nexus;
        self.sched
            .gate(
                call,
                Some(settled),
                None,
                || async { nexus.instance(id).map(|v| v.state) },
                |r| match r {
                    Ok(s) => Answer::Waited(*s),
                    Err(e) => Answer::Error(nexus_error_kind(e)),
                },
            )
            .await
    }
}

fn expect_disk(
    step: &str,
    got: Result<DiskView, NexusError>,
    want: DiskState,
) -> Result<(), StepFailed> {
    match got {
        Ok(d) if d.state == want => Ok(()),
        Ok(d) => Err(StepFailed::Unexpected {
            step: step.to_string(),
            expected: format!("{want:?}"),
            got: format!("{:?}", d.state),
        }),
        Err(source) => Err(StepFailed::Nexus { step: step.to_string(), source }),
    }
}

fn expect_attached_elsewhere(
    step: &str,
    got: Result<DiskView, NexusError>,
) -> Result<(), StepFailed> {
    match got {
        Err(NexusError::DiskAttachedToAnother { .. }) => Ok(()),
        other => Err(StepFailed::Unexpected {
            step: step.to_string(),
            expected: "400: disk attached to another instance".into(),
            got: format!("{other:?}"),
        }),
    }
}

async fn disk_move<D: Driver>(cx: &Ctx<'_, D>) -> Result<(), StepFailed> {
    let d = cx.driver;
    let disk = d
        .disk_create("disk")
        .await
        .map_err(|source| StepFailed::Nexus { step: "create disk".into(), source })?
        .id;
    cx.progress().disk = Some(disk);

    let i1 = cx.create_and_stop("inst1").await?;
    expect_disk("attach disk to inst1", d.disk_attach(disk, i1).await, DiskState::Attached(i1))?;
    let again = d.disk_attach(disk, i1).await;
    expect_disk("attach disk to inst1 again", again, DiskState::Attached(i1))?;

    let i2 = cx.create_and_stop("inst2").await?;
    let elsewhere = d.disk_attach(disk, i2).await;
    expect_attached_elsewhere("attach disk to inst2 while on inst1", elsewhere)?;
    expect_disk("detach disk from inst1", d.disk_detach(disk, i1).await, DiskState::Detached)?;
    let again = d.disk_detach(disk, i1).await;
    expect_disk("detach disk from inst1 again", again, DiskState::Detached)?;
    expect_disk("detach disk from inst2", d.disk_detach(disk, i2).await, DiskState::Detached)?;
    expect_disk("attach disk to inst2", d.disk_attach(disk, i2).await, DiskState::Attached(i2))?;
    let elsewhere = d.disk_attach(disk, i1).await;
    expect_attached_elsewhere("attach disk to inst1 while on inst2", elsewhere)?;
    let again = d.disk_attach(disk, i2).await;
    expect_disk("attach disk to inst2 again", again, DiskState::Attached(i2))?;
    Ok(())
}

/// What of a listed row a check's future depends on: whom to ask, and the
/// generation a Failed write builds on. Not the row's state, which a check only
/// logs (it writes what the sled agent answers), nor its timestamp (the watcher
/// writes its own clock's time).
fn row(w: &watcher::WatchedVmm) -> (InstanceUuid, PropolisUuid, SledUuid, u64) {
    (w.instance_id, w.propolis_id, w.sled_id, w.runtime.gen.as_u64())
}

/// Runs a scenario to its end or its first failed step; the outcome goes into
/// `progress`.
pub async fn run<D: Driver>(kind: ScenarioKind, driver: &D, progress: &Mutex<ScenarioProgress>) {
    let cx = Ctx { driver, progress };
    let r = match kind {
        ScenarioKind::DiskMove => disk_move(&cx).await,
        ScenarioKind::StopRace => cx.create_and_stop("inst1").await.map(|_| ()),
    };
    cx.progress().outcome = Some(r.map_err(|e| error_chain(&e)));
}

pub(super) async fn scenario(
    (kind, findings): (ScenarioKind, bool),
    nexus: Arc<Nexus>,
    (sim, sim_state): (SimPort, Weak<super::Sim>),
    sched: Arc<Sched>,
    progress: Arc<Mutex<ScenarioProgress>>,
) {
    let driver =
        GatedDriver { nexus, sim, sim_state, sched, findings, progress: Arc::clone(&progress) };
    run(kind, &driver, &progress).await;
}

/// The watcher: `passes` passes, each of which starts a check per listed VMM.
pub(super) async fn watcher(
    watcher: Arc<Watcher>,
    passes: usize,
    counts: Arc<Mutex<Vec<watcher::PassCounts>>>,
    sched: Arc<Sched>,
    spawner: super::executor::Spawner,
) {
    for pass in 0..passes {
        // Each check is an actor of its own, as omicron runs each as a task; the
        // pass waits for them, blocked outside any gate.
        let check = |vmm: watcher::WatchedVmm, waiting: &[watcher::WatchedVmm]| {
            // The check's future starts from its row (the generation a Failed
            // write builds on); the pass's, from here on, from the rows still
            // waiting alone: the listing it answered is spent.
            let seed = super::hash::stable_hash(&row(&vmm));
            let failed = watcher.failed_generation(vmm.runtime.gen).as_u64();
            let id = sched.add_check(seed, (vmm.propolis_id, failed));
            let waiting: Vec<_> = waiting.iter().map(row).collect();
            sched.forget_history(super::hash::stable_hash(&(pass, waiting)));
            let w = Arc::clone(&watcher);
            let (run, done) = async move { w.check(&vmm).await }.remote_handle();
            super::spawn_on(&spawner, id, &sched, run);
            done
        };
        let pass_counts = sched.waiting_for_children(watcher.activate_with(check)).await;
        // A failed listing is already logged by the watcher; the pass just counts as empty.
        counts.lock().unwrap_or_else(|p| p.into_inner()).push(pass_counts.unwrap_or_default());
        // A pass keeps nothing for the next (the counts are only reported), so
        // what is left to do depends on the passes made alone.
        sched.forget_history(pass as u64 + 1);
    }
}

/// Auto-restart: up to `passes` passes, each offered only where Nexus has an
/// instance to restart. A pass that would find nothing changes nothing: taken, it
/// would only spend the bound (a run with one pass could then never restart what
/// fails later) and double the situations, every one met with the pass still to
/// come and with it spent. So the pass waits for a candidate, and a run may end
/// with it unused (`restart.done`, once nothing else can go on).
pub(super) async fn restart(
    nexus: Arc<Nexus>,
    sched: Arc<Sched>,
    progress: Arc<Mutex<ScenarioProgress>>,
    passes: usize,
) {
    for _ in 0..passes {
        // Two kinds of step, so what the pass found is in the actor's history (the
        // answer of a call with no calls inside) before it starts any of them.
        let call = Call {
            kind: CallKind::Reincarnation,
            from: Component::Nexus,
            to: Component::Datastore,
            vmm: None,
            arg: Arg::None,
        };
        let n = &nexus;
        // A weak handle: the scheduler keeps the wait, and the wait must not keep
        // Nexus alive past the run.
        let w = Arc::downgrade(&nexus);
        let alt = sched::Alt {
            call,
            wait: Some(Box::new(move || {
                w.upgrade().is_some_and(|n| !n.restart_candidates().is_empty())
            })),
            costs_fault: false,
        };
        // The offer's `done` (alternative 1) ends auto-restart: no more passes.
        let Some((0, step)) = sched.offer(vec![alt], done_call(Component::Nexus)).await else {
            return;
        };
        let candidates = n.restart_candidates();
        sched.complete(step, Answer::Candidates(candidates.clone()));
        lock(&progress).restarting.extend(candidates.iter().copied());
        for id in candidates {
            let call = Call {
                kind: CallKind::InstanceStart,
                from: Component::Nexus,
                to: Component::Datastore,
                vmm: None,
                arg: Arg::Instance(id),
            };
            // An error is the step's answer; the pass goes on, as omicron's does.
            let start = || async {
                {
                    let mut p = lock(&progress);
                    p.restarting.remove(&id);
                    p.restart_starting = Some(id);
                }
                let r = n.reincarnate(id).await;
                lock(&progress).restart_starting = None;
                r
            };
            let _ = sched.gate(call, None, None, start, instance_answer).await;
        }
    }
}

/// The operations a user may add to a run, on any instance the scenario created.
pub(super) const USER_OPS: [CallKind; 3] =
    [CallKind::InstanceStop, CallKind::InstanceStart, CallKind::InstanceReboot];

/// The id of the instance the scenario created under `name`, if it has yet.
pub(super) fn created(progress: &Mutex<ScenarioProgress>, name: &str) -> Option<InstanceUuid> {
    let p = lock(progress);
    p.instances.iter().find(|(n, _)| n == name).map(|(_, id)| *id)
}

fn env_call(kind: CallKind, from: Component, to: Component, name: &'static str) -> Call {
    Call { kind, from, to, vmm: None, arg: Arg::Name(name) }
}

/// The sled agent's restart, as the fault actor offers it: while `restarts`
/// are left and the table holds a VMM, while no report is under way (as a
/// vanish), and, unless the findings are explored, not while auto-restart is
/// starting a VMM the table holds (the `restart-unwound` window). Always
/// offered, and withheld by its wait, so the alternatives keep their tickets.
fn sled_restart(
    sim: &Arc<super::Sim>,
    progress: &Arc<Mutex<ScenarioProgress>>,
    findings: bool,
    restarts: usize,
) -> sched::Alt {
    let (p, s) = (Arc::clone(progress), Arc::downgrade(sim));
    sched::Alt {
        call: Call {
            kind: CallKind::SledRestart,
            from: Component::Fault,
            to: Component::SledAgent,
            vmm: None,
            arg: Arg::None,
        },
        // Asked at every turn the fault actor waits at: with no restart left (the
        // default) it answers before it reaches the sim or the progress.
        wait: Some(Box::new(move || {
            restarts > 0
                && s.upgrade().is_some_and(|s| {
                    !s.reporting_any()
                        && !s.vmm_ids().is_empty()
                        && (findings
                            || lock(&p).restart_starting.is_none_or(|id| s.vmm_of(id).is_none()))
                })
        })),
        costs_fault: false,
    }
}

/// An environment actor's "nothing more".
fn done_call(who: Component) -> Call {
    Call { kind: CallKind::Done, from: who, to: who, vmm: None, arg: Arg::None }
}

/// A poke's wait: until no other poke of the VMM is under way. omicron runs one
/// runner per VMM, which takes one request at a time; and a poke in the harness
/// is always waiting on a report between its steps, so `reporting` says it.
fn one_poke_at_a_time(sim: &Weak<super::Sim>, vmm: PropolisUuid) -> sched::WaitPred {
    let sim = Weak::clone(sim);
    Box::new(move || sim.upgrade().is_none_or(|s| !s.reporting(vmm)))
}

/// How a poke's result reads in the step log.
fn poke_answer(r: &Result<(), BoxError>) -> Answer {
    match r {
        Ok(()) => Answer::Ack,
        Err(_) => Answer::Error(ErrorKind::Sim),
    }
}

/// A user beyond the script: up to `ops` times, a stop, start or reboot of any
/// instance the scenario has created, each followed, as the test's
/// `instance_simulate` does, by finishing the transitions of the instance's VMM.
/// Which operation, on which instance, and when, are the schedule's choices.
pub(super) async fn user(
    kind: ScenarioKind,
    (nexus, sim, sim_state): (Arc<Nexus>, SimPort, Weak<super::Sim>),
    sched: Arc<Sched>,
    progress: Arc<Mutex<ScenarioProgress>>,
    (ops, findings): (usize, bool),
) {
    let choices: Vec<(CallKind, &'static str)> = kind
        .instance_names()
        .iter()
        .flat_map(|&name| USER_OPS.into_iter().map(move |op| (op, name)))
        .collect();
    for made in 0..ops {
        // Each operation is looked up afresh, so what is left to do depends on
        // how many were made alone.
        sched.forget_history(made as u64 + 1);
        let alts = choices
            .iter()
            .map(|&(op, name)| {
                let (p, n) = (Arc::clone(&progress), Arc::downgrade(&nexus));
                // Only a stop or reboot can land in a finding's window.
                let scoped = !findings && op != CallKind::InstanceStart;
                let stop = op == CallKind::InstanceStop;
                let ready = move || {
                    created(&p, name).is_some_and(|id| {
                        !scoped || n.upgrade().is_none_or(|n| !in_finding_window(&n, &p, id, stop))
                    })
                };
                sched::Alt {
                    call: env_call(op, Component::User, Component::Nexus, name),
                    wait: Some(Box::new(ready)),
                    costs_fault: false,
                }
            })
            .collect();
        let done = done_call(Component::User);
        let Some((i, step)) = sched.offer(alts, done).await else { return };
        let Some(&(op, name)) = choices.get(i) else { return };
        let Some(id) = created(&progress, name) else {
            sched.record_error(HarnessError::UnknownInstance { name });
            return;
        };
        let r = match op {
            CallKind::InstanceStop => nexus.instance_stop(id).await,
            CallKind::InstanceStart => nexus.instance_start(id).await,
            _ => nexus.instance_reboot(id).await,
        };
        sched.complete(step, instance_answer(&r));
        // Whatever the answer, the VMM may have work queued (a lost answer is
        // still applied), so the test's `instance_simulate` runs if there is one.
        if let Some(vmm) = nexus.instance_record(id).and_then(|i| i.propolis_id) {
            let call = Call {
                kind: CallKind::VmmPoke,
                from: Component::User,
                to: Component::SledAgent,
                vmm: Some(vmm),
                arg: Arg::None,
            };
            // From here the user pokes `vmm` and goes on to its next operation,
            // whatever it did and was answered: two users that reach the same
            // poke after different operations are one situation.
            sched.forget_history(super::hash::stable_hash(&("poke", made)));
            let wait = Some(one_poke_at_a_time(&sim_state, vmm));
            let _ = sched.gate(call, wait, None, || sim.poke(vmm), poke_answer).await;
        }
    }
}

/// Faults that are actions of their own: a VMM of any instance the scenario
/// created vanishes from the sim without a report, spending one of the run's
/// faults, or the sled agent restarts and loses its table, spending one of its
/// `restarts`. When and which are the schedule's choices.
pub(super) async fn faults(
    (kind, findings, mut restarts): (ScenarioKind, bool, usize),
    sim: Arc<super::Sim>,
    sched: Arc<Sched>,
    progress: Arc<Mutex<ScenarioProgress>>,
) {
    let names = kind.instance_names();
    loop {
        // A vanish keeps nothing; what is left depends on the fault budget,
        // which the scheduler holds, and on the restarts left.
        sched.forget_history(super::hash::stable_hash(&("faults", restarts)));
        let vanishes = names.iter().map(|&name| {
            let (p, s) = (Arc::clone(&progress), Arc::downgrade(&sim));
            sched::Alt {
                call: env_call(CallKind::VmmVanish, Component::Fault, Component::SledAgent, name),
                // Not while a report of it is under way: the VMM is lost
                // between reports, with nothing of it left in flight. Nor,
                // unless the findings are explored, while auto-restart is
                // starting it (the `restart-unwound` window).
                wait: Some(Box::new(move || {
                    created(&p, name).is_some_and(|id| {
                        (findings || lock(&p).restart_starting != Some(id))
                            && s.upgrade()
                                .is_some_and(|s| s.vmm_of(id).is_some_and(|v| !s.reporting(v)))
                    })
                })),
                costs_fault: true,
            }
        });
        let alts =
            vanishes.chain(std::iter::once(sled_restart(&sim, &progress, findings, restarts)));
        let done = done_call(Component::Fault);
        let Some((i, step)) = sched.offer(alts.collect(), done).await else { return };
        if i == names.len() {
            restarts = restarts.saturating_sub(1);
            sched.complete(step, Answer::Restarted(sim.restart()));
            continue;
        }
        let Some(&name) = names.get(i) else { return };
        let gone = created(&progress, name).and_then(|id| {
            let vmm = sim.vmm_of(id)?;
            sim.vanish(vmm).then_some((vmm, id))
        });
        sched.complete(step, Answer::Vanished(gone));
    }
}
