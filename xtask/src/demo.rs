//! `cargo xtask demo`: the sled agent and Nexus as processes of their own on
//! loopback, and this process as the user, running create/stop cycles through
//! Nexus's external API and counting the stops that end Failed.
//!
//! Each role runs the code of its binary (`sim_sled_agent::cli`,
//! `nexus_stub::cli`) in a child process of this same program (`cargo xtask
//! sim-sled-agent ...`), so the demo needs nothing built but itself.
//!
//! Nothing here is gated or scheduled: the sim runs in Auto mode, Nexus runs its
//! watcher and reincarnation on periods, and whatever races happen, happen in
//! real time. Under remove-then-publish, a watcher pass that lands while a
//! stopped VMM tears down finds it gone and writes Failed: #7282.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nexus_stub::{ExternalState, InstanceView, RestartPolicy};
use serde::Serialize;
use sim_sled_agent::RemovalOrdering;

/// What the demo runs and how fast.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub ordering: RemovalOrdering,
    pub restart_policy: RestartPolicy,
    pub cycles: usize,
    pub watcher_period: Duration,
    pub reincarnation_period: Duration,
    /// The sim's delay before it carries out a requested transition.
    pub delay: Duration,
    /// How long a destroyed VMM takes to tear down before it is reported.
    pub teardown: Duration,
    /// How long a cycle waits for one state before it gives up.
    pub wait_limit: Duration,
    /// Where the two processes' logs go.
    pub log_dir: PathBuf,
}

/// How one cycle's stop ended.
#[derive(Clone, Debug, Serialize)]
pub struct Cycle {
    pub name: String,
    /// The state the instance rested in, or was last seen in if the wait ran out.
    pub state: ExternalState,
    /// Whether the user's stop ended Failed (seen Failed at any point after it).
    pub failed: bool,
    /// Whether a wait ran out before the instance came to rest.
    pub timed_out: bool,
    pub auto_restarts: u32,
}

/// What the demo saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoReport {
    pub stopped: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub cycles: Vec<Cycle>,
    /// The two processes' addresses, ids (both ended when the demo returns) and
    /// logs.
    pub sled_agent: String,
    pub nexus: String,
    pub pids: Vec<u32>,
    pub logs: Vec<String>,
}

/// A role's process: killed and reaped when dropped, so nothing outlives the demo
/// (an error, a panic, or Ctrl-C all drop it).
struct Role {
    name: &'static str,
    child: Child,
    url: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the two roles, and runs the cycles. `progress` hears of each step as
/// it happens.
pub fn demo(cfg: &DemoConfig, progress: &mut dyn Write) -> Result<DemoReport, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    std::fs::create_dir_all(&cfg.log_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.log_dir.display()))?;
    let (sled_port, nexus_port) = (free_port()?, free_port()?);
    let sled_url = format!("http://127.0.0.1:{sled_port}");
    let nexus_url = format!("http://127.0.0.1:{nexus_port}");
    let sim_args = sim_args(cfg, sled_port, &nexus_url);
    let sled = spawn("sled agent", &exe, &sim_args, &cfg.log_dir)?;
    let nexus_args = nexus_args(cfg, nexus_port, &sled_url);
    let nexus = spawn("nexus", &exe, &nexus_args, &cfg.log_dir)?;
    let mut report = DemoReport {
        sled_agent: sled.url.clone(),
        nexus: nexus.url.clone(),
        pids: vec![sled.child.id(), nexus.child.id()],
        logs: [&sled, &nexus].iter().map(|r| log_path(&cfg.log_dir, r.name)).collect(),
        ..DemoReport::default()
    };
    for role in [&sled, &nexus] {
        let pid = role.child.id();
        let _ = writeln!(progress, "{:<10} {}  pid {pid}", role.name, role.url);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let user = User::new(&nexus.url);
    runtime.block_on(async {
        tokio::select! {
            r = run_cycles(cfg, &user, &mut report, progress) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; stopped both processes".to_string()),
        }
    })?;
    drop((sled, nexus));
    Ok(report)
}

async fn run_cycles(
    cfg: &DemoConfig,
    user: &User,
    report: &mut DemoReport,
    progress: &mut dyn Write,
) -> Result<(), String> {
    for n in 1..=cfg.cycles {
        let cycle = one_cycle(cfg, user, n).await?;
        let how = if cycle.failed {
            "FAILED (the user's stop ended Failed)".to_string()
        } else if cycle.timed_out {
            format!("still {} after {} ms", cycle.state, cfg.wait_limit.as_millis())
        } else {
            cycle.state.to_string()
        };
        let _ = writeln!(progress, "cycle {n:>3}  {}  running -> stop -> {how}", cycle.name);
        if cycle.failed {
            report.failed += 1;
        } else if cycle.timed_out {
            report.timed_out += 1;
        } else {
            report.stopped += 1;
        }
        report.cycles.push(cycle);
    }
    Ok(())
}

/// Create (started), wait for Running, stop, wait for Stopped or Failed.
async fn one_cycle(cfg: &DemoConfig, user: &User, n: usize) -> Result<Cycle, String> {
    let name = format!("demo-{n}");
    let created = user.create(&name).await?;
    let running = user.wait(&created, cfg.wait_limit, |s| s == ExternalState::Running).await?;
    if running.state != ExternalState::Running {
        return Err(format!(
            "{name} did not reach Running within {} ms (it is {}): see the logs",
            cfg.wait_limit.as_millis(),
            running.state
        ));
    }
    // A stop that Nexus answers with an error still ends somewhere; what counts is
    // where the instance comes to rest.
    let _ = user.stop(&created).await;
    let mut saw_failed = false;
    let rest = user
        .wait(&created, cfg.wait_limit, |s| {
            saw_failed |= s == ExternalState::Failed;
            matches!(s, ExternalState::Stopped | ExternalState::Failed)
        })
        .await?;
    let at_rest = matches!(rest.state, ExternalState::Stopped | ExternalState::Failed);
    Ok(Cycle {
        name,
        state: rest.state,
        failed: saw_failed,
        timed_out: !at_rest,
        auto_restarts: rest.auto_restarts,
    })
}

/// The user: Nexus's external API over HTTP.
struct User {
    http: reqwest::Client,
    base: String,
}

impl User {
    fn new(base: &str) -> Self {
        User { http: reqwest::Client::new(), base: base.to_string() }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<InstanceView, String> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("api-version", sledsim_http::NEXUS_INTERNAL_API_VERSION.to_string());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let what = || format!("{method} {path}");
        let resp = req.send().await.map_err(|e| format!("{}: {}", what(), error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("{}: {status}: {text}", what()));
        }
        resp.json().await.map_err(|e| format!("{}: {}", what(), error_chain(&e)))
    }

    async fn create(&self, name: &str) -> Result<InstanceView, String> {
        let body = serde_json::json!({ "name": name, "start": true });
        self.send(reqwest::Method::POST, "/instances", Some(body)).await
    }

    async fn stop(&self, i: &InstanceView) -> Result<InstanceView, String> {
        self.send(reqwest::Method::POST, &format!("/instances/{}/stop", i.id), None).await
    }

    async fn view(&self, i: &InstanceView) -> Result<InstanceView, String> {
        self.send(reqwest::Method::GET, &format!("/instances/{}", i.id), None).await
    }

    /// Polls until `done` says so or `limit` runs out; returns the last view.
    async fn wait(
        &self,
        i: &InstanceView,
        limit: Duration,
        mut done: impl FnMut(ExternalState) -> bool,
    ) -> Result<InstanceView, String> {
        let start = Instant::now();
        loop {
            let v = self.view(i).await?;
            if done(v.state) || start.elapsed() >= limit {
                return Ok(v);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// How often the user looks at an instance it waits for.
const POLL: Duration = Duration::from_millis(5);

fn error_chain(e: &dyn std::error::Error) -> String {
    sledsim_http::error_chain(e)
}

fn sim_args(cfg: &DemoConfig, port: u16, nexus: &str) -> Vec<String> {
    [
        "sim-sled-agent",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--nexus",
        nexus,
        "--mode",
        "auto",
        "--ordering",
        cfg.ordering.label(),
        "--delay-ms",
        &cfg.delay.as_millis().to_string(),
        "--teardown-ms",
        &cfg.teardown.as_millis().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn nexus_args(cfg: &DemoConfig, port: u16, sled: &str) -> Vec<String> {
    [
        "nexus-stub",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--sled",
        sled,
        "--restart-policy",
        cfg.restart_policy.label(),
        "--watcher-period-ms",
        &cfg.watcher_period.as_millis().to_string(),
        "--reincarnation-period-ms",
        &cfg.reincarnation_period.as_millis().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A port free now; the role binds it a moment later (loopback, so nothing else
/// is likely to take it between).
fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("finding a free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

fn log_path(dir: &Path, role: &str) -> String {
    dir.join(format!("{}.log", role.replace(' ', "-"))).display().to_string()
}

/// Starts one role and waits for its "listening on" line.
fn spawn(name: &'static str, bin: &Path, args: &[String], logs: &Path) -> Result<Role, String> {
    let log = log_path(logs, name);
    let stderr = std::fs::File::create(&log).map_err(|e| format!("creating {log}: {e}"))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bin.display()))?;
    let mut role = Role { name, child, url: String::new() };
    let stdout = role.child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    // The line comes once the server is bound; a role that fails to start closes
    // its stdout instead, and says why in its log.
    let _ = BufReader::new(stdout).read_line(&mut line);
    match line.trim().strip_prefix("listening on ") {
        Some(url) => {
            role.url = url.to_string();
            Ok(role)
        }
        None => Err(format!("the {name} did not start (see {log})")),
    }
}
