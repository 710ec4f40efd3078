//! `sim-sled-agent`: the simulated sled agent as its own process, reporting to a
//! Nexus over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use sim_sled_agent::{RemovalOrdering, SimConfig, SimMode, SimSledAgent};
use sled_agent_api::{SledUuid, SystemClock};
use sledsim_http::NexusClient;
use slog::{o, Drain};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    /// Transitions finish only on POST /vmms/{id}/poke.
    Explicit,
    /// Transitions finish by themselves after --delay-ms.
    Auto,
}

#[derive(Debug, Parser)]
#[command(about = "sledsim's simulated sled agent, served over HTTP")]
struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Base URL of the Nexus to report VMM states to (http://host:port).
    #[arg(long, value_parser = sledsim_http::base_url)]
    nexus: String,
    #[arg(long, value_enum, default_value = "publish-then-remove")]
    ordering: RemovalOrdering,
    #[arg(long, value_enum, default_value = "explicit")]
    mode: Mode,
    /// Auto mode: how long after a state change the queue drains.
    #[arg(long, default_value_t = 1500)]
    delay_ms: u64,
    /// Auto mode: up to this much more, at random.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Auto mode: seed of the jitter.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "00000005-0000-0000-0000-000000000001")]
    sled_id: SledUuid,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let log = slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), o!());
    let config = SimConfig {
        ordering: args.ordering,
        mode: match args.mode {
            Mode::Explicit => SimMode::Explicit,
            Mode::Auto => SimMode::Auto {
                delay: Duration::from_millis(args.delay_ms),
                jitter: Duration::from_millis(args.jitter_ms),
                seed: args.seed,
                teardown: Duration::ZERO,
            },
        },
    };
    let nexus = NexusClient::new(&args.nexus);
    let sim = SimSledAgent::new(&log, args.sled_id, config, nexus, Arc::new(SystemClock))
        .context("building the sim")?;
    let server =
        sim_sled_agent::http::serve(sim, args.bind, &log).context("starting the server")?;
    println!("listening on http://{}", server.local_addr());
    tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
    server.close().await.map_err(anyhow::Error::msg)
}
