//! The command line: flags of the command contract, logging set-up, exit codes
//! (0 every invariant held, 1 a violation or failed scenario, 2 bad usage,
//! 3 inconclusive: a bound cut the search or the run short before a verdict).

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use nexus_stub::RestartPolicy;
use sim_sled_agent::RemovalOrdering;
use sledsim_http::error_chain;
use slog::{o, Drain, Logger};

use sledsim_explorer::explore::{
    ExploreConfig, Shard, ShardResult, Verdict, DEFAULT_MAX_SCHEDULES, MODEL_DIGEST,
};
use sledsim_explorer::harness::schedule::ScheduleSpec;
use sledsim_explorer::harness::{
    self, Inject, RunConfig, RunError, ScenarioKind, Transport, DEFAULT_MAX_STEPS,
    DEFAULT_WATCHER_CONCURRENCY, EXPLORE_FAULTS, EXPLORE_USER_OPS,
};
use sledsim_explorer::report;

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    version,
    about = "sledsim: the VMM lifecycle race of omicron#7282, run and checked"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Term)]
    log_format: LogFormat,
    /// Least severe log level shown [default: warn for stress, which runs the
    /// scenario hundreds of times; info otherwise].
    #[arg(long, global = true, value_enum)]
    log_level: Option<LogLevel>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the disk-move scenario (or the stop race) under one schedule and check
    /// every invariant.
    Scenario(ScenarioArgs),
    /// Explore every interleaving within bounds; print the shortest counterexample.
    Explore(ExploreArgs),
    /// Combine the JSON of `explore --shard K/N` for K = 1..N into one result.
    ExploreMerge(MergeArgs),
    /// Find each race of the catalogue before its fix and prove the fix; print
    /// the README's table.
    Catalogue(CatalogueArgs),
    /// Measure the performance targets (rebuilds and runs itself in release).
    Bench(BenchArgs),
    /// Regenerate the OpenAPI documents under openapi/ from the code.
    Openapi,
    /// Run the scenario many times under real timing; count failures per ordering.
    Stress(StressArgs),
    /// Start the sled agent and Nexus as processes on loopback and run
    /// create/stop cycles through Nexus's external API; count the stops that
    /// end Failed.
    Demo(DemoArgs),
    /// The simulated sled agent as a process of its own (the demo's sled agent
    /// role; the `sim-sled-agent` binary takes the same flags).
    #[command(hide = true)]
    SimSledAgent(RoleArgs<sim_sled_agent::cli::Args>),
    /// The Nexus stub as a process of its own (the demo's Nexus role; the
    /// `nexus-stub` binary takes the same flags).
    #[command(hide = true)]
    NexusStub(RoleArgs<nexus_stub::cli::Args>),
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
struct DemoArgs {
    /// When the sim removes a destroyed VMM: after Nexus has its Destroyed (the
    /// fix), or before reporting it (the #7282 bug).
    #[arg(long, value_enum, default_value_t)]
    ordering: RemovalOrdering,
    /// Create/stop cycles to run (1 to 1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    cycles: u64,
    /// Period of Nexus's instance watcher, in ms (omicron: 30000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    watcher_period_ms: u64,
    /// Period of Nexus's instance reincarnation, in ms (omicron: 60000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    reincarnation_period_ms: u64,
    /// The sim's delay before it carries out a requested transition, in ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    delay_ms: u64,
    /// Up to this much more before each transition, at random, in ms.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    jitter_ms: u64,
    /// Seed of the sim's random jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long a destroyed VMM takes to tear down before it is reported, in ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    teardown_ms: u64,
    /// How long a cycle waits for Running, and then for Stopped or Failed, in ms.
    #[arg(long, default_value_t = 10_000, value_parser = ms_up_to_10_min)]
    wait_ms: u64,
    /// Which Failed instances Nexus's auto-restart starts again.
    #[arg(long, value_enum, default_value_t)]
    restart_policy: RestartPolicy,
    /// Where the two processes write their logs [default: a folder under the
    /// system's temporary directory, removed after a clean run].
    #[arg(long, value_name = "DIR")]
    log_dir: Option<std::path::PathBuf>,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    json: bool,
}

/// A demo role: its binary's flags, and whether to exit when the demo does.
#[derive(Debug, Args)]
struct RoleArgs<A: clap::Args> {
    #[command(flatten)]
    args: A,
    /// Exit when stdin closes: the demo holds it open, so the role cannot
    /// outlive it, however it ends.
    #[arg(long)]
    exit_with_parent: bool,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
struct StressArgs {
    /// The scenario each run plays.
    #[arg(long, value_enum, default_value_t)]
    scenario: ScenarioKind,
    /// Runs per ordering.
    #[arg(long, default_value_t = 200, value_parser = at_least_one)]
    runs: usize,
    /// One ordering; both if left out.
    #[arg(long, value_enum)]
    ordering: Option<RemovalOrdering>,
    /// Which Failed instances auto-restart starts again.
    #[arg(long, value_enum, default_value_t)]
    restart_policy: RestartPolicy,
    /// How the components reach each other: in process, or over HTTP on loopback.
    #[arg(long, value_enum, default_value_t)]
    transport: Transport,
    /// Seed of the sim's random delays.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop starting runs after this many seconds per ordering.
    #[arg(long, default_value_t = 60, value_parser = at_least_one)]
    max_seconds: usize,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Term,
    Bunyan,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
struct ScenarioArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// `happy`, `seed-7282`, or a replay string printed by a run or by explore.
    #[arg(long, default_value = "seed-7282", value_parser = ScheduleSpec::parse)]
    schedule: ScheduleSpec,
    /// How the components reach each other: in process, or over HTTP on loopback
    /// (the same steps and JSON).
    #[arg(long, value_enum, default_value_t)]
    transport: Transport,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    json: bool,
}

/// What is run, and within which bounds: the same for `scenario` and `explore`,
/// so a command explore prints means the same to scenario.
#[derive(Debug, Args)]
struct ModelArgs {
    /// What the scenario actor does: the omicron test's disk-move, or one
    /// instance's stop raced by the watcher.
    #[arg(long, value_enum, default_value_t)]
    scenario: ScenarioKind,
    /// When the sim removes a destroyed VMM: after Nexus has its Destroyed (the
    /// fix), or before reporting it (the #7282 bug).
    #[arg(long, value_enum, default_value_t)]
    ordering: RemovalOrdering,
    /// Which Failed instances auto-restart starts again.
    #[arg(long, value_enum, default_value_t)]
    restart_policy: RestartPolicy,
    /// Watcher passes; each may start at any point [at most 64].
    #[arg(long, default_value_t = 2, value_parser = at_most(MAX_PASSES))]
    watcher_passes: usize,
    /// Checks one watcher pass runs at once, each its own actor (omicron runs up
    /// to 16) [at least 1; at most 16].
    #[arg(long, default_value_t = DEFAULT_WATCHER_CONCURRENCY, value_parser = concurrency)]
    watcher_concurrency: usize,
    /// Auto-restart passes; each may start at any point where it has an instance
    /// to restart, and a run may end with some unused [at most 64].
    #[arg(long, default_value_t = 1, value_parser = at_most(MAX_PASSES))]
    restart_passes: usize,
    /// Steps one run may take; a run that reaches it has its end unjudged
    /// (inconclusive, exit 3, unless something broke on the way).
    #[arg(long, default_value_t = DEFAULT_MAX_STEPS, value_parser = at_least_one)]
    max_steps: usize,
    /// Operations (stop, start, reboot of any instance the scenario created) a
    /// user may add to a run, each at any point and on any instance [default: 1
    /// for explore; for scenario, what a replay string shows, else 0; at most 4].
    #[arg(long, value_parser = at_most(MAX_ENV_CHOICES))]
    user_ops: Option<usize>,
    /// Faults a run may meet, each at any point: a report to Nexus refused (503)
    /// or its answer lost, a Nexus call to the sled agent refused or its answer
    /// lost, a VMM vanishing [default: 1 for explore; for scenario, what a replay
    /// string shows, else 0; at most 4].
    #[arg(long, value_parser = at_most(MAX_ENV_CHOICES))]
    faults: Option<usize>,
    /// Restarts of the sled agent a run may meet, each at any point where it
    /// holds a VMM and no report is under way (nor, unless the findings are
    /// explored, while auto-restart is starting one): its table is lost, and
    /// the VMs end with it (omicron's sled agent removes every Propolis zone
    /// before it serves again; `--inject restart-keeps-vms` keeps them
    /// running). A budget of its own, beside the faults [default: 0; for
    /// scenario, what a replay string shows; at least 1 with `--inject
    /// restart-keeps-vms`, whose bug needs one; at most 4].
    #[arg(long, value_parser = at_most(MAX_ENV_CHOICES))]
    sled_restarts: Option<usize>,
    /// Also explore the windows of the known findings (races omicron's design
    /// has too), which runs leave out by default: a stop or reboot may then
    /// land while the instance's VMM is recorded Destroyed or still Creating, a
    /// stop while auto-restart is about to start the instance, and a fault on
    /// auto-restart's start.
    #[arg(long)]
    findings: bool,
    /// Seed a known bug into the model (also to replay explore's counterexample).
    #[arg(long, value_enum)]
    inject: Option<Inject>,
}

/// The most user operations, faults or sled-agent restarts a run may be given:
/// each multiplies the space, and the sim's report retries (`REPORT_ATTEMPTS`)
/// must outlast the faults.
const MAX_ENV_CHOICES: usize = 4;

/// A count from 0 to `max`, for clap: said so when it is not.
fn at_most(max: usize) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s| match s.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(format!("must be at most {max}")),
        Err(e) => Err(format!("must be a whole number from 0 to {max} ({e})")),
    }
}

/// The most watcher or auto-restart passes a run may be given: each is an actor
/// that may start at any point, so the space grows fast; more would never end.
const MAX_PASSES: usize = 64;

/// The most checks a pass may run at once: omicron's `MAX_CONCURRENT_CHECKS` (16);
/// more would model no real watcher.
const MAX_WATCHER_CONCURRENCY: usize = 16;

fn concurrency(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_WATCHER_CONCURRENCY).contains(&n) => Ok(n),
        Ok(_) => Err(format!("must be from 1 to {MAX_WATCHER_CONCURRENCY}")),
        Err(e) => Err(format!("must be a whole number from 1 to {MAX_WATCHER_CONCURRENCY} ({e})")),
    }
}

impl ModelArgs {
    /// The run configuration; `env` is the command's default numbers of user
    /// operations, faults and sled-agent restarts.
    fn run_config(&self, log: Logger, env: (usize, usize, usize)) -> RunConfig {
        RunConfig {
            user_ops: self.user_ops.unwrap_or(env.0),
            faults: self.faults.unwrap_or(env.1),
            // A seeded bug in the restart needs a restart to show.
            sled_restarts: self.sled_restarts.unwrap_or(
                if self.inject == Some(Inject::RestartKeepsVms) { env.2.max(1) } else { env.2 },
            ),
            findings: self.findings,
            scenario: self.scenario,
            ordering: self.ordering,
            restart_policy: self.restart_policy,
            watcher_passes: self.watcher_passes,
            watcher_concurrency: self.watcher_concurrency,
            restart_passes: self.restart_passes,
            max_steps: self.max_steps,
            inject: self.inject,
            ..RunConfig::new(log)
        }
    }
}

#[derive(Debug, Args)]
#[command(allow_negative_numbers = true)]
struct ExploreArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Schedules to run at most; a search cut short is truncated (exit 3 unless
    /// something broke).
    #[arg(long, default_value_t = DEFAULT_MAX_SCHEDULES, value_parser = at_least_one)]
    max_schedules: usize,
    /// Seconds to search at most; a search cut short is truncated [default: no
    /// limit but --max-schedules].
    #[arg(long, value_parser = at_least_one)]
    max_seconds: Option<usize>,
    /// Threads that run schedules [default: every core]. The verdict and each
    /// counterexample are the same for every count.
    #[arg(long, value_parser = at_least_one)]
    threads: Option<usize>,
    /// Explore only part K of N of the schedule space (K from 1), for one machine
    /// of a CI matrix; `explore-merge` combines the N parts' JSON.
    #[arg(long, value_name = "K/N", value_parser = shard)]
    shard: Option<Shard>,
    /// Check the fingerprints: replay both sides of every merge and compare their
    /// futures, take each free step in both orders with the other choices, and
    /// check that no chooser changes the world (slow; a debugging aid).
    #[arg(long)]
    check_fingerprints: bool,
    /// Partial-order reduction: `partial-order` does not run again, in the
    /// other order, two independent steps already run in one, and runs a step
    /// nothing else can tell from its absence (a stale watcher write) before any
    /// other (the same violations and counterexamples, fewer schedules and
    /// situations; near the step bound it may prove clean what `none` leaves
    /// inconclusive); `none` runs every order.
    #[arg(long, value_enum, default_value_t = Reduction::PartialOrder)]
    reduction: Reduction,
    /// Write a self-contained HTML page: every counterexample played to the end
    /// of its run, the harm marked, what each component held after each step,
    /// and a sequence diagram.
    #[arg(long, value_name = "FILE.html")]
    report: Option<std::path::PathBuf>,
    /// Show invariant K's shortest counterexample (instead of the shortest of
    /// all) in the report, the HTML page and the Mermaid diagram.
    #[arg(long, value_name = "K", value_parser = invariant_number)]
    invariant: Option<u8>,
    /// Print the counterexample as a Mermaid sequence diagram.
    #[arg(long)]
    mermaid: bool,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CatalogueArgs {
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// The JSON each shard's `explore --shard K/N --json` printed, one file a shard.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<std::path::PathBuf>,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long)]
    json: bool,
}

/// An invariant's number, as the output numbers them.
fn invariant_number(s: &str) -> Result<u8, String> {
    use sledsim_explorer::harness::invariants::INVARIANTS;
    let known = INVARIANTS.len();
    match s.parse::<u8>() {
        Ok(k) if (1..=known).contains(&usize::from(k)) => Ok(k),
        _ => Err(format!("must be an invariant's number, 1 to {known}")),
    }
}

/// The most parts a search may be split into.
const MAX_SHARDS: usize = 1024;

fn shard(s: &str) -> Result<Shard, String> {
    let usage = || format!("must be K/N with 1 <= K <= N <= {MAX_SHARDS}, for example 2/3");
    let (k, n) = s.split_once('/').ok_or_else(usage)?;
    let (k, n) =
        (k.parse::<usize>().map_err(|_| usage())?, n.parse::<usize>().map_err(|_| usage())?);
    if k == 0 || k > n || n > MAX_SHARDS {
        return Err(usage());
    }
    Ok(Shard { index: k - 1, count: n })
}

/// `explore --reduction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Reduction {
    /// Sleep sets and free steps (`sleep-sets`, its name until free steps came,
    /// is still taken).
    #[value(alias = "sleep-sets")]
    PartialOrder,
    None,
}

impl ExploreArgs {
    fn config(&self) -> ExploreConfig {
        // Logging stays off the hot path: a run takes microseconds, a log line more.
        let log = Logger::root(slog::Discard, o!());
        // One user operation and one fault by default (scenario's default is none).
        let run = self.model.run_config(log, (EXPLORE_USER_OPS, EXPLORE_FAULTS, 0));
        ExploreConfig {
            max_schedules: self.max_schedules,
            max_time: self.max_seconds.map(|s| std::time::Duration::from_secs(s as u64)),
            check_fingerprints: self.check_fingerprints,
            threads: self.threads.unwrap_or_else(sledsim_explorer::explore::all_cores),
            shard: self.shard,
            reduce: self.reduction == Reduction::PartialOrder,
            ..ExploreConfig::new(run)
        }
    }
}

/// What fixes the search a shard belongs to, as `explore` arguments in one
/// spelling: shards merge only if theirs are equal. Threads, output and the
/// shard itself are left out; they change nothing a merge reads.
fn search_args(cfg: &ExploreConfig) -> Vec<String> {
    let mut v = Vec::new();
    for f in cfg.run.flags() {
        v.push(f.name.to_string());
        v.extend(f.value);
        // The search's caps follow the model's bounds (always listed).
        if f.name == "--faults" {
            v.extend(["--max-schedules".into(), cfg.max_schedules.to_string()]);
            if let Some(t) = cfg.max_time {
                v.extend(["--max-seconds".into(), t.as_secs().to_string()]);
            }
        }
    }
    v
}

fn logger(format: LogFormat, level: LogLevel) -> Logger {
    let level = match level {
        LogLevel::Off => return Logger::root(slog::Discard, o!()),
        LogLevel::Error => slog::Level::Error,
        LogLevel::Warn => slog::Level::Warning,
        LogLevel::Info => slog::Level::Info,
        LogLevel::Debug => slog::Level::Debug,
        LogLevel::Trace => slog::Level::Trace,
    };
    match format {
        LogFormat::Term => {
            let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!("name" => "sledsim"))
        }
        LogFormat::Bunyan => {
            let drain =
                Mutex::new(slog_bunyan::with_name("sledsim", std::io::stderr()).build()).fuse();
            Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!())
        }
    }
}

/// A count that must be at least 1: zero would search or run nothing and claim it.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("must be a whole number ({e})")),
    }
}

/// clap's errors span several lines; the contract wants one. A value that was
/// refused is shown with its line breaks escaped and cut to `SHOWN_CHARS`, so a
/// replay string of 100,000 characters or one with a newline reads on one line.
fn one_line(e: &clap::Error) -> String {
    let mut rendered = e.to_string();
    if let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue) {
        rendered = rendered.replacen(value.as_str(), &shown(value), 1);
    }
    if let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) {
        rendered = rendered.replacen(arg.as_str(), &shown(arg), 1);
    }
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand
    ) {
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_string())
            .collect();
        return format!("error: name a command: {} (see cargo xtask --help)", names.join(", "));
    }
    let mut first = rendered.lines().next().unwrap_or("error").trim().to_string();
    let strings = |kind| match e.get(kind) {
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::String(v)) => vec![v.clone()],
        _ => Vec::new(),
    };
    if e.kind() == ErrorKind::MissingRequiredArgument {
        first = format!(
            "{} {}",
            first.trim_end_matches(':'),
            strings(ContextKind::InvalidArg).join(", ")
        );
    }
    let suggested = strings(ContextKind::SuggestedArg);
    if !suggested.is_empty() {
        first = format!("{first} (did you mean {}?)", suggested.join(" or "));
    }
    let valid: Vec<String> = match e.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(v)) => v.clone(),
        Some(ContextValue::String(v)) => vec![v.clone()],
        _ => Vec::new(),
    };
    if valid.is_empty() {
        first
    } else {
        format!("{first} (expected one of: {})", valid.join(", "))
    }
}

/// How much of a refused value an error shows.
const SHOWN_CHARS: usize = 60;

/// `value` as an error shows it: control characters escaped, and at most
/// `SHOWN_CHARS` characters, with an ellipsis and the full length past that.
fn shown(value: &str) -> String {
    let escaped: String = value
        .chars()
        .flat_map(|c| match c {
            '\n' => "\\n".chars().collect::<Vec<_>>(),
            '\r' => "\\r".chars().collect(),
            '\t' => "\\t".chars().collect(),
            c if c.is_control() => c.escape_unicode().collect(),
            c => vec![c],
        })
        .collect();
    let n = value.chars().count();
    if escaped.chars().count() <= SHOWN_CHARS {
        escaped
    } else {
        let head: String = escaped.chars().take(SHOWN_CHARS).collect();
        format!("{head}\u{2026} ({n} characters)")
    }
}

/// Runs the command line; returns the exit code.
pub fn run(
    args: impl IntoIterator<Item = OsString>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = write!(out, "{e}");
            return 0;
        }
        Err(e) => {
            let _ = writeln!(err, "{}", one_line(&e));
            return 2;
        }
    };
    // Stress runs the scenario hundreds of times: at info its log is megabytes.
    let level = cli.log_level.unwrap_or(match cli.command {
        Command::Stress(_) => LogLevel::Warn,
        _ => LogLevel::Info,
    });
    let log = logger(cli.log_format, level);
    let result = match cli.command {
        Command::Scenario(a) => scenario(a, log, out),
        Command::Explore(a) => explore(a, out),
        Command::ExploreMerge(a) => explore_merge(&a, out),
        Command::Catalogue(a) => Ok(catalogue(&a, out)),
        Command::Bench(a) => bench(&a, out),
        Command::Stress(a) => stress(&a, log, out),
        // The demo's roles log as this process was asked to.
        Command::Demo(a) => {
            let role_flags =
                ["--log-level", &value_name(&level), "--log-format", &value_name(&cli.log_format)];
            demo(&a, role_flags.map(String::from).to_vec(), out, err)
        }
        Command::SimSledAgent(a) => {
            role(a.exit_with_parent, || sim_sled_agent::cli::main(a.args, &log))
        }
        Command::NexusStub(a) => role(a.exit_with_parent, || nexus_stub::cli::main(a.args, &log)),
        Command::Openapi => match crate::openapi::write() {
            Ok(changed) if changed.is_empty() => {
                let _ = writeln!(out, "openapi/ is up to date");
                Ok(0)
            }
            Ok(changed) => {
                let _ = writeln!(out, "wrote openapi/{}", changed.join(", openapi/"));
                Ok(0)
            }
            Err(e) => Err(Fail::Broken(e)),
        },
    };
    match result {
        Ok(code) => code,
        Err(Fail::Usage(msg)) => {
            let _ = writeln!(err, "error: {msg}");
            2
        }
        Err(Fail::Broken(msg)) => {
            let _ = writeln!(err, "error: {msg}");
            1
        }
    }
}

/// A wait in milliseconds, from 1 ms to 10 minutes.
fn ms_up_to_10_min(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=600_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number of milliseconds from 1 to 600000".into()),
    }
}

/// A value as its flag takes it.
fn value_name(v: &impl ValueEnum) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// Runs a demo role's process; with `exit_with_parent`, ends it when stdin
/// closes (the demo ended, however it did).
fn role(exit_with_parent: bool, serve: impl FnOnce() -> anyhow::Result<()>) -> Result<u8, Fail> {
    if exit_with_parent {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    serve().map(|()| 0).map_err(|e| Fail::Broken(format!("{e:#}")))
}

/// A bad-usage error: reported on one line, exit 2.
enum Fail {
    /// Bad usage: exit 2.
    Usage(String),
    /// The run itself could not be trusted (a harness fault): exit 1.
    Broken(String),
}

/// A run error: a schedule that does not fit is the user's; the rest are ours.
fn run_failure(e: RunError) -> Fail {
    match e {
        RunError::Schedule(e) => Fail::Usage(e.to_string()),
        e @ (RunError::Setup(_) | RunError::Harness(_) | RunError::Transport(_)) => {
            Fail::Broken(error_chain(&e))
        }
    }
}

fn scenario(a: ScenarioArgs, log: Logger, out: &mut dyn Write) -> Result<u8, Fail> {
    // A replay string given no environment flags runs with what it shows it was
    // given (a search's counterexample with a user operation replays as is).
    let env = a.schedule.environment();
    let config = RunConfig { transport: a.transport, ..a.model.run_config(log, env) };
    let mut chooser =
        a.schedule.chooser(config.max_steps).map_err(|e| Fail::Usage(e.to_string()))?;
    let result = harness::run(&config, &mut *chooser).map_err(run_failure)?;
    let verdict = result.verdict();
    if a.json {
        let json = report::scenario_json(&config, &a.schedule, &result);
        let _ = writeln!(out, "{json}");
    } else {
        let _ = write!(out, "{}", report::scenario_human(&config, &a.schedule, &result));
    }
    Ok(verdict.exit_code())
}

pub fn main() -> ExitCode {
    // Not locked for the whole run: over HTTP the servers log from other threads,
    // and a held stderr lock would stop them at their first line.
    let code = run(std::env::args_os(), &mut std::io::stdout(), &mut std::io::stderr());
    ExitCode::from(code)
}

fn explore(a: ExploreArgs, out: &mut dyn Write) -> Result<u8, Fail> {
    use std::io::IsTerminal;
    let cfg = a.config();
    // A progress line on stderr when it is a terminal, from the first second on;
    // stdout (and --json) stays as it is.
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        bar
    });
    let report = |bar: &indicatif::ProgressBar, p: sledsim_explorer::explore::Progress| {
        if p.elapsed.as_secs_f64() < 1.0 {
            return;
        }
        bar.set_message(format!(
            "{} schedules ({:.0}/s), {} distinct situations, depth {}, {} violating",
            p.runs,
            p.runs as f64 / p.elapsed.as_secs_f64(),
            p.situations,
            p.depth,
            p.violating_runs
        ));
        bar.tick();
    };
    // With no bar to feed, nothing waits for progress: the calling thread
    // searches too (`explore`).
    let result = match &bar {
        Some(bar) => {
            let r = sledsim_explorer::explore::explore_with_progress(&cfg, &mut |p| report(bar, p));
            bar.finish_and_clear();
            r
        }
        None => sledsim_explorer::explore::explore(&cfg),
    };
    let result = result.map_err(run_failure)?;
    let view = sledsim_explorer::explore_report::View::new(&cfg, &result).only(a.invariant);
    if let Some(path) = &a.report {
        std::fs::write(path, view.html())
            .map_err(|e| Fail::Usage(format!("cannot write {}: {e}", path.display())))?;
    }
    if a.json {
        let mut json = view.json();
        if let Some(s) = cfg.shard {
            json["shard"] = serde_json::json!({
                "index": s.index + 1,
                "count": s.count,
                "args": search_args(&cfg),
                "model": MODEL_DIGEST,
            });
        }
        let _ = writeln!(out, "{json}");
    } else if a.mermaid {
        let _ = write!(out, "{}", view.mermaid());
    } else {
        let _ = write!(out, "{}", view.human());
    }
    Ok(result.verdict().exit_code())
}

fn explore_merge(a: &MergeArgs, out: &mut dyn Write) -> Result<u8, Fail> {
    let mut search: Option<(Vec<String>, ExploreArgs)> = None;
    let mut shards = Vec::new();
    for path in &a.files {
        let (args, shard) = read_shard(path)?;
        match &search {
            None => search = Some((args.clone(), parse_search_args(path, &args)?)),
            Some((first, _)) if *first != args => {
                return Err(Fail::Usage(format!(
                    "{} is a shard of another search ({}), not of {}",
                    path.display(),
                    args.join(" "),
                    first.join(" ")
                )))
            }
            Some(_) => {}
        }
        shards.push(shard);
    }
    let Some((_, args)) = search else { return Err(Fail::Usage("no shard given".into())) };
    let cfg = ExploreConfig { shard: None, ..args.config() };
    let result = sledsim_explorer::explore::merge(&cfg, &shards).map_err(|e| match e {
        sledsim_explorer::explore::MergeError::Run(e) => run_failure(e),
        e => Fail::Usage(e.to_string()),
    })?;
    let view = sledsim_explorer::explore_report::View::new(&cfg, &result);
    if a.json {
        let _ = writeln!(out, "{}", view.json());
    } else {
        let _ = write!(out, "{}", view.human());
    }
    Ok(result.verdict().exit_code())
}

/// One shard's JSON: the search it belongs to (its arguments) and what it found.
fn read_shard(path: &std::path::Path) -> Result<(Vec<String>, ShardResult), Fail> {
    let bad = |why: &str| Fail::Usage(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read it ({e})")))?;
    // What a shard's job leaves when its explore failed before its JSON (a
    // harness fault exits 1 like a violation, with nothing on stdout).
    if text.trim().is_empty() {
        return Err(bad("empty: its explore wrote no result (see that job's stderr)"));
    }
    let j: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| bad("not the JSON of explore --shard"))?;
    let not_shard = || bad("not the JSON of explore --shard K/N --json");
    let s = j.get("shard").filter(|s| s.is_object()).ok_or_else(not_shard)?;
    let num = |v: &serde_json::Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
    let (index, count) =
        (num(&s["index"]).ok_or_else(not_shard)?, num(&s["count"]).ok_or_else(not_shard)?);
    if index == 0 || index > count {
        return Err(not_shard());
    }
    match s["model"].as_str() {
        Some(MODEL_DIGEST) => {}
        Some(other) => {
            return Err(bad(&format!(
                "written by another model (digest {other}; this build's is {MODEL_DIGEST}): \
                 explore every shard and merge them with one build"
            )))
        }
        None => return Err(not_shard()),
    }
    let args: Vec<String> = s["args"]
        .as_array()
        .ok_or_else(not_shard)?
        .iter()
        .map(|a| a.as_str().map(String::from).ok_or_else(not_shard))
        .collect::<Result<_, _>>()?;
    let mut counterexamples = Vec::new();
    for c in j["counterexamples"].as_array().ok_or_else(not_shard)? {
        let invariant = c["invariant"].as_u64().and_then(|k| u8::try_from(k).ok());
        let choices: Option<Vec<u32>> = c["choices"].as_array().and_then(|a| {
            a.iter().map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok())).collect()
        });
        match (invariant, choices) {
            (Some(k), Some(p)) => counterexamples.push((k, p)),
            _ => return Err(not_shard()),
        }
    }
    let shard = ShardResult {
        shard: Shard { index: index - 1, count },
        runs: num(&j["runs"]).ok_or_else(not_shard)?,
        situations: num(&j["situations"]).ok_or_else(not_shard)?,
        violating_runs: num(&j["violating_runs"]).ok_or_else(not_shard)?,
        exhaustive: j["exhaustive"].as_bool().ok_or_else(not_shard)?,
        counterexamples,
        elapsed: std::time::Duration::from_secs_f64(
            j["elapsed_ms"]
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(not_shard)?
                / 1e3,
        ),
    };
    Ok((args, shard))
}

/// A shard's search arguments, parsed as `explore` parses them.
fn parse_search_args(path: &std::path::Path, args: &[String]) -> Result<ExploreArgs, Fail> {
    let argv = ["cargo xtask", "explore"].into_iter().map(String::from).chain(args.iter().cloned());
    match Cli::try_parse_from(argv) {
        Ok(Cli { command: Command::Explore(a), .. }) => Ok(a),
        _ => Err(Fail::Usage(format!("{}: its search arguments do not parse", path.display()))),
    }
}

/// Exit 0 if every race holds, 1 if one does not.
fn catalogue(a: &CatalogueArgs, out: &mut dyn Write) -> u8 {
    let checked = crate::catalogue::check_all();
    if a.json {
        let _ = writeln!(out, "{}", crate::catalogue::json(&checked));
    } else {
        crate::catalogue::human(&checked, out);
    }
    u8::from(!checked.ok())
}

fn bench(a: &BenchArgs, out: &mut dyn Write) -> Result<u8, Fail> {
    // Figures from a debug build would mislead: re-run this command in release.
    if cfg!(debug_assertions) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["run", "--quiet", "--release", "--package", "xtask", "--", "bench"]);
        if a.json {
            cmd.arg("--json");
        }
        let output = cmd
            .output()
            .map_err(|e| Fail::Broken(format!("cannot start the release build: {e}")))?;
        let _ = out.write_all(&output.stdout);
        let _ = std::io::stderr().write_all(&output.stderr);
        return match output.status.code() {
            Some(code) => Ok(u8::try_from(code).unwrap_or(1)),
            None => Err(Fail::Broken("the release bench was killed".into())),
        };
    }
    let b = crate::bench::measure().map_err(|e| match e {
        crate::bench::BenchError::Run(e) => run_failure(e),
        e => Fail::Broken(error_chain(&e)),
    })?;
    if a.json {
        let json = serde_json::to_string(&b).map_err(|e| Fail::Broken(e.to_string()))?;
        let _ = writeln!(out, "{json}");
    } else {
        let _ = write!(out, "{}", crate::bench::human(&b));
    }
    Ok(if b.targets.all_met() { 0 } else { 1 })
}

fn stress(a: &StressArgs, log: Logger, out: &mut dyn Write) -> Result<u8, Fail> {
    let orderings = match a.ordering {
        Some(o) => vec![o],
        None => vec![RemovalOrdering::PublishThenRemove, RemovalOrdering::RemoveThenPublish],
    };
    let transport = a.transport;
    let cfg = crate::stress::StressConfig {
        scenario: a.scenario,
        orderings,
        restart_policy: a.restart_policy,
        transport,
        runs: a.runs,
        seed: a.seed,
        max_time: std::time::Duration::from_secs(a.max_seconds as u64),
        run_limit: crate::stress::RUN_LIMIT,
        log,
    };
    let reports = crate::stress::stress(&cfg).map_err(Fail::Broken)?;
    // Runs left unmade (the time ran out) make the rest a sample, not a verdict.
    let verdict = if reports.iter().any(|r| r.failed > 0) {
        Verdict::Violated
    } else if reports.iter().any(|r| r.inconclusive > 0 || r.skipped > 0) {
        Verdict::Inconclusive
    } else {
        Verdict::Clean
    };
    if a.json {
        let json = serde_json::json!({
            "scenario": cfg.scenario.label(),
            "transport": transport.label(),
            "restart_policy": cfg.restart_policy.label(),
            "seed": cfg.seed,
            "runs_asked": cfg.runs,
            "passed": verdict != Verdict::Violated,
            "verdict": verdict.word(),
            "orderings": reports,
        });
        let _ = writeln!(out, "{json}");
    } else {
        let _ = writeln!(
            out,
            "stress {} | transport {} | restart policy {} | {} runs per ordering | seed {}",
            cfg.scenario.label(),
            transport.label(),
            cfg.restart_policy.label(),
            cfg.runs,
            cfg.seed
        );
        for r in &reports {
            let by: Vec<String> = r.invariants.iter().map(|(k, n)| format!("{k}: {n}")).collect();
            let _ = writeln!(
                out,
                "  {:<20} {:>5}/{} runs failed{}  {:.0} runs/s{}{}",
                r.ordering,
                r.failed,
                r.runs,
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" (invariant {})", by.join(", "))
                },
                r.runs_per_s,
                if r.inconclusive > 0 {
                    format!(", {} inconclusive (the time limit cut them short)", r.inconclusive)
                } else {
                    String::new()
                },
                if r.skipped > 0 {
                    format!(", {} not run (time limit)", r.skipped)
                } else {
                    String::new()
                }
            );
            for e in &r.examples {
                let _ = writeln!(out, "      {e}");
            }
        }
    }
    Ok(verdict.exit_code())
}

fn demo(
    a: &DemoArgs,
    role_flags: Vec<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<u8, Fail> {
    use crate::demo::DemoError;
    use std::time::Duration;
    let ms = Duration::from_millis;
    let default_dir = std::env::temp_dir().join(format!("sledsim-demo-{}", std::process::id()));
    let cfg = crate::demo::DemoConfig {
        ordering: a.ordering,
        restart_policy: a.restart_policy,
        cycles: usize::try_from(a.cycles).unwrap_or(usize::MAX),
        watcher_period: ms(a.watcher_period_ms),
        reincarnation_period: ms(a.reincarnation_period_ms),
        delay: ms(a.delay_ms),
        jitter: ms(a.jitter_ms),
        seed: a.seed,
        teardown: ms(a.teardown_ms),
        wait_limit: ms(a.wait_ms),
        log_dir: a.log_dir.clone().unwrap_or_else(|| default_dir.clone()),
        role_flags,
    };
    // The human report goes out as it happens; with --json, progress goes to
    // stderr and stdout holds only the object.
    let progress: &mut dyn Write = if a.json { &mut *err } else { &mut *out };
    if !a.json {
        let _ = writeln!(progress, "{}", demo_heading(a, &cfg));
    }
    // Interrupted, the demo still reports the cycles it ran.
    let (report, interrupted) = match crate::demo::demo(&cfg, progress) {
        Ok(report) => (report, None),
        Err(DemoError::Interrupted { report, asked }) => {
            let line = crate::demo::interrupted_line(report.cycles.len(), asked);
            (*report, Some(line))
        }
        Err(e) => return Err(Fail::Broken(error_chain(&e))),
    };
    let verdict = if report.failed > 0 {
        Verdict::Violated
    } else if report.timed_out > 0 || interrupted.is_some() {
        Verdict::Inconclusive
    } else {
        Verdict::Clean
    };
    demo_report(a, &cfg, &report, verdict, out);
    if let Some(line) = interrupted {
        let _ = writeln!(err, "error: {line}");
        return Ok(130);
    }
    // The logs matter when something went wrong; a clean run's go, unless the
    // folder was asked for.
    if verdict == Verdict::Clean && a.log_dir.is_none() {
        let _ = std::fs::remove_dir_all(&default_dir);
    }
    Ok(verdict.exit_code())
}

fn demo_heading(a: &DemoArgs, cfg: &crate::demo::DemoConfig) -> String {
    format!(
        "demo | ordering {} | {} cycles | watcher every {} ms | reincarnation every {} ms | \
         sim delay {} ms (+ up to {} ms), teardown {} ms | restart policy {}",
        cfg.ordering.label(),
        cfg.cycles,
        a.watcher_period_ms,
        a.reincarnation_period_ms,
        a.delay_ms,
        a.jitter_ms,
        a.teardown_ms,
        cfg.restart_policy.label()
    )
}

fn demo_report(
    a: &DemoArgs,
    cfg: &crate::demo::DemoConfig,
    report: &crate::demo::DemoReport,
    verdict: Verdict,
    out: &mut dyn Write,
) {
    if a.json {
        let json = serde_json::json!({
            "ordering": cfg.ordering.label(),
            "restart_policy": cfg.restart_policy.label(),
            "cycles_asked": cfg.cycles,
            "periods_ms": {
                "watcher": a.watcher_period_ms,
                "reincarnation": a.reincarnation_period_ms,
            },
            "sim_ms": {
                "delay": a.delay_ms, "jitter": a.jitter_ms, "teardown": a.teardown_ms,
            },
            "seed": a.seed,
            "passed": verdict != Verdict::Violated,
            "verdict": verdict.word(),
            "report": report,
        });
        let _ = writeln!(out, "{json}");
        return;
    }
    let still = if report.timed_out > 0 {
        format!(", {} still moving when the wait ran out", report.timed_out)
    } else {
        String::new()
    };
    let logs = if verdict == Verdict::Clean && a.log_dir.is_none() {
        String::new()
    } else {
        format!("  (logs: {})", report.logs.join(", "))
    };
    let _ = writeln!(
        out,
        "{} stops: {} Stopped, {} ended Failed{still}{logs}",
        report.cycles.len(),
        report.stopped,
        report.failed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The long flags a user can give `cmd` (help, version and hidden ones aside).
    fn flags(cmd: &clap::Command) -> BTreeSet<String> {
        cmd.get_arguments()
            .filter(|a| !a.is_hide_set() && !a.is_global_set())
            .filter_map(|a| a.get_long())
            .filter(|l| !["help", "version"].contains(l))
            .map(|l| format!("--{l}"))
            .collect()
    }

    /// The README's synopsis of `name`: its first `cargo xtask NAME [...]` line and
    /// the lines that continue it, up to the end of its code block, its closing
    /// backtick, or the next command's synopsis.
    fn synopsis(readme: &str, name: &str) -> Option<String> {
        let head = format!("cargo xtask {name} ");
        let mut lines = readme.lines();
        let first = lines.find(|l| {
            let l = l.trim_start_matches('`');
            l.starts_with(&head) && l.contains('[')
        })?;
        let inline = first.starts_with('`');
        let mut text = first.trim_start_matches('`').to_string();
        if inline && text.contains('`') {
            return Some(text);
        }
        for l in lines {
            let t = l.trim();
            if (!inline && (t.starts_with("```") || t.starts_with("cargo xtask "))) || t.is_empty()
            {
                break;
            }
            text.push(' ');
            text.push_str(t);
            if inline && t.contains('`') {
                break;
            }
        }
        Some(text)
    }

    /// Each race's command in the catalogue (and the README) is one explore
    /// takes, and it explores the race's pre-fix model.
    #[test]
    fn the_catalogues_commands_parse_to_their_races() {
        for race in sledsim_explorer::catalogue::RACES {
            let command = race.command();
            let words = command.split_whitespace().skip(1);
            let cli = Cli::try_parse_from(words).unwrap_or_else(|e| panic!("{command}: {e}"));
            let Command::Explore(a) = cli.command else { panic!("{command}: not explore") };
            assert_eq!(a.config().run.flags(), race.pre_fix().flags(), "{command}");
        }
    }

    /// Every flag of every command says what it is for.
    #[test]
    fn every_flag_has_help() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for cmd in cli.get_subcommands().chain([&cli]) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.get_help().is_none() && !["help", "version"].contains(&id) {
                    missing.push(format!("{} {id}", cmd.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    /// The README's synopsis of each command names exactly the flags its --help
    /// lists, so the user's copy of the contract cannot drift from the code.
    #[test]
    fn readme_synopses_match_the_commands() {
        let readme = include_str!("../../README.md");
        let cli = Cli::command();
        let global: BTreeSet<String> =
            cli.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
        let mut checked = Vec::new();
        for cmd in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
            let want = flags(cmd);
            if want.is_empty() {
                continue;
            }
            let name = cmd.get_name();
            let text = synopsis(readme, name)
                .unwrap_or_else(|| panic!("README has no synopsis of `cargo xtask {name}`"));
            // The global flags (--log-format, --log-level) may be shown or not.
            let found: BTreeSet<String> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .filter(|w| !global.contains(*w))
                .map(str::to_string)
                .collect();
            assert_eq!(found, want, "README's synopsis of {name}: {text}");
            checked.push(name.to_string());
        }
        let all = ["scenario", "explore", "explore-merge", "catalogue", "bench", "stress", "demo"];
        assert_eq!(checked, all.map(String::from), "commands whose synopsis was compared");
    }

    #[test]
    fn a_refused_value_is_shown_on_one_line_and_cut() {
        assert_eq!(shown("a\nb\tc"), "a\\nb\\tc");
        let long = "x".repeat(100);
        assert_eq!(shown(&long), format!("{}\u{2026} (100 characters)", "x".repeat(SHOWN_CHARS)));
        assert_eq!(shown(&"x".repeat(SHOWN_CHARS)), "x".repeat(SHOWN_CHARS));
    }
}
