//! Nexus's process: its command line, background tasks and serving until
//! Ctrl-C, shared by the `nexus-stub` binary and `cargo xtask demo`'s Nexus role.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::background::{self, Periods};
use crate::{NexusConfig, NexusStub, RestartPolicy, TokioSpawner};
use anyhow::Context;
use sled_agent_api::{SledUuid, SystemClock};
use sledsim_http::SledAgentClient;
use slog::Logger;
use watcher::InstanceWatcher;

/// The flags of the binary (and of its role in `cargo xtask demo`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// Base URL of the sled agent instances are placed on (http://host:port).
    #[arg(long, value_parser = sledsim_http::base_url)]
    pub sled: String,
    /// The sled's id (must match the sled agent's).
    #[arg(long, default_value = "00000005-0000-0000-0000-000000000001")]
    pub sled_id: SledUuid,
    /// Which Failed instances auto-restart starts again.
    #[arg(long, value_enum, default_value = "current")]
    pub restart_policy: RestartPolicy,
    /// How often the instance watcher checks every VMM, in milliseconds
    /// (omicron: instance_watcher.period_secs = 30).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watcher_period_ms: u64,
    /// How often reincarnation restarts Failed instances, in milliseconds
    /// (omicron: instance_reincarnation.period_secs = 60).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reincarnation_period_ms: u64,
    /// How many VMMs the watcher checks at once (omicron: 16).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub watcher_concurrency: u64,
}

/// Serves until Ctrl-C, logging to `log`; prints `listening on URL` on stdout
/// once bound.
pub fn main(args: Args, log: &Logger) -> anyhow::Result<()> {
    sledsim_http::process::block_on(serve(args, log))
}

async fn serve(args: Args, log: &Logger) -> anyhow::Result<()> {
    let config = NexusConfig { restart_policy: args.restart_policy, ..NexusConfig::default() };
    let sled = SledAgentClient::new(&args.sled);
    let sleds = BTreeMap::from([(args.sled_id, sled.clone())]);
    let spawner = Arc::new(TokioSpawner::new(log).context("update steps need a runtime")?);
    let nexus = NexusStub::new(log, config, sleds, Arc::new(SystemClock), spawner);
    // The watcher reads Nexus's tables in process and asks the sled agent over
    // HTTP, as omicron's does.
    let watcher = InstanceWatcher::new(
        log,
        Arc::clone(&nexus),
        BTreeMap::from([(args.sled_id, sled)]),
        Arc::new(SystemClock),
    )
    .with_concurrency(usize::try_from(args.watcher_concurrency).unwrap_or(16));
    let periods = Periods {
        watcher: Duration::from_millis(args.watcher_period_ms),
        reincarnation: Duration::from_millis(args.reincarnation_period_ms),
    };
    let server =
        crate::http::serve(Arc::clone(&nexus), args.bind, log).context("starting the server")?;
    let tasks = background::start(log, nexus, watcher, periods);
    let served = sledsim_http::process::serve_until_ctrl_c(server).await;
    drop(tasks);
    served
}
