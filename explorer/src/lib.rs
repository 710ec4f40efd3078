//! sledsim's engine: wires the components behind gates, runs a scenario under a
//! chosen schedule, explores every interleaving within bounds and reports.

pub mod explore;
pub mod explore_report;
pub mod harness;
pub mod report;
