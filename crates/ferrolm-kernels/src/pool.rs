//! A small thread pool for the many tiny parallel loops of a decode step.
//!
//! A decode step of a small model is a few hundred matrix products of tens of microseconds
//! each; a general-purpose pool's fork/join (and its idle threads yielding to the scheduler)
//! costs as much as the work. Here the calling thread takes part in every job, workers spin
//! briefly on one atomic word between jobs and only then sleep, and a job is published with
//! one store.
//!
//! Protocol: `state` packs `(generation, task count n, next task)` into one word. Publishing
//! writes the job (a data pointer and a monomorphised trampoline) and then stores `(g, n, 0)`.
//! A thread runs task `i` only after a compare-exchange from `(g, n, i)` to `(g, n, i + 1)`
//! succeeds with `i < n`, which can only happen while job `g` is unfinished, so the job it read
//! after seeing `g` is still alive (the publisher waits for all `n` tasks before returning and
//! before writing another job).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

struct Inner {
    state: AtomicU64,
    data: AtomicUsize,
    call: AtomicUsize,
    done: AtomicUsize,
    /// A task of the current job panicked (re-raised on the calling thread).
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    inner: Arc<Inner>,
    threads: usize,
    /// Serialises callers: one job at a time.
    publish: Mutex<()>,
}

type Trampoline = unsafe fn(*const (), usize);

unsafe fn trampoline<F: Fn(usize) + Sync>(data: *const (), i: usize) {
    // SAFETY: `data` is the `&F` published by `run`, alive until `run` returns.
    unsafe { (*(data as *const F))(i) }
}

const SPIN: usize = 1 << 16;
const FIELD: u64 = (1 << 20) - 1;
/// Largest task count of one job.
pub const MAX_TASKS: usize = FIELD as usize;

fn gen_of(s: u64) -> u64 {
    s >> 40
}

impl Inner {
    /// Claims and runs tasks of generation `g` until none are left. Returns whether any ran.
    fn work(&self, g: u64) -> bool {
        let data = self.data.load(Acquire) as *const ();
        let call = self.call.load(Acquire);
        let mut ran = false;
        let mut s = self.state.load(Acquire);
        loop {
            let (sg, n, i) = (gen_of(s), (s >> 20) & FIELD, s & FIELD);
            if sg != g || i >= n {
                return ran;
            }
            match self.state.compare_exchange_weak(s, s + 1, AcqRel, Acquire) {
                Ok(_) => {
                    // SAFETY: the claim succeeded for generation `g` with `i < n`, so job `g`
                    // is unfinished and `data`/`call` (read after seeing `g`) are its own.
                    let task = std::panic::AssertUnwindSafe(|| unsafe {
                        let f: Trampoline = std::mem::transmute::<usize, Trampoline>(call);
                        f(data, i as usize);
                    });
                    // A panicking task still counts as done, so the caller never hangs.
                    if std::panic::catch_unwind(task).is_err() {
                        self.panicked.store(true, SeqCst);
                    }
                    self.done.fetch_add(1, Release);
                    ran = true;
                    s = self.state.load(Acquire);
                }
                Err(now) => s = now,
            }
        }
    }

    fn worker(self: Arc<Self>) {
        let mut seen = gen_of(self.state.load(Acquire));
        loop {
            let mut spins = 0;
            loop {
                if self.shutdown.load(Acquire) {
                    return;
                }
                let g = gen_of(self.state.load(Acquire));
                if g != seen {
                    seen = g;
                    self.work(g);
                    spins = 0;
                    continue;
                }
                spins += 1;
                if spins > SPIN {
                    break;
                }
                std::hint::spin_loop();
            }
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.sleepers.fetch_add(1, SeqCst);
            let g = gen_of(self.state.load(SeqCst));
            if g == seen && !self.shutdown.load(SeqCst) {
                let _g = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            self.sleepers.fetch_sub(1, SeqCst);
        }
    }
}

impl Pool {
    /// A pool of `threads` threads in all (the caller counts as one).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let inner = Arc::new(Inner {
            state: AtomicU64::new(0),
            data: AtomicUsize::new(0),
            call: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        for _ in 1..threads {
            let w = inner.clone();
            std::thread::Builder::new()
                .name("ferrolm-worker".into())
                .spawn(move || w.worker())
                .expect("spawning a worker thread");
        }
        Pool {
            inner,
            threads,
            publish: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// How many of `n` output columns one task takes: one contiguous run per thread. Each
    /// thread then streams one long stretch of weight rows, which the hardware prefetchers
    /// follow best; finer chunks that threads pick up in turn measured 30% slower in decode
    /// (`examples/stream.rs`: 285 vs 200 products a second on SmolLM2's shapes).
    pub fn column_chunk(&self, n: usize) -> usize {
        n.div_ceil(self.threads)
            .next_multiple_of(8)
            .max(8)
            .min(n.max(1))
    }

    /// Runs `f(0) .. f(n - 1)` across the pool and returns when all have finished.
    pub fn run<F: Fn(usize) + Sync>(&self, n: usize, f: F) {
        if n == 0 {
            return;
        }
        if n == 1 || self.threads == 1 {
            (0..n).for_each(f);
            return;
        }
        assert!(n <= MAX_TASKS, "{n} tasks in one job");
        let _one = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let s = &self.inner;
        let g = (gen_of(s.state.load(Acquire)) + 1) & ((1 << 24) - 1);
        s.data.store(&f as *const F as usize, Release);
        s.call
            .store(trampoline::<F> as Trampoline as usize, Release);
        s.done.store(0, Release);
        s.state.store((g << 40) | ((n as u64) << 20), SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(g);
        while s.done.load(Acquire) < n {
            std::hint::spin_loop();
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a task of a parallel loop panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, SeqCst);
        let _l = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.wake.notify_all();
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub struct SharedOut(*mut f32);
// SAFETY: users write disjoint indices only (see `par_columns`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub fn new(y: &mut [f32]) -> SharedOut {
        SharedOut(y.as_mut_ptr())
    }

    /// # Safety
    /// `start..start + len` must lie inside the slice given to `new`, which must outlive the
    /// returned slice, and no two live slices may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Fills `y (m, n)` by output columns: `f(j, i)` gives element `(i, j)`. Columns are split into
/// a few contiguous ranges per thread, so each task walks its weight rows once for all rows.
pub fn par_columns(y: &mut [f32], m: usize, n: usize, f: impl Fn(usize, usize) -> f32 + Sync) {
    assert_eq!(y.len(), m * n);
    let pool = global();
    let chunk = pool.column_chunk(n);
    let out = SharedOut(y.as_mut_ptr());
    pool.run(n.div_ceil(chunk), |c| {
        for j in c * chunk..((c + 1) * chunk).min(n) {
            for i in 0..m {
                // SAFETY: (i, j) is in bounds, and each j belongs to exactly one task.
                unsafe { out.slice(i * n + j, 1)[0] = f(j, i) };
            }
        }
    });
}

/// A pointer to `Vec` elements that tasks fill at disjoint indices.
struct SendPtr<T>(*mut T);
// SAFETY: tasks write disjoint elements only (see `map`).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl Pool {
    /// `[f(0), .., f(n - 1)]`, computed across the pool in contiguous runs.
    pub fn map<T: Send + Default>(&self, n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
        let mut out: Vec<T> = (0..n).map(|_| T::default()).collect();
        let ptr = SendPtr(out.as_mut_ptr());
        let chunk = n.div_ceil(self.threads * 2).max(1);
        self.run(n.div_ceil(chunk), |c| {
            let p = &ptr;
            for i in c * chunk..((c + 1) * chunk).min(n) {
                // SAFETY: `i < n` lies in `out`, and each index belongs to one task.
                unsafe { *p.0.add(i) = f(i) };
            }
        });
        out
    }
}

/// Splits `y` into runs of whole rows (`row` floats each) and calls `f(first_row, run)` for
/// each run across the pool; small inputs run as one piece on the caller.
pub fn par_rows(y: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = y.len() / row.max(1);
    let pool = global();
    if y.len() < 16_384 || rows < 2 || pool.threads() == 1 {
        f(0, y);
        return;
    }
    let runs = (pool.threads() * 2).min(rows);
    let per = rows.div_ceil(runs);
    let out = SharedOut(y.as_mut_ptr());
    pool.run(rows.div_ceil(per), |r| {
        let (r0, r1) = (r * per, ((r + 1) * per).min(rows));
        // SAFETY: runs of rows are disjoint and inside `y`.
        f(r0, unsafe { out.slice(r0 * row, (r1 - r0) * row) });
    });
}

/// The process-wide pool: `FERROLM_THREADS`, else `RAYON_NUM_THREADS`, else every core.
pub fn global() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let n = ["FERROLM_THREADS", "RAYON_NUM_THREADS"]
            .iter()
            .find_map(|v| std::env::var(v).ok()?.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            });
        Pool::new(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_exactly_once_across_many_jobs() {
        let pool = Pool::new(3);
        for n in [1usize, 2, 3, 7, 64, 1000] {
            let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, |i| {
                    hits[i].fetch_add(1, Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Relaxed) == 50), "n = {n}");
        }
    }

    #[test]
    fn a_panicking_task_is_reported_not_hung() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, |i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, |_| {
            count.fetch_add(1, Relaxed);
        });
        assert_eq!(count.load(Relaxed), 8);
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = Pool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(10, |i| {
            sum.fetch_add(i, Relaxed);
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        pool.run(10, |i| {
            sum.fetch_add(i, Relaxed);
        });
        assert_eq!(sum.load(Relaxed), 90);
    }

    #[test]
    fn concurrent_callers_are_serialised() {
        let pool = Arc::new(Pool::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (p, t) = (pool.clone(), total.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        p.run(5, |_| {
                            t.fetch_add(1, Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(total.load(Relaxed), 4 * 100 * 5);
    }
}
