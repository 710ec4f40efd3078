//! The sim sled agent over HTTP: omicron's VMM endpoints, plus the sim-only pokes on
//! paths of their own. A thin adapter: every handler calls `SledAgentApi` or an
//! inherent sim control and maps the error.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use dropshot::{HttpError, HttpResponseOk, Path, RequestContext, TypedBody};
use schemars::JsonSchema;
use serde::Deserialize;
use sled_agent_api::{
    InstanceEnsureBody, NexusInternalApi, PropolisUuid, SledAgentApi, SledAgentError, SledVmmState,
    VmmPutStateBody, VmmPutStateResponse, VmmStateRequested, VmmUnregisterResponse,
};
use sledsim_http::{ApiError, PokeResponse, ServerError};
use slog::Logger;

use crate::{PokeMode, SimError, SimSledAgent};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmmPath {
    pub propolis_id: PropolisUuid,
}

/// The HTTP API of the simulated sled agent.
#[dropshot::api_description]
pub trait SimSledAgentHttpApi {
    type Context;

    /// Start tracking a VMM.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}", tags = ["vmms"] }]
    async fn vmm_register(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<InstanceEnsureBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError>;

    /// Stop tracking a VMM; returns the Failed state for Nexus to write.
    #[endpoint { method = DELETE, path = "/vmms/{propolis_id}", tags = ["vmms"] }]
    async fn vmm_unregister(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<VmmUnregisterResponse>, HttpError>;

    /// Ask for a state change.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}/state", tags = ["vmms"] }]
    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<PutStateBody>,
    ) -> Result<HttpResponseOk<VmmPutStateResponse>, HttpError>;

    /// A VMM's state; 404 `NO_SUCH_INSTANCE` if it is not in the table.
    #[endpoint { method = GET, path = "/vmms/{propolis_id}/state", tags = ["vmms"] }]
    async fn vmm_get_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError>;

    /// Sim only: finish every queued transition, reporting each to Nexus.
    #[endpoint { method = POST, path = "/vmms/{propolis_id}/poke", tags = ["sim"] }]
    async fn vmm_poke(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<PokeResponse>, HttpError>;

    /// Sim only: finish one queued transition and report it.
    #[endpoint { method = POST, path = "/vmms/{propolis_id}/poke-single-step", tags = ["sim"] }]
    async fn vmm_poke_single_step(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<PokeResponse>, HttpError>;
}

/// `PUT /vmms/{id}/state`'s body as omicron sends it: its `VmmStateRequested`,
/// which also has `migration_target` (with its parameters). Migration is not
/// modelled, so that one is refused; the others are the sim's own requests.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct PutStateBody {
    pub state: RequestedOnTheWire,
}

/// omicron's `VmmStateRequested`, tagged by `type`, with `value` for the
/// migration target.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum RequestedOnTheWire {
    /// Run this VMM by migrating in (not modelled: refused).
    MigrationTarget(serde_json::Value),
    Running,
    Stopped,
    Reboot,
}

/// The server side of `SimSledAgentHttpApi` for a sim reporting through `N`.
#[derive(Debug)]
pub struct SimHttp<N>(PhantomData<fn() -> N>);

fn sled(e: SledAgentError) -> HttpError {
    ApiError::from(&e).into()
}

async fn poke<N: NexusInternalApi + 'static>(
    sim: &SimSledAgent<N>,
    propolis_id: PropolisUuid,
    mode: PokeMode,
) -> Result<HttpResponseOk<PokeResponse>, HttpError> {
    match sim.poke(propolis_id, mode).await {
        Ok(o) => Ok(HttpResponseOk(PokeResponse {
            published: o.published,
            refused: o.refused,
            removed: o.removed,
        })),
        Err(SimError::NoSuchVmm { propolis_id }) => {
            Err(sled(SledAgentError::NoSuchVmm { propolis_id }))
        }
        Err(e @ SimError::ReportFailed { .. }) => Err(HttpError::from(ApiError::new(
            dropshot::ErrorStatusCode::SERVICE_UNAVAILABLE,
            Some("REPORT_FAILED"),
            // The chain says why Nexus did not take it.
            format!(
                "{e}: {}",
                std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default()
            ),
        ))),
        Err(e @ SimError::NoRuntime) => Err(ApiError::internal(e.to_string()).into()),
    }
}

impl<N: NexusInternalApi + 'static> SimSledAgentHttpApi for SimHttp<N> {
    type Context = Arc<SimSledAgent<N>>;

    async fn vmm_register(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<InstanceEnsureBody>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        let id = path.into_inner().propolis_id;
        rqctx.context().vmm_register(id, body.into_inner()).await.map(HttpResponseOk).map_err(sled)
    }

    async fn vmm_unregister(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<VmmUnregisterResponse>, HttpError> {
        let id = path.into_inner().propolis_id;
        rqctx.context().vmm_unregister(id).await.map(HttpResponseOk).map_err(sled)
    }

    async fn vmm_put_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<PutStateBody>,
    ) -> Result<HttpResponseOk<VmmPutStateResponse>, HttpError> {
        sledsim_http::refuse_if_asked(&rqctx.request)?;
        let id = path.into_inner().propolis_id;
        let state = match body.into_inner().state {
            RequestedOnTheWire::Running => VmmStateRequested::Running,
            RequestedOnTheWire::Stopped => VmmStateRequested::Stopped,
            RequestedOnTheWire::Reboot => VmmStateRequested::Reboot,
            RequestedOnTheWire::MigrationTarget(_) => {
                return Err(ApiError::bad_request(
                    sled_agent_api::error_codes::INVALID_REQUEST,
                    format!("VMM {id}: migration is not modelled"),
                )
                .into())
            }
        };
        let body = VmmPutStateBody { state };
        rqctx.context().vmm_put_state(id, body).await.map(HttpResponseOk).map_err(sled)
    }

    async fn vmm_get_state(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<SledVmmState>, HttpError> {
        sledsim_http::refuse_if_asked(&rqctx.request)?;
        let id = path.into_inner().propolis_id;
        rqctx.context().vmm_get_state(id).await.map(HttpResponseOk).map_err(sled)
    }

    async fn vmm_poke(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<PokeResponse>, HttpError> {
        poke(rqctx.context(), path.into_inner().propolis_id, PokeMode::Drain).await
    }

    async fn vmm_poke_single_step(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
    ) -> Result<HttpResponseOk<PokeResponse>, HttpError> {
        poke(rqctx.context(), path.into_inner().propolis_id, PokeMode::SingleStep).await
    }
}

/// Serves `sim` on `bind` (port 0 for an ephemeral one); the server's
/// `local_addr()` says where.
pub fn serve<N: NexusInternalApi + 'static>(
    sim: Arc<SimSledAgent<N>>,
    bind: SocketAddr,
    log: &Logger,
) -> Result<dropshot::HttpServer<Arc<SimSledAgent<N>>>, ServerError> {
    let api = sim_sled_agent_http_api_mod::api_description::<SimHttp<N>>();
    sledsim_http::start_server(
        api,
        sim,
        bind,
        sledsim_http::SLED_AGENT_API_VERSION,
        log,
        "SimSledAgentHttp",
    )
}

/// The OpenAPI document of this API.
pub fn openapi() -> Result<serde_json::Value, ServerError> {
    let api = sim_sled_agent_http_api_mod::stub_api_description();
    sledsim_http::openapi_json(
        api,
        "sledsim simulated sled agent",
        sledsim_http::SLED_AGENT_API_VERSION,
    )
}
