//! `cargo xtask demo`: real processes on loopback, real timing. The legacy
//! ordering shows #7282 and the fix shows none; the processes it started are gone
//! when it ends, Ctrl-C included.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Short periods and a teardown several watcher periods long: under the legacy
/// ordering a watcher pass lands in nearly every teardown.
const FAST: [&str; 8] =
    ["--watcher-period-ms", "5", "--delay-ms", "10", "--teardown-ms", "60", "--wait-ms", "20000"];

fn xtask_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs the demo with `--json`; returns its exit code and report. A demo that
/// does not end within two minutes fails the test rather than hanging it.
fn demo(args: &[&str]) -> (i32, serde_json::Value) {
    let child = xtask_bin()
        .args(["demo", "--json", "--cycles", "3"])
        .args(FAST)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    let out = within(child, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exited"), json)
}

/// The child's output once it exits; killed, and the test failed, past `limit`.
fn within(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("waits").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("ends")
}

/// Whether every one of `pids` is gone within ten seconds.
fn all_gone(pids: &[u64]) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if pids.iter().all(|&p| gone(p)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The process is gone (ended and reaped).
fn gone(pid: u64) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn check_roles_gone(report: &serde_json::Value) {
    let pids = report["pids"].as_array().expect("pids");
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(gone(pid.as_u64().expect("a pid")), "pid {pid} still there");
    }
}

#[test]
fn legacy_ordering_fails_stops_in_real_time_and_the_fix_fails_none() {
    let (code, j) = demo(&["--ordering", "remove-then-publish"]);
    let r = &j["report"];
    assert_eq!(code, 1, "{j}");
    assert_eq!(j["verdict"], "violated");
    assert!(r["failed"].as_u64().expect("count") >= 1, "{j}");
    check_roles_gone(r);

    let (code, j) = demo(&[]);
    let r = &j["report"];
    assert_eq!((code, r["stopped"].as_u64(), r["failed"].as_u64()), (0, Some(3), Some(0)), "{j}");
    assert!(r["cycles"].as_array().expect("cycles").iter().all(|c| c["state"] == "stopped"));
    check_roles_gone(r);
}

/// The roles end with the demo however it ends. Ctrl-C (SIGINT to the demo
/// alone, so the roles do not hear it themselves) ends it with exit 130, the
/// cycles so far reported, and both roles killed; a SIGTERM or a SIGKILL, which
/// the demo cannot act on, closes the roles' stdin, and they exit by themselves.
#[test]
fn the_roles_end_with_the_demo_however_it_ends() {
    for signal in ["-INT", "-TERM", "-KILL"] {
        let mut child = xtask_bin()
            .args(["demo", "--cycles", "1000"])
            .args(FAST)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let mut pids = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        for line in lines.by_ref() {
            let line = line.expect("a line");
            if let Some(pid) = line.split("pid ").nth(1) {
                pids.push(pid.trim().parse::<u64>().expect("a pid"));
            }
            if line.starts_with("cycle") {
                break;
            }
        }
        assert_eq!(pids.len(), 2, "both roles printed their pid");
        let kill = Command::new("kill").args([signal, &child.id().to_string()]).status();
        assert!(kill.expect("kill runs").success());
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let out = within(child, Duration::from_secs(60));
        if signal == "-INT" {
            assert_eq!(out.status.code(), Some(130));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("interrupted after"), "{err}");
            assert!(rest.iter().any(|l| l.contains(" stops: ")), "the cycles so far: {rest:?}");
        }
        assert!(all_gone(&pids), "{signal}: roles {pids:?} outlived the demo");
    }
}

/// The roles take their binaries' flags: bad ones are usage errors, and so are
/// the demo's own out of range.
#[test]
fn bad_flags_of_the_demo_and_its_roles_exit_2() {
    for args in [
        &["sim-sled-agent", "--nexus", "not-a-url"][..],
        &["nexus-stub", "--sled", "http://"],
        &["nexus-stub", "--sled", "http://127.0.0.1:1", "--reincarnation-period-ms", "0"],
        &["demo", "--cycles", "0"],
        &["demo", "--cycles", "1001"],
        &["demo", "--watcher-period-ms", "0"],
        &["demo", "--ordering", "sideways"],
        &["demo", "--teardown-ms", "-1"],
    ] {
        crate::check_usage_error(args);
    }
}
