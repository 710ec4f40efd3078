//! The race catalogue, race by race: each pre-fix model breaks its invariant, each
//! fixed model is proved at the same bounds, and the README's row says so.

use sledsim_explorer::catalogue::{self, Row, HEADER, NOT_MODELLED, RACES};
use sledsim_explorer::explore::{explore, ExploreConfig};
use sledsim_explorer::harness::{EXPLORE_FAULTS, EXPLORE_USER_OPS};

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).expect("the README")
}

/// The README's catalogue rows, as cells, by race.
fn readme_rows() -> Vec<Vec<String>> {
    let text = readme();
    let start = text.find(&catalogue::markdown_row(&HEADER.map(String::from))).expect(
        "the README's race catalogue table (its header as `cargo xtask catalogue` prints it)",
    );
    text[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.trim_matches('|').split(" | ").map(|c| c.trim().to_string()).collect())
        .collect()
}

/// Checks the race, then its README row, all but the proof's time.
fn check(id: &str) {
    let race = catalogue::race(id).expect("a race of the catalogue");
    let row: Row = catalogue::check(race).unwrap_or_else(|e| panic!("{e}"));
    let want = row.cells();
    let rows = readme_rows();
    let got = rows.iter().find(|r| r.first() == Some(&want[0])).unwrap_or_else(|| {
        panic!("no README row for {id}; `cargo xtask catalogue` prints:\n{}", want.join(" | "))
    });
    let figures = |c: &str| c.rsplit_once(", ").map(|(f, _)| f.to_string());
    let last = want.len() - 1;
    assert_eq!(got[..last], want[..last], "{id}: the README's row differs from the code's");
    assert_eq!(figures(&got[last]), figures(&want[last]), "{id}: the proof's figures");
}

#[test]
fn r1_the_sled_agent_removes_before_it_reports() {
    check("R1");
}

#[test]
fn r2_the_sim_pokes_the_same_window_in_disk_move() {
    check("R2");
}

#[test]
fn r3_auto_restart_ignores_the_users_stop() {
    check("R3");
}

#[test]
fn r4_a_lost_answer_is_taken_for_an_unhealthy_sled_agent() {
    check("R4");
}

#[test]
fn r5_a_request_to_a_terminating_vmm_is_dropped_as_a_500() {
    check("R5");
}

#[test]
fn r7_the_watcher_checks_a_vmm_not_yet_registered() {
    check("R7");
}

#[test]
fn r9_a_users_start_and_auto_restart_both_reserve() {
    check("R9");
}

#[test]
fn r15_a_restarted_sled_agent_leaves_its_vm_running() {
    check("R15");
}

/// Each race's switch breaks its invariant at explore's default bounds too (one
/// user operation, one fault), not only at the smallest bounds its row names.
/// The counterexample there may be shorter and go another way: R5's switch is
/// omicron before #6166, which was also before #6455, so with a fault to spend
/// R4's lost answer shows first.
#[test]
fn every_race_breaks_its_invariant_at_explores_default_bounds() {
    for race in RACES {
        let run = sledsim_explorer::RunConfig {
            user_ops: EXPLORE_USER_OPS,
            faults: EXPLORE_FAULTS,
            ..race.pre_fix()
        };
        let found = explore(&ExploreConfig::new(run)).unwrap_or_else(|e| panic!("{e}"));
        let broken: Vec<u8> = found.counterexamples.iter().map(|c| c.invariant).collect();
        assert!(broken.contains(&race.breaks), "{}: broke {broken:?}", race.id);
    }
}

/// Every race has its test above and its row, and nothing else has a row.
#[test]
fn the_readme_has_one_row_per_race_and_says_what_is_left_out() {
    let ids: Vec<String> = readme_rows().into_iter().filter_map(|r| r.first().cloned()).collect();
    let want: Vec<&str> = RACES.iter().map(|r| r.id).collect();
    assert_eq!(ids, want);
    let text = readme();
    for (id, why) in NOT_MODELLED {
        assert!(text.contains(&format!("- {id}: {why}")), "the README says why {id} is left out");
    }
}
