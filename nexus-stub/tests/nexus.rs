//! NexusStub's rules, one test each, against mocked sled agents.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use nexus_stub::{
    DbVmmState, DeferredSpawner, DiskState, ExternalState, InstanceChange, IntendedState,
    NexusBugs, NexusConfig, NexusError, NexusStub, RestartPolicy, StartNode, TaskSpawner,
    UpdateOutcome, UpdateTask,
};
use sled_agent_api::{
    Clock, Generation, InstanceEnsureBody, InstanceUuid, LogicalClock, MockSledAgentApi,
    NexusApiError, NexusInternalApi, PropolisUuid, SledAgentApi, SledAgentError, SledUuid,
    SledVmmState, VmmPutStateBody, VmmPutStateResponse, VmmRuntimeState, VmmState,
    VmmStateRequested, VmmUnregisterResponse,
};
use watcher::WatcherDatastore;

const SLED: SledUuid = SledUuid::from_u128(1);

struct Harness {
    nexus: Arc<NexusStub<MockSledAgentApi>>,
    updates: Arc<DeferredSpawner>,
}

fn state(state: VmmState, gen: u64) -> SledVmmState {
    SledVmmState {
        vmm_state: VmmRuntimeState {
            state,
            gen: Generation::try_from(gen).expect("valid"),
            time_updated: LogicalClock::default().now(),
        },
    }
}

/// A sled agent that behaves like the sim for one start and one stop: registered
/// at gen 2, Running only queued, Stopped answered with Stopping/3.
fn sim_like_sled() -> MockSledAgentApi {
    let mut sled = MockSledAgentApi::new();
    sled.expect_vmm_register()
        .returning(|_, body| Ok(SledVmmState { vmm_state: body.vmm_runtime }));
    sled.expect_vmm_put_state().returning(|_, body| {
        let s = match body.state {
            VmmStateRequested::Running => state(VmmState::Starting, 2),
            VmmStateRequested::Stopped => state(VmmState::Stopping, 3),
            VmmStateRequested::Reboot => state(VmmState::Rebooting, 3),
        };
        Ok(VmmPutStateResponse { updated_runtime: Some(s) })
    });
    sled
}

fn harness_with(sled: MockSledAgentApi, config: NexusConfig) -> Harness {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let updates = Arc::new(DeferredSpawner::default());
    let nexus = NexusStub::new(
        &log,
        config,
        BTreeMap::from([(SLED, sled)]),
        Arc::new(LogicalClock::default()),
        Arc::clone(&updates) as _,
    );
    Harness { nexus, updates }
}

fn harness() -> Harness {
    harness_with(sim_like_sled(), NexusConfig::default())
}

impl Harness {
    /// Creates and starts an instance; returns it and its VMM.
    async fn started(&self, name: &str) -> (InstanceUuid, PropolisUuid) {
        let view = self.nexus.instance_create(name, true).await.expect("starts");
        (view.id, view.propolis_id.expect("has a VMM"))
    }

    /// A report from the sled agent; returns whether it applied.
    async fn report(&self, vmm: PropolisUuid, s: VmmState, gen: u64) -> bool {
        let before = self.nexus.vmm_writes().len();
        self.nexus.cpapi_instances_put(vmm, state(s, gen)).await.expect("known VMM");
        self.nexus.vmm_writes()[before].applied
    }

    /// Runs the update steps started so far.
    async fn run_updates(&self) -> Vec<UpdateOutcome> {
        let mut out = Vec::new();
        for (_, task) in self.updates.take() {
            out.push(task.await.expect("update step runs"));
        }
        out
    }

    fn stored(&self, vmm: PropolisUuid) -> (DbVmmState, u64) {
        let r = self.nexus.vmm(vmm).expect("VMM row");
        (r.state, r.gen.as_u64())
    }

    fn external(&self, id: InstanceUuid) -> ExternalState {
        self.nexus.instance(id).expect("instance").state
    }
}

#[tokio::test]
async fn start_registers_at_gen_2_and_running_is_only_queued() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    assert_eq!(h.stored(vmm), (DbVmmState::Reported(VmmState::Starting), 2));
    assert_eq!(h.external(inst), ExternalState::Starting);
    assert_eq!(h.nexus.active_vmm_state(inst), Some(DbVmmState::Reported(VmmState::Starting)));
    assert_eq!(h.nexus.active_vmm_state(InstanceUuid::from_u128(99)), None);
    let applied: Vec<_> =
        h.nexus.vmm_writes().iter().map(|w| (w.gen.as_u64(), w.applied)).collect();
    // Starting/2 over Creating/1 applies; the put-state answer Starting/2 is stale.
    assert_eq!(applied, [(2, true), (2, false)]);
}

#[tokio::test]
async fn writes_apply_only_with_a_newer_generation() {
    let h = harness();
    let (_, vmm) = h.started("inst").await;
    assert!(h.report(vmm, VmmState::Running, 4).await, "newer applies");
    assert!(!h.report(vmm, VmmState::Stopping, 4).await, "equal is stale");
    assert!(!h.report(vmm, VmmState::Starting, 3).await, "older is stale");
    assert_eq!(h.stored(vmm), (DbVmmState::Reported(VmmState::Running), 4));
}

#[tokio::test]
async fn a_stale_terminal_write_triggers_nothing() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    assert!(h.report(vmm, VmmState::Stopping, 6).await);
    assert!(!h.report(vmm, VmmState::Destroyed, 6).await);
    assert!(h.run_updates().await.is_empty(), "no update step for a stale write");
    assert_eq!(h.external(inst), ExternalState::Stopping);
}

#[tokio::test]
async fn destroyed_runs_the_update_step_to_stopped() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    h.nexus.instance_stop(inst).await.expect("stops");
    assert_eq!(h.stored(vmm), (DbVmmState::Reported(VmmState::Stopping), 3));
    assert!(h.report(vmm, VmmState::Destroyed, 7).await);
    // Until the update step runs, the user sees Stopping.
    assert_eq!(h.external(inst), ExternalState::Stopping);
    assert_eq!(h.run_updates().await, [UpdateOutcome::Stopped { propolis_id: vmm }]);
    assert_eq!(h.external(inst), ExternalState::Stopped);
    let row = h.nexus.vmm(vmm).expect("row kept");
    assert!(row.deleted);
    assert!(!h.report(vmm, VmmState::Failed, 8).await, "a deleted row takes no writes");
}

#[tokio::test]
async fn failed_runs_the_update_step_to_failed() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    assert!(h.report(vmm, VmmState::Failed, 3).await);
    assert_eq!(h.run_updates().await, [UpdateOutcome::Failed { propolis_id: vmm }]);
    assert_eq!(h.external(inst), ExternalState::Failed);
}

#[tokio::test]
async fn the_7282_order_of_writes_fails_the_instance() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    h.nexus.instance_stop(inst).await.expect("stops");
    assert!(h.report(vmm, VmmState::Stopping, 6).await);
    // The watcher's Failed at listed gen 6 + 1 commits first ...
    let w = h.nexus.vmm_update_runtime(vmm, state(VmmState::Failed, 7)).await.expect("writes");
    assert!(w.updated && w.update_needed);
    // ... so the sim's real Destroyed/7 is stale.
    assert!(!h.report(vmm, VmmState::Destroyed, 7).await);
    // The watcher runs the update step itself; nothing was left to a spawner.
    assert!(h.run_updates().await.is_empty());
    assert_eq!(h.nexus.rows_deleted(), 0);
    h.nexus.run_instance_update(inst).await.expect("updates");
    assert_eq!(h.external(inst), ExternalState::Failed);
    // The update step's deletion is counted, once.
    assert_eq!(h.nexus.rows_deleted(), 1);
    h.nexus.run_instance_update(inst).await.expect("nothing left to update");
    assert_eq!(h.nexus.rows_deleted(), 1);
}

#[tokio::test]
async fn seeded_fault_skips_the_generation_check() {
    let config = NexusConfig {
        bugs: NexusBugs { skip_generation_check: true, ..NexusBugs::default() },
        ..NexusConfig::default()
    };
    let h = harness_with(sim_like_sled(), config);
    let (_, vmm) = h.started("inst").await;
    assert!(h.report(vmm, VmmState::Running, 4).await);
    assert!(h.report(vmm, VmmState::Starting, 3).await, "older applies under the fault");
}

/// A sled agent that registers, queues Running, and answers every other request
/// with `NoSuchVmm`, after running `before_404` (a report racing the request).
fn forgetful_sled(before_404: impl Fn(PropolisUuid) + Send + Sync + 'static) -> MockSledAgentApi {
    let mut sled = MockSledAgentApi::new();
    sled.expect_vmm_register().returning(|_, b| Ok(SledVmmState { vmm_state: b.vmm_runtime }));
    sled.expect_vmm_put_state().returning(move |id, b| match b.state {
        VmmStateRequested::Running => Ok(VmmPutStateResponse { updated_runtime: None }),
        _ => {
            before_404(id);
            Err(SledAgentError::NoSuchVmm { propolis_id: id })
        }
    });
    sled
}

#[tokio::test]
async fn stop_answered_with_no_such_vmm_marks_the_vmm_failed_at_once() {
    let h = harness_with(forgetful_sled(|_| {}), NexusConfig::default());
    let (inst, vmm) = h.started("inst").await;
    let e = h.nexus.instance_stop(inst).await.expect_err("the sled agent's 404 is the answer");
    assert!(matches!(e, NexusError::SledAgent { source: SledAgentError::NoSuchVmm { .. }, .. }));
    // Failed at the generation the stop read (2) + 1, and the update step awaited.
    assert_eq!(h.stored(vmm), (DbVmmState::Reported(VmmState::Failed), 3));
    assert_eq!(h.external(inst), ExternalState::Failed);
    assert!(h.run_updates().await.is_empty(), "run synchronously, not spawned");
}

/// A stop whose request meets a 404 after the VMM's Destroyed was recorded: the
/// Failed write is based on what the stop read, so it is stale (omicron's
/// `mark_vmm_failed`); the seeded bug bases it on what is stored then.
async fn stop_racing_a_destroyed_report(bugs: NexusBugs) -> (DbVmmState, u64) {
    let slot: Arc<std::sync::OnceLock<std::sync::Weak<NexusStub<MockSledAgentApi>>>> =
        Arc::default();
    let reporter = Arc::clone(&slot);
    let sled = forgetful_sled(move |id| {
        if let Some(n) = reporter.get().and_then(std::sync::Weak::upgrade) {
            n.process_vmm_update(id, state(VmmState::Destroyed, 7)).expect("known VMM");
        }
    });
    let h = harness_with(sled, NexusConfig { bugs, ..NexusConfig::default() });
    slot.set(Arc::downgrade(&h.nexus)).expect("set once");
    let (inst, vmm) = h.started("inst").await;
    assert!(h.nexus.instance_stop(inst).await.is_err());
    h.stored(vmm)
}

#[tokio::test]
async fn a_404_after_destroyed_was_recorded_leaves_destroyed() {
    let clean = stop_racing_a_destroyed_report(NexusBugs::default()).await;
    assert_eq!(clean, (DbVmmState::Reported(VmmState::Destroyed), 7));
    let bug = NexusBugs { mark_failed_at_stored_gen: true, ..NexusBugs::default() };
    let seeded = stop_racing_a_destroyed_report(bug).await;
    assert_eq!(seeded, (DbVmmState::Reported(VmmState::Failed), 8));
}

#[tokio::test]
async fn reboot_goes_to_the_sled_agent_and_is_refused_without_a_vmm() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    let view = h.nexus.instance_reboot(inst).await.expect("a VMM to reboot");
    assert_eq!(view.state, ExternalState::Rebooting);
    assert_eq!(h.stored(vmm), (DbVmmState::Reported(VmmState::Rebooting), 3));
    assert_eq!(h.nexus.instance_record(inst).unwrap().intended, nexus_stub::IntendedState::Running);
    // Stopped, with no VMM: refused, and nothing logged as requested.
    let h = harness();
    let view = h.nexus.instance_create("idle", false).await.unwrap();
    let e = h.nexus.instance_reboot(view.id).await.expect_err("nothing to reboot");
    assert!(matches!(e, NexusError::InstanceNotRebootable { state: ExternalState::Stopped, .. }));
    assert!(h.nexus.instance_log().is_empty());
}

#[tokio::test]
async fn start_refuses_a_stopping_instance_and_accepts_a_running_one_as_done() {
    let h = harness();
    let (inst, _) = h.started("inst").await;
    h.nexus.instance_stop(inst).await.unwrap();
    let e = h.nexus.instance_start(inst).await.expect_err("still stopping");
    assert!(matches!(e, NexusError::InstanceNotStartable { state: ExternalState::Stopping, .. }));
    // As omicron's, the start records the user's intent before it is refused.
    assert_eq!(h.nexus.instance(inst).unwrap().intended, IntendedState::Running);
    let h = harness();
    let (inst, _) = h.started("inst").await;
    let before = h.nexus.instance_log().len();
    let view = h.nexus.instance_start(inst).await.expect("already starting: nothing to do");
    assert_eq!(view.propolis_id, h.nexus.instance(inst).unwrap().propolis_id);
    // No request is logged for a no-op, only that the user wants it running.
    let log = h.nexus.instance_log();
    let changes: Vec<_> = log[before..].iter().map(|e| e.change).collect();
    assert_eq!(changes, [InstanceChange::StartIntended]);
}

#[tokio::test]
async fn a_start_whose_ensure_running_fails_unwinds_and_unregisters() {
    let mut sled = MockSledAgentApi::new();
    sled.expect_vmm_register().returning(|_, b| Ok(SledVmmState { vmm_state: b.vmm_runtime }));
    sled.expect_vmm_put_state()
        .returning(|id, _| Err(SledAgentError::NoSuchVmm { propolis_id: id }));
    sled.expect_vmm_unregister()
        .times(1)
        .returning(|_| Ok(VmmUnregisterResponse { updated_runtime: None }));
    let h = harness_with(sled, NexusConfig::default());
    let e = h.nexus.instance_create("inst", true).await.expect_err("the start fails");
    assert!(matches!(e, NexusError::SledAgent { operation: "vmm_put_state", .. }));
    let vmm = h.nexus.vmms()[0];
    // Unwound, not Failed: omicron's start saga marks nothing failed here.
    assert_eq!((vmm.state, vmm.deleted), (DbVmmState::SagaUnwound, true));
    assert_eq!(h.nexus.rows_deleted(), 1, "the unwind's deletion is counted");
    let inst = h.nexus.instances()[0].id;
    assert_eq!(h.external(inst), ExternalState::Stopped);
    let last = h.nexus.instance_log().last().map(|e| e.change);
    assert_eq!(last, Some(InstanceChange::RequestEnded { ok: false }));
    assert_eq!(h.nexus.reservations(), [], "the unwind lets go of the sled");
}

#[tokio::test]
async fn a_failed_registration_unwinds_the_start() {
    let mut sled = MockSledAgentApi::new();
    sled.expect_vmm_register().returning(|_, _| {
        Err(SledAgentError::UnexpectedResponse {
            operation: "vmm_register",
            status: 500,
            message: "too many vCPUs".into(),
        })
    });
    let h = harness_with(sled, NexusConfig::default());
    let err = h.nexus.instance_create("inst", true).await.expect_err("start fails");
    assert!(matches!(err, NexusError::SledAgent { operation: "vmm_register", .. }), "{err:?}");
    let inst = h.nexus.instances()[0].clone();
    assert_eq!((inst.state, inst.propolis_id), (ExternalState::Stopped, None));
    assert_eq!(h.nexus.reservations(), [], "the unwind lets go of the sled");
}

#[tokio::test]
async fn disk_attach_and_detach_follow_the_test_rules() {
    let h = harness();
    let disk = h.nexus.disk_create("d").expect("created").id;
    let (i1, v1) = h.started("i1").await;
    let (i2, v2) = h.started("i2").await;

    let e = h.nexus.disk_attach(disk, i1).expect_err("instance is running");
    assert!(
        matches!(e, NexusError::InstanceNotStopped { state: ExternalState::Starting, .. }),
        "{e:?}"
    );

    for (inst, vmm) in [(i1, v1), (i2, v2)] {
        h.nexus.instance_stop(inst).await.expect("stops");
        h.report(vmm, VmmState::Destroyed, 7).await;
    }
    h.run_updates().await;

    let attached = |to| DiskState::Attached(to);
    assert_eq!(h.nexus.disk_attach(disk, i1).expect("attach").state, attached(i1));
    assert_eq!(h.nexus.disk_attach(disk, i1).expect("idempotent").state, attached(i1));
    let e = h.nexus.disk_attach(disk, i2).expect_err("attached to i1");
    assert!(
        matches!(e, NexusError::DiskAttachedToAnother { attached_to, .. } if attached_to == i1)
    );
    let e = h.nexus.disk_detach(disk, i2).expect_err("not attached to i2");
    assert!(matches!(e, NexusError::DiskAttachedToAnother { .. }), "{e:?}");
    assert_eq!(h.nexus.disk_detach(disk, i1).expect("detach").state, DiskState::Detached);
    for inst in [i1, i2] {
        assert_eq!(h.nexus.disk_detach(disk, inst).expect("idempotent").state, DiskState::Detached);
    }
    assert_eq!(h.nexus.disk_attach(disk, i2).expect("attach").state, attached(i2));
    assert!(h.nexus.disk_attach(disk, i1).is_err());
}

/// A saga executor that holds each user's start saga until told to go on, as a
/// busy executor may: auto-restart can run in between.
#[derive(Debug, Default)]
struct HeldStarts {
    updates: Arc<DeferredSpawner>,
    go: tokio::sync::Notify,
}

impl TaskSpawner for HeldStarts {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask) {
        self.updates.spawn_update(instance_id, task);
    }

    fn start_node<'a>(&'a self, _: InstanceUuid, node: StartNode<'a>) -> StartNode<'a> {
        Box::pin(async move {
            self.go.notified().await;
            node.await
        })
    }
}

/// An instance that failed, meant to run; a user's start of it allowed and held
/// before its saga; an auto-restart pass; then the user's saga. Returns what the
/// user's start answered, the instance's log from the failure on, and the
/// reservations and VMM rows left.
async fn a_users_start_meets_auto_restart(
    bugs: NexusBugs,
) -> (Result<ExternalState, NexusError>, Vec<InstanceChange>, usize, Vec<DbVmmState>, usize) {
    let held = Arc::new(HeldStarts::default());
    let nexus = NexusStub::new(
        &slog::Logger::root(slog::Discard, slog::o!()),
        NexusConfig { bugs, ..NexusConfig::default() },
        BTreeMap::from([(SLED, sim_like_sled())]),
        Arc::new(LogicalClock::default()),
        Arc::clone(&held) as _,
    );
    let h = Harness { nexus, updates: Arc::clone(&held.updates) };
    let (inst, vmm) = h.started("inst").await;
    h.report(vmm, VmmState::Failed, 3).await;
    h.run_updates().await;
    assert!(h.nexus.reservations().is_empty(), "the update step released it");
    let from = h.nexus.instance_log().len();

    let n = Arc::clone(&h.nexus);
    let user = tokio::spawn(async move { n.instance_start(inst).await });
    tokio::task::yield_now().await;
    assert_eq!(h.nexus.reincarnation_pass().await.started, 1);
    held.go.notify_one();
    let answer = user.await.unwrap().map(|v| v.state);
    let log = h.nexus.instance_log()[from..].iter().map(|e| e.change).collect();
    let rows = h.nexus.vmms().iter().filter(|v| v.id != vmm).map(|v| v.state).collect();
    // Rows deleted: the first VMM's, by the update step, and any the start unwound.
    let deleted = h.nexus.rows_deleted();
    (answer, log, h.nexus.reservations().len(), rows, deleted)
}

/// omicron #10479: the user's start fails at its reservation, having made
/// nothing; before it, the start reserved too, lost at the link and unwound.
#[tokio::test]
async fn a_start_racing_auto_restart_fails_at_its_reservation() {
    let (answer, log, reservations, rows, deleted) =
        a_users_start_meets_auto_restart(NexusBugs::default()).await;
    assert_eq!(deleted, 1, "the update step's");
    assert!(matches!(answer, Err(NexusError::InstanceAlreadyStarting { .. })), "{answer:?}");
    let reserved = log.iter().filter(|c| matches!(c, InstanceChange::Reserved { .. })).count();
    assert_eq!((reserved, reservations), (1, 1), "{log:?}");
    assert_eq!(rows, [DbVmmState::Reported(VmmState::Starting)], "only auto-restart's VMM");

    let bugs = NexusBugs { duplicate_reservations: true, ..NexusBugs::default() };
    let (answer, log, reservations, rows, deleted) = a_users_start_meets_auto_restart(bugs).await;
    assert_eq!(deleted, 2, "the update step's and the loser's unwind");
    assert!(matches!(answer, Err(NexusError::InstanceChangedState { .. })), "{answer:?}");
    let reserved: Vec<_> = log
        .iter()
        .filter_map(|c| match c {
            InstanceChange::Reserved { propolis_id } => Some(*propolis_id),
            _ => None,
        })
        .collect();
    let [first, propolis_id] = reserved[..] else { panic!("two reservations: {log:?}") };
    assert_ne!(first, propolis_id);
    assert_eq!(log.last(), Some(&InstanceChange::Released { propolis_id }), "the loser's own");
    assert_eq!(reservations, 1);
    let unwound = [DbVmmState::Reported(VmmState::Starting), DbVmmState::SagaUnwound];
    assert_eq!(rows, unwound, "the loser's VMM row is unwound");
}

/// Auto-restart's saga asks nothing before it reserves, as omicron's
/// reincarnation does: an instance a user started meanwhile makes it fail there.
#[tokio::test]
async fn auto_restart_of_an_instance_started_meanwhile_fails_at_its_reservation() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    h.report(vmm, VmmState::Failed, 3).await;
    h.run_updates().await;
    h.nexus.instance_start(inst).await.unwrap();
    let r = h.nexus.reincarnate(inst).await;
    assert!(matches!(r, Err(NexusError::InstanceAlreadyStarting { .. })), "{r:?}");
    assert_eq!(h.nexus.instance(inst).unwrap().auto_restarts, 0);
}

#[tokio::test]
async fn auto_restart_policy_decides_for_user_stopped_instances() {
    for (policy, restarted) in [(RestartPolicy::Current, 0), (RestartPolicy::Policy2024, 1)] {
        let h = harness_with(
            sim_like_sled(),
            NexusConfig { restart_policy: policy, ..NexusConfig::default() },
        );
        let (inst, vmm) = h.started("inst").await;
        h.nexus.instance_stop(inst).await.expect("stops");
        h.report(vmm, VmmState::Failed, 7).await;
        h.run_updates().await;
        let counts = h.nexus.reincarnation_pass().await;
        assert_eq!(counts.started, restarted, "{policy:?}");
        assert_eq!(h.nexus.instance(inst).unwrap().auto_restarts, restarted as u32);
    }
}

#[tokio::test]
async fn auto_restart_restarts_an_instance_meant_to_run_once_per_cooldown() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    h.report(vmm, VmmState::Failed, 3).await;
    h.run_updates().await;
    assert_eq!(h.nexus.reincarnation_pass().await.started, 1);
    assert_eq!(h.external(inst), ExternalState::Starting);
    let new_vmm = h.nexus.instance(inst).unwrap().propolis_id.expect("new VMM");
    assert_ne!(new_vmm, vmm);
    h.report(new_vmm, VmmState::Failed, 3).await;
    h.run_updates().await;
    assert_eq!(h.nexus.reincarnation_pass().await.found, 0, "cooldown");
}

/// A sled agent whose registration waits until the test lets it go, so a start
/// can be caught with its VMM row still Creating.
struct HeldRegistration {
    inner: MockSledAgentApi,
    go: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl SledAgentApi for HeldRegistration {
    async fn vmm_register(
        &self,
        id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        self.go.notified().await;
        self.inner.vmm_register(id, body).await
    }
    async fn vmm_unregister(
        &self,
        id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        self.inner.vmm_unregister(id).await
    }
    async fn vmm_put_state(
        &self,
        id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        self.inner.vmm_put_state(id, body).await
    }
    async fn vmm_get_state(&self, id: PropolisUuid) -> Result<SledVmmState, SledAgentError> {
        self.inner.vmm_get_state(id).await
    }
}

async fn listed<S: SledAgentApi + 'static>(nexus: &NexusStub<S>) -> Vec<PropolisUuid> {
    nexus.vmm_list_for_watcher().await.unwrap().iter().map(|w| w.propolis_id).collect()
}

#[tokio::test]
async fn watcher_listing_skips_creating_destroyed_and_deleted() {
    let go = Arc::new(tokio::sync::Notify::new());
    let sled = HeldRegistration { inner: sim_like_sled(), go: Arc::clone(&go) };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let updates = Arc::new(DeferredSpawner::default());
    let nexus = NexusStub::new(
        &log,
        NexusConfig::default(),
        BTreeMap::from([(SLED, sled)]),
        Arc::new(LogicalClock::default()),
        Arc::clone(&updates) as _,
    );
    let start = |name: &'static str| {
        let (nexus, go) = (Arc::clone(&nexus), Arc::clone(&go));
        async move {
            let task = tokio::spawn(async move { nexus.instance_create(name, true).await });
            tokio::task::yield_now().await;
            go.notify_one();
            task.await.unwrap().unwrap().propolis_id.unwrap()
        }
    };
    let live = start("live").await;
    let destroyed = start("destroyed").await;
    let failed = start("failed").await;
    let deleted = start("deleted").await;
    let report = |vmm, s, gen| nexus.cpapi_instances_put(vmm, state(s, gen));
    report(destroyed, VmmState::Destroyed, 7).await.unwrap();
    report(failed, VmmState::Failed, 3).await.unwrap();
    report(deleted, VmmState::Failed, 3).await.unwrap();
    // Only the last one's update step runs: its row is deleted, the others are not.
    let mut queued = updates.take();
    let (_, last) = queued.pop().unwrap();
    last.await.unwrap();
    assert!(nexus.vmm(deleted).unwrap().deleted);
    let d = nexus.vmm(destroyed).unwrap();
    assert_eq!((d.state, d.deleted), (DbVmmState::Reported(VmmState::Destroyed), false));

    // A start caught before its registration: the row exists, Creating.
    let held = {
        let nexus = Arc::clone(&nexus);
        tokio::spawn(async move { nexus.instance_create("creating", true).await })
    };
    tokio::task::yield_now().await;
    let creating = nexus.vmms().into_iter().find(|v| v.state == DbVmmState::Creating);
    let creating = creating.expect("a Creating row while registration is held").id;

    // Live and undeleted Failed rows are watched; Creating, Destroyed and deleted are not.
    assert_eq!(listed(&*nexus).await, [live, failed]);
    go.notify_one();
    held.await.unwrap().unwrap();
    assert_eq!(listed(&*nexus).await, [live, failed, creating]);

    let config = NexusConfig {
        bugs: NexusBugs { list_terminal_for_watcher: true, ..NexusBugs::default() },
        ..NexusConfig::default()
    };
    let h = harness_with(sim_like_sled(), config);
    let (_, vmm) = h.started("inst").await;
    h.report(vmm, VmmState::Destroyed, 7).await;
    assert_eq!(listed(&*h.nexus).await, [vmm], "the seeded fault lists the Destroyed row");
}

#[tokio::test]
async fn bad_input_gets_typed_errors() {
    let h = harness();
    let unknown_vmm = PropolisUuid::from_u128(0x999);
    let e =
        h.nexus.cpapi_instances_put(unknown_vmm, state(VmmState::Running, 4)).await.unwrap_err();
    // omicron's answer: a 500, which a sled agent sends again.
    assert!(matches!(e, NexusApiError::UnexpectedResponse { status: 500, .. }), "{e:?}");
    assert!(e.retryable());
    let unknown = InstanceUuid::from_u128(0x998);
    assert!(matches!(h.nexus.instance_stop(unknown).await, Err(NexusError::NoSuchInstance { .. })));
    h.started("dup").await;
    assert!(matches!(
        h.nexus.instance_create("dup", false).await,
        Err(NexusError::NameInUse { .. })
    ));
    h.nexus.disk_create("d").unwrap();
    assert!(matches!(h.nexus.disk_create("d"), Err(NexusError::NameInUse { .. })));
}

fn hash_of<S: SledAgentApi + 'static>(nexus: &NexusStub<S>) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    nexus.hash_state(&mut h, chrono::TimeDelta::MAX);
    std::hash::Hasher::finish(&h)
}

#[tokio::test]
async fn the_instance_log_keeps_every_change_in_order() {
    let h = harness();
    let (inst, vmm) = h.started("inst").await;
    h.nexus.instance_stop(inst).await.unwrap();
    h.report(vmm, VmmState::Failed, 4).await;
    h.run_updates().await;
    let vmm2 = h.nexus.instance_start(inst).await.unwrap().propolis_id.unwrap();
    let changes: Vec<_> =
        h.nexus.instance_log().iter().map(|e| (e.instance_id, e.change)).collect();
    let ended = InstanceChange::RequestEnded { ok: true };
    let started = InstanceChange::StartRequested { auto_restart: false };
    let reserved = |propolis_id| InstanceChange::Reserved { propolis_id };
    assert_eq!(
        changes,
        [
            (inst, reserved(vmm)),
            (inst, started),
            (inst, ended),
            (inst, InstanceChange::StopRequested),
            (inst, ended),
            (inst, InstanceChange::Failed),
            (inst, InstanceChange::Released { propolis_id: vmm }),
            (inst, InstanceChange::StartIntended),
            (inst, reserved(vmm2)),
            (inst, started),
            (inst, ended),
        ]
    );
    let mut rest = Vec::new();
    assert_eq!(h.nexus.visit_instance_log_since(8, |e| rest.push(e.change)), 11);
    assert_eq!(rest, [reserved(vmm2), started, ended]);

    // A Destroyed VMM leaves the instance stopped; auto-restart's start says so.
    let h = harness_with(
        sim_like_sled(),
        NexusConfig { restart_policy: RestartPolicy::Policy2024, ..NexusConfig::default() },
    );
    let (_, vmm) = h.started("inst").await;
    h.report(vmm, VmmState::Destroyed, 7).await;
    h.run_updates().await;
    let (_, vmm2) = h.started("other").await;
    h.report(vmm2, VmmState::Failed, 3).await;
    h.run_updates().await;
    assert_eq!(h.nexus.reincarnation_pass().await.started, 1);
    let changes: Vec<_> = h.nexus.instance_log().iter().map(|e| e.change).collect();
    assert_eq!(changes[3], InstanceChange::Stopped);
    assert_eq!(changes.last(), Some(&InstanceChange::StartRequested { auto_restart: true }));
}

#[tokio::test]
async fn a_failed_auto_restart_is_counted_as_an_error() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The first registration succeeds; auto-restart's fails.
    let mut sled = MockSledAgentApi::new();
    let seen = Arc::clone(&calls);
    sled.expect_vmm_register().returning(move |_, body| {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Ok(SledVmmState { vmm_state: body.vmm_runtime })
        } else {
            Err(SledAgentError::UnexpectedResponse {
                operation: "vmm_register",
                status: 500,
                message: "sled full".into(),
            })
        }
    });
    sled.expect_vmm_put_state().returning(|_, _| {
        Ok(VmmPutStateResponse { updated_runtime: Some(state(VmmState::Starting, 2)) })
    });
    let h = harness_with(sled, NexusConfig::default());
    let (inst, vmm) = h.started("inst").await;
    h.report(vmm, VmmState::Failed, 3).await;
    h.run_updates().await;
    let counts = h.nexus.reincarnation_pass().await;
    assert_eq!((counts.found, counts.started, counts.errors), (1, 0, 1));
    // Unwound to stopped, as omicron's undo leaves it (#9174): the log says so.
    let last = h.nexus.instance_log().last().map(|e| e.change);
    assert_eq!(last, Some(InstanceChange::StartUnwound { auto_restart: true }));
    assert_eq!(h.external(inst), ExternalState::Stopped);
}

#[tokio::test]
async fn the_state_hash_follows_the_records() {
    let (a, b) = (harness(), harness());
    assert_eq!(hash_of(&a.nexus), hash_of(&b.nexus));
    let (_, vmm) = a.started("inst").await;
    b.started("inst").await;
    assert_eq!(hash_of(&a.nexus), hash_of(&b.nexus), "the same operations, the same state");
    let before = hash_of(&a.nexus);
    a.report(vmm, VmmState::Running, 4).await;
    assert_ne!(hash_of(&a.nexus), before);
}

#[tokio::test]
async fn the_tokio_spawner_counts_update_steps_in_flight() {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let spawner = nexus_stub::TokioSpawner::new(&log).unwrap();
    let go = Arc::new(tokio::sync::Notify::new());
    let wait = Arc::clone(&go);
    spawner.spawn_update(
        InstanceUuid::from_u128(1),
        Box::pin(async move {
            wait.notified().await;
            Ok(UpdateOutcome::NothingToDo)
        }),
    );
    assert_eq!(spawner.in_flight(), 1);
    go.notify_one();
    for _ in 0..1000 {
        if spawner.in_flight() == 0 {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the update step never finished");
}

/// The cheap reads a harness polls say what the full reads say, and ids carry
/// their kind in the top bits and a counter below, so every run mints the same.
#[tokio::test]
async fn cheap_reads_agree_with_the_records_and_ids_are_minted_in_order() {
    let config =
        NexusConfig { restart_policy: RestartPolicy::Policy2024, ..NexusConfig::default() };
    let h = harness_with(sim_like_sled(), config);
    assert_eq!(h.nexus.config(), config);
    let (a, vmm_a) = h.started("a").await;
    let (b, vmm_b) = h.started("b").await;
    for id in [a, b] {
        let view = h.nexus.instance(id).unwrap();
        assert_eq!(h.nexus.instance_status(id), Some((view.state, view.auto_restarts)));
    }
    assert_eq!(h.nexus.instance_status(InstanceUuid::from_u128(0x99)), None);
    let ids = [
        a.into_untyped().as_u128(),
        vmm_a.into_untyped().as_u128(),
        b.into_untyped().as_u128(),
        vmm_b.into_untyped().as_u128(),
    ];
    let kind = |i: usize| ids[i] >> 96;
    let count = |i: usize| ids[i] & ((1 << 96) - 1);
    assert_eq!(kind(0), kind(2), "instances share a kind");
    assert_eq!(kind(1), kind(3), "VMMs share a kind");
    assert_ne!(kind(0), kind(1), "instances and VMMs do not");
    assert!(count(0) < count(1) && count(1) < count(2) && count(2) < count(3));

    assert!(h.report(vmm_a, VmmState::Running, 4).await);
    let writes = h.nexus.vmm_writes();
    assert!(writes.len() >= 3, "{writes:?}");
    assert_eq!(h.nexus.vmm_writes_len(), writes.len());
    let mut seen = Vec::new();
    assert_eq!(h.nexus.visit_writes_since(1, |w| seen.push(*w)), writes.len());
    assert_eq!(seen, writes[1..]);
    assert_eq!(h.nexus.visit_writes_since(writes.len() + 5, |_| panic!("nothing")), writes.len());
}

#[test]
fn restart_policies_have_the_command_line_names() {
    assert_eq!(RestartPolicy::Current.label(), "current");
    assert_eq!(RestartPolicy::Policy2024.label(), "2024");
}

/// A stop the sled agent refused leaves the instance running but meant to be
/// stopped; a user's start then has nothing to start, but records that the user
/// wants it running again (omicron writes the intent before deciding).
#[tokio::test]
async fn a_users_start_of_a_going_instance_records_the_intent_only() {
    let mut sled = MockSledAgentApi::new();
    sled.expect_vmm_register()
        .returning(|_, body| Ok(SledVmmState { vmm_state: body.vmm_runtime }));
    sled.expect_vmm_put_state().returning(|_, body| match body.state {
        VmmStateRequested::Stopped => Err(SledAgentError::UnexpectedResponse {
            operation: "vmm_put_state",
            status: 503,
            message: "busy".into(),
        }),
        _ => Ok(VmmPutStateResponse { updated_runtime: Some(state(VmmState::Starting, 2)) }),
    });
    let h = harness_with(sled, NexusConfig::default());
    let (inst, vmm) = h.started("inst").await;
    let intended = |h: &Harness| h.nexus.instance_record(inst).unwrap().intended;
    assert!(h.nexus.instance_stop(inst).await.is_err(), "the sled agent refused");
    assert_eq!(intended(&h), nexus_stub::IntendedState::Stopped);
    assert_eq!(h.stored(vmm), (DbVmmState::Reported(VmmState::Starting), 2), "nothing written");
    let view = h.nexus.instance_start(inst).await.expect("already going: a no-op");
    assert_eq!((view.state, view.propolis_id), (ExternalState::Starting, Some(vmm)));
    assert_eq!(intended(&h), nexus_stub::IntendedState::Running);
    assert_eq!(h.nexus.vmms().len(), 1, "no second VMM");
}

/// Stopping a Failed instance (its VMM already unlinked) puts it at rest: no VMM,
/// a new instance generation, a Stopped entry in the log; a second stop changes
/// nothing.
#[tokio::test]
async fn stopping_a_failed_instance_puts_it_at_rest() {
    let h = harness_with(forgetful_sled(|_| {}), NexusConfig::default());
    let (inst, _) = h.started("inst").await;
    let _ = h.nexus.instance_stop(inst).await;
    assert_eq!(h.external(inst), ExternalState::Failed);
    let gen = h.nexus.instance_record(inst).unwrap().gen;
    let stopped = |h: &Harness| {
        let log = h.nexus.instance_log();
        log.iter().filter(|e| e.instance_id == inst && e.change == InstanceChange::Stopped).count()
    };
    assert_eq!(stopped(&h), 0);
    let view = h.nexus.instance_stop(inst).await.expect("a Failed instance stops at once");
    assert_eq!((view.state, view.propolis_id), (ExternalState::Stopped, None));
    let after = h.nexus.instance_record(inst).unwrap();
    assert_eq!(after.gen, gen.next());
    assert_eq!(stopped(&h), 1);
    h.nexus.instance_stop(inst).await.expect("already stopped");
    assert_eq!(h.nexus.instance_record(inst).unwrap().gen, after.gen, "nothing more");
    assert_eq!(stopped(&h), 1);
}

/// The read generations of requests in flight are part of the state hash, and a
/// request that ended leaves none behind: two stops the sled agent answers
/// without a new state leave the same hash.
#[tokio::test]
async fn a_finished_request_leaves_no_read_generation_behind() {
    let mut sled = MockSledAgentApi::new();
    sled.expect_vmm_register().returning(|_, b| Ok(SledVmmState { vmm_state: b.vmm_runtime }));
    sled.expect_vmm_put_state().returning(|_, _| Ok(VmmPutStateResponse { updated_runtime: None }));
    let h = harness_with(sled, NexusConfig::default());
    let (inst, _) = h.started("inst").await;
    h.nexus.instance_stop(inst).await.expect("stops");
    let once = hash_of(&h.nexus);
    h.nexus.instance_stop(inst).await.expect("stops again");
    assert_eq!(hash_of(&h.nexus), once);
}

/// The binary refuses, in one line, a malformed URL, period or log level at start-up (exit 2,
/// saying which flag and why) rather than serving with it.
#[test]
fn the_binary_refuses_bad_flags_at_start_up() {
    let sled = ["--sled", "http://127.0.0.1:1"];
    for (args, why) in [
        (vec!["--sled", "not-a-url"], "not a URL"),
        (vec!["--sled", "http://"], "not a URL"),
        ([&sled[..], &["--watcher-period-ms", "0"]].concat(), "not in 1.."),
        ([&sled[..], &["--watcher-concurrency", "65"]].concat(), "not in 1..=64"),
        ([&sled[..], &["--log-level", "loud"]].concat(), "one of critical"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nexus-stub"))
            .args(&args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: invalid value") && err.contains(why), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

/// The background tasks run at start and then once per period, each on its own
/// period, and stop when dropped: the watcher asks the sled agent at 0 s and
/// 30 s; reincarnation restarts an instance that failed in between at 60 s,
/// not before.
#[tokio::test(start_paused = true)]
async fn background_tasks_run_on_their_periods_until_dropped() {
    use nexus_stub::background::{self, Periods};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let config = NexusConfig { restart_cooldown: chrono::TimeDelta::zero(), ..Default::default() };
    let h = harness_with(sim_like_sled(), config);
    let (inst, vmm) = h.started("inst").await;
    let asked = Arc::new(AtomicUsize::new(0));
    let mut sled = MockSledAgentApi::new();
    let counter = Arc::clone(&asked);
    sled.expect_vmm_get_state().returning(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(state(VmmState::Starting, 2))
    });
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let watcher = watcher::InstanceWatcher::new(
        &log,
        Arc::clone(&h.nexus),
        BTreeMap::from([(SLED, sled)]),
        Arc::new(LogicalClock::default()),
    );
    let tasks = background::start(&log, Arc::clone(&h.nexus), watcher, Periods::default());
    let at =
        |secs| tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(secs));
    at(1).await;
    assert_eq!(asked.load(Ordering::SeqCst), 1, "a pass at start");
    at(28).await;
    assert_eq!(asked.load(Ordering::SeqCst), 1, "none before the period");
    at(2).await;
    assert_eq!(asked.load(Ordering::SeqCst), 2, "one at 30 s");
    h.report(vmm, VmmState::Failed, 3).await;
    h.run_updates().await;
    assert_eq!(h.external(inst), ExternalState::Failed);
    at(28).await;
    assert_eq!(h.nexus.instance(inst).unwrap().auto_restarts, 0, "not before 60 s");
    at(2).await;
    assert_eq!(h.nexus.instance(inst).unwrap().auto_restarts, 1, "restarted at 60 s");
    drop(tasks);
    let before = asked.load(Ordering::SeqCst);
    at(600).await;
    assert_eq!(asked.load(Ordering::SeqCst), before, "nothing runs once dropped");
}

/// A sled agent whose get-state takes 45 s, counting how many are in flight.
struct SlowSled {
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    started: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

#[async_trait::async_trait]
impl SledAgentApi for SlowSled {
    async fn vmm_register(
        &self,
        _: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        Ok(SledVmmState { vmm_state: body.vmm_runtime })
    }

    async fn vmm_unregister(
        &self,
        _: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        Ok(VmmUnregisterResponse { updated_runtime: None })
    }

    async fn vmm_put_state(
        &self,
        _: PropolisUuid,
        _: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        Ok(VmmPutStateResponse { updated_runtime: None })
    }

    async fn vmm_get_state(&self, _: PropolisUuid) -> Result<SledVmmState, SledAgentError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.started.lock().unwrap().push(tokio::time::Instant::now());
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_secs(45)).await;
        self.in_flight.fetch_sub(1, SeqCst);
        Ok(state(VmmState::Starting, 2))
    }
}

/// An activation that outlasts its period delays the next instead of
/// overlapping it: with checks of 45 s on a 30 s period, passes start at 0, 45
/// and 90 s, one at a time.
#[tokio::test(start_paused = true)]
async fn a_slow_activation_delays_the_next_and_never_overlaps_it() {
    use nexus_stub::background::{self, Periods};
    use std::time::Duration;

    let h = harness();
    h.started("inst").await;
    let sled = Arc::new(SlowSled {
        in_flight: Default::default(),
        most: Default::default(),
        started: Default::default(),
    });
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let watcher = watcher::InstanceWatcher::new(
        &log,
        Arc::clone(&h.nexus),
        BTreeMap::from([(SLED, Arc::clone(&sled))]),
        Arc::new(LogicalClock::default()),
    );
    let t0 = tokio::time::Instant::now();
    let tasks = background::start(&log, Arc::clone(&h.nexus), watcher, Periods::default());
    tokio::time::sleep(Duration::from_secs(100)).await;
    drop(tasks);
    let starts: Vec<u64> =
        sled.started.lock().unwrap().iter().map(|t| (*t - t0).as_secs()).collect();
    assert_eq!(starts, [0, 45, 90]);
    assert_eq!(sled.most.load(std::sync::atomic::Ordering::SeqCst), 1, "never two at once");
}
