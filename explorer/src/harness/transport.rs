//! The two ways a run's components reach each other: directly, or over real
//! loopback sockets. Either way every cross-component call goes through a gate on
//! the caller's side, so a schedule means the same thing on both.

use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use sim_sled_agent::PokeMode;
use sled_agent_api::{BoxError, NexusInternalApi, PropolisUuid, SledAgentApi};
use sledsim_http::{LateNexus, NexusClient, SledAgentClient};
use slog::Logger;
use watcher::WatcherDatastore;

use super::sched::Sched;
use super::step::ActorId;
use super::{Nexus, Sim};

/// The scenario is always the first actor a run adds.
pub const SCENARIO_ACTOR: ActorId = 0;

/// How long an HTTP run may sit with a call in flight before it counts as hung.
const HANG: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("building the tokio runtime failed")]
    Runtime(#[source] std::io::Error),
    #[error("starting the sim sled agent's server failed")]
    Sim(#[source] sledsim_http::ServerError),
    #[error("starting the Nexus stub's server failed")]
    Nexus(#[source] sledsim_http::ServerError),
}

/// How the scenario reaches the sim's sim-only controls.
pub enum SimPort {
    Local(Arc<Sim>),
    Remote(SledAgentClient),
}

impl SimPort {
    /// Finish every queued transition of a VMM (the test's `instance_simulate`).
    pub async fn poke(&self, vmm: PropolisUuid) -> Result<(), BoxError> {
        match self {
            SimPort::Local(sim) => {
                sim.poke(vmm, PokeMode::Drain).await.map(|_| ()).map_err(Into::into)
            }
            SimPort::Remote(client) => {
                client.poke(vmm, false).await.map(|_| ()).map_err(Into::into)
            }
        }
    }
}

/// The servers of an HTTP run and the runtime they run on.
struct Wire {
    runtime: tokio::runtime::Runtime,
    sim_server: Option<dropshot::HttpServer<Arc<Sim>>>,
    nexus_server: Option<dropshot::HttpServer<Arc<Nexus>>>,
    sim_url: String,
    nexus_url: String,
}

impl Drop for Wire {
    fn drop(&mut self) {
        let (sim, nexus) = (self.sim_server.take(), self.nexus_server.take());
        self.runtime.block_on(async {
            // A server that fails to close has nothing left to lose at the end of a run.
            if let Some(s) = sim {
                let _ = s.close().await;
            }
            if let Some(s) = nexus {
                let _ = s.close().await;
            }
        });
    }
}

/// Links known before Nexus exists; `finish` completes them.
pub struct PendingLinks {
    wire: Option<(tokio::runtime::Runtime, dropshot::HttpServer<Arc<Sim>>, String)>,
}

pub fn in_process(sim: &Arc<Sim>) -> (Arc<dyn SledAgentApi>, PendingLinks) {
    (Arc::clone(sim) as Arc<dyn SledAgentApi>, PendingLinks { wire: None })
}

pub fn http(
    sim: &Arc<Sim>,
    log: &Logger,
) -> Result<(Arc<dyn SledAgentApi>, PendingLinks), TransportError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(TransportError::Runtime)?;
    let bind = ([127, 0, 0, 1], 0).into();
    let server = {
        let _g = runtime.enter();
        sim_sled_agent::http::serve(Arc::clone(sim), bind, log).map_err(TransportError::Sim)?
    };
    let url = format!("http://{}", server.local_addr());
    let client: Arc<dyn SledAgentApi> = Arc::new(SledAgentClient::new(&url));
    Ok((client, PendingLinks { wire: Some((runtime, server, url)) }))
}

impl PendingLinks {
    /// Points the sim at Nexus (starting Nexus's server, over HTTP).
    pub fn finish(
        self,
        nexus: &Arc<Nexus>,
        late: &LateNexus,
        log: &Logger,
    ) -> Result<Links, TransportError> {
        let Some((runtime, sim_server, sim_url)) = self.wire else {
            late.bind_weak(&(Arc::clone(nexus) as Arc<dyn NexusInternalApi>));
            return Ok(Links { wire: None });
        };
        let bind = ([127, 0, 0, 1], 0).into();
        let nexus_server = {
            let _g = runtime.enter();
            nexus_stub::http::serve(Arc::clone(nexus), bind, log).map_err(TransportError::Nexus)?
        };
        let nexus_url = format!("http://{}", nexus_server.local_addr());
        late.bind(Arc::new(NexusClient::new(&nexus_url)));
        Ok(Links {
            wire: Some(Wire {
                runtime,
                sim_server: Some(sim_server),
                nexus_server: Some(nexus_server),
                sim_url,
                nexus_url,
            }),
        })
    }
}

/// Everything a run needs to reach the sim and Nexus.
pub struct Links {
    wire: Option<Wire>,
}

impl Links {
    pub fn datastore(&self, nexus: &Arc<Nexus>) -> Arc<dyn WatcherDatastore> {
        match &self.wire {
            None => Arc::clone(nexus) as Arc<dyn WatcherDatastore>,
            Some(w) => Arc::new(NexusClient::new(&w.nexus_url)),
        }
    }

    pub fn sled(&self, sim: &Arc<Sim>) -> Arc<dyn SledAgentApi> {
        match &self.wire {
            None => Arc::clone(sim) as Arc<dyn SledAgentApi>,
            Some(w) => Arc::new(SledAgentClient::new(&w.sim_url)),
        }
    }

    pub fn sim_port(&self, sim: &Arc<Sim>) -> SimPort {
        match &self.wire {
            None => SimPort::Local(Arc::clone(sim)),
            Some(w) => SimPort::Remote(SledAgentClient::new(&w.sim_url)),
        }
    }

    /// Over HTTP, the actors' futures need the tokio runtime's context while polled.
    pub fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.wire.as_ref().map(|w| w.runtime.enter())
    }

    /// Whether the run's components call each other in this process (no wire).
    pub fn in_process(&self) -> bool {
        self.wire.is_none()
    }

    /// Runs the actors until each is parked at a gate or done. In process that is
    /// exactly when the pool stalls; over HTTP, released calls are in flight on
    /// sockets, so this waits for them. Returns false if the run hung.
    pub fn run_until_parked(&self, pool: &mut super::executor::Executor, sched: &Sched) -> bool {
        if self.in_process() {
            pool.run_until_stalled();
            return true;
        }
        pool.run_until(async {
            let idle = std::pin::pin!(sched.idle());
            let hang = std::pin::pin!(tokio::time::sleep(HANG));
            matches!(select(idle, hang).await, Either::Left(_))
        })
    }
}
