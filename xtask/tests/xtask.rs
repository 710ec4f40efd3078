//! The scenario command end to end, in process: exit codes and JSON from the
//! command line, and the state behind them from the harness.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

use nexus_stub::{ExternalState, RestartPolicy};
use sim_sled_agent::RemovalOrdering;
use sled_agent_api::VmmState;
use xtask::harness::sched::{ActorKind, Answer, CallKind};
use xtask::harness::schedule::{Happy, Replay, Seed7282};
use xtask::harness::{self, RunConfig, RunResult, ScenarioKind};

/// Runs `cargo xtask <args>` in process; returns (exit code, stdout, stderr).
fn xtask(args: &[&str]) -> (u8, String, String) {
    let argv = ["xtask", "--log-level", "off"].iter().chain(args).map(Into::into);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = xtask::cli::run(argv, &mut out, &mut err);
    (code, String::from_utf8(out).expect("utf-8"), String::from_utf8(err).expect("utf-8"))
}

fn json(args: &[&str], want_code: u8) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, out, err) = xtask(&args);
    assert_eq!(code, want_code, "{args:?}\nstderr: {err}\nstdout: {out}");
    serde_json::from_str(&out).expect("one JSON object")
}

fn config(ordering: RemovalOrdering, policy: RestartPolicy) -> RunConfig {
    RunConfig {
        ordering,
        restart_policy: policy,
        ..RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
    }
}

fn seed_7282(ordering: RemovalOrdering, policy: RestartPolicy) -> RunResult {
    harness::run(&config(ordering, policy), &mut Seed7282::default()).expect("schedule fits")
}

/// The answer of the watcher's first get-state.
fn watcher_get_state(r: &RunResult) -> Answer {
    r.steps
        .iter()
        .find(|s| r.actors[s.actor] == ActorKind::Watcher && s.call.kind == CallKind::VmmGetState)
        .map(|s| s.answer.clone())
        .expect("the watcher checked a VMM")
}

fn instance_state(r: &RunResult, name: &str) -> ExternalState {
    r.instances.iter().find(|i| i.name == name).map(|i| i.state).expect("instance exists")
}

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
    assert_eq!(broken, [1, 2, 4, 5]);

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
    assert!(r.violations.iter().any(|v| v.invariant == 4));
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
        let (code, out, err) = xtask(args);
        assert_eq!(code, 2, "{args:?}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{err}");
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
        xtask(&["scenario", "--schedule", "scenario.vmm_register watcher.vmm_write"]);
    assert_eq!(code, 2);
    assert!(err.contains("step 2") && err.contains("watcher.vmm_write"), "{err}");

    // Too long: the stop race is over long before 40 registrations.
    let (code, _, err) =
        xtask(&["scenario", "--scenario", "stop-race", "--schedule", "scenario.vmm_register*40"]);
    assert_eq!(code, 2);
    assert!(err.contains("step 2"), "{err}");
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

#[test]
fn explore_proves_the_fixed_ordering_within_bounds() {
    for scenario in ["stop-race", "disk-move"] {
        let j = json(&["explore", "--scenario", scenario, "--ordering", "publish-then-remove"], 0);
        assert_eq!(j["exhaustive"], true, "{scenario}");
        assert_eq!(j["violations"], 0, "{scenario}");
        assert!(j["counterexample"].is_null());
        assert!(j["schedules"].as_u64().unwrap() > 100, "{scenario}: {j}");
        assert_eq!(j["bounds"]["watcher_passes"], 2);
        assert_eq!(j["bounds"]["restart_passes"], 1);
    }
}

#[test]
fn explore_finds_the_shortest_legacy_counterexample_and_scenario_replays_it() {
    for scenario in ["stop-race", "disk-move"] {
        let j = json(&["explore", "--scenario", scenario, "--ordering", "remove-then-publish"], 1);
        let c = &j["counterexample"];
        // List at Stopping/6 after the register, two put-states and three reports,
        // then ask inside the window: nothing shorter can reach the 404.
        assert_eq!(c["length"], 8, "{scenario}");
        assert_eq!(c["invariant"], 1);
        let steps = c["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 8);
        assert_eq!(steps[7]["actor"], "watcher");
        assert!(steps[7]["answer"].as_str().unwrap().starts_with("404"), "{}", steps[7]);

        let replay = c["replay"].as_str().unwrap();
        let args = [
            "scenario",
            "--scenario",
            scenario,
            "--ordering",
            "remove-then-publish",
            "--schedule",
            replay,
        ];
        let again = json(&args, 1);
        assert_eq!(again["violations"][0]["invariant"], 1);
        assert_eq!(again["violations"][0]["step"], 8);
        assert_eq!(again["replay"], replay);
    }
}

#[test]
fn explore_catches_every_seeded_bug() {
    for bug in ["no-generation-check", "watcher-lists-terminal", "watcher-skips-generation"] {
        let j = json(&["explore", "--scenario", "stop-race", "--inject", bug], 1);
        assert!(j["violations"].as_u64().unwrap() > 0, "{bug}");
        let replay = j["counterexample"]["replay"].as_str().unwrap();
        json(&["scenario", "--scenario", "stop-race", "--inject", bug, "--schedule", replay], 1);
    }
    let (code, _, err) = xtask(&["explore", "--inject", "no-such-bug"]);
    assert_eq!((code, err.lines().count()), (2, 1), "{err}");
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
    assert!(
        html.contains("No violation in any of") && html.contains("watcher pass"),
        "bounds shown"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explore_is_deterministic() {
    let args = ["explore", "--scenario", "stop-race", "--ordering", "remove-then-publish"];
    let (a, b) = (json(&args, 1), json(&args, 1));
    for field in ["schedules", "states", "violations", "counterexample"] {
        assert_eq!(a[field], b[field], "{field}");
    }
    // More watcher passes can only add situations.
    let one = json(&["explore", "--scenario", "stop-race", "--watcher-passes", "1"], 0);
    let two = json(&["explore", "--scenario", "stop-race", "--watcher-passes", "2"], 0);
    assert!(one["states"].as_u64() < two["states"].as_u64());
}

/// Pruning must not lose a situation: every fingerprint that running every schedule
/// to its end reaches, the pruned search reaches too.
#[test]
fn pruning_reaches_every_situation_that_brute_force_does() {
    use xtask::explore::{explore, ExploreConfig};
    for passes in [1, 2] {
        let run = RunConfig {
            scenario: ScenarioKind::StopRace,
            watcher_passes: passes,
            ..config(RemovalOrdering::PublishThenRemove, RestartPolicy::Current)
        };
        let search = |prune| {
            let cfg = ExploreConfig { run: run.clone(), max_schedules: usize::MAX, prune };
            explore(&cfg, &mut |_| {}).expect("explores")
        };
        let (pruned, brute) = (search(true), search(false));
        assert_eq!(pruned.states, brute.states, "W={passes}");
        assert!(brute.schedules > 2 * pruned.schedules, "W={passes}: pruning prunes");
        assert_eq!((pruned.violations, brute.violations), (0, 0));
    }
}

#[test]
fn checked_in_openapi_documents_match_the_code() {
    for doc in xtask::openapi::generate().expect("documents generate") {
        let path = xtask::openapi::dir().join(doc.file);
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == doc.text,
            "{} differs from what the code generates; run `cargo xtask openapi`",
            path.display()
        );
    }
}

/// Over real sockets, with the gates on the client side, every schedule gives the
/// same result as in process.
#[test]
fn http_transport_gives_the_same_runs_as_in_process() {
    let explored = json(&["explore", "--ordering", "remove-then-publish"], 1);
    let replay = explored["counterexample"]["replay"].as_str().unwrap().to_string();
    let cases: [(&[&str], u8); 5] = [
        (&[], 0),
        (&["--ordering", "remove-then-publish"], 1),
        (&["--ordering", "remove-then-publish", "--restart-policy", "2024"], 1),
        (&["--ordering", "remove-then-publish", "--schedule", "happy"], 0),
        (&["--ordering", "remove-then-publish", "--schedule", &replay], 1),
    ];
    for (args, code) in cases {
        let inproc = json(&[&["scenario"][..], args].concat(), code);
        let mut http = json(&[&["scenario", "--transport", "http"][..], args].concat(), code);
        assert_eq!(http["transport"], "http");
        http["transport"] = "inproc".into();
        assert_eq!(inproc, http, "{args:?}");
    }
}

#[test]
fn stress_runs_under_real_timing_and_the_fixed_ordering_never_fails() {
    for transport in ["inproc", "http"] {
        let args = [
            "stress",
            "--runs",
            "8",
            "--ordering",
            "publish-then-remove",
            "--transport",
            transport,
        ];
        let j = json(&args, 0);
        let o = &j["orderings"][0];
        assert_eq!(
            (o["ordering"].as_str(), o["runs"].as_u64(), o["failed"].as_u64()),
            (Some("publish-then-remove"), Some(8), Some(0)),
            "{transport}: {j}"
        );
        assert!(o["runs_per_s"].as_f64().unwrap() > 0.0);
    }
    // Bounded in time: with no time, nothing runs and it says so.
    let j = json(
        &["stress", "--runs", "3", "--ordering", "remove-then-publish", "--max-seconds", "0"],
        0,
    );
    assert_eq!(
        (j["orderings"][0]["runs"].as_u64(), j["orderings"][0]["skipped"].as_u64()),
        (Some(0), Some(3))
    );
}

/// The real binary, logging at its default level: over HTTP the servers log from
/// their own threads, which must not wait on anything the harness holds.
#[test]
fn the_binary_runs_over_http_with_logging_on() {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["scenario", "--transport", "http", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the HTTP scenario hung");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("component: NexusStubHttp"), "servers log to stderr: {log}");
}
