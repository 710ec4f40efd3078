//! `sim-sled-agent`: the simulated sled agent as its own process, reporting to a
//! Nexus over HTTP.

fn main() -> anyhow::Result<()> {
    sledsim_http::process::main(
        "sim-sled-agent",
        "sledsim's simulated sled agent, served over HTTP",
        sim_sled_agent::cli::main,
    )
}
