//! Starting a dropshot server and writing its OpenAPI document, the same way for
//! both servers.

use std::net::SocketAddr;

use dropshot::{ApiDescription, ApiDescriptionBuildErrors, HttpServer, ServerContext, StubContext};
use slog::Logger;

use crate::server_config;

/// Why a server did not start, or its document could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("building the API description failed: {0}")]
    Api(String),
    #[error("starting the server on {bind} failed")]
    Start {
        bind: SocketAddr,
        #[source]
        source: dropshot::BuildError,
    },
}

/// Serves `api` with `context` on `bind` (port 0 for an ephemeral one); the
/// server's `local_addr()` says where. Logs under `component`.
pub fn start_server<C: ServerContext>(
    api: Result<ApiDescription<C>, ApiDescriptionBuildErrors>,
    context: C,
    bind: SocketAddr,
    log: &Logger,
    component: &'static str,
) -> Result<HttpServer<C>, ServerError> {
    let api = api.map_err(|e| ServerError::Api(e.to_string()))?;
    let log = log.new(slog::o!("component" => component));
    dropshot::ServerBuilder::new(api, context, log)
        .config(server_config(bind))
        .start()
        .map_err(|source| ServerError::Start { bind, source })
}

/// The OpenAPI document of a stub description, as JSON.
pub fn openapi_json(
    api: Result<ApiDescription<StubContext>, ApiDescriptionBuildErrors>,
    title: &str,
) -> Result<serde_json::Value, ServerError> {
    let api = api.map_err(|e| ServerError::Api(e.to_string()))?;
    api.openapi(title, semver::Version::new(0, 1, 0))
        .json()
        .map_err(|e| ServerError::Api(e.to_string()))
}
