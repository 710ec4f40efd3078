//! Partial-order reduction by sleep sets: which steps commute, and what a search
//! need not try again because it already tried the same steps in the other order.
//!
//! Two choices are independent when they are different actors' and neither
//! writes a part of the world the other reads or writes. The parts are coarse on
//! purpose: Nexus's VMM table (with the update steps a write queues), its
//! instance table (with the instance log and the requests in flight), its disks
//! and its id counter; the sled agent's table; the scenario's progress. The
//! VMM and instance tables, the sled agent's table and the record of vanished
//! VMMs are split by instance (`slots`): a call about one instance's VMM (a
//! report, a check's read, a Nexus handler's call to the sled agent, a start,
//! stop or reboot, an update step) touches that instance's share alone, and a
//! call whose instance is not known touches every share. A step is charged with
//! everything its release may run: the callee, and the caller's own code up to
//! its next gate (a Nexus handler after the sled agent answers, the sim after
//! Nexus acknowledges a report, the scenario when an outer call returns), and
//! with what its wait condition reads. The invariants' memory is part of the
//! world too: the record of vanished VMMs is a part of its own, written by a
//! vanish and by a pass's listing, read by every Nexus write (rules 2 and 7 ask
//! whether a VMM vanished) and by a check's 404 (rule 1); what the rules keep of
//! each VMM's writes and reports moves with the VMM table, and reports commute
//! with writes there (a report is remembered only above the stored generation,
//! and forgotten once a write reaches it, in either order). Whatever is not
//! known to commute is dependent: a `Done`, offered only when no call is,
//! depends on everything; so do two choices of one actor.
//!
//! With sleep sets alone every situation is still reached (Godefroid, 1996,
//! ch. 5): what is saved is the schedules that would reach one again through the
//! other order of two independent steps. Free steps (`free`) save situations
//! too: a step that changes nothing any other step reads, now or later, is
//! taken alone, so the situations where it waits while others go first are
//! never reached. Every end is still reached, and every broken invariant (what
//! the rules remember is part of the situation, and a broken rule stays
//! broken), but a free step may come before the step that breaks one, so a
//! search with free steps gives lengths that are only bounds: it is a proof
//! that tells which invariants break, after which an exact search with sleep
//! sets alone finds the shortest of each (`explore::Phase`). The tests compare
//! the violations, their lengths and the end states with the unreduced search.
//!
//! Sleep sets reach every situation because a step asleep after another was
//! tried, in the other order, from the situation that step led to. Beside free
//! steps that can fail: if that situation offers a free step, it tries only
//! that one. So in a proof a step sleeps on only where it cannot leave a free
//! step behind (`FreeWatch`); the step a run takes is judged once the run sees
//! where it led (`explore::Dfs::settle`). The proof then reaches exactly the
//! situations its free steps leave, whatever order its schedules run in (up
//! to the step bound, and once a shard's part is decided), so their number is
//! the same for any thread count. Before, an order taken first
//! could pass a situation by: disk-move at explore's defaults gave 183,376 to
//! 183,421 situations by the order, and gave 192,674 in every order then, in
//! about 8% more runs (187,343 since two fingerprint fixes; a fingerprint
//! that parts two paths to one situation later makes the order matter too,
//! which `explorer/tests/fingerprints.rs` checks).
//!
//! Of the choice points a disk-move search with one user operation visits,
//! three in five to three in four (by what was counted) offered a watcher
//! check's write that is already stale: a check that read the sled agent, then
//! waited while the VMM moved on. Once those were free, three in five of the
//! branching points left offered a check's get-state of a VMM already gone
//! from the sled agent with its row deleted: a check listed before the VMM
//! ended, which can only learn a 404 and write nothing. That read is free too
//! (174,191 situations became 61,491 there).

use sled_agent_api::InstanceUuid;

use crate::harness::step::{ActorKind, Call, CallKind, Choice, Component, Offer};

/// Parts of the world, as bits. The first six are one part each; the four
/// after them are one part per instance (`SLOTS` bits each, see `slots`), so
/// that steps on two instances' rows, VMMs and records commute.
const DISKS: u64 = 1;
/// The scenario's progress: the ids it keeps between calls.
const PROGRESS: u64 = 1 << 1;
/// The run's fault budget.
const BUDGET: u64 = 1 << 2;
/// The watcher pass a check belongs to: a check that ends lets it start the next.
const PASS: u64 = 1 << 3;
/// The instances an auto-restart pass listed and has not yet started, which a
/// stop waits out (the `restart-after-stop` finding's window), and the one it is
/// starting, which a vanish waits out (`restart-unwound`'s).
const RESTARTING: u64 = 1 << 4;
/// Nexus's id counter: two steps that mint ids, in the other order, give the
/// ids to the other instance, VMM or disk.
const IDS: u64 = 1 << 5;
/// How many instances have parts of their own: instances past that share them.
const SLOTS: u32 = 8;
const ONE_SLOT: u64 = (1 << SLOTS) - 1;
/// Nexus's VMM rows (with the update steps a write queues, and the requests in
/// flight to each VMM).
const VMMS: u64 = ONE_SLOT << 8;
/// Nexus's instance rows (with the instance log and the sled reservations).
const INSTANCES: u64 = ONE_SLOT << 16;
/// The sled agent's table and what it has in flight.
const SLED: u64 = ONE_SLOT << 24;
/// The invariants' record of vanished VMMs and the instances they were of.
const VANISHED: u64 = ONE_SLOT << 32;
const NEXUS: u64 = VMMS | INSTANCES | DISKS;
/// The parts that are one per instance.
const LOCAL: u64 = VMMS | INSTANCES | SLED | VANISHED;
const ALL: u64 = u64::MAX;

/// The bits of every per-instance part that belong to `instance`'s slot, or to
/// every slot when the instance is not known. Two instances may share a slot:
/// that only makes their steps dependent.
fn slots(instance: Option<InstanceUuid>) -> u64 {
    let one = instance.map_or(ONE_SLOT, |i| 1 << (i.into_untyped().as_u128() % u128::from(SLOTS)));
    // The slot's bit in each of the four per-instance fields.
    (one << 8) | (one << 16) | (one << 24) | (one << 32)
}

/// What releasing a choice may read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    reads: u64,
    writes: u64,
}

impl Footprint {
    const fn reads(parts: u64) -> Self {
        Footprint { reads: parts, writes: 0 }
    }

    const fn rw(parts: u64) -> Self {
        Footprint { reads: parts, writes: parts }
    }

    const fn and_reads(self, parts: u64) -> Self {
        Footprint { reads: self.reads | parts, writes: self.writes }
    }

    const fn and_writes(self, parts: u64) -> Self {
        Footprint { reads: self.reads | parts, writes: self.writes | parts }
    }

    /// Only the parts in `keep` (and every part that is not per instance).
    const fn within(self, keep: u64) -> Self {
        let keep = keep | !LOCAL;
        Footprint { reads: self.reads & keep, writes: self.writes & keep }
    }

    const fn conflicts(self, other: Footprint) -> bool {
        self.writes & (other.reads | other.writes) != 0 || other.writes & self.reads != 0
    }
}

/// What the reduction may know of the situation at hand: whether a VMM write
/// parked there is already stale (`World::stale_write`), whether a check's
/// read of a VMM can only meet a VMM that is gone for good (`World::dead_read`),
/// and which instance a call is about.
pub trait Situation {
    /// True only if the write `c` makes, at its generation, can apply neither now
    /// nor after any other step: its row is deleted or holds that generation or a
    /// newer one, and generations are checked (rows never lose generations).
    fn stale(&self, c: &Choice) -> bool;

    /// True only if `c` is a get-state whose answer and whatever the rules note
    /// of it are the same now and after any other steps: the sled agent no
    /// longer has the VMM, nothing waiting at a gate could put it back, and
    /// Nexus's row is deleted (no write applies to it, with generations
    /// checked).
    fn dead(&self, c: &Choice) -> bool;

    /// The instance `c`'s call is about: its VMM's (by Nexus's row, which a
    /// VMM never changes), the one it names by id, or the one the scenario
    /// created under the name it carries. `None`: any instance.
    fn instance(&self, c: &Choice) -> Option<InstanceUuid>;

    /// Whether Nexus's row of `c`'s VMM is deleted already. A check's read can
    /// become dead (`dead`) without a step that deletes rows only if so.
    fn row_deleted(&self, c: &Choice) -> bool;
}

/// Knows nothing: every write may apply, every read may tell, every call may
/// be about any instance.
pub struct Unknown;

impl Situation for Unknown {
    fn stale(&self, _: &Choice) -> bool {
        false
    }

    fn dead(&self, _: &Choice) -> bool {
        false
    }

    fn instance(&self, _: &Choice) -> Option<InstanceUuid> {
        None
    }

    fn row_deleted(&self, _: &Choice) -> bool {
        true
    }
}

/// The parts of the world a choice's release may touch in situation `at`.
pub fn footprint(c: &Choice, at: &dyn Situation) -> Footprint {
    use CallKind::*;
    // Offered only when nothing else can go on, as a Done is.
    if c.offer == Offer::TimedOut {
        return Footprint::rw(ALL);
    }
    let base = match c.call.kind {
        Done => return Footprint::rw(ALL),
        // A stale write changes nothing in Nexus and is answered "not updated"
        // whatever else happens first: only its caller's side of it is left.
        CpapiInstancesPut if at.stale(c) => Footprint::rw(SLED),
        VmmWrite if at.stale(c) => Footprint::reads(0),
        // A read of a VMM gone from both sides: its 404 and the note rule 1
        // (Nexus held it deleted) and rule 6 (a listing that can no longer list
        // it) take of it are fixed, so it touches nothing another step uses.
        VmmGetState if c.call.from == Component::Watcher && at.dead(c) => Footprint::reads(0),
        // A check asks the sled agent; a 404's answer records what Nexus held of
        // the VMM then, which rule 1 weighs against the vanished record.
        VmmGetState if c.call.from == Component::Watcher => {
            Footprint::reads(SLED | VMMS).and_writes(VANISHED)
        }
        // A Nexus handler's (or update step's, or auto-restart's) call to the sled
        // agent: the handler goes on once it answers, and may mark the VMM failed
        // and run the update step.
        VmmRegister | VmmUnregister | VmmPutState | VmmGetState => {
            Footprint::rw(VMMS | INSTANCES | SLED)
        }
        // The sim steps, then parks its report (or fails at once, and its caller
        // goes on): a poke waits while another of the same VMM reports.
        VmmPoke => Footprint::rw(SLED),
        // Nexus's checked write of the VMM (which may queue its update step); the
        // sim then goes on (removes, steps again).
        CpapiInstancesPut => Footprint::rw(VMMS | SLED),
        // A listing reads VMM rows; rule 6 notes what it listed of vanished VMMs.
        VmmList => Footprint::reads(VMMS).and_writes(VANISHED),
        VmmWrite => Footprint::rw(VMMS),
        // The update step reads the VMM and unlinks it from its instance.
        InstanceUpdate => Footprint::rw(VMMS | INSTANCES),
        // Failed instances with no VMM (a cooldown never ends within a run's
        // clock horizon, so the clock decides nothing here).
        Reincarnation => Footprint::reads(INSTANCES),
        // The user-visible state comes from the instance and its active VMM.
        WaitForState => Footprint::reads(INSTANCES | VMMS),
        // Only while the instance has no VMM.
        DiskAttach | DiskDetach => Footprint::reads(INSTANCES | VMMS).and_writes(DISKS),
        // Each mints an id (a start, its VMM's, up to its first call).
        DiskCreate => Footprint::rw(DISKS | IDS),
        InstanceCreate => Footprint::rw(NEXUS | IDS),
        InstanceStart => Footprint::rw(VMMS | INSTANCES | IDS),
        // A user's start saga: reserves (instance records), mints its VMM's id,
        // inserts the row and links it, or unwinds.
        StartSaga => Footprint::rw(VMMS | INSTANCES | IDS),
        InstanceStop | InstanceReboot => Footprint::rw(VMMS | INSTANCES),
        // Which VMM is the scenario's progress's (and the sim's); it spends a fault.
        VmmVanish => Footprint::reads(PROGRESS).and_writes(SLED | VANISHED | BUDGET),
        // Every VMM of the sled at once: its instance is none in particular. It
        // spends a budget of its own, which only its actor reads.
        SledRestart => Footprint::reads(PROGRESS).and_writes(SLED | VANISHED),
    };
    // Every write of a VMM or instance row feeds rules that read the vanished
    // record (2, 7).
    let base = if base.writes & (VMMS | INSTANCES) != 0 { base.and_reads(VANISHED) } else { base };
    // The call's own effects stay within its instance: its VMM's row, the sled
    // agent's entry for it, its instance's row and records. What follows reads
    // wider (a listing reads every row).
    let base = match c.call.kind {
        VmmList | Reincarnation | InstanceCreate | DiskCreate => base,
        _ => base.within(slots(at.instance(c))),
    };
    let base = match c.kind {
        // Its code between calls keeps the ids it was given in its progress.
        // A stop waits out the instances an auto-restart pass is about to start.
        ActorKind::Scenario if c.call.kind == InstanceStop => {
            base.and_writes(PROGRESS).and_reads(RESTARTING)
        }
        ActorKind::Scenario => base.and_writes(PROGRESS),
        ActorKind::Watcher | ActorKind::Check(_) => base.and_writes(PASS),
        // A pass notes what it found, and each start crosses one off.
        ActorKind::Restart => base.and_writes(RESTARTING),
        // A user's code between its calls reads nothing of Nexus: its pick of
        // the next operation, an alternative, is what does (charged below).
        ActorKind::User | ActorKind::Update(_) | ActorKind::Fault => base,
    };
    let base = match c.offer {
        // A vanish waits for its VMM to exist and not be reporting (nor, unless
        // the findings are explored, be auto-restart's start under way).
        Offer::Alternative if c.kind == ActorKind::Fault => {
            base.and_reads(PROGRESS | SLED | RESTARTING)
        }
        // A user's stop also waits out the instances auto-restart is about to start.
        Offer::Alternative => base.and_reads(PROGRESS | NEXUS | RESTARTING),
        Offer::Call | Offer::Done | Offer::TimedOut => base,
    };
    if c.fault.is_some() {
        base.and_writes(BUDGET)
    } else {
        base
    }
}

/// Whether releasing `a` and `b` in either order gives the same situation, and
/// neither disables the other.
pub fn independent(a: &Choice, b: &Choice, at: &dyn Situation) -> bool {
    a.actor != b.actor && !footprint(a, at).conflicts(footprint(b, at))
}

/// The enabled choice, if any, whose release no other step can tell from its
/// absence, now or after any other steps: a watcher check's write that is stale
/// (so it changes nothing in Nexus, and the rules see it only as not applied),
/// or its get-state of a VMM that is dead (gone from the sled agent for good,
/// its row deleted: the answer is 404 whenever it is asked, and what the rules
/// note of it cannot change; `World::dead_read`), released with no fault, by a check with nothing else to
/// choose. All that happens is that the check learns what it would learn at
/// any time, or ends, which lets its pass start the next check: steps that
/// cannot be taken before it anyway. Exploring it alone is then a
/// persistent set (Godefroid, 1996, ch. 4): every end the others reach, they
/// reach after it too. Of several, the one of the lowest rank, so every visit
/// to a situation picks the same; one whose rank another choice shares is
/// passed over, since which of the two comes first in `enabled` depends on the
/// path, and so would the situations reached.
pub fn free(enabled: &[Choice], ranks: &[u32], at: &dyn Situation) -> Option<usize> {
    let is_free = |i: usize| {
        let c = &enabled[i];
        let wasted = || match c.call.kind {
            CallKind::VmmWrite => at.stale(c),
            CallKind::VmmGetState => at.dead(c),
            _ => false,
        };
        matches!(c.kind, ActorKind::Check(_))
            && c.fault.is_none()
            && c.offer == Offer::Call
            && enabled.iter().filter(|d| d.actor == c.actor).count() == 1
            && ranks.iter().filter(|&&r| r == ranks[i]).count() == 1
            && wasted()
    };
    (0..enabled.len()).filter(|&i| is_free(i)).min_by_key(|&i| ranks[i])
}

/// What in one situation may turn a check's call free (`free`) where none is,
/// gathered once from its choices, to ask of each step (`may_free`).
#[derive(Clone, Copy, Debug)]
pub struct FreeWatch {
    /// Parts a step that writes any of them may free a call through: a check's
    /// write turns stale when its VMM's row is written (a newer generation, or
    /// the row deleted); its read of a VMM whose row is deleted turns dead when
    /// the sled agent's entry or the row changes; and a call offered with a
    /// fault is left alone among its check's choices when the last is spent.
    any: u64,
    /// Parts a step that may delete rows may free a call through: a read of a
    /// VMM whose row stands turns dead only once the row is deleted.
    deleting: u64,
    /// The situation's choices were not ranked (over 64 kinds), so none was
    /// looked at for freedom, and any step may leave one free.
    unranked: bool,
}

impl FreeWatch {
    /// For the situation offering `enabled`; `ranked`: whether its choices
    /// were ranked, which is when free steps are looked for (`ranks`).
    pub fn new(enabled: &[Choice], ranked: bool, at: &dyn Situation) -> Self {
        let mut w = FreeWatch { any: 0, deleting: 0, unranked: !ranked };
        for c in enabled.iter().filter(|c| matches!(c.kind, ActorKind::Check(_))) {
            let (slot, budget) =
                (slots(at.instance(c)), if c.fault.is_some() { BUDGET } else { 0 });
            match c.call.kind {
                CallKind::VmmWrite => w.any |= (slot & VMMS) | budget,
                CallKind::VmmGetState if at.row_deleted(c) => {
                    w.any |= (slot & (VMMS | SLED)) | budget
                }
                CallKind::VmmGetState => w.deleting |= (slot & VMMS) | budget,
                _ => {}
            }
        }
        w
    }

    /// Whether releasing `t` here may leave a free step in the situation after
    /// it where none was. Conservative: true wherever it is not known. A
    /// watcher's or a check's step parks its actor's next call, which may be
    /// free; an update step deletes rows and ends the check that waits for it.
    /// Rows are deleted only by the steps `CallKind::may_delete_rows` names,
    /// and (but for the watcher's and update steps) only rows of the instance
    /// a step is about, which every gated run checks: update steps, a start that unwinds after its
    /// call to the sled agent (`Db::unwind_start`), a Nexus handler that marks
    /// a VMM failed and runs the update (`mark_vmm_failed`); a report only
    /// queues an update step.
    pub fn may_free(&self, t: &Choice, at: &dyn Situation) -> bool {
        if self.unranked || t.kind.reaches_any_row() {
            return true;
        }
        let deletes = t.call.kind.may_delete_rows(t.kind);
        let reads = if deletes { self.any | self.deleting } else { self.any };
        reads != 0 && footprint(t, at).writes & reads != 0
    }
}

/// A choice asleep: the same parked call, with the same fault and offered the
/// same way (a wait that timed out is not the wait met), is known by its ticket
/// along one path.
pub type Sleeper = (u64, Option<crate::harness::step::Fault>, Offer);

pub fn sleeper(c: &Choice) -> Sleeper {
    (c.ticket, c.fault, c.offer)
}

/// Whether `c` is one of `sleep`.
pub fn asleep(sleep: &[Choice], c: &Choice) -> bool {
    sleep.iter().any(|z| sleeper(z) == sleeper(c))
}

/// The sleep set of the situation after `taken`: what was asleep, or tried
/// before it here, and commutes with it.
pub fn after<'a>(
    taken: &Choice,
    sleeping: impl IntoIterator<Item = &'a Choice>,
    at: &'a dyn Situation,
) -> impl Iterator<Item = &'a Choice> {
    let taken = *taken;
    sleeping.into_iter().filter(move |z| independent(z, &taken, at))
}

/// Each enabled choice's rank among what identifies a choice whatever path led
/// to the situation (its actor's kind, its call, how it is offered, its fault),
/// so a later visit by another path can compare sleep sets as masks of ranks.
/// `None` over 64 ranks: nothing is then compared. Each call is taken as
/// `as_fingerprinted` gives it, as the fingerprint takes it (a check's stale
/// write without what it carries): two visits to one situation must rank its
/// choices alike.
pub fn ranks(enabled: &[Choice], as_fingerprinted: &dyn Fn(Call) -> Call) -> Option<Vec<u32>> {
    let key = |c: &Choice| {
        let call = as_fingerprinted(c.call);
        crate::harness::hash::stable_hash(&(c.kind.unnumbered(), call, c.offer, c.fault))
    };
    let keys: Vec<u64> = enabled.iter().map(key).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() > 64 {
        return None;
    }
    let rank = |k: &u64| sorted.binary_search(k).map_or(0, |r| r as u32);
    Some(keys.iter().map(rank).collect())
}

/// The sleep set as two masks of ranks: which this visit may leave untried (a
/// rank is set if any choice of it sleeps), and which it will (set only if all
/// do). Choices that cannot be told apart are thus never taken to have been
/// tried when they were not.
pub fn masks(enabled: &[Choice], ranks: Option<&[u32]>, sleep: &[Choice]) -> (u64, u64) {
    if sleep.is_empty() {
        return (0, 0);
    }
    let Some(ranks) = ranks else { return (u64::MAX, 0) };
    let (mut any, mut awake) = (0u64, 0u64);
    for (c, &rank) in enabled.iter().zip(ranks) {
        if asleep(sleep, c) {
            any |= 1 << rank;
        } else {
            awake |= 1 << rank;
        }
    }
    (any, any & !awake)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::step::{Arg, Call, Fault};

    fn choice(actor: usize, kind: ActorKind, call: CallKind, from: Component) -> Choice {
        let to = match call {
            CallKind::VmmList | CallKind::VmmWrite => Component::Datastore,
            CallKind::CpapiInstancesPut => Component::Nexus,
            _ => Component::SledAgent,
        };
        Choice {
            ticket: actor as u64 * 10,
            actor,
            kind,
            call: Call { kind: call, from, to, vmm: None, arg: Arg::None },
            offer: Offer::Call,
            fault: None,
        }
    }

    fn check(a: &Choice, b: &Choice, want: bool) {
        let at = &Unknown;
        assert_eq!(independent(a, b, at), want, "{:?} / {:?}", a.call.kind, b.call.kind);
        assert_eq!(independent(b, a, at), want, "symmetric");
    }

    /// A situation where every write is stale or none is, and every check's
    /// read is dead or none is.
    struct Knows {
        stale: bool,
        dead: bool,
    }

    impl Situation for Knows {
        fn stale(&self, _: &Choice) -> bool {
            self.stale
        }

        fn dead(&self, _: &Choice) -> bool {
            self.dead
        }

        fn instance(&self, _: &Choice) -> Option<InstanceUuid> {
            None
        }

        fn row_deleted(&self, _: &Choice) -> bool {
            self.dead
        }
    }

    const ALL_STALE: Knows = Knows { stale: true, dead: true };
    const STALE_ONLY: Knows = Knows { stale: true, dead: false };
    const DEAD_ONLY: Knows = Knows { stale: false, dead: true };

    #[test]
    fn a_stale_write_commutes_with_what_touches_nexus() {
        let report = choice(4, ActorKind::User, CallKind::CpapiInstancesPut, Component::SledAgent);
        let write = choice(2, ActorKind::Check(1), CallKind::VmmWrite, Component::Watcher);
        let update =
            choice(1, ActorKind::Update(1), CallKind::InstanceUpdate, Component::UpdateStep);
        let wait = choice(0, ActorKind::Scenario, CallKind::WaitForState, Component::Scenario);
        assert!(!independent(&report, &write, &Unknown));
        assert!(independent(&report, &write, &ALL_STALE));
        assert!(!independent(&write, &update, &Unknown));
        assert!(independent(&write, &update, &ALL_STALE));
        // The scenario's stale report against the update step's write of both tables.
        let scenario_report = Choice { actor: 0, kind: ActorKind::Scenario, ..report };
        assert!(!independent(&scenario_report, &update, &Unknown));
        assert!(independent(&scenario_report, &update, &ALL_STALE));
        // The scenario's wait reads what the update step writes, stale or not.
        assert!(!independent(&wait, &update, &ALL_STALE));
        // A user's stale report leaves only the sim to go on, and the user's own
        // code reads nothing of Nexus until it picks its next operation: that
        // pick (an alternative) is what reads Nexus.
        assert!(independent(&report, &update, &ALL_STALE));
        let pick = Choice {
            offer: Offer::Alternative,
            ..choice(4, ActorKind::User, CallKind::InstanceStop, Component::User)
        };
        assert!(!independent(&pick, &update, &ALL_STALE));
        // The sim still goes on after a stale report: it meets the sim's steps.
        let poke = choice(5, ActorKind::Scenario, CallKind::VmmPoke, Component::Scenario);
        assert!(!independent(&report, &poke, &ALL_STALE));
    }

    #[test]
    fn steps_on_different_parts_commute_and_steps_on_one_do_not() {
        let poke = choice(0, ActorKind::Scenario, CallKind::VmmPoke, Component::Scenario);
        let list = choice(1, ActorKind::Watcher, CallKind::VmmList, Component::Watcher);
        let write = choice(2, ActorKind::Check(1), CallKind::VmmWrite, Component::Watcher);
        let get = choice(3, ActorKind::Check(2), CallKind::VmmGetState, Component::Watcher);
        let report = choice(4, ActorKind::User, CallKind::CpapiInstancesPut, Component::SledAgent);
        let restart = choice(8, ActorKind::Restart, CallKind::Reincarnation, Component::Nexus);
        let update =
            choice(9, ActorKind::Update(1), CallKind::InstanceUpdate, Component::UpdateStep);
        // A report writes the VMM table; auto-restart reads instances, which only
        // the update step changes.
        check(&report, &restart, true);
        // But a user's stop waits out what a pass found: its choice does not
        // commute with the pass's listing.
        let user_stop = Choice {
            offer: Offer::Alternative,
            ..choice(6, ActorKind::User, CallKind::InstanceStop, Component::User)
        };
        check(&user_stop, &restart, false);
        check(&update, &restart, false);
        check(&update, &report, false);
        // The sim's step and a read or write of Nexus touch nothing in common.
        check(&poke, &list, true);
        check(&poke, &write, true);
        // A check's read of the sled agent, against a Nexus write: rule 1 reads
        // what Nexus held, so they do not.
        check(&get, &write, false);
        // A report writes Nexus and the sim's table.
        check(&report, &list, false);
        check(&report, &poke, false);
        check(&report, &get, false);
        // Two checks of one pass: either may end and let the pass go on.
        let get2 = choice(5, ActorKind::Check(3), CallKind::VmmGetState, Component::Watcher);
        check(&get, &get2, false);
        // One actor's two choices, and a Done, never commute.
        check(&poke, &Choice { fault: Some(Fault::Unavailable), ..poke }, false);
        let done = Choice {
            call: Call { kind: CallKind::Done, ..poke.call },
            actor: 7,
            offer: Offer::Done,
            ..poke
        };
        check(&done, &list, false);
    }

    /// Knows which instance each call is about: the one its VMM's id names
    /// (VMM `n` is instance `n`'s), or the one it names by id.
    struct ByVmm;

    impl Situation for ByVmm {
        fn stale(&self, _: &Choice) -> bool {
            false
        }

        fn dead(&self, _: &Choice) -> bool {
            false
        }

        fn instance(&self, c: &Choice) -> Option<InstanceUuid> {
            match (c.call.vmm, c.call.arg) {
                (Some(v), _) => Some(InstanceUuid::from_u128(v.into_untyped().as_u128())),
                (None, Arg::Instance(i)) => Some(i),
                _ => None,
            }
        }

        fn row_deleted(&self, _: &Choice) -> bool {
            false
        }
    }

    /// `ByVmm`, where every VMM's row is deleted.
    struct Deleted;

    impl Situation for Deleted {
        fn stale(&self, _: &Choice) -> bool {
            false
        }

        fn dead(&self, _: &Choice) -> bool {
            false
        }

        fn instance(&self, c: &Choice) -> Option<InstanceUuid> {
            ByVmm.instance(c)
        }

        fn row_deleted(&self, _: &Choice) -> bool {
            true
        }
    }

    /// `c` about VMM `n` (of instance `n`, as `ByVmm` tells it).
    fn on(c: Choice, n: u128) -> Choice {
        let vmm = Some(sled_agent_api::PropolisUuid::from_u128(n));
        Choice { call: Call { vmm, ..c.call }, ..c }
    }

    /// `c` naming instance `n`.
    fn about(c: Choice, n: u128) -> Choice {
        let arg = Arg::Instance(InstanceUuid::from_u128(n));
        Choice { call: Call { arg, ..c.call }, ..c }
    }

    /// `check`, where each call's instance is known (`ByVmm`).
    fn check_by_vmm(a: &Choice, b: &Choice, want: bool) {
        assert_eq!(independent(a, b, &ByVmm), want, "{:?} / {:?}", a.call, b.call);
        assert_eq!(independent(b, a, &ByVmm), want, "symmetric");
    }

    #[test]
    fn steps_on_two_instances_commute_and_on_one_or_an_unknown_one_do_not() {
        let check = check_by_vmm;
        let report =
            choice(4, ActorKind::Scenario, CallKind::CpapiInstancesPut, Component::SledAgent);
        let get = choice(3, ActorKind::Check(1), CallKind::VmmGetState, Component::Watcher);
        let put = choice(5, ActorKind::Restart, CallKind::VmmPutState, Component::Nexus);
        // A report of instance 1's VMM, against a check's read and a Nexus
        // handler's call about instance 2's, and about instance 1's.
        check(&on(report, 1), &on(get, 2), true);
        check(&on(report, 1), &on(put, 2), true);
        check(&on(report, 1), &on(get, 1), false);
        check(&on(report, 1), &on(put, 1), false);
        // Instances 1 and 9 share a slot: dependent, as if one.
        check(&on(report, 1), &on(put, 9), false);
        // Not knowing the instance is every instance.
        check(&report, &on(put, 2), false);
        // A listing reads every VMM row, whichever instance the write is about.
        let list = choice(1, ActorKind::Watcher, CallKind::VmmList, Component::Watcher);
        check(&list, &on(report, 2), false);
        // Two starts mint ids: in the other order each gets the other's. Two
        // stops mint none. (Update steps' kind adds no part of its own.)
        let start = |actor, n: u128| {
            about(choice(actor, ActorKind::Update(1), CallKind::InstanceStart, Component::Nexus), n)
        };
        check(&start(6, 1), &start(7, 2), false);
        let stop =
            |c: Choice| Choice { call: Call { kind: CallKind::InstanceStop, ..c.call }, ..c };
        check(&stop(start(6, 1)), &stop(start(7, 2)), true);
        check(&stop(start(6, 1)), &stop(start(7, 1)), false);
    }

    /// Whether `t`, taken where `enabled` is offered, may leave a free step.
    fn check_may_free(t: Choice, enabled: &[Choice], at: &dyn Situation, want: bool) {
        let w = FreeWatch::new(enabled, true, at);
        assert_eq!(w.may_free(&t, at), want, "{:?} with {enabled:?}", t.call);
    }

    #[test]
    fn a_step_may_free_a_check_only_through_its_vmm_its_budget_or_the_pass() {
        let report =
            choice(4, ActorKind::Scenario, CallKind::CpapiInstancesPut, Component::SledAgent);
        let write = choice(3, ActorKind::Check(1), CallKind::VmmWrite, Component::Watcher);
        let get = choice(3, ActorKind::Check(1), CallKind::VmmGetState, Component::Watcher);
        let put = choice(5, ActorKind::User, CallKind::VmmPutState, Component::Nexus);
        let poke = choice(6, ActorKind::User, CallKind::VmmPoke, Component::User);
        // A report writes its VMM's row: a check's write of that VMM may turn
        // stale, one of another instance's may not.
        check_may_free(on(report, 1), &[on(write, 1)], &ByVmm, true);
        check_may_free(on(report, 1), &[on(write, 2)], &ByVmm, false);
        // A read turns dead only once the row is deleted: before that, only a
        // step that may delete rows (a handler whose start unwinds) counts,
        // and neither a report nor a poke deletes any.
        check_may_free(on(report, 1), &[on(get, 1)], &ByVmm, false);
        check_may_free(on(poke, 1), &[on(get, 1)], &ByVmm, false);
        check_may_free(on(put, 1), &[on(get, 1)], &ByVmm, true);
        check_may_free(on(put, 2), &[on(get, 1)], &ByVmm, false);
        // Once it is deleted, a change to the VMM's sled-agent entry counts,
        // on its own instance only.
        check_may_free(on(poke, 1), &[on(get, 1)], &Deleted, true);
        check_may_free(on(poke, 2), &[on(get, 1)], &Deleted, false);
        // Spending the last fault leaves a check offered with one alone.
        let faulty = Choice { fault: Some(Fault::Unavailable), ..on(put, 2) };
        let get_503 = Choice { fault: Some(Fault::Unavailable), ..on(get, 1) };
        check_may_free(faulty, &[on(get, 1)], &ByVmm, false);
        check_may_free(faulty, &[on(get, 1), get_503], &ByVmm, true);
        let vanish = Choice {
            offer: Offer::Alternative,
            ..choice(7, ActorKind::Fault, CallKind::VmmVanish, Component::Fault)
        };
        check_may_free(vanish, &[on(get, 1), get_503], &Deleted, true);
        // The watcher's, a check's and an update step's own steps may.
        let list = choice(1, ActorKind::Watcher, CallKind::VmmList, Component::Watcher);
        check_may_free(list, &[], &ByVmm, true);
        check_may_free(on(get, 2), &[on(write, 1)], &ByVmm, true);
        let update = choice(8, ActorKind::Update(1), CallKind::InstanceUpdate, Component::Nexus);
        check_may_free(on(update, 2), &[], &ByVmm, true);
        // With no check offered, nothing can be freed by another actor's step.
        check_may_free(on(report, 1), &[on(put, 1)], &ByVmm, false);
        // Where the choices were not ranked, none was looked at: any step may.
        let unranked = FreeWatch::new(&[on(put, 1)], false, &ByVmm);
        assert!(unranked.may_free(&on(report, 1), &ByVmm));
    }

    #[test]
    fn disks_meet_only_disk_steps_and_a_users_calls_meet_only_their_instance() {
        let check = check_by_vmm;
        let attach =
            about(choice(0, ActorKind::Scenario, CallKind::DiskAttach, Component::Scenario), 2);
        let create = choice(0, ActorKind::Scenario, CallKind::DiskCreate, Component::Scenario);
        // A Nexus handler's call to the sled agent, and the code after it up to
        // its caller's next gate, never touch disks.
        let restart_put = choice(5, ActorKind::Restart, CallKind::VmmPutState, Component::Nexus);
        check(&on(restart_put, 1), &attach, true);
        check(&on(restart_put, 1), &create, true);
        // About the attached instance, it meets the attach's read of its rows.
        check(&on(restart_put, 2), &attach, false);
        // A user's calls read nothing of Nexus or the scenario's progress
        // between them: its stop's call to the sled agent, and its poke, meet
        // the attach only through their own instance's rows.
        let user_put = choice(4, ActorKind::User, CallKind::VmmPutState, Component::Nexus);
        check(&on(user_put, 1), &attach, true);
        check(&on(user_put, 2), &attach, false);
        let poke = choice(4, ActorKind::User, CallKind::VmmPoke, Component::User);
        check(&on(poke, 1), &attach, true);
        // Its pick of the next operation reads which instances the scenario made.
        let pick = Choice {
            offer: Offer::Alternative,
            ..about(choice(4, ActorKind::User, CallKind::InstanceStop, Component::User), 1)
        };
        check(&pick, &attach, false);
    }

    #[test]
    fn faults_share_a_budget_and_a_vanish_meets_every_nexus_write() {
        let get = choice(3, ActorKind::Check(1), CallKind::VmmGetState, Component::Watcher);
        let put = choice(4, ActorKind::Scenario, CallKind::VmmPutState, Component::Nexus);
        let faulty = |c: Choice| Choice { fault: Some(Fault::Unavailable), ..c };
        let vanish = Choice {
            offer: Offer::Alternative,
            ..choice(6, ActorKind::Fault, CallKind::VmmVanish, Component::Fault)
        };
        let write = choice(2, ActorKind::Check(2), CallKind::VmmWrite, Component::Watcher);
        let list = choice(1, ActorKind::Watcher, CallKind::VmmList, Component::Watcher);
        check(&faulty(get), &faulty(put), false);
        check(&faulty(get), &vanish, false);
        check(&vanish, &write, false);
        check(&vanish, &list, false);
    }

    #[test]
    fn only_a_checks_wasted_step_with_no_fault_and_no_rival_choice_is_free() {
        let write = choice(2, ActorKind::Check(1), CallKind::VmmWrite, Component::Watcher);
        let get = choice(3, ActorKind::Check(2), CallKind::VmmGetState, Component::Watcher);
        let report = choice(4, ActorKind::User, CallKind::CpapiInstancesPut, Component::SledAgent);
        let free_in = |enabled: &[Choice], at: &dyn Situation| {
            let ranks = ranks(enabled, &|c| c).expect("few choices");
            free(enabled, &ranks, at)
        };
        assert_eq!(free_in(&[get, report, write], &STALE_ONLY), Some(2));
        // A check's read of a VMM gone for good is free too, a live one's is not,
        // and a report is never a check's read.
        assert_eq!(free_in(&[get, report], &DEAD_ONLY), Some(0));
        assert_eq!(free_in(&[get, report], &STALE_ONLY), None);
        assert_eq!(free_in(&[report], &ALL_STALE), None);
        let user_get = Choice { kind: ActorKind::User, actor: 11, ticket: 110, ..get };
        assert_eq!(free_in(&[user_get, report], &ALL_STALE), None);
        // Not stale: it may still apply.
        assert_eq!(free_in(&[get, report, write], &Unknown), None);
        // A stale report is not free: the sim goes on once it is answered.
        assert_eq!(free_in(&[get, report], &STALE_ONLY), None);
        // With a fault it spends the budget; beside another choice of its actor,
        // taking it alone would drop that one.
        let faulty = Choice { fault: Some(Fault::Unavailable), ..write };
        assert_eq!(free_in(&[get, faulty], &STALE_ONLY), None);
        assert_eq!(free_in(&[get, write, faulty], &STALE_ONLY), None);
        // Of two, the same one whichever order they are offered in.
        let vmm = Some(sled_agent_api::PropolisUuid::from_u128(5));
        let other = Choice { ticket: 77, actor: 9, call: Call { vmm, ..write.call }, ..write };
        let a = free_in(&[write, other], &STALE_ONLY).map(|i| [write, other][i]);
        let b = free_in(&[other, write], &STALE_ONLY).map(|i| [other, write][i]);
        assert!(a.is_some());
        assert_eq!(a.map(|c| c.ticket), b.map(|c| c.ticket));
        // Twins (two checks writing the same): which is first depends on the
        // path, so neither is taken alone.
        let twin = Choice { ticket: 78, actor: 10, ..write };
        assert_eq!(free_in(&[write, twin], &STALE_ONLY), None);
        assert_eq!(free_in(&[write, twin, other], &STALE_ONLY), Some(2));
    }

    #[test]
    fn masks_tell_choices_apart_by_what_they_are_not_by_ticket() {
        let a = choice(0, ActorKind::Scenario, CallKind::VmmPoke, Component::Scenario);
        let b = choice(1, ActorKind::Watcher, CallKind::VmmList, Component::Watcher);
        let (a2, b2) = (Choice { ticket: 99, ..a }, Choice { ticket: 98, ..b });
        let m = |enabled: &[Choice], sleep: &[Choice]| {
            masks(enabled, ranks(enabled, &|c| c).as_deref(), sleep)
        };
        // The same situation reached another way: other tickets, other order.
        assert_eq!(m(&[a, b], &[a]), m(&[b2, a2], &[a2]));
        assert_ne!(m(&[a, b], &[a]), m(&[a, b], &[b]));
        assert_eq!(m(&[a, b], &[]), (0, 0));
        // Two choices that look alike: one asleep may have been left untried,
        // but this visit leaves neither untried for sure.
        let twin = Choice { ticket: 5, actor: 9, ..a };
        let (any, all) = m(&[a, twin, b], &[a]);
        assert_ne!(any, 0);
        assert_eq!(all, 0);
    }
}
