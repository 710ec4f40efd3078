//! Gates: wrappers that implement the same traits as what they wrap, and park each
//! call until the scheduler releases it.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use nexus_stub::{DeferredSpawner, NexusError, StartNode, Started, TaskSpawner, UpdateTask};
use sled_agent_api::{
    InstanceEnsureBody, InstanceUuid, NexusApiError, NexusInternalApi, PropolisUuid, SledAgentApi,
    SledAgentError, SledVmmState, VmmPutStateBody, VmmPutStateResponse, VmmUnregisterResponse,
};
use watcher::{DatastoreError, VmmWriteOutcome, WatchedVmm, WatcherDatastore};

use futures::future::Either;

use super::sched::{Injection, Sched};
use super::step::{ActorId, Answer, Arg, Call, CallKind, Component, ErrorKind, Fault};

/// `inner`, with every call parked at the scheduler first. Gates wrap an `Arc` and
/// call through it directly, one boxed future fewer per call than going through
/// the `Arc` blanket impls (the explorer makes millions of these calls).
#[derive(Debug)]
pub struct Gated<T> {
    inner: T,
    sched: Arc<Sched>,
    /// The caller's side, for the step log (the callee is fixed by the trait).
    from: Component,
    /// Whom a call is charged to when no actor is being polled on this thread.
    fallback: Fallback,
    /// The callee is across the wire: a refusal is asked of its server, which
    /// answers 503, rather than made up here.
    wire: bool,
}

/// Whom a gate charges a call made outside any actor (a server's thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Nobody: such a call is a harness error.
    None,
    /// The actor whose poke of the call's VMM is under way: over HTTP the sim
    /// reports from its server's threads, on behalf of whoever poked it.
    Poker,
}

impl<T> Gated<T> {
    pub fn new(inner: T, sched: &Arc<Sched>, from: Component) -> Self {
        Gated { inner, sched: Arc::clone(sched), from, fallback: Fallback::None, wire: false }
    }

    /// Marks the callee as a server across the wire.
    pub fn over_the_wire(mut self, wire: bool) -> Self {
        self.wire = wire;
        self
    }

    pub fn with_fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    fn fallback_for(&self, vmm: Option<PropolisUuid>) -> Option<ActorId> {
        match (self.fallback, vmm) {
            (Fallback::Poker, Some(vmm)) => self.sched.poking(vmm),
            _ => None,
        }
    }

    /// Parks at the scheduler as `kind` to `to`, then runs `run` and records what
    /// `describe` makes of its result.
    async fn pass<R, Fut: Future<Output = R>>(
        &self,
        kind: CallKind,
        to: Component,
        target: (Option<PropolisUuid>, Arg),
        run: impl FnOnce() -> Fut,
        describe: impl FnOnce(&R) -> Answer,
    ) -> R {
        let call = Call { kind, from: self.from, to, vmm: target.0, arg: target.1 };
        self.sched.gate(call, None, self.fallback_for(call.vmm), run, describe).await
    }

    /// `pass`, for a call the explorer may fail with one of `faults`; `fail` is
    /// what the caller then sees.
    async fn pass_faulty<R, Fut: Future<Output = R>>(
        &self,
        (kind, to): (CallKind, Component),
        target: (Option<PropolisUuid>, Arg),
        (faults, fail): (&'static [Fault], impl FnOnce(Fault) -> R),
        run: impl FnOnce() -> Fut,
        describe: impl FnOnce(&R) -> Answer,
    ) -> R {
        let call = Call { kind, from: self.from, to, vmm: target.0, arg: target.1 };
        let fallback = self.fallback_for(call.vmm);
        let run = |refuse: bool| match refuse {
            true => Either::Right(sledsim_http::refused_by_server(run())),
            false => Either::Left(run()),
        };
        let inject = Injection { fail, callee_refuses: self.wire };
        self.sched.gate_faulty(call, None, fallback, faults, run, Some(inject), describe).await
    }
}

/// The error an injected fault gives a caller of the sled agent.
fn sled_fault(operation: &'static str, fault: Fault) -> SledAgentError {
    match fault {
        Fault::Unavailable => SledAgentError::UnexpectedResponse {
            operation,
            status: 503,
            message: sledsim_http::REFUSAL_MESSAGE.into(),
        },
        Fault::Timeout => SledAgentError::Communication {
            operation,
            source: "injected: the answer was lost (timeout)".into(),
        },
    }
}

/// The error an injected fault gives a sled agent reporting to Nexus.
fn nexus_fault(operation: &'static str, fault: Fault) -> NexusApiError {
    match fault {
        Fault::Unavailable => NexusApiError::UnexpectedResponse {
            operation,
            status: 503,
            message: sledsim_http::REFUSAL_MESSAGE.into(),
        },
        Fault::Timeout => NexusApiError::Communication {
            operation,
            source: "injected: the answer was lost (timeout)".into(),
        },
    }
}

/// A call both faults make sense for: refused, or applied with its answer lost.
const EITHER: &[Fault] = &[Fault::Unavailable, Fault::Timeout];
/// A read: losing its answer is no different from refusing it.
const REFUSED: &[Fault] = &[Fault::Unavailable];

fn state_answer(sched: &Sched, r: &Result<SledVmmState, SledAgentError>) -> Answer {
    match r {
        Ok(s) => Answer::State(s.vmm_state.state, s.vmm_state.gen),
        Err(e) => sled_error_answer(sched, e),
    }
}

fn sled_error_answer(sched: &Sched, e: &SledAgentError) -> Answer {
    match e {
        SledAgentError::NoSuchVmm { propolis_id } => {
            Answer::Gone { nexus_had: sched.probe(*propolis_id) }
        }
        SledAgentError::Terminating { .. } => Answer::Error(ErrorKind::Terminating),
        SledAgentError::InvalidTransition { .. } => Answer::Error(ErrorKind::InvalidTransition),
        SledAgentError::InvalidRegistration { .. } => Answer::Error(ErrorKind::InvalidRegistration),
        SledAgentError::Communication { .. } => Answer::Error(ErrorKind::Communication),
        SledAgentError::UnexpectedResponse { .. } => Answer::Error(ErrorKind::UnexpectedResponse),
    }
}

fn optional_state_answer(
    sched: &Sched,
    r: Result<Option<SledVmmState>, &SledAgentError>,
) -> Answer {
    match r {
        Ok(Some(s)) => Answer::State(s.vmm_state.state, s.vmm_state.gen),
        Ok(None) => Answer::NoState,
        Err(e) => sled_error_answer(sched, e),
    }
}

#[async_trait]
impl<T: SledAgentApi + ?Sized> SledAgentApi for Gated<Arc<T>> {
    async fn vmm_register(
        &self,
        propolis_id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        let rt = body.vmm_runtime;
        let sched = &self.sched;
        self.pass(
            CallKind::VmmRegister,
            Component::SledAgent,
            (Some(propolis_id), Arg::State(rt.state, rt.gen)),
            || (*self.inner).vmm_register(propolis_id, body),
            |r| state_answer(sched, r),
        )
        .await
    }

    async fn vmm_unregister(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        let sched = &self.sched;
        self.pass(
            CallKind::VmmUnregister,
            Component::SledAgent,
            (Some(propolis_id), Arg::None),
            || (*self.inner).vmm_unregister(propolis_id),
            |r| optional_state_answer(sched, r.as_ref().map(|r| r.updated_runtime)),
        )
        .await
    }

    async fn vmm_put_state(
        &self,
        propolis_id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        let sched = &self.sched;
        self.pass_faulty(
            (CallKind::VmmPutState, Component::SledAgent),
            (Some(propolis_id), Arg::Requested(body.state)),
            (EITHER, |f| Err(sled_fault("vmm_put_state", f))),
            || (*self.inner).vmm_put_state(propolis_id, body),
            |r| optional_state_answer(sched, r.as_ref().map(|r| r.updated_runtime)),
        )
        .await
    }

    async fn vmm_get_state(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<SledVmmState, SledAgentError> {
        let sched = &self.sched;
        self.pass_faulty(
            (CallKind::VmmGetState, Component::SledAgent),
            (Some(propolis_id), Arg::None),
            (REFUSED, |f| Err(sled_fault("vmm_get_state", f))),
            || (*self.inner).vmm_get_state(propolis_id),
            |r| state_answer(sched, r),
        )
        .await
    }
}

#[async_trait]
impl<T: NexusInternalApi + ?Sized> NexusInternalApi for Gated<Arc<T>> {
    async fn cpapi_instances_put(
        &self,
        propolis_id: PropolisUuid,
        new_runtime_state: SledVmmState,
    ) -> Result<(), NexusApiError> {
        let s = new_runtime_state.vmm_state;
        self.pass_faulty(
            (CallKind::CpapiInstancesPut, Component::Nexus),
            (Some(propolis_id), Arg::State(s.state, s.gen)),
            (EITHER, |f| Err(nexus_fault("cpapi_instances_put", f))),
            || (*self.inner).cpapi_instances_put(propolis_id, new_runtime_state),
            |r| match r {
                Ok(()) => Answer::Ack,
                Err(_) => Answer::Error(ErrorKind::Nexus),
            },
        )
        .await
    }
}

/// Nexus's saga executor in a run: update steps are kept for the harness to run
/// as actors of their own, and a user's start saga parks before its reservation,
/// so anything may run between the start's check and its saga, as in omicron.
#[derive(Debug)]
pub struct GatedSpawner {
    pub updates: Arc<DeferredSpawner>,
    pub sched: Arc<Sched>,
}

impl TaskSpawner for GatedSpawner {
    fn spawn_update(&self, instance_id: InstanceUuid, task: UpdateTask) {
        // The driver starts it before the next step (`World::spawn_updates`).
        self.sched.disarm();
        self.updates.spawn_update(instance_id, task);
    }

    fn start_node<'a>(&'a self, instance_id: InstanceUuid, node: StartNode<'a>) -> StartNode<'a> {
        let call = Call {
            kind: CallKind::StartSaga,
            from: Component::Nexus,
            to: Component::Datastore,
            vmm: None,
            arg: Arg::Instance(instance_id),
        };
        let describe = |r: &Result<Started, NexusError>| match r {
            Ok(_) => Answer::Ack,
            Err(e) => Answer::Error(super::script::nexus_error_kind(e)),
        };
        Box::pin(self.sched.gate(call, None, None, || node, describe))
    }
}

/// A watcher's check's history once it writes (`Sched::forget_history`).
const CHECK_WRITING: u64 = 0xc4ec_5717_e000_0001;

#[async_trait]
impl<T: WatcherDatastore + ?Sized> WatcherDatastore for Gated<Arc<T>> {
    async fn vmm_list_for_watcher(&self) -> Result<Vec<WatchedVmm>, DatastoreError> {
        self.pass(
            CallKind::VmmList,
            Component::Datastore,
            (None, Arg::None),
            || (*self.inner).vmm_list_for_watcher(),
            |r| match r {
                Ok(rows) => Answer::Listed(
                    rows.iter().map(|w| (w.propolis_id, w.runtime.state, w.runtime.gen)).collect(),
                ),
                Err(_) => Answer::Error(ErrorKind::Datastore),
            },
        )
        .await
    }

    async fn vmm_update_runtime(
        &self,
        propolis_id: PropolisUuid,
        new_state: SledVmmState,
    ) -> Result<VmmWriteOutcome, DatastoreError> {
        let s = new_state.vmm_state;
        // A watcher's check writes once, then runs the update step if the
        // write applied a terminal state, and ends: what it does from here
        // depends on this write and its answer alone, not on the row it was
        // given or the answer it read (those only reach its logs and counts).
        // Forgotten, two checks that write the same are one situation.
        self.sched.forget_history(CHECK_WRITING);
        self.pass(
            CallKind::VmmWrite,
            Component::Datastore,
            (Some(propolis_id), Arg::State(s.state, s.gen)),
            || (*self.inner).vmm_update_runtime(propolis_id, new_state),
            |r| match r {
                Ok(o) => Answer::Write { applied: o.updated },
                Err(_) => Answer::Error(ErrorKind::Datastore),
            },
        )
        .await
    }

    async fn run_instance_update(&self, instance_id: InstanceUuid) -> Result<(), DatastoreError> {
        self.pass(
            CallKind::InstanceUpdate,
            Component::Datastore,
            (None, Arg::Instance(instance_id)),
            || (*self.inner).run_instance_update(instance_id),
            |r| match r {
                Ok(()) => Answer::Ack,
                Err(_) => Answer::Error(ErrorKind::Datastore),
            },
        )
        .await
    }
}
