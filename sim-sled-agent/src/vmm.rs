//! One simulated VMM: its state, generation and queue of Propolis observations.
//!
//! The rules follow omicron's `SimInstance` (sled-agent/src/sim/instance.rs): a
//! request changes state at once or queues observations, and each observation,
//! when executed, bumps the generation by exactly one.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use sled_agent_api::{
    Clock, InstanceUuid, PropolisUuid, SledAgentError, SledVmmState, VmmRuntimeState, VmmState,
    VmmStateRequested,
};

/// A state Propolis reports. It maps onto a `VmmState`; note that Propolis's
/// `Stopped` maps to `Stopping`, so the sim never publishes `Stopped`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum PropolisState {
    Running,
    Stopping,
    Stopped,
    Rebooting,
    Destroyed,
}

impl PropolisState {
    fn vmm_state(self) -> VmmState {
        match self {
            PropolisState::Running => VmmState::Running,
            PropolisState::Stopping | PropolisState::Stopped => VmmState::Stopping,
            PropolisState::Rebooting => VmmState::Rebooting,
            PropolisState::Destroyed => VmmState::Destroyed,
        }
    }

    fn requested(self) -> VmmStateRequested {
        match self {
            PropolisState::Running => VmmStateRequested::Running,
            PropolisState::Stopping | PropolisState::Stopped | PropolisState::Destroyed => {
                VmmStateRequested::Stopped
            }
            PropolisState::Rebooting => VmmStateRequested::Reboot,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct SimVmm {
    pub(crate) instance_id: InstanceUuid,
    pub(crate) runtime: VmmRuntimeState,
    queue: VecDeque<PropolisState>,
    /// Set once Propolis reported Destroyed (or the VMM was terminated): the sled agent
    /// may drop the VMM from its table once nothing more is queued.
    destroyed: bool,
}

impl SimVmm {
    pub(crate) fn new(
        propolis_id: PropolisUuid,
        instance_id: InstanceUuid,
        initial: VmmRuntimeState,
    ) -> Result<SimVmm, SledAgentError> {
        // omicron's sim panics here; a typed error serves callers better.
        if initial.state != VmmState::Starting {
            return Err(SledAgentError::InvalidRegistration {
                propolis_id,
                reason: format!("initial state must be starting, not {}", initial.state),
            });
        }
        Ok(SimVmm { instance_id, runtime: initial, queue: VecDeque::new(), destroyed: false })
    }

    pub(crate) fn current(&self) -> SledVmmState {
        SledVmmState { vmm_state: self.runtime }
    }

    /// The state the VMM will rest in once the queue drains.
    fn next_resting_state(&self) -> VmmState {
        self.queue.back().map_or(self.runtime.state, |p| p.vmm_state())
    }

    /// What the queue is heading for; `None` when nothing is queued.
    pub(crate) fn desired(&self) -> Option<VmmStateRequested> {
        self.queue.back().map(|p| p.requested())
    }

    pub(crate) fn ready_to_destroy(&self) -> bool {
        self.destroyed && self.queue.is_empty()
    }

    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    fn set_state(&mut self, state: VmmState, clock: &dyn Clock) {
        self.runtime =
            VmmRuntimeState { state, gen: self.runtime.gen.next(), time_updated: clock.now() };
    }

    /// Applies a requested state. Returns whether the generation changed.
    pub(crate) fn request_transition(
        &mut self,
        propolis_id: PropolisUuid,
        target: VmmStateRequested,
        clock: &dyn Clock,
    ) -> Result<bool, SledAgentError> {
        let resting = self.next_resting_state();
        let invalid = || SledAgentError::InvalidTransition {
            propolis_id,
            current: self.runtime.state,
            resting,
            requested: target,
        };
        let before = self.runtime.gen;
        match target {
            VmmStateRequested::Running => match resting {
                // Only queued: the generation moves when the observation executes.
                VmmState::Starting => self.queue.push_back(PropolisState::Running),
                VmmState::Running | VmmState::Rebooting | VmmState::Migrating => {}
                VmmState::Stopping | VmmState::Stopped | VmmState::Failed | VmmState::Destroyed => {
                    return Err(invalid())
                }
            },
            VmmStateRequested::Stopped => match resting {
                // Never ran, so there is nothing to stop gracefully. As in omicron,
                // `destroyed` stays false and the VMM stays in the table.
                VmmState::Starting => {
                    self.queue.clear();
                    self.set_state(VmmState::Destroyed, clock);
                }
                VmmState::Running => {
                    self.set_state(VmmState::Stopping, clock);
                    self.queue.extend([
                        PropolisState::Stopping,
                        PropolisState::Stopped,
                        PropolisState::Destroyed,
                    ]);
                }
                VmmState::Stopping | VmmState::Stopped | VmmState::Destroyed => {}
                VmmState::Rebooting | VmmState::Migrating | VmmState::Failed => {
                    return Err(invalid())
                }
            },
            VmmStateRequested::Reboot => match resting {
                VmmState::Running => {
                    if !self.queue.contains(&PropolisState::Rebooting) {
                        self.set_state(VmmState::Rebooting, clock);
                        self.queue.extend([PropolisState::Rebooting, PropolisState::Running]);
                    }
                }
                _ => return Err(invalid()),
            },
        }
        Ok(self.runtime.gen != before)
    }

    /// Executes the next queued observation, if any; with an empty queue the state
    /// is left alone (a poke then re-publishes the same generation).
    pub(crate) fn execute_next(&mut self, clock: &dyn Clock) {
        if let Some(observed) = self.queue.pop_front() {
            if observed == PropolisState::Destroyed {
                self.destroyed = true;
            }
            self.set_state(observed.vmm_state(), clock);
        }
    }

    /// Forces the VMM to Failed, as unregistering a live VMM does.
    pub(crate) fn terminate(&mut self, clock: &dyn Clock) {
        self.queue.clear();
        self.destroyed = true;
        self.set_state(VmmState::Failed, clock);
    }

    /// Hashes what determines future behaviour: not `time_updated`, which differs
    /// between schedules that are otherwise the same.
    pub(crate) fn hash_state<H: Hasher>(&self, h: &mut H) {
        self.instance_id.hash(h);
        self.runtime.state.hash(h);
        self.runtime.gen.hash(h);
        self.queue.hash(h);
        self.destroyed.hash(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sled_agent_api::{Generation, LogicalClock};

    fn starting() -> (SimVmm, LogicalClock) {
        let clock = LogicalClock::default();
        let runtime = VmmRuntimeState {
            state: VmmState::Starting,
            gen: Generation::new().next(),
            time_updated: clock.now(),
        };
        let vmm = SimVmm::new(PropolisUuid::from_u128(1), InstanceUuid::from_u128(2), runtime)
            .expect("starting is a valid initial state");
        (vmm, clock)
    }

    fn check(vmm: &SimVmm, state: VmmState, gen: u64) {
        assert_eq!((vmm.runtime.state, vmm.runtime.gen.as_u64()), (state, gen));
    }

    fn request(vmm: &mut SimVmm, clock: &LogicalClock, target: VmmStateRequested) -> bool {
        vmm.request_transition(PropolisUuid::from_u128(1), target, clock)
            .expect("transition is valid")
    }

    #[test]
    fn running_from_starting_is_queued_without_a_generation_bump() {
        let (mut vmm, clock) = starting();
        assert!(!request(&mut vmm, &clock, VmmStateRequested::Running));
        check(&vmm, VmmState::Starting, 2);
        assert_eq!(vmm.desired(), Some(VmmStateRequested::Running));
    }

    #[test]
    fn stop_of_a_starting_vmm_destroys_it_at_once_but_keeps_it() {
        let (mut vmm, clock) = starting();
        assert!(request(&mut vmm, &clock, VmmStateRequested::Stopped));
        check(&vmm, VmmState::Destroyed, 3);
        assert_eq!(vmm.desired(), None);
        assert!(!vmm.ready_to_destroy());
    }

    #[test]
    fn reboot_queues_once() {
        let (mut vmm, clock) = starting();
        request(&mut vmm, &clock, VmmStateRequested::Running);
        vmm.execute_next(&clock);
        check(&vmm, VmmState::Running, 3);
        assert!(request(&mut vmm, &clock, VmmStateRequested::Reboot));
        assert!(!request(&mut vmm, &clock, VmmStateRequested::Reboot));
        check(&vmm, VmmState::Rebooting, 4);
        assert_eq!(vmm.queued(), 2);
    }

    #[test]
    fn invalid_requests_name_the_resting_state() {
        let (mut vmm, clock) = starting();
        request(&mut vmm, &clock, VmmStateRequested::Running);
        request(&mut vmm, &clock, VmmStateRequested::Stopped);
        let err = vmm
            .request_transition(PropolisUuid::from_u128(1), VmmStateRequested::Running, &clock)
            .expect_err("cannot run a VMM on its way to Destroyed");
        assert!(
            matches!(
                err,
                SledAgentError::InvalidTransition {
                    current: VmmState::Stopping,
                    resting: VmmState::Destroyed,
                    requested: VmmStateRequested::Running,
                    ..
                }
            ),
            "{err:?}"
        );
        // The message names both: where it is, and where it is bound.
        let text = err.to_string();
        assert!(text.contains("is stopping, bound for destroyed"), "{text}");
    }

    fn hash(vmm: &SimVmm) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        vmm.hash_state(&mut h);
        h.finish()
    }

    /// Every field that decides what the VMM does next moves the hash; the
    /// timestamp, which decides nothing, does not.
    #[test]
    fn the_hash_covers_every_field_that_decides_the_future() {
        let (vmm, _) = starting();
        let base = hash(&vmm);
        type Perturb = fn(&mut SimVmm);
        let covered: [(&str, Perturb); 5] = [
            ("instance", |v| v.instance_id = InstanceUuid::from_u128(9)),
            ("state", |v| v.runtime.state = VmmState::Running),
            ("gen", |v| v.runtime.gen = v.runtime.gen.next()),
            ("queue", |v| v.queue.push_back(PropolisState::Running)),
            ("destroyed", |v| v.destroyed = true),
        ];
        for (field, perturb) in covered {
            let mut v = vmm.clone();
            perturb(&mut v);
            assert_ne!(hash(&v), base, "{field} is not in the hash");
        }
        let mut v = vmm.clone();
        let later = LogicalClock::default();
        let _ = later.now();
        v.runtime.time_updated = later.now();
        assert_ne!(v.runtime.time_updated, vmm.runtime.time_updated);
        assert_eq!(hash(&v), base, "a timestamp is noise, not state");
    }
}
