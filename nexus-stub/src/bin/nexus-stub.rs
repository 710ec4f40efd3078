//! `nexus-stub`: the Nexus stand-in as its own process, calling one sled agent over
//! HTTP, running update steps as tokio tasks, and the instance watcher and
//! reincarnation on periods.

use clap::error::ErrorKind;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "sledsim's Nexus stub, served over HTTP, with its background tasks")]
struct Cli {
    #[command(flatten)]
    args: nexus_stub::cli::Args,
    /// Least severe log level written to stderr (critical, error, warning, info,
    /// debug, trace).
    #[arg(long, default_value = "info", value_parser = sledsim_http::log_level)]
    log_level: slog::Level,
}

fn main() -> anyhow::Result<()> {
    // Bad flags: one line saying which and why, exit 2, as `cargo xtask` does.
    let cli = Cli::try_parse().unwrap_or_else(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        _ => {
            eprintln!("{}", e.to_string().lines().next().unwrap_or("error: bad flags"));
            std::process::exit(2)
        }
    });
    nexus_stub::cli::main(cli.args, &sledsim_http::stderr_logger(cli.log_level))
}
