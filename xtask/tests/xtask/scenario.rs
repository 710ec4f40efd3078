//! `cargo xtask scenario`: the seed-7282 and happy schedules, replay strings, bad input.

use super::*;

#[test]
fn fixed_ordering_under_seed_7282_finds_destroyed_and_passes() {
    let r = seed_7282(RemovalOrdering::PublishThenRemove, RestartPolicy::Current);
    assert!(
        matches!(watcher_get_state(&r), Answer::State(VmmState::Destroyed, g) if g.as_u64() == 7),
        "{:?}",
        watcher_get_state(&r)
    );
    assert!(!r.writes.iter().any(|w| w.state == VmmState::Failed), "no Failed is written");
    assert_eq!(instance_state(&r, "inst1"), ExternalState::Stopped);
    assert_eq!(instance_state(&r, "inst2"), ExternalState::Stopped);
    let inst2 = r.instances.iter().find(|i| i.name == "inst2").unwrap().id;
    assert_eq!(r.disk.as_ref().map(|d| d.state), Some(nexus_stub::DiskState::Attached(inst2)));
    assert!(r.passed(), "{:?}", r.violations);

    let j = json(&["scenario"], 0);
    assert_eq!(j["passed"], true);
    assert_eq!(j["disk"]["instance"], "inst2");
    assert_eq!(j["instances"]["inst1"]["state"], "stopped");
}

#[test]
fn legacy_ordering_under_seed_7282_reproduces_7282() {
    let r = seed_7282(RemovalOrdering::RemoveThenPublish, RestartPolicy::Current);
    assert!(matches!(watcher_get_state(&r), Answer::Gone { .. }));
    let vmm1 = r.writes[0].propolis_id;
    let terminal: Vec<_> = r
        .writes
        .iter()
        .filter(|w| w.propolis_id == vmm1 && w.state.is_terminal())
        .map(|w| (w.state, w.gen.as_u64(), w.applied))
        .collect();
    // The watcher's Failed/7 commits first; the sim's real Destroyed/7 is stale.
    assert_eq!(terminal, [(VmmState::Failed, 7, true), (VmmState::Destroyed, 7, false)]);
    assert_eq!(instance_state(&r, "inst1"), ExternalState::Failed);
    let broken: Vec<u8> = r.violations.iter().map(|v| v.invariant).collect();
    assert_eq!(broken, [1, 2, 7, 9]);

    let j = json(&["scenario", "--ordering", "remove-then-publish", "--schedule", "seed-7282"], 1);
    assert_eq!(j["passed"], false);
    assert_eq!(j["violations"][0]["invariant"], 1);
}

#[test]
fn legacy_ordering_with_the_2024_policy_auto_restarts_the_stopped_instance() {
    let r = seed_7282(RemovalOrdering::RemoveThenPublish, RestartPolicy::Policy2024);
    let inst1 = r.instances.iter().find(|i| i.name == "inst1").expect("inst1");
    assert_eq!(inst1.auto_restarts, 1);
    assert_eq!(inst1.state, ExternalState::Starting);
    assert!(r.violations.iter().any(|v| v.invariant == 7));
    json(&["scenario", "--ordering", "remove-then-publish", "--restart-policy", "2024"], 1);
}

#[test]
fn happy_schedule_passes_with_either_ordering() {
    for ordering in [RemovalOrdering::PublishThenRemove, RemovalOrdering::RemoveThenPublish] {
        let r = harness::run(&config(ordering, RestartPolicy::Current), &mut Happy).expect("runs");
        assert!(r.passed(), "{ordering:?}: {:?}", r.violations);
        assert!(!r.steps.iter().any(|s| matches!(s.answer, Answer::Gone { .. })));
    }
    for ordering in ["publish-then-remove", "remove-then-publish"] {
        json(&["scenario", "--schedule", "happy", "--ordering", ordering], 0);
    }
}

#[test]
fn bad_flag_values_exit_2_with_one_line() {
    for args in [
        &["scenario", "--ordering", "bogus"][..],
        &["scenario", "--restart-policy", "never-heard-of-it"],
        &["scenario", "--scenario", "nope"],
        &["scenario", "--transport", "carrier-pigeon"],
        &["scenario", "--watcher-passes", "-1"],
        &["no-such-command"],
    ] {
        check_usage_error(args);
    }
}

#[test]
fn a_replay_string_reruns_the_same_schedule() {
    let first = json(&["scenario", "--ordering", "remove-then-publish"], 1);
    let replay = first["replay"].as_str().expect("replay string").to_string();
    let again = json(&["scenario", "--ordering", "remove-then-publish", "--schedule", &replay], 1);
    for field in ["steps", "violations", "instances", "disk", "replay"] {
        assert_eq!(first[field], again[field], "{field}");
    }
    let mut parsed = Replay::parse(&replay).expect("parses");
    let cfg = config(RemovalOrdering::RemoveThenPublish, RestartPolicy::Current);
    assert_eq!(harness::run(&cfg, &mut parsed).expect("matches").replay(), replay);
}

#[test]
fn malformed_or_non_matching_replays_exit_2_with_the_position() {
    let (code, _, err) = xtask(&["scenario", "--schedule", "not a schedule ###"]);
    assert_eq!(code, 2);
    assert!(err.contains("token 1"), "{err}");

    // Well formed, but the watcher cannot write before it has listed anything.
    let (code, _, err) =
        xtask(&["scenario", "--schedule", "scenario.disk_create watcher.vmm_write"]);
    assert_eq!(code, 2);
    assert!(err.contains("step 2") && err.contains("watcher.vmm_write"), "{err}");

    // Too long: the stop race cannot register twice in a row.
    let args = ["scenario", "--scenario", "stop-race", "--schedule"];
    let (code, _, err) =
        xtask(&[&args[..], &["scenario.instance_create scenario.vmm_register*40"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("step 3"), "{err}");
}

#[test]
fn stop_race_is_the_smallest_case_of_the_bug() {
    let cfg = RunConfig {
        scenario: ScenarioKind::StopRace,
        ..config(RemovalOrdering::RemoveThenPublish, RestartPolicy::Current)
    };
    let r = harness::run(&cfg, &mut Seed7282::default()).expect("runs");
    assert_eq!(r.instances.len(), 1);
    assert!(r.violations.iter().any(|v| v.invariant == 1));
    json(&["scenario", "--scenario", "stop-race"], 0);
}

#[test]
fn human_report_names_the_window() {
    let (code, out, _) = xtask(&["scenario", "--ordering", "remove-then-publish"]);
    assert_eq!(code, 1);
    assert!(out.contains("404 NO_SUCH_INSTANCE (nexus holds stopping/g6)"), "{out}");
    assert!(out.contains("inst1/vmm1 destroyed/g7 stale, stored g7"), "{out}");
    assert!(out.contains("FAILED"), "{out}");
}

/// The stop race with two of its reports faulted: the first applied and its
/// answer lost, a later one refused with a 503. The sim sends each again.
pub const REPORTS_FAULTED: &str = "scenario.instance_create scenario.vmm_register \
    scenario.vmm_put_state scenario.instance_stop scenario.vmm_put_state scenario.vmm_poke \
    scenario.cpapi_instances_put!timeout scenario.cpapi_instances_put*2 \
    scenario.cpapi_instances_put!503 scenario.cpapi_instances_put*2 update1.instance_update \
    scenario.wait_for_state watcher.vmm_list*2 restart.done user.done fault.done";

/// Two stops of one instance, the user's drained first; the scenario's put-state
/// meets the 404 once Destroyed/7 is recorded.
pub const DOUBLE_STOP: &str = "scenario.instance_create scenario.vmm_register \
    scenario.vmm_put_state scenario.instance_stop user.instance_stop(inst1) user.vmm_put_state \
    user.vmm_poke user.cpapi_instances_put*4 scenario.vmm_put_state update1.instance_update \
    watcher.vmm_list restart.done";

#[test]
fn faulted_reports_are_sent_again_and_the_run_stays_clean() {
    let args = ["scenario", "--scenario", "stop-race", "--faults", "2", "--user-ops", "1"];
    let j = json(&[&args[..], &["--schedule", REPORTS_FAULTED]].concat(), 0);
    assert_eq!(j["replay"], REPORTS_FAULTED, "the faults are in the replay string");
    let steps = j["steps"].as_array().unwrap();
    let faulted: Vec<_> = steps.iter().filter_map(|s| s["fault"].as_str()).collect();
    assert_eq!(faulted, ["timeout", "503"]);
    let reports = steps.iter().filter(|s| s["call"] == "cpapi_instances_put").count();
    assert_eq!(reports, 6, "four states, two sent twice");
    assert_eq!(j["instances"]["inst1"]["state"], "stopped");
    // With one fault allowed, the second cannot be injected: the replay says where.
    let one = ["scenario", "--scenario", "stop-race", "--faults", "1", "--user-ops", "1"];
    let (code, _, err) = xtask(&[&one[..], &["--schedule", REPORTS_FAULTED]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("step 10") && err.contains("!503"), "{err}");
}

#[test]
fn a_user_operation_replays_and_the_landed_user_path_fails_the_instance() {
    let base = ["scenario", "--scenario", "stop-race", "--user-ops", "1", "--watcher-passes", "1"];
    let bug = json(
        &[&base[..], &["--inject", "mark-failed-at-stored-gen", "--schedule", DOUBLE_STOP]]
            .concat(),
        1,
    );
    let broken: Vec<u64> = bug["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["invariant"].as_u64().unwrap())
        .collect();
    assert_eq!(broken, [2, 3]);
    assert_eq!(bug["instances"]["inst1"]["state"], "failed");
    // The same schedule with omicron's read-generation basis: the Failed is stale.
    let fixed = json(&[&base[..], &["--schedule", DOUBLE_STOP]].concat(), 0);
    assert_eq!(fixed["instances"]["inst1"]["state"], "stopped");
    assert_eq!(fixed["replay"], DOUBLE_STOP);
    // Given no environment flags, the replay runs with the operation it names.
    let plain = ["scenario", "--scenario", "stop-race", "--watcher-passes", "1"];
    let inferred = json(&[&plain[..], &["--schedule", DOUBLE_STOP]].concat(), 0);
    assert_eq!(inferred["replay"], DOUBLE_STOP);
    // Told there is no user, the replay cannot name one.
    let none = [&plain[..], &["--user-ops", "0", "--schedule", DOUBLE_STOP]].concat();
    let (code, _, err) = xtask(&none);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("user.instance_stop(inst1)"), "{err}");
}

#[test]
fn environment_counts_out_of_range_exit_2() {
    for args in [
        &["scenario", "--user-ops", "5"][..],
        &["scenario", "--faults", "99"],
        &["explore", "--faults", "-1"],
        &["explore", "--user-ops", "many"],
        &["scenario", "--watcher-concurrency", "0"],
        &["explore", "--watcher-concurrency", "17"],
        &["explore", "--watcher-concurrency", "two"],
    ] {
        check_usage_error(args);
    }
}

/// The JSON carries the end state and the writes as fields, not only in text:
/// under the legacy ordering and seed-7282, Nexus's row of inst1's VMM ends
/// Failed at g7 and deleted, the sled agent's table no longer has it, the
/// watcher's Failed/g7 applied over a stored g6, and the sim's Destroyed/g7 came
/// after it, stale.
#[test]
fn scenario_json_carries_the_end_state_and_every_write_as_fields() {
    let j = json(&["scenario", "--ordering", "remove-then-publish"], 1);
    let vmm = &j["vmms"]["inst1/vmm1"];
    assert_eq!(
        (vmm["state"].as_str(), vmm["gen"].as_u64(), vmm["deleted"].as_bool()),
        (Some("failed"), Some(7), Some(true)),
        "{vmm}"
    );
    assert!(vmm["sled"].is_null(), "{vmm}");
    let inst = &j["instances"]["inst1"];
    assert_eq!(
        (inst["state"].as_str(), inst["intended"].as_str()),
        (Some("failed"), Some("stopped"))
    );
    let writes: Vec<(String, u64, bool, u64, Option<u64>)> = j["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .flat_map(|s| {
            let step_gen = s["gen"].as_u64();
            s["write_records"].as_array().expect("write_records").iter().map(move |w| {
                let field = |k: &str| w[k].as_u64().expect("a number");
                let state = w["state"].as_str().expect("a state").to_string();
                (
                    state,
                    field("gen"),
                    w["applied"].as_bool().expect("a bool"),
                    field("stored_gen"),
                    step_gen,
                )
            })
        })
        .filter(|w| w.0 == "failed" || w.0 == "destroyed")
        .collect();
    assert_eq!(
        writes,
        [("failed".into(), 7, true, 6, Some(7)), ("destroyed".into(), 7, false, 7, Some(7))],
        "each terminal write, its generation, whether it applied over what, and its step's gen"
    );
}

/// At debug, every gated call is logged with its answer as soon as it has one:
/// a whole run logs one line a step, and a replay that stops on an error has
/// logged the calls answered before it.
#[test]
fn every_gated_call_is_logged_at_debug_as_it_is_answered() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["--log-level", "debug"])
            .args(args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), err)
    };
    let (code, out, err) = run(&["scenario", "--json"]);
    assert_eq!(code, Some(0));
    let steps = serde_json::from_str::<serde_json::Value>(&out).expect("JSON")["steps"]
        .as_array()
        .expect("steps")
        .len();
    assert_eq!(err.matches("gated call").count(), steps, "{err}");
    assert!(err.contains("answer: 404 NO_SUCH_INSTANCE") || err.contains("answer: destroyed"));
    let short =
        "scenario.disk_create scenario.instance_create scenario.vmm_register watcher.vmm_list";
    let (code, _, err) = run(&["scenario", "--schedule", short]);
    assert_eq!(code, Some(2));
    for call in ["call: disk_create disk", "call: vmm_register inst1/vmm1", "call: vmm_list"] {
        assert!(err.contains(call), "{call} logged before the error: {err}");
    }
}

/// The stop race with its VMM vanished and marked Failed by the watcher, up to
/// where auto-restart (2024 policy) may run its pass or end.
const FAILED_BY_WATCHER: &str = "scenario.instance_create scenario.vmm_register \
    scenario.vmm_put_state fault.vmm_vanish(inst1) watcher.vmm_list scenario.instance_stop \
    scenario.vmm_put_state check1.vmm_get_state check1.vmm_write watcher.vmm_list";

/// Auto-restart's `done` ends it, even with an instance to restart: a run may
/// end with its pass unused. Its pass instead starts the instance the user
/// stopped, which the 2024 policy allows and rule 7 catches.
#[test]
fn auto_restart_may_end_with_its_pass_unused() {
    let args = ["scenario", "--scenario", "stop-race", "--restart-policy", "2024", "--faults", "1"];
    let schedule = |rest: &str| format!("{FAILED_BY_WATCHER} {rest}");
    let unused = schedule("restart.done fault.done");
    let j = json(&[&args[..], &["--schedule", &unused]].concat(), 0);
    assert_eq!(j["replay"], unused.as_str());
    assert_eq!(j["instances"]["inst1"]["state"], "failed");
    assert_eq!(j["instances"]["inst1"]["auto_restarts"], 0);
    let pass = schedule(
        "restart.reincarnation restart.instance_start restart.vmm_register \
         restart.vmm_put_state fault.done",
    );
    let j = json(&[&args[..], &["--schedule", &pass]].concat(), 1);
    assert_eq!(j["instances"]["inst1"]["auto_restarts"], 1);
    assert_eq!(j["violations"][0]["invariant"], 7);
}
