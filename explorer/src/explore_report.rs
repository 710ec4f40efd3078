//! What `explore` prints: the summary with its bounds, the shortest counterexample
//! as numbered steps with a replay command, and the same run as a Mermaid or
//! SVG sequence diagram.

use std::fmt::Write as _;

use serde_json::json;

use crate::explore::{
    Audited, Counterexample, Coverage, ExploreConfig, ExploreResult, Truncation, Verdict,
};
use crate::harness::invariants::{invariant_text, END_RULES};
use crate::harness::script::FINDINGS;
use crate::harness::step::Component;
use crate::report::{self, StepOut};
use sled_agent_api::PropolisUuid;

pub struct View<'a> {
    cfg: &'a ExploreConfig,
    r: &'a ExploreResult,
    /// The counterexample shown in full: the shortest, or `--invariant`'s.
    shortest: Option<&'a Counterexample>,
    /// Its steps, up to the violating one.
    steps: Vec<StepOut>,
    /// `--invariant K`: show only that invariant's counterexample.
    only: Option<u8>,
}

/// A counterexample's steps up to the violating one.
fn steps_until(c: &Counterexample) -> Vec<StepOut> {
    let mut s = report::steps_out(&c.run);
    s.truncate(c.len);
    s
}

impl<'a> View<'a> {
    pub fn new(cfg: &'a ExploreConfig, r: &'a ExploreResult) -> Self {
        let shortest = r.shortest();
        let steps = shortest.map_or_else(Vec::new, steps_until);
        View { cfg, r, shortest, steps, only: None }
    }

    /// Shows invariant `k`'s counterexample in full, and only it, in the human
    /// report, the Mermaid diagram and the HTML page (the JSON keeps them all).
    pub fn only(self, k: Option<u8>) -> Self {
        let Some(k) = k else { return self };
        let shortest = self.r.counterexamples.iter().find(|c| c.invariant == k);
        let steps = shortest.map_or_else(Vec::new, steps_until);
        View { shortest, steps, only: Some(k), ..self }
    }

    fn inject(&self) -> &'static str {
        self.cfg.run.inject.map_or("none", |i| i.label())
    }

    fn bounds_text(&self) -> String {
        let b = &self.cfg.run;
        let mut s = format!(
            "{} watcher pass(es) of {} check(s) at once, {} restart pass(es), {} user op(s), {} fault(s), {} steps per schedule, {} schedules at most",
            b.watcher_passes, b.watcher_concurrency, b.restart_passes, b.user_ops, b.faults, b.max_steps, self.cfg.max_schedules
        );
        if b.sled_restarts > 0 {
            let _ = write!(s, ", {} sled-agent restart(s)", b.sled_restarts);
        }
        if let Some(t) = self.cfg.max_time {
            let _ = write!(s, ", {} s at most", t.as_secs_f64());
        }
        s
    }

    /// The command that replays a counterexample: every setting it ran under that
    /// differs from `scenario`'s defaults, so it reproduces the run exactly.
    fn command(&self, replay: &str) -> String {
        let mut cmd = String::from("cargo xtask scenario");
        for f in self.cfg.run.flags().into_iter().filter(|f| !f.is_default) {
            let _ = write!(cmd, " {}", f.name);
            if let Some(v) = f.value {
                let _ = write!(cmd, " {v}");
            }
        }
        let _ = write!(cmd, " --schedule '{replay}'");
        cmd
    }

    fn header(&self) -> String {
        let b = &self.cfg.run;
        format!(
            "explore {} | ordering {} | restart policy {} | inject {}",
            b.scenario.label(),
            b.ordering.label(),
            b.restart_policy.label(),
            self.inject()
        )
    }

    fn coverage_text(&self) -> String {
        match &self.r.coverage {
            Coverage::Exhaustive => "exhaustive".into(),
            Coverage::Truncated(why) => {
                let why: Vec<String> = why.iter().map(Truncation::describe).collect();
                format!("truncated: {}", why.join("; "))
            }
        }
    }

    fn counts_text(&self) -> String {
        let r = self.r;
        if r.merged_shards > 0 {
            return format!(
                "{} runs over {} shards, {} situations summed over them (one two shards reached counts in each), {} violating runs, {:.3} s the longest shard",
                r.runs,
                r.merged_shards,
                r.situations,
                r.violating_runs,
                r.elapsed.as_secs_f64()
            );
        }
        format!(
            "{} runs, {} distinct situations, {} violating runs, {:.3} s on {} thread(s)",
            r.runs,
            r.situations,
            r.violating_runs,
            r.elapsed.as_secs_f64(),
            self.cfg.threads
        )
    }

    /// One sentence on what the verdict means, for the end of the human report.
    fn verdict_text(&self) -> String {
        let r = self.r;
        match r.verdict() {
            Verdict::Clean => format!(
                "clean: no schedule within these bounds breaks an invariant ({} runs, exhaustive)",
                r.runs
            ),
            Verdict::Inconclusive => format!(
                "inconclusive: no violation in the {} runs made, but the search was {}; \
                 this proves nothing",
                r.runs,
                self.coverage_text()
            ),
            Verdict::Violated => {
                let exhaustive = r.coverage == Coverage::Exhaustive;
                let shortest = if exhaustive { "shortest" } else { "shortest found" };
                let list: Vec<String> = r
                    .counterexamples
                    .iter()
                    .map(|c| format!("{} ({shortest} {} steps)", c.invariant, c.len))
                    .collect();
                let mut s = format!("violated: invariant(s) {} broken", list.join(", "));
                if !exhaustive {
                    s.push_str(
                        "; the search was truncated, so others may break too and shorter \
                         schedules may exist",
                    );
                }
                if self.step_bound_hit() {
                    let rules: Vec<String> = END_RULES.iter().map(u8::to_string).collect();
                    let _ = write!(
                        s,
                        "; runs cut short by the step bound had their end rules ({}) unjudged",
                        rules.join(", ")
                    );
                }
                s
            }
        }
    }

    fn step_bound_hit(&self) -> bool {
        matches!(&self.r.coverage, Coverage::Truncated(why)
            if why.iter().any(|t| matches!(t, Truncation::StepBound { .. })))
    }

    pub fn human(&self) -> String {
        let r = self.r;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.header());
        let _ = writeln!(s, "bounds:   {}", self.bounds_text());
        if !self.cfg.run.findings {
            let names: Vec<&str> = FINDINGS.iter().map(|(n, _)| *n).collect();
            let _ = writeln!(
                s,
                "excluded: {} (races omicron's design has too; --findings explores them)",
                names.join(", ")
            );
        }
        let _ = writeln!(s, "coverage: {}", self.coverage_text());
        let _ = writeln!(s, "searched: {}", self.counts_text());
        if let Some(a) = r.audited {
            let _ = writeln!(s, "audited:  {}", audited_text(&a));
        }
        let _ = writeln!(s, "verdict:  {}", self.verdict_text());
        let Some(c) = self.shortest else {
            if let Some(k) = self.only {
                let _ = writeln!(s, "\ninvariant {k} ({}) did not break", invariant_text(k));
            }
            return s;
        };
        let _ = writeln!(
            s,
            "\n{}{} counterexample: {} steps, breaks invariant {} ({})\n",
            if self.only.is_some() { "invariant's " } else { "" },
            if r.coverage == Coverage::Exhaustive { "shortest" } else { "shortest found" },
            c.len,
            c.invariant,
            invariant_text(c.invariant)
        );
        s.push_str(&report::step_table(&self.steps, Some(c.len)));
        let _ = writeln!(s, "\nthe same run, completed by the happy schedule, broke:");
        for v in &c.run.violations {
            let _ = writeln!(s, "  invariant {} at step {}: {}", v.invariant, v.step, v.message);
        }
        let replay = c.run.replay();
        let _ = writeln!(s, "\nreplay: {replay}");
        let _ = writeln!(s, "run it: {}", self.command(&replay));
        let others =
            r.counterexamples.iter().filter(|o| self.only.is_none() && o.invariant != c.invariant);
        for other in others {
            let _ = writeln!(
                s,
                "\ninvariant {} ({}): {} {} steps\n  run it: {}",
                other.invariant,
                invariant_text(other.invariant),
                if r.coverage == Coverage::Exhaustive { "shortest" } else { "shortest found" },
                other.len,
                self.command(&other.run.replay())
            );
        }
        s
    }

    fn counterexample_json(&self, c: &Counterexample) -> serde_json::Value {
        let replay = c.run.replay();
        json!({
            "replay": replay,
            "command": self.command(&replay),
            "invariant": c.invariant,
            "rule": invariant_text(c.invariant),
            "length": c.len,
            // The violating steps as choice indices, for `explore-merge`.
            "choices": c.prefix,
            // Shortest within the bounds only when the search was exhaustive.
            "shortest": self.r.coverage == Coverage::Exhaustive,
            "steps": steps_until(c),
            "violations": report::violations_out(&c.run),
            // Where the run ends when played on past the violation (the `happy`
            // policy): what each instance, VMM and the disk came to.
            "end_state": {
                "end": report::end_text(&c.run.end),
                "instances": report::instances_out(&c.run),
                "vmms": report::vmms_out(&c.run),
                "disk": report::disk_out(&c.run),
            },
        })
    }

    pub fn json(&self) -> serde_json::Value {
        let r = self.r;
        let b = &self.cfg.run;
        let truncated_by: Vec<String> = match &r.coverage {
            Coverage::Exhaustive => Vec::new(),
            Coverage::Truncated(why) => why.iter().map(Truncation::describe).collect(),
        };
        json!({
            "scenario": b.scenario.label(),
            "ordering": b.ordering.label(),
            "restart_policy": b.restart_policy.label(),
            "inject": b.inject.map(|i| i.label()),
            "bounds": {
                "watcher_passes": b.watcher_passes,
                "watcher_concurrency": b.watcher_concurrency,
                "restart_passes": b.restart_passes,
                "max_steps": b.max_steps,
                "max_schedules": self.cfg.max_schedules,
                "max_seconds": self.cfg.max_time.map(|t| t.as_secs_f64()),
                "user_ops": b.user_ops,
                "faults": b.faults,
                "sled_restarts": b.sled_restarts,
            },
            "environment": crate::report::environment_json(b),
            "invariants": crate::report::invariants_json(),
            "verdict": r.verdict().word(),
            "coverage": r.coverage.word(),
            "truncated_by": truncated_by,
            "exhaustive": r.coverage == Coverage::Exhaustive,
            "runs": r.runs,
            "situations": r.situations,
            "violating_runs": r.violating_runs,
            "threads": self.cfg.threads,
            "merged_shards": r.merged_shards,
            "reduction": if self.cfg.reduces() { "partial-order" } else { "none" },
            "visited_bytes": r.visited_bytes,
            // The contract's names for the same three counts.
            "schedules": r.runs,
            "states": r.situations,
            "violations": r.violating_runs,
            "invariants_broken": r.invariants_broken(),
            "counterexample": self.shortest.map(|c| self.counterexample_json(c)),
            "counterexamples": r.counterexamples.iter().map(|c| self.counterexample_json(c)).collect::<Vec<_>>(),
            "first_violation": r.first_violation.map(|(n, t)| json!({
                "runs": n,
                "schedules": n,
                "elapsed_ms": t.as_secs_f64() * 1e3,
            })),
            "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
            "audited": r.audited.map(|a| {
                let pair = |(replayed, met): (usize, usize)| json!({ "replayed": replayed, "met": met });
                json!({
                    "merges": pair(a.merges),
                    "free_steps": pair(a.free_steps),
                    "kept_asleep": pair(a.kept_asleep),
                    "taken": a.taken,
                    "past_bound": a.past_bound,
                    "all": !a.sampled(),
                })
            }),
        })
    }

    pub fn mermaid(&self) -> String {
        let mut s = String::from("sequenceDiagram\n");
        for c in Component::ALL {
            let _ = writeln!(s, "    participant {} as {}", mermaid_id(c), c.label());
        }
        let Some(c) = self.shortest else {
            let _ = writeln!(
                s,
                "    Note over {},{}: {}",
                mermaid_id(Component::Scenario),
                mermaid_id(Component::SledAgent),
                mermaid_text(&self.verdict_text())
            );
            return s;
        };
        for st in &self.steps {
            let (from, to) = (st.from, st.to);
            let violating = st.n == c.len;
            if violating {
                s.push_str("    rect rgb(255, 215, 215)\n");
            }
            let _ = writeln!(
                s,
                "    {}->>{}: {}. {} {}",
                mermaid_id(from),
                mermaid_id(to),
                st.n,
                st.actor,
                mermaid_text(&st.call_text())
            );
            let _ = writeln!(
                s,
                "    {}-->>{}: {}",
                mermaid_id(to),
                mermaid_id(from),
                mermaid_text(&answer_text(st))
            );
            if violating {
                let _ = writeln!(
                    s,
                    "    Note over {},{}: invariant {} broken",
                    mermaid_id(Component::Scenario),
                    mermaid_id(Component::SledAgent),
                    c.invariant
                );
                s.push_str("    end\n");
            }
        }
        s
    }

    /// A self-contained page: the search's summary, then one section per broken
    /// invariant (a contents list to pick one), each its shortest counterexample
    /// played to the end of its run, the harm marked, with what each component
    /// held after every step and a sequence diagram.
    pub fn html(&self) -> String {
        let title = esc(&self.header());
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{title}</title>\n<style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
        );
        s.push_str(&self.summary_table());
        let shown = self.shown();
        if shown.len() > 1 {
            s.push_str("<nav><b>Broken invariants:</b> ");
            for c in &shown {
                let rule = esc(invariant_text(c.invariant));
                let _ = write!(
                    s,
                    "<a href=\"#inv-{0}\" title=\"{rule}\">invariant {0} ({1} steps)</a> ",
                    c.invariant, c.len
                );
            }
            s.push_str("</nav>\n");
        }
        if let (Some(k), true) = (self.only, shown.is_empty()) {
            let _ = writeln!(s, "<p>Invariant {k} ({}) did not break.</p>", esc(invariant_text(k)));
        }
        for c in shown {
            s.push_str(&self.section(c));
        }
        s.push_str("</body></html>\n");
        s
    }

    /// The counterexamples a report shows: every one, or the `--invariant` asked for.
    fn shown(&self) -> Vec<&'a Counterexample> {
        let all = self.r.counterexamples.iter();
        all.filter(|c| self.only.is_none_or(|k| k == c.invariant)).collect()
    }

    fn summary_table(&self) -> String {
        format!(
            "<table><tr><th>bounds</th><td>{}</td></tr><tr><th>coverage</th><td>{}</td></tr>\
             <tr><th>searched</th><td>{}</td></tr><tr><th>verdict</th><td>{}</td></tr></table>\n",
            esc(&self.bounds_text()),
            esc(&self.coverage_text()),
            esc(&self.counts_text()),
            esc(&self.verdict_text())
        )
    }

    fn section(&self, c: &Counterexample) -> String {
        let steps = report::steps_out(&c.run);
        let mut s = format!(
            "<section id=\"inv-{0}\"><h2 class=\"bad\">Invariant {0} broken in {1} steps</h2>\n\
             <p>{2}</p>\n<ul>",
            c.invariant,
            c.len,
            esc(invariant_text(c.invariant))
        );
        for v in &c.run.violations {
            let _ = write!(
                s,
                "<li>invariant {} at step {}: {}</li>",
                v.invariant,
                v.step,
                esc(&v.message)
            );
        }
        let story = Story::new(c, &steps);
        let _ = write!(
            s,
            "</ul>\n<p>Replay: <code>{}</code></p>\n<p>The run goes on past step {} as the \
             <code>happy</code> policy plays it, so its harm shows: {}.</p>\n",
            esc(&self.command(&c.run.replay())),
            c.len,
            legend(&story.marks())
        );
        // Wider than a window: each scrolls on its own, not the page.
        s.push_str("<div class=\"wide\">");
        s.push_str(&steps_table(&story));
        s.push_str("</div>\n");
        s.push_str(&end_table(&story));
        s.push_str("<div class=\"wide\">");
        s.push_str(&svg(&steps, c.len, &|i| !story.harm(i).is_empty()));
        s.push_str("</div>\n");
        s.push_str("</section>\n");
        s
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:1em 2em;max-width:110em}\
    h1{font-size:1.4em}h2{font-size:1.25em}.wide{overflow-x:auto}\
    td,th{text-align:left;padding:2px 8px;vertical-align:top}code{word-break:break-all}\
    .bad{color:#b00}nav a{margin-right:1em}section{margin-top:2em}\
    table.steps{border-collapse:collapse;font-size:13px;width:100%}\
    table.steps td{overflow-wrap:break-word}table.steps td:nth-child(-n+2){white-space:nowrap}\
    table.steps td{border-top:1px solid #ddd}tr.violating{background:#ffd7d7}\
    tr.after td{color:#555}.harm{color:#fff;background:#b00;border-radius:3px;padding:0 4px;\
    margin-right:4px;white-space:nowrap}.strip{font-family:monospace;font-size:12px;color:#225}";

/// What each harm mark means.
const HARM_MEANS: [(&str, &str); 4] = [
    ("Failed applied", "Nexus recorded Failed for a VMM that did not vanish"),
    ("Destroyed refused", "the sled agent's Destroyed came after that Failed, refused as stale"),
    ("instance Failed", "an instance went Failed"),
    ("auto-restart", "Nexus started such an instance again by itself"),
];

/// The legend of the marks a run has.
fn legend(marks: &[&str]) -> String {
    if marks.is_empty() {
        return "nothing marked: no false Failed, no lost Destroyed, no restart".to_string();
    }
    let parts: Vec<String> = HARM_MEANS
        .iter()
        .filter(|(m, _)| marks.contains(m))
        .map(|(m, means)| format!("<span class=\"harm\">{m}</span> {means}"))
        .collect();
    parts.join("; ")
}

/// What a run did to its users, read from its steps and snapshots: which VMMs
/// truly vanished (fault d), and what each instance's user last asked for.
struct Story<'a> {
    c: &'a Counterexample,
    steps: &'a [StepOut],
    /// VMMs that vanished: Failed for them is the watcher's job.
    vanished: Vec<String>,
    /// The harm each step did, as `harm_of` reads it.
    harms: Vec<Vec<&'static str>>,
}

/// Nexus's row of a VMM recorded Failed.
const FAILED_ROW: nexus_stub::DbVmmState =
    nexus_stub::DbVmmState::Reported(sled_agent_api::VmmState::Failed);

impl<'a> Story<'a> {
    fn new(c: &'a Counterexample, steps: &'a [StepOut]) -> Self {
        let vanished = steps
            .iter()
            .flat_map(|s| {
                let lost = match s.call {
                    "vmm_vanish" => s.answer.strip_suffix(" vanished"),
                    "sled_restart" => s.answer.strip_prefix(crate::report::RESTARTED_LOST),
                    _ => None,
                };
                lost.into_iter().flat_map(|l| l.split(", ")).map(str::to_string)
            })
            .collect();
        let mut story = Story { c, steps, vanished, harms: Vec::new() };
        story.harms = (0..steps.len()).map(|i| story.harm_of(i)).collect();
        story
    }

    fn vanished(&self, vmm: &str) -> bool {
        self.vanished.iter().any(|v| v == vmm)
    }

    /// Whether `instance` is Failed after `k` steps for a VMM that did not vanish:
    /// one of its Failed rows is of a VMM its sled agent still had or reported.
    fn falsely_failed(&self, instance: &str, k: usize) -> bool {
        let Some(snap) = self.c.run.snapshots.get(k) else { return false };
        let names = &self.c.run.names;
        let is_failed = snap.instances.iter().any(|(id, st)| {
            names.instance(*id) == instance && *st == nexus_stub::ExternalState::Failed
        });
        let prefix = format!("{instance}/");
        is_failed
            && snap.vmms.iter().any(|&(v, st, _, _)| {
                let vmm = names.vmm(v);
                st == FAILED_ROW && vmm.starts_with(&prefix) && !self.vanished(&vmm)
            })
    }

    /// The harm step `i` (0-based) did.
    fn harm(&self, i: usize) -> &[&'static str] {
        self.harms.get(i).map_or(&[], Vec::as_slice)
    }

    /// The harm step `i` (0-based) did, as labels: a false Failed recorded, the
    /// sled agent's Destroyed refused because that Failed came first, an
    /// instance going Failed, an auto-restart of such an instance. None of it
    /// counts for a VMM that truly vanished.
    fn harm_of(&self, i: usize) -> Vec<&'static str> {
        let mut h = Vec::new();
        let Some(st) = self.steps.get(i) else { return h };
        let live = |vmm: &str| !self.vanished(vmm);
        if st.write_records.iter().any(|w| w.state == "failed" && w.applied && live(&w.vmm)) {
            h.push("Failed applied");
        }
        // A Destroyed refused over a Failed row is the real terminal report lost;
        // one refused over a Destroyed (a report sent again) changes nothing.
        let row_failed_before = |vmm: &str| {
            self.c.run.snapshots.get(i).is_some_and(|snap| {
                snap.vmms
                    .iter()
                    .any(|(v, st, _, _)| self.c.run.names.vmm(*v) == vmm && *st == FAILED_ROW)
            })
        };
        if st
            .write_records
            .iter()
            .any(|w| w.state == "destroyed" && !w.applied && row_failed_before(&w.vmm))
        {
            h.push("Destroyed refused");
        }
        if !self.newly_failed(i).is_empty() {
            h.push("instance Failed");
        }
        // Restarting an instance that failed only because its VMM vanished is
        // auto-restart doing its job.
        let falsely = st.arg.as_deref().is_some_and(|inst| self.falsely_failed(inst, i));
        if st.actor == "restart" && st.call == "instance_start" && falsely {
            h.push("auto-restart");
        }
        h
    }

    /// Instances that went Failed at step `i` (0-based) for a VMM that did not
    /// vanish.
    fn newly_failed(&self, i: usize) -> Vec<String> {
        let names = &self.c.run.names;
        let Some(snap) = self.c.run.snapshots.get(i + 1) else { return Vec::new() };
        snap.instances
            .iter()
            .map(|(id, _)| names.instance(*id))
            .filter(|n| self.falsely_failed(n, i + 1) && !self.falsely_failed(n, i))
            .collect()
    }

    /// What the user last asked of each instance: a create or start asks for
    /// Running, a stop for Stopped (auto-restart asks nothing of its own).
    fn asked(&self, instance: &str) -> Option<&'static str> {
        self.steps
            .iter()
            .filter(|s| s.actor != "restart" && s.arg.as_deref() == Some(instance))
            .filter_map(|s| match s.call {
                "instance_create" | "instance_start" | "instance_reboot" => Some("running"),
                "instance_stop" => Some("stopped"),
                _ => None,
            })
            .next_back()
    }

    /// The harm marks this run has, for the legend (which puts them in order).
    fn marks(&self) -> Vec<&'static str> {
        self.harms.iter().flatten().copied().collect()
    }
}

/// Every step of the run: the call, its answer, Nexus's writes, the harm it did,
/// and what the components held after it.
fn steps_table(story: &Story<'_>) -> String {
    let (c, steps) = (story.c, story.steps);
    let mut s = String::from(
        "<table class=\"steps\"><tr><th>#</th><th>actor</th><th>call</th><th>answer</th>\
         <th>Nexus writes</th><th>after it: sled agent</th><th>Nexus VMM rows</th>\
         <th>instances</th></tr>\n",
    );
    for (i, st) in steps.iter().enumerate() {
        let class = match st.n.cmp(&c.len) {
            std::cmp::Ordering::Equal => " class=\"violating\"",
            std::cmp::Ordering::Greater => " class=\"after\"",
            std::cmp::Ordering::Less => "",
        };
        let marks: String =
            story.harm(i).iter().map(|h| format!("<span class=\"harm\">{h}</span>")).collect();
        let _ = writeln!(
            s,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{marks}{}</td>{}</tr>",
            st.n,
            esc(&st.actor),
            esc(&st.call_text()),
            esc(&st.answer),
            esc(&st.writes.join(", ")),
            strip(c, st.n)
                .iter()
                .map(|part| format!("<td class=\"strip\">{}</td>", esc(part)))
                .collect::<String>()
        );
    }
    s.push_str("</table>\n");
    s
}

/// What the components held after step `n`: the sled agent's table (with any VM
/// a restart left running outside it), Nexus's VMM rows and the instances'
/// states.
fn strip(c: &Counterexample, n: usize) -> [String; 3] {
    let Some(snap) = c.run.snapshots.get(n) else { return Default::default() };
    let names = &c.run.names;
    let or_none = |v: Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(", ") };
    let vmm =
        |v: PropolisUuid, st: &dyn std::fmt::Display, g: u64| format!("{} {st}/g{g}", names.vmm(v));
    [
        or_none(
            (snap.sled.iter().map(|(v, st, g)| vmm(*v, st, g.as_u64())))
                .chain(snap.orphans.iter().map(|v| format!("{} running, lost", names.vmm(*v))))
                .collect(),
        ),
        or_none(
            (snap.vmms.iter())
                .map(|&(v, st, g, deleted)| {
                    let row = vmm(v, &st, g.as_u64());
                    if deleted {
                        format!("{row} (deleted)")
                    } else {
                        row
                    }
                })
                .collect(),
        ),
        or_none(
            snap.instances.iter().map(|(i, st)| format!("{} {st}", names.instance(*i))).collect(),
        ),
    ]
}

/// Where the run ended: each instance against what its user last asked for.
fn end_table(story: &Story<'_>) -> String {
    let c = story.c;
    let mut s = format!(
        "<h3>End state ({})</h3>\n<table><tr><th>instance</th><th>state</th><th>its user last \
         asked for</th><th>auto-restarts</th></tr>\n",
        esc(&report::end_text(&c.run.end))
    );
    for (name, i) in report::instances_out(&c.run) {
        let asked = story.asked(&name);
        // Failed though its VMM did not vanish, or not stopped though its user
        // stopped it (a run may end with an instance still starting: not harm).
        let end = c.run.snapshots.len().saturating_sub(1);
        let wrong =
            story.falsely_failed(&name, end) || (asked == Some("stopped") && i.state != "stopped");
        let class = if wrong { " class=\"bad\"" } else { "" };
        let _ = writeln!(
            s,
            "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name),
            esc(&i.state),
            asked.unwrap_or("-"),
            i.auto_restarts
        );
    }
    s.push_str("</table>\n");
    s
}

/// A run as an SVG sequence diagram, the violating step and harmful ones
/// highlighted, the steps after the violation greyed.
fn svg(steps: &[StepOut], violating: usize, harmful: &dyn Fn(usize) -> bool) -> String {
    const COL: usize = 170;
    const ROW: usize = 48;
    const TOP: usize = 50;
    // Only the lanes the run uses: a run with no user or fault has no lane for one.
    let lanes: Vec<Component> = Component::ALL
        .into_iter()
        .filter(|&l| steps.iter().any(|st| st.from == l || st.to == l))
        .collect();
    let x = |c: Component| 90 + COL * lanes.iter().position(|&l| l == c).unwrap_or(0);
    let width = 180 + COL * lanes.len().saturating_sub(1);
    let height = TOP + ROW * (steps.len() + 1);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<defs><marker id=\"a\" markerWidth=\"8\" \
         markerHeight=\"8\" refX=\"8\" refY=\"4\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\"/>\
         </marker></defs>\n"
    );
    for &c in &lanes {
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
             <line x1=\"{0}\" y1=\"28\" x2=\"{0}\" y2=\"{}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>",
            x(c),
            c.label(),
            height - 10
        );
    }
    for (i, st) in steps.iter().enumerate() {
        let y = TOP + ROW * i + 14;
        let (x1, x2) = (x(st.from), x(st.to));
        let fill = if st.n == violating {
            Some("#ffd7d7")
        } else if harmful(i) {
            Some("#ffeaea")
        } else {
            None
        };
        if let Some(fill) = fill {
            let _ = writeln!(
                s,
                "<rect x=\"4\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"/>",
                y - 16,
                width - 8,
                ROW - 2
            );
        }
        let ink = if st.n > violating { "#777" } else { "black" };
        let mid = (x1 + x2) / 2;
        let (n, ry, label_y, answer_y) = (st.n, y + 18, y - 3, y + 14);
        let call = esc(&format!("{} {}", st.actor, st.call_text()));
        let answer = esc(&answer_text(st));
        let _ = writeln!(
            s,
            "<g fill=\"{ink}\"><text x=\"4\" y=\"{y}\">{n}</text>\
             <line x1=\"{x1}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"{ink}\" \
             marker-end=\"url(#a)\"/>\
             <text x=\"{mid}\" y=\"{label_y}\" text-anchor=\"middle\">{call}</text>\
             <line x1=\"{x2}\" y1=\"{ry}\" x2=\"{x1}\" y2=\"{ry}\" stroke=\"#555\" \
             stroke-dasharray=\"3 2\" marker-end=\"url(#a)\"/>\
             <text x=\"{mid}\" y=\"{answer_y}\" text-anchor=\"middle\">{answer}</text></g>"
        );
    }
    s.push_str("</svg>");
    s
}

fn mermaid_id(c: Component) -> &'static str {
    match c {
        Component::Scenario => "scenario",
        Component::User => "user",
        Component::Fault => "fault",
        Component::Nexus => "nexus",
        Component::Datastore => "datastore",
        Component::Watcher => "watcher",
        Component::UpdateStep => "update",
        Component::SledAgent => "sled",
    }
}

fn answer_text(st: &StepOut) -> String {
    if st.writes.is_empty() {
        st.answer.clone()
    } else {
        format!("{} [nexus: {}]", st.answer, st.writes.join(", "))
    }
}

/// Mermaid reads `;` and `#` as syntax in message text.
fn mermaid_text(s: &str) -> String {
    s.replace(';', ",").replace('#', "no.")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// What `--check-fingerprints` replayed of what it met, per audit.
fn audited_text(a: &Audited) -> String {
    let part = |(replayed, met): (usize, usize), what: &str| {
        if replayed == met {
            format!("all {met} {what}")
        } else {
            format!("{replayed} of {met} {what} (the first met)")
        }
    };
    let past = match a.past_bound {
        0 => String::new(),
        n => format!(
            "; {n} of those free steps and kept steps reached the step bound and were not judged"
        ),
    };
    format!(
        "{}, {}, {}, and all {} steps a run took kept asleep beside it{past}",
        part(a.merges, "merges"),
        part(a.free_steps, "free steps taken both ways"),
        part(a.kept_asleep, "steps kept asleep"),
        a.taken,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_line_says_what_ran_of_what_was_met() {
        let a = Audited {
            merges: (20_000, 32_952),
            free_steps: (8_595, 8_595),
            kept_asleep: (0, 0),
            taken: 2_334,
            past_bound: 0,
        };
        let want = "20000 of 32952 merges (the first met), all 8595 free steps taken both \
                    ways, all 0 steps kept asleep, and all 2334 steps a run took kept asleep \
                    beside it";
        assert_eq!(audited_text(&a), want);
        let past = audited_text(&Audited { past_bound: 7, ..a });
        assert!(past.starts_with(want), "{past}");
        assert!(
            past.ends_with(
                "; 7 of those free steps and kept steps reached the step bound and were not judged"
            ),
            "{past}"
        );
    }

    fn legacy_stop_race(max_steps: usize) -> ExploreConfig {
        let run = crate::harness::RunConfig {
            scenario: crate::harness::ScenarioKind::StopRace,
            ordering: sim_sled_agent::RemovalOrdering::RemoveThenPublish,
            max_steps,
            describe_end: true,
            ..crate::harness::RunConfig::new(slog::Logger::root(slog::Discard, slog::o!()))
        };
        ExploreConfig { threads: 1, ..ExploreConfig::new(run) }
    }

    /// A search cut short by the step bound names the rules it left unjudged:
    /// those `Invariants::end` judges.
    #[test]
    fn a_search_at_the_step_bound_names_the_end_rules_it_left_unjudged() {
        let cfg = legacy_stop_race(12);
        let r = crate::explore::explore(&cfg).expect("explores");
        let text = View::new(&cfg, &r).human();
        assert!(text.contains("had their end rules (5, 6, 7, 8, 9, 10) unjudged"), "{text}");
    }

    /// One search counts distinct situations; a merge of shards says its
    /// counts are summed over them, in the text and in JSON.
    #[test]
    fn a_merged_result_says_its_counts_are_summed_over_its_shards() {
        let cfg = legacy_stop_race(200);
        let mut r = crate::explore::explore(&cfg).expect("explores");
        let (runs, situations) = (r.runs, r.situations);
        let one = View::new(&cfg, &r).human();
        assert!(one.contains(&format!("{runs} runs, {situations} distinct situations")), "{one}");
        assert_eq!(View::new(&cfg, &r).json()["merged_shards"], 0);
        r.merged_shards = 2;
        let merged = View::new(&cfg, &r).human();
        let want = format!("{runs} runs over 2 shards, {situations} situations summed over them");
        assert!(merged.contains(&want), "{merged}");
        let j = View::new(&cfg, &r).json();
        assert_eq!(
            (j["merged_shards"].as_u64(), j["situations"].as_u64()),
            (Some(2), Some(situations as u64))
        );
        // The ends it reached, as a user could read them: each ends with
        // whether the scenario passed, not with its failure's words.
        let passed = ["Some(true)", "Some(false)", "None"];
        let said = |e: &String| e.contains("inst1") && passed.iter().any(|p| e.ends_with(p));
        assert!(!r.end_states.is_empty() && r.end_states.iter().all(said), "{:?}", r.end_states);
    }
}
