//! The syscall guard: system calls the program makes outside the wrapped C library entry
//! points (the `syscall` instruction itself, and the C library's internal calls) reach
//! far buffers safely (see `farmem::sys::sud` for the mechanism).
//!
//! Each trapped call is described by the memory it hands the kernel (`io::describe`, the
//! table the C library wrappers read too): buffers with their lengths, fixed-size
//! structures, NUL-terminated paths, iovec arrays and message headers. The far ones are
//! pinned and touched, the call is made, and EFAULT is retried after touching again
//! (`io::call_pinned`, the wrappers' loop). A call the table does not know gets the page
//! under every argument that points into the far heap, and on EFAULT a widening range
//! from each such pointer (up to 1 MiB) before the error is given back.
//!
//! On by default in the in-thread (sigbus) fault mode where the kernel has syscall user
//! dispatch; `FARMEM_SYSCALL_GUARD=0` (`farmem run --no-syscall-guard`) turns it off.

use farmem::pin::touch;
use farmem::sys::raw::syscall_raw;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::heap::owns;
use crate::io::call_pinned;
use crate::io::describe::{Bufs, describe};
use crate::rt;

/// System calls the guard made for the program, and how many of them named far memory.
pub(crate) static DISPATCHED: AtomicU64 = AtomicU64::new(0);
pub(crate) static DISPATCHED_FAR: AtomicU64 = AtomicU64::new(0);

const EFAULT: i64 = -(libc::EFAULT as i64);
/// Retries of a call that still got EFAULT with its buffers touched.
const RETRIES: usize = 64;

/// Makes one trapped system call (the dispatcher `farmem::sys::sud` calls).
pub(crate) fn dispatch(nr: i64, a: &[u64; 6]) -> i64 {
    DISPATCHED.fetch_add(1, Relaxed);
    let mut b = Bufs::new();
    describe(nr, a, &mut b);
    if b.is_empty() {
        // SAFETY: the program's own system call, as it made it.
        return unsafe { syscall_raw(nr, *a) };
    }
    DISPATCHED_FAR.fetch_add(1, Relaxed);
    let mut widen = 1usize;
    let mut tries = 0;
    let again = |&r: &i64| {
        if r != EFAULT || tries >= RETRIES {
            return false;
        }
        tries += 1;
        if b.guessed() && widen < 256 {
            // Unknown structure sizes: reach further from every far pointer argument.
            widen *= 4;
            for &p in a {
                if p != 0 && owns(p as usize) {
                    let (base, len) = rt::heap_range();
                    let end = (base + len).min(p as usize + widen * 4096);
                    touch(p as usize, end - p as usize);
                }
            }
        }
        true
    };
    // SAFETY: the program's own system call, as it made it (its far buffers pinned and
    // touched first).
    call_pinned(nr, a, &b, || unsafe { syscall_raw(nr, *a) }, again)
}

/// Installs the guard and turns it on for this (the main) thread.
pub(crate) fn start() -> Result<(), String> {
    farmem::sys::sud::install(dispatch).map_err(|e| {
        format!("cannot start the syscall guard (syscall user dispatch, Linux 5.11+): {e}; run with --no-syscall-guard or --fault-mode thread")
    })?;
    farmem::sys::sud::arm_this_thread()
        .map_err(|e| format!("cannot turn on the syscall guard: {e}"))
}
