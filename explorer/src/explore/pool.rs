//! Worker threads kept from one search to the next: a search of a few dozen runs
//! takes well under a millisecond, and starting and ending a thread for it (a
//! fresh 8 MB stack, a dozen system calls, the stack's pages faulted in again)
//! cost it a tenth of its time.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// The components' futures nest deeply when polled: each worker gets the main
/// thread's stack size.
const STACK: usize = 8 << 20;

struct Pool {
    jobs: Sender<Job>,
    /// Shared by the workers: whichever is free takes the next job.
    queue: Arc<Mutex<Receiver<Job>>>,
    /// Workers started so far; more start when a search asks for more.
    workers: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = mpsc::channel();
        Mutex::new(Pool { jobs, queue: Arc::new(Mutex::new(queue)), workers: 0 })
    })
}

fn worker(queue: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only to take a job, never while one runs.
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else { return };
        // A job's panic must not take the worker with it: the job's own guard
        // has already told its waiter (`Workers::wait`) that it ended.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// The jobs a `run` started, to wait for.
pub struct Workers {
    started: usize,
    done: Receiver<()>,
}

impl Workers {
    /// How many of the jobs asked for are running: fewer if no more threads
    /// could be had.
    pub fn started(&self) -> usize {
        self.started
    }

    /// Returns once every started job has ended, well or by a panic; by then
    /// each has dropped what it owned.
    pub fn wait(self) {
        for _ in 0..self.started {
            if self.done.recv().is_err() {
                return;
            }
        }
    }
}

/// Sends on drop, so a job that panics still counts as ended, after what it
/// owned is dropped (the guard is the job's first local, so the last dropped).
struct Ended(Sender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Runs `job` on `n` pooled threads at once, starting threads if the pool has
/// fewer than `n`.
pub fn run(n: usize, job: impl Fn() + Send + Sync + 'static) -> Workers {
    let (ended, done) = mpsc::channel();
    let mut pool = match pool().lock() {
        Ok(p) => p,
        Err(poisoned) => poisoned.into_inner(),
    };
    while pool.workers < n {
        let queue = Arc::clone(&pool.queue);
        let spawned = std::thread::Builder::new()
            .name("sledsim-explore".into())
            .stack_size(STACK)
            .spawn(move || worker(&queue));
        if spawned.is_err() {
            break;
        }
        pool.workers += 1;
    }
    let job = Arc::new(job);
    let mut started = 0;
    for _ in 0..n.min(pool.workers) {
        let (job, ended) = (Arc::clone(&job), Ended(ended.clone()));
        let sent = pool.jobs.send(Box::new(move || {
            // Into locals, so what the job owns goes first and the waiter hears
            // of the end only after it (an unwinding panic drops them so too).
            let ended = ended;
            let job = job;
            job();
            drop(job);
            drop(ended);
        }));
        started += usize::from(sent.is_ok());
    }
    Workers { started, done }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_started_job_runs_once_and_wait_waits_for_all() {
        let count = Arc::new(AtomicUsize::new(0));
        for n in [1, 3, 2] {
            let before = count.load(Ordering::SeqCst);
            let c = Arc::clone(&count);
            let workers = run(n, move || {
                c.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(workers.started(), n);
            workers.wait();
            assert_eq!(count.load(Ordering::SeqCst), before + n);
        }
    }

    /// Owned by a job; slow to drop, so a wait that returned before the job's
    /// things were dropped would see them still held (the field is what is
    /// held: it is never read, only counted).
    struct SlowDrop(#[allow(dead_code)] Arc<()>);

    impl Drop for SlowDrop {
        fn drop(&mut self) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn what_a_job_owns_is_dropped_before_wait_returns() {
        let held = Arc::new(());
        let owned = SlowDrop(Arc::clone(&held));
        let workers = run(2, move || {
            let _ = &owned;
        });
        workers.wait();
        // The searcher takes its search back out of its Arc right after.
        assert_eq!(Arc::strong_count(&held), 1);
    }

    #[test]
    fn a_panicking_job_still_ends_and_its_worker_stays() {
        let workers = run(1, || panic!("a job's panic"));
        workers.wait();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        run(1, move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .wait();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
