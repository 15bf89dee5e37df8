//! Signals: farmem's SIGBUS handler stays, and SIGBUS is never blocked (a far fault with
//! SIGBUS blocked would kill the process). With the syscall guard on, the program's
//! handlers run guarded and SIGSYS is never blocked either.

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use libc::{c_int, c_void};

use crate::rt;

static SIG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// sigaction(2): a program's SIGBUS handler becomes the one farmem falls back to for
/// addresses that are not far memory; SIGBUS is taken out of every handler's mask (a
/// handler that touched far memory with SIGBUS blocked would kill the process).
///
/// # Safety
/// sigaction's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sigaction",
        unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int
    );
    let ours = rt::ready() && farmem::sys::signal::installed();
    let guard = rt::GUARD_ON.load(Relaxed);
    if sig == libc::SIGSYS && guard {
        // The syscall guard's handler stays; the program's gets the SIGSYS it does not
        // raise (seccomp's).
        let _g = SIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let (h, fl) = if act.is_null() {
            let cur = farmem::sys::sud::replace_program_sigsys(0, 0);
            farmem::sys::sud::replace_program_sigsys(cur.0, cur.1);
            cur
        } else {
            // SAFETY: the caller's valid sigaction.
            let a = unsafe { &*act };
            farmem::sys::sud::replace_program_sigsys(a.sa_sigaction, a.sa_flags as usize)
        };
        if !old.is_null() {
            // SAFETY: the caller's result slot; a zeroed sigaction is valid.
            unsafe {
                *old = std::mem::zeroed();
                (*old).sa_sigaction = h;
                (*old).sa_flags = fl as c_int;
            }
        }
        return 0;
    }
    if sig == libc::SIGBUS && ours {
        let _g = SIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if act.is_null() {
            // SAFETY: read the fallback without changing it (write it back unchanged).
            unsafe {
                let mut cur: libc::sigaction = std::mem::zeroed();
                cur.sa_sigaction = libc::SIG_DFL;
                let prev = farmem::sys::signal::replace_previous(&cur);
                farmem::sys::signal::replace_previous(&prev);
                if !old.is_null() {
                    *old = prev;
                }
            }
            return 0;
        }
        // SAFETY: the caller's valid sigaction.
        let prev = unsafe { farmem::sys::signal::replace_previous(&*act) };
        if !old.is_null() {
            // SAFETY: the caller's result slot.
            unsafe { *old = prev };
        }
        return 0;
    }
    if guard && sig != libc::SIGBUS {
        // SAFETY: the caller's valid structures, forwarded through our trampoline.
        return unsafe { sigaction_guarded(f, sig, act, old) };
    }
    if act.is_null() || !ours {
        // SAFETY: forwarded.
        return unsafe { f(sig, act, old) };
    }
    // SAFETY: the caller's valid sigaction, copied.
    let mut a = unsafe { *act };
    // SAFETY: a valid sigset inside our copy.
    unsafe { libc::sigdelset(&mut a.sa_mask, libc::SIGBUS) };
    // SAFETY: forwarded with our copy.
    unsafe { f(sig, &a, old) }
}

/// The program's handlers, per signal, that run behind `guarded_handler`: (handler, flags).
static PROGRAM_HANDLERS: [(AtomicUsize, AtomicUsize); 65] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; 65];

/// Every handler the program installs while the syscall guard is on runs behind this one,
/// which guards the thread for the handler's duration: a signal can arrive while the
/// thread is inside farmem (the selector open), for instance right after a `kill` farmem
/// made for it, and the handler's own system calls must still be guarded.
extern "C" fn guarded_handler(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let Some(slot) = PROGRAM_HANDLERS.get(sig as usize) else {
        return;
    };
    let (h, fl) = (slot.0.load(Relaxed), slot.1.load(Relaxed));
    if h == libc::SIG_DFL || h == libc::SIG_IGN {
        return;
    }
    let _program = farmem::sys::sud::program_context();
    if fl & libc::SA_SIGINFO as usize != 0 {
        // SAFETY: the program installed it with SA_SIGINFO, so it has this type.
        let g: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(h) };
        g(sig, info, ctx);
    } else {
        // SAFETY: a plain handler.
        let g: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        g(sig);
    }
}

/// sigaction with the syscall guard on: handlers go behind `guarded_handler`, SIGBUS and
/// SIGSYS are never in their masks, and what is reported back is the program's own.
///
/// # Safety
/// sigaction's contract; `f` is the C library's sigaction.
unsafe fn sigaction_guarded(
    f: unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int,
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let Some(slot) = PROGRAM_HANDLERS.get(sig as usize) else {
        // SAFETY: forwarded (the C library refuses the bad signal number).
        return unsafe { f(sig, act, old) };
    };
    let _g = SIG_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let before = (slot.0.load(Relaxed), slot.1.load(Relaxed));
    let rc = if act.is_null() {
        // SAFETY: forwarded.
        unsafe { f(sig, act, old) }
    } else {
        // SAFETY: the caller's valid sigaction, copied.
        let mut a = unsafe { *act };
        // SAFETY: valid sigsets inside our copy.
        unsafe {
            libc::sigdelset(&mut a.sa_mask, libc::SIGBUS);
            libc::sigdelset(&mut a.sa_mask, libc::SIGSYS);
        }
        let h = a.sa_sigaction;
        if h != libc::SIG_DFL && h != libc::SIG_IGN {
            slot.0.store(h, Relaxed);
            slot.1.store(a.sa_flags as usize, Relaxed);
            a.sa_sigaction = guarded_handler as *const () as usize;
            a.sa_flags |= libc::SA_SIGINFO;
        }
        // SAFETY: forwarded with our copy.
        let rc = unsafe { f(sig, &a, old) };
        if rc == 0 {
            // The handler returns through farmem's restorer: no trap on its way out.
            farmem::sys::sud::adopt_restorer(sig);
        } else {
            slot.0.store(before.0, Relaxed);
            slot.1.store(before.1, Relaxed);
        }
        rc
    };
    if rc == 0 && !old.is_null() {
        // SAFETY: the caller's result slot, filled in by the C library.
        let o = unsafe { &mut *old };
        if o.sa_sigaction == guarded_handler as *const () as usize {
            o.sa_sigaction = before.0;
            o.sa_flags = before.1 as c_int;
        }
    }
    rc
}

/// signal(2), for SIGBUS (other signals pass through).
///
/// # Safety
/// signal's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn signal(sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"signal",
        unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t
    );
    let route = if rt::GUARD_ON.load(Relaxed) {
        true
    } else {
        sig == libc::SIGBUS && rt::ready() && farmem::sys::signal::installed()
    };
    if !route || h == libc::SIG_ERR {
        // SAFETY: forwarded.
        return unsafe { f(sig, h) };
    }
    // SAFETY: a zeroed sigaction is valid; filled in as signal(2) would.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    a.sa_sigaction = h;
    a.sa_flags = libc::SA_RESTART;
    // SAFETY: a zeroed sigaction for the result.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: our own valid structures.
    unsafe { sigaction(sig, &a, &mut old) };
    old.sa_sigaction
}

fn unblock_bus(
    how: c_int,
    set: *const libc::sigset_t,
    copy: &mut libc::sigset_t,
) -> *const libc::sigset_t {
    if set.is_null() || how == libc::SIG_UNBLOCK || !rt::ready() {
        return set;
    }
    // SAFETY: the caller's valid sigset, copied.
    *copy = unsafe { *set };
    // SAFETY: a valid sigset.
    unsafe { libc::sigdelset(copy, libc::SIGBUS) };
    if rt::GUARD_ON.load(Relaxed) {
        // SAFETY: a valid sigset.
        unsafe { libc::sigdelset(copy, libc::SIGSYS) };
    }
    copy
}

/// sigprocmask(2): SIGBUS is never blocked (far-memory faults arrive as SIGBUS).
///
/// # Safety
/// sigprocmask's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sigprocmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"sigprocmask",
        unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int
    );
    // SAFETY: a zeroed sigset is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    let set = unblock_bus(how, set, &mut copy);
    // SAFETY: forwarded.
    unsafe { f(how, set, old) }
}

/// pthread_sigmask(3): as sigprocmask.
///
/// # Safety
/// pthread_sigmask's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pthread_sigmask(
    how: c_int,
    set: *const libc::sigset_t,
    old: *mut libc::sigset_t,
) -> c_int {
    let _sud = farmem::sys::sud::allow();
    let f = real!(
        REAL,
        c"pthread_sigmask",
        unsafe extern "C" fn(c_int, *const libc::sigset_t, *mut libc::sigset_t) -> c_int
    );
    // SAFETY: a zeroed sigset is valid.
    let mut copy: libc::sigset_t = unsafe { std::mem::zeroed() };
    let set = unblock_bus(how, set, &mut copy);
    // SAFETY: forwarded.
    unsafe { f(how, set, old) }
}
