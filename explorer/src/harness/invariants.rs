//! The invariants as one engine fed by events, so that explore, scenario and
//! stress judge a run by the same rules, however they come to see what happened.
//!
//! The explorer and the scenario derive events from the gates and from Nexus's
//! logs after every step; stress derives the same events from wrappers around the
//! real components and from the same logs once a run is over. Every rule below is
//! stated over events alone, so no mode can give one a different meaning.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use nexus_stub::{DbVmmState, ExternalState, InstanceChange, InstanceEvent, VmmWrite};
use serde::Serialize;
use sled_agent_api::{Generation, InstanceUuid, PropolisUuid, VmmState};

use super::sched::RowProbe;
use super::Names;

/// The invariants: number, name, and what each says.
pub const INVARIANTS: [(u8, &str, &str); 12] = [
    (1, "gone-only-when-terminal", "a sled agent answers NoSuchVmm for a VMM only once Nexus has recorded its terminal state, or once it truly vanished (or before it was registered)"),
    (2, "failed-only-if-vanished", "Nexus records Failed for a VMM only if that VMM truly vanished, never for one its sled agent still has or reported terminal"),
    (3, "terminal-is-final", "a terminal state Nexus recorded for a VMM (Destroyed or Failed) is never replaced by a different state"),
    (4, "generations-increase", "stored generations never decrease; every applied write has a greater generation"),
    (5, "nothing-lost", "every state a sled agent sent is, by the end, recorded by Nexus or superseded by a newer generation (a failed report is sent again until acknowledged), unless Nexus unwound the VMM's start"),
    (6, "vanished-ends-failed", "a VMM that vanished is not left live: once a watcher pass begun after the vanish lists it as Nexus ends up holding it and is told it is gone, Nexus ends holding it Failed"),
    (7, "last-request-wins", "an instance ends in the state its user's last request asked for (stopped after stop; running after start or reboot; a request that failed or overlapped another asks nothing), one its user stopped is never failed unless its VMM vanished, and one its user last wanted stopped (the last stop, start or reboot begun, or a start that found it going) is never auto-restarted"),
    (8, "terminates", "the run ends: no actor is left waiting for a call that can never proceed, nor the scenario's wait for a state timed out (unless what would move it on lies past the bounds: a watcher pass after a vanish, a report to send again)"),
    (9, "scenario-as-tested", "the scenario's steps go as the real test expects (disk-move: the disk ends on instance 2), in runs with no user operation, no vanish, and no Nexus request to the sled agent refused or lost"),
    (10, "one-reservation-per-instance", "an instance never holds two sled reservations at once (local storage is allocated once per reservation on that promise), and by the end every reservation still held is its instance's active VMM's: a start that unwound and an update step that unlinked a VMM let go of theirs"),
    (11, "restart-not-abandoned", "a start auto-restart began on an instance meant to run that then fails and unwinds, with no stop asked for meanwhile, leaves the instance where auto-restart looks again, never stopped with its intent Running, which no later pass would find"),
    (12, "one-vm-per-instance", "at most one VM runs per instance: a VMM its sled agent holds short of Destroyed or Failed, or a VM the sled agent lost track of in a restart and that still runs"),
];

/// The rules `Invariants::end` judges once a run is over (7 and 10 are judged
/// at each step too): a run the step bound cut short leaves these unjudged.
pub const END_RULES: [u8; 6] = [5, 6, 7, 8, 9, 10];

pub fn invariant_text(n: u8) -> &'static str {
    INVARIANTS.iter().find(|(k, _, _)| *k == n).map_or("?", |(_, _, t)| t)
}

pub fn invariant_name(n: u8) -> &'static str {
    INVARIANTS.iter().find(|(k, _, _)| *k == n).map_or("?", |(_, name, _)| name)
}

/// Something that happened in a run, as far as the invariants care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A sled agent answered NoSuchVmm for `vmm`; Nexus held `nexus_had` then.
    Gone { vmm: PropolisUuid, nexus_had: Option<(DbVmmState, Generation)> },
    /// A sled agent sent a state report to Nexus (sent: whatever becomes of it).
    Sent { vmm: PropolisUuid, state: VmmState, gen: Generation },
    /// Nexus attempted a VMM write; `applied` says whether it took.
    Write(VmmWrite),
    /// An instance changed, from Nexus's instance log.
    Instance(InstanceEvent),
    /// A VMM of `instance` left its sled agent without a report.
    Vanished { vmm: PropolisUuid, instance: InstanceUuid },
    /// The watcher listed these VMMs, at these generations, to check (a pass began).
    Listed(Vec<(PropolisUuid, Generation)>),
    /// The watcher's check of a VMM was answered NoSuchVmm.
    WatcherSawGone { vmm: PropolisUuid },
    /// The environment acted: a user's extra operation, or a fault.
    Environment,
    /// The scenario's wait for `instance` to come to rest timed out: nothing
    /// else could go on.
    WaitTimedOut { instance: InstanceUuid },
    /// Two VMs of `instance` run at once on its sled.
    TwoVms { instance: InstanceUuid, vmms: [PropolisUuid; 2] },
}

/// How a run stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every actor finished.
    Finished,
    /// Actors were left and none could move: they are named.
    Deadlock(Vec<String>),
    /// A bound (steps or time) cut the run short: its end cannot be judged.
    Bound(String),
}

/// What the end-of-run rules read.
#[derive(Clone, Debug)]
pub struct End {
    pub ending: Ending,
    /// The scenario's own outcome: `None` if it never got to the end of its steps.
    pub outcome: Option<Result<(), String>>,
    /// Every instance's user-visible state at the end.
    pub instances: Vec<(InstanceUuid, ExternalState)>,
    /// Every VMM row Nexus holds at the end: its state and generation.
    pub vmms: Vec<(PropolisUuid, DbVmmState, Generation)>,
    /// Every instance's active VMM at the end, for those that have one.
    pub active: Vec<(InstanceUuid, PropolisUuid)>,
    /// disk-move: whether the disk ended on instance 2; `None` where not asked.
    pub disk_on_second: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: u8,
    /// The step after which it was seen (0 where a mode has no steps).
    pub step: usize,
    pub message: String,
}

/// What a user's last request asked an instance to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Asked {
    Stopped,
    Running,
}

/// An instance's user requests, as rule 7 follows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Requests {
    /// What the last request to end alone and well asked for.
    asked: Option<Asked>,
    /// Requests begun and not yet ended.
    in_flight: u8,
    /// What the one request in flight asks for, if only one has been since
    /// none was; `None` once two overlapped.
    pending: Option<Asked>,
    /// Whether the last request to end alone and well was a stop: a later one
    /// that fails or overlaps another does not lift it.
    stopped: bool,
    /// What the last request begun asked for, whatever became of it: omicron
    /// records it as the intended state before it calls the sled agent, and
    /// auto-restart must honour it.
    intent: Option<Asked>,
    /// An auto-restart began while the instance was meant to run, and no stop
    /// was asked for since: its start failing is none of the user's doing. (A
    /// stop that was refused, then a start, leave it cleared: a case of #9174
    /// this rule lets pass.)
    restart_meant: bool,
}

impl Requests {
    fn begin(&mut self, target: Asked) {
        self.intent = Some(target);
        self.asked = None;
        self.pending = (self.in_flight == 0).then_some(target);
        self.in_flight = self.in_flight.saturating_add(1);
    }

    fn end(&mut self, ok: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.asked = self.pending.take().filter(|_| ok);
            if let Some(asked) = self.asked {
                self.stopped = asked == Asked::Stopped;
            }
        } else {
            // Another request is still going: which one wins is not defined.
            self.pending = None;
        }
    }
}

/// The engine: what the rules remember, and what they found.
#[derive(Clone, Debug, Default)]
pub struct Invariants {
    violations: Vec<Violation>,
    /// Per VMM, the newest generation Nexus applied.
    stored: BTreeMap<PropolisUuid, Generation>,
    /// Per VMM, the newest generation its sled agent sent that Nexus has not
    /// yet applied (or superseded): once it has, the entry goes, so runs that
    /// differ only in reports long settled are one situation.
    unacked: BTreeMap<PropolisUuid, Generation>,
    /// Per VMM, the first terminal state Nexus applied.
    terminal: BTreeMap<PropolisUuid, VmmState>,
    /// VMMs that vanished: the generation a watcher pass begun after the vanish
    /// last listed each at, and whether that pass's check then got NoSuchVmm (a
    /// refused or inconclusive check writes nothing, rightly).
    vanished: BTreeMap<PropolisUuid, (Option<Generation>, bool)>,
    /// Instances one of whose VMMs vanished: rule 7 no longer judges their
    /// requests' outcomes, only auto-restart against their intent. Never
    /// shrinks, which `hash_state` relies on.
    lost: BTreeSet<InstanceUuid>,
    /// Per instance, its user requests.
    requests: BTreeMap<InstanceUuid, Requests>,
    /// The sled reservations held, by VMM, and the instance each is for.
    reservations: BTreeMap<PropolisUuid, InstanceUuid>,
    /// Whether a user's extra operation or a fault touched the run.
    environment: bool,
    /// Instances the scenario's wait for timed out.
    timed_out: BTreeSet<InstanceUuid>,
    /// Why the end could not be judged, if a bound cut the run short.
    inconclusive: Option<String>,
}

impl Invariants {
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    pub fn is_broken(&self, invariant: u8) -> bool {
        self.violations.iter().any(|v| v.invariant == invariant)
    }

    /// Set when a bound cut the run short and no end rule could be applied.
    pub fn inconclusive(&self) -> Option<&str> {
        self.inconclusive.as_deref()
    }

    /// Feeds everything the rules remember into `h`: two runs that agree here and
    /// everywhere else are judged the same from now on.
    /// `rows` is Nexus's rows as the fingerprint weighs them (`RowProbe`).
    pub fn hash_state<H: Hasher>(&self, h: &mut H, rows: RowProbe<'_>) {
        self.stored.hash(h);
        self.unacked.hash(h);
        self.terminal.hash(h);
        // A listing of a vanished VMM at a generation its row has since passed
        // can never be the row's generation at the end (rows never lose
        // generations), so rule 6 can no longer break on it, whether the check
        // was told "gone" or not: it weighs as no listing, which a later
        // listing replaces alike. `rows` knows no row when generations are not
        // checked (`World::row_probe`): a row may then go back, and nothing merges.
        h.write_usize(self.vanished.len());
        for (&vmm, &(listed, told)) in &self.vanished {
            let passed = listed.is_some_and(|g| rows(vmm).is_some_and(|(now, _)| now > g.as_u64()));
            (vmm, if passed { (None, false) } else { (listed, told) }).hash(h);
        }
        self.lost.hash(h);
        // Of an instance one of whose VMMs vanished, rule 7 weighs only what
        // its user last meant (auto-restart must honour it even then), and
        // rule 11 whether a restart was meant: what its requests asked, and
        // whether they ended, is judged no more.
        h.write_usize(self.requests.len());
        for (id, r) in &self.requests {
            if self.lost.contains(id) {
                (id, r.intent, r.restart_meant).hash(h);
            } else {
                (id, r).hash(h);
            }
        }
        self.reservations.hash(h);
        self.environment.hash(h);
        self.timed_out.hash(h);
        // As a set: which broke first is the path's, not the situation's, and two
        // orders of independent steps that break two invariants meet here.
        let broken = self.violations.iter().fold(0u64, |m, v| m | 1u64 << (v.invariant % 64));
        broken.hash(h);
    }

    /// Records the first break of each invariant; later ones of the same add nothing.
    fn broke(&mut self, invariant: u8, step: usize, message: impl FnOnce() -> String) {
        if !self.is_broken(invariant) {
            self.violations.push(Violation { invariant, step, message: message() });
        }
    }

    /// Applies one event seen after `step` steps. `names` is only called to word a
    /// violation, which is rare, so it may be costly.
    pub fn on(&mut self, step: usize, event: &Event, names: &dyn Fn() -> Names) {
        match *event {
            Event::Gone { vmm, nexus_had } => {
                // Nexus ended it (terminal, or a start it unwound), has not had it
                // registered yet (Creating: the sled agent rightly knows nothing of
                // it; asking is the caller's mistake), or it vanished.
                let terminal = nexus_had.is_some_and(|(s, _)| {
                    s.is_terminal() || matches!(s, DbVmmState::SagaUnwound | DbVmmState::Creating)
                });
                if !terminal && !self.vanished.contains_key(&vmm) {
                    let held = nexus_had.map_or("no record".into(), |(s, g)| format!("{s}/g{g}"));
                    self.broke(1, step, || {
                        format!(
                            "the sled agent answered NoSuchVmm for {} while Nexus held it at {held}",
                            names().vmm(vmm)
                        )
                    });
                }
            }
            Event::Sent { vmm, gen, .. } => {
                if self.stored.get(&vmm).is_none_or(|&s| s < gen) {
                    let e = self.unacked.entry(vmm).or_insert(gen);
                    *e = (*e).max(gen);
                }
            }
            Event::Write(w) => self.on_write(step, &w, names),
            Event::Instance(InstanceEvent { instance_id, change }) => match change {
                InstanceChange::Reserved { propolis_id } => {
                    self.on_reserved(step, instance_id, propolis_id, names);
                }
                InstanceChange::Released { propolis_id } => {
                    self.reservations.remove(&propolis_id);
                }
                _ => self.on_instance(step, instance_id, change, names),
            },
            Event::Vanished { vmm, instance } => {
                // An outer step's events may be fed again: keep what a pass saw.
                self.vanished.entry(vmm).or_insert((None, false));
                self.lost.insert(instance);
            }
            Event::Listed(ref rows) => {
                for &(vmm, gen) in rows {
                    if let Some(seen) = self.vanished.get_mut(&vmm) {
                        *seen = (Some(gen), false);
                    }
                }
            }
            Event::WatcherSawGone { vmm } => {
                if let Some(seen) = self.vanished.get_mut(&vmm) {
                    seen.1 |= seen.0.is_some();
                }
            }
            Event::Environment => self.environment = true,
            Event::WaitTimedOut { instance } => {
                self.timed_out.insert(instance);
            }
            Event::TwoVms { instance, vmms: [a, b] } => self.broke(12, step, || {
                let n = names();
                let (i, a, b) = (n.instance(instance), n.vmm(a), n.vmm(b));
                format!("{i} runs two VMs at once: {a} and {b}")
            }),
        }
    }

    fn on_write(&mut self, step: usize, w: &VmmWrite, names: &dyn Fn() -> Names) {
        if !w.applied {
            return;
        }
        let vmm = || names().vmm(w.propolis_id);
        if w.gen <= w.prev_gen {
            self.broke(4, step, || {
                format!("{}: {}/g{} was applied over stored g{}", vmm(), w.state, w.gen, w.prev_gen)
            });
        }
        let stored = self.stored.entry(w.propolis_id).or_insert(w.gen);
        *stored = (*stored).max(w.gen);
        if self.unacked.get(&w.propolis_id).is_some_and(|&u| u <= w.gen) {
            self.unacked.remove(&w.propolis_id);
        }
        if w.state == VmmState::Failed && !self.vanished.contains_key(&w.propolis_id) {
            self.broke(2, step, || {
                format!("{} was recorded Failed although it never vanished", vmm())
            });
        }
        match self.terminal.get(&w.propolis_id) {
            Some(&first) if first != w.state => self.broke(3, step, || {
                format!("{}: recorded {first}, then replaced by {}/g{}", vmm(), w.state, w.gen)
            }),
            Some(_) => {}
            None => {
                if w.state.is_terminal() {
                    self.terminal.insert(w.propolis_id, w.state);
                }
            }
        }
    }

    /// Rule 10: a reservation for an instance that holds one already.
    fn on_reserved(
        &mut self,
        step: usize,
        id: InstanceUuid,
        propolis_id: PropolisUuid,
        names: &dyn Fn() -> Names,
    ) {
        let held = self.reservations.iter().find(|(_, i)| **i == id).map(|(v, _)| *v);
        if let Some(held) = held {
            self.broke(10, step, || {
                let n = names();
                format!(
                    "{} was reserved for {} while {} held a reservation",
                    n.vmm(propolis_id),
                    n.instance(id),
                    n.vmm(held)
                )
            });
        }
        self.reservations.insert(propolis_id, id);
    }

    fn on_instance(
        &mut self,
        step: usize,
        id: InstanceUuid,
        change: InstanceChange,
        names: &dyn Fn() -> Names,
    ) {
        let r = self.requests.entry(id).or_default();
        let stopped = r.stopped && !self.lost.contains(&id);
        match change {
            InstanceChange::StopRequested => {
                r.restart_meant = false;
                r.begin(Asked::Stopped);
            }
            InstanceChange::StartRequested { auto_restart: false }
            | InstanceChange::RebootRequested => r.begin(Asked::Running),
            InstanceChange::RequestEnded { ok } => r.end(ok),
            // Even a VMM that vanished does not excuse this one: a Failed
            // instance its user last asked to stop stays at rest.
            InstanceChange::StartRequested { auto_restart: true } => {
                r.restart_meant = r.intent == Some(Asked::Running);
                if r.intent == Some(Asked::Stopped) {
                    self.broke(7, step, || {
                        format!("{}, stopped by the user, was auto-restarted", names().instance(id))
                    });
                }
            }
            InstanceChange::Failed => {
                if stopped {
                    self.broke(7, step, || {
                        format!("{}, stopped by the user, went failed", names().instance(id))
                    });
                }
            }
            InstanceChange::StartIntended => r.intent = Some(Asked::Running),
            InstanceChange::StartUnwound { auto_restart: true } => {
                if std::mem::take(&mut r.restart_meant) {
                    self.broke(11, step, || {
                        format!(
                            "{}'s auto-restart unwound and left it stopped, though it is meant to run",
                            names().instance(id)
                        )
                    });
                }
            }
            // Reservations are rule 10's (`on`, `on_reserved`).
            InstanceChange::StartUnwound { auto_restart: false }
            | InstanceChange::Stopped
            | InstanceChange::Reserved { .. }
            | InstanceChange::Released { .. } => {}
        }
    }

    /// Applies the end-of-run rules after `step` steps.
    pub fn end(&mut self, step: usize, end: &End, names: &dyn Fn() -> Names) {
        match &end.ending {
            Ending::Finished => {}
            Ending::Bound(why) => {
                self.inconclusive = Some(why.clone());
                return;
            }
            Ending::Deadlock(waiting) => self.broke(8, step, || {
                format!("no call can proceed; still waiting: {}", waiting.join(", "))
            }),
        }
        // A wait timed out is the scenario stuck, unless what would move it on
        // is past the bounds: a watcher pass to fail a VMM that vanished, or a
        // report the sled agent would send again.
        let stuck = self.timed_out.iter().find(|i| !self.lost.contains(i));
        if let (Some(&id), true) = (stuck, self.unacked.is_empty()) {
            self.broke(8, step, || {
                format!(
                    "the scenario's wait for {} timed out: nothing moves it on",
                    names().instance(id)
                )
            });
        }
        self.end_of_vmms(step, end, names);
        // Nothing leaks: once the run is over, every reservation still held is
        // its instance's active VMM's (a start that unwound, and an update step
        // that unlinked a VMM, let go of theirs).
        let leaked = self.reservations.iter().find(|&(v, i)| !end.active.contains(&(*i, *v)));
        if let Some((&vmm, &id)) = leaked {
            self.broke(10, step, || {
                let n = names();
                format!(
                    "{}'s reservation for {} was still held at the end, though it is not the instance's active VMM",
                    n.vmm(vmm),
                    n.instance(id)
                )
            });
        }
        for &(id, state) in &end.instances {
            let want = match self.requests.get(&id).and_then(|r| r.asked) {
                _ if self.lost.contains(&id) => None,
                Some(Asked::Stopped) => Some(ExternalState::Stopped),
                Some(Asked::Running) => Some(ExternalState::Running),
                None => None,
            };
            if let Some(want) = want.filter(|&w| w != state) {
                self.broke(7, step, || {
                    format!(
                        "{} ended {state}, not {want} as its user last asked",
                        names().instance(id)
                    )
                });
            }
        }
        if self.environment {
            return;
        }
        match &end.outcome {
            Some(Ok(())) => {}
            Some(Err(msg)) => self.broke(9, step, || format!("scenario failed: {msg}")),
            None => self.broke(9, step, || "the scenario did not get to its end".into()),
        }
        if end.disk_on_second == Some(false) {
            self.broke(9, step, || "the disk did not end attached to inst2".into());
        }
    }

    /// Rules 5 and 6, on what Nexus holds for each VMM at the end.
    fn end_of_vmms(&mut self, step: usize, end: &End, names: &dyn Fn() -> Names) {
        for &(vmm, state, gen) in &end.vmms {
            let vanished = self.vanished.get(&vmm).copied();
            // A VMM whose start Nexus unwound is abandoned, not lost: Nexus
            // refuses what its sled agent says of it afterwards.
            let unwound = state == DbVmmState::SagaUnwound;
            if let Some(&sent) = self.unacked.get(&vmm) {
                if vanished.is_none() && !unwound && gen < sent {
                    self.broke(5, step, || {
                        format!(
                            "{} ended at g{gen} in Nexus, but its sled agent sent g{sent}",
                            names().vmm(vmm)
                        )
                    });
                }
            }
            let ended = state.is_terminal() || state == DbVmmState::SagaUnwound;
            if vanished == Some((Some(gen), true)) && !ended {
                self.broke(6, step, || {
                    format!(
                        "{} vanished, and a watcher pass begun after listed it at {state}/g{gen}, yet Nexus ended holding it so",
                        names().vmm(vmm)
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMM: PropolisUuid = PropolisUuid::from_u128(0x2_0000_0000_0000_0000_0000_0002);
    const INST: InstanceUuid = InstanceUuid::from_u128(0x1_0000_0000_0000_0000_0000_0001);

    fn g(n: u64) -> Generation {
        (0..n.saturating_sub(1)).fold(Generation::new(), |g, _| g.next())
    }

    fn write(state: VmmState, gen: u64, prev: u64, applied: bool) -> Event {
        Event::Write(VmmWrite { propolis_id: VMM, state, gen: g(gen), prev_gen: g(prev), applied })
    }

    fn sent(state: VmmState, gen: u64) -> Event {
        Event::Sent { vmm: VMM, state, gen: g(gen) }
    }

    fn inst(change: InstanceChange) -> Event {
        Event::Instance(InstanceEvent { instance_id: INST, change })
    }

    /// A request that began and ended, well or not.
    fn request(change: InstanceChange, ok: bool) -> [Event; 2] {
        [inst(change), inst(InstanceChange::RequestEnded { ok })]
    }

    fn vanished() -> Event {
        Event::Vanished { vmm: VMM, instance: INST }
    }

    fn finished(state: ExternalState) -> End {
        End {
            ending: Ending::Finished,
            outcome: Some(Ok(())),
            instances: vec![(INST, state)],
            vmms: vec![(VMM, DbVmmState::Reported(VmmState::Destroyed), g(7))],
            active: Vec::new(),
            disk_on_second: None,
        }
    }

    /// An end at which Nexus holds the VMM at `state`/`gen`.
    fn ending_with(state: VmmState, gen: u64) -> End {
        End {
            vmms: vec![(VMM, DbVmmState::Reported(state), g(gen))],
            ..finished(ExternalState::Stopped)
        }
    }

    /// Feeds `events`, then `end` if given; returns the invariants broken, in order.
    fn check(events: &[Event], end: Option<End>) -> Vec<u8> {
        let mut inv = Invariants::default();
        let names = Names::default;
        for (i, e) in events.iter().enumerate() {
            inv.on(i + 1, e, &names);
        }
        if let Some(end) = end {
            inv.end(events.len(), &end, &names);
        }
        inv.violations().iter().map(|v| v.invariant).collect()
    }

    /// The stop of #7282 as it should go: every rule holds.
    fn clean_stop() -> Vec<Event> {
        let mut v = Vec::new();
        v.extend(request(InstanceChange::StartRequested { auto_restart: false }, true));
        v.push(write(VmmState::Starting, 2, 1, true));
        v.extend(request(InstanceChange::StopRequested, true));
        v.extend([
            write(VmmState::Stopping, 3, 2, true),
            sent(VmmState::Destroyed, 7),
            write(VmmState::Destroyed, 7, 3, true),
            // A late 404 once Nexus holds the terminal state is fine.
            Event::Gone {
                vmm: VMM,
                nexus_had: Some((DbVmmState::Reported(VmmState::Destroyed), g(7))),
            },
            write(VmmState::Failed, 7, 7, false),
            inst(InstanceChange::Stopped),
        ]);
        v
    }

    #[test]
    fn each_invariant_has_its_own_name_and_text() {
        assert!(invariant_text(1).starts_with("a sled agent answers NoSuchVmm"));
        assert!(invariant_text(7).contains("last request"));
        assert_eq!(invariant_name(3), "terminal-is-final");
        assert_eq!(invariant_name(10), "one-reservation-per-instance");
        assert_eq!(invariant_name(11), "restart-not-abandoned");
        assert_eq!(invariant_name(12), "one-vm-per-instance");
        assert_eq!((invariant_text(13), invariant_name(13)), ("?", "?"));
        let texts: BTreeSet<&str> = INVARIANTS.iter().map(|(k, _, _)| invariant_text(*k)).collect();
        let names: BTreeSet<&str> = INVARIANTS.iter().map(|(k, _, _)| invariant_name(*k)).collect();
        assert_eq!((texts.len(), names.len()), (INVARIANTS.len(), INVARIANTS.len()));
    }

    #[test]
    fn invariant_10_a_second_reservation_while_one_is_held() {
        let other = PropolisUuid::from_u128(0x2_0000_0000_0000_0000_0000_0003);
        let reserved = |propolis_id| inst(InstanceChange::Reserved { propolis_id });
        let released = |propolis_id| inst(InstanceChange::Released { propolis_id });
        let second_instance = Event::Instance(InstanceEvent {
            instance_id: InstanceUuid::from_u128(0x1_0000_0000_0000_0000_0000_0009),
            change: InstanceChange::Reserved { propolis_id: other },
        });
        // A start that lost and unwound released its own at once: too late.
        assert_eq!(check(&[reserved(VMM), reserved(other), released(other)], None), [10]);
        // One after the other, or one per instance, is what every start does.
        assert_eq!(check(&[reserved(VMM), released(VMM), reserved(other)], None), [] as [u8; 0]);
        assert_eq!(check(&[reserved(VMM), second_instance], None), [] as [u8; 0]);
        // At the end, a reservation still held must be the active VMM's.
        let running = End { active: vec![(INST, VMM)], ..finished(ExternalState::Running) };
        assert_eq!(check(&[reserved(VMM)], Some(running)), [] as [u8; 0]);
        let leaked = finished(ExternalState::Stopped);
        assert_eq!(check(&[reserved(VMM)], Some(leaked.clone())), [10]);
        assert_eq!(check(&[reserved(VMM), released(VMM)], Some(leaked)), [] as [u8; 0]);
    }

    #[test]
    fn invariant_11_an_auto_restart_that_unwinds_to_stopped() {
        let unwound = |auto_restart| inst(InstanceChange::StartUnwound { auto_restart });
        let [start, ended] = request(InstanceChange::StartRequested { auto_restart: false }, true);
        let restart = inst(InstanceChange::StartRequested { auto_restart: true });
        let stop = inst(InstanceChange::StopRequested);
        let none: [u8; 0] = [];
        let meant = [start, ended];
        assert_eq!(check(&[&meant[..], &[restart.clone(), unwound(true)]].concat(), None), [11]);
        // A user's own start that fails tells the user; a stop asked for while
        // auto-restart starts it is why it fails, and the user's to undo.
        assert_eq!(check(&[&meant[..], &[unwound(false)]].concat(), None), none);
        let stopped = [restart.clone(), stop, inst(InstanceChange::StartIntended), unwound(true)];
        assert_eq!(check(&[&meant[..], &stopped[..]].concat(), None), none);
        // Nor does an unwind count twice, or one before auto-restart began; and
        // auto-restart of an instance last stopped (the 2024 policy) breaks
        // rule 7, not 11, when it unwinds.
        assert_eq!(check(&[&meant[..], &[unwound(true)]].concat(), None), none);
        let stop_ended = inst(InstanceChange::RequestEnded { ok: true });
        let last_stopped =
            [inst(InstanceChange::StopRequested), stop_ended, restart, unwound(true)];
        assert_eq!(check(&[&meant[..], &last_stopped[..]].concat(), None), [7]);
    }

    #[test]
    fn a_clean_stop_breaks_nothing() {
        assert_eq!(check(&clean_stop(), Some(finished(ExternalState::Stopped))), Vec::<u8>::new());
    }

    #[test]
    fn invariant_1_a_404_while_nexus_holds_the_vmm_live() {
        let held = Some((DbVmmState::Reported(VmmState::Stopping), g(6)));
        assert_eq!(check(&[Event::Gone { vmm: VMM, nexus_had: held }], None), [1]);
        assert_eq!(check(&[Event::Gone { vmm: VMM, nexus_had: None }], None), [1]);
        // Not once it vanished, nor once Nexus unwound the start itself.
        assert_eq!(
            check(&[vanished(), Event::Gone { vmm: VMM, nexus_had: held }], None),
            Vec::<u8>::new()
        );
        let unwound = Some((DbVmmState::SagaUnwound, g(2)));
        assert_eq!(check(&[Event::Gone { vmm: VMM, nexus_had: unwound }], None), Vec::<u8>::new());
        // Nor before it was registered: asking then is the caller's mistake.
        let creating = Some((DbVmmState::Creating, g(1)));
        assert_eq!(check(&[Event::Gone { vmm: VMM, nexus_had: creating }], None), Vec::<u8>::new());
    }

    #[test]
    fn invariant_2_failed_recorded_for_a_vmm_that_never_vanished() {
        let failed = write(VmmState::Failed, 7, 6, true);
        assert_eq!(check(&[sent(VmmState::Destroyed, 7), failed.clone()], None), [2]);
        assert_eq!(check(std::slice::from_ref(&failed), None), [2]);
        // A Failed write that did not apply, or one for a VMM that vanished, is none.
        assert_eq!(check(&[write(VmmState::Failed, 7, 7, false)], None), Vec::<u8>::new());
        assert_eq!(check(&[vanished(), failed], None), Vec::<u8>::new());
    }

    #[test]
    fn invariant_3_a_terminal_state_replaced() {
        let destroyed = write(VmmState::Destroyed, 7, 6, true);
        // Failed over Destroyed: the user's stop of #7282's class (2 as well).
        assert_eq!(check(&[destroyed.clone(), write(VmmState::Failed, 8, 7, true)], None), [2, 3]);
        let running = write(VmmState::Running, 8, 7, true);
        assert_eq!(check(&[destroyed.clone(), running], None), [3]);
        // The same terminal state again is no replacement.
        assert_eq!(
            check(&[destroyed, write(VmmState::Destroyed, 8, 7, true)], None),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn invariant_4_an_applied_write_that_does_not_move_the_generation_on() {
        assert_eq!(check(&[write(VmmState::Running, 4, 4, true)], None), [4]);
        assert_eq!(check(&[write(VmmState::Running, 3, 5, true)], None), [4]);
        assert_eq!(check(&[write(VmmState::Running, 4, 4, false)], None), Vec::<u8>::new());
    }

    #[test]
    fn invariant_5_a_report_never_applied() {
        let end = || Some(ending_with(VmmState::Stopping, 6));
        assert_eq!(check(&[sent(VmmState::Destroyed, 7)], end()), [5]);
        // Applied, or superseded by a newer generation, or sent for a VMM that
        // vanished: nothing lost.
        assert_eq!(check(&[sent(VmmState::Stopping, 6)], end()), Vec::<u8>::new());
        assert_eq!(
            check(&[sent(VmmState::Stopping, 5), write(VmmState::Stopping, 6, 4, true)], end()),
            Vec::<u8>::new()
        );
        assert_eq!(check(&[sent(VmmState::Destroyed, 7), vanished()], end()), Vec::<u8>::new());
        // A run cut short is not judged.
        let cut = End { ending: Ending::Bound("b".into()), ..ending_with(VmmState::Stopping, 6) };
        assert_eq!(check(&[sent(VmmState::Destroyed, 7)], Some(cut)), Vec::<u8>::new());
        // Nor a VMM whose start Nexus unwound: it was abandoned, not lost.
        let unwound = End {
            vmms: vec![(VMM, DbVmmState::SagaUnwound, g(3))],
            ..finished(ExternalState::Stopped)
        };
        assert_eq!(check(&[sent(VmmState::Running, 4)], Some(unwound)), Vec::<u8>::new());
    }

    #[test]
    fn invariant_6_a_vanished_vmm_a_watcher_pass_saw_left_live() {
        let listed = |gen| Event::Listed(vec![(VMM, g(gen))]);
        let told = Event::WatcherSawGone { vmm: VMM };
        let end = || Some(ending_with(VmmState::Running, 4));
        assert_eq!(check(&[vanished(), listed(4), told.clone()], end()), [6]);
        // Listed but its check refused (a 503: nothing to write), listed before
        // the vanish, or at an older generation than Nexus ends with: no break.
        assert_eq!(check(&[vanished(), listed(4)], end()), Vec::<u8>::new());
        assert_eq!(check(&[listed(4), vanished(), told.clone()], end()), Vec::<u8>::new());
        assert_eq!(check(&[vanished(), listed(3), told.clone()], end()), Vec::<u8>::new());
        // Ended Failed, or unwound by Nexus.
        let failed = Some(ending_with(VmmState::Failed, 5));
        assert_eq!(check(&[vanished(), listed(4), told.clone()], failed), Vec::<u8>::new());
        let unwound = End {
            vmms: vec![(VMM, DbVmmState::SagaUnwound, g(4))],
            ..ending_with(VmmState::Running, 4)
        };
        assert_eq!(check(&[vanished(), listed(4), told], Some(unwound)), Vec::<u8>::new());
    }

    #[test]
    fn invariant_7_an_instance_that_does_not_end_as_its_user_last_asked() {
        let stop = request(InstanceChange::StopRequested, true);
        assert_eq!(check(&[&stop[..], &[inst(InstanceChange::Failed)]].concat(), None), [7]);
        let auto = inst(InstanceChange::StartRequested { auto_restart: true });
        assert_eq!(check(&[&stop[..], std::slice::from_ref(&auto)].concat(), None), [7]);
        assert_eq!(check(&stop, Some(finished(ExternalState::Starting))), [7]);
        let start = request(InstanceChange::StartRequested { auto_restart: false }, true);
        assert_eq!(check(&start, Some(finished(ExternalState::Stopped))), [7]);
        let reboot = request(InstanceChange::RebootRequested, true);
        assert_eq!(check(&reboot, Some(finished(ExternalState::Running))), Vec::<u8>::new());
        // A user's start after the stop lifts the rule.
        let later = [&stop[..], &start[..], &[inst(InstanceChange::Failed), auto]].concat();
        assert_eq!(check(&later, None), Vec::<u8>::new());
        // A request that failed asks nothing; nor do two that overlapped.
        let failed = request(InstanceChange::StopRequested, false);
        assert_eq!(check(&failed, Some(finished(ExternalState::Running))), Vec::<u8>::new());
        let overlap = [
            inst(InstanceChange::StopRequested),
            inst(InstanceChange::RebootRequested),
            inst(InstanceChange::RequestEnded { ok: true }),
            inst(InstanceChange::RequestEnded { ok: true }),
        ];
        assert_eq!(check(&overlap, Some(finished(ExternalState::Stopped))), Vec::<u8>::new());
        // A later request that fails does not lift the stop.
        let failed_start = request(InstanceChange::StartRequested { auto_restart: false }, false);
        let after = [&stop[..], &failed_start[..], &[inst(InstanceChange::Failed)]].concat();
        assert_eq!(check(&after, None), [7]);
        // The VMM vanished: Failed is the right end.
        assert_eq!(
            check(
                &[&stop[..], &[vanished(), inst(InstanceChange::Failed)]].concat(),
                Some(finished(ExternalState::Failed))
            ),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn invariants_8_and_9_deadlock_a_failed_step_or_the_disk_elsewhere() {
        let deadlock = End {
            ending: Ending::Deadlock(vec!["scenario".into()]),
            ..finished(ExternalState::Stopped)
        };
        assert_eq!(check(&[], Some(deadlock)), [8]);
        // The scenario's wait timed out: stuck, unless a vanished VMM's watcher
        // pass or a report to send again lies past the bounds.
        let timed_out = Event::WaitTimedOut { instance: INST };
        let end = || Some(finished(ExternalState::Stopped));
        assert_eq!(check(std::slice::from_ref(&timed_out), end()), [8]);
        assert_eq!(check(&[vanished(), timed_out.clone()], end()), Vec::<u8>::new());
        let pending = sent(VmmState::Destroyed, 7);
        let stopping = Some(ending_with(VmmState::Stopping, 6));
        assert_eq!(check(&[pending, timed_out], stopping), [5]);
        let failed =
            End { outcome: Some(Err("attach".into())), ..finished(ExternalState::Stopped) };
        assert_eq!(check(&[], Some(failed.clone())), [9]);
        let unfinished = End { outcome: None, ..finished(ExternalState::Stopped) };
        assert_eq!(check(&[], Some(unfinished)), [9]);
        let disk = End { disk_on_second: Some(false), ..finished(ExternalState::Stopped) };
        assert_eq!(check(&[], Some(disk)), [9]);
        // A run the environment touched is judged by the general rules alone.
        assert_eq!(check(&[Event::Environment], Some(failed)), Vec::<u8>::new());
    }

    #[test]
    fn a_bound_is_inconclusive_and_never_a_violation() {
        let mut inv = Invariants::default();
        inv.on(1, &inst(InstanceChange::StopRequested), &Names::default);
        let end = End {
            ending: Ending::Bound("the step bound (12)".into()),
            outcome: None,
            ..finished(ExternalState::Starting)
        };
        inv.end(12, &end, &Names::default);
        assert!(inv.violations().is_empty());
        assert_eq!(inv.inconclusive(), Some("the step bound (12)"));
    }

    fn hash_after(events: &[Event]) -> u64 {
        hash_with_row_at(events, 4)
    }

    /// The hash after `events`, with Nexus's row of every VMM at `gen`.
    fn hash_with_row_at(events: &[Event], gen: u64) -> u64 {
        hash_with_rows(events, &|_| Some((gen, false)))
    }

    fn hash_with_rows(events: &[Event], rows: RowProbe<'_>) -> u64 {
        let mut inv = Invariants::default();
        for e in events {
            inv.on(1, e, &Names::default);
        }
        let mut h = std::hash::DefaultHasher::new();
        inv.hash_state(&mut h, rows);
        h.finish()
    }

    /// Everything the rules remember moves the fingerprint: two runs that differ
    /// there may be judged differently later.
    #[test]
    fn the_hash_covers_everything_the_rules_remember() {
        let base = hash_after(&[]);
        let gone = Event::Gone { vmm: VMM, nexus_had: None };
        for (what, events) in [
            ("unacked report", vec![sent(VmmState::Destroyed, 7)]),
            ("stored generation", vec![write(VmmState::Running, 4, 3, true)]),
            ("terminal state", vec![write(VmmState::Destroyed, 7, 6, true)]),
            ("vanished", vec![vanished()]),
            ("listed after a vanish", vec![vanished(), Event::Listed(vec![(VMM, g(4))])]),
            (
                "told it is gone",
                vec![
                    vanished(),
                    Event::Listed(vec![(VMM, g(4))]),
                    Event::WatcherSawGone { vmm: VMM },
                ],
            ),
            ("request", vec![inst(InstanceChange::StopRequested)]),
            ("reservation", vec![inst(InstanceChange::Reserved { propolis_id: VMM })]),
            ("environment", vec![Event::Environment]),
            ("wait timed out", vec![Event::WaitTimedOut { instance: INST }]),
            ("broken", vec![gone]),
        ] {
            assert_ne!(hash_after(&events), base, "{what} is not in the hash");
        }
        assert_ne!(
            hash_after(&[vanished()]),
            hash_after(&[vanished(), Event::Listed(vec![(VMM, g(4))])])
        );
        // A listing at a generation the row has since passed can no longer break
        // rule 6, told "gone" or not: it weighs as no listing. At the row's
        // generation it still can.
        let listed_at_3 = [vanished(), Event::Listed(vec![(VMM, g(3))])];
        let told_at_3 = [&listed_at_3[..], &[Event::WatcherSawGone { vmm: VMM }]].concat();
        for events in [&listed_at_3[..], &told_at_3[..]] {
            assert_eq!(hash_with_row_at(events, 4), hash_with_row_at(&[vanished()], 4));
            assert_ne!(hash_with_row_at(events, 3), hash_with_row_at(&[vanished()], 3));
        }
        // Of an instance that lost a VMM, only what its user meant weighs.
        let lost = |change| [vanished(), inst(InstanceChange::StopRequested), inst(change)];
        let (ok, failed) =
            (InstanceChange::RequestEnded { ok: true }, InstanceChange::RequestEnded { ok: false });
        assert_eq!(hash_after(&lost(ok)), hash_after(&lost(failed)));
        let kept = |change| [inst(InstanceChange::StopRequested), inst(change)];
        assert_ne!(hash_after(&kept(ok)), hash_after(&kept(failed)));
        assert_ne!(
            hash_after(&[vanished(), inst(InstanceChange::StartIntended)]),
            hash_after(&[vanished(), inst(InstanceChange::StopRequested)])
        );
        // Whether an auto-restart was meant still weighs (rule 11): both meant to
        // run, one with auto-restart under way.
        let meant = |last| [inst(InstanceChange::StartIntended), vanished(), inst(last)];
        assert_ne!(
            hash_after(&meant(InstanceChange::StartRequested { auto_restart: true })),
            hash_after(&meant(InstanceChange::StartIntended))
        );
        // Without generation checks a row may go back to the listed generation:
        // nothing is merged.
        let unchecked = |events: &[Event]| hash_with_rows(events, &|_| None);
        assert_ne!(unchecked(&listed_at_3), unchecked(&[vanished()]));
        assert_ne!(unchecked(&told_at_3), unchecked(&[vanished()]));
        // A stale write, or a listing with nothing vanished, leaves nothing to remember.
        let listed = Event::Listed(vec![(VMM, g(4))]);
        assert_eq!(hash_after(&[write(VmmState::Failed, 7, 7, false), listed]), base);
    }

    /// Rule 12 judges what runs now, with no memory of its own: two VMs of one
    /// instance break it, at the step they are seen after.
    #[test]
    fn two_vms_of_one_instance_break_rule_12_at_once() {
        let other = PropolisUuid::from_u128(0x2_0000_0000_0000_0000_0000_0003);
        let two = Event::TwoVms { instance: INST, vmms: [VMM, other] };
        assert_eq!(check(&[vanished(), two.clone()], None), [12]);
        assert_eq!(check(&clean_stop(), None), Vec::<u8>::new());
        let mut inv = Invariants::default();
        inv.on(4, &two, &Names::default);
        assert_eq!(inv.violations()[0].step, 4, "the step it was seen after");
    }
}
