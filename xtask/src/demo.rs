//! `cargo xtask demo`: the sled agent and Nexus as processes of their own on
//! loopback, and this process as the user, running create/stop cycles through
//! Nexus's external API and counting the stops that end Failed.
//!
//! Each role runs the code of its binary (`sim_sled_agent::cli`,
//! `nexus_stub::cli`) in a child process of this same program (`cargo xtask
//! sim-sled-agent ...`), so the demo needs nothing built but itself. A role
//! holds a pipe from the demo on its stdin and exits when it closes, so the
//! roles end with the demo however it ends: returning, an error, Ctrl-C, a
//! SIGTERM, even a SIGKILL.
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
    /// Up to this much more, at random (seeded by `seed`).
    pub jitter: Duration,
    pub seed: u64,
    /// How long a destroyed VMM takes to tear down before it is reported.
    pub teardown: Duration,
    /// How long a cycle waits for one state before it gives up.
    pub wait_limit: Duration,
    /// Where the two processes' logs go.
    pub log_dir: PathBuf,
    /// Flags passed to both roles ahead of their command (`--log-level`, ...).
    pub role_flags: Vec<String>,
}

/// How one cycle's stop ended.
#[derive(Clone, Debug, Serialize)]
pub struct Cycle {
    pub name: String,
    /// The state the instance rested in, or was last seen in if a wait ran out.
    pub state: ExternalState,
    /// Whether the user's stop ended Failed: Failed was seen after it, or Nexus
    /// restarted the instance by itself (which only a Failed one is).
    pub failed: bool,
    /// Whether a wait (for Running, or for the stop to end) ran out first.
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

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot find this program to run the roles with")]
    Exe(#[source] std::io::Error),
    #[error("cannot create the log folder {path}")]
    LogDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free port on loopback")]
    Port(#[source] std::io::Error),
    #[error("cannot start the {role}")]
    Spawn {
        role: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {role} did not start within {secs} s, {attempts} attempt(s) (see {log})")]
    NotStarted { role: &'static str, secs: u64, attempts: usize, log: String },
    #[error("cannot start a runtime")]
    Runtime(#[source] std::io::Error),
    #[error("{request} failed")]
    Request {
        request: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{request} answered {status}: {body}")]
    Status { request: String, status: u16, body: String },
    /// Ctrl-C: what was done so far comes with it.
    #[error("{}", interrupted_line(report.cycles.len(), *asked))]
    Interrupted { asked: usize, report: Box<DemoReport> },
}

/// What an interrupted demo says: how far it got.
pub fn interrupted_line(done: usize, asked: usize) -> String {
    format!("interrupted after {done} of {asked} cycles; both processes stopped")
}

/// How long a role may take to say it is serving.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Tries at a free pair of ports: another process may take one between our
/// look and the role's bind.
const START_ATTEMPTS: usize = 3;
/// How long one request to Nexus may take (omicron's clients give 60 s).
const REQUEST_LIMIT: Duration = Duration::from_secs(60);
/// How often the user looks at an instance it waits for.
const POLL: Duration = Duration::from_millis(5);

/// A role's process. It holds the write end of its stdin pipe, so the role sees
/// EOF and exits if the demo dies; dropping it kills and reaps it at once.
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

/// Starts the two roles and runs the cycles. `progress` hears of each step as it
/// happens.
pub fn demo(cfg: &DemoConfig, progress: &mut dyn Write) -> Result<DemoReport, DemoError> {
    let exe = std::env::current_exe().map_err(DemoError::Exe)?;
    std::fs::create_dir_all(&cfg.log_dir)
        .map_err(|source| DemoError::LogDir { path: cfg.log_dir.display().to_string(), source })?;
    let (sled, nexus) = start_roles(cfg, &exe)?;
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
        .map_err(DemoError::Runtime)?;
    let user = User::new(&nexus.url)?;
    let interrupted = runtime.block_on(async {
        tokio::select! {
            r = run_cycles(cfg, &user, &mut report, progress) => r.map(|()| false),
            _ = tokio::signal::ctrl_c() => Ok(true),
        }
    })?;
    drop((sled, nexus));
    if interrupted {
        return Err(DemoError::Interrupted { asked: cfg.cycles, report: Box::new(report) });
    }
    Ok(report)
}

/// Both roles, on fresh ports, tried again if one fails to start.
fn start_roles(cfg: &DemoConfig, exe: &Path) -> Result<(Role, Role), DemoError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (sled_port, nexus_port) = (free_port()?, free_port()?);
        let sled_url = format!("http://127.0.0.1:{sled_port}");
        let nexus_url = format!("http://127.0.0.1:{nexus_port}");
        let started = spawn("sled agent", exe, &sim_args(cfg, sled_port, &nexus_url), cfg)
            .and_then(|sled| {
                let nexus = spawn("nexus", exe, &nexus_args(cfg, nexus_port, &sled_url), cfg)?;
                Ok((sled, nexus))
            });
        match started {
            Err(DemoError::NotStarted { .. }) if attempt < START_ATTEMPTS => continue,
            Err(DemoError::NotStarted { role, secs, log, .. }) => {
                return Err(DemoError::NotStarted { role, secs, attempts: attempt, log })
            }
            other => return other,
        }
    }
}

async fn run_cycles(
    cfg: &DemoConfig,
    user: &User,
    report: &mut DemoReport,
    progress: &mut dyn Write,
) -> Result<(), DemoError> {
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

/// Create (started), wait for Running, stop, wait for the stop to end: Stopped,
/// Failed, or restarted by Nexus (under the 2024 policy a Failed instance may
/// be started again before a poll sees it Failed).
async fn one_cycle(cfg: &DemoConfig, user: &User, n: usize) -> Result<Cycle, DemoError> {
    let name = format!("demo-{n}");
    let created = user.create(&name).await?;
    let running =
        user.wait(&created, cfg.wait_limit, |v| v.state == ExternalState::Running).await?;
    if running.state != ExternalState::Running {
        let v = running;
        return Ok(Cycle {
            name,
            failed: v.state == ExternalState::Failed,
            timed_out: true,
            state: v.state,
            auto_restarts: v.auto_restarts,
        });
    }
    // A stop that Nexus answers with an error still ends somewhere; what counts is
    // where the instance comes to rest.
    let _ = user.stop(&created).await;
    let mut saw_failed = false;
    let restarts = running.auto_restarts;
    let rest = user
        .wait(&created, cfg.wait_limit, |v| {
            saw_failed |= v.state == ExternalState::Failed;
            at_rest(v.state) || v.auto_restarts > restarts
        })
        .await?;
    Ok(Cycle {
        name,
        failed: saw_failed || rest.auto_restarts > restarts,
        timed_out: !at_rest(rest.state) && rest.auto_restarts == restarts,
        state: rest.state,
        auto_restarts: rest.auto_restarts,
    })
}

fn at_rest(s: ExternalState) -> bool {
    matches!(s, ExternalState::Stopped | ExternalState::Failed)
}

/// The user: Nexus's external API over HTTP.
struct User {
    http: reqwest::Client,
    base: String,
}

impl User {
    fn new(base: &str) -> Result<Self, DemoError> {
        let http = reqwest::Client::builder()
            .connect_timeout(REQUEST_LIMIT)
            .timeout(REQUEST_LIMIT)
            .build()
            .map_err(|source| DemoError::Request { request: "a client".into(), source })?;
        Ok(User { http, base: base.to_string() })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<InstanceView, DemoError> {
        let request = format!("{method} {path}");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("api-version", sledsim_http::NEXUS_INTERNAL_API_VERSION.to_string());
        if let Some(body) = body {
            req = req.json(&body);
        }
        let failed = |source| DemoError::Request { request: request.clone(), source };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(DemoError::Status { request, status: status.as_u16(), body });
        }
        resp.json().await.map_err(failed)
    }

    async fn create(&self, name: &str) -> Result<InstanceView, DemoError> {
        let body = serde_json::json!({ "name": name, "start": true });
        self.send(reqwest::Method::POST, "/instances", Some(body)).await
    }

    async fn stop(&self, i: &InstanceView) -> Result<InstanceView, DemoError> {
        self.send(reqwest::Method::POST, &format!("/instances/{}/stop", i.id), None).await
    }

    async fn view(&self, i: &InstanceView) -> Result<InstanceView, DemoError> {
        self.send(reqwest::Method::GET, &format!("/instances/{}", i.id), None).await
    }

    /// Polls until `done` says so or `limit` runs out; returns the last view.
    async fn wait(
        &self,
        i: &InstanceView,
        limit: Duration,
        mut done: impl FnMut(&InstanceView) -> bool,
    ) -> Result<InstanceView, DemoError> {
        let start = Instant::now();
        loop {
            let v = self.view(i).await?;
            if done(&v) || start.elapsed() >= limit {
                return Ok(v);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn sim_args(cfg: &DemoConfig, port: u16, nexus: &str) -> Vec<String> {
    let ms = |d: Duration| d.as_millis().to_string();
    let role = [
        "sim-sled-agent",
        "--exit-with-parent",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--nexus",
        nexus,
        "--mode",
        "auto",
        "--ordering",
        cfg.ordering.label(),
        "--delay-ms",
        &ms(cfg.delay),
        "--jitter-ms",
        &ms(cfg.jitter),
        "--seed",
        &cfg.seed.to_string(),
        "--teardown-ms",
        &ms(cfg.teardown),
    ];
    cfg.role_flags.iter().cloned().chain(role.map(String::from)).collect()
}

fn nexus_args(cfg: &DemoConfig, port: u16, sled: &str) -> Vec<String> {
    let ms = |d: Duration| d.as_millis().to_string();
    let role = [
        "nexus-stub",
        "--exit-with-parent",
        "--bind",
        &format!("127.0.0.1:{port}"),
        "--sled",
        sled,
        "--restart-policy",
        cfg.restart_policy.label(),
        "--watcher-period-ms",
        &ms(cfg.watcher_period),
        "--reincarnation-period-ms",
        &ms(cfg.reincarnation_period),
    ];
    cfg.role_flags.iter().cloned().chain(role.map(String::from)).collect()
}

/// A port free now; the role binds it a moment later (and is started again on
/// other ports if something took it between).
fn free_port() -> Result<u16, DemoError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(DemoError::Port)?;
    l.local_addr().map(|a| a.port()).map_err(DemoError::Port)
}

fn log_path(dir: &Path, role: &str) -> String {
    dir.join(format!("{}.log", role.replace(' ', "-"))).display().to_string()
}

/// Starts one role and waits (at most `START_LIMIT`) for its "listening on" line.
fn spawn(
    name: &'static str,
    bin: &Path,
    args: &[String],
    cfg: &DemoConfig,
) -> Result<Role, DemoError> {
    let log = log_path(&cfg.log_dir, name);
    let spawn_failed = |source| DemoError::Spawn { role: name, source };
    let stderr = std::fs::File::create(&log).map_err(spawn_failed)?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(spawn_failed)?;
    let mut role = Role { name, child, url: String::new() };
    let stdout =
        role.child.stdout.take().ok_or_else(|| {
            spawn_failed(std::io::Error::other("the role's stdout was not piped"))
        })?;
    // The line comes once the server is bound; a role that fails to start closes
    // its stdout instead, and says why in its log.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(START_LIMIT).unwrap_or_default();
    match line.trim().strip_prefix("listening on ") {
        Some(url) => {
            role.url = url.to_string();
            Ok(role)
        }
        None => {
            Err(DemoError::NotStarted { role: name, secs: START_LIMIT.as_secs(), attempts: 1, log })
        }
    }
}
