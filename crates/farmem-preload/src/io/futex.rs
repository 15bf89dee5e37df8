//! Futexes in far memory: pthread mutexes and condition variables, semaphores and
//! `syscall(SYS_futex)` (C++ atomics' wait, hand-made locks). A futex wait is the kernel
//! reading the futex word, so a far one is pinned and touched first.
//!
//! `syscall(SYS_futex)` is one system call and is described by `io::describe`; the
//! pthread and semaphore functions are not (the C library may make no futex call, or
//! several), so they name their objects themselves.

use std::mem::size_of;

use libc::c_int;
use libc::{pthread_cond_t, pthread_mutex_t};

use super::{guarded, in_heap, pin_and_touch};

/// pthread_mutex_lock(3): the futex wait is the kernel's touch of the mutex word.
///
/// # Safety
/// pthread_mutex_lock's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_mutex_lock(m: *mut pthread_mutex_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_mutex_lock",
        unsafe extern "C" fn(*mut pthread_mutex_t) -> c_int
    );
    if !in_heap(m as usize, 1) {
        // SAFETY: forwarded.
        return unsafe { f(m) };
    }
    let t = real!(
        TRY,
        c"pthread_mutex_trylock",
        unsafe extern "C" fn(*mut pthread_mutex_t) -> c_int
    );
    // SAFETY: forwarded.
    let r = unsafe { t(m) };
    if r != libc::EBUSY {
        return r;
    }
    let _pins = pin_and_touch(&[(m as usize, size_of::<pthread_mutex_t>())]);
    // SAFETY: forwarded.
    unsafe { f(m) }
}

/// pthread_cond_wait(3).
///
/// # Safety
/// pthread_cond_wait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_cond_wait(
    c: *mut pthread_cond_t,
    m: *mut pthread_mutex_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_cond_wait",
        unsafe extern "C" fn(*mut pthread_cond_t, *mut pthread_mutex_t) -> c_int
    );
    let _pins = pin_and_touch(&[
        (c as usize, size_of::<pthread_cond_t>()),
        (m as usize, size_of::<pthread_mutex_t>()),
    ]);
    // SAFETY: forwarded.
    unsafe { f(c, m) }
}

/// pthread_cond_timedwait(3).
///
/// # Safety
/// pthread_cond_timedwait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_cond_timedwait(
    c: *mut pthread_cond_t,
    m: *mut pthread_mutex_t,
    t: *const libc::timespec,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_cond_timedwait",
        unsafe extern "C" fn(
            *mut pthread_cond_t,
            *mut pthread_mutex_t,
            *const libc::timespec,
        ) -> c_int
    );
    let _pins = pin_and_touch(&[
        (c as usize, size_of::<pthread_cond_t>()),
        (m as usize, size_of::<pthread_mutex_t>()),
        (t as usize, size_of::<libc::timespec>()),
    ]);
    // SAFETY: forwarded.
    unsafe { f(c, m, t) }
}

/// sem_wait(3).
///
/// # Safety
/// sem_wait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sem_wait(s: *mut libc::sem_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sem_wait",
        unsafe extern "C" fn(*mut libc::sem_t) -> c_int
    );
    let _pins = pin_and_touch(&[(s as usize, size_of::<libc::sem_t>())]);
    // SAFETY: forwarded.
    unsafe { f(s) }
}

/// syscall(2), for futexes in far memory (C++ atomics' wait, hand-made locks).
///
/// # Safety
/// syscall's contract. Declared with six arguments after the number: the C function is
/// variadic, and on x86-64 the extra arguments sit where these are read from.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn syscall(
    n: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
    d: libc::c_long,
    e: libc::c_long,
    g: libc::c_long,
) -> libc::c_long {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"syscall",
        unsafe extern "C" fn(
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
            libc::c_long,
        ) -> libc::c_long
    );
    if n == libc::SYS_futex {
        // SAFETY: forwarded.
        return guarded(n, args!(a, b, c, d, e, g), || unsafe {
            f(n, a, b, c, d, e, g)
        });
    }
    // SAFETY: forwarded.
    unsafe { f(n, a, b, c, d, e, g) }
}
