//! What `explore` prints: the summary with its bounds, the shortest counterexample
//! as numbered steps with a replay command, and the same run as a Mermaid or
//! SVG sequence diagram.

use std::fmt::Write as _;

use serde_json::json;

use crate::explore::{ExploreConfig, ExploreResult};
use crate::harness::invariants::invariant_text;
use crate::harness::sched::Component;
use crate::report::{self, StepOut};

pub struct View<'a> {
    cfg: &'a ExploreConfig,
    r: &'a ExploreResult,
    /// The counterexample's steps, up to the violating one.
    steps: Vec<StepOut>,
}

impl<'a> View<'a> {
    pub fn new(cfg: &'a ExploreConfig, r: &'a ExploreResult) -> Self {
        let steps = r.counterexample.as_ref().map_or_else(Vec::new, |c| {
            let mut s = report::steps_out(&c.run);
            s.truncate(c.len);
            s
        });
        View { cfg, r, steps }
    }

    fn inject(&self) -> &'static str {
        self.cfg.run.inject.map_or("none", |i| i.label())
    }

    fn bounds_text(&self) -> String {
        let b = &self.cfg.run;
        format!(
            "{} watcher pass(es), {} restart pass(es), {} steps per schedule, {} schedules at most",
            b.watcher_passes, b.restart_passes, b.max_steps, self.cfg.max_schedules
        )
    }

    /// The command that replays the counterexample.
    fn command(&self, replay: &str) -> String {
        let b = &self.cfg.run;
        let mut cmd = format!(
            "cargo xtask scenario --scenario {} --ordering {} --restart-policy {}",
            b.scenario.label(),
            b.ordering.label(),
            b.restart_policy.label()
        );
        if b.watcher_passes != 2 {
            let _ = write!(cmd, " --watcher-passes {}", b.watcher_passes);
        }
        if b.restart_passes != 1 {
            let _ = write!(cmd, " --restart-passes {}", b.restart_passes);
        }
        if let Some(i) = b.inject {
            let _ = write!(cmd, " --inject {}", i.label());
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

    fn counts_text(&self) -> String {
        let r = self.r;
        format!(
            "{} schedules, {} distinct states, {:.3} s{}",
            r.schedules,
            r.states,
            r.elapsed.as_secs_f64(),
            if r.exhaustive {
                " (exhaustive)"
            } else if r.hit_step_bound {
                " (not exhaustive: some schedules hit the step bound)"
            } else {
                " (not exhaustive: schedule limit reached)"
            }
        )
    }

    pub fn human(&self) -> String {
        let r = self.r;
        let mut s = String::new();
        let _ = writeln!(s, "{}", self.header());
        let _ = writeln!(s, "bounds: {}", self.bounds_text());
        let _ = writeln!(s, "searched: {}", self.counts_text());
        let Some(c) = &r.counterexample else {
            let _ = writeln!(
                s,
                "\nno violation in any of {} schedules within these bounds",
                r.schedules
            );
            return s;
        };
        let broken: Vec<String> = r.invariants_broken.iter().map(u8::to_string).collect();
        let _ = writeln!(
            s,
            "violations: {} schedule(s) broke invariant(s) {}",
            r.violations,
            broken.join(", ")
        );
        let _ = writeln!(
            s,
            "\nshortest counterexample: {} steps, breaks invariant {} ({})\n",
            c.len,
            c.invariant,
            invariant_text(c.invariant)
        );
        s.push_str(&report::step_table(&self.steps, Some(c.len)));
        let _ = writeln!(s, "\nthe same run to its end broke:");
        for v in &c.run.violations {
            let _ = writeln!(s, "  invariant {} at step {}: {}", v.invariant, v.step, v.message);
        }
        let replay = c.run.replay();
        let _ = writeln!(s, "\nreplay: {replay}");
        let _ = writeln!(s, "run it: {}", self.command(&replay));
        s
    }

    pub fn json(&self) -> serde_json::Value {
        let r = self.r;
        let b = &self.cfg.run;
        let counterexample = r.counterexample.as_ref().map(|c| {
            let replay = c.run.replay();
            json!({
                "replay": replay,
                "command": self.command(&replay),
                "invariant": c.invariant,
                "rule": invariant_text(c.invariant),
                "length": c.len,
                "steps": self.steps,
                "violations": report::violations_out(&c.run),
            })
        });
        json!({
            "scenario": b.scenario.label(),
            "ordering": b.ordering.label(),
            "restart_policy": b.restart_policy.label(),
            "inject": b.inject.map(|i| i.label()),
            "bounds": {
                "watcher_passes": b.watcher_passes,
                "restart_passes": b.restart_passes,
                "max_steps": b.max_steps,
                "max_schedules": self.cfg.max_schedules,
            },
            "schedules": r.schedules,
            "states": r.states,
            "exhaustive": r.exhaustive,
            "violations": r.violations,
            "invariants_broken": r.invariants_broken,
            "counterexample": counterexample,
            "first_violation": r.first_violation.map(|(n, t)| json!({
                "schedules": n,
                "elapsed_ms": t.as_secs_f64() * 1e3,
            })),
            "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
        })
    }

    pub fn mermaid(&self) -> String {
        let mut s = String::from("sequenceDiagram\n");
        for c in Component::ALL {
            let _ = writeln!(s, "    participant {} as {}", mermaid_id(c), c.label());
        }
        let Some(c) = &self.r.counterexample else {
            let _ = writeln!(
                s,
                "    Note over {},{}: no violation in {}",
                mermaid_id(Component::Scenario),
                mermaid_id(Component::SledAgent),
                mermaid_text(&self.counts_text())
            );
            return s;
        };
        for st in &self.steps {
            let (from, to) = (component(st.from), component(st.to));
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
                mermaid_text(&call_text(st))
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

    pub fn html(&self) -> String {
        let mut s = String::new();
        let title = esc(&self.header());
        let _ = write!(
            s,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
             <style>body{{font-family:sans-serif;margin:2em}}td,th{{text-align:left;padding:2px 8px}}\
             code{{word-break:break-all}}.bad{{color:#b00}}</style></head><body>\n<h1>{title}</h1>\n"
        );
        let _ = write!(
            s,
            "<table><tr><th>bounds</th><td>{}</td></tr><tr><th>searched</th><td>{}</td></tr>",
            esc(&self.bounds_text()),
            esc(&self.counts_text())
        );
        let _ = writeln!(
            s,
            "<tr><th>violating schedules</th><td>{}</td></tr></table>",
            self.r.violations
        );
        match &self.r.counterexample {
            None => {
                let _ = writeln!(
                    s,
                    "<p>No violation in any of {} schedules within these bounds.</p>",
                    self.r.schedules
                );
            }
            Some(c) => {
                let replay = c.run.replay();
                let _ = write!(
                    s,
                    "<h2 class=\"bad\">Shortest counterexample: {} steps, invariant {}</h2>\n<p>{}</p>\n<ul>",
                    c.len,
                    c.invariant,
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
                let _ = write!(
                    s,
                    "</ul>\n<p>Replay: <code>{}</code></p>\n{}\n",
                    esc(&self.command(&replay)),
                    self.svg(c.len)
                );
            }
        }
        s.push_str("</body></html>\n");
        s
    }

    /// The counterexample as an SVG sequence diagram, violating step highlighted.
    fn svg(&self, violating: usize) -> String {
        const COL: usize = 170;
        const ROW: usize = 48;
        const TOP: usize = 50;
        let lanes = Component::ALL;
        let x = |c: Component| 90 + COL * lanes.iter().position(|&l| l == c).unwrap_or(0);
        let width = 180 + COL * (lanes.len() - 1);
        let height = TOP + ROW * (self.steps.len() + 1);
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
        for (i, st) in self.steps.iter().enumerate() {
            let y = TOP + ROW * i + 14;
            let (x1, x2) = (x(component(st.from)), x(component(st.to)));
            if st.n == violating {
                let _ = writeln!(
                    s,
                    "<rect x=\"4\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffd7d7\"/>",
                    y - 16,
                    width - 8,
                    ROW - 2
                );
            }
            let mid = (x1 + x2) / 2;
            let (n, ry, label_y, answer_y) = (st.n, y + 18, y - 3, y + 14);
            let call = esc(&format!("{} {}", st.actor, call_text(st)));
            let answer = esc(&answer_text(st));
            let _ = writeln!(
                s,
                "<text x=\"4\" y=\"{y}\">{n}</text>\
                 <line x1=\"{x1}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"black\" marker-end=\"url(#a)\"/>\
                 <text x=\"{mid}\" y=\"{label_y}\" text-anchor=\"middle\">{call}</text>\
                 <line x1=\"{x2}\" y1=\"{ry}\" x2=\"{x1}\" y2=\"{ry}\" stroke=\"#555\" \
                 stroke-dasharray=\"3 2\" marker-end=\"url(#a)\"/>\
                 <text x=\"{mid}\" y=\"{answer_y}\" text-anchor=\"middle\" fill=\"#333\">{answer}</text>"
            );
        }
        s.push_str("</svg>");
        s
    }
}

fn component(label: &str) -> Component {
    Component::ALL.into_iter().find(|c| c.label() == label).unwrap_or(Component::Scenario)
}

fn mermaid_id(c: Component) -> &'static str {
    match c {
        Component::Scenario => "scenario",
        Component::Nexus => "nexus",
        Component::Datastore => "datastore",
        Component::Watcher => "watcher",
        Component::UpdateStep => "update",
        Component::SledAgent => "sled",
    }
}

fn call_text(st: &StepOut) -> String {
    [Some(st.call.to_string()), st.target.clone(), st.arg.clone()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
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
