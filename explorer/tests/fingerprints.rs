//! Two paths to one fingerprint have one future, one step on: walking the
//! state graph of small bounds breadth first (one path per situation), every
//! other path that reaches a situation offers the same choices, and each leads
//! to the same situation as from the first path.
//!
//! This is what lets the visited set prune a second path: if a fingerprint left
//! out something the future depends on, the situations a search reaches would
//! depend on which path got there first, that is on the order of the search.
//! `--check-fingerprints` plays two merged paths on by one schedule; this walks
//! every choice, one step on, from every merge.

use sledsim_explorer::harness::schedule::{ChoiceCtx, Chooser, ScheduleError, ScheduleSpec};
use sledsim_explorer::harness::{self, RunConfig, ScenarioKind};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Follows a path of choice indices, then notes the situation it reached: its
/// fingerprint and its choices, each as the fingerprint takes it (no actor
/// numbers, a stale write without what it carries).
struct Probe {
    path: Vec<usize>,
    reached: Option<(u64, Vec<String>)>,
}

impl Chooser for Probe {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        if let Some(&i) = self.path.get(ctx.step) {
            return Ok(Some(i));
        }
        let choices = ctx.enabled.iter().map(|c| {
            let call = ctx.world.call_as_fingerprinted(c.call);
            format!("{:?} {call:?} {:?} {:?}", c.kind.unnumbered(), c.fault, c.offer)
        });
        self.reached = Some((ctx.world.fingerprint(ctx.observer), choices.collect()));
        Ok(None)
    }
}

/// The situation `path` leads to; or, where the run is over there, how it
/// ended: what the end rules judged and what the components hold.
fn reach(run: &RunConfig, path: &[usize]) -> (u64, Vec<String>) {
    let mut probe = Probe { path: path.to_vec(), reached: None };
    let r = harness::run(run, &mut probe).expect("runs");
    probe.reached.unwrap_or_else(|| {
        assert_eq!(r.steps.len(), path.len(), "{path:?} stopped short: {:?}", r.end);
        let broken: BTreeSet<u8> = r.violations.iter().map(|v| v.invariant).collect();
        let held: Vec<_> = r.vmms.iter().map(|v| (v.id, v.state, v.gen, v.deleted)).collect();
        let instances: Vec<_> =
            r.instances.iter().map(|i| (i.id, i.state, i.propolis_id)).collect();
        let end = format!("{:?} {broken:?} {held:?} {instances:?} {:?}", r.end, r.sled);
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&end, &mut h);
        (std::hash::Hasher::finish(&h), Vec::new())
    })
}

/// What each choice of a situation leads to, by choice (two choices alike may
/// both be offered: a set of situations each).
type Successors = BTreeMap<String, BTreeSet<u64>>;

fn successors(run: &RunConfig, path: &[usize], choices: &[String]) -> Successors {
    let mut next = Successors::new();
    for (i, choice) in choices.iter().enumerate() {
        let on: Vec<usize> = path.iter().copied().chain([i]).collect();
        next.entry(choice.clone()).or_default().insert(reach(run, &on).0);
    }
    next
}

/// Walks every situation of `run` breadth first, and every other path to one
/// one step on; checks it saw more than `at_least` of each (a walk of nothing
/// would pass).
fn check(run: RunConfig, at_least: usize) {
    let mut first: BTreeMap<u64, (Vec<usize>, Successors)> = BTreeMap::new();
    let mut queue = VecDeque::from([Vec::new()]);
    let mut merges = 0;
    while let Some(path) = queue.pop_front() {
        let (fp, choices) = reach(&run, &path);
        let next = successors(&run, &path, &choices);
        match first.get(&fp) {
            None => {
                queue.extend((0..choices.len()).map(|i| path.iter().copied().chain([i]).collect()));
                first.insert(fp, (path, next));
            }
            Some((earlier, want)) => {
                merges += 1;
                assert_eq!(
                    &next, want,
                    "{:?}: paths {earlier:?} and {path:?} meet in one situation, whose choices lead on to different ones",
                    run.scenario
                );
            }
        }
    }
    let situations = first.len();
    assert!(situations < 100_000, "the bounds are meant to be small");
    assert!(situations > at_least && merges > at_least, "{situations} situations, {merges} merges");
}

/// Follows a replay string, then notes the fingerprint of where it led.
struct After {
    schedule: Box<dyn Chooser>,
    steps: usize,
    fingerprint: Option<u64>,
}

impl Chooser for After {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        if ctx.step < self.steps {
            return self.schedule.choose(ctx);
        }
        self.fingerprint = Some(ctx.world.fingerprint(ctx.observer));
        Ok(None)
    }
}

/// Where `replay` (no step of it repeated with `*n`) leads.
fn fingerprint_after(run: &RunConfig, replay: &str) -> u64 {
    let spec = ScheduleSpec::parse(replay).expect("a replay string");
    let schedule = spec.chooser(run.max_steps).expect("a chooser");
    let mut after = After { schedule, steps: replay.split_whitespace().count(), fingerprint: None };
    harness::run(run, &mut after).expect("runs");
    after.fingerprint.unwrap_or_else(|| panic!("{replay} ended the run"))
}

fn config(scenario: ScenarioKind) -> RunConfig {
    RunConfig { scenario, ..RunConfig::new(slog::Logger::root(slog::Discard, slog::o!())) }
}

/// A start refused with 503 and one whose answer was lost fail the create
/// alike, and a sled agent's restart then leaves nothing else to tell them by:
/// the scenario's failure message, once in the fingerprint, told them apart one
/// step later, when the create returned, and a search's situations depended on
/// which of the two it met first.
#[test]
fn a_failed_start_and_a_restart_meet_in_one_situation_with_one_future() {
    check(RunConfig { faults: 1, sled_restarts: 1, ..config(ScenarioKind::StopRace) }, 1000);
}

/// Stop-race with a user's operation, the watcher checking VMMs still
/// Creating (omicron before #6455), which is what brings auto-restart's start
/// where a stop's basis was left.
fn checking_creating() -> RunConfig {
    RunConfig {
        user_ops: 1,
        inject: Some(harness::Inject::WatcherChecksCreating),
        ..config(ScenarioKind::StopRace)
    }
}

/// Two paths to one situation, where a stop's request to the sled agent has
/// returned on one and is parked on the other: Nexus kept the generation the
/// finished one read (the basis of its Failed write) after it returned, and
/// auto-restart's ensure-running of the same VMM, parked next, took that
/// leftover as its own, telling the two paths apart one step on. Found by
/// walking the state graph as above, in `checking_creating`.
#[test]
fn a_finished_stops_basis_is_not_left_for_the_next_call_to_its_vmm() {
    let run = checking_creating();
    let common = "scenario.instance_create watcher.vmm_list check1.vmm_get_state \
        check1.vmm_write scenario.vmm_register scenario.vmm_put_state check1.instance_update \
        restart.reincarnation restart.instance_start watcher.vmm_list check2.vmm_get_state \
        check2.vmm_write";
    let parked =
        format!("{common} check2.instance_update scenario.instance_stop user.instance_stop(inst1)");
    let returned = format!(
        "{common} scenario.instance_stop check2.instance_update scenario.vmm_put_state user.instance_stop(inst1)"
    );
    assert_eq!(fingerprint_after(&run, &parked), fingerprint_after(&run, &returned));
    let on = |s: &str| fingerprint_after(&run, &format!("{s} restart.vmm_register"));
    assert_eq!(on(&parked), on(&returned), "one situation, one step on by the same step");
}

/// The walk that meets the case above: it fails within seconds with the
/// leftover kept (the walks beside it do not reach it).
#[test]
fn stop_race_with_the_watcher_checking_creating_vmms_merges_soundly() {
    check(checking_creating(), 10_000);
}

#[test]
fn stop_race_with_a_users_operation_and_a_fault_merges_soundly() {
    let run =
        RunConfig { user_ops: 1, faults: 1, watcher_passes: 1, ..config(ScenarioKind::StopRace) };
    check(run, 10_000);
}

#[test]
fn disk_move_with_a_fault_and_a_restart_merges_soundly() {
    let run = RunConfig {
        faults: 1,
        sled_restarts: 1,
        watcher_passes: 1,
        ..config(ScenarioKind::DiskMove)
    };
    check(run, 1000);
}
