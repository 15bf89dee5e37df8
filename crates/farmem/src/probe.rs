//! The mechanism floor: what the bare kernel operations behind a fault cost on this
//! machine, measured the way farmem's own faults are (from the faulting access to its
//! return), so that the engine's figures can stand beside them in the same run.
//!
//! - `sigbus+copy`: a missing fault raising SIGBUS in the faulting thread, whose handler
//!   does nothing but `UFFDIO_COPY` one page from a static buffer.
//! - `sigbus+continue`: the same for a minor fault resolved by `UFFDIO_CONTINUE`.
//! - `thread+copy`: a missing fault resolved by a handler thread blocked in `poll(2)`
//!   (a wake-up across CPUs), and the same with the handler busy-polling.

use crate::sys::mem::{Memfd, Zapper};
use crate::sys::signal;
use crate::sys::uffd::{self, Uffd, UffdMsg};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::time::Instant;

const PAGE: usize = 4096;

/// Latency figures of one probe, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Floor {
    /// Accesses measured.
    pub samples: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Floor {
    /// Summarises nanosecond samples.
    pub fn of(mut ns: Vec<u64>) -> Floor {
        if ns.is_empty() {
            return Floor::default();
        }
        ns.sort_unstable();
        let q = |f: f64| ns[((ns.len() as f64 * f) as usize).min(ns.len() - 1)] as f64 / 1e3;
        Floor {
            samples: ns.len(),
            p50_us: q(0.5),
            p99_us: q(0.99),
            mean_us: ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
        }
    }
}

static PROBE_LOCK: Mutex<()> = Mutex::new(());
static BASE: AtomicUsize = AtomicUsize::new(0);
static LEN: AtomicUsize = AtomicUsize::new(0);
static UFFD: AtomicPtr<Uffd> = AtomicPtr::new(std::ptr::null_mut());
static CONTINUE: AtomicBool = AtomicBool::new(false);
static SRC: [u8; PAGE] = [0x5a; PAGE];

fn on_sigbus(trap: &signal::Trap) -> bool {
    let addr = trap.addr;
    let base = BASE.load(Acquire);
    if base == 0 || addr < base || addr >= base + LEN.load(Acquire) {
        return false;
    }
    let page = addr & !(PAGE - 1);
    // SAFETY: UFFD points at a Uffd that outlives the probe (BASE is cleared first).
    let u = unsafe { &*UFFD.load(Acquire) };
    let _ = if CONTINUE.load(Relaxed) {
        u.cont(page, PAGE)
    } else {
        // SAFETY: SRC is a static page outside every registered range.
        unsafe { u.copy(page, SRC.as_ptr(), PAGE) }
    };
    true
}

fn order(pages: usize) -> Vec<usize> {
    // A fixed pseudo-random permutation, so faults do not hit neighbouring pages.
    let mut v: Vec<usize> = (0..pages).collect();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

/// Times one read of each page of `base` in a random order.
fn time_reads(base: *const u8, pages: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(pages);
    for p in order(pages) {
        let t = Instant::now();
        // SAFETY: `base` maps `pages` pages; a fault is resolved by the probe's handler.
        unsafe { std::ptr::read_volatile(base.add(p * PAGE)) };
        out.push(t.elapsed().as_nanos() as u64);
    }
    out
}

/// `sigbus+copy` (minor: false) or `sigbus+continue` (minor: true) over `pages` faults.
pub fn sigbus(pages: usize, minor: bool) -> std::io::Result<Floor> {
    let _g = PROBE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let len = pages * PAGE;
    let fd = Memfd::new(c"farmem-probe", len)?;
    let map = fd.map(len)?;
    let u = Uffd::new(
        uffd::feature::SIGBUS | uffd::feature::MISSING_SHMEM | uffd::feature::MINOR_SHMEM,
        false,
    )?;
    u.register(
        map.ptr() as usize,
        len,
        uffd::REGISTER_MODE_MISSING | uffd::REGISTER_MODE_MINOR,
    )?;
    signal::install(on_sigbus)?;
    UFFD.store(&u as *const Uffd as *mut Uffd, Release);
    LEN.store(len, Release);
    CONTINUE.store(false, Relaxed);
    BASE.store(map.ptr() as usize, Release);
    let mut ns = time_reads(map.ptr(), pages);
    if minor {
        // Everything is in the page cache now: unmap it all, then time the minor faults.
        Zapper::new().zap(&[libc::iovec {
            iov_base: map.ptr().cast(),
            iov_len: len,
        }])?;
        CONTINUE.store(true, Relaxed);
        ns = time_reads(map.ptr(), pages);
    }
    BASE.store(0, Release);
    UFFD.store(std::ptr::null_mut(), Release);
    Ok(Floor::of(ns))
}

/// `thread+copy`: faults resolved by a handler thread, blocked in poll or busy-polling.
pub fn thread(pages: usize, busy_poll: bool) -> std::io::Result<Floor> {
    let len = pages * PAGE;
    let fd = Memfd::new(c"farmem-probe", len)?;
    let map = fd.map(len)?;
    let u = Uffd::new(uffd::feature::MISSING_SHMEM, true)?;
    u.register(map.ptr() as usize, len, uffd::REGISTER_MODE_MISSING)?;
    let stop = AtomicBool::new(false);
    let ns = std::thread::scope(|s| {
        s.spawn(|| {
            let mut msgs = [UffdMsg::default(); 16];
            while !stop.load(Relaxed) {
                if !busy_poll {
                    // A timeout lets the loop see `stop`.
                    crate::sys::event::wait_readable_for(u.raw(), 50);
                }
                let n = u.read_msgs(&mut msgs).unwrap_or(0);
                for m in &msgs[..n] {
                    if m.event == uffd::EVENT_PAGEFAULT {
                        let page = m.address as usize & !(PAGE - 1);
                        // SAFETY: SRC is a static page outside every registered range.
                        let _ = unsafe { u.copy(page, SRC.as_ptr(), PAGE) };
                    }
                }
                if busy_poll && n == 0 {
                    std::hint::spin_loop();
                }
            }
        });
        let ns = time_reads(map.ptr(), pages);
        stop.store(true, Relaxed);
        ns
    });
    Ok(Floor::of(ns))
}
