//! Background tasks on periods, as Nexus's task driver runs them: the instance
//! watcher and instance reincarnation, each activated once at start and then once
//! per period, one activation at a time.
//!
//! omicron's production configuration (`smf/nexus/*/config-partial.toml`) sets
//! `instance_watcher.period_secs = 30` and `instance_reincarnation.period_secs =
//! 60`; those are the defaults here. A demo shortens them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sled_agent_api::SledAgentApi;
use slog::{info, o, warn, Logger};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use watcher::{InstanceWatcher, WatcherDatastore};

use crate::NexusStub;

/// omicron's `instance_watcher.period_secs`.
pub const WATCHER_PERIOD: Duration = Duration::from_secs(30);
/// omicron's `instance_reincarnation.period_secs`.
pub const REINCARNATION_PERIOD: Duration = Duration::from_secs(60);

/// How often each task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Periods {
    pub watcher: Duration,
    pub reincarnation: Duration,
}

impl Default for Periods {
    fn default() -> Self {
        Periods { watcher: WATCHER_PERIOD, reincarnation: REINCARNATION_PERIOD }
    }
}

/// The running tasks; dropping this stops them (an activation in flight is
/// abandoned, as when Nexus exits).
#[derive(Debug)]
pub struct BackgroundTasks {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts the watcher and reincarnation on the current tokio runtime.
pub fn start<S, D, W>(
    log: &Logger,
    nexus: Arc<NexusStub<S>>,
    watcher: InstanceWatcher<D, W>,
    periods: Periods,
) -> BackgroundTasks
where
    S: SledAgentApi + 'static,
    D: WatcherDatastore + 'static,
    W: SledAgentApi + 'static,
{
    let watcher = Arc::new(watcher);
    let wlog = log.new(o!("background_task" => "instance_watcher"));
    let watching = every(periods.watcher, move || {
        let (watcher, log) = (Arc::clone(&watcher), wlog.clone());
        async move {
            // The watcher logs each pass itself.
            if let Err(error) = watcher.activate().await {
                warn!(log, "watcher pass failed"; "error" => %error);
            }
        }
    });
    let rlog = log.new(o!("background_task" => "instance_reincarnation"));
    let restarting = every(periods.reincarnation, move || {
        let (nexus, log) = (Arc::clone(&nexus), rlog.clone());
        async move {
            let c = nexus.reincarnation_pass().await;
            if c.found > 0 {
                info!(log, "reincarnation pass"; "found" => c.found, "started" => c.started,
                    "errors" => c.errors);
            }
        }
    });
    BackgroundTasks { tasks: vec![watching, restarting] }
}

/// Runs `activation` now and then once per `period`, never two at once: a slow
/// activation delays the next rather than piling them up.
fn every<F, Fut>(period: Duration, mut activation: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            activation().await;
        }
    })
}
