//! The HTTP binding of sledsim's traits: clients that implement `SledAgentApi`,
//! `NexusInternalApi` and `WatcherDatastore` over HTTP, and `ApiError`, the error
//! the dropshot servers answer with.
//!
//! Errors travel as omicron's do: a status and omicron's `Error` body (`error_code`,
//! `message`, `request_id`). A
//! NoSuchVmm is 404 with `NO_SUCH_INSTANCE`, and only that maps back to
//! `SledAgentError::NoSuchVmm`, so the watcher treats a remote sled agent exactly
//! as an in-process one: gone means gone, anything else is inconclusive.

mod client;
mod error;
mod fault;
#[cfg(feature = "process")]
pub mod process;
mod server;

pub use client::{base_url, LateNexus, NexusClient, PokeResponse, SledAgentClient};
pub use error::{error_chain, server_config, ApiError, REQUEST_BODY_MAX_BYTES, VMM_STATE_HEADER};
pub use fault::{
    refusals_served, refuse_if_asked, refused_by_server, RefusedByServer, REFUSAL_MESSAGE,
    REFUSE_HEADER,
};
pub use server::{
    log_level, openapi_json, start_server, stderr_logger, ServerError, NEXUS_INTERNAL_API_VERSION,
    SLED_AGENT_API_VERSION, VERSION_HEADER,
};
