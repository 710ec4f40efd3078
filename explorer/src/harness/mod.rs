//! The deterministic run harness: wires the real components through gates, runs
//! the actors on one `Executor`, and lets a `Chooser` pick every release.
//!
//! Nothing here reads the wall clock or real randomness: ids come from Nexus's
//! counter, timestamps from a `LogicalClock`, maps are `BTreeMap`s, and the order
//! of events is exactly the order of releases, so a schedule fixes the run.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hasher;
use std::sync::{Arc, Mutex, MutexGuard};

use nexus_stub::{
    DeferredSpawner, DiskView, InstanceView, NexusBugs, NexusConfig, NexusStub, RestartPolicy,
    UpdateOutcome,
};
use sim_sled_agent::{RemovalOrdering, SimBugs, SimConfig, SimMode, SimSledAgent};
use sled_agent_api::{
    Clock, InstanceUuid, LogicalClock, NexusInternalApi, PropolisUuid, SledAgentApi, SledUuid,
};
use slog::Logger;
use std::future::Future;
use watcher::{InstanceWatcher, PassCounts, WatcherBugs, WatcherDatastore};

pub mod executor;
pub mod gates;
pub mod hash;
pub mod invariants;
pub mod observe;
pub mod sched;
pub mod schedule;
pub mod script;
pub mod step;
pub mod transport;

use executor::{Executor, Spawner};
use gates::Gated;
use invariants::Violation;
use observe::Observer;
pub use sched::HarnessError;
use sched::{Probes, Sched, Tagged};
use schedule::{ChoiceCtx, Chooser, ScheduleError, Watch};
pub use script::{ScenarioKind, ScenarioProgress};
use step::{ActorKind, Answer, Arg, Call, CallKind, Component, Step, UpdateAnswer};

// The components talk to each other through trait objects, so one set of types
// serves both transports: in process, or over HTTP with clients behind the gates.
pub type Sim = SimSledAgent<Gated<Arc<dyn NexusInternalApi>>>;
pub type Nexus = NexusStub<Gated<Arc<dyn SledAgentApi>>>;
pub type Watcher = InstanceWatcher<Gated<Arc<dyn WatcherDatastore>>, Gated<Arc<dyn SledAgentApi>>>;

/// The one sled of every run.
pub const SLED: SledUuid = SledUuid::from_u128(0x5_0000_0000_0000_0000_0000_0001);

/// A known bug seeded into the clean model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Inject {
    /// Nexus applies every VMM write, whatever its generation.
    NoGenerationCheck,
    /// The watcher also lists and checks VMMs Nexus recorded Destroyed.
    WatcherListsTerminal,
    /// The watcher writes Failed at the listed generation + 2, not + 1.
    WatcherSkipsGeneration,
    /// The landed model's user path: Failed at the stored generation + 1.
    MarkFailedAtStoredGen,
    /// The watcher also checks VMMs still Creating, not yet registered with
    /// their sled agent (omicron before #6455).
    WatcherChecksCreating,
    /// A stop or reboot whose answer is lost or refused marks the VMM Failed
    /// (omicron before #6455).
    UnhealthyMarksFailed,
    /// A stop or reboot sent to a VMM that is terminating is answered 500, not
    /// 410, and Nexus marks the VMM Failed (omicron before #6166).
    TerminatingDropsRequests,
    /// A start reserves its sled's resources while another start of the same
    /// instance holds a reservation (omicron before #10479).
    DuplicateReservations,
    /// A sled agent that restarts leaves its VMs running, unknown to it (the
    /// duplicate VM omicron#6763 feared; omicron's removes every Propolis zone
    /// before it serves again).
    RestartKeepsVms,
}

impl Inject {
    pub const ALL: [Inject; 9] = [
        Inject::NoGenerationCheck,
        Inject::WatcherListsTerminal,
        Inject::WatcherSkipsGeneration,
        Inject::MarkFailedAtStoredGen,
        Inject::WatcherChecksCreating,
        Inject::UnhealthyMarksFailed,
        Inject::TerminatingDropsRequests,
        Inject::DuplicateReservations,
        Inject::RestartKeepsVms,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Inject::NoGenerationCheck => "no-generation-check",
            Inject::WatcherListsTerminal => "watcher-lists-terminal",
            Inject::WatcherSkipsGeneration => "watcher-skips-generation",
            Inject::MarkFailedAtStoredGen => "mark-failed-at-stored-gen",
            Inject::WatcherChecksCreating => "watcher-checks-creating",
            Inject::UnhealthyMarksFailed => "unhealthy-marks-failed",
            Inject::TerminatingDropsRequests => "terminating-drops-requests",
            Inject::DuplicateReservations => "duplicate-reservations",
            Inject::RestartKeepsVms => "restart-keeps-vms",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: ScenarioKind,
    pub ordering: RemovalOrdering,
    pub restart_policy: RestartPolicy,
    pub watcher_passes: usize,
    /// Checks a watcher pass runs at once, each its own actor.
    pub watcher_concurrency: usize,
    pub restart_passes: usize,
    pub max_steps: usize,
    /// Operations a user may add to the scenario's (explored choices).
    pub user_ops: usize,
    /// Faults the schedule may inject (explored choices).
    pub faults: usize,
    /// Restarts of the sled agent the schedule may make (explored choices, a
    /// budget of their own).
    pub sled_restarts: usize,
    /// Let stops and reboots land in the windows of the known findings
    /// (`script::FINDINGS`), which runs leave out by default.
    pub findings: bool,
    pub inject: Option<Inject>,
    pub transport: Transport,
    /// Mark each step with Nexus's write log (`Step::writes_from`), so a report can
    /// say which writes a step caused. The explorer's search runs go without.
    pub trace_writes: bool,
    /// Check, around every choice, that the chooser left the world as it found it
    /// (its fingerprint's input unchanged); a change is a harness error.
    pub check_chooser: bool,
    /// Describe what the components hold at the end of a run that ends
    /// (`RunOutcome::end_state`), for tests that compare searches by it.
    pub describe_end: bool,
    pub log: Logger,
}

/// Steps one run may take, in `scenario` and `explore` alike, so a schedule that
/// explore prints replays under `scenario` with the same bound.
pub const DEFAULT_MAX_STEPS: usize = 200;

/// How far a run's logical clock (1 ms a timestamp) may move on. Fingerprints
/// hash an auto-restart cooldown with more than this left as one value however
/// long is left (`NexusStub::hash_state`), which is sound only while no run gets
/// this far: a run that does is a harness error, not a quiet miss. omicron's
/// cooldown is 5 minutes; a run of the longest step bound hands out a few
/// thousand timestamps.
pub const CLOCK_HORIZON_MS: u64 = 100_000;

/// Checks a watcher pass runs at once (omicron runs up to 16).
pub const DEFAULT_WATCHER_CONCURRENCY: usize = 2;

/// The user operations and faults `explore` gives a run unless told otherwise:
/// one of each, so a search meets what users and failures do by default.
/// `scenario` (and `RunConfig::default`) gives none, so a replayed schedule
/// needs no environment it did not name.
pub const EXPLORE_USER_OPS: usize = 1;
pub const EXPLORE_FAULTS: usize = 1;

/// How the components reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Transport {
    /// Direct calls: what the explorer runs.
    #[default]
    #[cfg_attr(feature = "clap", value(name = "inproc"))]
    InProc,
    /// Real loopback sockets: the sim and Nexus are dropshot servers, and every
    /// cross-component call is an HTTP request made behind its gate.
    Http,
}

impl Transport {
    pub const fn label(self) -> &'static str {
        match self {
            Transport::InProc => "inproc",
            Transport::Http => "http",
        }
    }
}

/// One command-line flag of a run's configuration, as `scenario` and `explore`
/// take it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub name: &'static str,
    /// `None` for a switch (`--findings`).
    pub value: Option<String>,
    /// Whether `scenario` takes this value anyway when the flag is left out.
    pub is_default: bool,
}

impl RunConfig {
    /// The flags that give this configuration to `scenario` or `explore`, in
    /// one order. The scenario, ordering and policy are never marked default, so
    /// a command names them; a switch or seeded bug is listed only when on.
    pub fn flags(&self) -> Vec<Flag> {
        let flag = |name, value: String, is_default| Flag { name, value: Some(value), is_default };
        let mut v = vec![
            flag("--scenario", self.scenario.label().to_string(), false),
            flag("--ordering", self.ordering.label().to_string(), false),
            flag("--restart-policy", self.restart_policy.label().to_string(), false),
            flag("--watcher-passes", self.watcher_passes.to_string(), self.watcher_passes == 2),
            flag(
                "--watcher-concurrency",
                self.watcher_concurrency.to_string(),
                self.watcher_concurrency == DEFAULT_WATCHER_CONCURRENCY,
            ),
            flag("--restart-passes", self.restart_passes.to_string(), self.restart_passes == 1),
            flag("--max-steps", self.max_steps.to_string(), self.max_steps == DEFAULT_MAX_STEPS),
            // scenario's defaults are 0 of each, but a replay string that ends
            // the fault actor with a restart left shows one more fault, and
            // the restart's seeded bug brings one restart.
            flag("--user-ops", self.user_ops.to_string(), self.user_ops == 0),
            flag("--faults", self.faults.to_string(), self.faults == 0 && self.sled_restarts == 0),
            flag(
                "--sled-restarts",
                self.sled_restarts.to_string(),
                self.sled_restarts == 0 && self.inject != Some(Inject::RestartKeepsVms),
            ),
        ];
        if self.findings {
            v.push(Flag { name: "--findings", value: None, is_default: false });
        }
        if let Some(i) = self.inject {
            v.push(flag("--inject", i.label().to_string(), false));
        }
        v
    }
}

/// The defaults, logging nowhere.
impl Default for RunConfig {
    fn default() -> Self {
        RunConfig::new(Logger::root(slog::Discard, slog::o!()))
    }
}

impl RunConfig {
    /// `explore`'s defaults: `RunConfig::default` with one user operation and
    /// one fault (`EXPLORE_USER_OPS`, `EXPLORE_FAULTS`).
    pub fn explore_defaults() -> Self {
        RunConfig { user_ops: EXPLORE_USER_OPS, faults: EXPLORE_FAULTS, ..RunConfig::default() }
    }

    pub fn new(log: Logger) -> Self {
        RunConfig {
            scenario: ScenarioKind::DiskMove,
            ordering: RemovalOrdering::PublishThenRemove,
            restart_policy: RestartPolicy::Current,
            watcher_passes: 2,
            watcher_concurrency: DEFAULT_WATCHER_CONCURRENCY,
            restart_passes: 1,
            max_steps: DEFAULT_MAX_STEPS,
            user_ops: 0,
            faults: 0,
            sled_restarts: 0,
            findings: false,
            inject: None,
            transport: Transport::InProc,
            trace_writes: true,
            check_chooser: false,
            describe_end: false,
            log,
        }
    }
}

/// How a run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every actor finished.
    Finished,
    /// Actors are left but none can be released.
    Deadlock(Vec<ActorKind>),
    /// The step bound was reached.
    StepBound(usize),
    /// The chooser stopped the run (the explorer prunes a situation it has seen).
    Stopped,
}

/// One run's components, wired.
pub struct World {
    pub sched: Arc<Sched>,
    pub nexus: Arc<Nexus>,
    pub sim: Arc<Sim>,
    /// How the scenario pokes the sim, and how the watcher reaches the sled agent
    /// and the datastore: directly, or through HTTP clients.
    links: transport::Links,
    progress: Arc<Mutex<ScenarioProgress>>,
    spawner: Arc<DeferredSpawner>,
    watcher_counts: Arc<Mutex<Vec<PassCounts>>>,
    /// The components' clock: not part of a situation, but a chooser must not move it.
    clock: Arc<LogicalClock>,
    /// Whether Nexus checks generations (not with `--inject no-generation-check`):
    /// only then can a write be known stale before it is made.
    generations_checked: bool,
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("World").field("sched", &self.sched).finish_non_exhaustive()
    }
}

/// Display names: instances by name, VMMs as `inst1/vmm1`.
#[derive(Debug, Default)]
pub struct Names {
    instances: BTreeMap<InstanceUuid, String>,
    vmms: BTreeMap<PropolisUuid, String>,
}

impl Names {
    /// Instances by the names given; each instance's VMMs numbered in id order.
    pub fn new(instances: Vec<(InstanceUuid, String)>, vmms: &[nexus_stub::VmmRecord]) -> Names {
        let mut names = Names { instances: instances.into_iter().collect(), ..Names::default() };
        let mut per_instance: BTreeMap<InstanceUuid, usize> = BTreeMap::new();
        for v in vmms {
            let n = per_instance.entry(v.instance_id).or_default();
            *n += 1;
            let inst = names.instance(v.instance_id);
            names.vmms.insert(v.id, format!("{inst}/vmm{n}"));
        }
        names
    }

    pub fn vmm(&self, id: PropolisUuid) -> String {
        self.vmms.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }

    pub fn instance(&self, id: InstanceUuid) -> String {
        self.instances.get(&id).cloned().unwrap_or_else(|| id.to_string())
    }
}

impl World {
    fn build(config: &RunConfig) -> Result<World, RunError> {
        let log = &config.log;
        let sched = Sched::new();
        let logical = Arc::new(LogicalClock::default());
        let clock: Arc<dyn Clock> = Arc::clone(&logical) as Arc<dyn Clock>;
        // In process the sim reports straight to Nexus (held weakly); over HTTP, to a
        // client whose address is known once Nexus's server is up.
        let late = Arc::new(sledsim_http::LateNexus::default());
        let target: Arc<dyn NexusInternalApi> = Arc::clone(&late) as Arc<dyn NexusInternalApi>;
        let sim_config = SimConfig { ordering: config.ordering, mode: SimMode::Explicit };
        let wire = config.transport == Transport::Http;
        let mut to_nexus = Gated::new(target, &sched, Component::SledAgent).over_the_wire(wire);
        if config.transport == Transport::Http {
            // Over HTTP the sim reports from its server's threads, outside any actor;
            // each report is a call of whoever's poke made it.
            to_nexus = to_nexus.with_fallback(gates::Fallback::Poker);
        }
        let sim = SimSledAgent::new(log, SLED, sim_config, to_nexus, Arc::clone(&clock))
            .map_err(RunError::Setup)?;
        sim.seed_bugs(SimBugs {
            terminating_drops_requests: config.inject == Some(Inject::TerminatingDropsRequests),
            restart_keeps_vms: config.inject == Some(Inject::RestartKeepsVms),
        });
        let spawner = Arc::new(DeferredSpawner::default());
        let executor =
            gates::GatedSpawner { updates: Arc::clone(&spawner), sched: Arc::clone(&sched) };
        let nexus_config = NexusConfig {
            restart_policy: config.restart_policy,
            bugs: NexusBugs {
                skip_generation_check: config.inject == Some(Inject::NoGenerationCheck),
                list_terminal_for_watcher: config.inject == Some(Inject::WatcherListsTerminal),
                mark_failed_at_stored_gen: config.inject == Some(Inject::MarkFailedAtStoredGen),
                duplicate_reservations: config.inject == Some(Inject::DuplicateReservations),
                list_creating_for_watcher: config.inject == Some(Inject::WatcherChecksCreating),
                // omicron before #6166 was also before #6455: its Nexus took the
                // dropped request's 500 for an unhealthy sled agent.
                unhealthy_marks_failed: matches!(
                    config.inject,
                    Some(Inject::UnhealthyMarksFailed | Inject::TerminatingDropsRequests)
                ),
            },
            ..NexusConfig::default()
        };
        let (sled_for_nexus, links) = match config.transport {
            Transport::InProc => transport::in_process(&sim),
            Transport::Http => transport::http(&sim, log).map_err(RunError::Transport)?,
        };
        let to_sled = Gated::new(sled_for_nexus, &sched, Component::Nexus).over_the_wire(wire);
        let sleds = BTreeMap::from([(SLED, to_sled)]);
        let nexus =
            NexusStub::new(log, nexus_config, sleds, Arc::clone(&clock), Arc::new(executor));
        let links = links.finish(&nexus, &late, log).map_err(RunError::Transport)?;
        let (w1, w2, w3) = (Arc::downgrade(&nexus), Arc::downgrade(&nexus), Arc::downgrade(&nexus));
        sched.set_probes(Probes {
            vmm: Box::new(move |vmm| {
                w1.upgrade().and_then(|n| n.vmm(vmm)).map(|r| (r.state, r.gen))
            }),
            basis: Box::new(move |vmm| w3.upgrade().and_then(|n| n.take_request_basis(vmm))),
            writes: config.trace_writes.then(|| -> Box<dyn Fn() -> usize + Send + Sync> {
                Box::new(move || w2.upgrade().map_or(0, |n| n.vmm_writes_len()))
            }),
        });
        Ok(World {
            sched,
            nexus,
            sim,
            links,
            progress: Arc::default(),
            spawner,
            watcher_counts: Arc::default(),
            clock: logical,
            generations_checked: config.inject != Some(Inject::NoGenerationCheck),
        })
    }

    fn watcher(&self, config: &RunConfig, clock: Arc<dyn Clock>) -> Watcher {
        let ds = Gated::new(self.links.datastore(&self.nexus), &self.sched, Component::Watcher);
        let sled = Gated::new(self.links.sled(&self.sim), &self.sched, Component::Watcher)
            .over_the_wire(config.transport == Transport::Http);
        let bugs =
            WatcherBugs { skip_generation: config.inject == Some(Inject::WatcherSkipsGeneration) };
        InstanceWatcher::new(&config.log, ds, BTreeMap::from([(SLED, sled)]), clock)
            .with_bugs(bugs)
            .with_concurrency(config.watcher_concurrency)
    }

    /// Identifies the situation: every component's state, every actor's history
    /// and parked call, the scenario's progress, and what the invariants remember.
    /// Two runs with the same fingerprint have the same futures, so the explorer
    /// visits each once.
    pub fn fingerprint(&self, observer: &Observer) -> u64 {
        let mut h = hash::StableHasher::default();
        self.fingerprint_into(observer, &mut h);
        h.finish()
    }

    /// Feeds everything the fingerprint covers into `h`; with a `hash::Recorder`,
    /// that is the situation in full, to compare where fingerprints collide.
    pub fn fingerprint_into<H: Hasher>(&self, observer: &Observer, h: &mut H) {
        self.nexus.hash_state(h, chrono::TimeDelta::milliseconds(CLOCK_HORIZON_MS as i64));
        self.sim.hash_state(h);
        self.sched.hash_actors(h, &|vmm| self.row_probe(vmm));
        self.progress().hash_state(h);
        observer.hash_state(h, &|vmm| self.row_probe(vmm));
    }

    /// A VMM's row as the fingerprint weighs it (`sched::RowProbe`).
    fn row_probe(&self, vmm: PropolisUuid) -> Option<(u64, bool)> {
        let r = self.nexus.vmm(vmm).filter(|_| self.generations_checked)?;
        Some((r.gen.as_u64(), r.deleted))
    }

    /// `call` as the fingerprint takes it when parked (a check's stale write
    /// without what it carries; `sched::stale_write_call`).
    pub fn call_as_fingerprinted(&self, call: step::Call) -> step::Call {
        sched::stale_write_call(call, &|vmm| self.row_probe(vmm))
    }

    /// The situation in full, as the bytes its fingerprint is made of.
    pub fn situation(&self, observer: &Observer) -> Vec<u8> {
        let mut r = hash::Recorder::default();
        self.fingerprint_into(observer, &mut r);
        r.into_bytes()
    }

    /// Whether the VMM write `c` parks (a report, or a watcher's write) can no
    /// longer apply: its row is deleted, or already at its generation or a newer
    /// one. Rows are never removed and their generations never go down, so it
    /// stays so; with the generation check seeded out, nothing is stale.
    pub fn stale_write(&self, c: &step::Choice) -> bool {
        let (Some(vmm), Arg::State(_, gen)) = (c.call.vmm, c.call.arg) else { return false };
        let writes = matches!(c.call.kind, CallKind::CpapiInstancesPut | CallKind::VmmWrite);
        writes && sched::stale_at(&|v| self.row_probe(v), vmm, gen.as_u64())
    }

    /// Whether the get-state `c` parks asks about a VMM gone for good: the sled
    /// agent no longer has it, nothing waiting at a gate could put it back (a
    /// start's registration, parked while its row, inserted as Creating, was
    /// failed and deleted; a report the sim would keep the VMM for if it
    /// failed; every start mints a fresh id), and Nexus's row is deleted. Its
    /// answer is then a 404 whenever it is released. No write applies to a
    /// deleted row; a start unwinding may still relabel it SagaUnwound, but rule
    /// 1 takes that as it takes the terminal state it replaces, and the check
    /// learns only that the VMM is gone. A row no longer listed cannot change
    /// what rule 6 notes of it.
    pub fn dead_read(&self, c: &step::Choice) -> bool {
        let Some(vmm) = c.call.vmm else { return false };
        c.call.kind == CallKind::VmmGetState
            && !self.sim.contains_vmm(vmm)
            && self.row_probe(vmm).is_some_and(|(_, deleted)| deleted)
            && !self.sched.may_restore(vmm)
    }

    /// Whether Nexus holds the row of the VMM `c`'s call is about deleted, with
    /// generations checked (`reduction::Situation::row_deleted`).
    pub fn row_deleted(&self, c: &step::Choice) -> bool {
        c.call.vmm.and_then(|vmm| self.row_probe(vmm)).is_some_and(|(_, deleted)| deleted)
    }

    /// The instance the call `c` parks is about, if it is known (see
    /// `reduction::Situation::instance`): its VMM's, by Nexus's row; the one it
    /// names by id; or the one the scenario created under the name it carries.
    pub fn instance_of(&self, c: &step::Choice) -> Option<InstanceUuid> {
        self.instance_of_call(&c.call)
    }

    /// `instance_of`, for a call.
    pub fn instance_of_call(&self, call: &Call) -> Option<InstanceUuid> {
        if let Some(vmm) = call.vmm {
            return self.nexus.vmm(vmm).map(|r| r.instance_id);
        }
        match call.arg {
            Arg::Instance(id) => Some(id),
            Arg::Name(name) => script::created(&self.progress, name),
            Arg::None | Arg::Requested(_) | Arg::State(..) => None,
        }
    }

    /// What the components hold, as a user could read it from their APIs: each
    /// instance's state, Nexus's VMM rows, the sled agent's table, the disk, and
    /// whether the scenario passed. No fingerprint, no history: two searches compared
    /// by these compare what they reached.
    pub fn end_state(&self) -> String {
        let instances: Vec<_> = self
            .nexus
            .instances()
            .into_iter()
            .map(|i| (i.name, i.state, i.propolis_id, i.intended, i.auto_restarts))
            .collect();
        let vmms: Vec<_> =
            self.nexus.vmms().into_iter().map(|v| (v.id, v.state, v.gen, v.deleted)).collect();
        let sled = self.sled_table();
        let orphans = self.sim.orphans();
        let progress = self.progress();
        let disk = progress.disk.and_then(|d| self.nexus.disk(d).ok()).map(|d| d.state);
        // Whether the scenario passed, not its failure's words: what the end
        // rules weigh and the fingerprint holds.
        let passed = progress.passed();
        format!("{instances:?} {vmms:?} {sled:?} {orphans:?} {disk:?} {passed:?}")
    }

    /// The sled agent's table: each VMM, its state and generation.
    fn sled_table(
        &self,
    ) -> Vec<(PropolisUuid, sled_agent_api::VmmState, sled_agent_api::Generation)> {
        let ids = self.sim.vmm_ids().into_iter();
        ids.filter_map(|id| self.sim.vmm_runtime(id).map(|(state, gen)| (id, state, gen))).collect()
    }

    /// What the components hold now, for a report's state strip.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            sled: self.sled_table(),
            orphans: self.sim.orphans().into_iter().map(|(v, _)| v).collect(),
            vmms: self
                .nexus
                .vmms()
                .into_iter()
                .map(|v| (v.id, v.state, v.gen, v.deleted))
                .collect(),
            instances: self.nexus.instances().into_iter().map(|i| (i.id, i.state)).collect(),
        }
    }

    pub fn progress(&self) -> MutexGuard<'_, ScenarioProgress> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn names(&self) -> Names {
        // Nexus's names, so an instance whose create failed is named too.
        let instances = self.nexus.instances().into_iter().map(|v| (v.id, v.name)).collect();
        Names::new(instances, &self.nexus.vmms())
    }

    /// Starts each update step Nexus queued as its own actor. Returns how many.
    fn spawn_updates(&self, pool: &Executor) -> usize {
        let queued = self.spawner.take();
        let n = queued.len();
        for (instance_id, task) in queued {
            let id = self.sched.add_actor(self.sched.next_update());
            let sched = Arc::clone(&self.sched);
            let call = Call {
                kind: CallKind::InstanceUpdate,
                from: Component::UpdateStep,
                to: Component::Datastore,
                vmm: None,
                arg: Arg::Instance(instance_id),
            };
            let fut = async move {
                // The outcome, error included, is recorded as the step's answer.
                let _ = sched
                    .gate(
                        call,
                        None,
                        None,
                        || task,
                        |r| {
                            Answer::Updated(match r {
                                Ok(UpdateOutcome::Stopped { .. }) => UpdateAnswer::InstanceStopped,
                                Ok(UpdateOutcome::Failed { .. }) => UpdateAnswer::InstanceFailed,
                                Ok(UpdateOutcome::NothingToDo) => UpdateAnswer::NothingToDo,
                                Err(_) => UpdateAnswer::Error,
                            })
                        },
                    )
                    .await;
            };
            spawn(pool, id, &self.sched, fut);
        }
        n
    }
}

fn spawn(pool: &Executor, id: usize, sched: &Arc<Sched>, fut: impl Future<Output = ()> + 'static) {
    spawn_on(&pool.spawner(), id, sched, fut);
}

/// Starts an actor's future on the run's pool, tagged with its id (boxed once,
/// with its tag).
pub(super) fn spawn_on(
    spawner: &Spawner,
    id: usize,
    sched: &Arc<Sched>,
    fut: impl Future<Output = ()> + 'static,
) {
    spawner.spawn(Box::pin(Tagged::new(id, Arc::clone(sched), fut)));
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error("building the simulated sled agent failed")]
    Setup(#[source] sim_sled_agent::SimError),
    #[error("the harness failed")]
    Harness(#[source] HarnessError),
    #[error("setting up the HTTP transport failed")]
    Transport(#[source] transport::TransportError),
}

/// Everything a run produced, read from state once it ended.
#[derive(Debug)]
pub struct RunResult {
    pub end: RunEnd,
    pub steps: Vec<Step>,
    pub actors: Vec<ActorKind>,
    pub violations: Vec<Violation>,
    pub instances: Vec<InstanceView>,
    pub disk: Option<DiskView>,
    pub watcher: Vec<PassCounts>,
    pub names: Names,
    pub scenario_outcome: Option<Result<(), String>>,
    pub harness_errors: Vec<HarnessError>,
    /// Nexus's VMM write log; `Step::writes_from` indexes into it.
    pub writes: Vec<nexus_stub::VmmWrite>,
    /// Nexus's VMM rows at the end, deleted ones included.
    pub vmms: Vec<nexus_stub::VmmRecord>,
    /// What the sled agent's table held at the end: each VMM, its state and
    /// generation.
    pub sled: Vec<(PropolisUuid, sled_agent_api::VmmState, sled_agent_api::Generation)>,
    /// What the components held before the first step and after each step.
    pub snapshots: Vec<Snapshot>,
}

/// What the components hold between two steps, as a report shows it: the sled
/// agent's table, Nexus's VMM rows and its instances' states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub sled: Vec<(PropolisUuid, sled_agent_api::VmmState, sled_agent_api::Generation)>,
    /// VMs a restart left running, out of the sled agent's table.
    pub orphans: Vec<PropolisUuid>,
    /// Every row, and whether the update step deleted it.
    pub vmms: Vec<(PropolisUuid, nexus_stub::DbVmmState, sled_agent_api::Generation, bool)>,
    pub instances: Vec<(InstanceUuid, nexus_stub::ExternalState)>,
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.violations.is_empty() && self.harness_errors.is_empty()
    }

    /// What one run shows, in explore's words: a run the step bound cut short is
    /// unjudged at its end (inconclusive), unless something broke on the way.
    pub fn verdict(&self) -> crate::explore::Verdict {
        use crate::explore::Verdict;
        match (self.passed(), &self.end) {
            (false, _) => Verdict::Violated,
            (true, RunEnd::StepBound(_)) => Verdict::Inconclusive,
            (true, _) => Verdict::Clean,
        }
    }

    /// The Nexus writes step `i` caused: from its mark to the next step's. A step
    /// runs atomically, so nothing else wrote in between.
    pub fn writes_of(&self, i: usize) -> &[nexus_stub::VmmWrite] {
        let Some(step) = self.steps.get(i) else { return &[] };
        let end = self.steps.get(i + 1).map_or(self.writes.len(), |n| n.writes_from);
        self.writes.get(step.writes_from..end).unwrap_or_default()
    }

    pub fn replay(&self) -> String {
        schedule::replay_string(&self.steps, &self.actors)
    }
}

/// Runs one schedule from scratch and reads everything a report needs.
pub fn run(config: &RunConfig, chooser: &mut dyn Chooser) -> Result<RunResult, RunError> {
    let mut snapshots = Vec::new();
    let (world, end, observer) = drive(config, chooser, Some(&mut snapshots))?;
    let disk = world.progress().disk.and_then(|d| world.nexus.disk(d).ok());
    let scenario_outcome = world.progress().outcome.clone();
    let watcher = world.watcher_counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let result = RunResult {
        end,
        steps: world.sched.steps(),
        actors: world.sched.actor_kinds(),
        violations: observer.violations().to_vec(),
        instances: world.nexus.instances(),
        disk,
        watcher,
        names: world.names(),
        scenario_outcome,
        harness_errors: world.sched.errors(),
        writes: world.nexus.vmm_writes(),
        vmms: world.nexus.vmms(),
        sled: world.sled_table(),
        snapshots,
    };
    Ok(result)
}

/// Logs, at debug, each gated call of a run once it has its answer: the calls
/// answered since the last look (`logged` marks those already logged), so a run
/// that stops on an error has logged everything up to it.
fn log_answered(log: &Logger, world: &World, logged: &mut Vec<bool>) {
    // Building the lines costs more than a step: only when they are kept.
    if !slog::Drain::is_enabled(log, slog::Level::Debug) {
        return;
    }
    let steps = world.sched.steps();
    logged.resize(steps.len(), false);
    if logged.iter().all(|&l| l) {
        return;
    }
    // The report's view of the run so far, for the names and the writes.
    let so_far = RunResult {
        end: RunEnd::Stopped,
        steps,
        actors: world.sched.actor_kinds(),
        violations: Vec::new(),
        instances: Vec::new(),
        disk: None,
        watcher: Vec::new(),
        names: world.names(),
        scenario_outcome: None,
        harness_errors: Vec::new(),
        writes: world.nexus.vmm_writes(),
        vmms: Vec::new(),
        sled: Vec::new(),
        snapshots: Vec::new(),
    };
    for (i, st) in so_far.steps.iter().enumerate() {
        if logged[i] || st.answer == Answer::Pending {
            continue;
        }
        logged[i] = true;
        let s = crate::report::step_out(i, st, &so_far);
        slog::debug!(log, "gated call";
            "step" => s.n, "actor" => &s.actor, "call" => s.call_text(),
            "from" => s.from.label(), "to" => s.to.label(), "answer" => &s.answer,
            "writes" => s.writes.join("; "));
    }
}

/// How a run ended and what it broke: all the explorer reads, so nothing else is
/// copied out of the run.
#[derive(Debug)]
pub struct RunOutcome {
    pub end: RunEnd,
    pub violations: Vec<Violation>,
    pub harness_errors: Vec<HarnessError>,
    /// With `RunConfig::describe_end`, for a run that finished or deadlocked:
    /// what the components hold (`World::end_state`).
    pub end_state: Option<String>,
}

/// Runs one schedule from scratch and reads only how it ended and what it broke.
pub fn run_outcome(config: &RunConfig, chooser: &mut dyn Chooser) -> Result<RunOutcome, RunError> {
    let (world, end, observer) = drive(config, chooser, None)?;
    let ended = matches!(end, RunEnd::Finished | RunEnd::Deadlock(_));
    Ok(RunOutcome {
        end_state: (config.describe_end && ended).then(|| world.end_state()),
        end,
        violations: observer.violations().to_vec(),
        harness_errors: world.sched.errors(),
    })
}

fn drive(
    config: &RunConfig,
    chooser: &mut dyn Chooser,
    mut snapshots: Option<&mut Vec<Snapshot>>,
) -> Result<(World, RunEnd, Observer), RunError> {
    let world = World::build(config)?;
    // However the run ends, error included, calls still parked (over HTTP, on
    // the servers' threads) are let through so the servers can close.
    struct CloseOnDrop(Arc<Sched>);
    impl Drop for CloseOnDrop {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _close = CloseOnDrop(Arc::clone(&world.sched));
    let mut pool = Executor::new();
    let clock: Arc<dyn Clock> = Arc::new(LogicalClock::default());

    let scenario_id = world.sched.add_actor(ActorKind::Scenario);
    if scenario_id != transport::SCENARIO_ACTOR {
        return Err(RunError::Harness(HarnessError::ScenarioNotFirst));
    }
    let fut = script::scenario(
        (config.scenario, config.findings),
        Arc::clone(&world.nexus),
        (world.links.sim_port(&world.sim), Arc::downgrade(&world.sim)),
        Arc::clone(&world.sched),
        Arc::clone(&world.progress),
    );
    spawn(&pool, scenario_id, &world.sched, fut);
    let watcher_id = world.sched.add_actor(ActorKind::Watcher);
    let fut = script::watcher(
        Arc::new(world.watcher(config, clock)),
        config.watcher_passes,
        Arc::clone(&world.watcher_counts),
        Arc::clone(&world.sched),
        pool.spawner(),
    );
    spawn(&pool, watcher_id, &world.sched, fut);
    let restart_id = world.sched.add_actor(ActorKind::Restart);
    let fut = script::restart(
        Arc::clone(&world.nexus),
        Arc::clone(&world.sched),
        Arc::clone(&world.progress),
        config.restart_passes,
    );
    spawn(&pool, restart_id, &world.sched, fut);
    world.sched.set_fault_budget(config.faults);
    world.sched.spare_restart(!config.findings);
    if config.user_ops > 0 {
        let id = world.sched.add_actor(ActorKind::User);
        let fut = script::user(
            config.scenario,
            (
                Arc::clone(&world.nexus),
                world.links.sim_port(&world.sim),
                Arc::downgrade(&world.sim),
            ),
            Arc::clone(&world.sched),
            Arc::clone(&world.progress),
            (config.user_ops, config.findings),
        );
        spawn(&pool, id, &world.sched, fut);
    }
    if config.faults > 0 || config.sled_restarts > 0 {
        let id = world.sched.add_actor(ActorKind::Fault);
        let fut = script::faults(
            (config.scenario, config.findings, config.sled_restarts),
            Arc::clone(&world.sim),
            Arc::clone(&world.sched),
            Arc::clone(&world.progress),
        );
        spawn(&pool, id, &world.sched, fut);
    }

    let _runtime = world.links.enter();
    // A reported run's log of gated calls; a search's runs make none.
    let sched_log =
        snapshots.is_some().then(|| config.log.new(slog::o!("component" => "scheduler")));
    let mut logged = Vec::new();
    let mut observer = Observer::default();
    let mut enabled = Vec::with_capacity(16);
    // Steps the chooser has been handed; those the scheduler released from its
    // script (`Sched::arm`) are handed over once the run stops.
    let mut handed = 0;
    let scripted = world.links.in_process() && snapshots.is_none();
    let end = loop {
        if !world.links.run_until_parked(&mut pool, &world.sched) {
            break RunEnd::Deadlock(world.sched.unfinished());
        }
        if world.spawn_updates(&pool) > 0 {
            continue;
        }
        world.sched.disarm();
        for k in handed..world.sched.steps_len() {
            // Released from the script: skipped and replayed, as
            // `replay_ahead` promised, so handed over after the fact.
            if let Watch::Take(o) = chooser.watch(k) {
                observer = *o;
            }
            let replayed = chooser.replay(k);
            debug_assert!(replayed.is_some(), "a scripted step the chooser does not replay");
        }
        // After every step, replayed ones too (but those `replay_ahead` gives,
        // which the chooser's `watch` skips): the invariants' memory depends on
        // the order its events come in (a write before or after a vanish), and
        // feeding a replayed prefix's events in one batch gives another order.
        // A chooser that carries the observer an earlier run of its prefix had
        // hands it over instead (`Chooser::watch`).
        // Nothing below releases a call before the chooser's turn.
        let step = world.sched.steps_len();
        match chooser.watch(step) {
            Watch::Check => observer.check(&world),
            Watch::Skip => {}
            Watch::Take(o) => observer = *o,
        }
        if let Some(snapshots) = snapshots.as_deref_mut() {
            // Taken once per step, after all its effects: the state after step
            // `snapshots.len()` (the first is the state before any).
            if snapshots.len() <= step {
                snapshots.push(world.snapshot());
            }
            if let Some(log) = &sched_log {
                log_answered(log, &world, &mut logged);
            }
        }
        handed = step + 1;
        if step < config.max_steps {
            if let Some((ticket, fault)) = chooser.replay(step) {
                if !world.sched.release(ticket, fault) {
                    // Refused (and recorded): the same steps park the same
                    // tickets, so the run is not the one the chooser replays.
                    return Err(RunError::Schedule(ScheduleError::Mismatch {
                        step: step + 1,
                        index: step + 1,
                        wanted: format!("ticket {ticket}"),
                        enabled: "no such call parked".into(),
                    }));
                }
                if scripted {
                    let ahead = chooser.replay_ahead(step + 1);
                    let room = config.max_steps.saturating_sub(step + 1).min(ahead.len());
                    world.sched.arm(ahead[..room].iter().map(|&(t, f)| (u64::from(t), f)));
                }
                continue;
            }
        }
        world.sched.enabled_into(&mut enabled);
        if enabled.is_empty() {
            break if world.sched.all_done() {
                RunEnd::Finished
            } else {
                RunEnd::Deadlock(world.sched.unfinished())
            };
        }
        if step >= config.max_steps {
            break RunEnd::StepBound(config.max_steps);
        }
        let ctx = ChoiceCtx { step, enabled: &enabled, world: &world, observer: &observer };
        let look = |w: &World| (w.situation(&observer), w.clock.peek());
        let before = config.check_chooser.then(|| look(&world));
        let picked = chooser.choose(&ctx)?;
        if before.is_some_and(|b| b != look(&world)) {
            world.sched.record_error(HarnessError::ChooserChangedWorld { step: step + 1 });
        }
        let Some(pick) = picked else {
            break RunEnd::Stopped;
        };
        let Some(choice) = enabled.get(pick) else {
            return Err(RunError::Schedule(ScheduleError::Mismatch {
                step: step + 1,
                index: pick,
                wanted: format!("choice {pick}"),
                enabled: format!("{} choices", enabled.len()),
            }));
        };
        // A refusal is recorded as a harness error, which fails the run.
        world.sched.release(choice.ticket, choice.fault);
    };
    chooser.finish(world.sched.steps_len())?;
    let ticks = world.clock.ticks();
    if ticks >= CLOCK_HORIZON_MS {
        let horizon = CLOCK_HORIZON_MS;
        world.sched.record_error(HarnessError::ClockPastHorizon { ticks, horizon });
    }
    observer.finish(&world, &end, config.scenario);
    Ok((world, end, observer))
}
