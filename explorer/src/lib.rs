//! sledsim's engine: wires the components behind gates, runs a scenario under a
//! chosen schedule, explores every interleaving within bounds and reports.
//!
//! The API a test needs is at the crate root: a [`RunConfig`] says what runs
//! (scenario, removal ordering, bounds, user operations and faults, a seeded
//! bug); [`explore`] searches every schedule within it and gives an
//! [`ExploreResult`] with its [`Verdict`], its [`Coverage`] and, per broken
//! invariant, the shortest [`Counterexample`]; [`replay`] runs one schedule
//! again from its replay string. `cargo xtask explore` and `cargo xtask scenario`
//! are these calls with a command line around them.
//!
//! ```
//! use sledsim_explorer::{explore, replay, ExploreConfig, RemovalOrdering, RunConfig};
//! use sledsim_explorer::{ScenarioKind, Verdict};
//!
//! // The fix, publish-then-remove, proved on the stop race.
//! let fixed = RunConfig { scenario: ScenarioKind::StopRace, ..RunConfig::default() };
//! let proof = explore(&ExploreConfig::new(fixed))?;
//! assert_eq!(proof.verdict(), Verdict::Clean);
//!
//! // The legacy ordering loses the race: its shortest counterexample replays.
//! let legacy = RunConfig {
//!     scenario: ScenarioKind::StopRace,
//!     ordering: RemovalOrdering::RemoveThenPublish,
//!     ..RunConfig::default()
//! };
//! let found = explore(&ExploreConfig::new(legacy.clone()))?;
//! assert_eq!(found.verdict(), Verdict::Violated);
//! let shortest = found.shortest().expect("a counterexample");
//! let again = replay(&legacy, &shortest.replay())?;
//! assert!(again.violations.iter().any(|v| v.invariant == shortest.invariant));
//! # Ok::<(), sledsim_explorer::RunError>(())
//! ```

pub mod catalogue;
pub mod explore;
pub mod explore_report;
pub mod harness;
pub mod report;

pub use explore::{
    explore, merge, Audited, Counterexample, Coverage, ExploreConfig, ExploreResult, MergeError,
    Shard, ShardResult, Truncation, Verdict,
};
pub use harness::invariants::INVARIANTS;
pub use harness::{Inject, RunConfig, RunError, RunResult, ScenarioKind, Transport};
pub use nexus_stub::RestartPolicy;
pub use sim_sled_agent::RemovalOrdering;

/// Runs one schedule: a replay string printed by a run or by [`explore`], or
/// `happy` or `seed-7282`. A malformed string, or one that names a step the run
/// cannot take, is an error ([`RunError::Schedule`]), never a different run.
pub fn replay(config: &RunConfig, schedule: &str) -> Result<RunResult, RunError> {
    let spec = harness::schedule::ScheduleSpec::parse(schedule)?;
    let mut chooser = spec.chooser(config.max_steps)?;
    harness::run(config, &mut *chooser)
}
