//! The C library's entry points the preload wraps, besides the malloc family (`entry.rs`).
//!
//! In the in-thread fault mode the kernel cannot fault a far page in: a system call that
//! reads or writes a far buffer would fail with EFAULT. The entry points that pass buffers
//! to the kernel are wrapped: a buffer in the far heap is pinned (the reclaimer leaves it
//! mapped) and touched (faulted in) before the real call, and EFAULT is retried after
//! touching again. A buffer outside the far heap costs a range check. System calls made
//! outside these entry points are the syscall guard's (`crate::sud`). See DESIGN.md,
//! "The kernel touching far memory" and "The syscall guard".
//!
//! Here: the machinery every wrapper shares (`real!` finds the C library's function;
//! `guarded` describes a system call, pins and touches its far buffers, makes it and
//! retries EFAULT; the guard runs the same `call_pinned` loop). By concern:
//!
//! - `describe`: what each system call hands the kernel, the one table the wrappers and
//!   the syscall guard both read;
//! - `syscalls`: system calls on buffers (read, write and their positional, vectored and
//!   socket variants, epoll, poll, sockopts, getrandom, the path calls, stat);
//! - `stdio`: fread and fwrite;
//! - `futex`: pthread mutexes and condition variables, sem_wait, `syscall(SYS_futex)`;
//! - `mmap`: large anonymous mmaps from the far heap, munmap, mremap, madvise;
//! - `signals`: sigaction, signal and the signal masks (SIGBUS and SIGSYS stay usable);
//! - `threads`: pthread_create (a thread the guarded program starts is guarded too).

use libc::{c_int, c_long, c_void, size_t, ssize_t};

use crate::heap::owns;
use crate::rt;
use describe::{Bufs, describe};
use farmem::pin::Pin;

/// Buffers one call pins, at most (more are touched only).
const MAX_PINS: usize = 8;
/// Retries of a call that still got EFAULT (a page evicted between touch and call).
const EFAULT_RETRIES: usize = 1000;

fn errno() -> c_int {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Whether `len` bytes at `p` reach into the far heap.
#[inline]
fn in_heap(p: usize, len: usize) -> bool {
    len > 0 && (owns(p) || owns(p.saturating_add(len - 1)))
}

/// A system call's six argument registers from a wrapper's C arguments (the rest zero).
macro_rules! args {
    ($($x:expr),* $(,)?) => {{
        let given = [$($x as u64),*];
        let mut a = [0u64; 6];
        a[..given.len()].copy_from_slice(&given);
        a
    }};
}

/// Makes `call`, the C library's function for system call `nr` with arguments `a`, with
/// the far buffers [`describe`] finds pinned and touched, retrying on EFAULT.
#[inline]
fn guarded<R: Copy + PartialEq + From<i8>>(
    nr: c_long,
    a: [u64; 6],
    mut call: impl FnMut() -> R,
) -> R {
    let mut b = Bufs::new();
    describe(nr, &a, &mut b);
    if b.is_empty() {
        return call();
    }
    guarded_slow(nr, &a, &b, &mut call)
}

/// `guarded` for a call that names far buffers.
#[cold]
fn guarded_slow<R: Copy + PartialEq + From<i8>>(
    nr: c_long,
    a: &[u64; 6],
    b: &Bufs,
    call: &mut dyn FnMut() -> R,
) -> R {
    let mut tries = 0;
    call_pinned(nr, a, b, call, |&r| {
        let again = r == R::from(-1) && errno() == libc::EFAULT && tries < EFAULT_RETRIES;
        tries += usize::from(again);
        again
    })
}

/// The pins one call holds, released when dropped: its first `MAX_PINS` far buffers.
struct Pins {
    _pins: [Option<Pin>; MAX_PINS],
}

impl Pins {
    /// Pins the first far buffers of `b`, within the process's pin budget.
    fn new(b: &Bufs) -> Pins {
        let mut pins: [Option<Pin>; MAX_PINS] = Default::default();
        if b.is_empty() {
            return Pins { _pins: pins };
        }
        let limit = rt::rt().map_or(0, |r| r.pin_limit);
        for (slot, (p, l)) in pins.iter_mut().zip(b.iter()) {
            *slot = Pin::new(p, l, limit);
        }
        Pins { _pins: pins }
    }
}

/// Pins and touches the far ones among `objs`, (address, length) pairs: what a C library
/// function that is not one system call hands the kernel (a stdio buffer, a pthread
/// object's futex words). The pins last as long as the result.
fn pin_and_touch(objs: &[(usize, usize)]) -> Pins {
    let mut b = Bufs::new();
    for &(p, len) in objs {
        b.add(p as u64, len as u64);
    }
    let pins = Pins::new(&b);
    b.touch();
    pins
}

/// The loop both the wrappers and the syscall guard run around a system call on far
/// buffers: pins the far buffers `b` holds (system call `nr` with arguments `a`, as
/// [`describe`] found them), then touches them and makes `call` for as long as `again`
/// says its result is to be retried. Pinning first is what keeps a datagram safe: a
/// datagram that meets EFAULT is dropped by the kernel.
pub(crate) fn call_pinned<R>(
    nr: c_long,
    a: &[u64; 6],
    b: &Bufs,
    mut call: impl FnMut() -> R,
    mut again: impl FnMut(&R) -> bool,
) -> R {
    let pins = Pins::new(b);
    loop {
        b.touch();
        if b.overflowed() {
            // More far buffers than `b` keeps: describing the call touches them again.
            describe(nr, a, &mut Bufs::new());
        }
        let r = call();
        if !again(&r) {
            drop(pins);
            return r;
        }
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

pub(crate) mod describe;
mod futex;
mod mmap;
mod signals;
mod stdio;
mod syscalls;
mod threads;
