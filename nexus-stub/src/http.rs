//! The Nexus stub over HTTP: the internal endpoint sled agents report VMM state to,
//! the datastore port the watcher uses, and a small external API for instances and
//! disks. A thin adapter over `NexusStub`.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;

use dropshot::{
    HttpError, HttpResponseCreated, HttpResponseOk, HttpResponseUpdatedNoContent, Path,
    RequestContext, TypedBody,
};
use schemars::JsonSchema;
use serde::Deserialize;
use sled_agent_api::{
    error_codes, DiskUuid, InstanceUuid, NexusInternalApi, PropolisUuid, SledAgentApi, SledVmmState,
};
use sledsim_http::{error_chain, ApiError, ServerError};
use slog::Logger;
use watcher::{VmmWriteOutcome, WatchedVmm, WatcherDatastore};

use crate::{DiskView, InstanceView, NexusError, NexusStub};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct VmmPath {
    pub propolis_id: PropolisUuid,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InstancePath {
    pub instance_id: InstanceUuid,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DiskPath {
    pub disk_id: DiskUuid,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct InstanceCreate {
    pub name: String,
    #[serde(default)]
    pub start: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DiskCreate {
    pub name: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DiskInstance {
    pub instance_id: InstanceUuid,
}

/// The HTTP API of the Nexus stub.
#[dropshot::api_description]
pub trait NexusStubHttpApi {
    type Context;

    /// omicron's `cpapi_instances_put`: a sled agent reports a VMM's state. A stale
    /// report is accepted (204) and changes nothing.
    #[endpoint { method = PUT, path = "/vmms/{propolis_id}", tags = ["internal"] }]
    async fn cpapi_instances_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    /// The VMM rows the instance watcher checks.
    #[endpoint { method = GET, path = "/datastore/vmms", tags = ["datastore"] }]
    async fn vmm_list_for_watcher(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<WatchedVmm>>, HttpError>;

    /// The generation-checked VMM write, as the watcher submits it.
    #[endpoint { method = PUT, path = "/datastore/vmms/{propolis_id}", tags = ["datastore"] }]
    async fn vmm_update_runtime(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseOk<VmmWriteOutcome>, HttpError>;

    /// The instance update step, run for the watcher, which waits for it.
    #[endpoint {
        method = POST,
        path = "/datastore/instances/{instance_id}/update",
        tags = ["datastore"],
    }]
    async fn instance_update(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError>;

    #[endpoint { method = POST, path = "/instances", tags = ["instances"] }]
    async fn instance_create(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<InstanceCreate>,
    ) -> Result<HttpResponseCreated<InstanceView>, HttpError>;

    #[endpoint { method = GET, path = "/instances/{instance_id}", tags = ["instances"] }]
    async fn instance_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<InstanceView>, HttpError>;

    #[endpoint { method = POST, path = "/instances/{instance_id}/start", tags = ["instances"] }]
    async fn instance_start(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<InstanceView>, HttpError>;

    #[endpoint { method = POST, path = "/instances/{instance_id}/stop", tags = ["instances"] }]
    async fn instance_stop(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<InstanceView>, HttpError>;

    #[endpoint { method = POST, path = "/disks", tags = ["disks"] }]
    async fn disk_create(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<DiskCreate>,
    ) -> Result<HttpResponseCreated<DiskView>, HttpError>;

    #[endpoint { method = GET, path = "/disks/{disk_id}", tags = ["disks"] }]
    async fn disk_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<DiskPath>,
    ) -> Result<HttpResponseOk<DiskView>, HttpError>;

    #[endpoint { method = POST, path = "/disks/{disk_id}/attach", tags = ["disks"] }]
    async fn disk_attach(
        rqctx: RequestContext<Self::Context>,
        path: Path<DiskPath>,
        body: TypedBody<DiskInstance>,
    ) -> Result<HttpResponseOk<DiskView>, HttpError>;

    #[endpoint { method = POST, path = "/disks/{disk_id}/detach", tags = ["disks"] }]
    async fn disk_detach(
        rqctx: RequestContext<Self::Context>,
        path: Path<DiskPath>,
        body: TypedBody<DiskInstance>,
    ) -> Result<HttpResponseOk<DiskView>, HttpError>;
}

/// The server side of `NexusStubHttpApi` for a Nexus calling sled agents `S`.
#[derive(Debug)]
pub struct NexusHttp<S>(PhantomData<fn() -> S>);

impl From<NexusError> for HttpError {
    fn from(e: NexusError) -> Self {
        nexus_error(e).into()
    }
}

fn nexus_error(e: NexusError) -> ApiError {
    let msg = error_chain(&e);
    match e {
        NexusError::NoSuchVmm { .. } => ApiError::not_found(error_codes::NO_SUCH_VMM, msg),
        NexusError::NoSuchInstance { .. } | NexusError::NoSuchDisk { .. } => {
            ApiError::not_found("ObjectNotFound", msg)
        }
        NexusError::NameInUse { .. } => ApiError::bad_request("ObjectAlreadyExists", msg),
        NexusError::InstanceNotStopped { .. }
        | NexusError::InstanceNotStartable { .. }
        | NexusError::InstanceNotRebootable { .. }
        | NexusError::DiskAttachedToAnother { .. } => ApiError::bad_request("InvalidRequest", msg),
        // omicron answers both with `Error::conflict`: 409, no code.
        NexusError::InstanceAlreadyStarting { .. } | NexusError::InstanceChangedState { .. } => {
            ApiError::new(dropshot::ErrorStatusCode::CONFLICT, None, msg)
        }
        NexusError::SledAgent { .. } | NexusError::NoSleds => ApiError::new(
            dropshot::ErrorStatusCode::SERVICE_UNAVAILABLE,
            Some("ServiceNotAvailable"),
            msg,
        ),
        NexusError::NoRuntime => ApiError::internal(msg),
    }
}

/// A datastore error as the watcher's port answers it: an unknown VMM is a 404
/// the client turns back into `NoSuchVmm`, anything else a 500.
fn datastore_error(e: watcher::DatastoreError) -> HttpError {
    match e {
        watcher::DatastoreError::NoSuchVmm { .. } => {
            ApiError::not_found(error_codes::NO_SUCH_VMM, e.to_string()).into()
        }
        other => ApiError::internal(error_chain(&other)).into(),
    }
}

impl<S: SledAgentApi + 'static> NexusStubHttpApi for NexusHttp<S> {
    type Context = Arc<NexusStub<S>>;

    async fn cpapi_instances_put(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        sledsim_http::refuse_if_asked(&rqctx.request)?;
        let nexus = rqctx.context();
        // Through the trait, so the answer is omicron's: any failure is a 500.
        NexusInternalApi::cpapi_instances_put(
            nexus.as_ref(),
            path.into_inner().propolis_id,
            body.into_inner(),
        )
        .await
        .map_err(|e| HttpError::from(ApiError::internal(error_chain(&e))))?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn vmm_list_for_watcher(
        rqctx: RequestContext<Self::Context>,
    ) -> Result<HttpResponseOk<Vec<WatchedVmm>>, HttpError> {
        let rows = rqctx.context().vmm_list_for_watcher().await;
        rows.map(HttpResponseOk).map_err(|e| ApiError::internal(error_chain(&e)).into())
    }

    async fn vmm_update_runtime(
        rqctx: RequestContext<Self::Context>,
        path: Path<VmmPath>,
        body: TypedBody<SledVmmState>,
    ) -> Result<HttpResponseOk<VmmWriteOutcome>, HttpError> {
        let nexus = rqctx.context();
        let r = WatcherDatastore::vmm_update_runtime(
            nexus.as_ref(),
            path.into_inner().propolis_id,
            body.into_inner(),
        )
        .await;
        r.map(HttpResponseOk).map_err(datastore_error)
    }

    async fn instance_update(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseUpdatedNoContent, HttpError> {
        let nexus = rqctx.context();
        WatcherDatastore::run_instance_update(nexus.as_ref(), path.into_inner().instance_id)
            .await
            .map_err(datastore_error)?;
        Ok(HttpResponseUpdatedNoContent())
    }

    async fn instance_create(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<InstanceCreate>,
    ) -> Result<HttpResponseCreated<InstanceView>, HttpError> {
        let b = body.into_inner();
        Ok(HttpResponseCreated(rqctx.context().instance_create(&b.name, b.start).await?))
    }

    async fn instance_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<InstanceView>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().instance(path.into_inner().instance_id)?))
    }

    async fn instance_start(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<InstanceView>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().instance_start(path.into_inner().instance_id).await?))
    }

    async fn instance_stop(
        rqctx: RequestContext<Self::Context>,
        path: Path<InstancePath>,
    ) -> Result<HttpResponseOk<InstanceView>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().instance_stop(path.into_inner().instance_id).await?))
    }

    async fn disk_create(
        rqctx: RequestContext<Self::Context>,
        body: TypedBody<DiskCreate>,
    ) -> Result<HttpResponseCreated<DiskView>, HttpError> {
        Ok(HttpResponseCreated(rqctx.context().disk_create(&body.into_inner().name)?))
    }

    async fn disk_view(
        rqctx: RequestContext<Self::Context>,
        path: Path<DiskPath>,
    ) -> Result<HttpResponseOk<DiskView>, HttpError> {
        Ok(HttpResponseOk(rqctx.context().disk(path.into_inner().disk_id)?))
    }

    async fn disk_attach(
        rqctx: RequestContext<Self::Context>,
        path: Path<DiskPath>,
        body: TypedBody<DiskInstance>,
    ) -> Result<HttpResponseOk<DiskView>, HttpError> {
        let (disk, inst) = (path.into_inner().disk_id, body.into_inner().instance_id);
        Ok(HttpResponseOk(rqctx.context().disk_attach(disk, inst)?))
    }

    async fn disk_detach(
        rqctx: RequestContext<Self::Context>,
        path: Path<DiskPath>,
        body: TypedBody<DiskInstance>,
    ) -> Result<HttpResponseOk<DiskView>, HttpError> {
        let (disk, inst) = (path.into_inner().disk_id, body.into_inner().instance_id);
        Ok(HttpResponseOk(rqctx.context().disk_detach(disk, inst)?))
    }
}

/// Serves `nexus` on `bind` (port 0 for an ephemeral one).
pub fn serve<S: SledAgentApi + 'static>(
    nexus: Arc<NexusStub<S>>,
    bind: SocketAddr,
    log: &Logger,
) -> Result<dropshot::HttpServer<Arc<NexusStub<S>>>, ServerError> {
    let api = nexus_stub_http_api_mod::api_description::<NexusHttp<S>>();
    sledsim_http::start_server(
        api,
        nexus,
        bind,
        sledsim_http::NEXUS_INTERNAL_API_VERSION,
        log,
        "NexusStubHttp",
    )
}

/// The OpenAPI document of this API.
pub fn openapi() -> Result<serde_json::Value, ServerError> {
    let api = nexus_stub_http_api_mod::stub_api_description();
    sledsim_http::openapi_json(api, "sledsim Nexus stub", sledsim_http::NEXUS_INTERNAL_API_VERSION)
}
