//! sledsim's `cargo xtask`: the only crate that knows every concrete type. It wires
//! the components, runs the disk-move scenario under a chosen schedule, and reports.

pub mod bench;
pub mod cli;
pub mod explore;
pub mod explore_report;
pub mod harness;
pub mod openapi;
pub mod report;
pub mod stress;
