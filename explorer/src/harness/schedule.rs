//! Schedules: who picks the next parked call to release. Two named policies
//! (`happy`, `seed-7282`) and replay strings, which name every step as
//! `actor.call` (with `*N` for N in a row) and re-run exactly one schedule.

use std::fmt;

use nexus_stub::DbVmmState;
use sled_agent_api::VmmState;

use super::observe::Observer;
use super::step::{ActorKind, Arg, Call, CallKind, Choice, Fault, Offer, Step};
use super::World;

/// What a chooser sees when it picks.
pub struct ChoiceCtx<'a> {
    /// How many steps ran before this one.
    pub step: usize,
    pub enabled: &'a [Choice],
    pub world: &'a World,
    pub observer: &'a Observer,
}

fn token(c: &Choice) -> String {
    step_label(c.kind, &c.call, c.fault)
}

/// How a step reads in a replay string: `actor.call`, then the instance an
/// environment actor's choice is about (`user.instance_stop(inst1)`), then the
/// fault it was released with (`scenario.cpapi_instances_put!503`).
pub fn step_label(actor: ActorKind, call: &Call, fault: Option<Fault>) -> String {
    let arg = match (actor, call.arg) {
        (ActorKind::User | ActorKind::Fault, Arg::Name(name)) => Some(name),
        _ => None,
    };
    label(actor, call.kind, arg, fault)
}

/// `actor.call`, then `(arg)` and `!fault` where given: the one spelling of a
/// replay token, for steps and parsed tokens alike.
fn label(actor: ActorKind, call: CallKind, arg: Option<&str>, fault: Option<Fault>) -> String {
    let mut s = format!("{actor}.{}", call.label());
    if let Some(a) = arg {
        s.push('(');
        s.push_str(a);
        s.push(')');
    }
    if let Some(f) = fault {
        s.push('!');
        s.push_str(f.label());
    }
    s
}

/// How a run follows the invariants after a step (`Chooser::watch`).
pub enum Watch {
    Check,
    Skip,
    Take(Box<Observer>),
}

pub trait Chooser {
    /// Index into `ctx.enabled` of the call to release next, or `None` to stop the
    /// run here.
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError>;

    /// The call to release as step `step` (from 0) without being asked to
    /// choose, by its ticket and fault, if the chooser knows it already (a
    /// prefix it replays): the run then skips listing what is enabled there. The
    /// ticket must be one a replay of the same steps hands out; one that is not
    /// parked is a harness error.
    fn replay(&mut self, _step: usize) -> Option<(u64, Option<Fault>)> {
        None
    }

    /// The steps from `step` on that `replay` will give and `watch` will skip,
    /// by ticket and fault: the scheduler may release them as the run gets to
    /// each (`Sched::arm`). Both are still called for each, after it is taken.
    fn replay_ahead(&self, _step: usize) -> &[(u32, Option<Fault>)] {
        &[]
    }

    /// What to do about the invariants once `steps` steps are taken: check
    /// them as usual, or, if the chooser carries the observer of an earlier
    /// run of the same steps, leave them unchecked up to that point and take
    /// that observer there (a run is deterministic, so it is the one checking
    /// each step would give).
    fn watch(&mut self, _steps: usize) -> Watch {
        Watch::Check
    }

    /// Called once the run ends after `steps` steps.
    fn finish(&mut self, _steps: usize) -> Result<(), ScheduleError> {
        Ok(())
    }
}

/// A refused token as an error shows it: whole if short, else its start and its
/// length (a pasted log line can be a replay string's one token).
fn shown_token(raw: &str) -> String {
    const SHOWN: usize = 48;
    let n = raw.chars().count();
    if n <= SHOWN {
        raw.to_string()
    } else {
        format!("{}\u{2026} ({n} characters)", raw.chars().take(SHOWN).collect::<String>())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("malformed replay string at token {index} (character {offset}, {token:?}): {reason}")]
    Malformed { index: usize, offset: usize, token: String, reason: String },

    #[error("replay stopped matching at step {step} (token {index}): it says {wanted}, but the run can only do {enabled}")]
    Mismatch { step: usize, index: usize, wanted: String, enabled: String },

    #[error("replay ended at step {step}, but the run can still do {enabled}")]
    TooShort { step: usize, enabled: String },

    #[error("the run finished after {steps} steps, but the replay has {left} more")]
    TooLong { steps: usize, left: usize },

    #[error("the replay string names {steps} steps, more than --max-steps {max_steps}")]
    OverBound { steps: usize, max_steps: usize },
}

/// Scheduling priority of a choice under the named policies: the scenario first,
/// then the update steps it waits for (whoever runs them: a watcher's check runs
/// its own), a user's operation under way, then background tasks.
fn priority(c: &Choice) -> u8 {
    if c.call.kind == CallKind::InstanceUpdate {
        return 1;
    }
    match c.kind {
        ActorKind::Scenario => 0,
        ActorKind::Update(_) => 1,
        ActorKind::User => 2,
        ActorKind::Restart => 3,
        ActorKind::Watcher | ActorKind::Check(_) => 4,
        ActorKind::Fault => 5,
    }
}

/// The named policies' pick: by priority, never a fault and never an
/// environment actor's alternative (a user's extra operation, a vanish), so they
/// play the scenario as scripted and end each environment actor when they can.
/// Auto-restart is Nexus's, not the environment's: its pass, offered once it has
/// something to restart, is taken once no call can go on (as its `done` would
/// be), so it never goes before the watcher.
pub(crate) fn by_priority(enabled: &[Choice], skip_watcher: bool) -> Option<usize> {
    policy_choices(enabled, skip_watcher)
        .min_by_key(|(_, c)| (priority(c), c.actor))
        .map(|(i, _)| i)
}

/// `by_priority`'s pick, with ties broken by what a choice is (its actor's
/// kind, its call as the fingerprint takes it, how it is offered) instead of
/// by its actor's number. Two paths to one situation may number its actors
/// differently, and then `by_priority` plays the same situation on in another
/// order; this one in the same (`explore::one_future`).
pub(crate) fn by_priority_as_fingerprinted(ctx: &ChoiceCtx<'_>) -> Option<usize> {
    let key = |c: &Choice| {
        let what = (c.kind.unnumbered(), ctx.world.call_as_fingerprinted(c.call), c.offer);
        (priority(c), super::hash::stable_hash(&what))
    };
    policy_choices(ctx.enabled, false).min_by_key(|(_, c)| key(c)).map(|(i, _)| i)
}

/// What the named policies may pick: never a fault, never an environment
/// actor's alternative, auto-restart's pass only once no call can go on.
fn policy_choices(
    enabled: &[Choice],
    skip_watcher: bool,
) -> impl Iterator<Item = (usize, &Choice)> {
    let calls = enabled.iter().any(|c| c.offer == Offer::Call);
    let taken = move |c: &Choice| !c.optional() || (c.kind == ActorKind::Restart && !calls);
    enabled
        .iter()
        .enumerate()
        .filter(move |(_, c)| c.fault.is_none() && taken(c))
        .filter(move |(_, c)| !(skip_watcher && c.kind.is_watcher()))
}

/// The watcher and auto-restart go only when nothing else can, so they never
/// interfere; an update step goes early whoever runs it (a check runs its own).
#[derive(Debug, Default)]
pub struct Happy;

impl Chooser for Happy {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        Ok(by_priority(ctx.enabled, false))
    }
}

/// The interleaving in the #7282 log: the watcher lists the VMM at Stopping/6; its
/// get-state lands once the sim has reached Destroyed/7 and is reporting it, before
/// Nexus commits that report; and its write goes before the report.
#[derive(Debug, Default)]
pub struct Seed7282 {
    phase: Phase,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    #[default]
    WaitForGen6,
    WaitForDestroyedReport,
    WatcherWrites,
    Done,
}

impl Seed7282 {
    fn watcher(ctx: &ChoiceCtx<'_>, kind: CallKind) -> Option<usize> {
        ctx.enabled.iter().position(|c| c.kind.is_watcher() && c.call.kind == kind)
    }
}

impl Chooser for Seed7282 {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        match self.phase {
            Phase::WaitForGen6 => {
                let at_gen_6 = ctx.world.nexus.vmms().iter().any(|v| {
                    !v.deleted
                        && v.state == DbVmmState::Reported(VmmState::Stopping)
                        && v.gen.as_u64() == 6
                });
                if let (true, Some(i)) = (at_gen_6, Self::watcher(ctx, CallKind::VmmList)) {
                    self.phase = Phase::WaitForDestroyedReport;
                    return Ok(Some(i));
                }
            }
            Phase::WaitForDestroyedReport => {
                let reporting_destroyed = ctx.world.sched.any_parked(|c| {
                    c.kind == CallKind::CpapiInstancesPut
                        && matches!(c.arg, Arg::State(VmmState::Destroyed, _))
                });
                if let (true, Some(i)) =
                    (reporting_destroyed, Self::watcher(ctx, CallKind::VmmGetState))
                {
                    self.phase = Phase::WatcherWrites;
                    return Ok(Some(i));
                }
                return Ok(by_priority(ctx.enabled, true).or(Some(0)));
            }
            Phase::WatcherWrites => {
                self.phase = Phase::Done;
                if let Some(i) = Self::watcher(ctx, CallKind::VmmWrite) {
                    return Ok(Some(i));
                }
            }
            Phase::Done => {
                // As in the bug report: once the instance has failed, auto-restart
                // gets to it before the test looks again.
                if !ctx.world.nexus.restart_candidates().is_empty() {
                    if let Some(i) = ctx.enabled.iter().position(|c| c.kind == ActorKind::Restart) {
                        return Ok(Some(i));
                    }
                }
            }
        }
        Ok(by_priority(ctx.enabled, self.phase != Phase::Done).or(Some(0)))
    }
}

/// One step of a replay string: `actor.call`, with the instance an environment
/// actor's choice names and the fault injected, repeated `count` times.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    actor: ActorKind,
    call: CallKind,
    arg: Option<String>,
    fault: Option<Fault>,
    count: usize,
}

impl Token {
    fn matches(&self, c: &Choice) -> bool {
        c.kind == self.actor
            && c.call.kind == self.call
            && c.fault == self.fault
            && match (&self.arg, c.call.arg) {
                (None, _) => true,
                (Some(want), Arg::Name(name)) => want == name,
                (Some(_), _) => false,
            }
    }

    fn label(&self) -> String {
        label(self.actor, self.call, self.arg.as_deref(), self.fault)
    }
}

/// Re-runs the schedule a replay string names, failing where it stops matching.
#[derive(Debug)]
pub struct Replay {
    tokens: Vec<Token>,
    /// Steps the string names in all (the counts summed, checked at parse time).
    total: usize,
    /// Position: token index and repetitions of it used.
    index: usize,
    used: usize,
}

impl Replay {
    /// The user operations, faults and sled-agent restarts the string's run was
    /// given, as far as it shows: each operation the user makes, and one more
    /// if it then ends with some left (`user.done`, offered only then); each
    /// fault it takes (a vanish, or a call released with one), and one more if
    /// the fault actor ends with `fault.done`; each restart it takes. A run given more of either offers more but, with
    /// the same steps taken, is the same run; one given fewer could not take
    /// them. So `scenario` runs a replay string with no environment flags as
    /// the search that printed it did, with one exception: a string cut short
    /// by the step bound may not show an actor that never acted (no `done`
    /// yet), and without it the run can end where the search's reached the
    /// bound. Explore's printed `command` names the environment, for that.
    pub fn environment(&self) -> (usize, usize, usize) {
        let (mut user_ops, mut faults, mut restarts) = (0, 0, 0);
        let (mut user_done, mut fault_done) = (false, false);
        for t in &self.tokens {
            match (t.actor, t.call) {
                (ActorKind::User, CallKind::Done) => user_done = true,
                (ActorKind::User, op) if super::script::USER_OPS.contains(&op) => {
                    user_ops += t.count
                }
                (ActorKind::Fault, CallKind::Done) => fault_done = true,
                (ActorKind::Fault, CallKind::SledRestart) => restarts += t.count,
                (ActorKind::Fault, _) => faults += t.count,
                _ => {}
            }
            if t.fault.is_some() {
                faults += t.count;
            }
        }
        // A fault actor that ended with choices left had a fault left (or a
        // restart: the string cannot tell, so explore's commands name the
        // faults whenever restarts were given).
        (user_ops + usize::from(user_done), faults + usize::from(fault_done), restarts)
    }

    pub fn parse(s: &str) -> Result<Replay, ScheduleError> {
        let mut tokens = Vec::new();
        let mut total: usize = 0;
        let mut offset = 0;
        for (index, raw) in s.split(' ').enumerate() {
            let here = offset;
            offset += raw.len() + 1;
            let bad = |reason: &str| ScheduleError::Malformed {
                index: index + 1,
                offset: here,
                token: shown_token(raw),
                reason: reason.to_string(),
            };
            if raw.is_empty() {
                return Err(bad("empty token (steps are separated by single spaces)"));
            }
            let (body, count) = match raw.split_once('*') {
                Some((body, n)) => {
                    // Digits only, as replay strings print them: no sign, no leading 0.
                    let plain = !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit())
                        && !n.starts_with('0');
                    if !plain {
                        return Err(bad("a repeat count after '*' must be a whole number above 0"));
                    }
                    let count = n.parse::<usize>().map_err(|_| {
                        bad("a repeat count after '*' is larger than any run can be")
                    })?;
                    (body, count)
                }
                None => (raw, 1),
            };
            let (body, fault) = match body.split_once('!') {
                Some((body, f)) => {
                    let fault = Fault::from_label(f)
                        .ok_or_else(|| bad("unknown fault after '!' (503, timeout)"))?;
                    (body, Some(fault))
                }
                None => (body, None),
            };
            let (body, arg) = match body.split_once('(') {
                Some((body, rest)) => {
                    let arg = rest
                        .strip_suffix(')')
                        .filter(|a| !a.is_empty() && !a.contains(['(', ')']))
                        .ok_or_else(|| {
                            bad("expected call(instance), e.g. user.instance_stop(inst1)")
                        })?;
                    (body, Some(arg.to_string()))
                }
                None => (body, None),
            };
            let (actor, call) = body
                .split_once('.')
                .ok_or_else(|| bad("expected actor.call, e.g. watcher.vmm_get_state"))?;
            let actor = ActorKind::parse(actor).ok_or_else(|| {
                bad("unknown actor (scenario, watcher, restart, user, fault, update1, update2, ...)")
            })?;
            let call = CallKind::from_label(call).ok_or_else(|| {
                let known: Vec<_> = CallKind::ALL.iter().map(|k| k.label()).collect();
                bad(&format!("unknown call; known calls: {}", known.join(", ")))
            })?;
            total = total
                .checked_add(count)
                .ok_or_else(|| bad("the repeat counts add up to more steps than can be counted"))?;
            tokens.push(Token { actor, call, arg, fault, count });
        }
        Ok(Replay { tokens, total, index: 0, used: 0 })
    }

    /// How many steps the string names.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

fn enabled_list(ctx: &ChoiceCtx<'_>) -> String {
    let v: Vec<_> = ctx.enabled.iter().map(token).collect();
    v.join(", ")
}

impl Chooser for Replay {
    fn choose(&mut self, ctx: &ChoiceCtx<'_>) -> Result<Option<usize>, ScheduleError> {
        let Some(tok) = self.tokens.get(self.index) else {
            return Err(ScheduleError::TooShort { step: ctx.step + 1, enabled: enabled_list(ctx) });
        };
        let found = ctx.enabled.iter().position(|c| tok.matches(c));
        let Some(i) = found else {
            return Err(ScheduleError::Mismatch {
                step: ctx.step + 1,
                index: self.index + 1,
                wanted: tok.label(),
                enabled: enabled_list(ctx),
            });
        };
        self.used += 1;
        if self.used == tok.count {
            self.index += 1;
            self.used = 0;
        }
        Ok(Some(i))
    }

    fn finish(&mut self, steps: usize) -> Result<(), ScheduleError> {
        // Every step taken was counted, so this cannot underflow; saturate anyway.
        let left = self.total.saturating_sub(steps.min(self.total));
        if left > 0 {
            return Err(ScheduleError::TooLong { steps, left });
        }
        Ok(())
    }
}

/// The replay string of a run: every step, runs of the same token folded as `*N`.
pub fn replay_string(steps: &[Step], actors: &[ActorKind]) -> String {
    let mut out: Vec<(String, usize)> = Vec::new();
    for s in steps {
        let name = actors.get(s.actor).map_or_else(|| "?".to_string(), ToString::to_string);
        let tok = match actors.get(s.actor) {
            Some(&kind) => step_label(kind, &s.call, s.fault),
            None => format!("{name}.{}", s.call.kind.label()),
        };
        match out.last_mut() {
            Some((last, n)) if *last == tok => *n += 1,
            _ => out.push((tok, 1)),
        }
    }
    let parts: Vec<String> =
        out.into_iter().map(|(t, n)| if n == 1 { t } else { format!("{t}*{n}") }).collect();
    parts.join(" ")
}

/// The schedules a user can name on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleSpec {
    Happy,
    Seed7282,
    Replay(String),
}

impl ScheduleSpec {
    /// The user operations, faults and sled-agent restarts the schedule needs
    /// (`Replay::environment`); none for the named ones.
    pub fn environment(&self) -> (usize, usize, usize) {
        match self {
            ScheduleSpec::Replay(s) => Replay::parse(s).map_or((0, 0, 0), |r| r.environment()),
            ScheduleSpec::Happy | ScheduleSpec::Seed7282 => (0, 0, 0),
        }
    }

    /// A named schedule, or else a replay string (checked now, so a malformed one is
    /// reported before anything runs).
    pub fn parse(s: &str) -> Result<ScheduleSpec, ScheduleError> {
        match s {
            "happy" => Ok(ScheduleSpec::Happy),
            "seed-7282" => Ok(ScheduleSpec::Seed7282),
            other => Replay::parse(other).map(|_| ScheduleSpec::Replay(other.to_string())),
        }
    }

    /// The chooser for a run of at most `max_steps` steps; a replay string that
    /// names more could never be followed to its end, so it is refused here.
    pub fn chooser(&self, max_steps: usize) -> Result<Box<dyn Chooser>, ScheduleError> {
        Ok(match self {
            ScheduleSpec::Happy => Box::new(Happy),
            ScheduleSpec::Seed7282 => Box::<Seed7282>::default(),
            ScheduleSpec::Replay(s) => {
                let replay = Replay::parse(s)?;
                if replay.len() > max_steps {
                    return Err(ScheduleError::OverBound { steps: replay.len(), max_steps });
                }
                Box::new(replay)
            }
        })
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleSpec::Happy => f.write_str("happy"),
            ScheduleSpec::Seed7282 => f.write_str("seed-7282"),
            ScheduleSpec::Replay(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_malformed(s: &str, index: usize, reason_part: &str) {
        match Replay::parse(s) {
            Err(ScheduleError::Malformed { index: i, reason, .. }) => {
                assert_eq!(i, index, "{s}");
                assert!(reason.contains(reason_part), "{s}: {reason}");
            }
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn malformed_strings_say_where() {
        check_malformed("not a schedule ###", 1, "actor.call");
        check_malformed("scenario.vmm_register  watcher.vmm_list", 2, "empty token");
        check_malformed("scenario.vmm_register watcher.bogus", 2, "unknown call");
        check_malformed("sim.vmm_register", 1, "unknown actor");
        check_malformed("update0.instance_update", 1, "unknown actor");
        check_malformed("scenario.vmm_register*0", 1, "repeat count");
        check_malformed("scenario.vmm_register*x", 1, "repeat count");
        check_malformed("scenario.vmm_register*+3", 1, "repeat count");
        check_malformed("scenario.vmm_register*03", 1, "repeat count");
        check_malformed("scenario.vmm_register*99999999999999999999999", 1, "larger than");
        check_malformed("watcher.vmm_list*18446744073709551615 watcher.vmm_list", 2, "add up");
    }

    #[test]
    fn well_formed_strings_parse_with_counts() {
        let r = Replay::parse("scenario.vmm_register update12.instance_update*3").expect("parses");
        assert_eq!(r.tokens.len(), 2);
        assert_eq!(r.tokens[1].count, 3);
        assert_eq!(r.tokens[1].actor, ActorKind::Update(12));
    }

    fn check_environment(s: &str, want: (usize, usize, usize)) {
        assert_eq!(Replay::parse(s).expect("parses").environment(), want, "{s}");
    }

    #[test]
    fn a_replay_string_shows_the_environment_its_run_was_given() {
        // Nothing of the user's or the fault's: none of either.
        check_environment("scenario.instance_create watcher.vmm_list restart.done", (0, 0, 0));
        // Each ends with some left.
        check_environment("scenario.instance_create user.done fault.done", (1, 1, 0));
        // An operation and its calls count once; with none left, no `done`.
        check_environment(
            "user.instance_stop(inst1) user.vmm_put_state user.vmm_poke user.instance_start(inst1)*2",
            (3, 0, 0),
        );
        check_environment("user.instance_reboot(inst2) user.done", (2, 0, 0));
        // A vanish, and calls released with a fault, each spend one.
        check_environment(
            "fault.vmm_vanish(inst1) scenario.cpapi_instances_put!503*2 user.vmm_put_state!timeout fault.done",
            (0, 5, 0),
        );
        // A sled agent's restart spends one of its own.
        check_environment(
            "fault.sled_restart fault.vmm_vanish(inst1) fault.sled_restart",
            (0, 1, 2),
        );
    }
}
