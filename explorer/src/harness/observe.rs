//! Watches a gated run from outside and feeds the invariant engine: events come
//! from the answers the gates saw, the calls parked at them, and Nexus's logs,
//! never from printed text.

use super::invariants::{Ending, Event, Invariants, Violation};
use super::sched::HarnessError;
use super::script::ScenarioKind;
use super::step::{ActorKind, Answer, Arg, Call, CallKind, Component};
use super::{RunEnd, World};
use sled_agent_api::{InstanceUuid, PropolisUuid};

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
    /// Room for one check's events, kept between checks (empty in between).
    events: Vec<(usize, Event)>,
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

/// The step released last, as the deletion check weighs it: its actor's
/// kind, its call, and the instance the call is about (`None`: any).
type Released = (ActorKind, Call, Option<InstanceUuid>);

/// The harness error for VMM `vmm`'s row, of `instance`, deleted by the step
/// `last`, if the reduction does not charge that step with it: a step may
/// delete rows only if `CallKind::may_delete_rows` says so, and, unless it is
/// a watcher's, a check's or an update step's (which `FreeWatch` takes to
/// free anything), only rows of the instance its call is about, which is as
/// far as its footprint reaches (`reduction::footprint`, `within`).
fn undeclared_deletion(
    last: Option<Released>,
    vmm: PropolisUuid,
    instance: InstanceUuid,
) -> Option<HarnessError> {
    let Some((actor, call, about)) = last else {
        return Some(HarnessError::DeletedBeforeAnyStep);
    };
    let declared = call.kind.may_delete_rows(actor)
        && !unlisted_in_test(call.kind)
        && (actor.reaches_any_row() || about.is_none_or(|about| about == instance));
    (!declared).then(|| HarnessError::UndeclaredDeletion { actor, call: call.kind.label(), vmm })
}

/// A test takes a call off `may_delete_rows`'s list on its thread, to see
/// the check fire in a run.
#[cfg(not(test))]
fn unlisted_in_test(_: CallKind) -> bool {
    false
}

#[cfg(test)]
fn unlisted_in_test(kind: CallKind) -> bool {
    tests::UNLISTED.with(|u| u.get() == Some(kind))
}

/// A test takes a step's instance for another on its thread, to see the
/// instance rule fire in a run.
#[cfg(not(test))]
fn misdirected_in_test(about: Option<InstanceUuid>) -> Option<InstanceUuid> {
    about
}

#[cfg(test)]
fn misdirected_in_test(about: Option<InstanceUuid>) -> Option<InstanceUuid> {
    let other = |i: InstanceUuid| InstanceUuid::from_u128(i.into_untyped().as_u128() ^ 1);
    if tests::MISDIRECTED.with(std::cell::Cell::get) {
        about.map(other)
    } else {
        about
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
        let mut events = std::mem::take(&mut self.events);
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
        for (step, e) in events.drain(..) {
            self.invariants.on(step, &e, &names);
        }
        self.events = events;
        self.check_deletions(world);
    }

    /// A row deleted since the last check was deleted by the step released
    /// last (checks come after every step but those of a replayed prefix,
    /// and each of those was checked in the run that took it first), which
    /// must be one the reduction charges with it (`undeclared_deletion`: a
    /// kind `CallKind::may_delete_rows` lists, and the row's instance within
    /// the step's reach).
    fn check_deletions(&mut self, world: &World) {
        let deleted = world.nexus.rows_deleted();
        if deleted == self.rows_deleted {
            return;
        }
        let rows = world.nexus.deleted_rows_since(self.rows_deleted);
        self.rows_deleted = deleted;
        let last = world
            .sched
            .last_released()
            .map(|(a, c)| (a, c, misdirected_in_test(world.instance_of_call(&c))));
        for (vmm, instance) in rows {
            if let Some(e) = undeclared_deletion(last, vmm, instance) {
                world.sched.record_error(e);
            }
        }
    }

    pub fn finish(&mut self, world: &World, end: &RunEnd, kind: ScenarioKind) {
        self.check(world);
        let ending = match end {
            RunEnd::Finished => Ending::Finished,
            // The explorer stopped it at a situation it had already expanded:
            // the prefix of runs judged elsewhere, so no end rule reads it.
            RunEnd::Stopped => return,
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

    thread_local! {
        pub(super) static UNLISTED: std::cell::Cell<Option<CallKind>> =
            const { std::cell::Cell::new(None) };
        pub(super) static MISDIRECTED: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }

    const VMM: PropolisUuid = PropolisUuid::from_u128(7);
    const MINE: InstanceUuid = InstanceUuid::from_u128(1);
    const OTHER: InstanceUuid = InstanceUuid::from_u128(2);

    fn check(actor: ActorKind, kind: CallKind, about: Option<InstanceUuid>, ok: bool) {
        let call = Call {
            kind,
            from: Component::Nexus,
            to: Component::SledAgent,
            vmm: None,
            arg: Arg::None,
        };
        let want =
            (!ok).then(|| HarnessError::UndeclaredDeletion { actor, call: kind.label(), vmm: VMM });
        assert_eq!(
            undeclared_deletion(Some((actor, call, about)), VMM, MINE),
            want,
            "{actor} {kind:?} {about:?}"
        );
    }

    /// A row deleted by a step the reduction does not charge with it fails
    /// the run: a step of a kind not listed as deleting rows, or one about
    /// another instance than the row's.
    #[test]
    fn a_row_deleted_by_a_step_not_charged_with_it_is_a_harness_error() {
        check(ActorKind::User, CallKind::VmmPutState, Some(MINE), true);
        check(ActorKind::User, CallKind::VmmPutState, None, true);
        check(ActorKind::User, CallKind::VmmPutState, Some(OTHER), false);
        check(ActorKind::Scenario, CallKind::InstanceStop, Some(MINE), true);
        check(ActorKind::Scenario, CallKind::CpapiInstancesPut, Some(MINE), false);
        check(ActorKind::User, CallKind::VmmPoke, Some(MINE), false);
        // A watcher's, a check's or an update step's step may delete any row.
        check(ActorKind::Update(1), CallKind::InstanceUpdate, Some(OTHER), true);
        check(ActorKind::Check(2), CallKind::VmmWrite, Some(OTHER), true);
        assert_eq!(undeclared_deletion(None, VMM, MINE), Some(HarnessError::DeletedBeforeAnyStep));
    }

    /// The check runs in a run, after the step that deleted the row: the
    /// stop race's happy run deletes its VMM's row in the update step, which
    /// passes as the list stands and fails once its call is taken off it.
    #[test]
    fn a_run_checks_each_deletion_against_the_step_that_made_it() {
        let config = crate::harness::RunConfig {
            scenario: ScenarioKind::StopRace,
            ..crate::harness::RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
        };
        let errors = |unlisted: Option<CallKind>| {
            UNLISTED.with(|u| u.set(unlisted));
            let r = crate::harness::run(&config, &mut crate::harness::schedule::Happy);
            UNLISTED.with(|u| u.set(None));
            let r = r.expect("runs");
            assert!(r.vmms.iter().any(|v| v.deleted), "the run deletes a row");
            r.harness_errors
        };
        assert_eq!(errors(None), []);
        let found = errors(Some(CallKind::InstanceUpdate));
        assert!(
            matches!(
                found[..],
                [HarnessError::UndeclaredDeletion {
                    actor: ActorKind::Update(_),
                    call: "instance_update",
                    ..
                }]
            ),
            "{found:?}"
        );
    }

    /// The instance rule in a run: a search of stop-race with a user
    /// operation and a fault passes as the calls' instances stand, and fails
    /// at the first row a step of the scenario or the user deletes once each
    /// call is taken to be about another instance (a watcher's, a check's or
    /// an update step's deletions stay allowed).
    #[test]
    fn a_search_checks_each_deletion_against_the_instance_of_its_step() {
        let run = crate::harness::RunConfig {
            scenario: ScenarioKind::StopRace,
            user_ops: 1,
            faults: 1,
            ..crate::harness::RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
        };
        let cfg =
            crate::explore::ExploreConfig { threads: 1, ..crate::explore::ExploreConfig::new(run) };
        let search = |misdirected: bool| {
            MISDIRECTED.with(|m| m.set(misdirected));
            let r = crate::explore::explore(&cfg);
            MISDIRECTED.with(|m| m.set(false));
            r
        };
        assert!(search(false).is_ok_and(|r| r.coverage == crate::explore::Coverage::Exhaustive));
        let e = search(true).map(|r| r.runs).expect_err("a deletion outside its step's instance");
        let crate::harness::RunError::Harness(HarnessError::UndeclaredDeletion { actor, .. }) = e
        else {
            panic!("{e:?}")
        };
        assert!(!actor.reaches_any_row(), "{actor}");
    }

    /// The end rules read a run's end through `finish`: the legacy stop
    /// race's schedule where the watcher fails the VMM breaks rule 9 (the
    /// scenario fails) once the run is over, and at no step before.
    #[test]
    fn the_end_rules_judge_a_run_once_it_is_over() {
        const FAILED: &str = "scenario.instance_create scenario.vmm_register \
            scenario.vmm_put_state scenario.instance_stop scenario.vmm_put_state \
            scenario.vmm_poke scenario.cpapi_instances_put*3 watcher.vmm_list \
            check1.vmm_get_state check1.vmm_write scenario.cpapi_instances_put \
            check1.instance_update scenario.wait_for_state watcher.vmm_list restart.done";
        let config = crate::harness::RunConfig {
            scenario: ScenarioKind::StopRace,
            ordering: sim_sled_agent::RemovalOrdering::RemoveThenPublish,
            ..crate::harness::RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
        };
        let legacy = crate::replay(&config, FAILED).expect("replays");
        assert_eq!(legacy.end, RunEnd::Finished);
        let last = legacy.steps.len();
        let at_end: Vec<_> = legacy.violations.iter().filter(|v| v.invariant == 9).collect();
        assert!(!at_end.is_empty(), "{:?}", legacy.violations);
        assert!(at_end.iter().all(|v| v.step == last), "{at_end:?}");
        assert!(at_end.iter().any(|v| v.message.contains("scenario failed")), "{at_end:?}");
    }
}
