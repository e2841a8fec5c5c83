//! Opt-in per-operation timing for `ferrolm bench --profile`: scopes in the forward pass add
//! their wall time to a table by operation name. Off, a scope is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<Vec<(&'static str, f64, u64)>> = Mutex::new(Vec::new());

/// Turns timing on or off (and clears the table).
pub fn enable(on: bool) {
    ENABLED.store(on, Relaxed);
    take();
}

/// The table so far, `(operation, seconds, calls)` in first-seen order, and clears it.
pub fn take() -> Vec<(&'static str, f64, u64)> {
    std::mem::take(&mut *TABLE.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Times until dropped.
pub struct Scope {
    name: &'static str,
    t0: Option<Instant>,
}

pub fn scope(name: &'static str) -> Scope {
    Scope {
        name,
        t0: ENABLED.load(Relaxed).then(Instant::now),
    }
}

impl Scope {
    /// Runs `f` inside the scope.
    pub fn run<R>(self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let Some(t0) = self.t0 else { return };
        let dt = t0.elapsed().as_secs_f64();
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        match t.iter_mut().find(|(n, _, _)| *n == self.name) {
            Some(e) => {
                e.1 += dt;
                e.2 += 1;
            }
            None => t.push((self.name, dt, 1)),
        }
    }
}
