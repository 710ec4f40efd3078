//! The removal ordering proved through the engine's public API, as a user's own
//! test would: publish-then-remove holds on every schedule, remove-then-publish
//! gives #7282's false Failed, with a counterexample that replays.

use sim_sled_agent::RemovalOrdering;
use sledsim_explorer::{
    explore, replay, Coverage, ExploreConfig, RunConfig, ScenarioKind, Verdict,
};

fn check(scenario: ScenarioKind, ordering: RemovalOrdering) -> sledsim_explorer::ExploreResult {
    let cfg = RunConfig { scenario, ordering, ..RunConfig::default() };
    explore(&ExploreConfig::new(cfg)).expect("the search runs")
}

#[test]
fn publish_then_remove_is_proved_on_both_scenarios() {
    for scenario in [ScenarioKind::StopRace, ScenarioKind::DiskMove] {
        let r = check(scenario, RemovalOrdering::PublishThenRemove);
        assert_eq!(r.verdict(), Verdict::Clean, "{scenario:?}: {:?}", r.counterexamples);
        assert_eq!(r.coverage, Coverage::Exhaustive);
        assert!(r.situations > 100, "{scenario:?}: only {} situations", r.situations);
    }
}

#[test]
fn remove_then_publish_fails_a_stopped_instance() {
    let legacy = RunConfig {
        scenario: ScenarioKind::StopRace,
        ordering: RemovalOrdering::RemoveThenPublish,
        ..RunConfig::default()
    };
    let r = explore(&ExploreConfig::new(legacy.clone())).expect("the search runs");
    assert_eq!(r.verdict(), Verdict::Violated);
    // #7282's harm: Nexus records Failed for a VMM that never vanished.
    let cex = r
        .counterexamples
        .iter()
        .find(|c| c.invariant_name() == "failed-only-if-vanished")
        .expect("the false Failed is found");
    let again = replay(&legacy, &cex.replay()).expect("the counterexample replays");
    let at = again.violations.iter().find(|v| v.invariant == cex.invariant).map(|v| v.step);
    assert_eq!(at, Some(cex.len), "it breaks at the same step");
}

#[test]
fn a_malformed_replay_string_is_an_error() {
    let e = replay(&RunConfig::default(), "scenario.no_such_call").expect_err("refused");
    assert!(matches!(e, sledsim_explorer::RunError::Schedule(_)), "{e:?}");
}
