//! fork(2) with far memory: the child gets a snapshot.
//!
//! By default a region is left out of a forked child (`MADV_DONTFORK`). A program that
//! forks to snapshot its memory (Redis BGSAVE) needs the child to see every region
//! exactly as it was at fork time, while the parent goes on changing and evicting its
//! own. [`install_handlers`] registers `pthread_atfork` handlers that do this:
//!
//! ```text
//!  prepare (parent)  close the gate: wait until no fault, eviction or region call is
//!                    in flight, and hold new ones; unmap every region's pages (except
//!                    pinned ones), so that no parent thread can change a page without
//!                    faulting, which waits at the gate
//!  fork
//!  child             copy the resident pages out of each region's memfd into a new
//!                    memfd of its own, map it at the same address, register a new
//!                    userfaultfd, open a new pidfd for zapping, start new reclaimer
//!                    (and handler) threads; the far tier is the parent's, copied by
//!                    fork itself (anonymous memory, copy-on-write), or made the child's
//!                    own by `Backend::after_fork_child` (the remote tier asks the node
//!                    for a copy of the session). Then tell the parent.
//!  parent            wait for the child's word (or its death), open the gate
//! ```
//!
//! The parent is held for the time the child takes to copy its resident pages (at most
//! the budget; about 5 GB/s here). Page states need no change: a page that was mapped in
//! the parent is ACTIVE but unmapped in the child, which the fault path already handles
//! (it maps it again).
//!
//! The gate costs two atomic operations per fault, and only once handlers are installed.

use std::sync::atomic::AtomicI32;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, Weak};

use crate::state::gate;
use crate::state::region::RegionState;
use crate::state::shared::Shared;
use crate::sys::event;

/// Every region and engine alive, for the handlers.
static REGIONS: Mutex<Vec<Weak<RegionState>>> = Mutex::new(Vec::new());
static ENGINES: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
/// What `prepare` collected, for `parent` and `child`.
static FORKING: Mutex<Vec<Arc<RegionState>>> = Mutex::new(Vec::new());
static PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

pub(crate) fn track_region(r: &Arc<RegionState>) {
    let mut v = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(r));
}

pub(crate) fn track_engine(s: &Arc<Shared>) {
    let mut v = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(s));
}

/// Registers the fork handlers (once per process): from then on, a child created by
/// `fork(2)` sees a snapshot of every region. Regions created before or after both count.
pub fn install_handlers() -> Result<(), crate::Error> {
    if gate::install() {
        return Ok(());
    }
    if let Err(e) = event::at_fork(on_prepare, on_parent, on_child) {
        gate::uninstall();
        return Err(crate::Error::os(
            "register fork handlers (pthread_atfork)",
            e,
        ));
    }
    Ok(())
}

extern "C" fn on_prepare() {
    prepare();
}
extern "C" fn on_parent() {
    parent();
}
extern "C" fn on_child() {
    child();
}

/// Closes the gate and unmaps every region (see the module docs). Called before fork.
pub fn prepare() {
    gate::close_and_drain();
    let live: Vec<Arc<RegionState>> = REGIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    let _zapping = crate::pin::zapping();
    let mut pins = Vec::new();
    crate::pin::ranges(&mut pins);
    pins.sort_unstable();
    for r in &live {
        unmap_unpinned(r, &pins);
    }
    *FORKING.lock().unwrap_or_else(|e| e.into_inner()) = live;
    // Without the pipe the parent does not wait for the child's copy: it would change
    // pages the child is still copying, so a fork without one stops loudly.
    match event::pipe() {
        Ok((r, w)) => {
            PIPE[0].store(r, SeqCst);
            PIPE[1].store(w, SeqCst);
        }
        Err(e) => crate::fatal::die_io("before fork: could not create a pipe", &e),
    }
}

/// Unmaps the touched part of `r`, leaving pinned ranges mapped.
fn unmap_unpinned(r: &RegionState, pins: &[(usize, usize)]) {
    let end = r.page_addr(r.high_water());
    let mut at = r.base;
    let mut iov = Vec::new();
    for &(s, e) in pins {
        // Whole pages stay mapped (2 MiB ones cannot be unmapped in part).
        let s = r.base + (s.max(r.base) - r.base) / r.unit * r.unit;
        let e = r.base + (e.min(end).max(r.base) - r.base).next_multiple_of(r.unit);
        let (s, e) = (s, e.min(end));
        if s >= e || e <= at {
            continue;
        }
        if s > at {
            iov.push(iovec(at, s - at));
        }
        at = at.max(e);
    }
    if end > at {
        iov.push(iovec(at, end - at));
    }
    if let Err(e) = r.shared.zapper.zap(&iov) {
        crate::fatal::die_io("could not unmap a region before fork (madvise)", &e);
    }
}

fn iovec(at: usize, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: len,
    }
}

/// In the parent after fork: waits for the child to have copied what it needs.
pub fn parent() {
    let (r, w) = (PIPE[0].swap(-1, SeqCst), PIPE[1].swap(-1, SeqCst));
    if w >= 0 {
        event::close(w);
    }
    if r >= 0 {
        // The word, or EOF: the child died before copying, nothing to wait for.
        event::wait_byte(r);
        event::close(r);
    }
    FORKING.lock().unwrap_or_else(|e| e.into_inner()).clear();
    gate::open();
}

/// In the child after fork: takes the regions over as its own (see the module docs).
pub fn child() {
    let regions = std::mem::take(&mut *FORKING.lock().unwrap_or_else(|e| e.into_inner()));
    crate::pin::clear_all();
    let engines: Vec<Arc<Shared>> = ENGINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for s in &engines {
        if let Err(e) = s.zapper.after_fork() {
            crate::fatal::die_io("after fork: could not open a pidfd on the child", &e);
        }
        if let Err(e) = s.backend.after_fork_child() {
            crate::fatal::die_tier(
                "give a forked child its own copy of the far pages",
                s.backend.name(),
                &e,
            );
        }
    }
    for s in &engines {
        // The parent's huge pages are the parent's to give back; the child's copy of the
        // resident ones needs its own.
        // A thread of the parent that held this lock at the fork does not exist here.
        let mut held = match s.huge_pages.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => continue,
        };
        if let Some(r) = held.take() {
            let pages = r.pages();
            r.forget_in_child();
            match crate::sys::hugepages::Reservation::take_in_child(pages) {
                Ok(mine) => *held = Some(mine),
                Err(e) => crate::sys::signal::fatal(&[
                    b"farmem: fatal: after fork: the child's copy of its 2 MiB pages: ",
                    e.as_bytes(),
                    b"\n",
                ]),
            }
        }
    }
    for r in &regions {
        if let Err(e) = r.take_over_after_fork() {
            crate::fatal::die_io(
                "after fork: could not give the child its own copy of a region",
                &e,
            );
        }
    }
    for s in &engines {
        if let Err(e) = crate::reclaim::spawn(s) {
            crate::fatal::die_io("after fork: could not start the reclaimer thread", &e);
        }
    }
    for r in &regions {
        restart_handlers(r);
    }
    drop(regions);
    let (rfd, w) = (PIPE[0].swap(-1, SeqCst), PIPE[1].swap(-1, SeqCst));
    if w >= 0 {
        event::send_byte(w);
        event::close(w);
    }
    if rfd >= 0 {
        event::close(rfd);
    }
    gate::reset_in_child();
}

/// In a forked child: starts a region's handler threads again (thread mode).
fn restart_handlers(r: &Arc<RegionState>) {
    let stop = r.stop_fd.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..r.handler_count.load(std::sync::atomic::Ordering::Relaxed) {
        if let Err(e) = crate::region::spawn_handler(r, stop, i) {
            crate::fatal::die_io("after fork: could not start a fault handler thread", &e);
        }
    }
}
