//! The findings: races omicron's own code has, which every explore leaves out by
//! a named exclusion unless `--findings` is given. Each is found with the windows
//! open, and the same search without them is clean.

use sledsim_explorer::explore::{explore, ExploreConfig, Verdict};
use sledsim_explorer::{RunConfig, ScenarioKind};

/// Explores stop-race with `user_ops` and `faults`; returns the verdict and each
/// broken invariant with its shortest length.
fn search(findings: bool, (user_ops, faults): (usize, usize)) -> (Verdict, Vec<(u8, usize)>) {
    let run = RunConfig {
        scenario: ScenarioKind::StopRace,
        findings,
        user_ops,
        faults,
        ..RunConfig::default()
    };
    let r = explore(&ExploreConfig::new(run)).unwrap_or_else(|e| panic!("{e}"));
    (r.verdict(), r.counterexamples.iter().map(|c| (c.invariant, c.len)).collect())
}

/// `restart-unwound` (#9174): auto-restart's start fails after its link and its
/// unwinding leaves the instance stopped, meant to run, where no pass looks.
#[test]
fn an_auto_restart_that_unwinds_is_found_only_with_the_findings_open() {
    // At explore's defaults: a stop of the instance, after a user's start that
    // was refused made its intent Running again, fails the start.
    let (verdict, broken) = search(true, (1, 1));
    assert_eq!(verdict, Verdict::Violated);
    assert!(broken.contains(&(11, 16)), "{broken:?}");
    assert_eq!(search(false, (1, 1)), (Verdict::Clean, vec![]));
    // With a second fault: the first fails the instance, the second lands on
    // auto-restart's start.
    assert!(search(true, (0, 2)).1.iter().any(|&(k, _)| k == 11));
    assert_eq!(search(false, (0, 2)), (Verdict::Clean, vec![]));
}
