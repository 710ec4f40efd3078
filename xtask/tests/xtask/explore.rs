//! `cargo xtask explore`: verdicts that claim no more than was searched, every
//! broken invariant with its shortest counterexample, and printed commands that
//! reproduce what they say.

use super::*;
use nexus_stub::DbVmmState;
use sledsim_explorer::explore::{explore, Coverage, ExploreConfig, ExploreResult, Verdict};
use sledsim_explorer::harness::schedule::{ChoiceCtx, Chooser, ScheduleError};
use sledsim_explorer::harness::step;

/// No user operation and no fault, where explore's default is one of each.
const NO_ENV: [&str; 4] = ["--user-ops", "0", "--faults", "0"];

/// (invariant, shortest length) for each counterexample of an explore JSON.
fn broken(j: &serde_json::Value) -> Vec<(u64, u64)> {
    j["counterexamples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["invariant"].as_u64().unwrap(), c["length"].as_u64().unwrap()))
        .collect()
}

/// Explores with `args`; checks the verdict, the broken invariants and their
/// shortest lengths, and that each counterexample's printed command replays it:
/// exit 1, the same invariant broken at the same step.
fn check_broken(args: &[&str], want: &[(u64, u64)]) {
    let j = json(&[&["explore"][..], args].concat(), 1);
    assert_eq!(j["verdict"], "violated", "{args:?}");
    assert_eq!(broken(&j), want, "{args:?}");
    let ids: Vec<u64> = want.iter().map(|w| w.0).collect();
    assert_eq!(j["invariants_broken"], serde_json::json!(ids), "{args:?}");
    let shortest = want.iter().map(|w| w.1).min().unwrap();
    assert_eq!(j["counterexample"]["length"], shortest, "{args:?}");
    for c in j["counterexamples"].as_array().unwrap() {
        let (code, out, err) = run_printed(&format!("{} --json", c["command"].as_str().unwrap()));
        assert_eq!(code, 1, "{args:?}: {}\n{err}", c["command"]);
        let again: serde_json::Value = serde_json::from_str(&out).unwrap();
        let hit = again["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["invariant"] == c["invariant"] && v["step"] == c["length"]);
        assert!(
            hit,
            "{args:?}: replay of invariant {} gave {}",
            c["invariant"], again["violations"]
        );
        assert_eq!(again["replay"], c["replay"]);
    }
}

#[test]
fn the_fixed_ordering_is_proved_clean_and_exhaustive_at_the_default_bounds() {
    for scenario in ["stop-race", "disk-move"] {
        let j = json(&["explore", "--scenario", scenario, "--ordering", "publish-then-remove"], 0);
        assert_eq!(
            (j["verdict"].as_str(), j["coverage"].as_str()),
            (Some("clean"), Some("exhaustive"))
        );
        assert_eq!((j["exhaustive"].as_bool(), j["violations"].as_u64()), (Some(true), Some(0)));
        assert!(j["counterexample"].is_null() && j["counterexamples"] == serde_json::json!([]));
        assert!(j["runs"].as_u64().unwrap() > 50, "{scenario}: {j}");
        assert_eq!(j["schedules"], j["runs"]);
        assert_eq!(j["bounds"]["watcher_passes"], 2);
        assert_eq!(j["bounds"]["watcher_concurrency"], 2);
        assert_eq!(j["bounds"]["max_steps"], 200);
        // A user's operation and a fault by default: the environment is explored.
        assert_eq!(
            (j["bounds"]["user_ops"].as_u64(), j["bounds"]["faults"].as_u64()),
            (Some(1), Some(1))
        );
        // No restart of the sled agent unless asked: a budget of its own.
        assert_eq!(j["bounds"]["sled_restarts"].as_u64(), Some(0));
        assert!(j["runs"].as_u64().unwrap() > 10_000, "{scenario}: {}", j["runs"]);
    }
}

#[test]
fn the_legacy_ordering_breaks_four_invariants_each_with_its_shortest_schedule() {
    // The race alone: no user operation and no fault (explore's default is one
    // of each, which gives shorter schedules through them).
    let legacy = [&["--ordering", "remove-then-publish"][..], &NO_ENV].concat();
    // List at Stopping/6 (create, register, two put-states, stop, poke, three
    // reports), then ask inside the window: the 404 at step 11. Its Failed write
    // commits at 12; the instance the user stopped is Failed at 13; the scenario's
    // wait sees Failed, not Stopped, by 17.
    check_broken(
        &[&["--scenario", "stop-race"][..], &legacy].concat(),
        &[(1, 11), (2, 12), (7, 13), (9, 17)],
    );
    // disk-move creates its disk first: one step more each.
    check_broken(
        &[&["--scenario", "disk-move"][..], &legacy].concat(),
        &[(1, 12), (2, 13), (7, 14), (9, 18)],
    );
    // At explore's default bounds a user's stop gives 2 and 7 shorter ones:
    // it reaches the VMM gone in the window, as the watcher's check does.
    check_broken(
        &["--scenario", "stop-race", "--ordering", "remove-then-publish"],
        &[(1, 11), (2, 11), (7, 11), (9, 19)],
    );
}

#[test]
fn every_seeded_bug_is_found_with_the_invariants_it_breaks() {
    // At explore's default bounds: one user operation and one fault, which
    // give some invariants shorter schedules than the scenario alone (the
    // step-bound test below has the scenario's own).
    let cases: [(&str, &[(u64, u64)]); 3] = [
        // The scenario's wait for Stopped never ends; it times out, as the
        // test's does, once nothing else can go on (step 19), and nothing
        // past the bounds would have moved it on.
        ("no-generation-check", &[(1, 15), (2, 12), (3, 12), (4, 3), (7, 12), (8, 19), (9, 19)]),
        ("watcher-lists-terminal", &[(2, 13), (3, 13), (7, 14), (9, 20)]),
        ("watcher-skips-generation", &[(2, 13), (3, 13), (7, 14), (9, 20)]),
    ];
    for (bug, want) in cases {
        check_broken(&["--scenario", "stop-race", "--inject", bug], want);
    }
    // The landed model's user path needs a second stop to show: two stops, the
    // second's put-state answered 404 after Destroyed/7 was recorded, so Failed
    // lands at the stored 7 + 1 (12 steps). Without the bug it is stale.
    let user = ["--scenario", "stop-race", "--user-ops", "1", "--watcher-passes", "1"];
    let bug = [&user[..], &["--inject", "mark-failed-at-stored-gen"]].concat();
    check_broken(&bug, &[(2, 12), (3, 12), (7, 12)]);
    let (code, _, err) = xtask(&["explore", "--inject", "no-such-bug"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
}

/// A counterexample's replay string, given to `scenario` with the model's flags
/// and no environment flags (as a script replays `counterexample.replay`),
/// replays it: the run is given the user operations and faults the string shows.
#[test]
fn a_replay_string_replays_without_environment_flags() {
    let model = ["--scenario", "stop-race", "--ordering", "remove-then-publish"];
    let j = json(&[&["explore"][..], &model].concat(), 1);
    let mut took_an_operation = false;
    for c in j["counterexamples"].as_array().unwrap() {
        let replay = c["replay"].as_str().unwrap();
        took_an_operation |= replay.contains("user.instance_");
        let again = json(&[&["scenario"][..], &model, &["--schedule", replay]].concat(), 1);
        let hit = again["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["invariant"] == c["invariant"] && v["step"] == c["length"]);
        assert!(hit, "{replay}: {}", again["violations"]);
        assert_eq!(again["replay"], c["replay"]);
    }
    assert!(took_an_operation, "a counterexample with a user's operation: {j}");
}

#[test]
fn every_run_it_line_of_the_human_report_reproduces_its_run() {
    let (code, out, _) =
        xtask(&["explore", "--scenario", "stop-race", "--ordering", "remove-then-publish"]);
    assert_eq!(code, 1);
    assert!(out.contains("verdict:  violated"), "{out}");
    let commands: Vec<&str> =
        out.lines().filter_map(|l| l.trim().strip_prefix("run it: ")).collect();
    assert_eq!(commands.len(), 4, "one per broken invariant: {out}");
    for c in commands {
        assert_eq!(run_printed(c).0, 1, "{c}");
    }
}

#[test]
fn a_truncated_search_is_inconclusive_and_exits_3() {
    let j = json(&["explore", "--max-schedules", "10"], 3);
    assert_eq!(
        (j["verdict"].as_str(), j["coverage"].as_str()),
        (Some("inconclusive"), Some("truncated"))
    );
    assert_eq!(j["exhaustive"], false);
    assert_eq!(j["runs"], 10);
    assert!(j["truncated_by"][0].as_str().unwrap().contains("schedule cap"), "{j}");
    let (code, out, _) = xtask(&["explore", "--max-schedules", "10"]);
    assert_eq!(code, 3);
    assert!(out.contains("verdict:  inconclusive") && out.contains("proves nothing"), "{out}");
    // A violation is a fact whatever the coverage.
    let legacy = ["explore", "--ordering", "remove-then-publish", "--max-schedules", "100"];
    let j = json(&[&legacy[..], &NO_ENV].concat(), 1);
    assert_eq!(
        (j["verdict"].as_str(), j["coverage"].as_str()),
        (Some("violated"), Some("truncated"))
    );
}

#[test]
fn a_run_at_the_step_bound_is_inconclusive_never_a_counterexample() {
    // The stop race needs 17 steps; at 12 every run is cut short and nothing breaks.
    let j = json(
        &[&["explore", "--scenario", "stop-race", "--max-steps", "12"][..], &NO_ENV].concat(),
        3,
    );
    assert_eq!(j["verdict"], "inconclusive");
    assert!(j["counterexample"].is_null(), "{j}");
    assert!(j["truncated_by"][0].as_str().unwrap().contains("step bound (12 steps)"), "{j}");
    // The legacy ordering breaks 1 and 2 within 12 steps; 7 and 9 are unjudged,
    // and the printed commands carry the bound, so they reproduce.
    let args =
        ["--scenario", "stop-race", "--ordering", "remove-then-publish", "--max-steps", "12"];
    check_broken(&[&args[..], &NO_ENV].concat(), &[(1, 11), (2, 12)]);
    let (code, out, _) = xtask(&[&["explore"][..], &args, &NO_ENV].concat());
    assert_eq!(code, 1);
    assert!(out.contains("had their end rules (5, 6, 7, 8, 9, 10) unjudged"), "{out}");
    // A proof cut short by the bound knows nothing of what lies past it: here
    // it never sees 8 and 9 break, so the exact search must chase every
    // invariant, not only those the proof found.
    let args = ["--scenario", "stop-race", "--inject", "no-generation-check", "--max-steps", "17"];
    let args = [&args[..], &NO_ENV].concat();
    check_broken(&args, &[(1, 15), (2, 13), (3, 13), (4, 3), (7, 14), (8, 17), (9, 17)]);
    let j = json(&["scenario", "--scenario", "stop-race", "--max-steps", "12"], 3);
    assert_eq!((j["verdict"].as_str(), j["passed"].as_bool()), (Some("inconclusive"), Some(true)));
    let (code, out, _) = xtask(&["scenario", "--scenario", "stop-race", "--max-steps", "12"]);
    assert_eq!(code, 3);
    assert!(out.contains("INCONCLUSIVE"), "{out}");
}

#[test]
fn counts_that_would_search_nothing_or_overflow_exit_2() {
    for args in [
        &["explore", "--max-schedules", "0"][..],
        &["explore", "--max-steps", "0"],
        &["explore", "--max-seconds", "0"],
        &["scenario", "--max-steps", "0"],
        &["stress", "--runs", "0"],
        &["stress", "--max-seconds", "0"],
        &["scenario", "--schedule", "watcher.vmm_list*18446744073709551615 watcher.vmm_list"],
        &["scenario", "--schedule", "scenario.disk_create*201"],
        &["scenario", "--max-steps", "3", "--schedule", "scenario.disk_create*4"],
    ] {
        check_usage_error(args);
    }
}

fn search(run: RunConfig, prune: bool) -> ExploreResult {
    let cfg = ExploreConfig { max_schedules: usize::MAX, prune, ..ExploreConfig::new(run) };
    explore(&cfg).expect("explores")
}

/// The pruned search without partial-order reduction.
fn unreduced(run: RunConfig) -> ExploreResult {
    let cfg = ExploreConfig { max_schedules: usize::MAX, reduce: false, ..ExploreConfig::new(run) };
    explore(&cfg).expect("explores")
}

/// What every schedule reached, by `enumerate`.
struct Everything {
    /// Each broken invariant's shortest length.
    broken: Vec<(u8, usize)>,
    runs: usize,
    /// What the components held at the end of each run that ended.
    ends: std::collections::BTreeSet<String>,
}

/// The reduced search (the default) against the unreduced one and against every
/// schedule: no more situations (free steps leave some out, sleep sets none),
/// the same broken invariants at the same lengths, and, where nothing broke (so
/// no run was cut short for length), the same end states by what the components
/// hold. Returns the schedules both ran: fewer for the reduced one is likely,
/// not certain (a situation met again with other choices asleep is expanded
/// again).
fn check_reduction(run: &RunConfig, all: &Everything, what: &str) -> (usize, usize) {
    let run = RunConfig { describe_end: true, ..run.clone() };
    let (reduced, full) = (search(run.clone(), true), unreduced(run));
    assert!(reduced.situations <= full.situations, "{what}: situations");
    assert_eq!(lengths(&reduced), all.broken, "{what}: reduced");
    assert_eq!(lengths(&full), all.broken, "{what}: unreduced");
    if all.broken.is_empty() {
        assert_eq!(reduced.end_states, all.ends, "{what}: reduced ends");
        assert_eq!(full.end_states, all.ends, "{what}: unreduced ends");
    }
    (reduced.runs, full.runs)
}

fn lengths(r: &ExploreResult) -> Vec<(u8, usize)> {
    r.counterexamples.iter().map(|c| (c.invariant, c.len)).collect()
}

fn stop_race(passes: usize) -> RunConfig {
    RunConfig {
        scenario: ScenarioKind::StopRace,
        watcher_passes: passes,
        ..config(RemovalOrdering::PublishThenRemove, RestartPolicy::Current)
    }
}

/// Every schedule, each run to its end and checked at every step, enumerated as
/// an odometer over the choices: no fingerprints, no pruning, no skipped checks,
/// nothing shared with the explorer but the harness.
fn enumerate(run: &RunConfig) -> Everything {
    struct Odometer {
        prefix: Vec<usize>,
        taken: Vec<(usize, usize)>,
    }
    impl Chooser for Odometer {
        fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
            let i = self.prefix.get(ctx.step).copied().unwrap_or(0);
            self.taken.push((i, ctx.enabled.len()));
            Ok(Some(i))
        }
    }
    let cfg = RunConfig { trace_writes: false, describe_end: true, ..run.clone() };
    let mut best = std::collections::BTreeMap::new();
    let mut prefix = Vec::new();
    let mut runs = 0;
    let mut ends = std::collections::BTreeSet::new();
    loop {
        let mut odo = Odometer { prefix, taken: Vec::new() };
        let v = harness::run_outcome(&cfg, &mut odo).expect("runs");
        runs += 1;
        ends.extend(v.end_state);
        for x in &v.violations {
            let b = best.entry(x.invariant).or_insert(x.step);
            *b = (*b).min(x.step);
        }
        let Some(k) = odo.taken.iter().rposition(|&(i, n)| i + 1 < n) else { break };
        prefix = odo.taken[..k].iter().map(|t| t.0).collect();
        prefix.push(odo.taken[k].0 + 1);
    }
    Everything { broken: best.into_iter().collect(), runs, ends }
}

/// Pruning must not change the verdict: the independent enumeration above finds
/// the same broken invariants with the same shortest lengths, for the fixed and
/// legacy orderings, the 2024 policy and every seeded bug, with and without
/// partial-order reduction; and the explorer with pruning off reaches every
/// situation the pruned search does.
#[test]
fn pruned_search_and_full_enumeration_agree() {
    use sledsim_explorer::harness::Inject;
    let legacy = RemovalOrdering::RemoveThenPublish;
    let mut cases = vec![stop_race(1), RunConfig { ordering: legacy, ..stop_race(1) }];
    cases.push(RunConfig {
        ordering: legacy,
        restart_policy: RestartPolicy::Policy2024,
        ..stop_race(1)
    });
    for bug in Inject::ALL {
        // A restart that keeps its VMs needs a restart to keep them through.
        let sled_restarts = usize::from(bug == Inject::RestartKeepsVms);
        cases.push(RunConfig { inject: Some(bug), sled_restarts, ..stop_race(1) });
    }
    // Two watcher passes: the watcher's history is forgotten between them, and
    // the seeded generation bug breaks all five, so pruning by length fires.
    cases.push(RunConfig { ordering: legacy, ..stop_race(2) });
    cases.push(RunConfig { inject: Some(Inject::NoGenerationCheck), ..stop_race(2) });
    let mut totals = (0, 0);
    for run in cases {
        let what = format!(
            "{:?} {:?} {:?} W={}",
            run.ordering, run.restart_policy, run.inject, run.watcher_passes
        );
        let pruned = search(run.clone(), true);
        let all = enumerate(&run);
        assert_eq!(lengths(&pruned), all.broken, "{what}");
        let want = if all.broken.is_empty() { Verdict::Clean } else { Verdict::Violated };
        assert_eq!((pruned.verdict(), &pruned.coverage), (want, &Coverage::Exhaustive), "{what}");
        // Some spaces are a handful of runs, too few to prune; any larger must
        // prune, and over all the cases pruning must more than halve the runs.
        assert!(all.runs >= pruned.runs, "{what}: pruning adds nothing");
        assert!(all.runs < 100 || all.runs > pruned.runs, "{what}: pruning prunes");
        totals = (totals.0 + all.runs, totals.1 + pruned.runs);
        check_reduction(&run, &all, &what);
    }
    assert!(totals.0 > 2 * totals.1, "pruning prunes: {totals:?}");
    let (pruned, unpruned) = (search(stop_race(2), true), search(stop_race(2), false));
    assert_eq!(pruned.situations, unpruned.situations);
}

/// The same agreement with the environment's choices: a user's operation (with
/// the landed user path seeded, and with the findings' windows open), faults of
/// every kind, and both together; small bounds, since the enumeration is every
/// schedule. Partial-order reduction is checked against both in each case.
#[test]
fn pruned_search_and_full_enumeration_agree_with_users_and_faults() {
    use sledsim_explorer::harness::Inject;
    let env = |user_ops, faults, passes| RunConfig {
        user_ops,
        faults,
        restart_passes: 0,
        ..stop_race(passes)
    };
    let cases = [
        env(1, 0, 0),
        RunConfig { inject: Some(Inject::MarkFailedAtStoredGen), ..env(1, 0, 0) },
        RunConfig { findings: true, ..env(1, 0, 0) },
        env(0, 1, 1),
        env(1, 1, 0),
        // Auto-restart, whose listing a stop waits out (the restart-after-stop
        // window), and with that window open.
        RunConfig { restart_passes: 1, ..env(0, 1, 0) },
        RunConfig { restart_passes: 1, findings: true, ..env(0, 1, 0) },
        // A sled agent's restart beside a watcher pass, and, with its VMs left
        // running, beside a user's start and beside auto-restart (R15).
        RunConfig { sled_restarts: 1, ..env(0, 0, 1) },
        RunConfig { sled_restarts: 1, inject: Some(Inject::RestartKeepsVms), ..env(1, 0, 0) },
        RunConfig {
            sled_restarts: 1,
            restart_passes: 1,
            inject: Some(Inject::RestartKeepsVms),
            ..env(0, 0, 1)
        },
    ];
    let (mut fewer, mut pruned_some) = (false, false);
    for run in cases {
        let what = format!(
            "U={} F={} S={} W={} {:?} findings={}",
            run.user_ops,
            run.faults,
            run.sled_restarts,
            run.watcher_passes,
            run.inject,
            run.findings
        );
        let pruned = search(run.clone(), true);
        let all = enumerate(&run);
        assert_eq!(lengths(&pruned), all.broken, "{what}");
        assert_eq!(pruned.coverage, Coverage::Exhaustive, "{what}");
        assert!(all.runs >= pruned.runs, "{what}: pruning adds ({} vs {})", all.runs, pruned.runs);
        assert!(all.runs < 100 || all.runs > pruned.runs, "{what}: pruning prunes");
        pruned_some |= all.runs > pruned.runs;
        let (reduced, full) = check_reduction(&run, &all, &what);
        fewer |= reduced < full;
        eprintln!(
            "{what}: {} schedules enumerated, {full} runs pruned, {reduced} reduced, broken {:?}",
            all.runs, all.broken
        );
    }
    assert!(fewer, "the reduction saves schedules somewhere");
    assert!(pruned_some, "pruning saves schedules somewhere");
}

/// The reduction against the unreduced search, both on one thread, where
/// enumerating every schedule costs too much: auto-restart beside a user and a
/// fault (the update step's and reincarnation's footprints only matter there),
/// a user beside a watcher pass, two faults, the legacy ordering, and disk-move
/// with a user, a fault, or both (with both and a watcher pass it takes a minute
/// here).
/// The same broken invariants at the same lengths, where nothing broke the same
/// end states, and no more situations.
#[test]
fn reduced_and_unreduced_search_agree_with_restarts_users_and_faults() {
    use sledsim_explorer::harness::Inject;
    let env = |user_ops, faults, watcher_passes, restart_passes| RunConfig {
        user_ops,
        faults,
        restart_passes,
        ..stop_race(watcher_passes)
    };
    let legacy = RemovalOrdering::RemoveThenPublish;
    let cases = [
        env(1, 1, 0, 1),
        RunConfig { findings: true, ..env(1, 1, 0, 1) },
        env(1, 0, 1, 1),
        env(0, 2, 1, 1),
        RunConfig { restart_policy: RestartPolicy::Policy2024, ..env(1, 1, 0, 1) },
        RunConfig { ordering: legacy, ..env(1, 0, 1, 1) },
        RunConfig { scenario: ScenarioKind::DiskMove, ..env(1, 0, 0, 1) },
        RunConfig { scenario: ScenarioKind::DiskMove, ..env(0, 1, 1, 1) },
        // Both instances in play at once: steps about one commute with steps
        // about the other.
        RunConfig { scenario: ScenarioKind::DiskMove, ..env(1, 1, 0, 1) },
        // A user's operation beside a watcher pass: checks of two instances'
        // VMMs overlap.
        RunConfig { scenario: ScenarioKind::DiskMove, ordering: legacy, ..env(1, 0, 1, 0) },
        // A user's start saga beside auto-restart's, with and without
        // reservations unique per instance (R9).
        env(1, 1, 1, 1),
        RunConfig { inject: Some(Inject::DuplicateReservations), ..env(1, 1, 1, 1) },
        // Auto-restart's start failing (the restart-unwound window open).
        RunConfig { findings: true, ..env(0, 2, 1, 1) },
        // A sled agent's restart, which touches every instance's VMM, beside a
        // user and a watcher pass, and on disk-move beside both instances.
        RunConfig { sled_restarts: 1, ..env(1, 0, 1, 1) },
        RunConfig { scenario: ScenarioKind::DiskMove, sled_restarts: 1, ..env(1, 0, 0, 1) },
    ];
    for run in cases {
        let what = format!(
            "{:?} {:?} {:?} U={} F={} S={} W={} R={}",
            run.scenario,
            run.ordering,
            run.restart_policy,
            run.user_ops,
            run.faults,
            run.sled_restarts,
            run.watcher_passes,
            run.restart_passes
        );
        let run = RunConfig { describe_end: true, ..run };
        let one = |reduce| {
            let cfg = ExploreConfig {
                max_schedules: usize::MAX,
                threads: 1,
                reduce,
                ..ExploreConfig::new(run.clone())
            };
            explore(&cfg).expect("explores")
        };
        let (reduced, full) = (one(true), one(false));
        assert_eq!(reduced.coverage, Coverage::Exhaustive, "{what}");
        assert_eq!(lengths(&reduced), lengths(&full), "{what}");
        assert!(reduced.situations <= full.situations, "{what}: situations");
        if run.watcher_passes == 0 {
            // No watcher check, so no free step: sleep sets alone leave no
            // situation out, and a wrong independence that loses one shows here
            // even where it changes no end.
            assert_eq!(reduced.situations, full.situations, "{what}: sleep sets alone");
        }
        if full.counterexamples.is_empty() {
            assert_eq!(reduced.end_states, full.end_states, "{what}: end states");
        }
        eprintln!(
            "{what}: {} situations reduced, {} unreduced, {} runs reduced, {} unreduced, broken {:?}",
            reduced.situations,
            full.situations,
            reduced.runs,
            full.runs,
            lengths(&full)
        );
    }
}

#[test]
fn checking_fingerprints_finds_no_collision_and_changes_nothing() {
    // With a user and faults too: their calls' answers leave the histories once
    // the outer call answers, and every merge that makes is replayed and compared.
    // Each free step the proof takes is also taken in both orders with every
    // other actor's choice there, which must reach one situation (a free step
    // that does not commute truncates the checked search, so this fails).
    let user =
        ["--user-ops", "1", "--faults", "1", "--watcher-passes", "0", "--restart-passes", "0"];
    let faults = ["--user-ops", "0", "--faults", "1", "--restart-passes", "0"];
    // A free step that starts the pass's next check, beside a report that
    // starts an update step: the two orders start the two actors in the other
    // order, which must not tell the situations apart.
    let starts = [
        "--user-ops",
        "1",
        "--faults",
        "0",
        "--watcher-passes",
        "1",
        "--watcher-concurrency",
        "1",
        "--restart-passes",
        "0",
    ];
    // A check's read of a VMM whose row was deleted while a start's
    // registration of it still waits (a stop failed it while Creating): the
    // registration puts it back in the sled agent's table, so the read is not
    // dead, and taking it alone would not commute.
    let reregistered = [
        "--user-ops",
        "1",
        "--faults",
        "1",
        "--findings",
        "--inject",
        "watcher-checks-creating",
        "--restart-passes",
        "0",
        "--watcher-concurrency",
        "1",
    ];
    // Two user operations: a user forgets what it did once it pokes, but not how
    // many operations it has made (a tag that left that out merged a user with
    // one operation left and one with none).
    let two_ops =
        ["--user-ops", "2", "--faults", "0", "--watcher-passes", "1", "--restart-passes", "0"];
    // Auto-restart with something to restart (the 2024 policy restarts what a
    // vanish left Failed), twice: its offer, and its `done`, are audited too.
    let restarts =
        ["--user-ops", "0", "--faults", "1", "--restart-policy", "2024", "--restart-passes", "2"];
    // A check's Failed write at its listed generation + 2: the listed
    // generation stops counting only two generations on (taking it to stop at
    // one gives 6 mismatches here).
    let skips = [
        "--user-ops",
        "1",
        "--faults",
        "1",
        "--inject",
        "watcher-skips-generation",
        "--restart-passes",
        "0",
        "--watcher-passes",
        "1",
    ];
    let cases: [(&str, &str, &[&str], u8); 9] = [
        ("stop-race", "publish-then-remove", &NO_ENV, 0),
        ("stop-race", "publish-then-remove", &two_ops, 0),
        ("stop-race", "publish-then-remove", &restarts, 1),
        ("stop-race", "publish-then-remove", &skips, 1),
        ("stop-race", "remove-then-publish", &NO_ENV, 1),
        ("stop-race", "publish-then-remove", &user, 0),
        ("stop-race", "publish-then-remove", &faults, 0),
        ("disk-move", "publish-then-remove", &starts, 0),
        ("stop-race", "publish-then-remove", &reregistered, 1),
    ];
    for (scenario, ordering, extra, code) in cases {
        // One thread, so the schedule count is the same run to run too.
        let base = ["explore", "--threads", "1", "--scenario", scenario, "--ordering", ordering];
        let args = [&base[..], extra].concat();
        let (plain, checked) =
            (json(&args, code), json(&[&args[..], &["--check-fingerprints"]].concat(), code));
        for field in ["verdict", "coverage", "runs", "situations", "counterexamples"] {
            assert_eq!(plain[field], checked[field], "{args:?}: {field}");
        }
    }
}

/// A chooser that creates a disk while it looks: the check must catch it.
struct Meddler;

impl Chooser for Meddler {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        if ctx.step == 3 {
            let _ = ctx.world.nexus.disk_create("meddled");
        }
        Ok(Some(0))
    }
}

#[test]
fn a_chooser_that_changes_the_world_is_a_harness_error() {
    use sledsim_explorer::harness::HarnessError;
    let cfg = RunConfig { check_chooser: true, ..stop_race(1) };
    let r = harness::run(&cfg, &mut Meddler).expect("runs");
    assert!(
        r.harness_errors.contains(&HarnessError::ChooserChangedWorld { step: 4 }),
        "{:?}",
        r.harness_errors
    );
    // The named schedules only look.
    let cfg = RunConfig {
        check_chooser: true,
        ..config(RemovalOrdering::RemoveThenPublish, RestartPolicy::Policy2024)
    };
    for r in [harness::run(&cfg, &mut Seed7282::default()), harness::run(&cfg, &mut Happy)] {
        assert_eq!(r.expect("runs").harness_errors, Vec::new());
    }
}

#[test]
fn explore_draws_the_counterexample() {
    let dir = std::env::temp_dir().join(format!("sledsim-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("report.html");
    let path = file.to_str().unwrap();
    let args = ["explore", "--scenario", "stop-race", "--ordering", "remove-then-publish"];
    let (code, _, _) = xtask(&[&args[..], &["--report", path]].concat());
    assert_eq!(code, 1);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("<svg") && html.contains("#ffd7d7"), "violating step highlighted");
    for lane in ["scenario", "nexus", "datastore", "watcher", "update-step", "sled-agent"] {
        assert!(html.contains(&format!(">{lane}</text>")), "lifeline {lane}");
    }
    let (code, mermaid, _) = xtask(&[&args[..], &["--mermaid"]].concat());
    assert_eq!(code, 1);
    assert!(mermaid.starts_with("sequenceDiagram"));
    assert!(mermaid.contains("rect rgb") && mermaid.contains("invariant 1 broken"), "{mermaid}");

    let (code, _, _) = xtask(&["explore", "--scenario", "stop-race", "--report", path]);
    assert_eq!(code, 0);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("clean: no schedule") && html.contains("watcher pass"), "bounds shown");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explore_is_deterministic() {
    // On one thread, everything; on every core, all but the schedule counts
    // (at bounds this small: see the README on thread counts and situations).
    let args = ["explore", "--scenario", "stop-race", "--ordering", "remove-then-publish"];
    let args = [&args[..], &NO_ENV].concat();
    let one = [&args[..], &["--threads", "1"]].concat();
    let (a, b) = (json(&one, 1), json(&one, 1));
    for field in ["runs", "situations", "violating_runs", "counterexamples"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    let (c, d) = (json(&args, 1), json(&args, 1));
    for field in ["situations", "counterexamples"] {
        assert_eq!((&a[field], &c[field]), (&d[field], &d[field]), "{field}");
    }
    // More watcher passes can only add situations.
    let one = json(&["explore", "--scenario", "stop-race", "--watcher-passes", "1"], 0);
    let two = json(&["explore", "--scenario", "stop-race", "--watcher-passes", "2"], 0);
    assert!(one["situations"].as_u64() < two["situations"].as_u64());
}

/// What `--check-fingerprints` replays at every merge: two paths with one future
/// agree, two without do not.
#[test]
fn merged_paths_are_checked_for_one_future() {
    use sledsim_explorer::explore::one_future;
    let run = stop_race(1);
    assert!(one_future(&run, &[], &[]).unwrap());
    // The scenario's create first, or the watcher's (empty) listing first: the
    // watcher then lists before or after the VMM exists, so the futures differ.
    assert!(!one_future(&run, &[0], &[1]).unwrap());
    // The scenario's create and the watcher's listing in either order: the
    // watcher skips a VMM still Creating, so neither sees the other, and one
    // future.
    assert!(one_future(&run, &[0, 1], &[1, 0]).unwrap());
}

/// Follows a replay string to step `at`, then takes the situation's fingerprint
/// and stops.
struct FingerprintAt {
    replay: Replay,
    at: usize,
    fingerprint: Option<u64>,
}

impl Chooser for FingerprintAt {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        if ctx.step == self.at {
            self.fingerprint = Some(ctx.world.fingerprint(ctx.observer));
            return Ok(None);
        }
        self.replay.choose(ctx)
    }
}

/// Two stops' futures differ by the generation each read before asking the sled
/// agent (a 404 makes it Failed at that + 1), so two situations that differ only
/// there must not share a fingerprint. Here the watcher's write and the user's
/// stop go in either order: the stop reads g5 or g6.
#[test]
fn what_a_stop_read_before_calling_the_sled_agent_is_in_the_fingerprint() {
    let prefix = "scenario.instance_create scenario.vmm_register scenario.vmm_put_state \
        scenario.instance_stop scenario.vmm_put_state scenario.vmm_poke \
        scenario.cpapi_instances_put*2 watcher.vmm_list check1.vmm_get_state";
    let run = RunConfig {
        ordering: RemovalOrdering::RemoveThenPublish,
        user_ops: 1,
        restart_passes: 0,
        ..stop_race(1)
    };
    let at = |rest: &str| {
        let replay = Replay::parse(&format!("{prefix} {rest}")).expect("parses");
        let mut c = FingerprintAt { replay, at: 12, fingerprint: None };
        harness::run(&run, &mut c).expect("runs");
        c.fingerprint.expect("reached step 12")
    };
    let stop_first = at("user.instance_stop(inst1) check1.vmm_write");
    let write_first = at("check1.vmm_write user.instance_stop(inst1)");
    assert_ne!(stop_first, write_first);
}

/// Two stops of one VMM in flight at once, the user's and the scenario's: which
/// of them read which generation decides the Failed a 404 makes, and the set of
/// generations in flight does not say, so each put-state's basis is part of the
/// situation. Here the user stops before the VMM vanishes and the scenario after
/// it is marked Failed, or the other way round; the two used to share a
/// fingerprint, and the search lost what followed one of them.
#[test]
fn which_stop_read_which_generation_is_in_the_fingerprint() {
    let run = RunConfig { user_ops: 1, faults: 1, ..stop_race(2) };
    let at = |replay: &str, steps: usize| {
        let replay = Replay::parse(replay).expect("parses");
        let mut c = FingerprintAt { replay, at: steps, fingerprint: None };
        harness::run(&run, &mut c).expect("runs");
        c.fingerprint.expect("reached the step")
    };
    let user_first = at(
        "scenario.instance_create scenario.vmm_register scenario.vmm_put_state \
         watcher.vmm_list user.instance_stop(inst1) check1.vmm_get_state check1.vmm_write \
         watcher.vmm_list fault.vmm_vanish(inst1) check2.vmm_get_state check2.vmm_write \
         scenario.instance_stop",
        12,
    );
    let scenario_first = at(
        "watcher.vmm_list scenario.instance_create scenario.vmm_register scenario.vmm_put_state scenario.instance_stop watcher.vmm_list \
         fault.vmm_vanish(inst1) check1.vmm_get_state check1.vmm_write \
         user.instance_stop(inst1)",
        10,
    );
    assert_ne!(user_first, scenario_first);
}

/// Plays disk-move so that both instances have a live VMM when the watcher lists
/// (a user restarts inst1 once inst2 exists), and records the most checks alive
/// at once: each check is an actor of its own, bounded by the concurrency.
#[derive(Default)]
struct TwoLiveVmms {
    listed: bool,
    most_checks: usize,
}

impl Chooser for TwoLiveVmms {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        let checks = ctx.world.sched.unfinished();
        let alive = checks.iter().filter(|k| matches!(k, ActorKind::Check(_))).count();
        self.most_checks = self.most_checks.max(alive);
        let nexus = &ctx.world.nexus;
        let live = nexus
            .vmms()
            .iter()
            .filter(|v| {
                !v.deleted && matches!(v.state, DbVmmState::Reported(s) if s != VmmState::Destroyed)
            })
            .count();
        let pick = |f: &dyn Fn(&step::Choice) -> bool| ctx.enabled.iter().position(f);
        let start_inst1 = |c: &step::Choice| {
            c.call.kind == CallKind::InstanceStart && c.call.arg == step::Arg::Name("inst1")
        };
        if nexus.instances().len() == 2 {
            if let Some(i) = pick(&start_inst1) {
                return Ok(Some(i));
            }
        }
        if !self.listed && live == 2 {
            if let Some(i) = pick(&|c| c.call.kind == CallKind::VmmList) {
                self.listed = true;
                return Ok(Some(i));
            }
        }
        let plain = |c: &step::Choice| {
            c.fault.is_none() && !c.optional() && (self.listed || !c.kind.is_watcher())
        };
        // The user's restart runs through first, so inst1 is live again early.
        let user = |c: &step::Choice| plain(c) && c.kind == ActorKind::User;
        Ok(pick(&user).or_else(|| pick(&plain)).or_else(|| pick(&|c| c.fault.is_none())))
    }
}

fn most_checks_at_once(concurrency: usize) -> usize {
    let run = RunConfig {
        user_ops: 1,
        watcher_passes: 1,
        restart_passes: 0,
        watcher_concurrency: concurrency,
        ..RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
    };
    let mut c = TwoLiveVmms::default();
    let r = harness::run(&run, &mut c).expect("runs");
    assert!(c.listed, "the watcher listed two live VMMs");
    assert_eq!(r.watcher.first().map(|p| p.checked), Some(2), "{:?}", r.watcher);
    c.most_checks
}

#[test]
fn a_pass_runs_its_checks_as_actors_up_to_the_concurrency() {
    assert_eq!(most_checks_at_once(1), 1);
    assert_eq!(most_checks_at_once(2), 2);
}

/// What a search must give whatever its thread count and whatever order it runs
/// its schedules in: the verdict, the coverage, the distinct situations and
/// each counterexample (its invariant, length and replay string). Only the
/// schedule count and the time may differ. Shuffled frontiers give orders the
/// OS scheduler may never produce.
fn check_same_for_any_thread_count(run: RunConfig, reduce: bool) {
    let with = |threads, shuffle| {
        let cfg = ExploreConfig { threads, shuffle, reduce, ..ExploreConfig::new(run.clone()) };
        let r = explore(&cfg).expect("explores");
        let cex: Vec<_> =
            r.counterexamples.iter().map(|c| (c.invariant, c.len, c.replay())).collect();
        (r.verdict(), r.coverage.clone(), r.situations, cex)
    };
    let one = with(1, None);
    assert!(one.2 > 100, "{:?}: only {} situations", run.scenario, one.2);
    // Shuffle 2 is one that gave stop-race with a user operation and a fault
    // one situation more than the unshuffled order, while a sleep set could
    // pass by a free step.
    for (threads, shuffle) in [(2, None), (1, Some(2)), (1, Some(1234)), (2, Some(99))] {
        let other = with(threads, shuffle);
        assert_eq!(
            one, other,
            "{:?} {:?} {:?}: {threads} thread(s), shuffle {shuffle:?}",
            run.scenario, run.ordering, run.inject
        );
    }
}

#[test]
fn one_thread_and_two_give_the_same_result() {
    for scenario in [ScenarioKind::StopRace, ScenarioKind::DiskMove] {
        for ordering in [RemovalOrdering::PublishThenRemove, RemovalOrdering::RemoveThenPublish] {
            let run = RunConfig { scenario, ordering, ..config(ordering, RestartPolicy::Current) };
            check_same_for_any_thread_count(run, true);
        }
    }
    check_same_for_any_thread_count(
        config(RemovalOrdering::PublishThenRemove, RestartPolicy::Current),
        false,
    );
    // A user operation and a fault: free steps and sleep sets meet.
    check_same_for_any_thread_count(RunConfig { user_ops: 1, faults: 1, ..stop_race(2) }, true);
    // A seeded bug, with a user operation: more invariants break, and more
    // schedules break each at its shortest length.
    let seeded =
        RunConfig { inject: Some(harness::Inject::NoGenerationCheck), user_ops: 1, ..stop_race(1) };
    check_same_for_any_thread_count(seeded, true);
}

/// Writes each shard's JSON of a search split `n` ways to a file; returns the files.
/// (A shard of a search that breaks something may itself break nothing.)
fn shard_files(args: &[&str], n: usize, tag: &str) -> Vec<std::path::PathBuf> {
    (1..=n)
        .map(|k| {
            let shard = format!("{k}/{n}");
            let argv = [&["explore"][..], args, &["--shard", &shard, "--json"]].concat();
            let (code, out, err) = xtask(&argv);
            assert!(code <= 1, "{argv:?}: {err}");
            let j: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(
                (j["shard"]["index"].as_u64(), j["shard"]["count"].as_u64()),
                (Some(k as u64), Some(n as u64))
            );
            let path = std::env::temp_dir()
                .join(format!("sledsim-shard-{}-{tag}-{k}-of-{n}.json", std::process::id()));
            std::fs::write(&path, j.to_string()).unwrap();
            path
        })
        .collect()
}

fn merged(files: &[std::path::PathBuf], code: u8) -> serde_json::Value {
    let files: Vec<&str> = files.iter().map(|f| f.to_str().unwrap()).collect();
    json(&[&["explore-merge"][..], &files].concat(), code)
}

/// The search split N ways and merged gives what it gives unsplit: the verdict,
/// the coverage, the invariants broken, and each counterexample.
fn check_shards_merge_to_one_search(args: &[&str], code: u8) {
    let whole = json(&[&["explore"][..], args].concat(), code);
    let key = |j: &serde_json::Value| {
        let cex: Vec<_> = j["counterexamples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["invariant"].clone(), c["length"].clone(), c["replay"].clone()))
            .collect();
        (j["verdict"].clone(), j["coverage"].clone(), j["invariants_broken"].clone(), cex)
    };
    for n in 1..=3 {
        let files = shard_files(args, n, &format!("{}-{code}", args.join("")));
        let m = merged(&files, code);
        assert_eq!(key(&m), key(&whole), "{args:?} in {n} shards");
        // Its counts are the shards' summed, and it says over how many.
        assert_eq!(
            (m["merged_shards"].as_u64(), whole["merged_shards"].as_u64()),
            (Some(n as u64), Some(0))
        );
        // Each part is a part: fewer situations than the whole (a split that
        // gave every schedule to every shard would merge right too).
        for f in files.iter().filter(|_| n > 1) {
            let part: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            let (p, w) = (part["situations"].as_u64(), whole["situations"].as_u64());
            assert!(p < w, "{args:?}: a shard of {n} took {p:?} situations of {w:?}");
        }
        for f in files {
            let _ = std::fs::remove_file(f);
        }
    }
}

#[test]
fn shards_merge_to_the_unsplit_result() {
    check_shards_merge_to_one_search(&[&["--scenario", "stop-race"][..], &NO_ENV].concat(), 0);
    let legacy = ["--ordering", "remove-then-publish"];
    for scenario in ["stop-race", "disk-move"] {
        let args = [&["--scenario", scenario][..], &legacy, &NO_ENV].concat();
        check_shards_merge_to_one_search(&args, 1);
    }
}

#[test]
fn bad_shards_are_usage_errors() {
    for bad in ["3/2", "0/2", "2", "a/b", "1/0", "1/2/3", "-1/2"] {
        check_usage_error(&["explore", "--shard", bad]);
    }
    check_usage_error(&["explore", "--threads", "0"]);
    let a = shard_files(&["--scenario", "stop-race"], 2, "bad-a");
    let b = shard_files(&["--scenario", "stop-race", "--watcher-passes", "1"], 2, "bad-b");
    let strs = |v: &[&std::path::PathBuf]| {
        v.iter().map(|f| f.to_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    // Shard 2 as another model's build would write it: its digest differs.
    let other = std::env::temp_dir().join(format!("sledsim-other-{}.json", std::process::id()));
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&a[1]).unwrap()).unwrap();
    assert_eq!(j["shard"]["model"], sledsim_explorer::explore::MODEL_DIGEST);
    j["shard"]["model"] = "0123456789abcdef".into();
    std::fs::write(&other, j.to_string()).unwrap();
    let cases = [
        strs(&[&a[0]]),         // shard 2 of 2 missing
        strs(&[&a[0], &a[0]]),  // shard 1 twice
        strs(&[&a[0], &b[1]]),  // two searches
        strs(&[&a[0], &other]), // two models
        vec![std::env::temp_dir().join("sledsim-no-such-shard.json").to_str().unwrap().to_string()],
    ];
    for files in cases {
        let files: Vec<&str> = files.iter().map(String::as_str).collect();
        check_usage_error(&[&["explore-merge"][..], &files].concat());
    }
    // Not a shard's JSON: a plain explore's.
    let plain = std::env::temp_dir().join(format!("sledsim-plain-{}.json", std::process::id()));
    std::fs::write(&plain, json(&["explore", "--scenario", "stop-race"], 0).to_string()).unwrap();
    check_usage_error(&["explore-merge", plain.to_str().unwrap()]);
    // What a shard's job leaves when its explore failed before writing JSON.
    let empty = std::env::temp_dir().join(format!("sledsim-empty-{}.json", std::process::id()));
    std::fs::write(&empty, "").unwrap();
    let args = ["explore-merge", a[0].to_str().unwrap(), empty.to_str().unwrap()];
    check_usage_error(&args);
    let (_, _, err) = crate::xtask(&args);
    assert!(err.contains("empty: its explore wrote no result"), "{err}");
    for f in a.iter().chain(&b).chain([&plain, &other, &empty]) {
        let _ = std::fs::remove_file(f);
    }
}

/// Each counterexample says where its run ends: the false Failed (invariant 2)
/// leaves inst1 Failed with its VMM's row Failed, though its user stopped it.
#[test]
fn each_counterexample_carries_its_end_state() {
    let j = json(&[&["explore", "--ordering", "remove-then-publish"][..], &NO_ENV].concat(), 1);
    let c = j["counterexamples"]
        .as_array()
        .expect("counterexamples")
        .iter()
        .find(|c| c["invariant"] == 2)
        .expect("invariant 2 breaks");
    let end = &c["end_state"];
    assert_eq!(end["end"], "finished", "{end}");
    assert_eq!(
        (
            end["instances"]["inst1"]["state"].as_str(),
            end["instances"]["inst1"]["intended"].as_str()
        ),
        (Some("failed"), Some("stopped")),
        "{end}"
    );
    assert_eq!(end["vmms"]["inst1/vmm1"]["state"], "failed", "{end}");
}

/// The report plays every counterexample to the end of its run: under the
/// legacy ordering and the 2024 policy, a section per broken invariant, the
/// harm marked where it happens (Failed applied, the sled agent's Destroyed
/// refused, the instance going Failed), what each component held after each
/// step, and the instance's end against what its user asked for. `--invariant`
/// keeps one.
#[test]
fn the_report_shows_each_counterexample_to_its_end_with_the_harm() {
    let dir = std::env::temp_dir().join(format!("sledsim-harm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("report.html");
    let path = file.to_str().unwrap();
    let args = ["explore", "--ordering", "remove-then-publish", "--restart-policy", "2024"];
    let args = [&args[..], &NO_ENV].concat();
    let (code, _, _) = xtask(&[&args[..], &["--report", path]].concat());
    assert_eq!(code, 1);
    let html = std::fs::read_to_string(&file).unwrap();
    for k in [1, 2, 7, 9] {
        assert!(html.contains(&format!("<section id=\"inv-{k}\">")), "a section for {k}");
        assert!(html.contains(&format!("href=\"#inv-{k}\"")), "picked from the contents: {k}");
    }
    let section = |k: u8| {
        let from = html.find(&format!("<section id=\"inv-{k}\">")).unwrap();
        let to = from + html[from..].find("</section>").unwrap();
        html[from..to].to_string()
    };
    // Invariant 2's run: the watcher's Failed/g7 applied, the sim's Destroyed/g7
    // refused after it, inst1 Failed though stopped, then auto-restarted; each
    // marked on its own row; the rows after the violation are there too.
    let s2 = section(2);
    let marked = |needle: &str, mark: &str| {
        let row = row_with(&s2, needle);
        assert!(row.contains(&format!("\"harm\">{mark}</span>")), "{needle} marks {mark}: {row}");
    };
    marked("vmm_write inst1/vmm1 failed/g7", "Failed applied");
    marked("cpapi_instances_put inst1/vmm1 destroyed/g7", "Destroyed refused");
    marked("instance_update inst1", "instance Failed");
    marked("<td>restart</td><td>instance_start inst1", "auto-restart");
    assert!(!row_with(&s2, "vmm_register inst1/vmm1").contains("\"harm\""), "no harm there");
    assert!(s2.contains("class=\"after\""), "the run goes on past the violation");
    let strip = "<td class=\"strip\">-</td><td class=\"strip\">inst1/vmm1 failed/g7</td>\
                 <td class=\"strip\">inst1 stopping</td>";
    assert!(s2.contains(strip), "a state strip: sled, Nexus, instances: {s2}");
    assert!(s2.contains("inst1/vmm1 failed/g7 (deleted)"), "a deleted row stays in view");
    // Its user stopped it; auto-restart started it again.
    assert!(
        s2.contains("<tr class=\"bad\"><td>inst1</td><td>starting</td><td>stopped</td><td>1</td>")
    );
    // Under today's policy nothing restarts it: it ends Failed, though stopped.
    let today = ["explore", "--ordering", "remove-then-publish", "--invariant", "2"];
    let (code, _, _) = xtask(&[&today[..], &NO_ENV, &["--report", path]].concat());
    assert_eq!(code, 1);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("<tr class=\"bad\"><td>inst1</td><td>failed</td><td>stopped</td>"));
    // A VMM that truly vanished: the watcher's Failed and the restart are its job,
    // unmarked; the stop that then fails the new VMM is marked.
    let vanish =
        ["explore", "--scenario", "stop-race", "--user-ops", "0", "--faults", "1", "--findings"];
    let (code, _, _) = xtask(&[&vanish[..], &["--invariant", "2", "--report", path]].concat());
    assert_eq!(code, 1);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("vmm_vanish inst1"), "the run has a vanish");
    assert!(!row_with(&html, "vmm_write inst1/vmm1 failed").contains("\"harm\""));
    assert!(!row_with(&html, "<td>restart</td><td>instance_start inst1").contains("\"harm\""));
    assert!(row_with(&html, "vmm_put_state inst1/vmm2 stopped").contains("Failed applied"));

    let (code, _, _) = xtask(&[&args[..], &["--invariant", "9", "--report", path]].concat());
    assert_eq!(code, 1);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("<section id=\"inv-9\">") && !html.contains("<section id=\"inv-2\">"));
    let (code, human, _) = xtask(&[&args[..], &["--invariant", "3"]].concat());
    assert_eq!(code, 1);
    assert!(human.contains("invariant 3 (") && human.contains(") did not break"), "{human}");
    check_usage_error(&["explore", "--invariant", "13"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The table row of `html` that contains `needle`.
fn row_with<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html.find(needle).unwrap_or_else(|| panic!("no row with {needle}"));
    let from = html[..at].rfind("<tr").expect("in a row");
    let to = at + html[at..].find("</tr>").expect("a row ends");
    &html[from..to]
}

/// A sled agent's restart is a choice of its own budget: with the VMs left
/// running it breaks rule 12 (R15), and the printed command replays it; the
/// same schedule with the VMs ending (omicron's start-up cleanup) breaks
/// nothing, and the fixed model is proved at the same bounds.
#[test]
fn a_restart_that_keeps_its_vms_runs_two_of_one_instance() {
    let bounds = ["--scenario", "stop-race", "--user-ops", "0", "--faults", "0"];
    let restart = [&bounds[..], &["--sled-restarts", "1"]].concat();
    let keeps = [&restart[..], &["--inject", "restart-keeps-vms"]].concat();
    check_broken(&keeps, &[(12, 10)]);
    let j = json(&[&["explore"][..], &keeps].concat(), 1);
    assert_eq!(j["bounds"]["sled_restarts"], 1);
    let replay = j["counterexample"]["replay"].as_str().unwrap().to_string();
    assert!(replay.contains("fault.sled_restart"), "{replay}");
    // Its printed command gives the run what explore gave it: the string's
    // `fault.done` would otherwise read as a fault left.
    let (_, out, _) =
        run_printed(&format!("{} --json", j["counterexample"]["command"].as_str().unwrap()));
    let again: serde_json::Value = serde_json::from_str(&out).unwrap();
    let env = &again["environment"];
    assert_eq!(
        (&env["user_ops"], &env["faults"], &env["sled_restarts"]),
        (&0.into(), &0.into(), &1.into())
    );
    let fixed = [&["scenario"][..], &restart, &["--schedule", &replay]].concat();
    let again = json(&fixed, 0);
    assert_eq!(again["violations"], serde_json::json!([]), "{again}");
    let proved = json(&[&["explore"][..], &restart].concat(), 0);
    assert_eq!(
        (proved["verdict"].as_str(), proved["exhaustive"].as_bool()),
        (Some("clean"), Some(true))
    );
    // The report's state strip shows the VM left running outside the table.
    let dir = std::env::temp_dir().join(format!("sledsim-r15-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("report.html");
    let report = [&["explore"][..], &keeps, &["--report", file.to_str().unwrap()]].concat();
    assert_eq!(xtask(&report).0, 1);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("<section id=\"inv-12\">") && html.contains("inst1/vmm1 running, lost"));
    std::fs::remove_dir_all(&dir).unwrap();
    // The seeded bug brings the restart it needs, unless told otherwise; with
    // no restart to spend it has nothing to keep.
    let bug = json(&[&["explore"][..], &bounds, &["--inject", "restart-keeps-vms"]].concat(), 1);
    assert_eq!((bug["bounds"]["sled_restarts"].as_u64(), broken(&bug)), (Some(1), vec![(12, 10)]));
    let none = ["--inject", "restart-keeps-vms", "--sled-restarts", "0"];
    json(&[&["explore"][..], &bounds, &none].concat(), 0);
}
