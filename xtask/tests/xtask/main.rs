//! The xtask commands end to end: exit codes and JSON from the command line, and
//! the state behind them from the harness. Helpers here; the tests by command.

// A panic is how a test reports failure; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used)]

mod demo;
mod explore;
mod scenario;
mod usage;
mod wire;

pub use nexus_stub::{ExternalState, RestartPolicy};
pub use sim_sled_agent::RemovalOrdering;
pub use sled_agent_api::VmmState;
pub use sledsim_explorer::harness::schedule::{Happy, Replay, Seed7282};
pub use sledsim_explorer::harness::step::{ActorKind, Answer, CallKind};
pub use sledsim_explorer::harness::{self, RunConfig, RunResult, ScenarioKind};

/// Runs `cargo xtask <args>` in process; returns (exit code, stdout, stderr).
pub fn xtask(args: &[&str]) -> (u8, String, String) {
    let argv = ["xtask", "--log-level", "off"].iter().chain(args).map(Into::into);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = xtask::cli::run(argv, &mut out, &mut err);
    (code, String::from_utf8(out).expect("utf-8"), String::from_utf8(err).expect("utf-8"))
}

pub fn json(args: &[&str], want_code: u8) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (code, out, err) = xtask(&args);
    assert_eq!(code, want_code, "{args:?}\nstderr: {err}\nstdout: {out}");
    serde_json::from_str(&out).expect("one JSON object")
}

pub fn config(ordering: RemovalOrdering, policy: RestartPolicy) -> RunConfig {
    RunConfig {
        ordering,
        restart_policy: policy,
        ..RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
    }
}

pub fn seed_7282(ordering: RemovalOrdering, policy: RestartPolicy) -> RunResult {
    harness::run(&config(ordering, policy), &mut Seed7282::default()).expect("schedule fits")
}

/// The answer of the watcher's first get-state.
pub fn watcher_get_state(r: &RunResult) -> Answer {
    r.steps
        .iter()
        .find(|s| r.actors[s.actor].is_watcher() && s.call.kind == CallKind::VmmGetState)
        .map(|s| s.answer.clone())
        .expect("the watcher checked a VMM")
}

pub fn instance_state(r: &RunResult, name: &str) -> ExternalState {
    r.instances.iter().find(|i| i.name == name).map(|i| i.state).expect("instance exists")
}

/// Bad usage: exit 2, nothing on stdout, one line on stderr saying so.
pub fn check_usage_error(args: &[&str]) {
    let (code, out, err) = xtask(args);
    assert_eq!(code, 2, "{args:?}: {err}");
    assert!(out.is_empty(), "{args:?}: {out}");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
}

/// Runs a printed `cargo xtask ...` command line as a user would paste it: words
/// split on spaces, a '...' group taken whole.
pub fn run_printed(command: &str) -> (u8, String, String) {
    let rest = command.strip_prefix("cargo xtask ").expect("a cargo xtask command");
    let mut words = Vec::new();
    let mut quoted = false;
    let mut word = String::new();
    for ch in rest.chars() {
        match ch {
            '\'' => quoted = !quoted,
            ' ' if !quoted => words.push(std::mem::take(&mut word)),
            c => word.push(c),
        }
    }
    words.push(word);
    assert!(!quoted, "unbalanced quote in {command}");
    let words: Vec<&str> = words.iter().map(String::as_str).filter(|w| !w.is_empty()).collect();
    xtask(&words)
}
