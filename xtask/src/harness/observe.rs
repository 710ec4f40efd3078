//! The invariants of DESIGN.md, checked from outside after every step: from the
//! answers the gates saw and the state Nexus holds, never from printed text.

use std::collections::BTreeSet;

use nexus_stub::{DiskState, ExternalState};
use serde::Serialize;
use sled_agent_api::{InstanceUuid, PropolisUuid, VmmState};

use super::sched::{Answer, Arg, CallKind};
use super::script::ScenarioKind;
use super::{RunEnd, World};

/// The invariants, by number.
pub const INVARIANTS: [(u8, &str); 5] = [
    (1, "the sled agent answers NoSuchVmm only after Nexus recorded a terminal state"),
    (2, "a VMM whose Destroyed state was published is never recorded Failed"),
    (3, "stored generations never decrease; every applied write has a greater generation"),
    (4, "a user-stopped instance ends Stopped, never Failed, never restarted"),
    (5, "the scenario terminates and the disk ends on instance 2"),
];

pub fn invariant_text(n: u8) -> &'static str {
    INVARIANTS.iter().find(|(k, _)| *k == n).map_or("?", |(_, t)| t)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: u8,
    /// The step after which it was seen (0: before any step, or at the end).
    pub step: usize,
    pub message: String,
}

#[derive(Debug, Default)]
pub struct Observer {
    violations: Vec<Violation>,
    steps_seen: usize,
    writes_seen: usize,
    destroyed_published: BTreeSet<PropolisUuid>,
    failed_recorded: BTreeSet<PropolisUuid>,
}

impl Observer {
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Feeds the history the invariants depend on into `h`.
    pub fn hash_state<H: std::hash::Hasher>(&self, h: &mut H) {
        use std::hash::Hash;
        self.destroyed_published.hash(h);
        self.failed_recorded.hash(h);
        for v in &self.violations {
            v.invariant.hash(h);
        }
    }

    /// Records the first break of each invariant; later ones of the same add nothing.
    fn broke(&mut self, invariant: u8, step: usize, message: impl FnOnce() -> String) {
        if self.violations.iter().all(|v| v.invariant != invariant) {
            self.violations.push(Violation { invariant, step, message: message() });
        }
    }

    pub fn check(&mut self, world: &World) {
        let names = || world.names();

        // 1: every NoSuchVmm answer, against what Nexus held at that instant.
        let mut gone = Vec::new();
        let published = &mut self.destroyed_published;
        let now = world.sched.visit_steps_since(self.steps_seen, |i, step| {
            // A released Destroyed report was parked, so published, before it went;
            // seen here too in case no check ran while it was parked.
            if let (CallKind::CpapiInstancesPut, Arg::State(VmmState::Destroyed, _), Some(vmm)) =
                (step.call.kind, step.call.arg, step.call.vmm)
            {
                published.insert(vmm);
            }
            if let (Answer::Gone { nexus_had }, Some(vmm)) = (&step.answer, step.call.vmm) {
                if !nexus_had.is_some_and(|(s, _)| s.is_terminal()) {
                    gone.push((i + 1, vmm, *nexus_had));
                }
            }
        });
        self.steps_seen = now;
        for (at, vmm, had) in gone {
            let held = had.map_or("no record".into(), |(s, g)| format!("{s}/g{g}"));
            self.broke(1, at, || {
                format!(
                    "the sled agent answered NoSuchVmm for {} while Nexus held it at {held}",
                    names().vmm(vmm)
                )
            });
        }

        // 2: a Destroyed report counts as published once the sled agent sent it, that
        // is once it is parked at the gate; every parked call is seen here before the
        // scheduler can release it.
        let published = &mut self.destroyed_published;
        world.sched.visit_parked(|call| {
            if let (CallKind::CpapiInstancesPut, Arg::State(VmmState::Destroyed, _), Some(vmm)) =
                (call.kind, call.arg, call.vmm)
            {
                published.insert(vmm);
            }
        });

        // 3, and the Failed records 2 needs: every write since the last look.
        let mut backwards = None;
        let failed = &mut self.failed_recorded;
        self.writes_seen = world.nexus.visit_writes_since(self.writes_seen, |w| {
            if w.applied && w.gen <= w.prev_gen && backwards.is_none() {
                backwards = Some(*w);
            }
            if w.applied && w.state == VmmState::Failed {
                failed.insert(w.propolis_id);
            }
        });
        if let Some(w) = backwards {
            self.broke(3, now, || {
                format!(
                    "{}: {}/g{} was applied over stored g{}",
                    names().vmm(w.propolis_id),
                    w.state,
                    w.gen,
                    w.prev_gen
                )
            });
        }
        if let Some(vmm) =
            self.destroyed_published.intersection(&self.failed_recorded).next().copied()
        {
            self.broke(2, now, || {
                format!(
                    "{} was recorded Failed after its Destroyed was published",
                    names().vmm(vmm)
                )
            });
        }

        // 4: user-stopped instances never go Failed and are never restarted.
        let stopped: Vec<InstanceUuid> = world.progress().stopped.clone();
        for id in stopped {
            let Some((state, restarts)) = world.nexus.instance_status(id) else { continue };
            if state == ExternalState::Failed {
                self.broke(4, now, || {
                    format!("{}, stopped by the user, went failed", names().instance(id))
                });
            }
            if restarts > 0 {
                self.broke(4, now, || {
                    format!("{}, stopped by the user, was auto-restarted", names().instance(id))
                });
            }
        }
    }

    pub fn finish(&mut self, world: &World, end: &RunEnd, kind: ScenarioKind) {
        self.check(world);
        let steps = world.sched.steps_len();
        match end {
            RunEnd::Finished => {}
            // A pruned run is the prefix of runs explored elsewhere: no end to judge.
            RunEnd::Stopped => return,
            RunEnd::Deadlock(waiting) => self.broke(5, steps, || {
                let w: Vec<String> = waiting.iter().map(ToString::to_string).collect();
                format!("no call can proceed; still waiting: {}", w.join(", "))
            }),
            RunEnd::StepBound(max) => {
                self.broke(5, steps, || format!("the step bound ({max}) was reached"))
            }
        }
        let (outcome, stopped, disk) = {
            let p = world.progress();
            (p.outcome.clone(), p.stopped.clone(), p.disk)
        };
        if let Some(Err(msg)) = outcome {
            self.broke(5, steps, || format!("scenario failed: {msg}"));
        }
        for id in stopped {
            if let Ok(v) = world.nexus.instance(id) {
                if v.state != ExternalState::Stopped {
                    self.broke(4, steps, || format!("{} ended {}, not stopped", v.name, v.state));
                }
            }
        }
        if kind == ScenarioKind::DiskMove {
            let inst2 = world.progress().instances.get(1).map(|(_, id)| *id);
            let on_inst2 = match (disk.and_then(|d| world.nexus.disk(d).ok()), inst2) {
                (Some(d), Some(i2)) => d.state == DiskState::Attached(i2),
                _ => false,
            };
            if !on_inst2 {
                self.broke(5, steps, || "the disk did not end attached to inst2".into());
            }
        }
    }
}
