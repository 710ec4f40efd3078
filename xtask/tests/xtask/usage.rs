//! Bad input as a newcomer types it: every case exits 2 with one line saying
//! which flag and why, a long or multi-line value cut and escaped.

/// `args` exits 2 with one short line on stderr that contains each of `says`.
fn check(args: &[&str], says: &[&str]) {
    crate::check_usage_error(args);
    let (_, _, err) = crate::xtask(args);
    assert!(err.len() < 600, "{:?}: the line is {} bytes", args[0], err.len());
    for s in says {
        assert!(err.contains(s), "wanted {s:?} in {err}");
    }
}

#[test]
fn every_bad_input_exits_2_with_one_line_saying_why() {
    let newline = "scenario.vmm_register\nwatcher.vmm_list";
    let huge = "x".repeat(100_000);
    let huge_second = format!("scenario.instance_create {}", "y".repeat(10_000));
    let cases: &[(&[&str], &[&str])] = &[
        (&["explore", "--max-schedules", "0"], &["--max-schedules", "at least 1"]),
        (&["explore", "--max-seconds", "0"], &["--max-seconds", "at least 1"]),
        (&["explore", "--max-steps", "0"], &["--max-steps", "at least 1"]),
        (&["explore", "--max-steps", "-1"], &["'-1'", "--max-steps", "whole number"]),
        (&["explore", "--watcher-passes", "1000"], &["--watcher-passes", "at most 64"]),
        (&["explore", "--restart-passes", "65"], &["--restart-passes", "at most 64"]),
        (&["explore", "--user-ops", "5"], &["--user-ops", "at most 4"]),
        (&["explore", "--sled-restarts", "5"], &["--sled-restarts", "at most 4"]),
        (&["explore", "--threads", "0"], &["--threads", "at least 1"]),
        (&["stress", "--runs", "0"], &["--runs", "at least 1"]),
        (&["stress", "--runs", "-3"], &["'-3'", "--runs"]),
        (&["stress", "--max-seconds", "0"], &["--max-seconds", "at least 1"]),
        (&["scenario", "--schedule", newline], &["\\n", "malformed replay string"]),
        (&["scenario", "--schedule", &huge], &["(100000 characters)", "malformed"]),
        (&["scenario", "--schedule", &huge_second], &["token 2", "(10000 characters)"]),
        (
            &["scenario", "--schedule", "watcher.vmm_list*18446744073709551616"],
            &["larger than any run can be"],
        ),
        (&["demo", "--cycles", "-1"], &["'-1'", "--cycles"]),
        (&["sim-sled-agent", "--nexus", "not-a-url"], &["--nexus", "not a URL"]),
        (&["nexus-stub", "--sled", ""], &["--sled", "not a URL"]),
        (&[], &["name a command: scenario, explore"]),
        (&["explore-merge"], &["not provided", "<FILE>"]),
        (&["scenario", "--sched", "happy"], &["'--sched'", "did you mean --schedule?"]),
    ];
    for (args, says) in cases {
        check(args, says);
    }
}

#[test]
fn the_version_is_printed() {
    for flag in ["-V", "--version"] {
        let (code, out, _) = crate::xtask(&[flag]);
        assert_eq!((code, out.trim()), (0, concat!("cargo xtask ", env!("CARGO_PKG_VERSION"))));
    }
}

#[test]
fn help_names_the_command_as_a_user_types_it() {
    for args in [&["--help"][..], &["explore", "--help"], &["demo", "--help"]] {
        let (code, out, _) = crate::xtask(args);
        assert_eq!(code, 0);
        assert!(out.contains("Usage: cargo xtask"), "{args:?}: {out}");
    }
}
