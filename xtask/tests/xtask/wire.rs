//! Over HTTP, under real timing, and the OpenAPI documents.

use super::*;

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
/// Held by the tests that make refusals over HTTP in this process, so one can
/// count the refusals its own run made.
static REFUSING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn http_transport_gives_the_same_runs_as_in_process() {
    let _one_at_a_time = REFUSING.lock().unwrap_or_else(|p| p.into_inner());
    let legacy =
        ["explore", "--ordering", "remove-then-publish", "--user-ops", "0", "--faults", "0"];
    let explored = json(&legacy, 1);
    let replay = explored["counterexample"]["replay"].as_str().unwrap().to_string();
    let faults = ["--scenario", "stop-race", "--faults", "2", "--user-ops", "1", "--schedule"];
    let faulted = [&faults[..], &[super::scenario::REPORTS_FAULTED]].concat();
    let double_stop = [
        &["--scenario", "stop-race", "--user-ops", "1", "--watcher-passes", "1"][..],
        &["--inject", "mark-failed-at-stored-gen", "--schedule", super::scenario::DOUBLE_STOP],
    ]
    .concat();
    let cases: [(&[&str], u8); 7] = [
        (&faulted, 0),
        (&double_stop, 1),
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
}

/// Under real timing, with a teardown in the window, the legacy ordering loses
/// the race in nearly every run; runs that never lose it would mean the
/// observers, not the race, are broken. Up to ten batches of twenty, so a loaded
/// machine cannot hide it.
#[test]
fn stress_sees_the_legacy_ordering_fail() {
    for seed in 1..=10 {
        let seed = seed.to_string();
        let args = ["stress", "--runs", "20", "--ordering", "remove-then-publish", "--seed", &seed];
        let (code, out, err) = xtask(&[&args[..], &["--json"]].concat());
        let j: serde_json::Value = serde_json::from_str(&out).expect(&err);
        let o = &j["orderings"][0];
        assert_eq!(o["runs"], 20);
        if o["failed"].as_u64().unwrap() > 0 {
            assert_eq!((code, j["passed"].as_bool()), (1, Some(false)));
            assert!(o["invariants"]["1"].as_u64().unwrap() >= 1, "the 404 in the window: {j}");
            return;
        }
        assert_eq!(code, 0, "{j}");
    }
    panic!("200 runs of the legacy ordering under real timing and not one failed");
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

/// A run over its time limit is cut short: its end unjudged (inconclusive, not a
/// violation), its background loops aborted so the next run starts clean.
#[test]
fn stress_cuts_a_run_over_its_limit_short_and_calls_it_inconclusive() {
    use xtask::stress::{stress, StressConfig};
    let cfg = StressConfig {
        scenario: ScenarioKind::DiskMove,
        orderings: vec![RemovalOrdering::PublishThenRemove],
        restart_policy: RestartPolicy::Current,
        transport: harness::Transport::InProc,
        runs: 3,
        seed: 1,
        max_time: std::time::Duration::from_secs(30),
        run_limit: std::time::Duration::from_micros(1),
        log: slog::Logger::root(slog::Discard, slog::o!()),
    };
    let reports = stress(&cfg).expect("runs");
    let r = &reports[0];
    assert_eq!((r.runs, r.failed, r.inconclusive), (3, 0, 3), "{r:?}");
    assert!(r.examples[0].contains("the time limit"), "{:?}", r.examples);
    // And with time enough, the same runs finish and are judged.
    let reports = stress(&StressConfig { run_limit: xtask::stress::RUN_LIMIT, ..cfg }).unwrap();
    assert_eq!((reports[0].runs, reports[0].failed, reports[0].inconclusive), (3, 0, 0));
}

/// Plays `happy`, but releases the scenario's stop request to the sled agent
/// refused (503): the scenario's stop then fails, as a user's would.
#[derive(Default)]
struct RefuseTheStop {
    refused: bool,
}

impl sledsim_explorer::harness::schedule::Chooser for RefuseTheStop {
    fn choose(
        &mut self,
        ctx: &sledsim_explorer::harness::schedule::ChoiceCtx<'_>,
    ) -> Result<Option<usize>, sledsim_explorer::harness::schedule::ScheduleError> {
        let refuse = ctx.enabled.iter().position(|c| {
            c.kind == ActorKind::Scenario
                && c.call.kind == CallKind::VmmPutState
                && c.call.arg
                    == sledsim_explorer::harness::step::Arg::Requested(
                        sled_agent_api::VmmStateRequested::Stopped,
                    )
                && c.fault == Some(sledsim_explorer::harness::step::Fault::Unavailable)
        });
        match refuse {
            Some(i) if !self.refused => {
                self.refused = true;
                Ok(Some(i))
            }
            _ => Happy.choose(ctx),
        }
    }
}

/// Over HTTP a refused call is refused by its server (a real 503 over the wire),
/// and the run reads exactly as in process, where the gate makes the refusal up.
#[test]
fn a_refusal_over_http_is_the_servers_and_reads_as_in_process() {
    let _one_at_a_time = REFUSING.lock().unwrap_or_else(|p| p.into_inner());
    let run = RunConfig {
        scenario: ScenarioKind::StopRace,
        faults: 1,
        ..RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
    };
    let mut chooser = RefuseTheStop::default();
    let r = harness::run(&run, &mut chooser).expect("runs");
    assert!(chooser.refused, "the stop was refused");
    let outcome = format!("{:?}", r.scenario_outcome);
    assert!(outcome.contains(sledsim_http::REFUSAL_MESSAGE), "{outcome}");
    let replay = r.replay();
    let args = ["--scenario", "stop-race", "--faults", "1", "--schedule", &replay];
    // The stop's failure is the environment's doing, so the run passes (exit 0).
    let inproc = json(&[&["scenario"][..], &args].concat(), 0);
    let before = sledsim_http::refusals_served();
    let mut http = json(&[&["scenario", "--transport", "http"][..], &args].concat(), 0);
    assert_eq!(sledsim_http::refusals_served(), before + 1, "the sim's server refused the stop");
    http["transport"] = "inproc".into();
    assert_eq!(inproc, http);
}
