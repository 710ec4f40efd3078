//! Turns a run into what the user reads: the step table, the outcome, and the JSON
//! object of the command contract. Everything here is read from the run's state.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use nexus_stub::{DiskState, VmmWrite};
use serde::Serialize;

use crate::harness::invariants::invariant_text;
use crate::harness::schedule::ScheduleSpec;
use crate::harness::step::{Answer, Arg, CallKind, Component, Fault, Step};
use crate::harness::{Names, RunConfig, RunEnd, RunResult};

#[derive(Debug, Serialize)]
pub struct StepOut {
    pub n: usize,
    pub actor: String,
    pub from: Component,
    pub to: Component,
    pub call: &'static str,
    pub target: Option<String>,
    pub arg: Option<String>,
    pub answer: String,
    pub gen: Option<u64>,
    /// The fault the step was released with ("503", "timeout"), if any.
    pub fault: Option<&'static str>,
    /// Nexus VMM writes this step caused: "destroyed/g7 applied", "failed/g7 stale".
    pub writes: Vec<String>,
    /// The same writes, as fields.
    pub write_records: Vec<WriteOut>,
}

/// One Nexus VMM write as the JSON carries it.
#[derive(Debug, Serialize)]
pub struct WriteOut {
    pub vmm: String,
    pub state: String,
    pub gen: u64,
    pub applied: bool,
    /// The generation the row held before the write.
    pub stored_gen: u64,
}

/// A VMM at the end of a run: Nexus's row and the sled agent's entry, if any.
#[derive(Debug, Serialize)]
pub struct VmmOut {
    pub id: String,
    pub instance: String,
    /// Nexus's row: its state and generation, and whether the update step
    /// deleted it.
    pub state: String,
    pub gen: u64,
    pub deleted: bool,
    /// The sled agent's entry, or `None` if its table no longer has the VMM.
    pub sled: Option<SledVmmOut>,
}

#[derive(Debug, Serialize)]
pub struct SledVmmOut {
    pub state: String,
    pub gen: u64,
}

impl StepOut {
    /// The call as a line shows it: name, target, argument, and `!fault`.
    pub fn call_text(&self) -> String {
        let mut s = [Some(self.call.to_string()), self.target.clone(), self.arg.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(f) = self.fault {
            s.push_str(" !");
            s.push_str(f);
        }
        s
    }
}

#[derive(Debug, Serialize)]
pub struct ViolationOut {
    pub invariant: u8,
    pub rule: &'static str,
    pub step: usize,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct InstanceOut {
    pub id: String,
    pub state: String,
    pub intended: String,
    pub auto_restarts: u32,
}

#[derive(Debug, Serialize)]
pub struct DiskOut {
    pub id: String,
    pub name: String,
    pub state: &'static str,
    pub instance: Option<String>,
}

fn arg_text(arg: Arg, names: &Names) -> Option<String> {
    match arg {
        Arg::None => None,
        Arg::Requested(r) => Some(r.to_string()),
        Arg::State(s, g) => Some(format!("{s}/g{g}")),
        Arg::Instance(i) => Some(names.instance(i)),
        Arg::Name(n) => Some(n.to_string()),
    }
}

/// How a sled agent's restart is answered, before the VMMs it lost.
pub const RESTARTED_LOST: &str = "restarted, its table lost: ";

pub fn answer_text(a: &Answer, names: &Names) -> String {
    match a {
        Answer::Pending => "(no answer)".into(),
        Answer::State(s, g) => format!("{s}/g{g}"),
        Answer::NoState => "no state".into(),
        Answer::Gone { nexus_had } => match nexus_had {
            Some((s, g)) => format!("404 NO_SUCH_INSTANCE (nexus holds {s}/g{g})"),
            None => "404 NO_SUCH_INSTANCE".into(),
        },
        Answer::Error(kind) => format!("error: {}", kind.label()),
        Answer::Injected(Fault::Unavailable) => "503 (injected)".into(),
        Answer::Injected(Fault::Timeout) => "timed out (injected; the call was applied)".into(),
        Answer::Ack => "204".into(),
        Answer::Write { applied: true } => "updated".into(),
        Answer::Write { applied: false } => "not updated".into(),
        Answer::Listed(rows) => {
            let rows: Vec<_> =
                rows.iter().map(|(v, s, g)| format!("{} {s}/g{g}", names.vmm(*v))).collect();
            if rows.is_empty() {
                "[]".into()
            } else {
                format!("[{}]", rows.join(", "))
            }
        }
        Answer::Updated(what) => what.label().to_string(),
        Answer::Candidates(ids) => {
            let names: Vec<String> = ids.iter().map(|i| names.instance(*i)).collect();
            format!("to restart: [{}]", names.join(", "))
        }
        Answer::Instance(s) | Answer::Created(_, _, s) => s.to_string(),
        Answer::Disk(DiskState::Detached) => "detached".into(),
        Answer::Disk(DiskState::Attached(i)) => format!("attached to {}", names.instance(*i)),
        Answer::Waited(s) => s.to_string(),
        Answer::Vanished(Some((v, _))) => format!("{} vanished", names.vmm(*v)),
        Answer::Vanished(None) => "nothing to vanish".into(),
        Answer::Restarted(lost) if lost.is_empty() => "restarted with an empty table".into(),
        Answer::Restarted(lost) => {
            let lost: Vec<String> = lost.iter().map(|(v, _)| names.vmm(*v)).collect();
            format!("{RESTARTED_LOST}{}", lost.join(", "))
        }
    }
}

fn write_text(w: &VmmWrite, names: &Names) -> String {
    let verdict =
        if w.applied { "applied".to_string() } else { format!("stale, stored g{}", w.prev_gen) };
    format!("{} {}/g{} {verdict}", names.vmm(w.propolis_id), w.state, w.gen)
}

pub fn steps_out(r: &RunResult) -> Vec<StepOut> {
    r.steps.iter().enumerate().map(|(i, s)| step_out(i, s, r)).collect()
}

/// Step `i` of run `r` (`s`) as a report shows it.
pub(crate) fn step_out(i: usize, s: &Step, r: &RunResult) -> StepOut {
    let names = &r.names;
    let writes = r.writes_of(i);
    StepOut {
        n: i + 1,
        actor: r.actors.get(s.actor).map(ToString::to_string).unwrap_or_default(),
        from: s.call.from,
        to: s.call.to,
        call: s.call.kind.label(),
        target: s.call.vmm.map(|v| names.vmm(v)),
        arg: arg_text(s.call.arg, names),
        answer: answer_text(&s.answer, names),
        // A write step's generation is the one it writes; a call's, its answer's.
        gen: s
            .answer
            .gen()
            .or(match s.call.arg {
                Arg::State(_, gen) => Some(gen),
                _ => None,
            })
            .map(|g| g.as_u64()),
        fault: s.fault.map(Fault::label),
        writes: writes.iter().map(|w| write_text(w, names)).collect(),
        write_records: writes
            .iter()
            .map(|w| WriteOut {
                vmm: names.vmm(w.propolis_id),
                state: w.state.to_string(),
                gen: w.gen.as_u64(),
                applied: w.applied,
                stored_gen: w.prev_gen.as_u64(),
            })
            .collect(),
    }
}

/// Every VMM Nexus has a row for, by name: the row and the sled agent's entry.
pub fn vmms_out(r: &RunResult) -> BTreeMap<String, VmmOut> {
    r.vmms
        .iter()
        .map(|v| {
            let sled = r
                .sled
                .iter()
                .find(|s| s.0 == v.id)
                .map(|&(_, state, gen)| SledVmmOut { state: state.to_string(), gen: gen.as_u64() });
            let out = VmmOut {
                id: v.id.to_string(),
                instance: r.names.instance(v.instance_id),
                state: v.state.to_string(),
                gen: v.gen.as_u64(),
                deleted: v.deleted,
                sled,
            };
            (r.names.vmm(v.id), out)
        })
        .collect()
}

pub fn violations_out(r: &RunResult) -> Vec<ViolationOut> {
    let mut v: Vec<ViolationOut> = r
        .violations
        .iter()
        .map(|v| ViolationOut {
            invariant: v.invariant,
            rule: invariant_text(v.invariant),
            step: v.step,
            message: v.message.clone(),
        })
        .collect();
    // A harness fault makes the run worthless; say so rather than pass it.
    v.extend(r.harness_errors.iter().map(|e| ViolationOut {
        invariant: 0,
        rule: "the harness itself worked",
        step: 0,
        message: e.to_string(),
    }));
    v
}

pub fn instances_out(r: &RunResult) -> BTreeMap<String, InstanceOut> {
    r.instances
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                InstanceOut {
                    id: i.id.to_string(),
                    state: i.state.to_string(),
                    intended: format!("{:?}", i.intended).to_lowercase(),
                    auto_restarts: i.auto_restarts,
                },
            )
        })
        .collect()
}

pub fn disk_out(r: &RunResult) -> Option<DiskOut> {
    r.disk.as_ref().map(|d| DiskOut {
        id: d.id.to_string(),
        name: d.name.clone(),
        state: match d.state {
            DiskState::Detached => "detached",
            DiskState::Attached(_) => "attached",
        },
        instance: match d.state {
            DiskState::Attached(i) => Some(r.names.instance(i)),
            DiskState::Detached => None,
        },
    })
}

pub fn end_text(end: &RunEnd) -> String {
    match end {
        RunEnd::Finished => "finished".into(),
        RunEnd::Deadlock(w) => {
            let w: Vec<String> = w.iter().map(ToString::to_string).collect();
            format!("deadlock ({})", w.join(", "))
        }
        RunEnd::Stopped => "stopped by the chooser".into(),
        RunEnd::StepBound(n) => format!("step bound {n} reached"),
    }
}

/// The numbered step table, one line a step.
pub fn step_table(steps: &[StepOut], highlight: Option<usize>) -> String {
    let mut out = String::new();
    for s in steps {
        let mark = if Some(s.n) == highlight { ">>" } else { "  " };
        let what = s.call_text();
        let _ = write!(
            out,
            "{mark}{:>3}  {:<9} {:>11} -> {:<11} {:<44} => {}",
            s.n, s.actor, s.from, s.to, what, s.answer
        );
        if !s.writes.is_empty() {
            let _ = write!(out, "   [nexus: {}]", s.writes.join("; "));
        }
        out.push('\n');
    }
    out
}

/// Terminal-state writes for each VMM, in order: the heart of #7282 at a glance.
pub fn terminal_writes(r: &RunResult) -> Vec<String> {
    let mut out = Vec::new();
    for (i, s) in r.steps.iter().enumerate() {
        for w in r.writes_of(i) {
            if w.state.is_terminal() {
                let who = r.actors.get(s.actor).map_or_else(|| "?".into(), ToString::to_string);
                let via = match s.call.kind {
                    CallKind::CpapiInstancesPut => "sled-agent report",
                    CallKind::VmmWrite => "watcher write",
                    _ => s.call.kind.label(),
                };
                out.push(format!("step {:>3}: {} ({who}, {via})", i + 1, write_text(w, &r.names)));
            }
        }
    }
    out
}

/// The invariants, as the JSON of both commands lists them.
pub fn invariants_json() -> serde_json::Value {
    crate::harness::invariants::INVARIANTS
        .iter()
        .map(|(n, name, text)| serde_json::json!({"number": n, "name": name, "description": text}))
        .collect()
}

/// The environment a run was given, and the findings it leaves out, for JSON.
pub fn environment_json(c: &crate::harness::RunConfig) -> serde_json::Value {
    let excluded: Vec<_> = if c.findings {
        Vec::new()
    } else {
        crate::harness::script::FINDINGS
            .iter()
            .map(|(name, text)| serde_json::json!({"name": name, "description": text}))
            .collect()
    };
    serde_json::json!({
        "user_ops": c.user_ops,
        "faults": c.faults,
        "sled_restarts": c.sled_restarts,
        "excluded": excluded,
    })
}

/// `cargo xtask scenario --json`: one object for one run.
pub fn scenario_json(
    config: &RunConfig,
    schedule: &ScheduleSpec,
    result: &RunResult,
) -> serde_json::Value {
    serde_json::json!({
        "scenario": config.scenario.label(),
        "ordering": config.ordering.label(),
        "schedule": schedule.to_string(),
        "restart_policy": config.restart_policy.label(),
        "transport": config.transport.label(),
        "passed": result.passed(),
        "verdict": if result.harness_errors.is_empty() {
            result.verdict().word()
        } else {
            "harness_fault"
        },
        "max_steps": config.max_steps,
        "watcher_passes": config.watcher_passes,
        "watcher_concurrency": config.watcher_concurrency,
        "environment": environment_json(config),
        "invariants": invariants_json(),
        "violations": violations_out(result),
        "instances": instances_out(result),
        "vmms": vmms_out(result),
        "disk": disk_out(result),
        "terminal_writes": terminal_writes(result),
        "watcher": result.watcher,
        "end": end_text(&result.end),
        "scenario_error": result.scenario_outcome.clone().and_then(Result::err),
        "replay": result.replay(),
        "steps": steps_out(result),
    })
}

/// `cargo xtask scenario`'s report: the steps, what Nexus wrote, the end state,
/// the verdict and the replay string.
pub fn scenario_human(config: &RunConfig, schedule: &ScheduleSpec, r: &RunResult) -> String {
    let violations = violations_out(r);
    let mut s = scenario_header(config, schedule);
    let first_violation = violations.first().map(|v| v.step);
    s.push_str(&step_table(&steps_out(r), first_violation));
    let _ = writeln!(s, "\nterminal states written at Nexus:");
    for line in terminal_writes(r) {
        let _ = writeln!(s, "  {line}");
    }
    s.push_str(&end_state(r));
    s.push_str(&run_verdict(r, &violations));
    let _ = writeln!(s, "\nreplay: {}", r.replay());
    s
}

fn scenario_header(config: &RunConfig, schedule: &ScheduleSpec) -> String {
    // A replay string is long and printed in full at the end; the header names it.
    let schedule = match schedule {
        ScheduleSpec::Replay(_) => "replay string".to_string(),
        named => named.to_string(),
    };
    format!(
        "scenario {} | ordering {} | schedule {schedule} | restart policy {} | transport {}\n\n",
        config.scenario.label(),
        config.ordering.label(),
        config.restart_policy.label(),
        config.transport.label()
    )
}

/// What each instance, the disk and each watcher pass ended with.
fn end_state(r: &RunResult) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nend state ({}):", end_text(&r.end));
    for (name, i) in instances_out(r) {
        let _ = writeln!(s, "  {name:<6} {:<9} auto-restarts {}", i.state, i.auto_restarts);
    }
    if let Some(d) = disk_out(r) {
        let _ = writeln!(s, "  {:<6} {} {}", d.name, d.state, d.instance.unwrap_or_default());
    }
    for (k, c) in r.watcher.iter().enumerate() {
        let _ = write!(
            s,
            "  watcher pass {}: checked {}, failed {}, inconclusive {}, updated {}",
            k + 1,
            c.checked,
            c.failed,
            c.inconclusive,
            c.updated
        );
        // Rare, so said only when they happened.
        for (n, what) in [(c.write_errors, "write errors"), (c.update_errors, "update errors")] {
            if n > 0 {
                let _ = write!(s, ", {what} {n}");
            }
        }
        s.push('\n');
    }
    s
}

fn run_verdict(r: &RunResult, violations: &[ViolationOut]) -> String {
    let mut s = String::new();
    if violations.is_empty() && matches!(r.end, RunEnd::StepBound(_)) {
        let _ = writeln!(
            s,
            "\nINCONCLUSIVE: nothing broke in {} steps, but the step bound cut the run short",
            r.steps.len()
        );
    } else if violations.is_empty() {
        let _ = writeln!(s, "\nPASSED: every invariant held");
    } else {
        let _ = writeln!(s, "\nFAILED: {} invariant(s) broken", violations.len());
        for v in violations {
            let _ = writeln!(
                s,
                "  invariant {} ({}) at step {}: {}",
                v.invariant, v.rule, v.step, v.message
            );
        }
    }
    s
}
