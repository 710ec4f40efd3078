//! `cargo xtask stress`: the scenario many times under real timing (a multi-thread
//! runtime, the sim in Auto mode with small random delays, the watcher and
//! auto-restart on short periods, no gates), counting how often each ordering
//! breaks which invariant. Where `explore` says what can happen, this says how
//! often it does when nobody arranges it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nexus_stub::{
    DbVmmState, DiskState, ExternalState, NexusConfig, NexusError, NexusStub, RestartPolicy,
    TokioSpawner,
};
use serde::Serialize;
use sim_sled_agent::{RemovalOrdering, SimConfig, SimMode, SimSledAgent};
use sled_agent_api::{
    BoxError, Generation, InstanceEnsureBody, InstanceUuid, NexusApiError, NexusInternalApi,
    PropolisUuid, SledAgentApi, SledAgentError, SledVmmState, SystemClock, VmmPutStateBody,
    VmmPutStateResponse, VmmState, VmmUnregisterResponse,
};
use sledsim_http::{LateNexus, NexusClient, SledAgentClient};
use slog::Logger;
use watcher::{InstanceWatcher, WatcherDatastore};

use crate::harness::script::{self, Driver, Progress, ScenarioKind};
use crate::harness::transport::WeakNexus;
use crate::harness::{Transport, SLED};

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
    pub log: Logger,
}

#[derive(Debug, Serialize)]
pub struct OrderingReport {
    pub ordering: &'static str,
    pub runs: usize,
    pub failed: usize,
    /// Runs that broke each invariant.
    pub invariants: BTreeMap<u8, usize>,
    /// The first few failures, as "run N: invariant K: message".
    pub examples: Vec<String>,
    pub elapsed_ms: f64,
    pub runs_per_s: f64,
    /// Runs not started because `max_time` ran out.
    pub skipped: usize,
}

/// What Nexus held for a VMM: its state and generation.
type Held = (DbVmmState, Generation);

/// What the observers saw during one run.
#[derive(Default)]
struct Events {
    nexus: OnceLock<Weak<Nexus>>,
    /// Each NoSuchVmm the watcher got, with what Nexus held when it arrived.
    gone: Mutex<Vec<(PropolisUuid, Option<Held>)>>,
    /// VMMs whose Destroyed the sled agent sent.
    destroyed: Mutex<BTreeSet<PropolisUuid>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The watcher's view of a sled agent, recording each "gone" answer. Nexus's state
/// is read when the answer arrives; a terminal state, once written, stays, so a
/// non-terminal one then was non-terminal when the sled agent answered too.
struct SeeGone {
    inner: Arc<dyn SledAgentApi>,
    events: Arc<Events>,
}

#[async_trait]
impl SledAgentApi for SeeGone {
    async fn vmm_register(
        &self,
        id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        self.inner.vmm_register(id, body).await
    }
    async fn vmm_unregister(
        &self,
        id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        self.inner.vmm_unregister(id).await
    }
    async fn vmm_put_state(
        &self,
        id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        self.inner.vmm_put_state(id, body).await
    }
    async fn vmm_get_state(&self, id: PropolisUuid) -> Result<SledVmmState, SledAgentError> {
        let r = self.inner.vmm_get_state(id).await;
        if matches!(r, Err(ref e) if e.vmm_gone()) {
            let held = self.events.nexus.get().and_then(Weak::upgrade).and_then(|n| n.vmm(id));
            lock(&self.events.gone).push((id, held.map(|v| (v.state, v.gen))));
        }
        r
    }
}

/// The sled agent's way to Nexus, recording each Destroyed it sends.
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
        if state.vmm_state.state == VmmState::Destroyed {
            lock(&self.events.destroyed).insert(id);
        }
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
    async fn simulate(&self, _vmm: PropolisUuid) -> Result<(), BoxError> {
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

/// One run; returns the invariants it broke with a message each.
async fn one_run(
    cfg: &StressConfig,
    ordering: RemovalOrdering,
    seed: u64,
) -> Result<Vec<(u8, String)>, String> {
    let log = &cfg.log;
    let events = Arc::new(Events::default());
    let late = Arc::new(LateNexus::default());
    let to_nexus: Arc<dyn NexusInternalApi> =
        Arc::new(SeeReports { inner: late.clone(), events: Arc::clone(&events) });
    let mode = SimMode::Auto { delay: Duration::ZERO, jitter: Duration::from_millis(2), seed };
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
    let spawner = Arc::new(TokioSpawner::new(log).map_err(|e| e.to_string())?);
    let config = NexusConfig { restart_policy: cfg.restart_policy, ..NexusConfig::default() };
    let nexus: Arc<Nexus> = NexusStub::new(
        log,
        config,
        BTreeMap::from([(SLED, sled_for_nexus)]),
        Arc::new(SystemClock),
        spawner,
    );
    let _ = events.nexus.set(Arc::downgrade(&nexus));
    let (nexus_server, datastore): (_, Arc<dyn WatcherDatastore>) = match cfg.transport {
        Transport::InProc => {
            let weak = WeakNexus::new();
            weak.bind(&nexus);
            late.bind(Arc::new(weak));
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

    let progress = Mutex::new(Progress::default());
    script::run(cfg.scenario, &nexus, &Polling { nexus: Arc::clone(&nexus) }, &progress).await;
    done.store(true, Ordering::Relaxed);
    let _ = watching.await;
    let _ = restarting.await;
    // Let update steps started at the very end finish before judging.
    tokio::time::sleep(POLL).await;
    let verdict = judge(cfg.scenario, &nexus, &events, &lock(&progress));
    // Closing can only fail if the server is already gone; nothing to report then.
    if let Some(s) = sim_server {
        let _ = s.close().await;
    }
    if let Some(s) = nexus_server {
        let _ = s.close().await;
    }
    Ok(verdict)
}

/// The invariants of DESIGN.md, from what the observers saw and Nexus's records.
fn judge(
    kind: ScenarioKind,
    nexus: &Nexus,
    events: &Events,
    progress: &Progress,
) -> Vec<(u8, String)> {
    let mut broken = Vec::new();
    if let Some((vmm, held)) =
        lock(&events.gone).iter().find(|(_, h)| !h.is_some_and(|(s, _)| s.is_terminal()))
    {
        let held = held.map_or_else(|| "no record".to_string(), |(s, g)| format!("{s}/g{g}"));
        broken.push((
            1,
            format!(
                "the sled agent answered NoSuchVmm for VMM {vmm} while Nexus held it at {held}"
            ),
        ));
    }
    let writes = nexus.vmm_writes();
    let failed: BTreeSet<PropolisUuid> = writes
        .iter()
        .filter(|w| w.applied && w.state == VmmState::Failed)
        .map(|w| w.propolis_id)
        .collect();
    if let Some(vmm) = lock(&events.destroyed).intersection(&failed).next() {
        broken.push((2, format!("{vmm} was recorded Failed after its Destroyed was sent")));
    }
    if let Some(w) = writes.iter().find(|w| w.applied && w.gen <= w.prev_gen) {
        broken.push((
            3,
            format!("{} {}/g{} applied over g{}", w.propolis_id, w.state, w.gen, w.prev_gen),
        ));
    }
    for id in &progress.stopped {
        let Ok(v) = nexus.instance(*id) else { continue };
        let went_failed =
            nexus.vmms().iter().any(|r| r.instance_id == *id && failed.contains(&r.id));
        if v.state != ExternalState::Stopped || v.auto_restarts > 0 || went_failed {
            broken.push((
                4,
                format!(
                    "{}, stopped by the user, ended {} after {} restart(s)",
                    v.name, v.state, v.auto_restarts
                ),
            ));
            break;
        }
    }
    let mut failure = match &progress.outcome {
        Some(Ok(())) => None,
        Some(Err(e)) => Some(format!("scenario failed: {e}")),
        None => Some("scenario did not finish".to_string()),
    };
    if failure.is_none() && kind == ScenarioKind::DiskMove {
        let on_inst2 =
            match (progress.disk.and_then(|d| nexus.disk(d).ok()), progress.instances.get(1)) {
                (Some(d), Some((_, i2))) => d.state == DiskState::Attached(*i2),
                _ => false,
            };
        if !on_inst2 {
            failure = Some("the disk did not end on inst2".into());
        }
    }
    if let Some(f) = failure {
        broken.push((5, f));
    }
    broken
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
            let broken = runtime.block_on(async {
                tokio::time::timeout(WAIT_LIMIT * 10, one_run(cfg, ordering, seed))
                    .await
                    .unwrap_or_else(|_| Ok(vec![(5, "the run did not finish in time".into())]))
            })?;
            r.runs += 1;
            if !broken.is_empty() {
                r.failed += 1;
                for (k, msg) in &broken {
                    *r.invariants.entry(*k).or_default() += 1;
                    if r.examples.len() < 3 {
                        r.examples.push(format!("run {i}: invariant {k}: {msg}"));
                    }
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
