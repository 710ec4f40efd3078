//! Where Nexus's sagas run: the instance update step as a tokio task, or held
//! until the owner runs it; a user's start saga's first node at once, or when the
//! owner lets it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sled_agent_api::{InstanceUuid, PropolisUuid, SledUuid};
use slog::{o, warn, Logger};

use crate::{NexusError, UpdateOutcome};

/// The instance update step as a task: Nexus starts it and does not wait for it.
pub type UpdateTask = Pin<Box<dyn Future<Output = Result<UpdateOutcome, NexusError>> + Send>>;

/// What a start saga's first node made: the VMM it linked, and its sled.
pub type Started = (PropolisUuid, SledUuid);

/// A user's start saga from its reservation to its link (`sis_alloc_server`,
/// `sis_create_vmm_record`, `sis_move_to_starting`).
pub type StartNode<'a> = Pin<Box<dyn Future<Output = Result<Started, NexusError>> + Send + 'a>>;

/// Runs Nexus's sagas, as omicron's saga executor does: instance update steps in
/// the background, and the nodes of a user's start saga.
pub trait TaskSpawner: Send + Sync + std::fmt::Debug {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask);

    /// Runs the start saga's first nodes (reserve, insert the VMM, link it) for a
    /// user's start of `instance_id`, once the request was found allowed. omicron's executor
    /// runs a saga's nodes as steps of their own, so anything may happen between
    /// the request's check and this node (auto-restart may start the instance);
    /// here it runs at once, and a harness may hold it.
    fn start_node<'a>(&'a self, instance_id: InstanceUuid, node: StartNode<'a>) -> StartNode<'a> {
        let _ = instance_id;
        node
    }
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
