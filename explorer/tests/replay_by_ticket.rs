//! A chooser that already knows a step (a prefix it replays) hands it to the run
//! by ticket, and the run releases it without listing what is enabled: the same
//! run as choosing it from the list, and a ticket not parked is an error. One
//! that carries the observer of an earlier run hands it over at the end of the
//! steps it replays, and the invariants come out as if every step was checked.
//! One that hands the scheduler the steps it will replay (`replay_ahead`) gets
//! the run it gets releasing each from the driver.

use sledsim_explorer::harness::observe::Observer;
use sledsim_explorer::harness::schedule::{ChoiceCtx, Chooser, ScheduleError, Watch};
use sledsim_explorer::harness::step::{Fault, Offer};
use sledsim_explorer::harness::{self, RunError, RunResult};
use sledsim_explorer::{RunConfig, ScenarioKind};

/// Disk-move with a user operation, a fault and a watcher pass.
fn config() -> RunConfig {
    RunConfig {
        scenario: ScenarioKind::DiskMove,
        user_ops: 1,
        faults: 1,
        watcher_passes: 1,
        ..RunConfig::default()
    }
}

/// Takes, at step `k`, choice `k * 7 % n` of the `n` enabled that do not end
/// their actor, and no fault before step 15, so the scenario gets going (a
/// schedule that switches actors often and takes alternatives and faults),
/// recording each step's ticket and fault.
#[derive(Default)]
struct Scrambled {
    tickets: Vec<(u64, Option<Fault>)>,
}

impl Chooser for Scrambled {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        let late = ctx.step >= 15;
        let going: Vec<usize> = (0..ctx.enabled.len())
            .filter(|&i| {
                ctx.enabled[i].offer != Offer::Done && (late || ctx.enabled[i].fault.is_none())
            })
            .collect();
        let i = going.get(ctx.step * 7 % going.len().max(1)).copied().unwrap_or(0);
        self.tickets.push((ctx.enabled[i].ticket, ctx.enabled[i].fault));
        Ok(Some(i))
    }
}

/// Replays `tickets` without choosing, then stops.
struct ByTicket {
    tickets: Vec<(u64, Option<Fault>)>,
    asked: usize,
}

impl Chooser for ByTicket {
    fn replay(&mut self, step: usize) -> Option<(u64, Option<Fault>)> {
        self.tickets.get(step).copied()
    }

    fn choose(&mut self, _: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        self.asked += 1;
        Ok(None)
    }
}

fn check(a: &RunResult, b: &RunResult) {
    let steps = |r: &RunResult| {
        r.steps.iter().map(|s| (r.actors[s.actor], s.call, s.answer.clone(), s.fault)).collect()
    };
    let (sa, sb): (Vec<_>, Vec<_>) = (steps(a), steps(b));
    assert_eq!(sa, sb);
    assert_eq!(a.violations, b.violations);
    assert_eq!(a.vmms, b.vmms);
    assert_eq!(a.sled, b.sled);
}

#[test]
fn a_run_replayed_by_ticket_is_the_run_chosen_by_index() {
    let mut chosen = Scrambled::default();
    let a = harness::run(&config(), &mut chosen).expect("runs");
    assert!(a.steps.len() > 20, "{} steps", a.steps.len());
    assert!(a.steps.iter().any(|s| s.fault.is_some()), "a fault was taken");
    let mut by_ticket = ByTicket { tickets: chosen.tickets, asked: 0 };
    let b = harness::run(&config(), &mut by_ticket).expect("runs");
    check(&a, &b);
    // Asked once, after the last ticket, if the run had not ended by then.
    assert!(by_ticket.asked <= 1);
}

#[test]
fn a_ticket_not_parked_is_an_error() {
    let mut by_ticket = ByTicket { tickets: vec![(u64::MAX, None)], asked: 0 };
    let e = harness::run(&config(), &mut by_ticket).map(|_| ()).expect_err("refused");
    let RunError::Schedule(ScheduleError::Mismatch { step, wanted, .. }) = e else {
        panic!("{e:?}")
    };
    assert_eq!((step, wanted.as_str()), (1, "ticket 18446744073709551615"));
}

/// Replays `tickets` without choosing and without checking the invariants
/// until step `at`, where it hands over `observer`, then chooses like
/// `Scrambled`.
struct Handover {
    tickets: Vec<(u64, Option<Fault>)>,
    at: usize,
    observer: Option<Observer>,
    then: Scrambled,
}

impl Chooser for Handover {
    fn replay(&mut self, step: usize) -> Option<(u64, Option<Fault>)> {
        self.tickets.get(step).copied().filter(|_| step < self.at)
    }

    fn watch(&mut self, steps: usize) -> Watch {
        match self.observer.take() {
            Some(o) if steps == self.at => Watch::Take(Box::new(o)),
            Some(o) => {
                self.observer = Some(o);
                Watch::Skip
            }
            None => Watch::Check,
        }
    }

    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        self.then.choose(ctx)
    }
}

/// Records the observer as it stands once `at` steps are taken.
struct Recording {
    at: usize,
    observer: Option<Observer>,
    then: Scrambled,
}

impl Chooser for Recording {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        if ctx.step == self.at {
            self.observer = Some(ctx.observer.clone());
        }
        self.then.choose(ctx)
    }
}

/// Runs `config` by `Scrambled`, then again handing over, at step `at`, the
/// observer the first run had there: the same steps and violations. Returns
/// the violations' steps.
fn check_handover(config: &RunConfig, at: usize) -> Vec<usize> {
    let mut recording = Recording { at, observer: None, then: Scrambled::default() };
    let a = harness::run(config, &mut recording).expect("runs");
    let tickets = recording.then.tickets.clone();
    let then = Scrambled { tickets: tickets[..at].to_vec() };
    let mut handover = Handover { tickets, at, observer: recording.observer, then };
    let b = harness::run(config, &mut handover).expect("runs");
    check(&a, &b);
    a.violations.iter().map(|v| v.step).collect()
}

#[test]
fn an_observer_handed_over_is_the_one_checking_each_step_gives() {
    // Generations unchecked: an invariant breaks at step 5, which the observer
    // handed over at 8 must carry, and the one handed over at 3 must see.
    let config = RunConfig { inject: Some(harness::Inject::NoGenerationCheck), ..config() };
    assert_eq!(check_handover(&config, 8), [5]);
    assert_eq!(check_handover(&config, 3), [5]);
}

/// Replays the first `at` of `tickets` unchecked, handing them to the
/// scheduler up front if `ahead`, and notes what the run offers then.
struct Ahead {
    tickets: Vec<(u32, Option<Fault>)>,
    at: usize,
    ahead: bool,
    /// The situation in full and the choices, at step `at`.
    seen: Option<(Vec<u8>, Vec<String>)>,
}

impl Chooser for Ahead {
    fn replay(&mut self, step: usize) -> Option<(u64, Option<Fault>)> {
        let (t, f) = *self.tickets.get(step).filter(|_| step < self.at)?;
        Some((u64::from(t), f))
    }

    fn replay_ahead(&self, step: usize) -> &[(u32, Option<Fault>)] {
        let ahead = self.tickets.get(step.min(self.at)..self.at).unwrap_or(&[]);
        if self.ahead {
            ahead
        } else {
            &[]
        }
    }

    fn watch(&mut self, steps: usize) -> Watch {
        if steps < self.at {
            Watch::Skip
        } else {
            Watch::Check
        }
    }

    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        let choices = ctx.enabled.iter().map(|c| format!("{c:?}")).collect();
        self.seen = Some((ctx.world.situation(ctx.observer), choices));
        Ok(None)
    }
}

#[test]
fn a_prefix_the_scheduler_releases_itself_is_the_prefix_the_driver_releases() {
    // Not traced, as a search runs: the scheduler then admits a call as it parks.
    let config = RunConfig { trace_writes: false, watcher_passes: 2, user_ops: 2, ..config() };
    let mut chosen = Scrambled::default();
    let a = harness::run(&config, &mut chosen).expect("runs");
    let tickets: Vec<(u32, Option<Fault>)> =
        chosen.tickets.iter().map(|&(t, f)| (u32::try_from(t).expect("few tickets"), f)).collect();
    let n = tickets.len();
    assert!(n > 20, "{n} steps");
    for at in [1, 2, 5, 9, 14, 20, n - 1, n] {
        let seen = |ahead| {
            let mut c = Ahead { tickets: tickets.clone(), at, ahead, seen: None };
            let end = harness::run_outcome(&config, &mut c).expect("runs").end;
            (c.seen, format!("{end:?}"))
        };
        let (by_driver, by_script) = (seen(false), seen(true));
        assert!(by_driver.0.is_some() || at == n, "stopped at {at} of {n}");
        assert_eq!(by_driver, by_script, "after {at} of {} steps", a.steps.len());
    }
}
