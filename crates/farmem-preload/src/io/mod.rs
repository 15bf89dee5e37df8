//! The C library's entry points the preload wraps, besides the malloc family (`entry.rs`).
//!
//! In the in-thread fault mode the kernel cannot fault a far page in: a system call that
//! reads or writes a far buffer would fail with EFAULT. The entry points that pass buffers
//! to the kernel are wrapped: a buffer in the far heap is pinned (the reclaimer leaves it
//! mapped) and touched (faulted in) before the real call, and EFAULT is retried after
//! touching again. Buffers outside the far heap cost one range check. System calls made
//! outside these entry points are the syscall guard's (`crate::sud`). See DESIGN.md,
//! "The kernel touching far memory" and "The syscall guard".
//!
//! Here: the machinery every wrapper shares (`real!` finds the C library's function,
//! `guarded` pins, touches, calls and retries). By concern:
//!
//! - `syscalls`: system calls on buffers (read, write and their positional, vectored and
//!   socket variants, epoll, poll, sockopts, getrandom, the path calls, stat);
//! - `stdio`: fread and fwrite;
//! - `futex`: pthread mutexes and condition variables, sem_wait, `syscall(SYS_futex)`;
//! - `mmap`: large anonymous mmaps from the far heap, munmap, mremap, madvise;
//! - `signals`: sigaction, signal and the signal masks (SIGBUS and SIGSYS stay usable);
//! - `threads`: pthread_create (a thread the guarded program starts is guarded too).

use libc::{c_int, c_void, size_t, ssize_t};

use crate::heap::owns;
use crate::rt;
use farmem::pin::{Pin, touch};

/// Most buffers one call guards (more are touched only).
const MAX_BUFS: usize = 8;
/// Retries of a call that still got EFAULT (a page evicted between touch and call).
const EFAULT_RETRIES: usize = 1000;

fn errno() -> c_int {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn in_heap(p: usize, len: usize) -> bool {
    len > 0 && (owns(p) || owns(p.saturating_add(len - 1)))
}

/// Pins and touches the far ones among `bufs`, then runs `call`, retrying on EFAULT.
#[inline]
fn guarded<R: Copy + PartialEq + From<i8>>(
    bufs: &[(usize, usize)],
    mut call: impl FnMut() -> R,
) -> R {
    if !bufs.iter().any(|&(p, l)| in_heap(p, l)) {
        return call();
    }
    guarded_slow(bufs, &mut call)
}

#[cold]
fn guarded_slow<R: Copy + PartialEq + From<i8>>(
    bufs: &[(usize, usize)],
    call: &mut dyn FnMut() -> R,
) -> R {
    let limit = rt::rt().map_or(0, |r| r.pin_limit);
    let mut pins: [Option<Pin>; MAX_BUFS] = Default::default();
    for (i, &(p, l)) in bufs.iter().enumerate() {
        if in_heap(p, l) && i < MAX_BUFS {
            pins[i] = Pin::new(p, l, limit);
        }
    }
    let mut tries = 0;
    loop {
        for &(p, l) in bufs {
            if in_heap(p, l) {
                touch(p, l);
            }
        }
        let r = call();
        if r == R::from(-1) && errno() == libc::EFAULT && tries < EFAULT_RETRIES {
            tries += 1;
            continue;
        }
        drop(pins);
        return r;
    }
}

/// The largest piece of a big read or write done at once (pinned within the budget).
fn chunk() -> usize {
    rt::rt().map_or(1 << 20, |r| (r.pin_limit / 4).clamp(16 << 10, 1 << 20))
}

macro_rules! real {
    ($slot:ident, $name:literal, $ty:ty) => {{
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        static $slot: AtomicUsize = AtomicUsize::new(0);
        let mut f = $slot.load(Relaxed);
        if f == 0 {
            f = $crate::io::resolve($name);
            $slot.store(f, Relaxed);
        }
        // SAFETY: the next definition of this libc function, which has this type.
        unsafe { std::mem::transmute::<usize, $ty>(f) }
    }};
}

fn resolve(name: &std::ffi::CStr) -> usize {
    // SAFETY: dlsym with a NUL-terminated name.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if f == 0 {
        rt::die(&format!(
            "cannot find the C library's {}",
            name.to_string_lossy()
        ));
    }
    f
}

/// Resolves the wrapped functions at start-up, so that no later call has to.
pub(crate) fn resolve_all() {
    // A sample that exercises the lazy path once; the rest resolve on first use.
    let _ = real!(
        R0,
        c"read",
        unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t
    );
}

mod futex;
mod mmap;
mod signals;
mod stdio;
mod syscalls;
mod threads;
