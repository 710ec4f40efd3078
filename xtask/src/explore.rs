//! `cargo xtask explore`: every interleaving of the scenario within bounds, each
//! run from scratch, depth first, never expanding a situation twice, keeping the
//! shortest schedule that breaks an invariant.
//!
//! A situation is the fingerprint of every component's state, every actor's history
//! of calls and answers, the parked calls, and what the invariants remember (see
//! `World::fingerprint`). A run stops as soon as it reaches a situation already
//! expanded at the same or a smaller depth; a situation reached again at a smaller
//! depth is expanded again, so the shortest counterexample is never hidden behind a
//! longer path to the same place. Once one is found, no path as long is explored.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use crate::harness::hash::StableHasher;
use crate::harness::sched::Choice;
use crate::harness::schedule::{by_priority, ChoiceCtx, Chooser, ScheduleError};
use crate::harness::{self, RunConfig, RunEnd, RunError, RunResult};

#[derive(Clone, Debug)]
pub struct ExploreConfig {
    pub run: RunConfig,
    /// Stop after this many schedules (the result is then not exhaustive).
    pub max_schedules: usize,
    /// Prune on fingerprints (the point of the explorer). Off, every schedule runs
    /// to its end, which only a test comparing the two should want.
    pub prune: bool,
}

/// The shortest schedule that broke an invariant.
#[derive(Debug)]
pub struct Counterexample {
    /// Steps up to and including the one after which the violation was seen.
    pub len: usize,
    pub invariant: u8,
    /// The whole run: the violating prefix, then the `happy` policy to the end, so
    /// its replay string runs to completion under `cargo xtask scenario`.
    pub run: RunResult,
}

#[derive(Debug)]
pub struct ExploreResult {
    pub schedules: usize,
    pub states: usize,
    /// Every schedule within the bounds was covered (pruning aside).
    pub exhaustive: bool,
    /// Schedules that broke an invariant.
    pub violations: usize,
    pub invariants_broken: BTreeSet<u8>,
    pub counterexample: Option<Counterexample>,
    /// Schedules run, and time, when the first violation was found.
    pub first_violation: Option<(usize, Duration)>,
    pub hit_step_bound: bool,
    pub elapsed: Duration,
}

/// Progress, for a line on stderr during long runs.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub schedules: usize,
    pub states: usize,
    pub violations: usize,
    pub elapsed: Duration,
}

/// Fingerprint -> the smallest depth it was expanded at. Only looked up, never
/// iterated, so its order cannot leak into results.
type Visited = HashMap<u64, u32, BuildHasherDefault<StableHasher>>;

/// Follows `prefix`, then explores: at each new situation it takes the first choice
/// and leaves the others on the frontier.
struct Dfs<'a> {
    prefix: Vec<u32>,
    path: Vec<u32>,
    visited: &'a mut Visited,
    frontier: &'a mut Vec<Vec<u32>>,
    best: Option<usize>,
    prune: bool,
}

impl Chooser for Dfs<'_> {
    fn replaying(&self, steps: usize) -> bool {
        steps < self.prefix.len()
    }

    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        if !ctx.observer.violations().is_empty() {
            return Ok(None);
        }
        let depth = ctx.step;
        if let Some(&i) = self.prefix.get(depth) {
            return follow(&mut self.path, i, ctx.enabled, depth);
        }
        // A violation found from here would be no shorter than the best one.
        if self.prune && self.best.is_some_and(|b| depth + 1 >= b) {
            return Ok(None);
        }
        let depth32 = u32::try_from(depth).unwrap_or(u32::MAX);
        let seen = self.visited.entry(ctx.world.fingerprint(ctx.observer)).or_insert(u32::MAX);
        if self.prune && *seen <= depth32 {
            return Ok(None);
        }
        *seen = (*seen).min(depth32);
        for alt in (1..ctx.enabled.len()).rev() {
            let mut p = self.path.clone();
            p.push(u32::try_from(alt).unwrap_or(u32::MAX));
            self.frontier.push(p);
        }
        self.path.push(0);
        Ok(Some(0))
    }
}

fn follow(
    path: &mut Vec<u32>,
    i: u32,
    enabled: &[Choice],
    depth: usize,
) -> Result<Option<usize>, ScheduleError> {
    let i = i as usize;
    if i >= enabled.len() {
        // Runs are deterministic, so a prefix always fits; if not, say so loudly.
        return Err(ScheduleError::Mismatch {
            step: depth + 1,
            index: depth + 1,
            wanted: format!("choice {i}"),
            enabled: format!("{} choices (the run is not deterministic)", enabled.len()),
        });
    }
    path.push(u32::try_from(i).unwrap_or(u32::MAX));
    Ok(Some(i))
}

/// The violating prefix, then the `happy` policy to the end.
struct PrefixThenHappy {
    prefix: Vec<u32>,
    path: Vec<u32>,
}

impl Chooser for PrefixThenHappy {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        match self.prefix.get(ctx.step) {
            Some(&i) => follow(&mut self.path, i, ctx.enabled, ctx.step),
            None => Ok(by_priority(ctx.enabled, false)),
        }
    }
}

pub fn explore(
    cfg: &ExploreConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<ExploreResult, RunError> {
    let start = Instant::now();
    // Sized for the default disk-move proof, so the table is not rebuilt as it grows.
    let mut visited: Visited = HashMap::with_capacity_and_hasher(1 << 16, Default::default());
    let mut frontier: Vec<Vec<u32>> = vec![Vec::new()];
    let mut best: Option<(Vec<u32>, usize, u8)> = None;
    let mut out = ExploreResult {
        schedules: 0,
        states: 0,
        exhaustive: true,
        violations: 0,
        invariants_broken: BTreeSet::new(),
        counterexample: None,
        first_violation: None,
        hit_step_bound: false,
        elapsed: Duration::ZERO,
    };
    // The search needs verdicts only; the counterexample's run below keeps the trace.
    let search = RunConfig { trace_writes: false, ..cfg.run.clone() };
    let mut last_report = Instant::now();
    while let Some(prefix) = frontier.pop() {
        if out.schedules >= cfg.max_schedules {
            out.exhaustive = false;
            break;
        }
        out.schedules += 1;
        let mut dfs = Dfs {
            prefix,
            path: Vec::new(),
            visited: &mut visited,
            frontier: &mut frontier,
            best: best.as_ref().map(|b| b.1),
            prune: cfg.prune,
        };
        let r = harness::run_verdict(&search, &mut dfs)?;
        if let Some(e) = r.harness_errors.first() {
            return Err(RunError::Harness(e.clone()));
        }
        let path = std::mem::take(&mut dfs.path);
        if matches!(r.end, RunEnd::StepBound(_)) {
            out.hit_step_bound = true;
            out.exhaustive = false;
        }
        if let Some(first) = r.violations.first() {
            out.violations += 1;
            out.invariants_broken.extend(r.violations.iter().map(|v| v.invariant));
            out.first_violation.get_or_insert((out.schedules, start.elapsed()));
            let len = first.step.min(path.len());
            if best.as_ref().is_none_or(|b| len < b.1) {
                best = Some((path[..len].to_vec(), len, first.invariant));
            }
        }
        if last_report.elapsed() >= Duration::from_millis(250) {
            last_report = Instant::now();
            progress(Progress {
                schedules: out.schedules,
                states: visited.len(),
                violations: out.violations,
                elapsed: start.elapsed(),
            });
        }
    }
    out.states = visited.len();
    if let Some((prefix, len, invariant)) = best {
        let run = harness::run(&cfg.run, &mut PrefixThenHappy { prefix, path: Vec::new() })?;
        out.counterexample = Some(Counterexample { len, invariant, run });
    }
    out.elapsed = start.elapsed();
    Ok(out)
}
