//! The scheduler's half of every gate: parked calls, their release in a chosen
//! order, and the log of steps that results.
//!
//! A gate parks its caller until the scheduler releases it. Actors are tasks on one
//! `Executor`; its `run_until_stalled` returns exactly when every actor is
//! parked at a gate or done, which is when the scheduler picks the next release
//! (a replayed prefix's steps are released from inside the executor's run, at
//! the same points: `Sched::arm`).
//! Which actor is calling is read from a thread-local that the actor's wrapper
//! future sets while it is polled, so gates need no actor argument and the
//! components' code is unchanged.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use nexus_stub::DbVmmState;
use sled_agent_api::{Generation, PropolisUuid};

use super::step::{
    ActorId, ActorKind, Answer, Arg, Call, CallKind, Choice, Component, Fault, Offer, Step,
};

/// A fault of the harness itself (not of the model): it fails the run, since a
/// run the harness lost track of proves nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HarnessError {
    #[error("the scheduler's probes were set twice")]
    ProbesSetTwice,
    #[error("{what} outside any actor")]
    OutsideActor { what: String },
    #[error("release of unknown ticket {ticket}")]
    UnknownTicket { ticket: u64 },
    #[error("{call} cannot be released with fault {fault}")]
    FaultNotAllowed { call: &'static str, fault: &'static str },
    #[error("completion of unknown step {step}")]
    UnknownStep { step: usize },
    #[error("offer {group} vanished")]
    OfferVanished { group: u64 },
    #[error("the chooser changed the world at step {step}")]
    ChooserChangedWorld { step: usize },
    #[error("the user chose {name}, which did not exist yet")]
    UnknownInstance { name: &'static str },
    #[error("the scenario must be the first actor")]
    ScenarioNotFirst,
    #[error("the counterexample for invariant {invariant} did not reproduce at step {step}")]
    NotReproduced { invariant: u8, step: usize },
    #[error(
        "invariant {invariant} breaks in {len} steps, but the exhaustive search found {searched}"
    )]
    ShorterMissed { invariant: u8, len: usize, searched: usize },
    #[error("a run panicked (its message is on stderr)")]
    Panicked,
    #[error("the run's clock moved on {ticks} ms, past the {horizon} ms its fingerprints assume")]
    ClockPastHorizon { ticks: u64, horizon: u64 },
    #[error(
        "a step of {actor} ({call}) deleted VMM {vmm}'s row, which the reduction assumes it cannot"
    )]
    UndeclaredDeletion { actor: ActorKind, call: &'static str, vmm: PropolisUuid },
    #[error("a VMM row was deleted before any step")]
    DeletedBeforeAnyStep,
}

thread_local! {
    static CURRENT: Cell<Option<ActorId>> = const { Cell::new(None) };
}

/// A call to park, as one of a group.
struct ToPark {
    call: Call,
    offer: Offer,
    wait: Option<WaitPred>,
    faults: &'static [Fault],
    costs_fault: bool,
    /// `Parked::basis`.
    basis: Option<Generation>,
}

impl ToPark {
    fn call(call: Call, wait: Option<WaitPred>, faults: &'static [Fault]) -> ToPark {
        ToPark { call, offer: Offer::Call, wait, faults, costs_fault: false, basis: None }
    }
}

/// One alternative of an environment actor's offer (see `Sched::offer`).
pub struct Alt {
    pub call: Call,
    pub wait: Option<WaitPred>,
    /// Whether taking it spends one of the run's faults.
    pub costs_fault: bool,
}

/// A condition a parked call waits for before it may be released.
pub type WaitPred = Box<dyn Fn() -> bool + Send + Sync>;

/// Read-only views of Nexus the scheduler takes at the instant something happens.
pub struct Probes {
    /// What Nexus stores for a VMM (taken when `NoSuchVmm` is answered).
    pub vmm: Box<dyn Fn(PropolisUuid) -> Option<(DbVmmState, Generation)> + Send + Sync>,
    /// How many VMM writes Nexus has logged (taken at every release), if wanted.
    pub writes: Option<Box<dyn Fn() -> usize + Send + Sync>>,
    /// The generation a Nexus request read before it calls the sled agent
    /// (`NexusStub::take_request_basis`), taken when its put-state parks.
    pub basis: Box<dyn Fn(PropolisUuid) -> Option<Generation> + Send + Sync>,
}

struct Parked {
    ticket: u64,
    /// The calls of one offer share a group (the first one's ticket); a plain call
    /// is a group of one. Releasing one withdraws the rest.
    group: u64,
    /// Its place in the group.
    alt: usize,
    actor: ActorId,
    call: Call,
    offer: Offer,
    /// Faults it may be released with.
    faults: &'static [Fault],
    costs_fault: bool,
    fault: Option<Fault>,
    /// The step index once released.
    released: Option<usize>,
    waker: Option<Waker>,
    wait: Option<WaitPred>,
    /// For a Nexus put-state: the generation its request read, which it keeps
    /// across the call (the basis of a Failed write), so part of the situation.
    basis: Option<Generation>,
}

impl Parked {
    /// Whether what it waits for holds (or it waits for nothing).
    fn ready(&self) -> bool {
        self.wait.as_ref().is_none_or(|w| w())
    }

    /// A test's wait for a state, still unmet: offered only once no call can go
    /// on, as the wait times out (`Offer::TimedOut`).
    fn waiting_for_state(&self) -> bool {
        waiting_for_state(&self.call, self.wait.as_ref())
    }
}

fn waiting_for_state(call: &Call, wait: Option<&WaitPred>) -> bool {
    call.kind == CallKind::WaitForState && wait.is_some_and(|w| !w())
}

/// Whether a call that may meet `faults` may be released with `fault`, with
/// `faults_left` of the run's budget.
fn fault_allowed(faults: &[Fault], faults_left: usize, fault: Option<Fault>) -> bool {
    fault.is_none_or(|f| faults_left > 0 && faults.contains(&f))
}

#[derive(Debug)]
struct ActorInfo {
    kind: ActorKind,
    done: bool,
    /// A rolling hash of every (call, answer) the actor has seen. An actor's code is
    /// deterministic, so this stands for its local state when runs are compared.
    history: u64,
    /// The outermost call under way (its step) and the history before it. The
    /// calls made inside it (a user operation's sled agent calls, a poke's
    /// reports) leave no trace in the history: their answers are consumed by
    /// component code that keeps across a gate only component state (hashed)
    /// and the next parked call's arguments (hashed). The outer answer is what
    /// the actor's own code keeps, so it says all the actor uses.
    outer: Option<(usize, u64)>,
    /// The actor that started this one and waits for it (a check's pass).
    parent: Option<ActorId>,
    /// Inside `waiting_for_children` and pending there (at a gate, or blocked
    /// on its children); cleared when a child finishes, since it is then about
    /// to run. It counts as quiescent only while some child of it is alive.
    waiting: bool,
    /// A check's row, while its history is still that row (before its read is
    /// answered): the VMM and the generation of the Failed write a 404 would
    /// make (its listed generation + 1, or + 2 with `watcher-skips-generation`).
    basis: Option<(PropolisUuid, u64)>,
}

/// What Nexus holds of a VMM for the fingerprint's purposes: its row's
/// generation and whether it is deleted; `None` if generations are not checked
/// (then nothing is ever stale) or there is no row.
pub type RowProbe<'a> = &'a dyn Fn(PropolisUuid) -> Option<(u64, bool)>;

/// The history a check's future has while its Failed write could no longer
/// apply (`ActorInfo::basis`), whatever generation it would be written at.
const BASIS_STALE: u64 = 0x57a1_eba5_e000_0001;

impl ActorInfo {
    /// The history as the fingerprint takes it. A check that has not yet read
    /// the sled agent depends on its row's generation only through the Failed
    /// write a 404 makes (`basis`). Once Nexus's row is deleted or at that
    /// write's generation, the write is stale whenever it comes (rows never
    /// lose generations) and the check learns only "not applied": checks of one
    /// VMM listed at different generations are then one future.
    fn hashed_history(&self, rows: RowProbe<'_>) -> u64 {
        match self.basis {
            Some((vmm, failed)) if stale_at(rows, vmm, failed) => {
                super::hash::stable_hash(&(BASIS_STALE, vmm))
            }
            _ => self.history,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Woken when the run may have become quiescent (see `idle`); only set while
    /// something waits for that, which happens over HTTP.
    idle: Option<Waker>,
    actors: Vec<ActorInfo>,
    parked: Vec<Parked>,
    steps: Vec<Step>,
    errors: Vec<HarnessError>,
    next_ticket: u64,
    /// Faults the run may still inject (explored choices, bounded by `--faults`).
    faults_left: usize,
    /// Auto-restart's calls take no fault: the `restart-unwound` finding's
    /// window, left out unless `--findings`. Fixed for a run.
    spare_restart: bool,
    /// The run is over: every call still parked goes through unscheduled, so a
    /// server thread blocked at a gate can finish and the servers can close.
    closed: bool,
    /// Steps a replay releases next, each as soon as the run is quiescent
    /// (`Sched::arm`); the next is at the back.
    script: Vec<(u64, Option<Fault>)>,
    /// What `quiescent` asks of the actors, kept as they change.
    settle: Settle,
}

impl Inner {
    /// Records `actor`'s `call`, released with `fault` (spending one of the
    /// run's faults if released with one, or if the call `costs_fault`), as
    /// the next step; returns its index. Its
    /// actor has nothing parked any more, and the step is its outer call
    /// unless one is under way.
    fn admit(
        &mut self,
        actor: ActorId,
        call: Call,
        (fault, costs_fault): (Option<Fault>, bool),
        timed_out: bool,
        writes_from: usize,
    ) -> usize {
        self.steps.push(Step {
            actor,
            call,
            answer: Answer::Pending,
            fault,
            timed_out,
            writes_from,
        });
        let index = self.steps.len() - 1;
        if fault.is_some() || costs_fault {
            self.faults_left = self.faults_left.saturating_sub(1);
        }
        Settle::set(&mut self.settle.open, actor, false);
        if let Some(a) = self.actors.get_mut(actor) {
            if a.outer.is_none() {
                a.outer = Some((index, a.history));
            }
        }
        index
    }
}

/// Bits by actor id, kept beside `Inner::actors` and `Inner::parked` so that
/// `quiescent`, asked as each replayed step parks, is a few masks.
#[derive(Default)]
struct Settle {
    done: u64,
    /// A call parked and not yet released.
    open: u64,
    /// Blocked in `waiting_for_children` (`ActorInfo::waiting`).
    waiting: u64,
    /// Some child still running.
    parents: u64,
    /// Running children, by actor.
    children: Vec<u32>,
    /// Over 64 actors: `quiescent` asks the lists instead.
    wide: bool,
}

impl Settle {
    fn bit(id: ActorId) -> u64 {
        if id < 64 {
            1 << id
        } else {
            0
        }
    }

    fn added(&mut self, id: ActorId, parent: Option<ActorId>) {
        self.wide |= id >= 64;
        self.children.push(0);
        if let Some(n) = parent.and_then(|p| self.children.get_mut(p)) {
            *n += 1;
        }
        self.parents |= parent.map_or(0, Self::bit);
    }

    fn finished(&mut self, id: ActorId, parent: Option<ActorId>) {
        self.done |= Self::bit(id);
        if let Some(p) = parent {
            self.waiting &= !Self::bit(p);
            if let Some(n) = self.children.get_mut(p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.parents &= !Self::bit(p);
                }
            }
        }
    }

    fn set(mask: &mut u64, id: ActorId, on: bool) {
        if on {
            *mask |= Self::bit(id);
        } else {
            *mask &= !Self::bit(id);
        }
    }
}

#[derive(Default)]
pub struct Sched {
    inner: Mutex<Inner>,
    probes: OnceLock<Probes>,
}

impl fmt::Debug for Sched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.lock();
        f.debug_struct("Sched")
            .field("actors", &g.actors)
            .field("parked", &g.parked.len())
            .field("steps", &g.steps.len())
            .finish()
    }
}

/// Whether a VMM write at generation `gen` can no longer apply: its row is
/// deleted or already at `gen` or past it (and generations are checked, or
/// `rows` knows no row). Rows never lose generations, so it stays so.
pub fn stale_at(rows: RowProbe<'_>, vmm: PropolisUuid, gen: u64) -> bool {
    rows(vmm).is_some_and(|(now, deleted)| deleted || now >= gen)
}

/// A check's write as the fingerprint takes it: one that can no longer apply
/// (its row deleted, or at its generation or past it) is answered "not applied"
/// whatever it carries, and its check then ends, so what it carries is left out.
pub fn stale_write_call(call: Call, rows: RowProbe<'_>) -> Call {
    match (call.kind, call.from, call.vmm, call.arg) {
        (CallKind::VmmWrite, Component::Watcher, Some(vmm), Arg::State(_, gen))
            if stale_at(rows, vmm, gen.as_u64()) =>
        {
            Call { arg: Arg::None, ..call }
        }
        _ => call,
    }
}

/// A multiset's hash: how many, and the sum of each one's hash alone, so the
/// order they come in changes nothing, and nothing is buffered to sort.
fn multiset<T: Hash>(items: impl Iterator<Item = T>) -> (usize, u64) {
    items.fold((0, 0), |(n, sum), t| (n + 1, sum.wrapping_add(super::hash::stable_hash(&t))))
}

impl Sched {
    pub fn new() -> Arc<Sched> {
        let sched = Sched::default();
        {
            // Room for a typical run's steps and calls up front: growing them
            // step by step was a twentieth of a search's time.
            let mut g = sched.lock();
            g.steps.reserve(64);
            g.parked.reserve(16);
            g.actors.reserve(16);
            g.settle.children.reserve(16);
        }
        Arc::new(sched)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_probes(&self, probes: Probes) {
        // Set once per run, right after Nexus exists; a second call is a harness bug.
        if self.probes.set(probes).is_err() {
            self.record_error(HarnessError::ProbesSetTwice);
        }
    }

    /// A fault of the harness itself; it fails the run.
    pub fn record_error(&self, e: HarnessError) {
        self.lock().errors.push(e);
    }

    /// Ends the run's scheduling: every parked call, and any parked later, goes
    /// through unscheduled (and unrecorded).
    pub fn close(&self) {
        let mut g = self.lock();
        g.closed = true;
        for p in &mut g.parked {
            if let Some(w) = p.waker.take() {
                w.wake();
            }
        }
    }

    /// How many faults the schedule may inject in this run.
    pub fn set_fault_budget(&self, n: usize) {
        self.lock().faults_left = n;
    }

    /// Whether auto-restart's calls are spared the faults the others may take.
    pub fn spare_restart(&self, spare: bool) {
        self.lock().spare_restart = spare;
    }

    pub fn add_actor(&self, kind: ActorKind) -> ActorId {
        self.add(kind, None, 0)
    }

    fn add(&self, kind: ActorKind, parent: Option<ActorId>, history: u64) -> ActorId {
        let mut g = self.lock();
        let info = ActorInfo {
            kind,
            done: false,
            history,
            outer: None,
            parent,
            waiting: false,
            basis: None,
        };
        g.actors.push(info);
        let id = g.actors.len() - 1;
        g.settle.added(id, parent);
        id
    }

    /// The next update step's kind (`update1`, `update2`, ...).
    pub fn next_update(&self) -> ActorKind {
        ActorKind::Update(self.count(|k| matches!(k, ActorKind::Update(_))))
    }

    /// The next check's kind (`check1`, `check2`, ...).
    pub fn next_check(&self) -> ActorKind {
        ActorKind::Check(self.count(|k| matches!(k, ActorKind::Check(_))))
    }

    /// One more than the number of actors of a kind.
    fn count(&self, f: impl Fn(ActorKind) -> bool) -> u32 {
        let n = self.lock().actors.iter().filter(|a| f(a.kind)).count();
        u32::try_from(n + 1).unwrap_or(u32::MAX)
    }

    /// Adds an actor started by the one being polled, which may then wait for it
    /// in `waiting_for_children`. `seed` stands for what its future starts from
    /// (what the parent handed it), as its history before any call.
    pub fn add_child(&self, kind: ActorKind, seed: u64) -> ActorId {
        let parent = CURRENT.with(Cell::get);
        if parent.is_none() {
            self.record_error(HarnessError::OutsideActor { what: format!("{kind} started") });
        }
        self.add(kind, parent, seed)
    }

    /// `add_child` for a watcher's check of `vmm` whose 404 would make a Failed
    /// write at generation `failed` (see `ActorInfo::hashed_history`).
    pub fn add_check(&self, seed: u64, (vmm, failed): (PropolisUuid, u64)) -> ActorId {
        let id = self.add_child(self.next_check(), seed);
        if let Some(a) = self.lock().actors.get_mut(id) {
            a.basis = Some((vmm, failed));
        }
        id
    }

    /// `f`, run by an actor that blocks in it only on its children: while it
    /// does, the run counts as quiescent once they are.
    pub fn waiting_for_children<F: Future>(self: &Arc<Self>, f: F) -> WaitingForChildren<F> {
        WaitingForChildren { sched: Arc::clone(self), inner: Box::pin(f) }
    }

    pub fn actor_kinds(&self) -> Vec<ActorKind> {
        self.lock().actors.iter().map(|a| a.kind).collect()
    }

    /// Feeds every live actor's kind and history, and every parked call,
    /// into `h`: with the components' own state, this identifies a situation.
    pub fn hash_actors<H: Hasher>(&self, h: &mut H, rows: RowProbe<'_>) {
        let g = self.lock();
        // A finished actor has no future, so it is left out; and an actor is named
        // by what it is, not when it started (`update3` and `update2` doing the
        // same are one): no component reads actor ids or numbers, they only
        // label the steps. As a multiset, like the parked calls: which of two
        // live actors started first is the path's, not the situation's (a free
        // step that starts a check and a report that starts an update step meet
        // here in either order).
        let live = g.actors.iter().filter(|a| !a.done);
        multiset(live.map(|a| (a.kind.unnumbered(), a.hashed_history(rows)))).hash(h);
        // As a set too: which was parked first is ticket numbering, not state.
        let parked = g.parked.iter().map(|p| {
            let who = g.actors.get(p.actor).map(|a| (a.kind.unnumbered(), a.hashed_history(rows)));
            (
                who,
                p.alt,
                p.released.is_some(),
                p.offer,
                p.fault,
                stale_write_call(p.call, rows),
                p.basis,
            )
        });
        multiset(parked).hash(h);
        g.faults_left.hash(h);
    }

    /// Called by an actor at a point where its future no longer depends on what it
    /// has seen so far, only on `tag` (the watcher between passes: a pass keeps
    /// nothing for the next; a check as it writes). Its history is replaced by
    /// `tag`, so situations that differ only in what it saw are recognised as one.
    pub fn forget_history(&self, tag: u64) {
        let Some(id) = CURRENT.with(Cell::get) else {
            self.record_error(HarnessError::OutsideActor { what: "forget_history called".into() });
            return;
        };
        if let Some(a) = self.lock().actors.get_mut(id) {
            a.history = tag;
            a.basis = None;
        }
    }

    pub fn all_done(&self) -> bool {
        self.lock().actors.iter().all(|a| a.done)
    }

    /// Actors still running (parked or blocked).
    pub fn unfinished(&self) -> Vec<ActorKind> {
        self.lock().actors.iter().filter(|a| !a.done).map(|a| a.kind).collect()
    }

    fn actor_done(&self, id: ActorId) {
        let mut g = self.lock();
        let mut parent = None;
        if let Some(a) = g.actors.get_mut(id) {
            a.done = true;
            parent = a.parent;
        }
        if let Some(p) = parent.and_then(|p| g.actors.get_mut(p)) {
            p.waiting = false;
        }
        g.settle.finished(id, parent);
        wake_idle(&mut g);
    }

    /// Resolves once the run is quiescent.
    pub fn idle(&self) -> Idle<'_> {
        Idle { sched: self }
    }

    /// The actor kind and call of the step released last, if any.
    pub fn last_released(&self) -> Option<(ActorKind, Call)> {
        let g = self.lock();
        let s = g.steps.last()?;
        Some((g.actors.get(s.actor).map_or(ActorKind::Scenario, |a| a.kind), s.call))
    }

    pub fn steps_len(&self) -> usize {
        self.lock().steps.len()
    }

    pub fn steps(&self) -> Vec<Step> {
        self.lock().steps.clone()
    }

    /// Visits the steps from index `from` on, with their indices; returns how many
    /// steps there are. `f` runs under the scheduler's lock: it must not call back in.
    pub fn visit_steps_since(&self, from: usize, mut f: impl FnMut(usize, &Step)) -> usize {
        let g = self.lock();
        for (i, s) in g.steps.iter().enumerate().skip(from) {
            f(i, s);
        }
        g.steps.len()
    }

    /// Whether a call that could put `vmm` back in the sled agent's table waits
    /// at a gate: its registration, or a report of it (the sim puts back a
    /// VMM it took out to report, if the report fails).
    pub fn may_restore(&self, vmm: PropolisUuid) -> bool {
        let g = self.lock();
        g.parked.iter().any(|p| {
            p.released.is_none()
                && p.call.vmm == Some(vmm)
                && matches!(p.call.kind, CallKind::VmmRegister | CallKind::CpapiInstancesPut)
        })
    }

    /// The actor whose poke of `vmm` is under way (released, not yet answered).
    pub fn poking(&self, vmm: PropolisUuid) -> Option<ActorId> {
        let g = self.lock();
        g.steps
            .iter()
            .rev()
            .find(|s| {
                s.call.kind == CallKind::VmmPoke
                    && s.call.vmm == Some(vmm)
                    && s.answer == Answer::Pending
            })
            .map(|s| s.actor)
    }

    pub fn errors(&self) -> Vec<HarnessError> {
        self.lock().errors.clone()
    }

    /// Whether any call parked and not yet released satisfies `f`.
    pub fn any_parked(&self, mut f: impl FnMut(&Call) -> bool) -> bool {
        self.lock().parked.iter().any(|p| p.released.is_none() && f(&p.call))
    }

    /// Visits every call parked and not yet released. `f` runs under the lock.
    pub fn visit_parked(&self, mut f: impl FnMut(&Call)) {
        self.lock().parked.iter().filter(|p| p.released.is_none()).for_each(|p| f(&p.call));
    }

    /// The parked calls that may be released now, in actor order, into a buffer the
    /// caller reuses from step to step.
    ///
    /// A call that may fault is offered once plain and once per fault, while the
    /// run has faults left; the plain release comes first. An actor's `Done` is
    /// offered only when every other choice is an alternative, and only the first
    /// actor's: doing nothing more now or after the others is the same run.
    pub fn enabled_into(&self, out: &mut Vec<Choice>) {
        out.clear();
        let g = self.lock();
        let can_fault = g.faults_left > 0;
        let choice = |p: &Parked, offer| Choice {
            ticket: p.ticket,
            actor: p.actor,
            kind: g.actors.get(p.actor).map_or(ActorKind::Scenario, |a| a.kind),
            call: p.call,
            offer,
            fault: None,
        };
        for p in &g.parked {
            if p.released.is_some() || (p.costs_fault && !can_fault) || !p.ready() {
                continue;
            }
            let choice = choice(p, p.offer);
            out.push(choice);
            if can_fault {
                out.extend(p.faults.iter().map(|&f| Choice { fault: Some(f), ..choice }));
            }
        }
        let calls = out.iter().any(|c| c.offer == Offer::Call);
        if !calls {
            // No call can go on: a test's wait for a state times out.
            let waiting = g.parked.iter().filter(|p| p.released.is_none() && p.waiting_for_state());
            out.extend(waiting.map(|p| choice(p, Offer::TimedOut)));
        }
        drop(g);
        // Keys are unique (a ticket is one call, offered once per fault at most).
        out.sort_unstable_by_key(|c| (c.actor, c.ticket, c.fault));
        if calls {
            out.retain(|c| c.offer != Offer::Done);
        } else {
            let mut kept = false;
            out.retain(|c| c.offer != Offer::Done || !std::mem::replace(&mut kept, true));
        }
    }

    /// Lets the call parked under `ticket` go, with `fault` injected if given; it
    /// becomes the next step, and the other alternatives of its offer are
    /// withdrawn. False if it was refused (no such call waits, or the fault is
    /// not one it may meet): the refusal is recorded as a harness error.
    pub fn release(&self, ticket: u64, fault: Option<Fault>) -> bool {
        let writes_from = self.probes.get().and_then(|p| p.writes.as_ref()).map_or(0, |w| w());
        let mut g = self.lock();
        let g = &mut *g;
        let Some(pos) = g.parked.iter().position(|p| p.ticket == ticket && p.released.is_none())
        else {
            g.errors.push(HarnessError::UnknownTicket { ticket });
            return false;
        };
        let p = &mut g.parked[pos];
        if !fault_allowed(p.faults, g.faults_left, fault) {
            g.errors.push(HarnessError::FaultNotAllowed {
                call: p.call.kind.label(),
                fault: fault.map_or("none", Fault::label),
            });
            return false;
        }
        let timed_out = p.waiting_for_state();
        let (actor, call, costs_fault) = (p.actor, p.call, p.costs_fault);
        p.fault = fault;
        let (group, waker) = (p.group, p.waker.take());
        let index = g.admit(actor, call, (fault, costs_fault), timed_out, writes_from);
        g.parked[pos].released = Some(index);
        g.parked.retain(|q| q.group != group || q.released.is_some());
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Parks `alts` as one group; returns its id (the first ticket), and the
    /// admission of one of them if the armed script (`arm`) releases it at once
    /// (nothing else can move, and it is the script's next step): it is then
    /// never parked, and its actor goes on without yielding.
    fn park<A>(&self, actor: ActorId, mut alts: A) -> (u64, Option<Admitted>)
    where
        A: AsMut<[ToPark]> + IntoIterator<Item = ToPark>,
    {
        for p in alts.as_mut() {
            p.basis = match (p.call.kind, p.call.from, p.call.vmm) {
                (CallKind::VmmPutState, Component::Nexus, Some(vmm)) => {
                    self.probes.get().and_then(|probes| (probes.basis)(vmm))
                }
                _ => None,
            };
        }
        let mut g = self.lock();
        debug_assert!(
            g.parked.iter().all(|p| p.actor != actor || p.released.is_some()),
            "an actor parks one group at a time"
        );
        let group = g.next_ticket + 1;
        // Auto-restart's calls are offered no fault while it is spared.
        let spared =
            g.spare_restart && g.actors.get(actor).is_some_and(|a| a.kind == ActorKind::Restart);
        if let Some(admitted) = self.admit_own(&mut g, actor, group, (alts.as_mut(), spared)) {
            return (group, Some(admitted));
        }
        for (alt, p) in alts.into_iter().enumerate() {
            g.next_ticket += 1;
            let ticket = g.next_ticket;
            g.parked.push(Parked {
                ticket,
                group,
                alt,
                actor,
                call: p.call,
                offer: p.offer,
                faults: if spared { &[] } else { p.faults },
                costs_fault: p.costs_fault,
                fault: None,
                released: None,
                waker: None,
                wait: p.wait,
                basis: p.basis,
            });
        }
        Settle::set(&mut g.settle.open, actor, true);
        wake_idle(&mut g);
        drop(g);
        self.follow_script();
        (group, None)
    }

    /// `park`'s release at once: if the script's next step is one of `alts`,
    /// as offered from `group` on, and every other actor is settled, it is
    /// recorded as `release` would record it once parked, and the group's
    /// tickets are spent as parking them would.
    fn admit_own(
        &self,
        g: &mut Inner,
        actor: ActorId,
        group: u64,
        (alts, spared): (&[ToPark], bool),
    ) -> Option<Admitted> {
        let &(ticket, fault) = g.script.last()?;
        let alt = usize::try_from(ticket.checked_sub(group)?).ok()?;
        let p = alts.get(alt)?;
        let allowed = fault_allowed(if spared { &[] } else { p.faults }, g.faults_left, fault);
        // A step's count of Nexus's writes is taken before the lock (`release`).
        let traced = self.probes.get().is_some_and(|p| p.writes.is_some());
        if g.closed || !allowed || traced || !quiescent(g, Some(actor)) {
            return None;
        }
        g.script.pop();
        g.next_ticket += alts.len() as u64;
        let timed_out = waiting_for_state(&p.call, p.wait.as_ref());
        let step = g.admit(actor, p.call, (fault, p.costs_fault), timed_out, 0);
        Some(Admitted { alt, step, fault })
    }

    /// Hands the scheduler steps to release one after another, each once the
    /// run is quiescent, as the driver would release them between its turns:
    /// a replayed prefix then runs without going back to the driver (and an
    /// actor whose own call is next goes on without yielding). Only for steps
    /// the driver would release unasked and unchecked (`Chooser::replay_ahead`)
    /// and only in process; anything unexpected (a step not parked, a fault it
    /// may not meet, an update step queued, which the driver starts between
    /// steps) disarms the rest, and the driver goes on from there.
    ///
    /// A step is released as an actor parks and leaves every actor settled;
    /// where the last to settle finishes instead (or a child of a waiting
    /// actor does), the driver gets its turn and arms the rest again. A run
    /// whose steps count Nexus's writes (`Probes::writes`, taken before the
    /// lock) has its steps released once parked, never as they park.
    ///
    /// That a settled run is one whose pool has stalled rests on three things
    /// the harness keeps: every task on the pool is an actor, added before it
    /// is spawned (`spawn_on`, `add_check`); an actor has one group parked at a
    /// time (it waits at it); and an actor blocked in `waiting_for_children`
    /// is woken only by a child that finishes, which clears its wait first
    /// (`actor_done`).
    pub fn arm(&self, steps: impl DoubleEndedIterator<Item = (u64, Option<Fault>)>) {
        let mut g = self.lock();
        g.script.clear();
        g.script.extend(steps.rev());
    }

    /// Drops the steps `arm` gave: the driver releases what comes next.
    pub fn disarm(&self) {
        self.lock().script.clear();
    }

    /// Releases the script's next step if the run is quiescent and the step is
    /// parked and may be released as given; disarms the script if it is not.
    fn follow_script(&self) {
        let (ticket, fault) = {
            let mut g = self.lock();
            let Some(&(ticket, fault)) = g.script.last() else {
                return;
            };
            if !quiescent(&g, None) {
                return;
            }
            let releasable = !g.closed
                && g.parked.iter().any(|p| {
                    p.ticket == ticket
                        && p.released.is_none()
                        && fault_allowed(p.faults, g.faults_left, fault)
                });
            if !releasable {
                g.script.clear();
                return;
            }
            g.script.pop();
            (ticket, fault)
        };
        self.release(ticket, fault);
    }

    pub(super) fn complete(&self, step: usize, answer: Answer) {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(s) = g.steps.get_mut(step) else {
            g.errors.push(HarnessError::UnknownStep { step });
            return;
        };
        if let Some(a) = g.actors.get_mut(s.actor) {
            match a.outer {
                Some((outer, before)) if outer == step => {
                    a.outer = None;
                    let mut h = super::hash::StableHasher::default();
                    (before, s.call).hash(&mut h);
                    answer.hash_learned(&mut h);
                    a.history = h.finish();
                    a.basis = None;
                }
                // A call made inside the outer one: its answer is consumed by the
                // code that made it before that code parks again or returns, and
                // what it keeps across a gate is component state (the sim's
                // `in_flight`) or the next parked call's arguments, both hashed.
                _ => {}
            }
        }
        s.answer = answer;
        wake_idle(g);
    }

    /// What Nexus holds for a VMM right now (for `Answer::Gone`).
    pub fn probe(&self, vmm: PropolisUuid) -> Option<(DbVmmState, Generation)> {
        self.probes.get().and_then(|p| (p.vmm)(vmm))
    }

    /// Parks the calling actor until released (and, with `wait`, until the condition
    /// holds), then runs the call and records its answer. The caller is the actor
    /// being polled on this thread, else `fallback` (for calls a server makes on
    /// an actor's behalf).
    pub async fn gate<T, Fut>(
        self: &Arc<Self>,
        call: Call,
        wait: Option<WaitPred>,
        fallback: Option<ActorId>,
        run: impl FnOnce() -> Fut,
        describe: impl FnOnce(&T) -> Answer,
    ) -> T
    where
        Fut: Future<Output = T>,
    {
        let no_fault = None::<Injection<fn(Fault) -> T>>;
        self.gate_faulty(call, wait, fallback, &[], |_| run(), no_fault, describe).await
    }

    /// `gate`, for a call that may be released with one of `faults`, injected as
    /// `inject` says. `Timeout`: the callee is called and its answer dropped for
    /// what `fail` makes. `Unavailable`: the callee refuses the call itself when
    /// `run(true)` asks it to (over the wire: a server answers 503 and applies
    /// nothing), else it is never called and `fail` makes what the caller sees.
    #[allow(clippy::too_many_arguments)]
    pub async fn gate_faulty<T, Fut>(
        self: &Arc<Self>,
        call: Call,
        wait: Option<WaitPred>,
        fallback: Option<ActorId>,
        faults: &'static [Fault],
        run: impl FnOnce(bool) -> Fut,
        inject: Option<Injection<impl FnOnce(Fault) -> T>>,
        describe: impl FnOnce(&T) -> Answer,
    ) -> T
    where
        Fut: Future<Output = T>,
    {
        let Some(actor) = CURRENT.with(Cell::get).or(fallback) else {
            // Only reachable if a component spawns work outside the harness's actors;
            // the run is then not deterministic, so it is recorded as a harness error.
            self.record_error(HarnessError::OutsideActor {
                what: format!("{} called", call.kind.label()),
            });
            return run(false).await;
        };
        let faults = if inject.is_some() { faults } else { &[] };
        let admitted = match self.park(actor, [ToPark::call(call, wait, faults)]) {
            (_, Some(now)) => Some(now),
            (group, None) => Admission { sched: Arc::clone(self), group }.await,
        };
        let fault = admitted.and_then(|a| a.fault);
        let out = match (fault, inject) {
            (Some(Fault::Unavailable), Some(i)) if i.callee_refuses => run(true).await,
            (Some(Fault::Unavailable), Some(i)) => (i.fail)(Fault::Unavailable),
            (Some(Fault::Timeout), Some(i)) => {
                drop(run(false).await);
                (i.fail)(Fault::Timeout)
            }
            _ => run(false).await,
        };
        if let Some(a) = admitted {
            let answer = match a.fault {
                Some(f) => Answer::Injected(f),
                None => describe(&out),
            };
            self.complete(a.step, answer);
        }
        out
    }

    /// Parks the calling actor at an offer of alternatives, one of which the
    /// scheduler releases; returns which, and its step, whose answer the caller
    /// records with `complete` once the chosen call has run. `None` outside an
    /// actor (a harness error, recorded).
    pub async fn offer(self: &Arc<Self>, alts: Vec<Alt>, done: Call) -> Option<(usize, usize)> {
        let Some(actor) = CURRENT.with(Cell::get) else {
            self.record_error(HarnessError::OutsideActor { what: "an offer made".into() });
            return None;
        };
        let n = alts.len();
        let mut parked = Vec::with_capacity(n + 1);
        parked.extend(alts.into_iter().map(|a| ToPark {
            call: a.call,
            offer: Offer::Alternative,
            wait: a.wait,
            faults: &[],
            costs_fault: a.costs_fault,
            basis: None,
        }));
        parked.push(ToPark { offer: Offer::Done, ..ToPark::call(done, None, &[]) });
        let a = match self.park(actor, parked) {
            (_, Some(now)) => now,
            (group, None) => Admission { sched: Arc::clone(self), group }.await?,
        };
        if a.alt == n {
            self.complete(a.step, Answer::Ack);
        }
        Some((a.alt, a.step))
    }
}

/// Every actor is done, has a call parked and not yet released (or is
/// `parking` one now), or waits in `waiting_for_children` for a child still
/// running: nothing moves until the scheduler releases something.
fn quiescent(g: &Inner, parking: Option<ActorId>) -> bool {
    let by_lists = || {
        g.actors.iter().enumerate().all(|(id, a)| {
            a.done
                || parking == Some(id)
                || g.parked.iter().any(|p| p.actor == id && p.released.is_none())
                || (a.waiting && g.actors.iter().any(|c| c.parent == Some(id) && !c.done))
        })
    };
    let s = &g.settle;
    if s.wide {
        return by_lists();
    }
    let all = u64::MAX >> (64 - g.actors.len().max(1));
    let all = if g.actors.is_empty() { 0 } else { all };
    let open = s.open | parking.map_or(0, Settle::bit);
    let by_bits = (s.done | open | (s.waiting & s.parents)) & all == all;
    debug_assert_eq!(by_bits, by_lists(), "quiescence's bits disagree with the lists");
    by_bits
}

fn wake_idle(g: &mut Inner) {
    if let Some(w) = g.idle.take() {
        w.wake();
    }
}

/// See `Sched::idle`.
pub struct Idle<'a> {
    sched: &'a Sched,
}

impl Future for Idle<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.sched.lock();
        if quiescent(&g, None) {
            return Poll::Ready(());
        }
        g.idle = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Resolves when the scheduler has released one call of the group.
struct Admission {
    sched: Arc<Sched>,
    group: u64,
}

/// Which call of a group was released, as which step, with which fault.
#[derive(Clone, Copy, Debug)]
struct Admitted {
    alt: usize,
    step: usize,
    fault: Option<Fault>,
}

impl Future for Admission {
    type Output = Option<Admitted>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Admitted>> {
        let mut g = self.sched.lock();
        let group = self.group;
        if g.closed {
            if let Some(p) = g.parked.iter().find(|p| p.group == group) {
                let actor = p.actor;
                Settle::set(&mut g.settle.open, actor, false);
            }
            g.parked.retain(|p| p.group != group);
            return Poll::Ready(None);
        }
        let released = g.parked.iter().enumerate().find_map(|(i, p)| {
            (p.group == group).then_some(())?;
            p.released.map(|step| (i, step))
        });
        if let Some((pos, step)) = released {
            // No order of the parked calls is read: the choices are sorted on
            // unique keys, the fingerprint takes them as a multiset, a release
            // finds its call by ticket, and the observer's `Sent` events from
            // them (`visit_parked`) keep the highest generation per VMM, which
            // no order changes. So none is moved up.
            let p = g.parked.swap_remove(pos);
            return Poll::Ready(Some(Admitted { alt: p.alt, step, fault: p.fault }));
        }
        // Every call of the group shares the waker: whichever is released wakes it.
        let mut found = false;
        for p in g.parked.iter_mut().filter(|p| p.group == group) {
            p.waker = Some(cx.waker().clone());
            found = true;
        }
        if !found {
            g.errors.push(HarnessError::OfferVanished { group });
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// How a gate injects a fault: what the caller sees instead of the callee's
/// answer, and whether the callee refuses a call itself when asked to.
pub struct Injection<F> {
    pub fail: F,
    pub callee_refuses: bool,
}

/// See `Sched::waiting_for_children`.
pub struct WaitingForChildren<F> {
    sched: Arc<Sched>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for WaitingForChildren<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = self.inner.as_mut().poll(cx);
        if let Some(id) = CURRENT.with(Cell::get) {
            let mut g = self.sched.lock();
            if let Some(a) = g.actors.get_mut(id) {
                a.waiting = r.is_pending();
                Settle::set(&mut g.settle.waiting, id, r.is_pending());
            }
            wake_idle(&mut g);
        }
        r
    }
}

pin_project_lite::pin_project! {
    /// An actor's future, tagged with its id while it is polled. Generic over
    /// the future, so the pool boxes each actor once.
    pub struct Tagged<F> {
        id: ActorId,
        sched: Arc<Sched>,
        #[pin]
        inner: F,
    }
}

impl<F: Future<Output = ()>> Tagged<F> {
    pub fn new(id: ActorId, sched: Arc<Sched>, inner: F) -> Self {
        Tagged { id, sched, inner }
    }
}

impl<F: Future<Output = ()>> Future for Tagged<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let prev = CURRENT.with(|c| c.replace(Some(*this.id)));
        let r = this.inner.poll(cx);
        CURRENT.with(|c| c.set(prev));
        if r.is_ready() {
            this.sched.actor_done(*this.id);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::step::{Arg, Component};
    use sled_agent_api::VmmState;

    fn hash(s: &Sched) -> u64 {
        hash_with_row(s, None)
    }

    /// The hash when Nexus holds VMM 7's row at `row` (generation, deleted).
    fn hash_with_row(s: &Sched, row: Option<(u64, bool)>) -> u64 {
        let mut h = crate::harness::hash::StableHasher::default();
        s.hash_actors(&mut h, &|_| row);
        h.finish()
    }

    fn call(kind: CallKind) -> Call {
        Call {
            kind,
            from: Component::Watcher,
            to: Component::SledAgent,
            vmm: Some(PropolisUuid::from_u128(7)),
            arg: Arg::None,
        }
    }

    /// A scheduler with a scenario and a watcher, the watcher parked at a call.
    fn sched() -> Sched {
        let s = Sched::default();
        s.add_actor(ActorKind::Scenario);
        let w = s.add_actor(ActorKind::Watcher);
        s.park(w, vec![ToPark::call(call(CallKind::VmmGetState), None, &[])]);
        s
    }

    /// Each part of an actor and of a parked call that the fingerprint claims to
    /// cover moves it.
    #[test]
    fn the_hash_covers_every_actor_and_parked_call() {
        let base = hash(&sched());
        type Perturb = fn(&Sched);
        let covered: [(&str, Perturb); 9] = [
            ("fault budget", |s| s.set_fault_budget(3)),
            ("parked offer kind", |s| s.lock().parked[0].offer = Offer::Alternative),
            ("another actor", |s| {
                s.add_actor(ActorKind::Restart);
            }),
            ("done", |s| s.actor_done(0)),
            ("history", |s| s.lock().actors[1].history = 1),
            ("kind", |s| s.lock().actors[1].kind = ActorKind::Update(1)),
            ("parked call", |s| s.lock().parked[0].call.kind = CallKind::VmmList),
            ("parked actor", |s| s.lock().parked[0].actor = 0),
            ("released", |s| {
                let t = s.lock().parked[0].ticket;
                s.release(t, None);
            }),
        ];
        for (field, perturb) in covered {
            let s = sched();
            perturb(&s);
            assert_ne!(hash(&s), base, "{field} is not in the hash");
        }
        // Tickets are numbering, not state, and so is the order calls were parked in.
        let s = sched();
        s.lock().parked[0].ticket += 100;
        assert_eq!(hash(&s), base);
        let two = |first: CallKind, second: CallKind| {
            let s = Sched::default();
            let (a, b) = (s.add_actor(ActorKind::Scenario), s.add_actor(ActorKind::Watcher));
            s.park(a, [ToPark::call(call(first), None, &[])]);
            s.park(b, [ToPark::call(call(second), None, &[])]);
            s
        };
        let ab = two(CallKind::VmmList, CallKind::VmmGetState);
        let ba = Sched::default();
        let (a, b) = (ba.add_actor(ActorKind::Scenario), ba.add_actor(ActorKind::Watcher));
        ba.park(b, [ToPark::call(call(CallKind::VmmGetState), None, &[])]);
        ba.park(a, [ToPark::call(call(CallKind::VmmList), None, &[])]);
        assert_eq!(hash(&ab), hash(&ba));
        assert_ne!(hash(&ab), hash(&two(CallKind::VmmGetState, CallKind::VmmList)));
    }

    /// A check that has not read yet, listed at generation `listed`, parked at its
    /// get-state; or, with `write`, one parked at its write of Failed at that
    /// generation.
    fn check_at(listed: u64, write: Option<u64>) -> Sched {
        check_skipping(listed, 1, write)
    }

    /// `check_at`, for a watcher whose Failed write goes `skip` past the
    /// listed generation.
    fn check_skipping(listed: u64, skip: u64, write: Option<u64>) -> Sched {
        let s = Sched::default();
        s.add_actor(ActorKind::Watcher);
        let vmm = PropolisUuid::from_u128(7);
        let as_actor = |id, f: &dyn Fn() -> ActorId| {
            CURRENT.with(|cur| cur.set(Some(id)));
            let r = f();
            CURRENT.with(|cur| cur.set(None));
            r
        };
        let c = as_actor(0, &|| s.add_check(listed, (vmm, listed + skip)));
        let parked = match write {
            None => call(CallKind::VmmGetState),
            Some(gen) => Call {
                kind: CallKind::VmmWrite,
                arg: Arg::State(VmmState::Failed, Generation::try_from(gen).expect("a generation")),
                ..call(CallKind::VmmWrite)
            },
        };
        if write.is_some() {
            as_actor(c, &|| {
                s.forget_history(1);
                c
            });
        }
        s.park(c, vec![ToPark::call(parked, None, &[])]);
        s
    }

    /// A check's listed generation is in its future only while the Failed write
    /// a 404 makes could still apply: once Nexus's row is deleted or at that
    /// write's generation, checks listed at different generations are one; and
    /// a check's write that is stale carries nothing that counts.
    #[test]
    fn a_checks_listed_generation_counts_until_its_failed_write_is_stale() {
        let (at3, at4) = (check_at(3, None), check_at(4, None));
        let row = |gen, deleted| Some((gen, deleted));
        let same = |a: &Sched, b: &Sched, r| hash_with_row(a, r) == hash_with_row(b, r);
        // Gen 4 is stale for the check listed at 3 (its write: 4), not yet for
        // the one listed at 4 (its write: 5).
        assert!(!same(&at3, &at4, row(4, false)));
        assert!(same(&at3, &at4, row(5, false)));
        assert!(same(&at3, &at4, row(4, true)));
        // With the seeded skip the writes are 5 and 6: gen 5 is not enough.
        let (skip3, skip4) = (check_skipping(3, 2, None), check_skipping(4, 2, None));
        assert!(!same(&skip3, &skip4, row(5, false)));
        assert!(same(&skip3, &skip4, row(6, false)));
        // Checks of two VMMs stay apart, stale or not.
        let other = check_at(3, None);
        if let Some(a) = other.lock().actors.get_mut(1) {
            a.basis = Some((PropolisUuid::from_u128(8), 4));
        }
        assert!(!same(&at3, &other, row(9, false)));
        // Once the check has read, its history is its own again.
        let read = |listed| {
            let s = check_at(listed, None);
            let ticket = s.lock().parked[0].ticket;
            s.release(ticket, None);
            s.complete(0, Answer::Ack);
            s
        };
        assert!(!same(&read(3), &read(4), row(9, false)));
        // Generations not checked (no row probe): nothing is ever stale.
        assert_ne!(hash_with_row(&at3, None), hash_with_row(&at4, None));
        let (w5, w6) = (check_at(3, Some(5)), check_at(3, Some(6)));
        assert_ne!(hash_with_row(&w5, row(5, false)), hash_with_row(&w6, row(5, false)));
        assert_eq!(hash_with_row(&w5, row(6, false)), hash_with_row(&w6, row(6, false)));
        assert_eq!(hash_with_row(&w5, row(1, true)), hash_with_row(&w6, row(1, true)));
    }

    /// A finished actor has no future, and a number only orders actors of a kind
    /// by start: runs that differ only there are one situation. A live actor's
    /// kind still counts.
    #[test]
    fn finished_actors_and_actor_numbers_leave_no_trace() {
        let with = |extra_done: usize, n: u32| {
            let s = Sched::default();
            for _ in 0..extra_done {
                let u = s.add_actor(ActorKind::Update(1));
                s.actor_done(u);
            }
            let c = s.add_actor(ActorKind::Check(n));
            s.park(c, vec![ToPark::call(call(CallKind::VmmGetState), None, &[])]);
            hash(&s)
        };
        assert_eq!(with(0, 1), with(2, 3), "done actors and numbers are not state");
        let s = Sched::default();
        let u = s.add_actor(ActorKind::Update(1));
        s.park(u, vec![ToPark::call(call(CallKind::VmmGetState), None, &[])]);
        assert_ne!(hash(&s), with(0, 1), "a live actor's kind is");
    }

    /// An armed script releases its next step once nothing else can move, as
    /// the driver would between its turns: an actor's own call as it parks
    /// (never parked, so it goes on at once), another's by waking it. A step
    /// it may not release as given disarms the rest, for the driver to refuse.
    #[test]
    fn an_armed_script_releases_each_step_once_nothing_else_can_move() {
        let plain = |k| plain(k, &Fault::ALL);
        let parked = |s: &Sched| -> Vec<u64> {
            s.lock().parked.iter().filter(|p| p.released.is_none()).map(|p| p.ticket).collect()
        };
        let s = Sched::default();
        let (a, b) = (s.add_actor(ActorKind::Scenario), s.add_actor(ActorKind::User));
        s.arm([(1, None), (2, None)].into_iter());
        // b is still running: a's call (ticket 1) waits for it to park.
        assert!(s.park(a, plain(CallKind::InstanceStop)).1.is_none());
        assert!(s.steps().is_empty());
        // Once b parks (ticket 2) nothing else can move: a's call is let go.
        assert!(s.park(b, plain(CallKind::InstanceStart)).1.is_none());
        assert_eq!(s.steps().len(), 1);
        assert_eq!(s.steps()[0].actor, a);
        // a runs now, so b's call, next in the script, waits for a to park.
        assert_eq!(parked(&s), [2]);
        let (t, now) = s.park(a, plain(CallKind::VmmPutState));
        assert_eq!((t, now.is_none()), (3, true));
        assert_eq!(s.steps().len(), 2);
        assert_eq!(s.steps()[1].actor, b);
        assert_eq!(parked(&s), [3]);

        // An actor's own call next in the script is admitted as it parks.
        s.arm([(4, None)].into_iter());
        let (t, now) = s.park(b, plain(CallKind::InstanceStop));
        assert_eq!(t, 4);
        let now = now.expect("its own call, with nothing else to move, is admitted at once");
        assert_eq!((now.alt, now.step, now.fault), (0, 2, None));
        assert_eq!(parked(&s), [3], "an admitted call is never parked");
        assert_eq!(s.steps()[2].actor, b);

        // A fault past the budget is not released: the script is dropped, the
        // call parked, and nothing recorded as an error.
        s.arm([(5, Some(Fault::Timeout))].into_iter());
        assert!(s.park(b, plain(CallKind::InstanceStart)).1.is_none());
        assert_eq!(parked(&s), [3, 5]);
        assert!(s.lock().script.is_empty());
        assert!(s.errors().is_empty());
        assert_eq!(s.steps().len(), 3);
    }

    /// One way a step is let go, for `a_call_admitted_as_it_parks_is_recorded_as_if_released`.
    struct Shape {
        name: &'static str,
        kind: ActorKind,
        /// The group parked: a plain call with these faults, or an offer.
        alts: fn() -> Vec<ToPark>,
        alt: u64,
        fault: Option<Fault>,
        budget: usize,
        /// Nexus's writes counted at each release.
        traced: bool,
    }

    impl Shape {
        /// Its first alternative, released plain, with no budget, untraced.
        fn new(name: &'static str, kind: ActorKind, alts: fn() -> Vec<ToPark>) -> Shape {
            Shape { name, kind, alts, alt: 0, fault: None, budget: 0, traced: false }
        }
    }

    fn plain(kind: CallKind, faults: &'static [Fault]) -> Vec<ToPark> {
        vec![ToPark::call(call(kind), None, faults)]
    }

    fn offered() -> Vec<ToPark> {
        let alt = |kind, costs_fault| ToPark {
            offer: Offer::Alternative,
            costs_fault,
            ..ToPark::call(call(kind), None, &[])
        };
        let done = ToPark { offer: Offer::Done, ..ToPark::call(call(CallKind::Done), None, &[]) };
        vec![alt(CallKind::InstanceStop, false), alt(CallKind::VmmVanish, true), done]
    }

    /// A run's scheduler with a scenario parked first (ticket 1), so the group
    /// under test starts at ticket 2, and the actor under test.
    fn parked_beside(shape: &Shape) -> (Arc<Sched>, ActorId) {
        let s = Arc::new(Sched::default());
        if shape.traced {
            s.set_probes(Probes {
                vmm: Box::new(|_| None),
                writes: Some(Box::new(|| 5)),
                basis: Box::new(|_| None),
            });
        }
        s.set_fault_budget(shape.budget);
        s.spare_restart(true);
        let other = s.add_actor(ActorKind::Scenario);
        s.park(other, plain(CallKind::InstanceStart, &[]));
        (Arc::clone(&s), s.add_actor(shape.kind))
    }

    /// What a step's release left: its record, the budget, the next group's
    /// ticket, and the situation once the step is answered.
    fn after_release(s: &Arc<Sched>, actor: ActorId) -> (String, usize, u64, u64) {
        // As the actor goes on: its admission takes its call off the list.
        let waker = std::task::Waker::noop();
        let mut admission = Admission { sched: Arc::clone(s), group: 2 };
        let _ = Pin::new(&mut admission).poll(&mut Context::from_waker(waker));
        let steps = s.steps();
        let shown = format!(
            "{:?}",
            steps
                .iter()
                .map(|t| (t.actor, t.call, t.fault, t.timed_out, t.writes_from))
                .collect::<Vec<_>>()
        );
        if !steps.is_empty() {
            s.complete(0, Answer::Ack);
        }
        let left = s.lock().faults_left;
        let next = s.park(actor, plain(CallKind::VmmList, &[])).0;
        (shown, left, next, hash(s))
    }

    /// The script's release as a call parks (`admit_own`) records what
    /// `release` records once it is parked, in every shape a step takes: with
    /// a fault (spending the budget) or spared one (auto-restart's), an offer's
    /// alternative past the first (its tickets spent all the same) that costs
    /// a fault, a wait that times out; a traced run is released as parked.
    #[test]
    fn a_call_admitted_as_it_parks_is_recorded_as_if_released() {
        let shapes = [
            Shape::new("plain", ActorKind::Scenario, || plain(CallKind::InstanceStop, &[])),
            Shape {
                fault: Some(Fault::Timeout),
                budget: 1,
                ..Shape::new("faulted", ActorKind::Scenario, || {
                    plain(CallKind::VmmPutState, &Fault::ALL)
                })
            },
            Shape {
                fault: Some(Fault::Unavailable),
                budget: 1,
                ..Shape::new("spared", ActorKind::Restart, || {
                    plain(CallKind::VmmPutState, &Fault::ALL)
                })
            },
            Shape {
                alt: 1,
                budget: 1,
                ..Shape::new("an alternative that costs a fault", ActorKind::Fault, offered)
            },
            Shape { alt: 2, budget: 1, ..Shape::new("done", ActorKind::User, offered) },
            Shape::new("timed out", ActorKind::Scenario, || {
                vec![ToPark::call(call(CallKind::WaitForState), Some(Box::new(|| false)), &[])]
            }),
            Shape {
                fault: Some(Fault::Unavailable),
                budget: 1,
                traced: true,
                ..Shape::new("traced", ActorKind::Scenario, || {
                    plain(CallKind::VmmPutState, &Fault::ALL)
                })
            },
        ];
        for shape in &shapes {
            let name = shape.name;
            let (scripted, actor) = parked_beside(shape);
            scripted.arm([(2 + shape.alt, shape.fault)].into_iter());
            let (group, now) = scripted.park(actor, (shape.alts)());
            assert_eq!(group, 2, "{name}");
            let (parked, a) = parked_beside(shape);
            parked.park(a, (shape.alts)());
            let released = parked.release(2 + shape.alt, shape.fault);
            match (name, now) {
                // Refused both ways: the script is dropped, nothing released.
                ("spared", now) => {
                    assert!(now.is_none() && !released, "{name}");
                    assert!(scripted.steps().is_empty() && scripted.lock().script.is_empty());
                    continue;
                }
                // Released by the script once parked, as the driver would.
                ("traced", now) => assert!(now.is_none() && released, "{name}"),
                (_, now) => {
                    let now = now.unwrap_or_else(|| panic!("{name}: admitted as it parks"));
                    assert_eq!((now.alt as u64, now.step, now.fault), (shape.alt, 0, shape.fault));
                    assert!(released, "{name}");
                }
            }
            assert_eq!(after_release(&scripted, actor), after_release(&parked, a), "{name}");
        }
    }

    fn kinds(s: &Sched) -> Vec<(ActorId, Offer, Option<Fault>)> {
        let mut out = Vec::new();
        s.enabled_into(&mut out);
        out.iter().map(|c| (c.actor, c.offer, c.fault)).collect()
    }

    /// An actor with a call that may fault, and one with an offer of two
    /// alternatives and a `done`.
    fn offers() -> (Sched, u64) {
        let s = Sched::default();
        let a = s.add_actor(ActorKind::Scenario);
        let b = s.add_actor(ActorKind::User);
        s.park(a, vec![ToPark::call(call(CallKind::VmmPutState), None, &Fault::ALL)]);
        let alt = |k| ToPark { offer: Offer::Alternative, ..ToPark::call(call(k), None, &[]) };
        let done = ToPark { offer: Offer::Done, ..ToPark::call(call(CallKind::Done), None, &[]) };
        let (group, _) =
            s.park(b, vec![alt(CallKind::InstanceStop), alt(CallKind::InstanceStart), done]);
        (s, group)
    }

    #[test]
    fn faults_are_offered_while_the_budget_lasts_and_done_only_when_idle() {
        use Offer::*;
        let (s, group) = offers();
        // No budget: the call plain; the alternatives; no `done` while a call waits.
        assert_eq!(kinds(&s), [(0, Call, None), (1, Alternative, None), (1, Alternative, None)]);
        s.set_fault_budget(1);
        let with_faults = kinds(&s);
        assert_eq!(
            &with_faults[..3],
            [(0, Call, None), (0, Call, Some(Fault::Unavailable)), (0, Call, Some(Fault::Timeout))]
        );
        // Released with a fault: the budget is spent, and with the call gone only
        // alternatives are left, so the offer's `done` is enabled.
        let t = s.lock().parked[0].ticket;
        assert!(s.release(t, Some(Fault::Timeout)));
        assert_eq!(s.lock().faults_left, 0);
        assert_eq!(s.steps()[0].fault, Some(Fault::Timeout));
        assert_eq!(kinds(&s), [(1, Alternative, None), (1, Alternative, None), (1, Done, None)]);
        // A fault the call does not allow, or one past the budget, is refused.
        assert!(!s.release(group + 1, Some(Fault::Unavailable)));
        assert_eq!(s.errors().len(), 1, "{:?}", s.errors());
        // Releasing one alternative withdraws the rest of its offer.
        assert!(s.release(group + 1, None));
        // No call waits under that ticket any more.
        assert!(!s.release(group + 1, None));
        assert_eq!(s.errors().len(), 2, "{:?}", s.errors());
        let left: Vec<_> =
            s.lock().parked.iter().map(|p| (p.group, p.released.is_some())).collect();
        assert_eq!(left, [(1, true), (group, true)]);
    }

    /// What a call made inside another answers leaves the caller's history alone;
    /// the outer answer moves it.
    #[test]
    fn only_outer_answers_enter_an_actors_history() {
        let s = Sched::default();
        let a = s.add_actor(ActorKind::Scenario);
        let (outer, _) = s.park(a, vec![ToPark::call(call(CallKind::InstanceStop), None, &[])]);
        s.release(outer, None);
        let (inner, _) = s.park(a, vec![ToPark::call(call(CallKind::VmmPutState), None, &[])]);
        s.release(inner, None);
        let before = s.lock().actors[a].history;
        s.complete(1, Answer::NoState);
        assert_eq!(s.lock().actors[a].history, before, "the inner answer is not kept");
        s.complete(0, Answer::Ack);
        assert_ne!(s.lock().actors[a].history, before, "the outer one is");
        assert_eq!(s.lock().actors[a].outer, None);
    }
}
