//! A server binary's process, the same for the sim and the Nexus stub: its
//! command line (its own flags and `--log-level`, bad ones refused in one line
//! with exit 2), a multi-thread runtime, and serving until Ctrl-C.

use std::future::Future;

use anyhow::Context;
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

/// A binary's flags: `A`, and the log level every server binary takes.
#[derive(Debug, clap::Parser)]
struct Process<A: clap::Args> {
    #[command(flatten)]
    args: A,
    /// Least severe log level written to stderr (critical, error, warning, info,
    /// debug, trace).
    #[arg(long, default_value = "info", value_parser = crate::log_level)]
    log_level: slog::Level,
}

/// Parses the process's command line as `name` described by `about`, and runs
/// `main` with its flags and a logger on stderr. Help and version exit 0; bad
/// flags print one line saying which and why and exit 2, as `cargo xtask` does.
pub fn main<A: clap::Args>(
    name: &'static str,
    about: &'static str,
    main: impl FnOnce(A, &slog::Logger) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let cmd = Process::<A>::command().name(name).bin_name(name).about(about);
    let parsed = cmd.try_get_matches().and_then(|mut m| Process::<A>::from_arg_matches_mut(&mut m));
    let p = parsed.unwrap_or_else(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        _ => {
            eprintln!("{}", e.to_string().lines().next().unwrap_or("error: bad flags"));
            std::process::exit(2)
        }
    });
    main(p.args, &crate::stderr_logger(p.log_level))
}

/// Runs a process's body on a multi-thread runtime.
pub fn block_on(body: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?
        .block_on(body)
}

/// Says where `server` listens (on stdout, the line a launcher waits for), then
/// serves until Ctrl-C and closes it.
pub async fn serve_until_ctrl_c<C: dropshot::ServerContext>(
    server: dropshot::HttpServer<C>,
) -> anyhow::Result<()> {
    println!("listening on http://{}", server.local_addr());
    tokio::signal::ctrl_c().await.context("waiting for ctrl-c")?;
    server.close().await.map_err(anyhow::Error::msg)
}
