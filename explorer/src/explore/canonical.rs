//! Which counterexample to print, whatever the thread count or shard: of all
//! schedules that break an invariant at its shortest length, the first in the
//! order of choice indices.
//!
//! The search finds each broken invariant's shortest length L exactly, but which
//! schedule of length L it meets first depends on which thread ran what when. So,
//! once it is done, a depth-first pass in choice order, bounded by the largest L,
//! looks for the first schedule that breaks each invariant within its L. It
//! prunes a situation already expanded at the same or a smaller depth, and that
//! cannot hide the first schedule: if it passed a situation first reached by a
//! path earlier in the order and no longer, that path's continuation would break
//! the invariant no later and earlier in the order. It uses no partial-order
//! reduction: the first schedule in choice order may be the one of two orders
//! that a reduced search left untried. The pass runs only when something broke,
//! and only as deep as the longest counterexample.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Best, Expand, ExploreConfig, Split, Visited};
use crate::harness::schedule::{ChoiceCtx, Chooser, ScheduleError};
use crate::harness::{self, HarnessError, RunConfig, RunError};

/// The canonical prefix of each invariant in `found` (the search's best, whose
/// lengths are exact when the search was exhaustive). After an exhaustive search
/// the pass always runs to its end, so the result never depends on timing. After
/// a truncated one (whose result is a sample anyway) it keeps to the search's
/// caps, counted afresh, and if it runs out the search's own prefixes stand.
pub(super) fn counterexamples(
    cfg: &ExploreConfig,
    found: Best,
    exhaustive: bool,
) -> Result<Best, RunError> {
    if found.is_empty() {
        return Ok(found);
    }
    let mut wanted: BTreeMap<u8, usize> = found.iter().map(|(&k, p)| (k, p.len())).collect();
    let run = RunConfig { trace_writes: false, check_chooser: false, ..cfg.run.clone() };
    let visited = Visited::new();
    let mut stack: Vec<Vec<u32>> = vec![Vec::new()];
    let mut canonical = Best::new();
    let mut runs = 0;
    let began = Instant::now();
    while let Some(prefix) = stack.pop() {
        if wanted.is_empty() {
            break;
        }
        runs += 1;
        let over_time = cfg.max_time.is_some_and(|t| began.elapsed() >= t);
        if !exhaustive && (runs > cfg.max_schedules || over_time) {
            return Ok(found);
        }
        let mut lex = InOrder {
            split: Split::new(cfg.shard),
            prune: cfg.prune,
            prefix,
            path: Vec::new(),
            wanted: &wanted,
            visited: &visited,
            stack: &mut stack,
        };
        let r = harness::run_outcome(&run, &mut lex)?;
        let path = lex.path;
        if let Some(e) = r.harness_errors.first() {
            return Err(RunError::Harness(e.clone()));
        }
        for v in &r.violations {
            let Some(&l) = wanted.get(&v.invariant) else { continue };
            let len = v.step.min(path.len());
            if len > l {
                continue;
            }
            if len < l && exhaustive {
                // An exhaustive search found L exactly; a shorter one means it
                // pruned what it should not have.
                return Err(RunError::Harness(HarnessError::ShorterMissed {
                    invariant: v.invariant,
                    len,
                    searched: l,
                }));
            }
            canonical.insert(v.invariant, path[..len].to_vec());
            wanted.remove(&v.invariant);
        }
    }
    if let Some((&invariant, &step)) = wanted.iter().next() {
        return Err(RunError::Harness(HarnessError::NotReproduced { invariant, step }));
    }
    Ok(canonical)
}

/// Depth first in choice order: follows `prefix`, then takes the first choice at
/// each new situation and stacks the others so the next run takes the second.
struct InOrder<'a> {
    /// Off for a brute-force search, which must not lean on fingerprints.
    prune: bool,
    /// A shard's pass looks only at its own schedules, as its search did.
    split: Split,
    prefix: Vec<u32>,
    path: Vec<u32>,
    /// Invariant -> the length its first schedule is looked for within.
    wanted: &'a BTreeMap<u8, usize>,
    visited: &'a Visited,
    stack: &'a mut Vec<Vec<u32>>,
}

impl Chooser for InOrder<'_> {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        let depth = ctx.step;
        if let Some(&i) = self.prefix.get(depth) {
            return self.split.follow(&mut self.path, i, ctx.enabled, depth);
        }
        // Only an invariant not yet broken on this path, within its length, can
        // still be found from here.
        let may =
            self.wanted.iter().any(|(&k, &l)| depth < l && !ctx.observer.invariants().is_broken(k));
        if !may {
            return Ok(None);
        }
        let fp = ctx.world.fingerprint(ctx.observer);
        if !self.split.mine(|| fp) {
            return Ok(None);
        }
        let depth32 = u32::try_from(depth).unwrap_or(u32::MAX);
        if !self.split.before()
            && self.visited.claim(fp, depth32, self.prune, (0, 0)) == Expand::Nothing
        {
            return Ok(None);
        }
        self.split.chose(ctx.enabled.len());
        // Stacked last to first, so the second choice is the next run's.
        for alt in (1..ctx.enabled.len()).rev() {
            let mut p = self.path.clone();
            p.push(u32::try_from(alt).unwrap_or(u32::MAX));
            self.stack.push(p);
        }
        if ctx.enabled.is_empty() {
            return Ok(None);
        }
        self.path.push(0);
        Ok(Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sim_sled_agent::RemovalOrdering;
    use slog::{o, Discard, Logger};

    /// The search's lengths are exact, so a schedule shorter than one of them
    /// is the search's bug, and the pass says so rather than print it.
    #[test]
    fn a_schedule_shorter_than_the_search_found_is_a_harness_error() {
        let run = RunConfig {
            scenario: harness::ScenarioKind::StopRace,
            ordering: RemovalOrdering::RemoveThenPublish,
            watcher_passes: 1,
            ..RunConfig::new(Logger::root(Discard, o!()))
        };
        let cfg = ExploreConfig { threads: 1, ..ExploreConfig::new(run) };
        let exact = super::super::explore(&cfg).expect("explores");
        let want: Best =
            exact.counterexamples.iter().map(|c| (c.invariant, c.prefix.clone())).collect();
        assert!(!want.is_empty(), "the legacy ordering breaks something");
        assert_eq!(counterexamples(&cfg, want.clone(), true).expect("finds"), want);
        let loose: Best = want.iter().map(|(&k, p)| (k, vec![0; p.len() + 6])).collect();
        let err = counterexamples(&cfg, loose, true);
        assert!(matches!(err, Err(RunError::Harness(HarnessError::ShorterMissed { .. }))));
    }
}
