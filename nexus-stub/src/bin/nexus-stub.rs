//! `nexus-stub`: the Nexus stand-in as its own process, calling one sled agent over
//! HTTP, running update steps as tokio tasks, and the instance watcher and
//! reincarnation on periods.

fn main() -> anyhow::Result<()> {
    sledsim_http::process::main(
        "nexus-stub",
        "sledsim's Nexus stub, served over HTTP, with its background tasks",
        nexus_stub::cli::main,
    )
}
