//! The instance watcher: one pass that asks each sled agent about the VMMs Nexus
//! thinks are alive, and turns "no such VMM" into a Failed write.
//!
//! It is generic over `SledAgentApi` and over `WatcherDatastore`, the two reads and
//! one write it needs from Nexus's database, so it never names a concrete sled agent
//! or Nexus. As in omicron (nexus/src/app/background/tasks/instance_watcher.rs):
//! - `Ok(state)` from the sled agent is submitted as an ordinary VMM write;
//! - `NoSuchVmm` (404 `NO_SUCH_INSTANCE`) becomes Failed at the listed gen + 1;
//! - any other error is inconclusive and writes nothing;
//! - a write that applied a terminal state is followed by the instance update
//!   step, which the check runs and awaits, as omicron's check awaits its saga;
//! - checks run concurrently, at most `concurrency` at once (16 in omicron).
//!
//! The Failed write is only safe because Nexus checks generations: if the sled
//! agent published a terminal state before forgetting the VMM, that state already
//! holds the listed gen + 1 and the watcher's write is stale.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use sled_agent_api::{
    BoxError, Clock, Generation, InstanceUuid, PropolisUuid, SledAgentApi, SledUuid, SledVmmState,
    VmmRuntimeState, VmmState,
};
use slog::{debug, info, o, warn, Logger};

/// A VMM row as the watcher lists it: its generation is the basis of a Failed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct WatchedVmm {
    pub instance_id: InstanceUuid,
    pub propolis_id: PropolisUuid,
    pub sled_id: SledUuid,
    pub runtime: VmmRuntimeState,
}

/// The result of a generation-checked VMM write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct VmmWriteOutcome {
    /// The write's generation was newer than the stored one, and it was applied.
    pub updated: bool,
    /// It applied a terminal state, so the instance needs its update step.
    pub update_needed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    #[error("no VMM record {propolis_id}")]
    NoSuchVmm { propolis_id: PropolisUuid },

    #[error("datastore unavailable for {operation}")]
    Unavailable {
        operation: &'static str,
        #[source]
        source: BoxError,
    },
}

/// What the watcher needs from Nexus's database.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
#[async_trait]
pub trait WatcherDatastore: Send + Sync {
    /// VMMs that are not Creating or Destroyed and not deleted, ordered by
    /// (sled, VMM) as omicron pages them.
    async fn vmm_list_for_watcher(&self) -> Result<Vec<WatchedVmm>, DatastoreError>;

    /// The same generation-checked write a sled agent's report goes through, but
    /// the update step it may need is left to the caller (omicron's
    /// `process_vmm_update` hands the watcher the saga to run).
    async fn vmm_update_runtime(
        &self,
        propolis_id: PropolisUuid,
        new_state: SledVmmState,
    ) -> Result<VmmWriteOutcome, DatastoreError>;

    /// Runs the instance update step and waits for it to finish.
    async fn run_instance_update(&self, instance_id: InstanceUuid) -> Result<(), DatastoreError>;
}

#[async_trait]
impl<T: WatcherDatastore + ?Sized> WatcherDatastore for Arc<T> {
    async fn vmm_list_for_watcher(&self) -> Result<Vec<WatchedVmm>, DatastoreError> {
        (**self).vmm_list_for_watcher().await
    }

    async fn vmm_update_runtime(
        &self,
        propolis_id: PropolisUuid,
        new_state: SledVmmState,
    ) -> Result<VmmWriteOutcome, DatastoreError> {
        (**self).vmm_update_runtime(propolis_id, new_state).await
    }

    async fn run_instance_update(&self, instance_id: InstanceUuid) -> Result<(), DatastoreError> {
        (**self).run_instance_update(instance_id).await
    }
}

/// Seeded bugs, for checking that the explorer catches them; only with the
/// `seeded-bugs` feature can a watcher be given them (`with_bugs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatcherBugs {
    /// Write Failed at listed gen + 2 instead of + 1.
    pub skip_generation: bool,
}

/// Counts of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PassCounts {
    /// VMMs listed and checked.
    pub checked: usize,
    /// Checks where the sled agent said the VMM is gone, so Failed was submitted.
    pub failed: usize,
    /// Checks that could not tell (sled unknown or unreachable, other errors).
    pub inconclusive: usize,
    /// Writes that were applied (newer generation).
    pub updated: usize,
    /// Writes the datastore refused with an error.
    pub write_errors: usize,
    /// Update steps that failed after an applied write.
    pub update_errors: usize,
}

impl PassCounts {
    /// Adds another check's or pass's counts to these.
    pub fn add(&mut self, other: PassCounts) {
        self.checked += other.checked;
        self.failed += other.failed;
        self.inconclusive += other.inconclusive;
        self.updated += other.updated;
        self.write_errors += other.write_errors;
        self.update_errors += other.update_errors;
    }
}

/// omicron's `MAX_CONCURRENT_CHECKS`.
pub const DEFAULT_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    #[error("listing VMMs to check failed")]
    List {
        #[source]
        source: DatastoreError,
    },
}

#[derive(Debug)]
pub struct InstanceWatcher<D, S> {
    log: Logger,
    datastore: D,
    sleds: BTreeMap<SledUuid, S>,
    clock: Arc<dyn Clock>,
    #[cfg(feature = "seeded-bugs")]
    bugs: WatcherBugs,
    concurrency: usize,
}

impl<D: WatcherDatastore, S: SledAgentApi> InstanceWatcher<D, S> {
    pub fn new(
        log: &Logger,
        datastore: D,
        sleds: BTreeMap<SledUuid, S>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let log = log.new(o!("component" => "InstanceWatcher"));
        InstanceWatcher {
            log,
            datastore,
            sleds,
            clock,
            #[cfg(feature = "seeded-bugs")]
            bugs: WatcherBugs::default(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// At most `n` checks at once (at least one).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    #[cfg(feature = "seeded-bugs")]
    pub fn with_bugs(mut self, bugs: WatcherBugs) -> Self {
        self.bugs = bugs;
        self
    }

    /// The generation a check writes Failed at when the sled agent says the VMM
    /// listed at `listed` is gone: the next one (two on with the seeded
    /// `skip_generation`). Public so a model checker can tell when that write
    /// can no longer apply.
    pub fn failed_generation(&self, listed: Generation) -> Generation {
        if self.bugs().skip_generation {
            listed.next().next()
        } else {
            listed.next()
        }
    }

    /// The seeded bugs in force: none, unless built with `seeded-bugs` and asked.
    fn bugs(&self) -> WatcherBugs {
        #[cfg(feature = "seeded-bugs")]
        return self.bugs;
        #[cfg(not(feature = "seeded-bugs"))]
        WatcherBugs::default()
    }

    /// One activation: list, then check every listed VMM, at most `concurrency`
    /// at once, each check holding its slot until its update step is done.
    pub async fn activate(&self) -> Result<PassCounts, WatcherError> {
        self.activate_with(|vmm, _| async move { self.check(&vmm).await }).await
    }

    /// `activate`, with each check run by `run` (which may run it as a task of its
    /// own, as omicron does, and must return its counts). `run` is also told the
    /// rows still waiting for a slot, in order: all the pass has left to do.
    pub async fn activate_with<F, Fut>(&self, mut run: F) -> Result<PassCounts, WatcherError>
    where
        F: FnMut(WatchedVmm, &[WatchedVmm]) -> Fut,
        Fut: std::future::Future<Output = PassCounts>,
    {
        let listed = self.list().await?;
        let mut counts = PassCounts::default();
        // Filled up to the bound, one more started as each one ends.
        let mut checks = FuturesUnordered::new();
        let mut rest = listed.as_slice();
        loop {
            while checks.len() < self.concurrency {
                let Some((vmm, waiting)) = rest.split_first() else { break };
                rest = waiting;
                checks.push(run(*vmm, rest));
            }
            let Some(c) = checks.next().await else { break };
            counts.add(c);
        }
        // A pass that found nothing to act on or to doubt is routine: a running
        // Nexus makes one every period.
        if counts.failed + counts.inconclusive + counts.write_errors + counts.update_errors > 0 {
            info!(self.log, "pass done";
                "checked" => counts.checked, "failed" => counts.failed,
                "inconclusive" => counts.inconclusive, "updated" => counts.updated,
                "write_errors" => counts.write_errors, "update_errors" => counts.update_errors);
        } else {
            debug!(self.log, "pass done";
                "checked" => counts.checked, "inconclusive" => counts.inconclusive,
                "updated" => counts.updated);
        }
        Ok(counts)
    }

    /// The VMMs a pass checks, in listing order.
    pub async fn list(&self) -> Result<Vec<WatchedVmm>, WatcherError> {
        let listed = self
            .datastore
            .vmm_list_for_watcher()
            .await
            .map_err(|source| WatcherError::List { source })?;
        debug!(self.log, "listed VMMs to check"; "count" => listed.len());
        Ok(listed)
    }

    /// One check: ask the VMM's sled agent, write what it says (or Failed if it
    /// says the VMM is gone), and run the update step the write needs.
    pub async fn check(&self, vmm: &WatchedVmm) -> PassCounts {
        let mut counts = PassCounts { checked: 1, ..PassCounts::default() };
        self.check_into(vmm, &mut counts).await;
        counts
    }

    async fn check_into(&self, vmm: &WatchedVmm, counts: &mut PassCounts) {
        // The VMM's identity goes on every line rather than into a child logger: a
        // child logger allocates per check, and the explorer runs millions of checks.
        let (log, id, inst, listed) =
            (&self.log, vmm.propolis_id, vmm.instance_id, vmm.runtime.gen.as_u64());
        let Some(sled) = self.sleds.get(&vmm.sled_id) else {
            warn!(log, "no client for sled"; "sled_id" => %vmm.sled_id,
                "propolis_id" => %id, "instance_id" => %inst, "listed_gen" => listed);
            counts.inconclusive += 1;
            return;
        };
        let new_state = match sled.vmm_get_state(vmm.propolis_id).await {
            Ok(state) => state,
            Err(e) if e.vmm_gone() => {
                counts.failed += 1;
                let gen = self.failed_generation(vmm.runtime.gen);
                info!(log, "sled agent says VMM is gone; marking it failed"; "gen" => gen.as_u64(),
                    "propolis_id" => %id, "instance_id" => %inst, "listed_gen" => listed);
                SledVmmState {
                    vmm_state: VmmRuntimeState {
                        state: VmmState::Failed,
                        gen,
                        time_updated: self.clock.now(),
                    },
                }
            }
            Err(e) => {
                debug!(log, "check inconclusive"; "error" => %e,
                    "propolis_id" => %id, "instance_id" => %inst, "listed_gen" => listed);
                counts.inconclusive += 1;
                return;
            }
        };
        match self.datastore.vmm_update_runtime(vmm.propolis_id, new_state).await {
            Ok(outcome) => {
                counts.updated += usize::from(outcome.updated);
                debug!(log, "VMM state written";
                    "propolis_id" => %id, "instance_id" => %inst, "listed_gen" => listed,
                    "state" => %new_state.vmm_state.state,
                    "gen" => new_state.vmm_state.gen.as_u64(), "updated" => outcome.updated);
                if outcome.update_needed {
                    if let Err(e) = self.datastore.run_instance_update(inst).await {
                        warn!(log, "instance update failed"; "error" => %e,
                            "propolis_id" => %id, "instance_id" => %inst);
                        counts.update_errors += 1;
                    }
                }
            }
            Err(e) => {
                warn!(log, "VMM write failed"; "error" => %e,
                    "propolis_id" => %id, "instance_id" => %inst, "listed_gen" => listed);
                counts.write_errors += 1;
            }
        }
    }
}
