//! Watches a gated run from outside and feeds the invariant engine: events come
//! from the answers the gates saw, the calls parked at them, and Nexus's logs,
//! never from printed text.

use super::invariants::{Ending, Event, Invariants, Violation};
use super::sched::HarnessError;
use super::script::ScenarioKind;
use super::step::{ActorKind, Answer, Arg, Call, CallKind, Component};
use super::{RunEnd, World};

#[derive(Clone, Debug, Default)]
pub struct Observer {
    invariants: Invariants,
    /// The first step not yet seen with its answer.
    steps_seen: usize,
    writes_seen: usize,
    instance_log_seen: usize,
    /// Steps already seen released (their release-time events fed).
    released_seen: usize,
    /// Per step, whether its answer's events were fed: an outer step keeps the
    /// visit window open, and an answer is fed once, in step order.
    answered: Vec<bool>,
    /// Nexus's count of deleted VMM rows when last checked.
    rows_deleted: usize,
}

/// A report the sled agent sends, as an event; a call counts as sent once it is
/// parked at its gate, whether or not it has been let through.
fn sent(call: &Call) -> Option<Event> {
    match (call.kind, call.arg, call.vmm) {
        (CallKind::CpapiInstancesPut, Arg::State(state, gen), Some(vmm)) => {
            Some(Event::Sent { vmm, state, gen })
        }
        _ => None,
    }
}

/// The harness error for a row deleted by the step `last` (actor kind and
/// call), if it is not one that may delete rows.
fn undeclared_deletion(last: Option<(ActorKind, CallKind)>) -> Option<HarnessError> {
    match last {
        Some((actor, call)) if call.may_delete_rows(actor) => None,
        Some((actor, call)) => Some(HarnessError::UndeclaredDeletion { actor, call: call.label() }),
        None => Some(HarnessError::DeletedBeforeAnyStep),
    }
}

impl Observer {
    pub fn violations(&self) -> &[Violation] {
        self.invariants.violations()
    }

    pub fn invariants(&self) -> &Invariants {
        &self.invariants
    }

    /// Feeds the history the invariants depend on into `h`.
    pub fn hash_state<H: std::hash::Hasher>(&self, h: &mut H, rows: super::sched::RowProbe<'_>) {
        self.invariants.hash_state(h, rows);
    }

    pub fn check(&mut self, world: &World) {
        let names = || world.names();
        // Gathered first, then fed: the visits run under the scheduler's and Nexus's
        // locks, and wording a violation takes Nexus's lock again.
        let mut events = Vec::new();
        let now = world.sched.steps_len();

        // Released steps, from the first one whose answer was still outstanding:
        // an outer call (a user operation) answers only after the calls it makes.
        let mut first_pending = None;
        let released_seen = self.released_seen;
        let answered = &mut self.answered;
        world.sched.visit_steps_since(self.steps_seen, |i, step| {
            events.extend(sent(&step.call).map(|e| (now, e)));
            // Seen once, when released (an outer step is visited again until answered).
            // A user's operation, a vanish, or a Nexus request refused or lost on
            // its way to the sled agent: the scenario may rightly fail then. A
            // fault on a report (sent again) or a watcher's check (it writes
            // nothing) leaves the scenario's steps as the test expects them.
            if step.timed_out && i >= released_seen {
                if let Arg::Instance(instance) = step.call.arg {
                    events.push((i + 1, Event::WaitTimedOut { instance }));
                }
            }
            let environment = (step.fault.is_some() && step.call.kind == CallKind::VmmPutState)
                || (matches!(step.call.from, Component::User | Component::Fault)
                    && step.call.kind != CallKind::Done);
            if environment && i >= released_seen {
                events.push((i + 1, Event::Environment));
            }
            if answered.len() <= i {
                answered.resize(i + 1, false);
            }
            if step.answer == Answer::Pending {
                first_pending.get_or_insert(i);
                return;
            }
            if std::mem::replace(&mut answered[i], true) {
                return;
            }
            match &step.answer {
                Answer::Gone { nexus_had } => {
                    if let Some(vmm) = step.call.vmm {
                        events.push((i + 1, Event::Gone { vmm, nexus_had: *nexus_had }));
                        if step.call.from == Component::Watcher {
                            events.push((i + 1, Event::WatcherSawGone { vmm }));
                        }
                    }
                }
                Answer::Vanished(Some((vmm, instance))) => {
                    events.push((i + 1, Event::Vanished { vmm: *vmm, instance: *instance }));
                }
                Answer::Restarted(lost) => {
                    events.extend(
                        lost.iter()
                            .map(|&(vmm, instance)| (i + 1, Event::Vanished { vmm, instance })),
                    );
                }
                Answer::Listed(rows) => {
                    let rows = rows.iter().map(|&(v, _, g)| (v, g)).collect();
                    events.push((i + 1, Event::Listed(rows)));
                }
                _ => {}
            }
        });
        self.steps_seen = first_pending.unwrap_or(now);
        self.released_seen = now;
        world.sched.visit_parked(|call| events.extend(sent(call).map(|e| (now, e))));
        self.writes_seen = world
            .nexus
            .visit_writes_since(self.writes_seen, |w| events.push((now, Event::Write(*w))));
        self.instance_log_seen =
            world.nexus.visit_instance_log_since(self.instance_log_seen, |e| {
                events.push((now, Event::Instance(*e)))
            });
        if let Some((instance, vmms)) =
            world.sim.two_vms_of_one_instance().map(|(i, a, b)| (i, [a, b]))
        {
            events.push((now, Event::TwoVms { instance, vmms }));
        }
        for (step, e) in &events {
            self.invariants.on(*step, e, &names);
        }
        self.check_deletions(world);
    }

    /// A row deleted since the last check was deleted by the step released
    /// last (checks come after every step but those of a replayed prefix,
    /// and each of those was checked in the run that took it first), which
    /// must be one the reduction knows may delete rows
    /// (`CallKind::may_delete_rows`).
    fn check_deletions(&mut self, world: &World) {
        let deleted = world.nexus.rows_deleted();
        if std::mem::replace(&mut self.rows_deleted, deleted) == deleted {
            return;
        }
        if let Some(e) = undeclared_deletion(world.sched.last_released()) {
            world.sched.record_error(e);
        }
    }

    pub fn finish(&mut self, world: &World, end: &RunEnd, kind: ScenarioKind) {
        self.check(world);
        let ending = match end {
            RunEnd::Finished => Ending::Finished,
            RunEnd::Stopped => Ending::Pruned,
            RunEnd::Deadlock(waiting) => {
                Ending::Deadlock(waiting.iter().map(ToString::to_string).collect())
            }
            RunEnd::StepBound(max) => Ending::Bound(format!("the step bound ({max})")),
        };
        let end = world.progress().end(kind, &world.nexus, ending);
        self.invariants.end(world.sched.steps_len(), &end, &|| world.names());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(last: Option<(ActorKind, CallKind)>, want: Option<HarnessError>) {
        assert_eq!(undeclared_deletion(last), want, "{last:?}");
    }

    /// A row deleted by a step the reduction does not expect to delete rows
    /// fails the run; one of the steps it lists does not.
    #[test]
    fn a_row_deleted_by_a_step_not_listed_as_deleting_is_a_harness_error() {
        check(Some((ActorKind::User, CallKind::VmmPutState)), None);
        check(Some((ActorKind::Update(1), CallKind::InstanceUpdate)), None);
        check(Some((ActorKind::Check(2), CallKind::VmmWrite)), None);
        check(Some((ActorKind::Scenario, CallKind::InstanceStop)), None);
        let report = HarnessError::UndeclaredDeletion {
            actor: ActorKind::Scenario,
            call: "cpapi_instances_put",
        };
        check(Some((ActorKind::Scenario, CallKind::CpapiInstancesPut)), Some(report));
        let poke = HarnessError::UndeclaredDeletion { actor: ActorKind::User, call: "vmm_poke" };
        check(Some((ActorKind::User, CallKind::VmmPoke)), Some(poke));
        check(None, Some(HarnessError::DeletedBeforeAnyStep));
    }
}
