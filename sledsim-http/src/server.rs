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

/// The header an omicron client names the API version it speaks in.
pub const VERSION_HEADER: &str = "api-version";

/// The version of omicron's sled-agent API the sim serves.
pub const SLED_AGENT_API_VERSION: semver::Version = semver::Version::new(48, 0, 0);

/// The version of omicron's nexus-internal API the Nexus stub serves.
pub const NEXUS_INTERNAL_API_VERSION: semver::Version = semver::Version::new(1, 0, 0);

/// Serves `api` with `context` on `bind` (port 0 for an ephemeral one); the
/// server's `local_addr()` says where. Logs under `component`. As omicron's
/// internal servers do, it asks every request for the `api-version` header and
/// refuses (400) one that is missing, malformed or newer than `version`.
pub fn start_server<C: ServerContext>(
    api: Result<ApiDescription<C>, ApiDescriptionBuildErrors>,
    context: C,
    bind: SocketAddr,
    version: semver::Version,
    log: &Logger,
    component: &'static str,
) -> Result<HttpServer<C>, ServerError> {
    let api = api.map_err(|e| ServerError::Api(e.to_string()))?;
    let log = log.new(slog::o!("component" => component));
    let policy = dropshot::ClientSpecifiesVersionInHeader::new(
        reqwest::header::HeaderName::from_static(VERSION_HEADER),
        version,
    );
    dropshot::ServerBuilder::new(api, context, log)
        .config(server_config(bind))
        .version_policy(dropshot::VersionPolicy::Dynamic(Box::new(policy)))
        .start()
        .map_err(|source| ServerError::Start { bind, source })
}

/// The OpenAPI document of a stub description, as JSON, at `version`.
pub fn openapi_json(
    api: Result<ApiDescription<StubContext>, ApiDescriptionBuildErrors>,
    title: &str,
    version: semver::Version,
) -> Result<serde_json::Value, ServerError> {
    let api = api.map_err(|e| ServerError::Api(e.to_string()))?;
    api.openapi(title, version).json().map_err(|e| ServerError::Api(e.to_string()))
}

/// A server process's `--log-level`, as slog names its levels. The error says
/// what is allowed, for clap to print.
pub fn log_level(s: &str) -> Result<slog::Level, String> {
    s.parse().map_err(|()| "one of critical, error, warning, info, debug, trace".to_string())
}

/// A server binary's logger: terminal lines on stderr, from `level` up.
pub fn stderr_logger(level: slog::Level) -> slog::Logger {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    slog::Logger::root(drain.filter_level(level).fuse(), slog::o!())
}
