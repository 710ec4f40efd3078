//! `sim-sled-agent`: the simulated sled agent as its own process, reporting to a
//! Nexus over HTTP.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    sim_sled_agent::cli::main(sim_sled_agent::cli::Args::parse())
}
