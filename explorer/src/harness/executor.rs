//! The run's executor: every actor is a task on the driver's thread, polled in the order it was woken, until none can move.
//!
//! futures' `LocalPool` did this before. A search starts an executor for each
//! of its runs and polls it at every step, and `LocalPool`'s general machinery
//! (a lock-free queue of reference-counted task nodes, a second box around each
//! task) was a twentieth of a search's instructions. This one keeps the tasks
//! in a list, each with the waker it is polled with, made once.
//!
//! The order is first in, first out, and fixed by what the tasks do: a task
//! spawned joins the queue before the next poll (behind the tasks already
//! queued), a woken one when it is woken, each at most once until it is
//! polled. `LocalPool` took spawned tasks in later, only between batches of
//! polls, so where a task spawns while others are queued the two orders differ
//! in which is polled first. The harness never meets that: the watcher, its
//! only spawner, spawns while no other actor can move. Nothing the search reads
//! depends on the order anyway (choices are sorted by actor, actor ids are
//! given out by the spawner, and a fingerprint leaves tickets out), and the
//! tests that compare searches saw the same runs and situations.
//!
//! Wakers may be called from other threads (over HTTP, a server's thread
//! answers a gated call), so the queue is behind a mutex, and a thread blocked
//! in `run_until` is unparked by every wake.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// The tasks woken and not yet polled, by slot; and the thread to unpark.
struct Woken {
    queue: Mutex<VecDeque<usize>>,
    thread: Thread,
}

impl Woken {
    fn queue(&self) -> MutexGuard<'_, VecDeque<usize>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One task's waker: it queues the task once until the task is polled. The
/// future `run_until` waits for has no slot: its flag is all a wake sets.
struct TaskWaker {
    slot: Option<usize>,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            if let Some(slot) = self.slot {
                self.woken.queue().push_back(slot);
            }
            self.woken.thread.unpark();
        }
    }
}

/// A task in its slot, with the waker it is polled with.
struct Slot {
    task: Task,
    flag: Arc<TaskWaker>,
    waker: Waker,
}

/// The tasks of one run, on the thread that made it.
pub struct Executor {
    slots: Vec<Option<Slot>>,
    spawned: Rc<RefCell<Vec<Task>>>,
    woken: Arc<Woken>,
}

/// Spawns onto an executor, from outside it or from one of its tasks.
#[derive(Clone)]
pub struct Spawner(Rc<RefCell<Vec<Task>>>);

impl Spawner {
    /// The task joins the executor's queue at its next turn.
    pub fn spawn(&self, task: Task) {
        self.0.borrow_mut().push(task);
    }
}

impl Default for Executor {
    fn default() -> Self {
        Executor::new()
    }
}

impl Executor {
    pub fn new() -> Executor {
        // Room for a run's actors up front (a search starts thousands of runs a
        // second): five or so, a check per listed VMM, an update step per
        // terminal write.
        let queue = Mutex::new(VecDeque::with_capacity(16));
        let woken = Arc::new(Woken { queue, thread: thread::current() });
        let spawned = Rc::new(RefCell::new(Vec::with_capacity(8)));
        Executor { slots: Vec::with_capacity(16), spawned, woken }
    }

    pub fn spawner(&self) -> Spawner {
        Spawner(Rc::clone(&self.spawned))
    }

    /// Polls woken tasks until none is: every task has finished or waits for
    /// a wake that only something outside the pool can give.
    pub fn run_until_stalled(&mut self) {
        loop {
            self.adopt_spawned();
            let Some(slot) = self.woken.queue().pop_front() else { return };
            self.poll(slot);
        }
    }

    /// Runs the pool and `fut` until `fut` is ready, waiting on this thread for
    /// wakes from other threads while nothing can move.
    pub fn run_until<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        let main = Arc::new(TaskWaker {
            slot: None,
            queued: AtomicBool::new(true),
            woken: Arc::clone(&self.woken),
        });
        let waker = Waker::from(Arc::clone(&main));
        loop {
            if main.queued.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(&waker)) {
                    return out;
                }
            }
            self.run_until_stalled();
            if !main.queued.load(Ordering::Acquire) {
                thread::park();
            }
        }
    }

    /// Gives each spawned task a slot and queues it, in the order spawned.
    fn adopt_spawned(&mut self) {
        if self.spawned.borrow().is_empty() {
            return;
        }
        let mut spawned = self.spawned.borrow_mut();
        for task in spawned.drain(..) {
            let slot = self.slots.len();
            let flag = Arc::new(TaskWaker {
                slot: Some(slot),
                queued: AtomicBool::new(true),
                woken: Arc::clone(&self.woken),
            });
            let waker = Waker::from(Arc::clone(&flag));
            self.slots.push(Some(Slot { task, flag, waker }));
            self.woken.queue().push_back(slot);
        }
    }

    fn poll(&mut self, slot: usize) {
        let Some(Some(s)) = self.slots.get_mut(slot) else { return };
        // Cleared first: a wake during the poll queues it again.
        s.flag.queued.store(false, Ordering::Release);
        if s.task.as_mut().poll(&mut Context::from_waker(&s.waker)).is_ready() {
            self.slots[slot] = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A task that records its name each time it is polled, and finishes
    /// after `polls` polls, waking itself in between.
    fn recorder(log: &Rc<RefCell<Vec<&'static str>>>, name: &'static str, polls: usize) -> Task {
        let log = Rc::clone(log);
        let left = Cell::new(polls);
        Box::pin(std::future::poll_fn(move |cx| {
            log.borrow_mut().push(name);
            left.set(left.get() - 1);
            if left.get() == 0 {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }))
    }

    #[test]
    fn tasks_run_in_the_order_spawned_then_woken_until_all_finish() {
        let mut pool = Executor::new();
        let log = Rc::default();
        let s = pool.spawner();
        s.spawn(recorder(&log, "a", 2));
        s.spawn(recorder(&log, "b", 1));
        s.spawn(recorder(&log, "c", 2));
        pool.run_until_stalled();
        assert_eq!(*log.borrow(), ["a", "b", "c", "a", "c"]);
        assert!(pool.slots.iter().all(Option::is_none));
    }

    #[test]
    fn a_spawned_task_joins_the_queue_after_the_poll_that_spawned_it() {
        let mut pool = Executor::new();
        let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
        let s = pool.spawner();
        let (inner, l) = (s.clone(), Rc::clone(&log));
        // The parent spawns its child and waits for ever; its sibling, queued
        // before the child exists, wakes itself once.
        s.spawn(Box::pin(async move {
            l.borrow_mut().push("parent");
            inner.spawn(recorder(&l, "child", 1));
            std::future::pending::<()>().await;
        }));
        s.spawn(recorder(&log, "sibling", 2));
        pool.run_until_stalled();
        assert_eq!(*log.borrow(), ["parent", "sibling", "child", "sibling"]);
        assert_eq!(pool.slots.iter().filter(|s| s.is_some()).count(), 1, "the parent waits");
    }

    #[test]
    fn a_task_woken_twice_before_its_poll_is_polled_once_more() {
        let mut pool = Executor::new();
        let polls = Rc::new(Cell::new(0));
        let waker: Rc<RefCell<Option<Waker>>> = Rc::default();
        let (p, w) = (Rc::clone(&polls), Rc::clone(&waker));
        pool.spawner().spawn(Box::pin(std::future::poll_fn(move |cx| {
            p.set(p.get() + 1);
            *w.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })));
        pool.run_until_stalled();
        assert_eq!(polls.get(), 1);
        // Another task wakes it twice; then a wake after it is polled counts again.
        let w = Rc::clone(&waker);
        pool.spawner().spawn(Box::pin(async move {
            let waker = w.borrow().clone();
            if let Some(waker) = waker {
                waker.wake_by_ref();
                waker.wake_by_ref();
            }
        }));
        pool.run_until_stalled();
        assert_eq!(polls.get(), 2);
        if let Some(waker) = waker.borrow().as_ref() {
            waker.wake_by_ref();
        }
        pool.run_until_stalled();
        assert_eq!(polls.get(), 3);
    }

    /// Runs `f` on a thread of its own, failing if it takes over a few
    /// seconds: a lost wake parks a thread for ever, and a test should fail,
    /// not hang.
    fn within_seconds(f: impl FnOnce() + Send + 'static) {
        let (done, wait) = std::sync::mpsc::channel();
        thread::spawn(move || {
            f();
            let _ = done.send(());
        });
        let limit = std::time::Duration::from_secs(5);
        assert!(wait.recv_timeout(limit).is_ok(), "still waiting after {limit:?}: a wake was lost");
    }

    /// Sends `n` from another thread, a moment from now (once this one has
    /// had time to stall and park).
    fn send_from_another_thread(
        tx: futures::channel::oneshot::Sender<u32>,
        n: u32,
    ) -> thread::JoinHandle<Result<(), u32>> {
        thread::spawn(move || {
            thread::sleep(std::time::Duration::from_millis(20));
            tx.send(n)
        })
    }

    #[test]
    fn a_stalled_pool_waits_for_a_wake_from_another_thread() {
        within_seconds(|| {
            let mut pool = Executor::new();
            let (tx, rx) = futures::channel::oneshot::channel::<u32>();
            let (done_tx, done_rx) = futures::channel::oneshot::channel::<u32>();
            pool.spawner().spawn(Box::pin(async move {
                let _ = done_tx.send(rx.await.unwrap_or(0) + 1);
            }));
            pool.run_until_stalled();
            // The task waits for the other thread; the pool parks until it sends.
            let sender = send_from_another_thread(tx, 7);
            assert_eq!(pool.run_until(done_rx), Ok(8));
            assert!(sender.join().is_ok_and(|r| r.is_ok()));
        });
    }

    #[test]
    fn run_until_waits_for_its_own_future_woken_from_another_thread() {
        within_seconds(|| {
            let (tx, rx) = futures::channel::oneshot::channel::<u32>();
            let sender = send_from_another_thread(tx, 5);
            assert_eq!(Executor::new().run_until(rx), Ok(5));
            assert!(sender.join().is_ok_and(|r| r.is_ok()));
        });
    }
}
