//! Runs the explorer once found wrong, replayed: each is a schedule that broke an
//! invariant in the clean model (stop-race with two user operations and a fault)
//! before the model was made to follow omicron's test there.

use sledsim_explorer::harness::step::{ActorKind, CallKind};
use sledsim_explorer::harness::RunEnd;
use sledsim_explorer::{replay, RunConfig, RunResult, ScenarioKind};

/// Stop-race without the watcher and auto-restart, which these runs do not need.
fn run(user_ops: usize, faults: usize, schedule: &str) -> RunResult {
    let config = RunConfig {
        scenario: ScenarioKind::StopRace,
        user_ops,
        faults,
        watcher_passes: 0,
        restart_passes: 0,
        ..RunConfig::default()
    };
    let r = replay(&config, schedule).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(r.end, RunEnd::Finished), "{:?}", r.end);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    r
}

/// The VMMs the scenario's and the user's calls went to, in order, by kind.
fn targets(r: &RunResult, kind: CallKind) -> Vec<(ActorKind, String)> {
    let name = |s: &sledsim_explorer::harness::step::Step| {
        s.call.vmm.map_or_else(|| "-".into(), |v| r.names.vmm(v))
    };
    r.steps.iter().filter(|s| s.call.kind == kind).map(|s| (r.actors[s.actor], name(s))).collect()
}

/// The user stops and starts the instance again before the scenario stops it:
/// the test's `instance_simulate` looks up the VMM when it is called, so the
/// scenario pokes the new one. (Poking the one it created left the new VMM
/// Stopping forever.)
#[test]
fn the_scenarios_poke_goes_to_the_vmm_the_instance_has_now() {
    let r = run(
        2,
        0,
        "scenario.instance_create scenario.vmm_register scenario.vmm_put_state \
         user.instance_stop(inst1) user.vmm_put_state user.vmm_poke user.cpapi_instances_put*4 \
         update1.instance_update user.instance_start(inst1) user.start_saga user.vmm_register \
         user.vmm_put_state user.vmm_poke user.cpapi_instances_put scenario.instance_stop \
         scenario.vmm_put_state scenario.vmm_poke scenario.cpapi_instances_put*3 \
         update2.instance_update scenario.wait_for_state",
    );
    let pokes = targets(&r, CallKind::VmmPoke);
    let registered = targets(&r, CallKind::VmmRegister);
    assert_eq!(registered.len(), 2, "{registered:?}");
    assert_eq!(pokes.last().map(|p| &p.1), Some(&registered[1].1), "{pokes:?}");
    assert_eq!(pokes.last().map(|p| p.0), Some(ActorKind::Scenario));
}

/// The instance's second VMM vanishes while the user stops it, after every
/// watcher pass: nothing will ever move it on from Stopping. The scenario's
/// wait for it to stop times out, as the test's does, rather than wait forever
/// (which broke rule 8, terminates); the scenario fails, which the vanish excuses.
#[test]
fn the_scenarios_wait_times_out_once_nothing_else_can_go_on() {
    let r = run(
        2,
        1,
        "scenario.instance_create scenario.vmm_register scenario.vmm_put_state \
         scenario.instance_stop scenario.vmm_put_state scenario.vmm_poke \
         scenario.cpapi_instances_put*4 update1.instance_update user.instance_start(inst1) user.start_saga \
         user.vmm_register user.vmm_put_state user.vmm_poke user.cpapi_instances_put \
         user.instance_stop(inst1) user.vmm_put_state fault.vmm_vanish(inst1) user.vmm_poke \
         scenario.wait_for_state fault.done",
    );
    let waits = targets(&r, CallKind::WaitForState);
    assert_eq!(waits.len(), 1, "{waits:?}");
    assert!(matches!(r.scenario_outcome, Some(Err(_))), "{:?}", r.scenario_outcome);
}
