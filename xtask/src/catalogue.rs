//! `cargo xtask catalogue`: checks every race of the catalogue (found in its
//! pre-fix model, its fix proved at the same bounds) and prints the table the
//! README carries.

use std::io::Write;
use std::time::Duration;

use sledsim_explorer::catalogue::{self, CatalogueError, Row, Table, NOT_MODELLED, RACES};
use sledsim_explorer::harness::invariants::invariant_name;

/// What checking the whole catalogue gave: each race's row, or why it does not hold.
pub struct Checked {
    pub rows: Vec<Result<Row, CatalogueError>>,
    pub elapsed: Duration,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.rows.iter().all(Result::is_ok)
    }
}

/// Checks every race, in catalogue order.
pub fn check_all() -> Checked {
    let rows: Vec<_> = RACES.iter().map(catalogue::check).collect();
    let elapsed = rows.iter().flatten().map(|r| r.elapsed).sum();
    Checked { rows, elapsed }
}

/// The table, what is left out and why, and any race that does not hold.
pub fn human(c: &Checked, out: &mut dyn Write) {
    let held: Vec<Row> = c.rows.iter().flatten().cloned().collect();
    let _ = write!(out, "{}", Table(&held));
    let _ = writeln!(out);
    let _ = writeln!(out, "Without a row (left out of the model, or a finding with no fix):");
    for (id, why) in NOT_MODELLED {
        let _ = writeln!(out, "- {id}: {why}");
    }
    let _ = writeln!(out);
    for e in c.rows.iter().filter_map(|r| r.as_ref().err()) {
        let _ = writeln!(out, "does not hold: {}", sledsim_http::error_chain(e));
    }
    let _ = writeln!(
        out,
        "{} of {} races found before their fix and proved after it, in {:.1} s (one thread each)",
        held.len(),
        RACES.len(),
        c.elapsed.as_secs_f64()
    );
}

pub fn json(c: &Checked) -> serde_json::Value {
    let races: Vec<serde_json::Value> = c
        .rows
        .iter()
        .map(|r| match r {
            Ok(row) => serde_json::json!({
                "id": row.race.id,
                "refs": row.race.refs,
                "interleaving": row.race.interleaving,
                "command": row.race.command(),
                "invariant": row.race.breaks,
                "invariant_name": invariant_name(row.race.breaks),
                "shortest": row.shortest,
                "with_findings": row.with_findings,
                "replay": row.replay,
                "proof": {
                    "runs": row.proof_runs,
                    "situations": row.proof_situations,
                    "elapsed_ms": row.proof_time.as_secs_f64() * 1e3,
                },
                "holds": true,
            }),
            Err(e) => serde_json::json!({
                "error": sledsim_http::error_chain(e),
                "holds": false,
            }),
        })
        .collect();
    let left_out: Vec<serde_json::Value> =
        NOT_MODELLED.iter().map(|(id, why)| serde_json::json!({ "id": id, "why": why })).collect();
    serde_json::json!({
        "races": races,
        "not_modelled": left_out,
        "elapsed_ms": c.elapsed.as_secs_f64() * 1e3,
        "holds": c.ok(),
    })
}
