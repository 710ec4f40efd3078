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
    // A vanish fails the instance; a fault on auto-restart's ensure-running
    // fails its start.
    let (verdict, broken) = search(true, (0, 2));
    assert_eq!(verdict, Verdict::Violated);
    assert!(broken.contains(&(11, 13)), "{broken:?}");
    assert_eq!(search(false, (0, 2)), (Verdict::Clean, vec![]));
    // At explore's defaults one fault cannot do both, but another finding's
    // window can fail the instance (a reboot's 404 after Destroyed).
    assert!(search(true, (1, 1)).1.contains(&(11, 17)));
    assert_eq!(search(false, (1, 1)), (Verdict::Clean, vec![]));
}
