//! `cargo xtask demo`: real processes on loopback, real timing. The legacy
//! ordering shows #7282 and the fix shows none; the processes it started are gone
//! when it ends, Ctrl-C included.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Short periods and a teardown several watcher periods long: under the legacy
/// ordering a watcher pass lands in nearly every teardown.
const FAST: [&str; 8] =
    ["--watcher-period-ms", "5", "--delay-ms", "10", "--teardown-ms", "60", "--wait-ms", "20000"];

fn xtask_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs the demo with `--json`; returns its exit code and report.
fn demo(args: &[&str]) -> (i32, serde_json::Value) {
    let out = xtask_bin()
        .args(["demo", "--json", "--cycles", "3"])
        .args(FAST)
        .args(args)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().expect("exited"), json)
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

/// Ctrl-C (SIGINT to the demo alone, so the roles do not hear it themselves)
/// ends the demo with an error and both roles with it.
#[test]
fn an_interrupted_demo_stops_the_processes_it_started() {
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
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status();
    assert!(kill.expect("kill runs").success());
    let out = child.wait_with_output().expect("ends");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupted"), "{err}");
    assert!(pids.iter().all(|&p| gone(p)), "{pids:?}");
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
