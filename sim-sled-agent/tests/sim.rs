//! SimSledAgent against a mocked Nexus: generation sequences, the two removal
//! orderings, failed reports, and Auto mode.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use sim_sled_agent::{
    PokeMode, RemovalOrdering, SimConfig, SimError, SimMode, SimSledAgent, REPORT_ATTEMPTS,
};
use sled_agent_api::{
    Clock, Generation, InstanceEnsureBody, InstanceUuid, LogicalClock, MockNexusInternalApi,
    NexusApiError, PropolisUuid, SledAgentApi, SledAgentError, SledUuid, SledVmmState,
    VmmPutStateBody, VmmRuntimeState, VmmState, VmmStateRequested,
};

type Sim = SimSledAgent<MockNexusInternalApi>;

const VMM: PropolisUuid = PropolisUuid::from_u128(0x10);
const INSTANCE: InstanceUuid = InstanceUuid::from_u128(0x20);
const PUBLISH: RemovalOrdering = RemovalOrdering::PublishThenRemove;

fn sim(config: SimConfig, nexus: MockNexusInternalApi) -> Arc<Sim> {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    SimSledAgent::new(
        &log,
        SledUuid::from_u128(1),
        config,
        nexus,
        Arc::new(LogicalClock::default()),
    )
    .expect("explicit mode needs no runtime")
}

/// A mocked Nexus that records every report and, while answering, asks `probe`
/// about the sim (which the closure reaches through a late-bound weak pointer).
struct Recorder {
    reports: Arc<Mutex<Vec<(VmmState, u64, bool)>>>,
    /// The sim's state hash while each report is in flight.
    hashes: Arc<Mutex<Vec<u64>>>,
    sim: Arc<OnceLock<Weak<Sim>>>,
}

fn hash_of(sim: &Sim) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    sim.hash_state(&mut h);
    std::hash::Hasher::finish(&h)
}

impl Recorder {
    /// `fail_on`: a state whose report fails, with this status, this many times.
    fn mock(fail_on: Option<(VmmState, u16, u32)>) -> (Recorder, MockNexusInternalApi) {
        let rec = Recorder {
            reports: Arc::default(),
            hashes: Arc::default(),
            sim: Arc::new(OnceLock::new()),
        };
        let (reports, late) = (Arc::clone(&rec.reports), Arc::clone(&rec.sim));
        let hashes = Arc::clone(&rec.hashes);
        let failures = Arc::new(Mutex::new(0u32));
        let mut nexus = MockNexusInternalApi::new();
        nexus.expect_cpapi_instances_put().returning(move |id, st: SledVmmState| {
            assert_eq!(id, VMM);
            let sim = late.get().and_then(Weak::upgrade).expect("sim is bound");
            let in_table = sim.contains_vmm(id);
            assert!(sim.reporting(id), "a report in flight is known as such");
            assert!(sim.reporting_any(), "and counts among the sled's");
            hashes.lock().unwrap().push(hash_of(&sim));
            let s = st.vmm_state;
            reports.lock().unwrap().push((s.state, s.gen.as_u64(), in_table));
            let mut failed = failures.lock().unwrap();
            match fail_on {
                Some((state, status, times)) if state == s.state && *failed < times => {
                    *failed += 1;
                    Err(NexusApiError::UnexpectedResponse {
                        operation: "cpapi_instances_put",
                        status,
                        message: "refused".into(),
                    })
                }
                _ => Ok(()),
            }?;
            Ok(())
        });
        (rec, nexus)
    }

    fn bind(&self, sim: &Arc<Sim>) {
        self.sim.set(Arc::downgrade(sim)).expect("bound once");
    }

    fn reports(&self) -> Vec<(VmmState, u64, bool)> {
        self.reports.lock().unwrap().clone()
    }
}

fn starting_at_gen_2() -> InstanceEnsureBody {
    InstanceEnsureBody {
        instance_id: INSTANCE,
        vmm_runtime: VmmRuntimeState {
            state: VmmState::Starting,
            gen: Generation::new().next(),
            time_updated: LogicalClock::default().now(),
        },
    }
}

async fn put(sim: &Sim, state: VmmStateRequested) -> Result<(VmmState, u64), SledAgentError> {
    let r = sim.vmm_put_state(VMM, VmmPutStateBody { state }).await?;
    let s = r.updated_runtime.expect("sim always returns the new state").vmm_state;
    Ok((s.state, s.gen.as_u64()))
}

/// Register at gen 2, start (queued), stop: the omicron test's steps before the poke.
async fn started_then_stopped(
    ordering: RemovalOrdering,
    fail_on: Option<(VmmState, u16, u32)>,
) -> (Arc<Sim>, Recorder) {
    let (rec, nexus) = Recorder::mock(fail_on);
    let sim = sim(SimConfig { ordering, mode: SimMode::Explicit }, nexus);
    rec.bind(&sim);
    let registered = sim.vmm_register(VMM, starting_at_gen_2()).await.expect("registers");
    assert_eq!(registered.vmm_state.gen.as_u64(), 2);
    assert_eq!(put(&sim, VmmStateRequested::Running).await.unwrap(), (VmmState::Starting, 2));
    assert_eq!(put(&sim, VmmStateRequested::Stopped).await.unwrap(), (VmmState::Stopping, 3));
    (sim, rec)
}

#[tokio::test]
async fn stop_of_a_running_vmm_reports_generations_4_to_7() {
    let (sim, rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, None).await;
    let outcome = sim.poke(VMM, PokeMode::Drain).await.expect("poke drains");
    let seq: Vec<_> = rec.reports().iter().map(|&(s, g, _)| (s, g)).collect();
    assert_eq!(
        seq,
        [
            (VmmState::Running, 4),
            (VmmState::Stopping, 5),
            (VmmState::Stopping, 6),
            (VmmState::Destroyed, 7)
        ]
    );
    assert!(outcome.removed);
    assert_eq!(outcome.published.len(), 4);
}

#[tokio::test]
async fn publish_then_remove_keeps_the_vmm_while_reporting_destroyed() {
    let (sim, rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, None).await;
    sim.poke(VMM, PokeMode::Drain).await.expect("poke drains");
    assert_eq!(rec.reports().last(), Some(&(VmmState::Destroyed, 7, true)));
    assert!(!sim.contains_vmm(VMM), "removed once Nexus acknowledged");
}

#[tokio::test]
async fn remove_then_publish_drops_the_vmm_before_reporting_destroyed() {
    let (sim, rec) = started_then_stopped(RemovalOrdering::RemoveThenPublish, None).await;
    sim.poke(VMM, PokeMode::Drain).await.expect("poke drains");
    assert_eq!(rec.reports().last(), Some(&(VmmState::Destroyed, 7, false)));
    // Every earlier report happened with the VMM still present.
    assert!(rec.reports()[..3].iter().all(|&(_, _, present)| present));
}

/// The state hash covers the table and what a poke waiting on a report will do:
/// under the legacy ordering, a VMM taken out of the table while its Destroyed is
/// in flight is still state (it comes back if the report fails).
#[tokio::test]
async fn the_state_hash_covers_the_table_and_a_report_in_flight() {
    let (rec, nexus) = Recorder::mock(None);
    let empty = sim(SimConfig::default(), MockNexusInternalApi::new());
    let config =
        SimConfig { ordering: RemovalOrdering::RemoveThenPublish, mode: SimMode::Explicit };
    let sim = sim(config, nexus);
    rec.bind(&sim);
    assert_eq!(hash_of(&sim), hash_of(&empty));
    sim.vmm_register(VMM, starting_at_gen_2()).await.expect("registers");
    assert_ne!(hash_of(&sim), hash_of(&empty), "the table is in the hash");
    put(&sim, VmmStateRequested::Running).await.unwrap();
    put(&sim, VmmStateRequested::Stopped).await.unwrap();
    sim.poke(VMM, PokeMode::Drain).await.expect("poke drains");
    let during_destroyed = *rec.hashes.lock().unwrap().last().unwrap();
    assert!(!sim.contains_vmm(VMM));
    assert_eq!(hash_of(&sim), hash_of(&empty), "nothing left once the report is answered");
    assert_ne!(during_destroyed, hash_of(&empty), "the taken VMM is state while in flight");
}

/// A report Nexus refuses with a 5xx is sent again by the same poke, as
/// omicron's sled agent retries it; the VMM stays until one is acknowledged.
#[tokio::test]
async fn a_report_refused_with_a_5xx_is_sent_again_by_the_same_poke() {
    for ordering in [RemovalOrdering::PublishThenRemove, RemovalOrdering::RemoveThenPublish] {
        let fail = Some((VmmState::Destroyed, 503, 2));
        let (sim, rec) = started_then_stopped(ordering, fail).await;
        let outcome = sim.poke(VMM, PokeMode::Drain).await.expect("the third send is taken");
        let destroyed: Vec<_> =
            rec.reports().iter().filter(|r| r.0 == VmmState::Destroyed).map(|r| r.1).collect();
        assert_eq!(destroyed, [7, 7, 7], "{ordering:?}: the same state, sent three times");
        assert!(outcome.removed && !sim.contains_vmm(VMM), "{ordering:?}");
    }
}

/// A report Nexus refuses with a 4xx is given up, not sent again (it would get
/// the same answer), and the sim goes on as omicron's sled agent does: a
/// finished VMM is deregistered all the same (R6, #3256).
#[tokio::test]
async fn a_terminal_report_refused_with_a_4xx_is_given_up_and_the_vmm_removed() {
    for ordering in [RemovalOrdering::PublishThenRemove, RemovalOrdering::RemoveThenPublish] {
        let (sim, rec) = started_then_stopped(ordering, Some((VmmState::Destroyed, 404, 1))).await;
        let outcome = sim.poke(VMM, PokeMode::Drain).await.expect("a refusal ends the report");
        let sent: Vec<_> = rec.reports().iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(sent.last(), Some(&(VmmState::Destroyed, 7)), "{ordering:?}");
        let destroyed = sent.iter().filter(|r| r.0 == VmmState::Destroyed).count();
        assert_eq!(destroyed, 1, "{ordering:?}: sent once");
        let refused: Vec<_> = outcome.refused.iter().map(|s| s.vmm_state.gen.as_u64()).collect();
        assert_eq!(refused, [7], "{ordering:?}");
        assert!(outcome.published.iter().all(|s| s.vmm_state.gen.as_u64() < 7), "{ordering:?}");
        assert!(outcome.removed && !sim.contains_vmm(VMM), "{ordering:?}: deregistered anyway");
    }
}

/// A report that cannot get through (5xx) `REPORT_ATTEMPTS` times: the poke
/// fails and the VMM stays for the next, which reports it again.
#[tokio::test]
async fn a_failed_terminal_report_keeps_the_vmm_and_is_retried() {
    for (ordering, fail) in [
        (RemovalOrdering::PublishThenRemove, (VmmState::Destroyed, 503, REPORT_ATTEMPTS)),
        (RemovalOrdering::RemoveThenPublish, (VmmState::Destroyed, 500, REPORT_ATTEMPTS)),
    ] {
        let (sim, rec) = started_then_stopped(ordering, Some(fail)).await;
        let err = sim.poke(VMM, PokeMode::Drain).await.expect_err("the Destroyed report fails");
        assert!(
            matches!(err, SimError::ReportFailed { state, .. }
                if state.state == VmmState::Destroyed && state.gen.as_u64() == 7),
            "{ordering:?}: {err:?}"
        );
        assert!(sim.contains_vmm(VMM), "{ordering:?}: the VMM must stay in the table");
        let sends = rec.reports().iter().filter(|r| r.0 == VmmState::Destroyed).count();
        assert_eq!(sends as u32, fail.2, "{ordering:?}");
        let got = sim.vmm_get_state(VMM).await.expect("still answerable");
        assert_eq!(got.vmm_state.state, VmmState::Destroyed);

        // The next poke has nothing queued, so it reports Destroyed/7 again.
        let outcome = sim.poke(VMM, PokeMode::Drain).await.expect("retry succeeds");
        assert_eq!(outcome.published.len(), 1, "{ordering:?}");
        assert_eq!(outcome.published[0].vmm_state.gen.as_u64(), 7);
        assert!(outcome.removed && !sim.contains_vmm(VMM), "{ordering:?}");
    }
}

#[tokio::test]
async fn single_step_reports_one_transition_per_poke() {
    let (sim, rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, None).await;
    for want in [(VmmState::Running, 4), (VmmState::Stopping, 5)] {
        let outcome = sim.poke(VMM, PokeMode::SingleStep).await.expect("steps");
        let s = outcome.published[0].vmm_state;
        assert_eq!((outcome.published.len(), s.state, s.gen.as_u64()), (1, want.0, want.1));
    }
    assert_eq!(sim.queued(VMM), Some(2));
    assert_eq!(rec.reports().len(), 2);
}

/// A VMM whose Destroyed Nexus has not taken yet is terminating: a stop or a
/// reboot is answered 410 (it is not gone, so not 404), a get-state its last
/// state, and a start is still refused as a transition.
#[tokio::test]
async fn a_terminating_vmm_answers_stops_and_reboots_with_gone() {
    let refused = Some((VmmState::Destroyed, 503, u32::MAX));
    let (sim, _rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, refused).await;
    sim.poke(VMM, PokeMode::Drain).await.expect_err("Nexus cannot take the Destroyed");
    for state in [VmmStateRequested::Stopped, VmmStateRequested::Reboot] {
        let e = put(&sim, state).await.expect_err("terminating");
        assert!(matches!(e, SledAgentError::Terminating { propolis_id } if propolis_id == VMM));
        assert!(!e.vmm_gone(), "{e:?}");
    }
    let e = put(&sim, VmmStateRequested::Running).await.expect_err("no start");
    assert!(matches!(e, SledAgentError::InvalidTransition { .. }), "{e:?}");
    let now = sim.vmm_get_state(VMM).await.expect("still in the table");
    assert_eq!(now.vmm_state.state, VmmState::Destroyed);
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let (sim, _rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, None).await;
    let unknown = PropolisUuid::from_u128(0x99);

    let e = sim.vmm_get_state(unknown).await.expect_err("unknown VMM");
    assert!(e.vmm_gone(), "{e:?}");
    let e = sim
        .vmm_put_state(unknown, VmmPutStateBody { state: VmmStateRequested::Stopped })
        .await
        .expect_err("unknown VMM");
    assert!(matches!(e, SledAgentError::NoSuchVmm { propolis_id } if propolis_id == unknown));
    let e = sim.poke(unknown, PokeMode::Drain).await.expect_err("unknown VMM");
    assert!(matches!(e, SimError::NoSuchVmm { .. }), "{e:?}");

    let e = put(&sim, VmmStateRequested::Running).await.expect_err("stopping VMM cannot run");
    assert!(matches!(e, SledAgentError::InvalidTransition { .. }), "{e:?}");
    assert!(!e.vmm_gone());

    let mut body = starting_at_gen_2();
    body.vmm_runtime.state = VmmState::Running;
    let e = sim
        .vmm_register(PropolisUuid::from_u128(0x98), body)
        .await
        .expect_err("must register as starting");
    assert!(matches!(e, SledAgentError::InvalidRegistration { .. }), "{e:?}");
}

#[tokio::test]
async fn unregister_fails_the_vmm_and_forgets_it() {
    let (sim, _rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, None).await;
    let r = sim.vmm_unregister(VMM).await.expect("unregisters");
    let s = r.updated_runtime.expect("was present").vmm_state;
    assert_eq!((s.state, s.gen.as_u64()), (VmmState::Failed, 4));
    assert!(!sim.contains_vmm(VMM));
    let again = sim.vmm_unregister(VMM).await.expect("absent is not an error");
    assert_eq!(again.updated_runtime, None);
}

#[tokio::test(start_paused = true)]
async fn auto_mode_drains_after_the_delay() {
    let (sim, rec) = stopped_in_auto_mode(RemovalOrdering::PublishThenRemove, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert!(rec.reports().is_empty(), "nothing before the delay");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gens: Vec<_> = rec.reports().iter().map(|&(_, g, _)| g).collect();
    assert_eq!(gens, [4, 5, 6, 7]);
    assert!(!sim.contains_vmm(VMM));
}

/// A sim in Auto mode (1.5 s delay, no jitter) with a VMM started and stopped.
async fn stopped_in_auto_mode(
    ordering: RemovalOrdering,
    teardown: Duration,
) -> (Arc<Sim>, Recorder) {
    let (sim, rec) = auto(ordering, (Duration::ZERO, 0), teardown).await;
    put(&sim, VmmStateRequested::Running).await.unwrap();
    put(&sim, VmmStateRequested::Stopped).await.unwrap();
    (sim, rec)
}

/// The teardown time sits between a VMM reaching Destroyed and its report: under
/// the legacy ordering, a window in which the VMM is gone and Nexus not told.
#[tokio::test(start_paused = true)]
async fn auto_mode_reports_destroyed_only_after_the_teardown() {
    let (sim, rec) =
        stopped_in_auto_mode(RemovalOrdering::RemoveThenPublish, Duration::from_millis(1000)).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let gens: Vec<_> = rec.reports().iter().map(|&(_, g, _)| g).collect();
    assert_eq!(gens, [4, 5, 6], "Destroyed/7 waits for the teardown");
    assert!(!sim.contains_vmm(VMM), "the window: gone from the table, not yet reported");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(rec.reports().last(), Some(&(VmmState::Destroyed, 7, false)));
}

#[test]
fn auto_mode_without_a_runtime_is_an_error() {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let config = SimConfig {
        mode: SimMode::Auto {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            seed: 0,
            teardown: Duration::ZERO,
        },
        ..SimConfig::default()
    };
    let r = SimSledAgent::new(
        &log,
        SledUuid::from_u128(1),
        config,
        MockNexusInternalApi::new(),
        Arc::new(LogicalClock::default()),
    );
    assert!(matches!(r, Err(SimError::NoRuntime)));
}

/// A VMM that vanishes leaves the table without a word to Nexus; the sim then
/// answers 404 for it, and a poke of it fails.
#[tokio::test]
async fn a_vanished_vmm_is_gone_without_a_report() {
    let (sim, rec) = started_then_stopped(RemovalOrdering::PublishThenRemove, None).await;
    assert_eq!(sim.vmm_of(InstanceUuid::from_u128(0x17)), None);
    assert_eq!(sim.vmm_of(INSTANCE), Some(VMM));
    assert!(!sim.reporting(VMM));
    assert!(sim.vanish(VMM));
    assert!(!sim.vanish(VMM), "only once");
    assert!(rec.reports().is_empty(), "no report");
    let e = sim.vmm_get_state(VMM).await.expect_err("gone");
    assert!(e.vmm_gone());
    assert!(matches!(sim.poke(VMM, PokeMode::Drain).await, Err(SimError::NoSuchVmm { .. })));
}

/// A VMM that leaves the table takes its Auto-mode stepper with it: the task is
/// aborted, so no stepper outlives its VMM.
#[tokio::test(start_paused = true)]
async fn an_unregistered_vmm_leaves_no_stepper_behind() {
    let alive = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = alive();
    let (sim, rec) = stopped_in_auto_mode(RemovalOrdering::PublishThenRemove, Duration::ZERO).await;
    assert_eq!(alive(), before + 1, "one stepper for the VMM");
    sim.vmm_unregister(VMM).await.unwrap();
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    assert_eq!(alive(), before, "the stepper went with its VMM");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(rec.reports().is_empty(), "{:?}", rec.reports());
}

#[test]
fn orderings_have_the_command_line_names_and_the_sim_keeps_its_config() {
    assert_eq!(RemovalOrdering::PublishThenRemove.label(), "publish-then-remove");
    assert_eq!(RemovalOrdering::RemoveThenPublish.label(), "remove-then-publish");
    let config = SimConfig { ordering: RemovalOrdering::RemoveThenPublish, ..SimConfig::default() };
    let (_, nexus) = Recorder::mock(None);
    let s = sim(config, nexus);
    assert_eq!(s.config(), config);
    assert_eq!(s.sled_id(), SledUuid::from_u128(1));
}

/// The sim-only reads of the table agree: ids in order, membership, queue length.
#[tokio::test]
async fn the_table_reads_agree() {
    let (rec, nexus) = Recorder::mock(None);
    let s = sim(SimConfig::default(), nexus);
    rec.bind(&s);
    let other = PropolisUuid::from_u128(0x05);
    assert!(s.vmm_ids().is_empty());
    s.vmm_register(VMM, starting_at_gen_2()).await.unwrap();
    s.vmm_register(other, starting_at_gen_2()).await.unwrap();
    assert_eq!(s.vmm_ids(), [other, VMM], "in id order");
    assert!(s.contains_vmm(other) && !s.contains_vmm(PropolisUuid::from_u128(0x99)));
    assert_eq!(s.queued(VMM), Some(0));
    put(&s, VmmStateRequested::Running).await.unwrap();
    assert_eq!(s.queued(VMM), Some(1), "Running is queued, not applied");
    assert_eq!(s.queued(PropolisUuid::from_u128(0x99)), None);
}

/// A poke of a Running VMM with nothing queued re-publishes the same generation
/// and keeps the VMM: only an executed Destroyed lets it go.
#[tokio::test]
async fn a_running_vmm_stays_through_pokes_with_nothing_queued() {
    let (rec, nexus) = Recorder::mock(None);
    let s = sim(SimConfig::default(), nexus);
    rec.bind(&s);
    s.vmm_register(VMM, starting_at_gen_2()).await.unwrap();
    put(&s, VmmStateRequested::Running).await.unwrap();
    for _ in 0..2 {
        let outcome = s.poke(VMM, PokeMode::Drain).await.unwrap();
        assert!(!outcome.removed && s.contains_vmm(VMM));
        let got = outcome.published.last().map(|p| (p.vmm_state.state, p.vmm_state.gen.as_u64()));
        assert_eq!(got, Some((VmmState::Running, 3)));
    }
}

/// A sim in Auto mode (1.5 s delay, then `jitter` drawn from `seed`) with a VMM
/// registered at Starting/2.
async fn auto(
    ordering: RemovalOrdering,
    (jitter, seed): (Duration, u64),
    teardown: Duration,
) -> (Arc<Sim>, Recorder) {
    let (rec, nexus) = Recorder::mock(None);
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let mode = SimMode::Auto { delay: Duration::from_millis(1500), jitter, seed, teardown };
    let sim = SimSledAgent::new(
        &log,
        SledUuid::from_u128(1),
        SimConfig { ordering, mode },
        nexus,
        Arc::new(LogicalClock::default()),
    )
    .expect("inside a runtime");
    rec.bind(&sim);
    sim.vmm_register(VMM, starting_at_gen_2()).await.unwrap();
    (sim, rec)
}

/// Milliseconds (on the paused clock) until the first report arrives.
async fn ms_to_first_report(rec: &Recorder) -> u64 {
    for ms in 0..10_000 {
        if !rec.reports().is_empty() {
            return ms;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no report in 10 s");
}

/// A transition that moved the generation or queued work wakes the stepper: a
/// started VMM runs by itself after the delay (omicron's sim waits for a poke
/// there), a stop drains to Destroyed, and a repeated request queues nothing and
/// wakes nothing.
#[tokio::test(start_paused = true)]
async fn auto_mode_runs_a_started_vmm_and_wakes_only_for_new_work() {
    let (s, rec) = auto(PUBLISH, (Duration::ZERO, 0), Duration::ZERO).await;
    put(&s, VmmStateRequested::Running).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1490)).await;
    assert!(rec.reports().is_empty(), "not before the delay");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(states(&rec), [VmmState::Running]);
    put(&s, VmmStateRequested::Running).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(states(&rec), [VmmState::Running], "nothing new to do");
    put(&s, VmmStateRequested::Stopped).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1510)).await;
    // Propolis's Stopped is still Stopping to Nexus: the VMM is not yet gone.
    let drained = [VmmState::Running, VmmState::Stopping, VmmState::Stopping, VmmState::Destroyed];
    assert_eq!(states(&rec), drained);
}

fn states(rec: &Recorder) -> Vec<VmmState> {
    rec.reports().iter().map(|r| r.0).collect()
}

/// The jitter is a seeded share of its bound: the same seed waits the same, a
/// different one differently, never past the bound.
#[tokio::test(start_paused = true)]
async fn auto_mode_jitter_comes_from_the_seed() {
    let mut waits = Vec::new();
    // Seeds with high bits and bits shared with the VMM's id, so every step of
    // the mixing shows.
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    for seed in [SEED, SEED, SEED ^ 0x1f] {
        let (s, rec) = auto(PUBLISH, (Duration::from_millis(1000), seed), Duration::ZERO).await;
        put(&s, VmmStateRequested::Running).await.unwrap();
        put(&s, VmmStateRequested::Stopped).await.unwrap();
        waits.push(ms_to_first_report(&rec).await);
    }
    assert!(waits.iter().all(|w| (1500..2500).contains(w)), "{waits:?}");
    assert_eq!(waits[0], waits[1], "one seed, one wait");
    assert_ne!(waits[0], waits[2], "another seed, another wait");
    // Pinned, so a seed names the same run in every version of the sim.
    assert_eq!(waits, [1979, 1979, 1765]);
}

/// The stepper keeps serving a VMM that is still in the table: a reboot's drain
/// leaves it there, and a later stop is drained too.
#[tokio::test(start_paused = true)]
async fn auto_mode_serves_every_wake_until_the_vmm_is_gone() {
    let (s, rec) = auto(PUBLISH, (Duration::ZERO, 0), Duration::ZERO).await;
    put(&s, VmmStateRequested::Running).await.unwrap();
    put(&s, VmmStateRequested::Reboot).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(s.contains_vmm(VMM));
    let after_reboot = rec.reports().len();
    assert!(after_reboot > 0 && rec.reports().last().map(|r| r.0) == Some(VmmState::Running));
    put(&s, VmmStateRequested::Stopped).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rec.reports().last().map(|r| (r.0, r.2)), Some((VmmState::Destroyed, true)));
    assert!(!s.contains_vmm(VMM));
}

/// The binary refuses, in one line, a malformed URL or log level at start-up (exit 2, saying
/// which flag and why) rather than serving with it.
#[test]
fn the_binary_refuses_bad_flags_at_start_up() {
    for (args, why) in [
        (&["--nexus", "not-a-url"][..], "not a URL"),
        (&["--nexus", ""], "not a URL"),
        (&["--nexus", "ftp://127.0.0.1:1"], "only http and https"),
        (&["--nexus", "http://127.0.0.1:1", "--log-level", "loud"], "one of critical"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim-sled-agent"))
            .args(args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: invalid value") && err.contains(why), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

/// A restart loses the table: every VMM in it, whatever its state, is gone
/// without a report, and the VMs end with it (omicron's sled agent removes
/// every Propolis zone before it serves again), so none runs on unknown.
#[tokio::test]
async fn a_restart_loses_the_table_and_ends_its_vms() {
    let (sim, rec) = started_then_stopped(PUBLISH, None).await;
    assert!(!sim.reporting_any(), "no report under way");
    let other = PropolisUuid::from_u128(0x11);
    let body =
        InstanceEnsureBody { instance_id: InstanceUuid::from_u128(0x21), ..starting_at_gen_2() };
    sim.vmm_register(other, body).await.expect("registers");
    let (before, empty) = (hash_of(&sim), hash_of(&sim_like_new()));
    assert_eq!(sim.restart(), [(VMM, INSTANCE), (other, InstanceUuid::from_u128(0x21))]);
    assert!(sim.vmm_ids().is_empty());
    assert!(sim.orphans().is_empty(), "no VM outlives the restart");
    assert_eq!(hash_of(&sim), empty, "nothing is left of them");
    assert_ne!(before, empty);
    assert!(rec.reports().is_empty(), "no report");
    assert!(sim.vmm_get_state(VMM).await.expect_err("gone").vmm_gone());
    assert!(sim.restart().is_empty(), "a restart of an empty table loses nothing");
}

fn sim_like_new() -> Arc<Sim> {
    sim(SimConfig::default(), MockNexusInternalApi::new())
}

/// Two VMMs of one instance in the table short of a terminal state are two VMs
/// of it; VMMs of two instances are not, nor a VMM the table no longer holds.
#[tokio::test]
async fn two_live_vmms_of_one_instance_are_two_vms() {
    let (rec, nexus) = Recorder::mock(None);
    let sim = sim(SimConfig::default(), nexus);
    rec.bind(&sim);
    sim.vmm_register(VMM, starting_at_gen_2()).await.expect("registers");
    let elsewhere =
        InstanceEnsureBody { instance_id: InstanceUuid::from_u128(0x21), ..starting_at_gen_2() };
    sim.vmm_register(PropolisUuid::from_u128(0x11), elsewhere).await.expect("registers");
    assert_eq!(sim.two_vms_of_one_instance(), None, "one VM each");
    let second = PropolisUuid::from_u128(0x12);
    sim.vmm_register(second, starting_at_gen_2()).await.expect("registers");
    assert_eq!(sim.two_vms_of_one_instance(), Some((INSTANCE, VMM, second)));
    assert!(sim.vanish(VMM));
    assert_eq!(sim.two_vms_of_one_instance(), None, "a VM that died runs no more");
}

/// With the seeded bug a restart leaves the VMs running: the table forgets
/// them, the state hash does not, and a new VMM of their instance is a second VM.
#[cfg(feature = "seeded-bugs")]
#[tokio::test]
async fn a_restart_that_keeps_its_vms_leaves_them_running_unknown() {
    let (sim, _rec) = started_then_stopped(PUBLISH, None).await;
    sim.seed_bugs(sim_sled_agent::SimBugs { restart_keeps_vms: true, ..Default::default() });
    let empty = hash_of(&sim_like_new());
    assert_eq!(sim.restart(), [(VMM, INSTANCE)]);
    assert!(sim.vmm_ids().is_empty(), "the table is lost");
    assert_eq!(sim.orphans(), [(VMM, INSTANCE)], "the VM runs on");
    assert_ne!(hash_of(&sim), empty, "a VM left running is state");
    assert_eq!(sim.two_vms_of_one_instance(), None);
    let again = PropolisUuid::from_u128(0x12);
    sim.vmm_register(again, starting_at_gen_2()).await.expect("registers");
    assert_eq!(sim.two_vms_of_one_instance(), Some((INSTANCE, again, VMM)));
}

/// A VMM held Destroyed (its report failed, so the table keeps it) is no VM:
/// beside a new VMM of its instance it makes no second one, and a restart that
/// keeps the VMs running leaves no VM of it behind.
#[tokio::test]
async fn a_vmm_held_destroyed_runs_no_vm() {
    let fail = (VmmState::Destroyed, 503, REPORT_ATTEMPTS);
    let (sim, _rec) = started_then_stopped(PUBLISH, Some(fail)).await;
    sim.poke(VMM, PokeMode::Drain).await.expect_err("the Destroyed report fails");
    assert_eq!(sim.vmm_runtime(VMM).map(|r| r.0), Some(VmmState::Destroyed));
    let again = PropolisUuid::from_u128(0x12);
    sim.vmm_register(again, starting_at_gen_2()).await.expect("registers");
    assert_eq!(sim.two_vms_of_one_instance(), None, "the Destroyed one is no VM");
    #[cfg(feature = "seeded-bugs")]
    {
        sim.seed_bugs(sim_sled_agent::SimBugs { restart_keeps_vms: true, ..Default::default() });
        assert_eq!(sim.restart(), [(VMM, INSTANCE), (again, INSTANCE)]);
        assert_eq!(sim.orphans(), [(again, INSTANCE)], "only the live one runs on");
    }
}
