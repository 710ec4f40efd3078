//! `nexus-stub`: the Nexus stand-in as its own process, calling one sled agent over
//! HTTP and running update steps as tokio tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use nexus_stub::{NexusConfig, NexusStub, RestartPolicy, TokioSpawner};
use sled_agent_api::{SledUuid, SystemClock};
use sledsim_http::SledAgentClient;
use slog::{o, Drain};

#[derive(Debug, Parser)]
#[command(about = "sledsim's Nexus stub, served over HTTP")]
struct Args {
    /// Address to serve on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Base URL of the sled agent instances are placed on (http://host:port).
    #[arg(long, value_parser = sledsim_http::base_url)]
    sled: String,
    /// The sled's id (must match the sled agent's).
    #[arg(long, default_value = "00000005-0000-0000-0000-000000000001")]
    sled_id: SledUuid,
    #[arg(long, value_enum, default_value = "current")]
    restart_policy: RestartPolicy,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let log = slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), o!());
    let config = NexusConfig { restart_policy: args.restart_policy, ..NexusConfig::default() };
    let sleds = BTreeMap::from([(args.sled_id, SledAgentClient::new(&args.sled))]);
    let spawner = Arc::new(TokioSpawner::new(&log).context("update steps need a runtime")?);
    let nexus = NexusStub::new(&log, config, sleds, Arc::new(SystemClock), spawner);
    let server = nexus_stub::http::serve(nexus, args.bind, &log).context("starting the server")?;
    println!("listening on http://{}", server.local_addr());
    tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
    server.close().await.map_err(anyhow::Error::msg)
}
