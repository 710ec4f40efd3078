//! The race catalogue: omicron's VMM-lifecycle races that the model expresses,
//! each with the switch that brings back its pre-fix behaviour, the bounds that
//! show it, and the invariant its harm breaks.
//!
//! A row is checked, not asserted: [`check`] explores the pre-fix model until it
//! finds the race's invariant broken, then proves the fixed model clean at the
//! same bounds. `cargo xtask catalogue` prints the table the README carries, and
//! a test per race compares its row with the README's, so the two cannot drift.

use std::fmt;
use std::time::Duration;

use crate::explore::{explore, ExploreConfig, Verdict};
use crate::harness::invariants::invariant_name;
use crate::harness::{Inject, RunConfig, RunError, ScenarioKind};
use crate::{RemovalOrdering, RestartPolicy};

/// What brings a race's pre-fix behaviour back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreFix {
    /// The sled agent removes a destroyed VMM before it reports it.
    Ordering(RemovalOrdering),
    /// Auto-restart as it was.
    Policy(RestartPolicy),
    /// A seeded bug.
    Inject(Inject),
}

impl PreFix {
    fn apply(self, run: &mut RunConfig) {
        match self {
            PreFix::Ordering(o) => run.ordering = o,
            PreFix::Policy(p) => run.restart_policy = p,
            PreFix::Inject(i) => run.inject = Some(i),
        }
    }
}

/// One race of the catalogue.
#[derive(Clone, Copy, Debug)]
pub struct Race {
    /// Its number in the catalogue (`R7`).
    pub id: &'static str,
    /// omicron's issues and pull requests.
    pub refs: &'static str,
    /// The interleaving, in one line.
    pub interleaving: &'static str,
    pub pre_fix: PreFix,
    pub scenario: ScenarioKind,
    /// The environment the race needs: user operations, faults and restarts of
    /// the sled agent.
    pub user_ops: usize,
    pub faults: usize,
    pub sled_restarts: usize,
    /// The invariant the race's harm breaks.
    pub breaks: u8,
}

/// The races the model expresses, in catalogue order.
pub const RACES: [Race; 8] = [
    Race {
        id: "R1",
        refs: "#7927, #7928",
        interleaving: "the sled agent removes a stopped VMM, then reports Destroyed; a watcher check in between gets 404 and writes Failed",
        pre_fix: PreFix::Ordering(RemovalOrdering::RemoveThenPublish),
        scenario: ScenarioKind::StopRace,
        user_ops: 0,
        faults: 0,
        sled_restarts: 0,
        breaks: 2,
    },
    Race {
        id: "R2",
        refs: "#7282",
        interleaving: "the same window in the simulated sled agent's poke, met by omicron's disk-move test: the stop ends Failed",
        pre_fix: PreFix::Ordering(RemovalOrdering::RemoveThenPublish),
        scenario: ScenarioKind::DiskMove,
        user_ops: 0,
        faults: 0,
        sled_restarts: 0,
        breaks: 2,
    },
    Race {
        id: "R3",
        refs: "#6809, #8053",
        interleaving: "a stop finds the VMM gone and marks it Failed; auto-restart, blind to the user's intent, starts it again",
        pre_fix: PreFix::Policy(RestartPolicy::Policy2024),
        scenario: ScenarioKind::StopRace,
        user_ops: 0,
        faults: 1,
        sled_restarts: 0,
        breaks: 7,
    },
    Race {
        id: "R4",
        refs: "#5235, #6455",
        interleaving: "a stop's answer is lost (timeout) or refused (503); Nexus takes the sled agent as unhealthy and marks the VMM Failed",
        pre_fix: PreFix::Inject(Inject::UnhealthyMarksFailed),
        scenario: ScenarioKind::StopRace,
        user_ops: 0,
        faults: 1,
        sled_restarts: 0,
        breaks: 2,
    },
    Race {
        id: "R5",
        refs: "#6165, #6166",
        interleaving: "a second stop reaches a VMM that is terminating (Destroyed, its report on the way); it is dropped with a 500, which Nexus takes for an unhealthy sled agent, and the VMM is marked Failed",
        pre_fix: PreFix::Inject(Inject::TerminatingDropsRequests),
        scenario: ScenarioKind::StopRace,
        user_ops: 1,
        faults: 0,
        sled_restarts: 0,
        breaks: 2,
    },
    Race {
        id: "R7",
        refs: "#6455",
        interleaving: "the watcher lists a starting VMM before it is registered, gets 404 and writes Failed",
        pre_fix: PreFix::Inject(Inject::WatcherChecksCreating),
        scenario: ScenarioKind::StopRace,
        user_ops: 0,
        faults: 0,
        sled_restarts: 0,
        breaks: 2,
    },
    Race {
        id: "R9",
        refs: "#10479",
        interleaving: "a user's start of a failed instance is allowed (its intent is now Running), auto-restart's start saga reserves and links, then the user's saga reserves too before it loses at the link and unwinds: two reservations for one instance, which orphan local storage",
        pre_fix: PreFix::Inject(Inject::DuplicateReservations),
        scenario: ScenarioKind::StopRace,
        user_ops: 1,
        faults: 1,
        sled_restarts: 0,
        breaks: 10,
    },
    Race {
        id: "R15",
        refs: "#6763, #2646",
        interleaving: "what #6763 feared: the sled agent restarts and loses its table while the VM runs on; the watcher gets 404 and writes Failed, and auto-restart starts a second VM of the instance (omicron's sled agent removes every zone when it starts, so the VMs end: the fixed model)",
        pre_fix: PreFix::Inject(Inject::RestartKeepsVms),
        scenario: ScenarioKind::StopRace,
        user_ops: 0,
        faults: 0,
        sled_restarts: 1,
        breaks: 12,
    },
];

/// The races of omicron's catalogue without a row, and why: left out of the
/// model, or (R10) in it as a finding with no fix to prove.
pub const NOT_MODELLED: [(&str, &str); 5] = [
    ("R6", "its 404 answered reports keyed by a deleted instance (2023); reports are keyed by VMM since, a soft-deleted VMM row still counts as existing (the write is stale), and a 404 needs a write that applies for an instance already deleted, which needs Nexus to hold the VMM terminal before its sled agent is done: rule 2 broken first; the model has no instance delete, and its sim gives a 4xx report up and deregisters the VMM, as omicron's sled agent does since #3256"),
    ("R8", "it needs the create saga's unwind; a create never fails in the model"),
    ("R10", "a finding, with no fix to prove: #9174 is open. At omicron's HEAD a start saga that fails after its link is undone by its own nodes (`sis_move_to_starting_undo` unlinks the VMM, then `sis_destroy_vmm_record` marks it SagaUnwound; the abandoned-VMM reaper skips active VMMs), so an instance auto-restart was starting is left stopped with its intent Running, and neither reincarnation query selects it again. The model does the same; its window is the `restart-unwound` exclusion, and `cargo xtask explore --scenario stop-race --user-ops 0 --faults 2 --findings` breaks invariant 11 (restart-not-abandoned) in 13 steps (a vanish fails the instance, then auto-restart's request that its new VMM run is refused)"),
    ("R11", "the update step runs to its end as one step: there is no saga lock and no Nexus crash"),
    ("R12-R14", "migration: the model has one sled and no migration records"),
];

impl Race {
    /// The fixed model at the race's bounds.
    pub fn fixed(&self) -> RunConfig {
        RunConfig {
            scenario: self.scenario,
            user_ops: self.user_ops,
            faults: self.faults,
            sled_restarts: self.sled_restarts,
            ..RunConfig::default()
        }
    }

    /// The model with the race's pre-fix behaviour.
    pub fn pre_fix(&self) -> RunConfig {
        let mut run = self.fixed();
        self.pre_fix.apply(&mut run);
        run
    }

    /// The command that shows the race: explore's flags for the pre-fix model
    /// that differ from explore's defaults, the scenario always named.
    pub fn command(&self) -> String {
        let defaults = RunConfig::explore_defaults().flags();
        let words: Vec<String> = self
            .pre_fix()
            .flags()
            .into_iter()
            .filter(|f| f.name == "--scenario" || !defaults.contains(f))
            .map(|f| match f.value {
                Some(v) => format!("{} {v}", f.name),
                None => f.name.to_string(),
            })
            .collect();
        format!("cargo xtask explore {}", words.join(" "))
    }
}

/// A race checked: what the pre-fix search found, and the fixed model's proof.
#[derive(Clone, Debug)]
pub struct Row {
    pub race: Race,
    /// Steps in the shortest schedule that breaks the race's invariant.
    pub shortest: usize,
    /// Its replay string.
    pub replay: String,
    /// The fixed model's proof: schedules run, distinct situations, time.
    pub proof_runs: usize,
    pub proof_situations: usize,
    pub proof_time: Duration,
    /// The fixed model again, with the known findings' windows open
    /// (`--findings`): the shortest schedule that still breaks the race's
    /// invariant, if one does. The proof above is scoped around them, as every
    /// explore is by default.
    pub with_findings: Option<usize>,
    /// The three searches' time.
    pub elapsed: Duration,
}

/// Why a race's row does not hold.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("{race}: the pre-fix model's search did not break invariant {invariant} ({name}); it was {}", verdict.word())]
    NotFound { race: &'static str, invariant: u8, name: &'static str, verdict: Verdict },
    #[error("{race}: the fixed model was not proved at the same bounds; it was {}", verdict.word())]
    FixNotProved { race: &'static str, verdict: Verdict },
    #[error("{race}: a run failed")]
    Run {
        race: &'static str,
        #[source]
        source: RunError,
    },
    #[error("no race {id} in the catalogue")]
    UnknownRace { id: String },
}

/// The searches run on one thread, so their schedule and situation counts are
/// the same on every machine.
fn search(run: RunConfig) -> ExploreConfig {
    ExploreConfig { threads: 1, ..ExploreConfig::new(run) }
}

/// Finds the race in the pre-fix model, then proves the fixed one.
pub fn check(race: &Race) -> Result<Row, CatalogueError> {
    let run = |source| CatalogueError::Run { race: race.id, source };
    let found = explore(&search(race.pre_fix())).map_err(run)?;
    let Some(cx) = found.counterexamples.iter().find(|c| c.invariant == race.breaks) else {
        return Err(CatalogueError::NotFound {
            race: race.id,
            invariant: race.breaks,
            name: invariant_name(race.breaks),
            verdict: found.verdict(),
        });
    };
    let proof = explore(&search(race.fixed())).map_err(run)?;
    if proof.verdict() != Verdict::Clean {
        return Err(CatalogueError::FixNotProved { race: race.id, verdict: proof.verdict() });
    }
    let open = explore(&search(RunConfig { findings: true, ..race.fixed() })).map_err(run)?;
    let with_findings =
        open.counterexamples.iter().find(|c| c.invariant == race.breaks).map(|c| c.len);
    Ok(Row {
        race: *race,
        shortest: cx.len,
        replay: cx.replay(),
        proof_runs: proof.runs,
        proof_situations: proof.situations,
        proof_time: proof.elapsed,
        with_findings,
        elapsed: found.elapsed + proof.elapsed + open.elapsed,
    })
}

/// The race of that id (`R7`).
pub fn race(id: &str) -> Result<&'static Race, CatalogueError> {
    RACES.iter().find(|r| r.id == id).ok_or_else(|| CatalogueError::UnknownRace { id: id.into() })
}

/// The table's heading, as the README carries it.
pub const HEADER: [&str; 8] = [
    "race",
    "omicron",
    "interleaving",
    "see it",
    "breaks",
    "shortest",
    "with the findings (`--findings`)",
    "fix proved (schedules, situations, time)",
];

impl Row {
    /// The row's cells, in `HEADER`'s order. Only the last one's time depends
    /// on the machine.
    pub fn cells(&self) -> [String; 8] {
        let r = &self.race;
        [
            r.id.to_string(),
            r.refs.to_string(),
            r.interleaving.to_string(),
            format!("`{}`", r.command()),
            format!("{} {}", r.breaks, invariant_name(r.breaks)),
            format!("{} steps", self.shortest),
            match self.with_findings {
                Some(n) => format!("still broken, {n} steps"),
                None => "clean".into(),
            },
            format!(
                "{} schedules, {} situations, {} ms",
                self.proof_runs,
                self.proof_situations,
                self.proof_time.as_millis()
            ),
        ]
    }
}

/// One Markdown table row.
pub fn markdown_row(cells: &[String]) -> String {
    format!("| {} |", cells.join(" | "))
}

/// The whole table, as the README carries it.
pub struct Table<'a>(pub &'a [Row]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header: Vec<String> = HEADER.iter().map(ToString::to_string).collect();
        writeln!(f, "{}", markdown_row(&header))?;
        writeln!(f, "|{}", "---|".repeat(HEADER.len()))?;
        for row in self.0 {
            writeln!(f, "{}", markdown_row(&row.cells()))?;
        }
        Ok(())
    }
}
