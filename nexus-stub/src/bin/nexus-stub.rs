//! `nexus-stub`: the Nexus stand-in as its own process, calling one sled agent over
//! HTTP, running update steps as tokio tasks, and the instance watcher and
//! reincarnation on periods.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    nexus_stub::cli::main(nexus_stub::cli::Args::parse())
}
