//! The process-wide SIGBUS handler of the in-thread fault path.
//!
//! With `UFFD_FEATURE_SIGBUS` a fault in a registered range raises SIGBUS in the faulting
//! thread. The handler asks the engine (through one function pointer set at install
//! time) to resolve the fault and returns, so the faulting instruction runs again.
//! SIGBUS that the engine does not claim goes to whatever handler was there before, or
//! kills the process as the default action would.

use std::io;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Resolves a fault (see [`Trap`]). Returns false when the address is not the engine's.
/// Runs in signal context: no allocation, no locks that the interrupted code may hold.
pub type FaultFn = fn(trap: &Trap) -> bool;

/// General-purpose registers a [`Trap`] carries (x86-64: rax, rbx, rcx, rdx, rsi, rdi,
/// rbp, r8 to r15, and rsp last).
pub const TRAP_REGS: usize = 16;

/// A fault as the SIGBUS handler sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Trap {
    /// The faulting address.
    pub addr: usize,
    /// The access was a write (x86-64's page-fault error code, bit 1; other architectures
    /// report reads, which costs at most one extra fault later).
    pub write: bool,
    /// The faulting thread's general-purpose registers at the fault (zeros where the
    /// architecture's are not read): what the program was working with, which the
    /// pointer prefetch starts from (`prefetch::pointer`).
    pub regs: [u64; TRAP_REGS],
}

impl Trap {
    fn from_signal(addr: usize, ctx: *mut libc::c_void) -> Trap {
        let mut t = Trap {
            addr,
            ..Trap::default()
        };
        #[cfg(target_arch = "x86_64")]
        if !ctx.is_null() {
            // SAFETY: the kernel passes a valid ucontext_t to an SA_SIGINFO handler.
            let g = unsafe { &(*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs };
            t.write = g[libc::REG_ERR as usize] & 2 != 0;
            let regs = [
                libc::REG_RAX,
                libc::REG_RBX,
                libc::REG_RCX,
                libc::REG_RDX,
                libc::REG_RSI,
                libc::REG_RDI,
                libc::REG_RBP,
                libc::REG_R8,
                libc::REG_R9,
                libc::REG_R10,
                libc::REG_R11,
                libc::REG_R12,
                libc::REG_R13,
                libc::REG_R14,
                libc::REG_R15,
                libc::REG_RSP,
            ];
            for (out, r) in t.regs.iter_mut().zip(regs) {
                *out = g[r as usize] as u64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = ctx;
        t
    }
}

/// Up to four resolvers (the engine's, and the mechanism probe's), asked in turn.
static HANDLERS: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
static INSTALL: Once = Once::new();
static mut PREVIOUS: std::mem::MaybeUninit<libc::sigaction> = std::mem::MaybeUninit::uninit();
static INSTALL_ERR: AtomicUsize = AtomicUsize::new(0);

/// Installs the SIGBUS handler once per process and adds `f` to the resolvers it asks
/// (once: adding the same function again is a no-op).
pub fn install(f: FaultFn) -> io::Result<()> {
    let f = f as usize;
    if !HANDLERS.iter().any(|h| h.load(Ordering::Acquire) == f)
        && !HANDLERS.iter().any(|h| {
            h.compare_exchange(0, f, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    {
        return Err(io::Error::other("too many SIGBUS resolvers in one process"));
    }
    INSTALL.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we fill in the handler, flags and mask.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_sigbus as *const () as usize;
        // SA_NODEFER is deliberately not set and the mask blocks everything: a signal
        // handler that touched far memory while this thread holds a page lock would
        // otherwise deadlock on itself.
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        // SAFETY: sa_mask is a valid sigset_t inside `sa`.
        unsafe { libc::sigfillset(&mut sa.sa_mask) };
        // SAFETY: PREVIOUS is written once here, under the Once, before any handler runs.
        let prev = unsafe { (*std::ptr::addr_of_mut!(PREVIOUS)).as_mut_ptr() };
        // SAFETY: valid sigaction structures; SIGBUS is a catchable signal.
        if unsafe { libc::sigaction(libc::SIGBUS, &sa, prev) } < 0 {
            INSTALL_ERR.store(
                io::Error::last_os_error().raw_os_error().unwrap_or(1) as usize,
                Ordering::Release,
            );
        }
    });
    match INSTALL_ERR.load(Ordering::Acquire) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

/// Whether farmem's SIGBUS handler is installed in this process.
pub fn installed() -> bool {
    INSTALL.is_completed() && INSTALL_ERR.load(Ordering::Acquire) == 0
}

/// Replaces the disposition SIGBUS falls back to for addresses that are not farmem's (what
/// a program that installs its own SIGBUS handler gets, so that farmem's stays in place),
/// and returns the one it replaces. Only meaningful once [`installed`].
///
/// # Safety
/// `new` must be a valid disposition for SIGBUS; no other thread may call this at once.
pub unsafe fn replace_previous(new: &libc::sigaction) -> libc::sigaction {
    // SAFETY: PREVIOUS was initialised by `install`; the caller serialises writers. A
    // handler running meanwhile reads either disposition, both valid.
    unsafe {
        let p = (*std::ptr::addr_of_mut!(PREVIOUS)).as_mut_ptr();
        let old = std::ptr::read(p);
        std::ptr::write_volatile(p, *new);
        old
    }
}

thread_local! {
    /// SIGBUS handlers running in this thread (farmem's).
    static IN_HANDLER: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether this thread is inside farmem's SIGBUS handler (where every signal is blocked).
pub fn in_handler() -> bool {
    IN_HANDLER.try_with(|c| c.get() > 0).unwrap_or(false)
}

struct InHandler;

impl InHandler {
    fn enter() -> InHandler {
        let _ = IN_HANDLER.try_with(|c| c.set(c.get() + 1));
        InHandler
    }
}

impl Drop for InHandler {
    fn drop(&mut self) {
        let _ = IN_HANDLER.try_with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Unblocks `sigs` in this thread with the raw system call (no libc wrapper, which a
/// preload may interpose, and no allocation: usable in a signal handler); returns the
/// mask it replaced, for [`set_mask_raw`].
pub fn unblock_raw(sigs: &[libc::c_int]) -> u64 {
    let set: u64 = sigs.iter().fold(0, |m, &s| m | 1 << (s - 1));
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask with 8-byte kernel sigsets on our locals.
    unsafe {
        super::raw::syscall_raw(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_UNBLOCK as u64,
                &set as *const u64 as u64,
                &mut old as *mut u64 as u64,
                8,
                0,
                0,
            ],
        );
    }
    old
}

/// Sets this thread's signal mask to `mask` (from [`unblock_raw`]), raw.
pub fn set_mask_raw(mask: u64) {
    // SAFETY: rt_sigprocmask with an 8-byte kernel sigset on our local.
    unsafe {
        super::raw::syscall_raw(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as u64,
                &mask as *const u64 as u64,
                0,
                8,
                0,
                0,
            ],
        );
    }
}

/// Gives `sig` its default action with the raw system call (usable in a signal handler).
pub fn default_action_raw(sig: libc::c_int) {
    // The kernel's struct sigaction on x86-64: handler, flags, restorer, mask; all zero
    // is SIG_DFL with no flags.
    let act = [0u64; 4];
    // SAFETY: rt_sigaction with a valid kernel sigaction and no old-action slot.
    unsafe {
        super::raw::syscall_raw(
            libc::SYS_rt_sigaction,
            [sig as u64, act.as_ptr() as u64, 0, 8, 0, 0],
        );
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // farmem's own system calls run natively in a thread guarded by syscall user dispatch.
    let _open = super::sud::allow();
    let _in = InHandler::enter();
    let saved_errno = errno();
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let trap = Trap::from_signal(unsafe { (*info).si_addr() } as usize, ctx);
    for h in &HANDLERS {
        let f = h.load(Ordering::Acquire);
        if f == 0 {
            break;
        }
        // SAFETY: HANDLERS only ever hold FaultFns stored by `install`.
        let f: FaultFn = unsafe { std::mem::transmute::<usize, FaultFn>(f) };
        if f(&trap) {
            set_errno(saved_errno);
            return;
        }
    }
    // Not ours: behave as the previous disposition would.
    // SAFETY: PREVIOUS was initialised by `install` before this handler was installed.
    let prev = unsafe { (*std::ptr::addr_of!(PREVIOUS)).assume_init_ref() };
    let h = prev.sa_sigaction;
    if h == libc::SIG_IGN {
        return;
    }
    if h == libc::SIG_DFL {
        // SAFETY: restore the default action and return: the access faults again and
        // the kernel delivers the default SIGBUS, killing the process with the right status.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this type.
        let g: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        g(sig, info, ctx);
    } else {
        // SAFETY: a plain handler of type fn(int).
        let g: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
        g(sig);
    }
}

fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v };
}

/// Writes `msg` to stderr and aborts: the far-memory failure path in signal context, where
/// panicking or formatting is not possible. When several threads fail at once (a lost
/// memory node fails every thread's next call), the first one's message is written whole
/// and the others wait for the abort.
pub fn fatal(parts: &[&[u8]]) -> ! {
    static DYING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DYING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        loop {
            // SAFETY: pause has no preconditions; the first thread's abort ends the process.
            unsafe { libc::pause() };
        }
    }
    for p in parts {
        let mut off = 0;
        while off < p.len() {
            // SAFETY: writing our own bytes to fd 2.
            let n = unsafe { libc::write(2, p[off..].as_ptr().cast(), p.len() - off) };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
    }
    std::process::abort()
}

/// Formats `v` in decimal into `buf` without allocating; returns the digits.
pub fn fmt_u64(v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut v = v;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers_without_allocating() {
        let mut b = [0u8; 20];
        assert_eq!(fmt_u64(0, &mut b), b"0");
        assert_eq!(fmt_u64(4096, &mut b), b"4096");
        assert_eq!(fmt_u64(u64::MAX, &mut b), b"18446744073709551615");
    }
}
