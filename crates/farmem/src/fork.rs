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

use std::cell::Cell;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize};
use std::sync::{Arc, Mutex, Weak};

use crate::engine::Shared;
use crate::region::RegionInner;

static INSTALLED: AtomicBool = AtomicBool::new(false);
static CLOSED: AtomicBool = AtomicBool::new(false);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Every region and engine alive, for the handlers.
static REGIONS: Mutex<Vec<Weak<RegionInner>>> = Mutex::new(Vec::new());
static ENGINES: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());
/// What `prepare` collected, for `parent` and `child`.
static FORKING: Mutex<Vec<Arc<RegionInner>>> = Mutex::new(Vec::new());
static PIPE: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

pub(crate) fn track_region(r: &Arc<RegionInner>) {
    let mut v = REGIONS.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(r));
}

pub(crate) fn track_engine(s: &Arc<Shared>) {
    let mut v = ENGINES.lock().unwrap_or_else(|e| e.into_inner());
    v.retain(|w| w.strong_count() > 0);
    v.push(Arc::downgrade(s));
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

/// Registers the fork handlers (once per process): from then on, a child created by
/// `fork(2)` sees a snapshot of every region. Regions created before or after both count.
pub fn install_handlers() -> Result<(), crate::Error> {
    if INSTALLED.swap(true, SeqCst) {
        return Ok(());
    }
    // SAFETY: three extern "C" functions with no arguments, as pthread_atfork expects.
    let rc = unsafe { libc::pthread_atfork(Some(on_prepare), Some(on_parent), Some(on_child)) };
    if rc != 0 {
        INSTALLED.store(false, SeqCst);
        return Err(crate::Error::os(
            "register fork handlers (pthread_atfork)",
            std::io::Error::from_raw_os_error(rc),
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
    CLOSED.store(true, SeqCst);
    // Our own thread may be inside the gate only if it forks from a farmem call, which
    // nothing does; wait for the others.
    let own = DEPTH.with(|d| d.get().min(1)) as usize;
    while ACTIVE.load(SeqCst) > own {
        std::thread::yield_now();
    }
    let live: Vec<Arc<RegionInner>> = REGIONS
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
    let mut fds = [-1; 2];
    // SAFETY: a valid two-int array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
        PIPE[0].store(fds[0], SeqCst);
        PIPE[1].store(fds[1], SeqCst);
    }
}

/// Unmaps the touched part of `r`, leaving pinned ranges mapped.
fn unmap_unpinned(r: &RegionInner, pins: &[(usize, usize)]) {
    let end = r.page_addr(r.high_water());
    let mut at = r.base;
    let mut iov = Vec::new();
    for &(s, e) in pins {
        let (s, e) = (s.max(r.base), e.min(end));
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
        // SAFETY: our own descriptor.
        unsafe { libc::close(w) };
    }
    if r >= 0 {
        let mut b = 0u8;
        loop {
            // SAFETY: reading one byte into a local.
            let n = unsafe { libc::read(r, (&mut b as *mut u8).cast(), 1) };
            if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break; // the word, or EOF: the child died before copying, nothing to wait for
        }
        // SAFETY: our own descriptor.
        unsafe { libc::close(r) };
    }
    FORKING.lock().unwrap_or_else(|e| e.into_inner()).clear();
    CLOSED.store(false, SeqCst);
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
    for r in &regions {
        if let Err(e) = r.take_over_after_fork() {
            crate::fatal::die_io(
                "after fork: could not give the child its own copy of a region",
                &e,
            );
        }
    }
    for s in &engines {
        s.restart_after_fork();
    }
    for r in &regions {
        r.restart_handlers_after_fork();
    }
    drop(regions);
    let (rfd, w) = (PIPE[0].swap(-1, SeqCst), PIPE[1].swap(-1, SeqCst));
    if w >= 0 {
        // SAFETY: our own descriptors; one byte from a local.
        unsafe {
            libc::write(w, [1u8].as_ptr().cast(), 1);
            libc::close(w);
        }
    }
    if rfd >= 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(rfd) };
    }
    ACTIVE.store(DEPTH.with(|d| d.get().min(1)) as usize, SeqCst);
    CLOSED.store(false, SeqCst);
}
