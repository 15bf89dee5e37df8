//! Futexes in far memory: pthread mutexes and condition variables, semaphores and
//! `syscall(SYS_futex)` (C++ atomics' wait, hand-made locks). A futex wait is the kernel
//! reading the futex word, so a far one is pinned and touched first.

use libc::c_int;

use super::{guarded, in_heap};
use crate::rt;
use farmem::pin::{Pin, touch};

fn pin_obj(p: usize, len: usize) -> Option<Pin> {
    if !in_heap(p, len) {
        return None;
    }
    let pin = Pin::new(p, len, rt::rt().map_or(0, |r| r.pin_limit));
    touch(p, len);
    pin
}

/// pthread_mutex_lock(3): the futex wait is the kernel's touch of the mutex word.
///
/// # Safety
/// pthread_mutex_lock's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_mutex_lock(m: *mut libc::pthread_mutex_t) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_mutex_lock",
        unsafe extern "C" fn(*mut libc::pthread_mutex_t) -> c_int
    );
    if !in_heap(m as usize, 1) {
        // SAFETY: forwarded.
        return unsafe { f(m) };
    }
    let t = real!(
        TRY,
        c"pthread_mutex_trylock",
        unsafe extern "C" fn(*mut libc::pthread_mutex_t) -> c_int
    );
    // SAFETY: forwarded.
    let r = unsafe { t(m) };
    if r != libc::EBUSY {
        return r;
    }
    let _pin = pin_obj(m as usize, std::mem::size_of::<libc::pthread_mutex_t>());
    // SAFETY: forwarded.
    unsafe { f(m) }
}

/// pthread_cond_wait(3).
///
/// # Safety
/// pthread_cond_wait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_cond_wait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_cond_wait",
        unsafe extern "C" fn(*mut libc::pthread_cond_t, *mut libc::pthread_mutex_t) -> c_int
    );
    let _a = pin_obj(c as usize, std::mem::size_of::<libc::pthread_cond_t>());
    let _b = pin_obj(m as usize, std::mem::size_of::<libc::pthread_mutex_t>());
    // SAFETY: forwarded.
    unsafe { f(c, m) }
}

/// pthread_cond_timedwait(3).
///
/// # Safety
/// pthread_cond_timedwait's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_cond_timedwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    t: *const libc::timespec,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_cond_timedwait",
        unsafe extern "C" fn(
            *mut libc::pthread_cond_t,
            *mut libc::pthread_mutex_t,
            *const libc::timespec,
        ) -> c_int
    );
    let _a = pin_obj(c as usize, std::mem::size_of::<libc::pthread_cond_t>());
    let _b = pin_obj(m as usize, std::mem::size_of::<libc::pthread_mutex_t>());
    let _c = pin_obj(t as usize, std::mem::size_of::<libc::timespec>());
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
    let _a = pin_obj(s as usize, std::mem::size_of::<libc::sem_t>());
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
        let op = (b as c_int) & 0x7f;
        let mut bufs = vec![(a as usize, 4)];
        if matches!(
            op,
            libc::FUTEX_REQUEUE
                | libc::FUTEX_CMP_REQUEUE
                | libc::FUTEX_WAKE_OP
                | libc::FUTEX_CMP_REQUEUE_PI
        ) {
            bufs.push((e as usize, 4));
        }
        // SAFETY: forwarded.
        return guarded(&bufs, || unsafe { f(n, a, b, c, d, e, g) });
    }
    // SAFETY: forwarded.
    unsafe { f(n, a, b, c, d, e, g) }
}
