//! sledsim's `cargo xtask`: the command line over the engine (`sledsim-explorer`),
//! and the process concerns: benchmarks, the stress runs, the demo's processes,
//! the OpenAPI documents.

pub mod bench;
pub mod catalogue;
pub mod cli;
pub mod demo;
pub mod openapi;
pub mod stress;
