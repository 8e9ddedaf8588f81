//! The threads one inference splits its kernels' work across: the calling thread and a team of
//! workers that spin between jobs instead of sleeping.
//!
//! An inference of convnext_tiny hands out about 150 jobs of 50 µs to 1 ms each, with short
//! serial stretches between them. On a rayon pool (tract's executor) each job woke sleeping
//! workers, and a wake-up through the kernel's futex costs tens of microseconds, much more in
//! a VM whose idle vCPU the hypervisor has halted (benches/README.md, "Threads"). Here an idle
//! worker polls an atomic job counter for [`SPIN`] after its last job before it sleeps, so
//! within an inference a job starts on every thread in well under a microsecond, and the
//! calling thread takes its share of the tasks instead of waiting. onnxruntime's pool spins
//! the same way by default.
//!
//! The work of a job is split into tasks, and each thread owns a contiguous share of them: the
//! same rows of one op after another, so that what a thread wrote stays in its core's cache
//! for its next op (ConvNeXt's blocks keep the positions on the rows from one op to the next).
//! A thread that finishes its share takes the unclaimed tasks of the others, so one that
//! started late or was interrupted holds no one up.
//!
//! Outside [`Workers::scope`], and inside a task (no nesting), [`par_chunks_mut`] runs its body
//! on the calling thread alone.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tract_onnx::prelude::TractResult;

/// How long an idle worker polls for the next job before it sleeps. Longer than the serial
/// stretches between two jobs of an inference on the slowest boards; short enough that
/// between camera frames the workers soon stop using the cores.
const SPIN: Duration = Duration::from_millis(2);

/// Less work than this (in elements touched) runs on the calling thread alone: handing it out
/// would cost more than it saves. tract-linalg's default for its own parallel loops.
const MIN_PARALLEL_WORK: usize = 32 * 1024;

/// Tasks per thread a job is split into, so that a thread that starts late or is interrupted
/// leaves its share to the others.
const TASKS_PER_THREAD: usize = 8;

/// The calling thread's share in a job plus `threads − 1` spinning workers: a model holds one
/// for its inferences, and runs its plan inside [`Workers::scope`].
pub struct Workers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    /// Held by the thread whose job the workers run; a second thread calling in while it is
    /// held runs its work alone.
    dispatch: Mutex<()>,
}

/// The state the calling thread and the workers share.
///
/// A job is published in two steps of `epoch`: odd while the calling thread rewrites `job`,
/// once no worker is `inside` the previous one; even once it is ready. A worker announces
/// itself `inside` and only then re-checks the epoch, so that it never reads a `job` being
/// rewritten (the four accesses are sequentially consistent: each side sees the other's
/// write).
struct Shared {
    threads: usize,
    epoch: AtomicUsize,
    inside: AtomicUsize,
    job: UnsafeCell<Job>,
    /// Each thread's share of the job's tasks.
    shares: Box<[Share]>,
    pending: AtomicUsize,
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

// SAFETY: `job` is written only by the thread holding `Workers::dispatch` while the epoch is
// odd and no worker is inside, and read only by threads inside at an even epoch (see `Shared`).
unsafe impl Sync for Shared {}

/// The tasks `next..end` of a thread's share that no thread has claimed yet; a cache line of
/// its own, since its owner updates it for every task.
#[repr(align(128))]
struct Share {
    next: AtomicUsize,
    end: AtomicUsize,
}

/// The calls of `run`, one per task index (with the index of the thread that runs it). The closure lives on the calling thread's
/// stack, which outlives the job: the calling thread returns only when `pending` is 0.
#[derive(Clone, Copy)]
struct Job {
    run: *const (dyn Fn(usize, usize) + Sync),
}

// SAFETY: `run` points to a `Sync` closure.
unsafe impl Send for Job {}

thread_local! {
    /// The workers of the `scope` this thread is in.
    static CURRENT: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    /// Whether this thread is running a task: a nested loop stays on it.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Workers {
    /// A team for `threads` threads in all: `threads − 1` workers, pinned one CPU each
    /// (round-robin from the second) when `cpus` is given.
    pub fn new(threads: usize, cpus: Option<&[usize]>) -> std::io::Result<Workers> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            threads,
            epoch: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            job: UnsafeCell::new(Job { run: &|_, _| {} }),
            shares: (0..threads)
                .map(|_| Share {
                    next: AtomicUsize::new(0),
                    end: AtomicUsize::new(0),
                })
                .collect(),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut workers = Workers {
            shared: shared.clone(),
            handles: Vec::with_capacity(threads - 1),
            dispatch: Mutex::new(()),
        };
        for i in 1..threads {
            let shared = shared.clone();
            let cpu = cpus.filter(|c| !c.is_empty()).map(|c| c[i % c.len()]);
            let handle = std::thread::Builder::new()
                .name(format!("convnext-edge-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        // Still runs inside the caller's set if it cannot be narrowed.
                        let _ = crate::machine::pin_current_thread(&[cpu]);
                    }
                    work(&shared, i)
                })?;
            // Pushed one by one: on a failed spawn, `Drop` stops the ones already started.
            workers.handles.push(handle);
        }
        Ok(workers)
    }

    /// Threads in all, the calling thread included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `f` with these workers taking a share of every parallel loop of the kernels it
    /// calls on this thread.
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        // Another thread's inference holding the workers leaves this one on its own.
        let held = self.dispatch.try_lock().ok();
        let previous = CURRENT.replace(held.as_ref().map(|_| self.shared.clone()));
        struct Restore(Option<Arc<Shared>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.set(self.0.take());
            }
        }
        let _restore = Restore(previous);
        f()
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Workers({} threads)", self.threads())
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shared.stop.store(true, SeqCst);
        drop(self.shared.sleep.lock());
        self.shared.wake.notify_all();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Shared {
    /// `tasks` calls of `run` across the team, the calling thread included; returns once all
    /// have finished, re-raising the first panic of a task.
    fn run(&self, tasks: usize, run: &(dyn Fn(usize, usize) + Sync)) {
        let panic = Mutex::new(None);
        let guarded = |i: usize, thread: usize| {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| run(i, thread))) {
                panic
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(p);
            }
        };
        let guarded: &(dyn Fn(usize, usize) + Sync) = &guarded;
        // SAFETY: only the lifetime is erased; `run_tasks` and the wait below keep the closure
        // alive until every task has finished.
        let guarded: &'static (dyn Fn(usize, usize) + Sync) =
            unsafe { std::mem::transmute(guarded) };
        self.epoch.fetch_add(1, SeqCst);
        let mut polls = 0;
        while self.inside.load(SeqCst) != 0 {
            relax(&mut polls);
        }
        // SAFETY: the epoch is odd and no worker is inside (see `Shared`); only the thread
        // holding `dispatch` gets here.
        unsafe { *self.job.get() = Job { run: guarded } };
        for (t, share) in self.shares.iter().enumerate() {
            share.next.store(tasks * t / self.threads, SeqCst);
            share.end.store(tasks * (t + 1) / self.threads, SeqCst);
        }
        self.pending.store(tasks, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            drop(self.sleep.lock());
            self.wake.notify_all();
        }
        // SAFETY: published above, at an even epoch, by this thread.
        self.run_tasks(unsafe { *self.job.get() }, 0);
        let mut polls = 0;
        while self.pending.load(Acquire) != 0 {
            relax(&mut polls);
        }
        if let Some(p) = panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
            resume_unwind(p);
        }
    }

    /// Claims and runs tasks of `job` until none is left: thread `me`'s own share first, then
    /// what is left of the others'.
    fn run_tasks(&self, job: Job, me: usize) {
        let was = IN_TASK.replace(true);
        for t in 0..self.threads {
            let share = &self.shares[(me + t) % self.threads];
            loop {
                let i = share.next.fetch_add(1, Relaxed);
                if i >= share.end.load(Relaxed) {
                    break;
                }
                // SAFETY: task `i` is unfinished, so `pending` > 0 and the calling thread is
                // still waiting with the closure alive.
                unsafe { (*job.run)(i, me) };
                self.pending.fetch_sub(1, Release);
            }
        }
        IN_TASK.set(was);
    }

    /// The next even epoch after `seen`, polled for [`SPIN`] and then slept for; `None` once
    /// the team is stopping.
    fn next_job(&self, seen: usize) -> Option<usize> {
        let ready = |e: usize| e != seen && e.is_multiple_of(2);
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            if self.stop.load(Relaxed) {
                return None;
            }
            let e = self.epoch.load(SeqCst);
            if ready(e) {
                return Some(e);
            }
            if polls.is_multiple_of(256) && start.elapsed() > SPIN {
                break;
            }
            relax(&mut polls);
        }
        let mut guard = self.sleep.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, SeqCst);
        let found = loop {
            if self.stop.load(SeqCst) {
                break None;
            }
            let e = self.epoch.load(SeqCst);
            if ready(e) {
                break Some(e);
            }
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        };
        self.sleepers.fetch_sub(1, SeqCst);
        found
    }
}

/// One wait between two polls of a shared counter: a pause at first, then a yield of the CPU,
/// for when there are more threads than cores (tests, a busy board) and the one being waited
/// for needs this one's core to get on.
fn relax(polls: &mut u32) {
    *polls = polls.wrapping_add(1);
    if *polls < 1024 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Worker `me`'s life: the jobs, until the team stops.
fn work(shared: &Shared, me: usize) {
    let mut seen = 0;
    while let Some(e) = shared.next_job(seen) {
        seen = e;
        shared.inside.fetch_add(1, SeqCst);
        if shared.epoch.load(SeqCst) == e {
            // SAFETY: inside, at the even epoch the job was published at (see `Shared`).
            shared.run_tasks(unsafe { *shared.job.get() }, me);
        }
        shared.inside.fetch_sub(1, SeqCst);
    }
}

/// The workers this thread's loops may use now: none inside a task or outside a scope.
fn current() -> Option<Arc<Shared>> {
    if IN_TASK.get() {
        return None;
    }
    CURRENT.with_borrow(|c| c.clone()).filter(|s| s.threads > 1)
}

/// Threads a parallel loop started on this thread now runs on.
pub(crate) fn threads() -> usize {
    current().map_or(1, |s| s.threads)
}

/// `f(first_row, rows)` over `out`, seen as rows of `row_len`, in contiguous blocks of whole
/// rows split across the threads of the current [`Workers::scope`] (`work`: elements touched,
/// which decides whether to split at all). A row is never split, so that any reduction along it
/// gives the same bits on any number of threads. Returns the first error of any block.
pub fn par_chunks_mut<T: Send>(
    out: &mut [T],
    row_len: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    par_chunks_mut_with(out, row_len, work, || (), |_, first, rows| f(first, rows))
}

/// [`par_chunks_mut`] with scratch space: `init()` is made once per thread that takes part,
/// not once per block, and handed to each of its blocks.
pub fn par_chunks_mut_with<T: Send, S: Send>(
    out: &mut [T],
    row_len: usize,
    work: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &mut [T]) -> TractResult<()> + Sync,
) -> TractResult<()> {
    assert!(row_len > 0 && out.len().is_multiple_of(row_len));
    let rows = out.len() / row_len;
    let shared = match current() {
        Some(s) if rows >= 2 && work >= MIN_PARALLEL_WORK => s,
        _ => return f(&mut init(), 0, out),
    };
    // Task `i` has rows `first(i)..first(i + 1)`: as even as whole rows allow.
    let tasks = (TASKS_PER_THREAD * shared.threads).min(rows);
    let first = |i: usize| i * rows / tasks;
    let base = Rows(out.as_mut_ptr());
    let error = Mutex::new(None);
    let scratch: Vec<Mutex<Option<S>>> = (0..shared.threads).map(|_| Mutex::new(None)).collect();
    shared.run(tasks, &|i, thread| {
        let (start, n) = (first(i), first(i + 1) - first(i));
        // SAFETY: tasks cover disjoint row ranges of `out`, which stays exclusively borrowed
        // until `run` returns.
        let rows = unsafe { std::slice::from_raw_parts_mut(base.at(start * row_len), n * row_len) };
        let mut scratch = scratch[thread].lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f(scratch.get_or_insert_with(&init), start, rows) {
            error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        }
    });
    match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `f` with `n` threads for its parallel loops (the kernels' tests).
#[cfg(test)]
pub(crate) fn on_threads<R>(n: usize, f: impl FnOnce() -> R) -> R {
    Workers::new(n, None).expect("test threads").scope(f)
}

/// `out`'s start, shared with the tasks that write its rows.
struct Rows<T>(*mut T);

impl<T> Rows<T> {
    fn at(&self, offset: usize) -> *mut T {
        // SAFETY: callers stay within the slice the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

// SAFETY: each task writes its own rows (see `par_chunks_mut`), and `T` is `Send`.
unsafe impl<T: Send> Sync for Rows<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_once_on_any_team() {
        for threads in [1, 2, 3, 5] {
            let workers = Workers::new(threads, None).unwrap();
            for rows in [1, 2, 7, 64, 1000] {
                let mut out = vec![0u32; rows * 40];
                workers
                    .scope(|| {
                        par_chunks_mut(&mut out, 40, usize::MAX, |first, chunk| {
                            for (i, row) in chunk.chunks_mut(40).enumerate() {
                                row.iter_mut().for_each(|v| *v += (first + i) as u32 + 1);
                            }
                            Ok(())
                        })
                    })
                    .unwrap();
                let expected: Vec<u32> = (0..rows).flat_map(|r| [r as u32 + 1; 40]).collect();
                assert_eq!(out, expected, "{threads} threads, {rows} rows");
            }
        }
    }

    #[test]
    fn jobs_follow_each_other_and_tasks_run_on_the_workers() {
        let workers = Workers::new(3, None).unwrap();
        let seen = Mutex::new(std::collections::HashSet::new());
        workers.scope(|| {
            for job in 0..2000 {
                let mut out = vec![0u8; 64];
                par_chunks_mut(&mut out, 1, usize::MAX, |_, chunk| {
                    seen.lock().unwrap().insert(std::thread::current().id());
                    if job < 3 {
                        // Long enough for a worker to claim its share on a busy machine.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    chunk.fill(1);
                    Ok(())
                })
                .unwrap();
                assert!(out.iter().all(|&v| v == 1));
            }
        });
        assert!(
            seen.into_inner().unwrap().len() > 1,
            "no task ran on a worker"
        );
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let workers = Workers::new(2, None).unwrap();
        let on_worker = AtomicUsize::new(0);
        let caller = std::thread::current().id();
        std::thread::sleep(SPIN * 5);
        workers.scope(|| {
            for _ in 0..3 {
                let mut out = vec![0u8; 8];
                par_chunks_mut(&mut out, 1, usize::MAX, |_, _| {
                    if std::thread::current().id() != caller {
                        on_worker.fetch_add(1, SeqCst);
                    } else {
                        // Leaves the worker time to wake and claim a task.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(())
                })
                .unwrap();
            }
        });
        assert!(on_worker.load(SeqCst) > 0);
    }

    #[test]
    fn errors_and_panics_of_a_task_reach_the_caller() {
        let workers = Workers::new(2, None).unwrap();
        let mut out = vec![0u8; 100];
        let e = workers.scope(|| {
            par_chunks_mut(&mut out, 1, usize::MAX, |first, _| {
                if first > 50 {
                    tract_onnx::tract_core::internal::bail!("row {first}")
                }
                Ok(())
            })
        });
        assert!(e.unwrap_err().to_string().starts_with("row "));
        let p = catch_unwind(AssertUnwindSafe(|| {
            workers.scope(|| par_chunks_mut(&mut out, 1, usize::MAX, |_, _| panic!("boom")))
        }));
        assert!(p.is_err());
        // The team still works after both.
        let r = workers.scope(|| {
            par_chunks_mut(&mut out, 1, usize::MAX, |_, c| {
                c.fill(3);
                Ok(())
            })
        });
        assert!(r.is_ok() && out.iter().all(|&v| v == 3));
    }

    #[test]
    fn nested_loops_and_a_second_caller_run_alone() {
        let workers = Arc::new(Workers::new(2, None).unwrap());
        let mut out = vec![0u32; 64];
        workers
            .scope(|| {
                par_chunks_mut(&mut out, 1, usize::MAX, |_, chunk| {
                    assert_eq!(threads(), 1);
                    par_chunks_mut(chunk, 1, usize::MAX, |_, c| {
                        c.fill(1);
                        Ok(())
                    })
                })
            })
            .unwrap();
        assert!(out.iter().all(|&v| v == 1));
        let other = workers.clone();
        workers.scope(|| {
            assert_eq!(threads(), 2);
            let alone = std::thread::spawn(move || other.scope(threads))
                .join()
                .unwrap();
            assert_eq!(alone, 1);
        });
    }
}
