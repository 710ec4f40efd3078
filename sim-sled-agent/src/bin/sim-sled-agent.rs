//! `sim-sled-agent`: the simulated sled agent as its own process, reporting to a
//! Nexus over HTTP.

use clap::error::ErrorKind;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "sledsim's simulated sled agent, served over HTTP")]
struct Cli {
    #[command(flatten)]
    args: sim_sled_agent::cli::Args,
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
    sim_sled_agent::cli::main(cli.args, &sledsim_http::stderr_logger(cli.log_level))
}
