//! Where the instance update step runs: a tokio task, or held until the owner runs it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sled_agent_api::InstanceUuid;
use slog::{o, warn, Logger};

use crate::{NexusError, UpdateOutcome};

/// The instance update step as a task: Nexus starts it and does not wait for it.
pub type UpdateTask = Pin<Box<dyn Future<Output = Result<UpdateOutcome, NexusError>> + Send>>;

/// Runs instance update steps in the background, as omicron's saga executor does.
pub trait TaskSpawner: Send + Sync + std::fmt::Debug {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask);
}

/// Runs each update step as a tokio task.
#[derive(Debug)]
pub struct TokioSpawner {
    log: Logger,
    runtime: tokio::runtime::Handle,
    /// Update steps started and not yet finished.
    in_flight: Arc<AtomicUsize>,
}

impl TokioSpawner {
    /// Fails outside a tokio runtime.
    pub fn new(log: &Logger) -> Result<TokioSpawner, NexusError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NexusError::NoRuntime)?;
        Ok(TokioSpawner {
            log: log.new(o!("component" => "TokioSpawner")),
            runtime,
            in_flight: Arc::default(),
        })
    }

    /// How many update steps are still running, so a caller can wait for them.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

impl TaskSpawner for TokioSpawner {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask) {
        let log = self.log.clone();
        let in_flight = Arc::clone(&self.in_flight);
        in_flight.fetch_add(1, Ordering::SeqCst);
        self.runtime.spawn(async move {
            if let Err(e) = task.await {
                warn!(log, "instance update failed"; "instance_id" => %instance_id, "error" => %e);
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Keeps update steps until the owner runs them; for tests and for harnesses that
/// decide when each one runs.
#[derive(Debug, Default)]
pub struct DeferredSpawner {
    queued: Mutex<Vec<(InstanceUuid, DebugTask)>>,
}

struct DebugTask(UpdateTask);

impl std::fmt::Debug for DebugTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpdateTask")
    }
}

impl DeferredSpawner {
    /// The update steps started since the last call, in the order they started.
    pub fn take(&self) -> Vec<(InstanceUuid, UpdateTask)> {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            return Vec::new();
        }
        q.drain(..).map(|(id, t)| (id, t.0)).collect()
    }
}

impl TaskSpawner for DeferredSpawner {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask) {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).push((instance_id, DebugTask(task)));
    }
}
