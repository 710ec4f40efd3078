//! The sim's process: its command line and serving until Ctrl-C, shared by the
//! `sim-sled-agent` binary and `cargo xtask demo`'s sled agent role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::{RemovalOrdering, SimConfig, SimMode, SimSledAgent};
use anyhow::Context;
use clap::ValueEnum;
use sled_agent_api::{SledUuid, SystemClock};
use sledsim_http::NexusClient;
use slog::Logger;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    /// Transitions finish only on POST /vmms/{id}/poke.
    Explicit,
    /// Transitions finish by themselves after --delay-ms.
    Auto,
}

/// The flags of the binary (and of its role in `cargo xtask demo`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// Base URL of the Nexus to report VMM states to (http://host:port).
    #[arg(long, value_parser = sledsim_http::base_url)]
    pub nexus: String,
    /// When a destroyed VMM leaves the table: after Nexus has its Destroyed (the
    /// fix), or before it is reported (the #7282 bug).
    #[arg(long, value_enum, default_value = "publish-then-remove")]
    pub ordering: RemovalOrdering,
    /// Whether transitions finish by themselves or only when poked.
    #[arg(long, value_enum, default_value = "explicit")]
    pub mode: Mode,
    /// Auto mode: how long after a state change the queue drains.
    #[arg(long, default_value_t = 1500)]
    pub delay_ms: u64,
    /// Auto mode: up to this much more, at random.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// Auto mode: seed of the jitter.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Auto mode: how long a destroyed VMM takes to tear down before its
    /// Destroyed is reported (under remove-then-publish, the #7282 window).
    #[arg(long, default_value_t = 0)]
    pub teardown_ms: u64,
    /// The sled's id (Nexus must be given the same).
    #[arg(long, default_value = "00000005-0000-0000-0000-000000000001")]
    pub sled_id: SledUuid,
}

/// Serves until Ctrl-C, logging to `log`; prints `listening on URL` on stdout
/// once bound.
pub fn main(args: Args, log: &Logger) -> anyhow::Result<()> {
    sledsim_http::process::block_on(serve(args, log))
}

async fn serve(args: Args, log: &Logger) -> anyhow::Result<()> {
    let config = SimConfig {
        ordering: args.ordering,
        mode: match args.mode {
            Mode::Explicit => SimMode::Explicit,
            Mode::Auto => SimMode::Auto {
                delay: Duration::from_millis(args.delay_ms),
                jitter: Duration::from_millis(args.jitter_ms),
                seed: args.seed,
                teardown: Duration::from_millis(args.teardown_ms),
            },
        },
    };
    let nexus = NexusClient::new(&args.nexus);
    let sim = SimSledAgent::new(log, args.sled_id, config, nexus, Arc::new(SystemClock))
        .context("building the sim")?;
    let server = crate::http::serve(sim, args.bind, log).context("starting the server")?;
    sledsim_http::process::serve_until_ctrl_c(server).await
}
