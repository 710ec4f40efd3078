//! `cargo xtask bench`: the performance figures the README promises, measured in a
//! release build, each target checked.

use std::time::{Duration, Instant};

use serde::Serialize;
use sim_sled_agent::RemovalOrdering;
use slog::{o, Logger};

use sledsim_explorer::explore::{explore, Coverage, ExploreConfig, ExploreResult, Verdict};
use sledsim_explorer::harness::schedule::Seed7282;
use sledsim_explorer::harness::{self, RunConfig, RunError, ScenarioKind};

/// The targets, as the README states them.
pub const PROOF_TARGET: Duration = Duration::from_secs(1);
pub const FIRST_COUNTEREXAMPLE_TARGET: usize = 50;
pub const THROUGHPUT_TARGET: f64 = 100_000.0;
/// Searches the throughput is the median of.
const THROUGHPUT_SAMPLES: usize = 201;
/// disk-move with one user operation and one fault, proved exhaustively on
/// every core.
pub const ENVIRONMENT_PROOF_TARGET: Duration = Duration::from_secs(2);
/// The same proof on one core.
pub const ONE_CORE_PROOF_TARGET: Duration = Duration::from_secs(5);
/// Schedules without partial-order reduction over schedules with it, on
/// stop-race with 3 watcher passes, as `explore` searches (with its visited set).
pub const REDUCTION_TARGET: f64 = 3.0;
/// The whole race catalogue, found and proved.
pub const CATALOGUE_TARGET: Duration = Duration::from_secs(30);
/// How long the bench lets each of those searches run.
const ENVIRONMENT_CAP: Duration = Duration::from_secs(60);
/// Searches per row with the environment's choices, of which the median counts.
const ENVIRONMENT_SAMPLES: usize = 5;

/// A proof with the environment's choices: one user operation and one fault.
#[derive(Debug, Serialize)]
pub struct WithEnvironment {
    pub scenario: &'static str,
    pub threads: usize,
    pub schedules: usize,
    pub states: usize,
    /// The median search's time (its runs, situations and verdict are the
    /// ones given here).
    pub ms: f64,
    /// Every search's time, fastest first.
    pub samples_ms: Vec<f64>,
    pub exhaustive: bool,
    /// `clean`, `violated` or `inconclusive`.
    pub verdict: &'static str,
    /// The visited set's memory at the end, per distinct situation.
    pub visited_bytes_per_state: f64,
}

#[derive(Debug, Serialize)]
pub struct Scaled {
    pub watcher_passes: usize,
    /// Runs (schedules), distinct situations and time of the pruned search.
    pub schedules: usize,
    pub states: usize,
    pub ms: f64,
    /// Runs when every schedule runs to its end: no visited set, no reduction.
    pub brute_force_schedules: usize,
    /// Runs when every schedule runs to its end with partial-order reduction:
    /// what the reduction alone saves is `brute_force_schedules` over this.
    pub brute_force_reduced_schedules: usize,
    /// Runs of the same pruned search without partial-order reduction, and the
    /// situations it reached (the same, or the reduction lost some).
    pub unreduced_schedules: usize,
    pub unreduced_states: usize,
    /// The same race in shuttle's primitives, explored by shuttle's DFS.
    pub shuttle: Result<Peer, String>,
}

/// What shuttle's DFS did on the stop race (`peers/shuttle-stop-race`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Peer {
    pub schedules: usize,
    /// False if it stopped at `PEER_CAP` schedules.
    pub exhaustive: bool,
    pub ms: f64,
}

/// Schedules shuttle's DFS may run per row, so the bench ends.
const PEER_CAP: usize = 500_000;

/// Builds the shuttle peer (its own workspace, so the project's build never
/// waits for shuttle) and runs it with `polls` watcher polls.
fn shuttle_peer(polls: usize) -> Result<Peer, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = root.join("peers/shuttle-stop-race/Cargo.toml");
    let target = root.join("target/peers");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--release", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !built.success() {
        return Err(format!("building {} failed", manifest.display()));
    }
    let out = std::process::Command::new(target.join("release/shuttle-stop-race"))
        .args([polls.to_string(), PEER_CAP.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the shuttle peer: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("the shuttle peer's output: {e}"))
}

#[derive(Debug, Serialize)]
pub struct Bench {
    /// One disk-move run under seed-7282, median of many.
    pub scenario_run_us: f64,
    /// Exhaustive stop-race with no user operation and no fault (the old
    /// default bounds), median of repetitions.
    pub stop_race_schedules_per_s: f64,
    pub stop_race_states_per_s: f64,
    /// Exhaustive disk-move proof of publish-then-remove with no user operation
    /// and no fault.
    pub proof_ms: f64,
    pub proof_schedules: usize,
    pub proof_states: usize,
    /// Legacy ordering, disk-move: when the first counterexample turned up.
    pub first_counterexample_schedules: usize,
    pub first_counterexample_ms: f64,
    pub shortest_counterexample_steps: usize,
    /// The whole legacy search: every broken invariant with its shortest length.
    pub legacy_ms: f64,
    pub legacy_schedules: usize,
    pub legacy_invariants: Vec<(u8, usize)>,
    /// stop-race with 1, 2 and 3 watcher passes.
    pub scaled: Vec<Scaled>,
    /// stop-race and disk-move with 1 user operation and 1 fault (W=2, R=1).
    pub with_environment: Vec<WithEnvironment>,
    /// stop-race with 1 user operation and 1 fault: time on 1 thread over time
    /// on 2.
    pub two_thread_speedup: f64,
    /// The race catalogue: every race found before its fix and proved after it.
    pub catalogue: Catalogue,
    pub targets: Targets,
}

/// `cargo xtask catalogue`, timed.
#[derive(Debug, Serialize)]
pub struct Catalogue {
    pub races: usize,
    /// Races found before their fix and proved after it.
    pub held: usize,
    /// Both searches of every race, one thread each.
    pub ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Targets {
    pub proof_under_1s: bool,
    pub first_counterexample_within_50_schedules: bool,
    pub at_least_100k_schedules_per_s: bool,
    /// disk-move with 1 user operation and 1 fault proved clean, exhaustively,
    /// in under 2 s.
    pub environment_proof_under_2s: bool,
    /// The same, on one thread, in under 5 s.
    pub one_core_proof_under_5s: bool,
    /// Two threads at least 1.7 times as fast as one (stop-race, 1 user op, 1 fault).
    pub two_threads_at_least_1_7x: bool,
    /// stop-race, W=3: at least 3 times fewer schedules with reduction than
    /// without, with the same verdict and no more situations.
    pub reduction_at_least_3x: bool,
    /// Every race of the catalogue held, in under 30 s in all.
    pub catalogue_under_30s: bool,
}

impl Targets {
    pub fn all_met(&self) -> bool {
        self.proof_under_1s
            && self.first_counterexample_within_50_schedules
            && self.at_least_100k_schedules_per_s
            && self.environment_proof_under_2s
            && self.one_core_proof_under_5s
            && self.two_threads_at_least_1_7x
            && self.reduction_at_least_3x
            && self.catalogue_under_30s
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn config(scenario: ScenarioKind, ordering: RemovalOrdering) -> RunConfig {
    RunConfig { scenario, ordering, ..RunConfig::new(Logger::root(slog::Discard, o!())) }
}

fn explore_once(run: RunConfig) -> Result<ExploreResult, RunError> {
    explore(&ExploreConfig { max_schedules: usize::MAX, ..ExploreConfig::new(run) })
}

/// Every schedule run to its end, with or without partial-order reduction.
fn brute_force(run: RunConfig, reduce: bool) -> Result<ExploreResult, RunError> {
    let cfg = ExploreConfig {
        max_schedules: usize::MAX,
        prune: false,
        reduce,
        ..ExploreConfig::new(run)
    };
    explore(&cfg)
}

/// Why the bench could not give its figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("a benchmarked run failed")]
    Run(#[from] RunError),
    #[error("the fixed ordering did not prove disk-move clean (verdict {verdict})")]
    NotProved { verdict: &'static str },
    #[error("the legacy ordering gave disk-move no counterexample")]
    NoCounterexample,
    #[error("partial-order reduction changed stop-race's verdict, or added situations")]
    ReductionChangedVerdict,
    #[error(
        "the searches of {scenario} on {threads} thread(s) disagreed on the verdict, on being exhaustive or on the situations"
    )]
    SamplesDisagree { scenario: &'static str, threads: usize },
}

pub fn measure() -> Result<Bench, BenchError> {
    let fixed = RemovalOrdering::PublishThenRemove;

    let scenario = config(ScenarioKind::DiskMove, fixed);
    let mut runs = Vec::new();
    for _ in 0..301 {
        let t = Instant::now();
        harness::run(&scenario, &mut Seed7282::default())?;
        runs.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let (mut sps, mut stps) = (Vec::new(), Vec::new());
    // A search of 64 runs takes under a millisecond, so one is at the mercy of
    // the machine's moment: the median of many says what it does.
    for _ in 0..THROUGHPUT_SAMPLES {
        let r = explore_once(config(ScenarioKind::StopRace, fixed))?;
        let s = r.elapsed.as_secs_f64();
        sps.push(r.runs as f64 / s);
        stps.push(r.situations as f64 / s);
    }

    let mut proofs = Vec::new();
    let mut proof = explore_once(config(ScenarioKind::DiskMove, fixed))?;
    proofs.push(proof.elapsed.as_secs_f64() * 1e3);
    for _ in 1..3 {
        proof = explore_once(config(ScenarioKind::DiskMove, fixed))?;
        proofs.push(proof.elapsed.as_secs_f64() * 1e3);
    }
    if proof.verdict() != Verdict::Clean {
        return Err(BenchError::NotProved { verdict: proof.verdict().word() });
    }

    let legacy = explore_once(config(ScenarioKind::DiskMove, RemovalOrdering::RemoveThenPublish))?;
    let (first_n, first_t) = legacy.first_violation.ok_or(BenchError::NoCounterexample)?;

    let mut scaled = Vec::new();
    for w in 1..=3 {
        let run = RunConfig { watcher_passes: w, ..config(ScenarioKind::StopRace, fixed) };
        let r = explore_once(run.clone())?;
        let unreduced = explore(&ExploreConfig {
            max_schedules: usize::MAX,
            reduce: false,
            ..ExploreConfig::new(run.clone())
        })?;
        let brute = brute_force(run.clone(), false)?;
        let brute_reduced = brute_force(run.clone(), true)?;
        if unreduced.verdict() != r.verdict()
            || brute.verdict() != r.verdict()
            || brute_reduced.verdict() != r.verdict()
            || brute_reduced.situations > brute.situations
        {
            return Err(BenchError::ReductionChangedVerdict);
        }
        scaled.push(Scaled {
            shuttle: shuttle_peer(w),
            brute_force_schedules: brute.runs,
            brute_force_reduced_schedules: brute_reduced.runs,
            watcher_passes: w,
            unreduced_schedules: unreduced.runs,
            unreduced_states: unreduced.situations,
            schedules: r.runs,
            states: r.situations,
            ms: r.elapsed.as_secs_f64() * 1e3,
        });
    }

    let mut with_environment = Vec::new();
    let cores = sledsim_explorer::explore::all_cores();
    let mut rows = vec![
        (ScenarioKind::StopRace, 1),
        (ScenarioKind::StopRace, 2),
        (ScenarioKind::DiskMove, 1),
        (ScenarioKind::DiskMove, cores),
    ];
    // On one core the last row is the one before it: one proof serves both targets.
    rows.dedup();
    for (scenario, threads) in rows {
        let run = RunConfig { user_ops: 1, faults: 1, ..config(scenario, fixed) };
        // Capped, so the bench ends if a change makes a proof take minutes.
        let cfg = ExploreConfig {
            max_schedules: usize::MAX,
            max_time: Some(ENVIRONMENT_CAP),
            threads,
            ..ExploreConfig::new(run)
        };
        // The median search of several: one search of a second or two moves by
        // a fifth with this machine's moment (two threads more than one), and
        // the row is judged on what the search does, not on that.
        let mut searches =
            (0..ENVIRONMENT_SAMPLES).map(|_| explore(&cfg)).collect::<Result<Vec<_>, _>>()?;
        searches.sort_by_key(|r| r.elapsed);
        let r = &searches[searches.len() / 2];
        // The same search every time: only the time and, with threads, the
        // count of runs may differ. A search the cap cut short reaches what
        // its time allowed, so only whether it was cut is compared.
        let exhaustive = |o: &ExploreResult| o.coverage == Coverage::Exhaustive;
        let same = |o: &ExploreResult| {
            o.verdict() == r.verdict()
                && exhaustive(o) == exhaustive(r)
                && (!exhaustive(o) || o.situations == r.situations)
        };
        if !searches.iter().all(same) {
            return Err(BenchError::SamplesDisagree { scenario: scenario.label(), threads });
        }
        with_environment.push(WithEnvironment {
            scenario: scenario.label(),
            threads,
            schedules: r.runs,
            states: r.situations,
            ms: r.elapsed.as_secs_f64() * 1e3,
            samples_ms: searches.iter().map(|s| s.elapsed.as_secs_f64() * 1e3).collect(),
            exhaustive: exhaustive(r),
            verdict: r.verdict().word(),
            visited_bytes_per_state: r.visited_bytes as f64 / r.situations.max(1) as f64,
        });
    }
    let stop_race_ms = |threads| {
        with_environment
            .iter()
            .find(|w| w.scenario == ScenarioKind::StopRace.label() && w.threads == threads)
            .map_or(0.0, |w| w.ms)
    };
    let two_thread_speedup = stop_race_ms(1) / stop_race_ms(2).max(f64::MIN_POSITIVE);
    let disk_move_proved_within = |threads: usize, target: Duration| {
        with_environment.iter().any(|w| {
            w.scenario == ScenarioKind::DiskMove.label()
                && w.threads == threads
                && w.exhaustive
                && w.verdict == Verdict::Clean.word()
                && w.ms < target.as_secs_f64() * 1e3
        })
    };
    let environment_proof_under_2s = disk_move_proved_within(cores, ENVIRONMENT_PROOF_TARGET);
    let one_core_proof_under_5s = disk_move_proved_within(1, ONE_CORE_PROOF_TARGET);

    // As explore searches: with its visited set, two orders of commuting steps
    // already meet in one situation after their second step, so the reduction
    // saves less there than with every schedule run to its end (also printed).
    let reduction = scaled.iter().find(|s| s.watcher_passes == 3).map_or(0.0, |s| {
        // Free steps leave situations out; sleep sets none. More would be a bug.
        if s.states <= s.unreduced_states {
            s.unreduced_schedules as f64 / s.schedules.max(1) as f64
        } else {
            0.0
        }
    });
    let checked = crate::catalogue::check_all();
    let catalogue = Catalogue {
        races: checked.rows.len(),
        held: checked.rows.iter().filter(|r| r.is_ok()).count(),
        ms: checked.elapsed.as_secs_f64() * 1e3,
    };
    let catalogue_under_30s = checked.ok() && catalogue.ms < CATALOGUE_TARGET.as_secs_f64() * 1e3;
    let proof_ms = median(proofs);
    let stop_race_schedules_per_s = median(sps);
    Ok(Bench {
        scenario_run_us: median(runs),
        stop_race_schedules_per_s,
        stop_race_states_per_s: median(stps),
        proof_ms,
        proof_schedules: proof.runs,
        proof_states: proof.situations,
        first_counterexample_schedules: first_n,
        first_counterexample_ms: first_t.as_secs_f64() * 1e3,
        shortest_counterexample_steps: legacy.shortest().map_or(0, |c| c.len),
        legacy_ms: legacy.elapsed.as_secs_f64() * 1e3,
        legacy_schedules: legacy.runs,
        legacy_invariants: legacy.counterexamples.iter().map(|c| (c.invariant, c.len)).collect(),
        scaled,
        with_environment,
        two_thread_speedup,
        catalogue,
        targets: Targets {
            catalogue_under_30s,
            environment_proof_under_2s,
            one_core_proof_under_5s,
            two_threads_at_least_1_7x: two_thread_speedup >= 1.7,
            reduction_at_least_3x: reduction >= REDUCTION_TARGET,
            proof_under_1s: proof_ms < PROOF_TARGET.as_secs_f64() * 1e3,
            first_counterexample_within_50_schedules: first_n <= FIRST_COUNTEREXAMPLE_TARGET,
            at_least_100k_schedules_per_s: stop_race_schedules_per_s >= THROUGHPUT_TARGET,
        },
    })
}

pub fn human(b: &Bench) -> String {
    let yes = |ok: bool| if ok { "met" } else { "MISSED" };
    let mut s = format!(
        "one disk-move scenario run (seed-7282):   {:>10.1} us (median of 301)\n\
         explore stop-race, no user op or fault:   {:>10.0} runs/s, {:.0} situations/s (median of {})\n\
         prove publish-then-remove (disk-move):    {:>10.1} ms, {} runs, {} situations (median of 3)   target < 1 s: {}\n\
         first counterexample, remove-then-publish: {:>9} runs, {:.2} ms; shortest {} steps   target <= 50 runs: {}\n\
         whole legacy search (disk-move):          {:>10.1} ms, {} runs; broken (invariant, shortest): {:?}\n\
         throughput target >= 100,000 runs/s on stop-race: {}\n\n\
         stop-race by watcher passes (restart passes 1):\n",
        b.scenario_run_us,
        b.stop_race_schedules_per_s,
        b.stop_race_states_per_s,
        THROUGHPUT_SAMPLES,
        b.proof_ms,
        b.proof_schedules,
        b.proof_states,
        yes(b.targets.proof_under_1s),
        b.first_counterexample_schedules,
        b.first_counterexample_ms,
        b.shortest_counterexample_steps,
        yes(b.targets.first_counterexample_within_50_schedules),
        b.legacy_ms,
        b.legacy_schedules,
        b.legacy_invariants,
        yes(b.targets.at_least_100k_schedules_per_s),
    );
    for sc in &b.scaled {
        s.push_str(&format!(
            "  W={}: {:>7} runs, {:>7} situations, {:>8.1} ms\n",
            sc.watcher_passes, sc.schedules, sc.states, sc.ms
        ));
        let states = if sc.unreduced_states >= sc.states {
            format!("{} situations (free steps leave some out)", sc.unreduced_states)
        } else {
            format!("{} situations: the reduction ADDED some", sc.unreduced_states)
        };
        s.push_str(&format!(
            "        without partial-order reduction: {} runs ({:.2}x as many), {states}\n",
            sc.unreduced_schedules,
            sc.unreduced_schedules as f64 / sc.schedules.max(1) as f64,
        ));
        s.push_str(&format!(
            "        every schedule to its end: {} runs without the reduction, {} with it \
             ({:.1}x fewer)\n",
            sc.brute_force_schedules,
            sc.brute_force_reduced_schedules,
            sc.brute_force_schedules as f64 / sc.brute_force_reduced_schedules.max(1) as f64,
        ));
        let peer = match &sc.shuttle {
            Ok(p) => {
                let n = if p.exhaustive {
                    format!("{}", p.schedules)
                } else {
                    format!("over {} (stopped at the cap)", p.schedules)
                };
                let ratio = p.schedules as f64 / sc.schedules.max(1) as f64;
                format!("{n} schedules, {:.1} ms: {ratio:.0}x ours", p.ms)
            }
            Err(why) => format!("not measured: {why}"),
        };
        s.push_str(&format!("        shuttle's DFS on the same race: {peer}\n"));
    }
    s.push_str("\nwith 1 user operation and 1 fault (W=2, R=1):\n");
    for w in &b.with_environment {
        let verdict = match (w.verdict, w.exhaustive) {
            (v, true) => format!("{v}, exhaustive"),
            (v, false) => format!("{v}: not exhaustive within the bench's 60 s"),
        };
        let samples: Vec<String> = w.samples_ms.iter().map(|ms| format!("{ms:.0}")).collect();
        s.push_str(&format!(
            "  {:<9} {} thread(s) {:>8} runs, {:>8} situations, {:>9.1} ms, {verdict}; \
             visited set {:.0} bytes a situation\n            \
             the median of {} searches: {} ms\n",
            w.scenario,
            w.threads,
            w.schedules,
            w.states,
            w.ms,
            w.visited_bytes_per_state,
            w.samples_ms.len(),
            samples.join(", ")
        ));
    }
    s.push_str(&format!(
        "environment targets: disk-move proved in under 2 s on every core: {}; \
         in under 5 s on one: {}\n\
         two threads vs one (stop-race): {:.2}x   target >= 1.7x: {}\n\
         reduction (stop-race, W=3, as explore searches): \
         target >= 3x fewer runs, same verdict: {}\n\n\
         race catalogue: {} of {} races found and their fixes proved, {:.0} ms   target < 30 s: {}\n",
        yes(b.targets.environment_proof_under_2s),
        yes(b.targets.one_core_proof_under_5s),
        b.two_thread_speedup,
        yes(b.targets.two_threads_at_least_1_7x),
        yes(b.targets.reduction_at_least_3x),
        b.catalogue.held,
        b.catalogue.races,
        b.catalogue.ms,
        yes(b.targets.catalogue_under_30s),
    ));
    s
}
