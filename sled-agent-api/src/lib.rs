//! The VMM lifecycle protocol between Nexus and sled agents: types and the two traits.
//!
//! `SledAgentApi` is what Nexus calls on a sled agent; `NexusInternalApi` is what a
//! sled agent calls to report VMM state to Nexus. Everything that crosses a
//! component boundary in sledsim goes through one of these traits, so an
//! implementation can be a simulator, a mock, an explorer's gate or an HTTP client.
//! This crate depends on no runtime and on no other workspace crate.

use std::sync::Arc;

use async_trait::async_trait;

mod clock;
mod error;
mod generation;
mod ids;
mod state;

pub use clock::{Clock, LogicalClock, SystemClock};
pub use error::{BoxError, NexusApiError, SledAgentError};
pub use generation::{Generation, GenerationOutOfRange};
pub use ids::{DiskUuid, InstanceUuid, PropolisUuid, SledUuid};
pub use state::{
    error_codes, ErrorBody, InstanceEnsureBody, SledVmmState, VmmPutStateBody, VmmPutStateResponse,
    VmmRuntimeState, VmmState, VmmStateRequested, VmmUnregisterResponse,
};

/// The VMM endpoints of a sled agent, as Nexus uses them.
///
/// Sim-only controls (poke, single step, removal ordering) are deliberately not here:
/// a caller holding a `SledAgentApi` cannot tell a simulator from a real agent.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
#[async_trait]
pub trait SledAgentApi: Send + Sync {
    /// `PUT /vmms/{propolis_id}`: start tracking a VMM in the given initial state.
    async fn vmm_register(
        &self,
        propolis_id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError>;

    /// `DELETE /vmms/{propolis_id}`: stop tracking a VMM, returning its final state.
    async fn vmm_unregister(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError>;

    /// `PUT /vmms/{propolis_id}/state`: ask for a state change.
    async fn vmm_put_state(
        &self,
        propolis_id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError>;

    /// `GET /vmms/{propolis_id}/state`: the VMM's current state, or `NoSuchVmm`.
    async fn vmm_get_state(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<SledVmmState, SledAgentError>;
}

/// The internal Nexus endpoint through which a sled agent reports VMM state.
#[cfg_attr(any(test, feature = "testing"), mockall::automock)]
#[async_trait]
pub trait NexusInternalApi: Send + Sync {
    /// `PUT /vmms/{propolis_id}` on Nexus's internal API (omicron's
    /// `cpapi_instances_put`). Success means Nexus processed the report, which
    /// includes the case where the report was stale and changed nothing.
    async fn cpapi_instances_put(
        &self,
        propolis_id: PropolisUuid,
        new_runtime_state: SledVmmState,
    ) -> Result<(), NexusApiError>;
}

#[async_trait]
impl<T: SledAgentApi + ?Sized> SledAgentApi for Arc<T> {
    async fn vmm_register(
        &self,
        propolis_id: PropolisUuid,
        body: InstanceEnsureBody,
    ) -> Result<SledVmmState, SledAgentError> {
        (**self).vmm_register(propolis_id, body).await
    }

    async fn vmm_unregister(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<VmmUnregisterResponse, SledAgentError> {
        (**self).vmm_unregister(propolis_id).await
    }

    async fn vmm_put_state(
        &self,
        propolis_id: PropolisUuid,
        body: VmmPutStateBody,
    ) -> Result<VmmPutStateResponse, SledAgentError> {
        (**self).vmm_put_state(propolis_id, body).await
    }

    async fn vmm_get_state(
        &self,
        propolis_id: PropolisUuid,
    ) -> Result<SledVmmState, SledAgentError> {
        (**self).vmm_get_state(propolis_id).await
    }
}

#[async_trait]
impl<T: NexusInternalApi + ?Sized> NexusInternalApi for Arc<T> {
    async fn cpapi_instances_put(
        &self,
        propolis_id: PropolisUuid,
        new_runtime_state: SledVmmState,
    ) -> Result<(), NexusApiError> {
        (**self).cpapi_instances_put(propolis_id, new_runtime_state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(state: VmmState, gen: u64) -> SledVmmState {
        SledVmmState {
            vmm_state: VmmRuntimeState {
                state,
                gen: Generation::try_from(gen).expect("valid generation"),
                time_updated: LogicalClock::default().now(),
            },
        }
    }

    // The blanket impl is what lets a caller hold `Arc<dyn SledAgentApi>` or an
    // `Arc` of a concrete agent interchangeably.
    #[tokio::test]
    async fn arc_of_a_mock_is_a_sled_agent() {
        let id = PropolisUuid::from_u128(7);
        let mut mock = MockSledAgentApi::new();
        mock.expect_vmm_get_state()
            .withf(move |p| *p == id)
            .times(1)
            .returning(|_| Ok(state(VmmState::Running, 4)));
        let agent: Arc<dyn SledAgentApi> = Arc::new(mock);
        let got = Arc::clone(&agent).vmm_get_state(id).await.expect("mock answers");
        assert_eq!(got.vmm_state.state, VmmState::Running);
    }

    #[test]
    fn only_no_such_vmm_means_gone() {
        let id = PropolisUuid::from_u128(1);
        assert!(SledAgentError::NoSuchVmm { propolis_id: id }.vmm_gone());
        let others = [
            SledAgentError::InvalidTransition {
                propolis_id: id,
                current: VmmState::Stopping,
                resting: VmmState::Destroyed,
                requested: VmmStateRequested::Running,
            },
            SledAgentError::UnexpectedResponse {
                operation: "vmm_get_state",
                status: 410,
                message: "terminating".into(),
            },
        ];
        for e in others {
            assert!(!e.vmm_gone(), "{e}");
        }
    }

    #[test]
    fn wire_names_match_omicron() {
        let json = serde_json::to_value(state(VmmState::Destroyed, 7)).expect("serializes");
        assert_eq!(json["vmm_state"]["state"], "destroyed");
        assert_eq!(json["vmm_state"]["gen"], 7);
        let req = serde_json::to_value(VmmPutStateBody { state: VmmStateRequested::Stopped })
            .expect("serializes");
        assert_eq!(req, serde_json::json!({"state": {"type": "stopped"}}));
    }
}
