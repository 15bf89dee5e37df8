//! The fork gate: every fault, eviction and region call holds a pass while it runs, and a
//! fork waits until none is held (and holds new ones back) so that the child sees every
//! region in a consistent state. See `crate::fork` for the handlers that close it.
//!
//! Two atomic operations per pass, and only once the fork handlers are installed.

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};

static INSTALLED: AtomicBool = AtomicBool::new(false);
static CLOSED: AtomicBool = AtomicBool::new(false);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// A pass through the gate: while any is held, fork waits.
pub(crate) struct Pass(bool);

/// Enters the gate (nests within a thread); waits while a fork is being prepared.
#[inline]
pub(crate) fn enter() -> Pass {
    if !INSTALLED.load(Relaxed) {
        return Pass(false);
    }
    DEPTH.with(|d| {
        let depth = d.get();
        if depth > 0 {
            d.set(depth + 1);
            return Pass(true);
        }
        loop {
            ACTIVE.fetch_add(1, SeqCst);
            if !CLOSED.load(SeqCst) {
                d.set(1);
                return Pass(true);
            }
            ACTIVE.fetch_sub(1, SeqCst);
            while CLOSED.load(SeqCst) {
                std::thread::sleep(std::time::Duration::from_micros(50));
            }
        }
    })
}

impl Drop for Pass {
    #[inline]
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        DEPTH.with(|d| {
            let depth = d.get() - 1;
            d.set(depth);
            if depth == 0 {
                ACTIVE.fetch_sub(1, SeqCst);
            }
        });
    }
}

/// Turns the gate on; returns whether it already was.
pub(crate) fn install() -> bool {
    INSTALLED.swap(true, SeqCst)
}

/// Turns the gate off again (installing the fork handlers failed).
pub(crate) fn uninstall() {
    INSTALLED.store(false, SeqCst);
}

/// Passes this thread holds (0 or 1: nested passes count once).
fn own() -> usize {
    DEPTH.with(|d| d.get().min(1)) as usize
}

/// Closes the gate and waits until no other thread holds a pass.
pub(crate) fn close_and_drain() {
    CLOSED.store(true, SeqCst);
    // Our own thread may be inside the gate only if it forks from a farmem call, which
    // nothing does; wait for the others.
    let own = own();
    while ACTIVE.load(SeqCst) > own {
        std::thread::yield_now();
    }
}

/// Opens the gate.
pub(crate) fn open() {
    CLOSED.store(false, SeqCst);
}

/// In a forked child: only this thread exists, so only its own pass counts.
pub(crate) fn reset_in_child() {
    ACTIVE.store(own(), SeqCst);
    CLOSED.store(false, SeqCst);
}
