//! The stop race of omicron#7282 in shuttle's primitives, explored by shuttle's DFS:
//! the peer `cargo xtask bench` measures sledsim's explorer against.
//!
//! The same protocol as sledsim's stop-race, cut to what the race needs: a sled
//! agent's table with one VMM, Nexus's record of it with the generation-checked
//! write, the sled agent stopping the VMM and reporting each state, and a watcher
//! that polls W times (list what Nexus holds live, ask the sled agent, write what
//! it says, or Failed at the listed generation + 1 if the VMM is gone). Usage:
//! `shuttle-stop-race W MAX_SCHEDULES [remove-then-publish]`; prints one JSON line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use shuttle::scheduler::DfsScheduler;
use shuttle::sync::Mutex;
use shuttle::{thread, Config, Runner};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Stopping,
    Stopped,
    Destroyed,
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Row {
    state: State,
    gen: u64,
}

/// Nexus's write: applied only if the generation is newer.
fn write(nexus: &Mutex<Row>, new: Row) {
    let mut row = nexus.lock().unwrap_or_else(|p| p.into_inner());
    if new.gen > row.gen {
        *row = new;
    }
}

fn stop_race(polls: usize, publish_first: bool) {
    let start = Row { state: State::Running, gen: 2 };
    let sled = Arc::new(Mutex::new(Some(start)));
    let nexus = Arc::new(Mutex::new(start));
    let agent = {
        let (sled, nexus) = (Arc::clone(&sled), Arc::clone(&nexus));
        thread::spawn(move || {
            for state in [State::Stopping, State::Stopped, State::Destroyed] {
                let row = {
                    let mut table = sled.lock().unwrap_or_else(|p| p.into_inner());
                    let Some(vmm) = table.as_mut() else { return };
                    vmm.state = state;
                    vmm.gen += 1;
                    *vmm
                };
                let remove = || *sled.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if state == State::Destroyed && !publish_first {
                    remove();
                }
                write(&nexus, row);
                if state == State::Destroyed && publish_first {
                    remove();
                }
            }
        })
    };
    let watcher = {
        let (sled, nexus) = (Arc::clone(&sled), Arc::clone(&nexus));
        thread::spawn(move || {
            for _ in 0..polls {
                let listed = *nexus.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(listed.state, State::Destroyed | State::Failed) {
                    continue;
                }
                let seen = *sled.lock().unwrap_or_else(|p| p.into_inner());
                match seen {
                    None => write(&nexus, Row { state: State::Failed, gen: listed.gen + 1 }),
                    Some(row) => write(&nexus, row),
                }
            }
        })
    };
    let _ = agent.join();
    let _ = watcher.join();
    let end = *nexus.lock().unwrap_or_else(|p| p.into_inner());
    assert_ne!(end.state, State::Failed, "a VMM that was stopped ended Failed");
}

static SCHEDULES: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let polls = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let cap = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let publish_first = args.get(3).map(String::as_str) != Some("remove-then-publish");
    let t = Instant::now();
    let runner = Runner::new(DfsScheduler::new(Some(cap), false), Config::new());
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runner.run(move || {
            SCHEDULES.fetch_add(1, Ordering::Relaxed);
            stop_race(polls, publish_first);
        })
    }))
    .is_err();
    let schedules = SCHEDULES.load(Ordering::Relaxed);
    println!(
        "{{\"polls\":{polls},\"schedules\":{schedules},\"exhaustive\":{},\"violation\":{found},\"ms\":{:.1}}}",
        !found && schedules < cap,
        t.elapsed().as_secs_f64() * 1e3
    );
}
