//! `cargo xtask stress`: the scenario many times under real timing (a multi-thread
//! runtime, the sim in Auto mode with small random delays, the watcher and
//! auto-restart on short periods, no gates), counting how often each ordering
//! breaks which invariant. Where `explore` says what can happen, this says how
//! often it does when nobody arranges it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_stub::{
    DiskView, ExternalState, InstanceView, NexusConfig, NexusError, NexusStub, RestartPolicy,
    TokioSpawner,
};
use serde::Serialize;
use sim_sled_agent::{RemovalOrdering, SimConfig, SimMode, SimSledAgent};
use sled_agent_api::{
    BoxError, DiskUuid, InstanceEnsureBody, InstanceUuid, NexusApiError, NexusInternalApi,
    PropolisUuid, SledAgentApi, SledAgentError, SledVmmState, SystemClock, VmmPutStateBody,
    VmmPutStateResponse, VmmUnregisterResponse,
};
use sledsim_http::{LateNexus, NexusClient, SledAgentClient};
use slog::Logger;
use watcher::{InstanceWatcher, WatcherDatastore};

use sledsim_explorer::harness::invariants::{Ending, Event, Invariants, Violation};
use sledsim_explorer::harness::script::{self, Driver, ScenarioKind, ScenarioProgress};
use sledsim_explorer::harness::{Names, Transport, SLED};

type Nexus = NexusStub<Arc<dyn SledAgentApi>>;
type Sim = SimSledAgent<Arc<dyn NexusInternalApi>>;

#[derive(Clone, Debug)]
pub struct StressConfig {
    pub scenario: ScenarioKind,
    pub orderings: Vec<RemovalOrdering>,
    pub restart_policy: RestartPolicy,
    pub transport: Transport,
    pub runs: usize,
    pub seed: u64,
    /// Stop starting runs after this long (per ordering).
    pub max_time: Duration,
    /// How long one run may take before it is cut short (and judged inconclusive).
    pub run_limit: Duration,
    pub log: Logger,
}

#[derive(Debug, Serialize)]
pub struct OrderingReport {
    pub ordering: &'static str,
    pub runs: usize,
    /// Runs that broke an invariant.
    pub failed: usize,
    /// Runs the time limit cut short without a violation: their end is unjudged.
    pub inconclusive: usize,
    /// Runs that broke each invariant.
    pub invariants: BTreeMap<u8, usize>,
    /// The first few failures, as "run N: invariant K: message".
    pub examples: Vec<String>,
    pub elapsed_ms: f64,
    pub runs_per_s: f64,
    /// Runs not started because `max_time` ran out: the verdict is then inconclusive.
    pub skipped: usize,
}

/// What the observers saw during one run, as the invariant engine's events.
#[derive(Default)]
struct Events {
    nexus: OnceLock<Weak<Nexus>>,
    seen: Mutex<Vec<Event>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Events {
    fn push(&self, e: Event) {
        lock(&self.seen).push(e);
    }
}

/// A sled agent as Nexus or the watcher sees it, recording each "gone" answer to
/// any call, as the explorer's gates do. Nexus's state is read when the answer
/// arrives, before the caller acts on it.
struct SeeGone {
    inner: Arc<dyn SledAgentApi>,
    events: Arc<Events>,
}

impl SeeGone {
    fn seen<T>(&self, id: PropolisUuid, r: Result<T, SledAgentError>) -> Result<T, SledAgentError> {
        if matches!(r, Err(ref e) if e.vmm_gone()) {
            let held = self.events.nexus.get().and_then(Weak::upgrade).and_then(|n| n.vmm(id));
            self.events.push(Event::Gone { vmm: id, nexus_had: held.map(|v| (v.state, v.gen)) });
        }
        r
    }
}

#[async_trait]
impl SledAgentApi for SeeGone {
    async fn vmm_register(
        &self,
        id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        self.seen(id, self.inner.vmm_register(id, body).await)
    }
    async fn vmm_unregister(
        &self,
        id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        self.seen(id, self.inner.vmm_unregister(id).await)
    }
    async fn vmm_put_state(
        &self,
        id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        self.seen(id, self.inner.vmm_put_state(id, body).await)
    }
    async fn vmm_get_state(&self, id: PropolisUuid) -> Result<SledVmmState, SledAgentError> {
        self.seen(id, self.inner.vmm_get_state(id).await)
    }
}

/// The sled agent's way to Nexus, recording each report it sends.
struct SeeReports {
    inner: Arc<dyn NexusInternalApi>,
    events: Arc<Events>,
}

#[async_trait]
impl NexusInternalApi for SeeReports {
    async fn cpapi_instances_put(
        &self,
        id: PropolisUuid,
        state: SledVmmState,
    ) -> Result<(), NexusApiError> {
        let s = state.vmm_state;
        self.events.push(Event::Sent { vmm: id, state: s.state, gen: s.gen });
        self.inner.cpapi_instances_put(id, state).await
    }
}

/// Real time: the sim finishes transitions by itself, and waiting is polling.
struct Polling {
    nexus: Arc<Nexus>,
}

/// The real test polls every second for 320 s; scaled down, the same shape.
const POLL: Duration = Duration::from_millis(1);
const WAIT_LIMIT: Duration = Duration::from_secs(1);

impl Driver for Polling {
    async fn instance_create(&self, name: &'static str) -> Result<InstanceView, NexusError> {
        self.nexus.instance_create(name, true).await
    }

    async fn instance_stop(&self, id: InstanceUuid) -> Result<InstanceView, NexusError> {
        self.nexus.instance_stop(id).await
    }

    async fn disk_create(&self, name: &'static str) -> Result<DiskView, NexusError> {
        self.nexus.disk_create(name)
    }

    async fn disk_attach(&self, disk: DiskUuid, id: InstanceUuid) -> Result<DiskView, NexusError> {
        self.nexus.disk_attach(disk, id)
    }

    async fn disk_detach(&self, disk: DiskUuid, id: InstanceUuid) -> Result<DiskView, NexusError> {
        self.nexus.disk_detach(disk, id)
    }

    async fn simulate(&self, _id: InstanceUuid) -> Result<(), BoxError> {
        Ok(())
    }

    /// Like `instance_wait_for_state(Stopped)`: polls through transient states (the
    /// stale Running/4 report passes by here), and gives up early only on Failed,
    /// which a user-stopped instance does not leave by itself.
    async fn settle(&self, id: InstanceUuid) -> Result<ExternalState, NexusError> {
        let start = Instant::now();
        loop {
            let state = self.nexus.instance(id)?.state;
            let at_rest = matches!(state, ExternalState::Stopped | ExternalState::Failed);
            if at_rest || start.elapsed() > WAIT_LIMIT {
                return Ok(state);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Aborts the background tasks of a run when dropped, so a run cut short by the
/// time limit leaves nothing polling into the next one.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How long one run may take by default before it is cut short.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);

/// How long the background tasks and update steps may take to settle once the
/// scenario is over, before the run counts as cut short.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// What one run came to: the invariants it broke, and whether the time limit cut
/// it short (its end then goes unjudged, as a step bound's does in explore).
struct RunVerdict {
    violations: Vec<Violation>,
    inconclusive: Option<String>,
}

/// One run.
async fn one_run(
    cfg: &StressConfig,
    ordering: RemovalOrdering,
    seed: u64,
    limit: Duration,
) -> Result<RunVerdict, String> {
    let log = &cfg.log;
    let events = Arc::new(Events::default());
    let late = Arc::new(LateNexus::default());
    let to_nexus: Arc<dyn NexusInternalApi> =
        Arc::new(SeeReports { inner: late.clone(), events: Arc::clone(&events) });
    // A destroyed VMM takes a millisecond to tear down before it is reported, as a
    // real sled agent's zone does: under the legacy ordering that is the window.
    let mode = SimMode::Auto {
        delay: Duration::ZERO,
        jitter: Duration::from_millis(2),
        seed,
        teardown: Duration::from_millis(1),
    };
    let sim: Arc<Sim> =
        SimSledAgent::new(log, SLED, SimConfig { ordering, mode }, to_nexus, Arc::new(SystemClock))
            .map_err(|e| e.to_string())?;
    let loopback = ([127, 0, 0, 1], 0).into();
    let (sim_server, sled_for_nexus, sled_for_watcher): (
        _,
        Arc<dyn SledAgentApi>,
        Arc<dyn SledAgentApi>,
    ) = match cfg.transport {
        Transport::InProc => (None, sim.clone(), sim.clone()),
        Transport::Http => {
            let server = sim_sled_agent::http::serve(Arc::clone(&sim), loopback, log)
                .map_err(|e| e.to_string())?;
            let url = format!("http://{}", server.local_addr());
            (
                Some(server),
                Arc::new(SledAgentClient::new(&url)),
                Arc::new(SledAgentClient::new(&url)),
            )
        }
    };
    let sled_for_nexus: Arc<dyn SledAgentApi> =
        Arc::new(SeeGone { inner: sled_for_nexus, events: Arc::clone(&events) });
    let spawner = Arc::new(TokioSpawner::new(log).map_err(|e| e.to_string())?);
    let config = NexusConfig { restart_policy: cfg.restart_policy, ..NexusConfig::default() };
    let nexus: Arc<Nexus> = NexusStub::new(
        log,
        config,
        BTreeMap::from([(SLED, sled_for_nexus)]),
        Arc::new(SystemClock),
        Arc::clone(&spawner) as _,
    );
    let _ = events.nexus.set(Arc::downgrade(&nexus));
    let (nexus_server, datastore): (_, Arc<dyn WatcherDatastore>) = match cfg.transport {
        Transport::InProc => {
            late.bind_weak(&(Arc::clone(&nexus) as Arc<dyn NexusInternalApi>));
            (None, nexus.clone())
        }
        Transport::Http => {
            let server = nexus_stub::http::serve(Arc::clone(&nexus), loopback, log)
                .map_err(|e| e.to_string())?;
            let url = format!("http://{}", server.local_addr());
            late.bind(Arc::new(NexusClient::new(&url)));
            (Some(server), Arc::new(NexusClient::new(&url)))
        }
    };

    // Background tasks on short periods, until the scenario is over.
    let done = Arc::new(AtomicBool::new(false));
    let sleds =
        BTreeMap::from([(SLED, SeeGone { inner: sled_for_watcher, events: Arc::clone(&events) })]);
    let watcher = InstanceWatcher::new(log, datastore, sleds, Arc::new(SystemClock));
    let watching = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                // A failed listing is logged by the watcher; the next pass tries again.
                let _ = watcher.activate().await;
                tokio::task::yield_now().await;
            }
        })
    };
    let restarting = {
        let (done, nexus) = (Arc::clone(&done), Arc::clone(&nexus));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                nexus.reincarnation_pass().await;
                tokio::time::sleep(POLL).await;
            }
        })
    };
    let background = AbortOnDrop(vec![watching, restarting]);

    let progress = Mutex::new(ScenarioProgress::default());
    let driver = Polling { nexus: Arc::clone(&nexus) };
    let in_time =
        tokio::time::timeout(limit, script::run(cfg.scenario, &driver, &progress)).await.is_ok();
    done.store(true, Ordering::Relaxed);
    // The loops end at their next look at `done`, and update steps started at the
    // very end must finish before the run is judged; all within a bound.
    let settled = in_time
        && tokio::time::timeout(SETTLE_LIMIT, async {
            while !background.0.iter().all(|t| t.is_finished()) || spawner.in_flight() > 0 {
                tokio::time::sleep(POLL).await;
            }
        })
        .await
        .is_ok();
    drop(background);
    let ending = match (in_time, settled) {
        (true, true) => Ending::Finished,
        (true, false) => Ending::Bound(format!(
            "the settle limit ({} s) for background tasks",
            SETTLE_LIMIT.as_secs_f64()
        )),
        (false, _) => Ending::Bound(format!("the time limit ({} s)", limit.as_secs_f64())),
    };
    let verdict = judge(cfg.scenario, &nexus, &events, &lock(&progress), ending);
    // Closing can only fail if the server is already gone; nothing to report then.
    if let Some(s) = sim_server {
        let _ = s.close().await;
    }
    if let Some(s) = nexus_server {
        let _ = s.close().await;
    }
    Ok(verdict)
}

/// Feeds what the observers saw and Nexus's logs to the invariant engine.
fn judge(
    kind: ScenarioKind,
    nexus: &Nexus,
    events: &Events,
    progress: &ScenarioProgress,
    ending: Ending,
) -> RunVerdict {
    let mut inv = Invariants::default();
    let names = || {
        let views = nexus.instances();
        Names::new(views.into_iter().map(|v| (v.id, v.name)).collect(), &nexus.vmms())
    };
    for e in lock(&events.seen).iter() {
        inv.on(0, e, &names);
    }
    for w in nexus.vmm_writes() {
        inv.on(0, &Event::Write(w), &names);
    }
    for e in nexus.instance_log() {
        inv.on(0, &Event::Instance(e), &names);
    }
    let end = progress.end(kind, nexus, ending);
    inv.end(0, &end, &names);
    RunVerdict {
        violations: inv.violations().to_vec(),
        inconclusive: inv.inconclusive().map(str::to_string),
    }
}

pub fn stress(cfg: &StressConfig) -> Result<Vec<OrderingReport>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("building the runtime: {e}"))?;
    let mut reports = Vec::new();
    for &ordering in &cfg.orderings {
        let start = Instant::now();
        let mut r = OrderingReport {
            ordering: ordering.label(),
            runs: 0,
            failed: 0,
            inconclusive: 0,
            invariants: BTreeMap::new(),
            examples: Vec::new(),
            elapsed_ms: 0.0,
            runs_per_s: 0.0,
            skipped: 0,
        };
        for i in 0..cfg.runs {
            if start.elapsed() >= cfg.max_time {
                r.skipped = cfg.runs - i;
                break;
            }
            let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            let v = runtime.block_on(one_run(cfg, ordering, seed, cfg.run_limit))?;
            r.runs += 1;
            if !v.violations.is_empty() {
                r.failed += 1;
                for x in &v.violations {
                    *r.invariants.entry(x.invariant).or_default() += 1;
                    if r.examples.len() < 3 {
                        r.examples
                            .push(format!("run {i}: invariant {}: {}", x.invariant, x.message));
                    }
                }
            } else if let Some(why) = v.inconclusive {
                r.inconclusive += 1;
                if r.examples.len() < 3 {
                    r.examples.push(format!("run {i}: inconclusive: {why} cut it short"));
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        r.elapsed_ms = secs * 1e3;
        r.runs_per_s = if secs > 0.0 { r.runs as f64 / secs } else { 0.0 };
        reports.push(r);
    }
    Ok(reports)
}
