//! VMM states and the request and response bodies of the sled-agent API.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Generation, InstanceUuid};

/// The state of a VMM as a sled agent reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmmState {
    Starting,
    Running,
    Stopping,
    Stopped,
    Rebooting,
    Migrating,
    Failed,
    Destroyed,
}

impl VmmState {
    /// Destroyed and Failed end a VMM's life: Nexus runs the instance update step on
    /// them, and a sled agent may forget the VMM once Nexus has acknowledged one.
    pub const fn is_terminal(self) -> bool {
        matches!(self, VmmState::Destroyed | VmmState::Failed)
    }

    pub const fn label(self) -> &'static str {
        match self {
            VmmState::Starting => "starting",
            VmmState::Running => "running",
            VmmState::Stopping => "stopping",
            VmmState::Stopped => "stopped",
            VmmState::Rebooting => "rebooting",
            VmmState::Migrating => "migrating",
            VmmState::Failed => "failed",
            VmmState::Destroyed => "destroyed",
        }
    }
}

impl fmt::Display for VmmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// What Nexus asks a sled agent to do with a VMM (migration is not modelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum VmmStateRequested {
    Running,
    Stopped,
    Reboot,
}

impl fmt::Display for VmmStateRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmmStateRequested::Running => "running",
            VmmStateRequested::Stopped => "stopped",
            VmmStateRequested::Reboot => "reboot",
        })
    }
}

/// A VMM's state at one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct VmmRuntimeState {
    pub state: VmmState,
    pub gen: Generation,
    pub time_updated: DateTime<Utc>,
}

impl fmt::Display for VmmRuntimeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/g{}", self.state, self.gen)
    }
}

/// What a sled agent reports about a VMM. omicron's type also carries migration
/// states; this model has no migration, so it has only the VMM's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct SledVmmState {
    pub vmm_state: VmmRuntimeState,
}

impl fmt::Display for SledVmmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.vmm_state, f)
    }
}

/// Body of `PUT /vmms/{propolis_id}`: asks a sled agent to track a new VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct InstanceEnsureBody {
    pub instance_id: InstanceUuid,
    /// The state the VMM starts in, at the generation Nexus chose (row gen + 1).
    pub vmm_runtime: VmmRuntimeState,
}

/// Body of `PUT /vmms/{propolis_id}/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct VmmPutStateBody {
    pub state: VmmStateRequested,
}

/// Answer to a put-state: the VMM's state right after the request took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct VmmPutStateResponse {
    pub updated_runtime: Option<SledVmmState>,
}

/// Answer to an unregister: the final state for Nexus to write, if the VMM existed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct VmmUnregisterResponse {
    pub updated_runtime: Option<SledVmmState>,
}

/// The body of an error response from either server: omicron's `Error`
/// (`error_code`, `message`, `request_id`), as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    pub message: String,
    #[serde(default)]
    pub request_id: String,
}

/// `error_code`s on the wire.
pub mod error_codes {
    /// 404: the VMM is not in the sled agent's table (omicron's code).
    pub const NO_SUCH_INSTANCE: &str = "NO_SUCH_INSTANCE";
    /// 400: a request the sled agent cannot carry out (an invalid transition, a
    /// registration with a bad initial state): omicron's `InvalidRequest`.
    pub const INVALID_REQUEST: &str = "InvalidRequest";
    /// 404: Nexus has no record of the VMM being reported.
    pub const NO_SUCH_VMM: &str = "NO_SUCH_VMM";
}
