//! Syscall user dispatch: every system call a guarded thread makes outside farmem's own
//! code comes to farmem first.
//!
//! In the in-thread (sigbus) fault mode the kernel cannot wait for a far page: a system
//! call that reads or writes a far buffer the reclaimer evicted fails with EFAULT.
//! Wrapping the C library's entry points covers the common calls, but not the `syscall`
//! instruction made directly, nor calls the C library makes internally (`ioctl` inside
//! `tcgetattr`, `futex` inside a contended mutex, `rt_sigprocmask` inside
//! `pthread_create`...). Linux's syscall user dispatch (5.11+,
//! `PR_SET_SYSCALL_USER_DISPATCH`) closes that gap: a thread that turns it on gets SIGSYS,
//! instead of the system call, for every call made from outside one range of code while a
//! per-thread selector byte says BLOCK. The handler here hands the call to a dispatcher
//! (`farmem run`'s preload pins and touches the far buffers the call names, then makes it)
//! and puts the result where the program expects it.
//!
//! The rules that keep it correct and cheap:
//! - **The allowed range** is the executable segment of the object farmem is linked into
//!   (the preload library). Its `syscall` instructions (`sys::raw`, the handler's own
//!   calls, the signal restorer) are never intercepted.
//! - **The selector** is BLOCK only while a guarded thread runs the program's code. Every
//!   entry into farmem (the malloc family, the wrappers, the SIGBUS handler) holds an
//!   [`allow`] guard, so calls farmem makes through the C library run natively.
//! - **Signal returns.** A handler returns through a restorer that calls `rt_sigreturn`;
//!   glibc's restorer lies outside the allowed range. Farmem's own handlers (SIGSYS,
//!   SIGBUS) and every handler the program installs through the preload's `sigaction`
//!   get [`restorer`], which lies inside it. A return through any other restorer is caught
//!   and redirected to ours with the same stack, so it still works.
//! - **Process and thread creation** (clone, clone3, fork, vfork) cannot be made from a
//!   signal handler's frame without rebuilding the child's registers. The handler instead
//!   sets the selector to ALLOW and restarts the `syscall` instruction, which then runs
//!   natively; the thread is guarded again at its next entry into farmem (its next
//!   malloc or free). The new task starts unguarded (the kernel does not inherit the
//!   setting): `pthread_create` and the fork handlers of the preload guard it.
//! - **The signal mask** the trapped call sees is the one saved in the signal frame (the
//!   handler runs with SA_NODEFER and an empty mask), and `rt_sigprocmask` is applied to
//!   that saved mask, which is what the program gets back when the handler returns.
//! - **SIGSYS is never blocked** in a guarded thread: the kernel resets a forced signal
//!   that is blocked to its default action, so a trapped call with SIGSYS blocked would
//!   kill the process. The C library blocks every signal around thread creation and exit;
//!   the emulated `rt_sigprocmask` and the preload's `sigprocmask`, `pthread_sigmask` and
//!   `sigaction` leave SIGSYS (like SIGBUS) out.
//!
//! Measured here (DESIGN.md): a dispatched system call costs about 1 us more than a
//! native one.

use std::cell::Cell;
use std::io;
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The selector value that lets system calls through.
pub const ALLOW: u8 = 0;
/// The selector value that sends system calls to the handler.
pub const BLOCK: u8 = 1;

const PR_SET_SYSCALL_USER_DISPATCH: i32 = 59;
const PR_SYS_DISPATCH_OFF: usize = 0;
const PR_SYS_DISPATCH_ON: usize = 1;
/// `si_code` of a SIGSYS raised by syscall user dispatch.
const SYS_USER_DISPATCH: i32 = 2;
const SA_RESTORER: u64 = 0x0400_0000;

const NR_RT_SIGRETURN: i64 = 15;
const NR_RT_SIGPROCMASK: i64 = 14;
const NR_CLONE: i64 = 56;
const NR_FORK: i64 = 57;
const NR_VFORK: i64 = 58;
const NR_CLONE3: i64 = 435;

/// Makes one trapped system call: number and six arguments in, the kernel's raw result
/// (`-errno` on failure) out. Runs in signal context: no allocation, no lock the
/// interrupted code may hold.
pub type DispatchFn = fn(nr: i64, args: &[u64; 6]) -> i64;

#[repr(C)]
struct Tls {
    /// Read by the kernel at every system call of a guarded thread.
    sel: Cell<u8>,
    /// The kernel's dispatch is on for this thread.
    armed: Cell<bool>,
    /// Nesting of [`allow`] guards.
    depth: Cell<u32>,
}

thread_local! {
    static TLS: Tls = const {
        Tls { sel: Cell::new(ALLOW), armed: Cell::new(false), depth: Cell::new(0) }
    };
}

static INSTALL: Once = Once::new();
static INSTALL_ERR: AtomicUsize = AtomicUsize::new(0);
static ALLOWED: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));
static DISPATCH: AtomicUsize = AtomicUsize::new(0);
/// The program's own SIGSYS disposition (kernel layout: handler, flags, restorer, mask),
/// for SIGSYS that is not ours (seccomp's).
static PREV_HANDLER: AtomicUsize = AtomicUsize::new(0);
static PREV_FLAGS: AtomicUsize = AtomicUsize::new(0);

#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".pushsection .text.farmem_sud_restorer,\"ax\",@progbits",
    ".p2align 4",
    ".globl farmem_sud_restorer",
    ".hidden farmem_sud_restorer",
    "farmem_sud_restorer:",
    // `mov rax, 15; syscall`, byte for byte glibc's __restore_rt, which unwinders
    // recognise as a signal frame.
    ".byte 0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05",
    "ud2",
    ".popsection",
);

unsafe extern "C" {
    fn farmem_sud_restorer();
}

/// The address of farmem's signal restorer (`mov rax, 15; syscall`), inside the allowed
/// range.
pub fn restorer() -> usize {
    farmem_sud_restorer as *const () as usize
}

/// While alive, this thread's system calls run natively. Guards nest; the last one to go
/// turns the selector back to BLOCK if the thread is guarded.
#[must_use]
#[derive(Debug)]
pub struct Allow {
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Lets this thread's system calls through until the guard is dropped.
#[inline]
pub fn allow() -> Allow {
    TLS.with(|t| {
        t.depth.set(t.depth.get() + 1);
        t.sel.set(ALLOW);
    });
    Allow {
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for Allow {
    #[inline]
    fn drop(&mut self) {
        TLS.with(|t| {
            let d = t.depth.get().saturating_sub(1);
            t.depth.set(d);
            if d == 0 && t.armed.get() {
                t.sel.set(BLOCK);
            }
        });
    }
}

/// While alive, this thread runs the program's code guarded (a program's signal handler
/// that interrupted farmem's own code, where the selector is open); dropping it restores
/// what was interrupted.
#[must_use]
#[derive(Debug)]
pub struct ProgramContext {
    sel: u8,
    depth: u32,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Guards this thread for the program's code, whatever farmem code the signal interrupted.
pub fn program_context() -> ProgramContext {
    TLS.with(|t| {
        let saved = ProgramContext {
            sel: t.sel.get(),
            depth: t.depth.get(),
            _not_send: std::marker::PhantomData,
        };
        t.depth.set(0);
        if t.armed.get() {
            t.sel.set(BLOCK);
        }
        saved
    })
}

impl Drop for ProgramContext {
    fn drop(&mut self) {
        TLS.with(|t| {
            t.depth.set(self.depth);
            t.sel.set(self.sel);
        });
    }
}

/// Whether this thread is guarded (dispatch on).
pub fn armed() -> bool {
    TLS.with(|t| t.armed.get())
}

/// Whether this thread is guarded and running the program's code (not inside farmem).
pub fn blocking() -> bool {
    TLS.with(|t| t.armed.get() && t.sel.get() == BLOCK)
}

/// Whether the kernel offers syscall user dispatch (Linux 5.11+, x86-64).
pub fn supported() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    // Turning it off on a thread that never turned it on succeeds only where it exists.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0) == 0 }
}

/// Installs the SIGSYS handler (once per process) with `dispatch` making the trapped
/// calls, and finds the allowed range. Threads are guarded one by one with
/// [`arm_this_thread`].
pub fn install(dispatch: DispatchFn) -> io::Result<()> {
    DISPATCH.store(dispatch as usize, Ordering::Release);
    INSTALL.call_once(|| {
        if let Err(e) = install_once() {
            INSTALL_ERR.store(
                e.raw_os_error().unwrap_or(libc::EINVAL) as usize,
                Ordering::Release,
            );
        }
    });
    match INSTALL_ERR.load(Ordering::Acquire) {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e as i32)),
    }
}

fn install_once() -> io::Result<()> {
    if !supported() {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let (start, len) =
        text_of(restorer()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    ALLOWED.0.store(start, Ordering::Release);
    ALLOWED.1.store(len, Ordering::Release);
    let mut old = KSigaction::default();
    let act = KSigaction {
        handler: on_sigsys as *const () as usize as u64,
        flags: (libc::SA_SIGINFO | libc::SA_NODEFER) as u64 | SA_RESTORER,
        restorer: restorer() as u64,
        mask: 0,
    };
    rt_sigaction(libc::SIGSYS, Some(&act), Some(&mut old))?;
    PREV_HANDLER.store(old.handler as usize, Ordering::Release);
    PREV_FLAGS.store(old.flags as usize, Ordering::Release);
    // farmem's SIGBUS handler returns through our restorer too: a far fault in a guarded
    // thread costs no extra trap.
    adopt_restorer(libc::SIGBUS);
    Ok(())
}

/// Whether [`install`] succeeded in this process.
pub fn installed() -> bool {
    INSTALL.is_completed() && INSTALL_ERR.load(Ordering::Acquire) == 0
}

/// Guards this thread: from now on its system calls outside farmem come to the handler.
pub fn arm_this_thread() -> io::Result<()> {
    if !installed() {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let (start, len) = (
        ALLOWED.0.load(Ordering::Acquire),
        ALLOWED.1.load(Ordering::Acquire),
    );
    let sel = TLS.with(|t| {
        t.sel.set(ALLOW);
        t.sel.as_ptr() as usize
    });
    // SAFETY: prctl with the allowed range and this thread's selector byte, which lives
    // (in static TLS) as long as the thread.
    let rc = unsafe {
        libc::prctl(
            PR_SET_SYSCALL_USER_DISPATCH,
            PR_SYS_DISPATCH_ON,
            start,
            len,
            sel,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    TLS.with(|t| {
        t.armed.set(true);
        if t.depth.get() == 0 {
            t.sel.set(BLOCK);
        }
    });
    Ok(())
}

/// Stops guarding this thread.
pub fn disarm_this_thread() {
    TLS.with(|t| {
        t.sel.set(ALLOW);
        t.armed.set(false);
    });
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(PR_SET_SYSCALL_USER_DISPATCH, PR_SYS_DISPATCH_OFF, 0, 0, 0) };
}

/// In a forked child: the kernel turned dispatch off for the new task; turn it back on if
/// the thread that forked was guarded.
pub fn rearm_after_fork() {
    if TLS.with(|t| t.armed.get()) {
        TLS.with(|t| t.armed.set(false));
        if arm_this_thread().is_err() {
            disarm_this_thread();
        }
    }
}

/// Makes signal `sig`'s handler, if it has one, return through farmem's restorer (inside
/// the allowed range), so that its return costs no trap. Harmless for SIG_DFL and SIG_IGN.
pub fn adopt_restorer(sig: i32) {
    let mut cur = KSigaction::default();
    if rt_sigaction(sig, None, Some(&mut cur)).is_err() {
        return;
    }
    if cur.handler <= 1 || (cur.restorer == restorer() as u64 && cur.flags & SA_RESTORER != 0) {
        return;
    }
    cur.flags |= SA_RESTORER;
    cur.restorer = restorer() as u64;
    let _ = rt_sigaction(sig, Some(&cur), None);
}

/// Records the program's SIGSYS disposition, for SIGSYS that syscall user dispatch did not
/// raise, and returns the previous one (handler, flags). farmem's handler stays installed.
pub fn replace_program_sigsys(handler: usize, flags: usize) -> (usize, usize) {
    let h = PREV_HANDLER.swap(handler, Ordering::AcqRel);
    let f = PREV_FLAGS.swap(flags, Ordering::AcqRel);
    (h, f)
}

/// The kernel's `struct sigaction` on x86-64.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct KSigaction {
    handler: u64,
    flags: u64,
    restorer: u64,
    mask: u64,
}

fn rt_sigaction(
    sig: i32,
    act: Option<&KSigaction>,
    old: Option<&mut KSigaction>,
) -> io::Result<()> {
    let a = act.map_or(0, |a| a as *const KSigaction as usize);
    let o = old.map_or(0, |o| o as *mut KSigaction as usize);
    // SAFETY: rt_sigaction with kernel-layout structures we own (or null), sigsetsize 8.
    let r = unsafe {
        super::raw::syscall_raw(
            libc::SYS_rt_sigaction,
            [sig as u64, a as u64, o as u64, 8, 0, 0],
        )
    };
    if r < 0 {
        Err(io::Error::from_raw_os_error(-r as i32))
    } else {
        Ok(())
    }
}

/// The executable PT_LOAD segment of the loaded object that contains `addr`.
fn text_of(addr: usize) -> Option<(usize, usize)> {
    struct Find {
        addr: usize,
        found: Option<(usize, usize)>,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut libc::c_void,
    ) -> i32 {
        // SAFETY: the loader passes a valid dl_phdr_info; `data` is our `Find`.
        unsafe {
            let info = &*info;
            let f = &mut *(data as *mut Find);
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                let s = info.dlpi_addr as usize + ph.p_vaddr as usize;
                let e = s + ph.p_memsz as usize;
                if ph.p_type == libc::PT_LOAD
                    && ph.p_flags & libc::PF_X != 0
                    && f.addr >= s
                    && f.addr < e
                {
                    f.found = Some((s, e - s));
                    return 1;
                }
            }
            0
        }
    }
    let mut f = Find { addr, found: None };
    // SAFETY: a callback that only reads what the loader hands it, and our `Find`.
    unsafe { libc::dl_iterate_phdr(Some(each), (&mut f as *mut Find).cast()) };
    f.found
}

#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes valid siginfo_t and ucontext_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code != SYS_USER_DISPATCH {
        forward(sig, info, ctx);
        return;
    }
    let uc = ctx.cast::<libc::ucontext_t>();
    // SAFETY: as above; the frame is ours to edit until we return.
    let g = unsafe { &mut (*uc).uc_mcontext.gregs };
    let nr = g[libc::REG_RAX as usize];
    match nr {
        NR_RT_SIGRETURN => {
            // A handler returning through a restorer outside the allowed range: return
            // through ours instead, on the same stack.
            g[libc::REG_RIP as usize] = restorer() as i64;
            return;
        }
        NR_CLONE | NR_CLONE3 | NR_FORK | NR_VFORK => {
            // Run it natively: back to the `syscall` instruction with the selector open.
            // The next entry into farmem closes it again.
            g[libc::REG_RIP as usize] -= 2;
            TLS.with(|t| t.sel.set(ALLOW));
            return;
        }
        _ => {}
    }
    // SAFETY: this thread's errno slot.
    let saved_errno = unsafe { *libc::__errno_location() };
    let r = {
        let _open = allow();
        let args = [
            g[libc::REG_RDI as usize] as u64,
            g[libc::REG_RSI as usize] as u64,
            g[libc::REG_RDX as usize] as u64,
            g[libc::REG_R10 as usize] as u64,
            g[libc::REG_R8 as usize] as u64,
            g[libc::REG_R9 as usize] as u64,
        ];
        if nr == NR_RT_SIGPROCMASK {
            // SAFETY: the frame's saved mask is what the program runs with after return.
            unsafe { sigprocmask_in_frame(uc, &args) }
        } else {
            let d = DISPATCH.load(Ordering::Acquire);
            if d == 0 {
                // SAFETY: the program's own system call, made as it asked.
                unsafe { super::raw::syscall_raw(nr, args) }
            } else {
                // SAFETY: DISPATCH only ever holds a DispatchFn stored by `install`.
                let f: DispatchFn = unsafe { std::mem::transmute::<usize, DispatchFn>(d) };
                f(nr, &args)
            }
        }
    };
    g[libc::REG_RAX as usize] = r;
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = saved_errno };
}

#[cfg(not(target_arch = "x86_64"))]
extern "C" fn on_sigsys(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    forward(sig, info, ctx);
}

/// `rt_sigprocmask(how, set, old, size)` applied to the mask saved in the signal frame.
///
/// # Safety
/// `uc` is the handler's frame; `set` and `old` are the program's pointers (null or valid).
#[cfg(target_arch = "x86_64")]
unsafe fn sigprocmask_in_frame(uc: *mut libc::ucontext_t, a: &[u64; 6]) -> i64 {
    let (how, set, old, size) = (a[0] as i32, a[1] as *const u64, a[2] as *mut u64, a[3]);
    if size != 8 {
        return -(libc::EINVAL as i64);
    }
    // SAFETY: the kernel's mask is the first 8 bytes of the frame's sigset.
    let mask = unsafe { &mut *(std::ptr::addr_of_mut!((*uc).uc_sigmask) as *mut u64) };
    let before = *mask;
    if !set.is_null() {
        // SAFETY: the caller's sigset (a far one faults in here).
        let s = unsafe { set.read_unaligned() };
        let new = match how {
            libc::SIG_BLOCK => before | s,
            libc::SIG_UNBLOCK => before & !s,
            libc::SIG_SETMASK => s,
            _ => return -(libc::EINVAL as i64),
        };
        // A trapped system call with SIGSYS blocked would kill the process (the kernel
        // resets a blocked forced signal to its default action), and a far fault with
        // SIGBUS blocked likewise: neither is ever blocked in a guarded thread.
        let never = bit(libc::SIGKILL) | bit(libc::SIGSTOP) | bit(libc::SIGBUS) | bit(libc::SIGSYS);
        *mask = new & !never;
    }
    if !old.is_null() {
        // SAFETY: the caller's result slot.
        unsafe { old.write_unaligned(before) };
    }
    0
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// SIGSYS that is not ours goes to the program's handler, or has the default action.
fn forward(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let h = PREV_HANDLER.load(Ordering::Acquire);
    if h == libc::SIG_IGN {
        return;
    }
    if h == libc::SIG_DFL {
        // SAFETY: default action for SIGSYS: restore it and raise it again.
        unsafe {
            let act = KSigaction::default();
            let _ = rt_sigaction(libc::SIGSYS, Some(&act), None);
            libc::raise(libc::SIGSYS);
        }
        return;
    }
    if PREV_FLAGS.load(Ordering::Acquire) & libc::SA_SIGINFO as usize != 0 {
        // SAFETY: installed with SA_SIGINFO, so it has this type.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
}
