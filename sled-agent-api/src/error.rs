//! Typed errors of both directions of the protocol.

use crate::{PropolisUuid, VmmState, VmmStateRequested};

/// An error from another process or library, kept as the `source` of a typed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a sled agent could not do what Nexus asked.
///
/// `NoSuchVmm` is the one answer that means "gone": the watcher and the stop path
/// treat it as a VMM failure, and every other variant as inconclusive.
#[derive(Debug, thiserror::Error)]
pub enum SledAgentError {
    #[error("no such VMM {propolis_id} on this sled")]
    NoSuchVmm { propolis_id: PropolisUuid },

    /// `current` is the VMM's state now; `resting`, the state its queued
    /// transitions end in (the same if none are queued): what a request is
    /// judged against.
    #[error("VMM {propolis_id} is {current}, bound for {resting}: it cannot go to {requested}")]
    InvalidTransition {
        propolis_id: PropolisUuid,
        current: VmmState,
        resting: VmmState,
        requested: VmmStateRequested,
    },

    /// The VMM reached Destroyed and is being torn down: omicron's runner
    /// answers the stops and reboots queued to it then with 410 Gone (#6166).
    /// Not "gone": Nexus leaves the VMM alone, its Destroyed is on its way.
    #[error("VMM {propolis_id} is terminating")]
    Terminating { propolis_id: PropolisUuid },

    #[error("VMM {propolis_id} cannot be registered: {reason}")]
    InvalidRegistration { propolis_id: PropolisUuid, reason: String },

    #[error("could not reach the sled agent for {operation}")]
    Communication {
        operation: &'static str,
        #[source]
        source: BoxError,
    },

    #[error("sled agent answered {operation} with status {status}: {message}")]
    UnexpectedResponse { operation: &'static str, status: u16, message: String },
}

impl SledAgentError {
    /// True only for the answer omicron reads as "the VMM is gone"
    /// (404 with `NO_SUCH_INSTANCE`, RFD 486 §6.3).
    pub fn vmm_gone(&self) -> bool {
        matches!(self, SledAgentError::NoSuchVmm { .. })
    }
}

/// Why Nexus did not take a VMM state report from a sled agent. A stale report is
/// not among these: Nexus answers it with success and writes nothing.
#[derive(Debug, thiserror::Error)]
pub enum NexusApiError {
    #[error("could not reach Nexus for {operation}")]
    Communication {
        operation: &'static str,
        #[source]
        source: BoxError,
    },

    #[error("Nexus answered {operation} with status {status}: {message}")]
    UnexpectedResponse { operation: &'static str, status: u16, message: String },
}

impl NexusApiError {
    /// Whether a sled agent should send the report again: Nexus could not be
    /// reached, or answered with a server error (omicron's sled agent retries
    /// these, and gives up on a 4xx).
    pub fn retryable(&self) -> bool {
        match self {
            NexusApiError::Communication { .. } => true,
            NexusApiError::UnexpectedResponse { status, .. } => *status >= 500,
        }
    }
}
